"""Canonical JSON of a compiled config, assembled from its items' already-serialised JSON.

``canonical_json(config)`` of a config with thousands of routes costs more than
translating one changed route; each item's JSON is kept in the memo
(:meth:`memo.Entry.serve`) and spliced here, so an incremental translation
re-serialises only what changed. The bytes travel on the
:class:`~kubegate.resources.TranslationResult` (``config_json``/``secrets_json``):
no cache keyed by object identity.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kubegate.config import CompiledConfig, canonical_json, plain

# Exactly json.dumps(..., sort_keys=True, separators=(",", ":")), i.e. config.canonical_json, built once.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def item_json(model: Any) -> bytes:
    """The canonical JSON of one compiled element (a model, or the CompiledApiKey dataclass)."""
    return _CANONICAL.encode(plain(model)).encode()


def assemble_json(config: CompiledConfig, lists: dict[str, list[bytes]]) -> bytes:
    """``canonical_json(config)`` with the big lists spliced in from their items' cached JSON."""
    top: dict[str, Any] = config.model_dump(mode="json", exclude=set(lists))
    marks = {name: f"\0{name}\0" for name in lists}
    top.update(marks)
    text = _CANONICAL.encode(top).encode()
    places = []
    for name in lists:
        mark = json.dumps(marks[name]).encode()
        at = text.find(mark)
        if at < 0 or text.find(mark, at + 1) >= 0:  # impossible while CompiledConfig has these fields; never guess
            return canonical_json(config)
        places.append((at, len(mark), name))
    parts, done = [], 0  # one join of the whole text, not one per list
    for at, length, name in sorted(places):
        parts += (text[done:at], b"[", b",".join(lists[name]), b"]")
        done = at + length
    parts.append(text[done:])
    return b"".join(parts)


def hash_of(config_json: bytes, secrets_json: bytes) -> str:
    """``config_hash(config, secrets)`` from the canonical bytes already at hand."""
    digest = hashlib.sha256()
    digest.update(config_json)
    digest.update(b"\0")
    digest.update(secrets_json)
    return digest.hexdigest()
