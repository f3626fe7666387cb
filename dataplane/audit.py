"""The security audit log: one JSON object per line, never a credential.

Events are built from explicit keyword fields; anything that looks like a
credential field is dropped before writing, so a careless caller cannot leak
a token, key or secret into the log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

_FORBIDDEN = ("token", "key", "secret", "password", "authorization", "cookie", "credential")
_ALLOWED_KEYED = {"key_id", "api_key_id"}  # non-secret identifiers


class AuditLog:
    """Writes security events (auth failures, denials, rate-limit hits, TLS errors) as JSON lines."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._log = logging.getLogger("kubegate.audit")

    def event(self, event: str, **fields: Any) -> None:
        record = {"ts": round(time.time(), 3), "event": event}
        for name, value in fields.items():
            lowered = name.lower()
            if name not in _ALLOWED_KEYED and any(word in lowered for word in _FORBIDDEN):
                continue
            record[name] = value
        try:
            self._stream.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
        except (OSError, ValueError):  # a closed or broken stream must not fail a request
            self._log.debug("audit stream unavailable")
