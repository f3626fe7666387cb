"""What a request asks for: its Host and its path, parsed and normalised once for the whole pipeline.

The router, the TLS checks and the upstream all read these results, never
the raw header or target again, so nothing downstream can read a request
differently from the way it was matched.

Paths follow RFC 3986 §6.2.2: percent-encoded unreserved characters are
decoded (``%61dmin`` is ``admin``, ``%2e`` is ``.``), the remaining escapes
get upper-case hex, dot segments are removed (a ``..`` above the root is
refused) and empty segments are merged. What backends disagree about is
refused with a 400 instead of guessed: an encoded ``/``, ``\\`` or NUL in a
segment (Envoy's ``REJECT_REQUEST`` for escaped slashes), a literal ``\\``, a
dot segment carrying ``;`` parameters (``..;`` is ``..`` to Tomcat and
Spring), a malformed escape.

Host headers follow RFC 9110 §7.2: ``uri-host [ ":" port ]`` with the host a
DNS-style name, an IPv4 address or a bracketed IPv6 literal and the port at
most five digits. ``internal.test:x@evil.test`` and ``internal.test:evil``
are refused.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import NamedTuple

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
_REFUSED_ESCAPES = {0x2F: "an encoded '/'", 0x5C: "an encoded '\\'", 0x00: "an encoded NUL"}
_new_tuple = tuple.__new__  # a NamedTuple without its Python-level __new__: the per-request case


class RequestPath(NamedTuple):
    """The normalised path (matched, then forwarded) and its segments (what the router walks)."""

    path: str
    segments: list[str]


class PathRefused(NamedTuple):
    """Why a request path gets a 400 (a fixed phrase, never the path itself)."""

    reason: str


def normalise_request_path(raw_path: str) -> RequestPath | PathRefused:
    """The one request-path normaliser of the data plane (see the module docstring)."""
    if raw_path[:1] != "/":
        return PathRefused("the request target is not an absolute path")
    if "%" not in raw_path and "/." not in raw_path and "//" not in raw_path and "\\" not in raw_path:
        inner = raw_path[1:]  # the common case: nothing to decode or resolve
        segments = inner.split("/") if inner else []
        if segments and not segments[-1]:
            segments.pop()
        return _new_tuple(RequestPath, (raw_path, segments))
    segments: list[str] = []
    last_was_dot = False
    for raw in raw_path.split("/"):
        seg = _decode_unreserved(raw) if "%" in raw else raw
        if isinstance(seg, PathRefused):
            return seg
        if "\\" in seg:
            return PathRefused("the path contains a '\\'")
        last_was_dot = seg == "." or seg == ".."
        if seg == "..":
            if not segments:
                return PathRefused("the path escapes the root")
            segments.pop()
        elif last_was_dot or not seg:
            continue
        elif ";" in seg and seg.partition(";")[0] in (".", ".."):
            return PathRefused("a dot segment carries parameters")
        else:
            segments.append(seg)
    trailing = last_was_dot or raw_path.endswith("/")
    path = "/" + "/".join(segments)
    if trailing and segments:
        path += "/"
    return RequestPath(path, segments)


def _decode_unreserved(seg: str) -> str | PathRefused:
    """Decode %XX of unreserved characters, upper-case the other escapes, refuse the dangerous ones."""
    out: list[str] = []
    i, n = 0, len(seg)
    while i < n:
        char = seg[i]
        if char != "%":
            out.append(char)
            i += 1
            continue
        hex_pair = seg[i + 1:i + 3]
        if len(hex_pair) != 2 or hex_pair[0] not in _HEX or hex_pair[1] not in _HEX:
            return PathRefused("the path has a malformed percent-escape")
        value = int(hex_pair, 16)
        refused = _REFUSED_ESCAPES.get(value)
        if refused is not None:
            return PathRefused(f"the path has {refused} in a segment")
        decoded = chr(value)
        out.append(decoded if decoded in _UNRESERVED else "%" + hex_pair.upper())
        i += 3
    return "".join(out)


_LABELS = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.?",
                     re.ASCII | re.IGNORECASE)
_PORT = re.compile(r"[0-9]{0,5}", re.ASCII)


_MAX_HOST_HEADER = 254 + 6 + 2  # the longest name, ":65535", an IPv6 literal's brackets


def parse_host(value: str) -> str | None:
    """The host of a Host header (lower case, no port, no trailing dot); None when it is not valid.

    An empty value gives ``""`` (HTTP/1.0 clients may send none; only routes
    without hosts can match it). IPv6 literals keep their brackets. Results are
    cached (hosts repeat); values too long to be valid never reach the cache.
    """
    return _parse_host(value) if len(value) <= _MAX_HOST_HEADER else None


@lru_cache(maxsize=4096)
def _parse_host(value: str) -> str | None:
    if not value:
        return ""
    if value[0] == "[":
        end = value.find("]")
        if end == -1 or not _valid_port(value[end + 1:], allow_empty=True):
            return None
        inner = value[1:end]
        if "%" in inner:  # a zone id names an interface of the client's host, never ours
            return None
        try:
            ipaddress.IPv6Address(inner)  # also refuses IPvFuture
        except ValueError:
            return None
        return "[" + inner.lower() + "]"
    host, colon, port = value.partition(":")
    if colon and not _valid_port(":" + port, allow_empty=True):
        return None
    if len(host) > 254 or _LABELS.fullmatch(host) is None:
        return None
    return host.lower().rstrip(".")


def _valid_port(rest: str, *, allow_empty: bool) -> bool:
    if not rest:
        return allow_empty
    if rest[0] != ":" or _PORT.fullmatch(rest[1:]) is None:
        return False
    return not rest[1:] or int(rest[1:]) <= 65535
