"""The gateway's own answers: one JSON error body, and what may be said about a refused request.

Every error the data plane writes itself, on either front and either
listener, is ``{"error", "reason", "status", "request_id"}``. When a parser
refuses a request, its message may quote the offending bytes (aiohttp's and
llhttp's do: a header line, an API key on it); only a fixed phrase from the
start of the message ever reaches a log line or a response body.
"""

from __future__ import annotations

import json
import re

SERVER = "kubegate"  # the Server header of every response the gateway writes (no library versions)
_PHRASE = re.compile(r"[A-Za-z][A-Za-z0-9_ ,()-]{0,79}")


def error_body(status: int, reason: str, message: str, request_id: str = "") -> bytes:
    return json.dumps({"error": message, "reason": reason, "status": status, "request_id": request_id},
                      separators=(",", ":")).encode()


def refusal_phrase(message: str | None, fallback: str = "malformed request") -> str:
    """The leading plain-words phrase of a parser's message ("Invalid header value char"), never its quote.

    Parsers put the offending bytes after a colon, a newline or in quotes;
    whatever is not a run of letters and spaces from the very start is cut.
    """
    text = (message or "").lstrip()
    if text[:5].isdigit() or text.startswith("400, message:"):  # aiohttp's "400, message: ..." form
        text = text.split(":", 1)[1].lstrip() if ":" in text else ""
    found = _PHRASE.match(text)
    phrase = found.group(0).strip(" ,(-") if found else ""
    return phrase or fallback
