"""Write generated objects with server-side apply, and only when something changed.

Each desired object carries a content-hash annotation. An object is applied
when it is missing, when its live hash differs, or when someone other than
kubegate touched it since we last saw it settle (a hand edit: its
resourceVersion moved and another field manager appears). Server-side apply
with ``force`` then restores every field kubegate owns. Generated objects that
are no longer desired are deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubegate.kubeapi import FIELD_MANAGER, ApiError, KubeApi, object_path
from kubegate.names import MANAGED_BY_LABEL, SHARD_LABEL

log = logging.getLogger("kubegate.operator.apply")

CONTENT_HASH = "kubegate.dev/content-hash"
API_KEY_LABEL = "kubegate.dev/api-key"  # ApiKey Secrets: managed-by kubegate, but never garbage-collected

Key = tuple[str, str, str, str]  # (apiVersion, kind, namespace, name)


def object_key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (obj.get("apiVersion", ""), obj.get("kind", ""), meta.get("namespace") or "", meta.get("name") or "")


def content_hash(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def with_content_hash(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object plus its content-hash annotation and the managed-by label (pure)."""
    out = json.loads(json.dumps(obj))  # deep copy, plain JSON types
    meta = out.setdefault("metadata", {})
    meta.setdefault("labels", {})[MANAGED_BY_LABEL] = FIELD_MANAGER
    meta.setdefault("annotations", {}).pop(CONTENT_HASH, None)
    meta["annotations"][CONTENT_HASH] = content_hash(out)
    return out


def touched_by_others(live: Mapping[str, Any]) -> bool:
    """Whether a field manager other than kubegate owns fields (a hand edit, e.g. kubectl edit)."""
    for entry in (live.get("metadata") or {}).get("managedFields") or ():
        if entry.get("manager") != FIELD_MANAGER and entry.get("subresource") != "status":
            return True
    return False


def needs_apply(desired: Mapping[str, Any], live: Mapping[str, Any] | None, settled_version: str | None) -> bool:
    """Decide without I/O whether ``desired`` must be written (pure)."""
    if live is None:
        return True
    live_meta = live.get("metadata") or {}
    want = (desired.get("metadata") or {}).get("annotations", {}).get(CONTENT_HASH)
    if (live_meta.get("annotations") or {}).get(CONTENT_HASH) != want:
        return True
    if settled_version is not None and live_meta.get("resourceVersion") == settled_version:
        return False
    return touched_by_others(live)


def garbage(live_objects: Iterable[Mapping[str, Any]], desired_keys: set[Key]) -> list[Mapping[str, Any]]:
    """Generated objects that nothing desires any more (never ApiKey Secrets)."""
    out = []
    for obj in live_objects:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        if labels.get(MANAGED_BY_LABEL) != FIELD_MANAGER or API_KEY_LABEL in labels:
            continue
        if object_key(obj) not in desired_keys:
            out.append(obj)
    return out


class Applier:
    """Remembers the resourceVersion each generated object settled at after our last write."""

    def __init__(self, api: KubeApi, on_write: Callable[[str], None] | None = None) -> None:
        self.api = api
        self.on_write = on_write or (lambda _kind: None)  # called with the kind of every object written
        self.settled: dict[Key, str] = {}
        self.held_back: set[str] = set()  # primaries the last sync did not write: their shards are kept
        self.writes = 0  # objects written (created, changed, restored, deleted) since start

    async def sync(self, desired: Iterable[Mapping[str, Any]], live: Mapping[Key, Mapping[str, Any]]) -> int:
        """Apply what changed, all at once (the data plane waits for both halves of a config), except
        that shards go first: a primary (``kubegate-config``/``kubegate-secrets``) is written only once
        every shard it lists is, so it never names a shard that is not there. Returns the count."""
        shards, others = [], []
        for obj in desired:
            key = object_key(obj)
            current = live.get(key)
            if needs_apply(obj, current, self.settled.get(key)):
                before = (current or {}).get("metadata", {}).get("resourceVersion")
                labels = (obj.get("metadata") or {}).get("labels") or {}
                (shards if SHARD_LABEL in labels else others).append((key, obj, before, labels.get(SHARD_LABEL)))
            elif current is not None:
                self.settled[key] = current["metadata"].get("resourceVersion", "")
        results = await asyncio.gather(*(self._apply(key, obj, before) for key, obj, before, _ in shards))
        failed = {primary for (*_, primary), result in zip(shards, results, strict=True) if result is None}
        for key in sorted({k for k, *_ in others if k[3] in failed}):
            log.warning("not writing %s %s/%s: one of its shards could not be written", key[1], key[2], key[3])
        ready = [entry for entry in others if entry[0][3] not in failed]
        written_others = await asyncio.gather(*(self._apply(key, obj, before) for key, obj, before, _ in ready))
        # A primary that did not move on still lists its shards: collect() keeps them.
        self.held_back = failed | {key[3] for (key, *_), result in zip(ready, written_others, strict=True)
                                   if result is None}
        written = sum(result or 0 for result in [*results, *written_others])
        self.writes += written
        return written

    async def _apply(self, key: Key, obj: Mapping[str, Any], before: str | None) -> int | None:
        """1 when written, 0 when the API server already had it, None when the write failed."""
        try:
            result = await self.api.apply(dict(obj))
        except ApiError as exc:
            log.warning("apply %s/%s %s/%s failed: %s", *key, exc)
            return None
        after = result.get("metadata", {}).get("resourceVersion", "")
        self.settled[key] = after
        if after == before:
            return 0
        self.on_write(key[1])
        log.info("applied %s %s/%s", key[1], key[2], key[3])
        return 1

    async def collect(self, stale: Iterable[Mapping[str, Any]], api_version: str, kind: str) -> int:
        deleted = 0
        for obj in stale:
            if ((obj.get("metadata") or {}).get("labels") or {}).get(SHARD_LABEL) in self.held_back:
                continue
            body = {**obj, "apiVersion": api_version, "kind": kind}
            try:
                if await self.api.delete(object_path(body)):
                    deleted += 1
                    self.on_write(kind)
                    log.info("deleted stale %s %s/%s", kind, obj["metadata"].get("namespace"),
                             obj["metadata"].get("name"))
            except ApiError as exc:
                log.warning("delete stale %s failed: %s", kind, exc)
            self.settled.pop(object_key(body), None)
        self.writes += deleted
        return deleted
