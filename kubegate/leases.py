"""The data-plane heartbeat Lease, read the same way by both sides (pure).

Each data-plane replica renews a Lease carrying the config hash it serves and the
objects it had to leave out; the operator reads them for Programmed, and the data
plane counts the live ones to share local rate limits. One reader for both, so the
data plane never imports the operator.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubegate.config import DROPPED_ANNOTATION, HASH_ANNOTATION
from kubegate.names import COMPONENT_LABEL, DATAPLANE_COMPONENT


@dataclass(frozen=True)
class ReplicaLease:
    """What the operator needs of one data-plane Lease."""

    name: str
    config_hash: str
    renewed_at: float  # unix seconds
    duration: float
    dropped: Mapping[str, str] = field(default_factory=dict)  # "Kind/ns/name" -> why this replica left it out

    @property
    def expires_at(self) -> float:
        return self.renewed_at + self.duration

    def live(self, now: float) -> bool:
        return self.expires_at > now


def parse_time(value: str | None) -> float | None:
    """RFC 3339 (with or without fractional seconds) -> unix seconds."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def replica_lease(obj: Mapping[str, Any]) -> ReplicaLease | None:
    """A data-plane Lease object -> ReplicaLease; None if it is not one or is malformed."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    if (meta.get("labels") or {}).get(COMPONENT_LABEL) != DATAPLANE_COMPONENT:
        return None
    renewed = parse_time(spec.get("renewTime") or spec.get("acquireTime"))
    if renewed is None:
        return None
    annotations = meta.get("annotations") or {}
    return ReplicaLease(
        name=meta.get("name", ""),
        config_hash=annotations.get(HASH_ANNOTATION, ""),
        renewed_at=renewed,
        duration=float(spec.get("leaseDurationSeconds") or 10),
        dropped=_dropped(annotations.get(DROPPED_ANNOTATION)),
    )


def _dropped(text: str | None) -> dict[str, str]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}
