"""The opt-in access log (``--access-log``): one JSON line per request on stdout.

Fields are documented one by one in docs/access-log.md. Never a credential:
no header value, no query string, the auth subject as the decision's principal.
The security audit log (audit.py, stderr) is separate and unchanged.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO


class AccessLog:
    """Shares stdout with the audit log (audit.py); its lines carry ``"log": "access"``, audit lines ``event``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout

    def write(self, request: Any, note: Any, status: int, elapsed: float, route: Any) -> None:
        decision = note.decision
        principal = decision.principal if decision is not None else None
        now = time.time()
        record = {
            "log": "access",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
            "request_id": note.rid,
            "method": request.method,
            "path": request.path,
            "route": note.route or None,
            "status": status,
            "bytes": note.bytes,
            "upstream_time": round(note.upstream_seconds, 6) if note.upstream_seconds is not None else None,
            "total_time": round(elapsed, 6),
            "client": request.remote or "",
            "auth": note.auth_outcome(route),
            "subject": principal,
            "key_id": principal[7:] if principal and principal.startswith("apikey:") else None,
        }
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=True) + "\n"
        try:
            self._stream.write(line)
        except (OSError, ValueError):  # a closed or broken stream must not fail a request
            pass
