"""Go-style duration strings (``500ms``, ``15s``, ``1m``, ``2160h``), as Kubernetes users write them."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

# One or more <number><unit> groups; the same grammar as Go's time.ParseDuration
# without the sign (a negative timeout or period is never meaningful here).
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float:
    """Return the duration in seconds; ValueError names the bad input."""
    if not isinstance(text, str) or not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r}: use Go syntax such as 500ms, 15s, 1m, 2h")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text))


def _positive(text: str) -> str:
    if parse_duration(text) <= 0:
        raise ValueError(f"duration {text!r} must be greater than zero")
    return text


PositiveDuration = Annotated[str, Field(pattern=DURATION_PATTERN), AfterValidator(_positive)]
