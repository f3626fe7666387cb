"""The data plane's config source in a cluster: ConfigMap + Secret read through the API.

Watches exactly two objects, by name (``fieldSelector=metadata.name=...``), so
the data plane's Role can be restricted to those names. A config is loaded
only when both halves carry the same hash annotation (the operator writes
them one after the other); undecodable or refused configs are rejected and
the last good one keeps serving.

A payload larger than one object continues in shards (``kubegate-config-1..N``,
``kubegate-secrets-1..N``, see kubegate/generate.py) that the primary lists
with their digests and that the operator writes before it. They are read by
name (``get``) when a primary announces a new config; a shard that is missing,
carries another config's hash or not the listed bytes leaves the last good
config serving, and is asked for again (RETRY_SECONDS, doubling up to
RETRY_MAX) as long as the primaries still announce that config.

Under ``--workers`` the supervisor does not decode a config whose payloads are
the canonical JSON of the announced hash (``decode.canonical_digest``, a
gunzip and a sha256): its workers decode it (each needs the models anyway)
and refuse the reload if it is not a valid config.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from kubegate.config import ConfigDecodeError, ShardsIncomplete
from kubegate.kubeapi import ApiError, Informer, KubeApi, path_for

from ..snapshot import off_loop
from .decode import (
    CONFIG_MAP_NAME,
    SECRET_NAME,
    IncrementalDecoder,
    announced_hash,
    canonical_digest,
    halves,
    shards_listed,
)

log = logging.getLogger("kubegate.dataplane.sources.kubernetes")

RETRY_SECONDS, RETRY_MAX = 0.5, 8.0


def matching_hash(config_map: Mapping[str, Any] | None, secret: Mapping[str, Any] | None) -> str | None:
    """The hash both halves announce, or None while they disagree or one is missing (pure)."""
    a, b = announced_hash(config_map), announced_hash(secret)
    return a if a and a == b else None


class KubernetesConfigSource:
    """Feeds ``gateway.apply`` from the API; ``on_loaded(hash)`` fires after every successful swap."""

    def __init__(self, api: KubeApi, namespace: str, gateway: Any,
                 on_loaded: Callable[[str], None] | None = None) -> None:
        self.gateway, self.on_loaded = gateway, on_loaded
        self.api = api
        self.config_maps = Informer(api, path_for("v1", "ConfigMap", namespace), self._changed,
                                    field_selector=f"metadata.name={CONFIG_MAP_NAME}")
        self.secrets = Informer(api, path_for("v1", "Secret", namespace), self._changed,
                                field_selector=f"metadata.name={SECRET_NAME}")
        self.namespace = namespace
        self._last_attempt: str | None = None
        self._loads: set[asyncio.Task] = set()
        self._decoder = IncrementalDecoder()
        self._decoding = asyncio.Lock()  # one decode at a time: the decoder remembers the last one

    def _current(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        return (self.config_maps.objects.get((self.namespace, CONFIG_MAP_NAME)),
                self.secrets.objects.get((self.namespace, SECRET_NAME)))

    def _changed(self, _type: str, _obj: dict[str, Any]) -> None:
        config_map, secret = self._current()
        wanted = matching_hash(config_map, secret)
        if wanted is None or wanted == self._last_attempt or wanted == self.gateway.loaded_hash:
            return
        self._last_attempt = wanted
        # Decoded and built off the event loop, reusing what did not change; applied one at a time.
        task = asyncio.get_running_loop().create_task(self._load_when_complete(wanted))
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)

    def _announced(self, wanted: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The two primaries while they still announce ``wanted`` (and it is not served yet)."""
        config_map, secret = self._current()
        if matching_hash(config_map, secret) != wanted or self.gateway.loaded_hash == wanted:
            return None
        return config_map, secret  # type: ignore[return-value]

    async def _load_when_complete(self, wanted: str) -> None:
        delay = RETRY_SECONDS
        while (primaries := self._announced(wanted)) is not None:
            try:
                await self.load(*primaries, wanted)
                return
            except ShardsIncomplete:
                await asyncio.sleep(delay)  # the operator restores a shard it sees missing or edited
                delay = min(delay * 2, RETRY_MAX)

    async def _shards(self, config_map: Mapping[str, Any], secret: Mapping[str, Any]) -> dict[str, Any]:
        """The shards both primaries list, by name (None: absent or not readable)."""
        listed = [("ConfigMap", name) for name, _ in shards_listed(config_map, CONFIG_MAP_NAME, False)]
        listed += [("Secret", name) for name, _ in shards_listed(secret, SECRET_NAME, True)]

        async def read(kind: str, name: str) -> dict[str, Any] | None:
            try:
                return await self.api.get(path_for("v1", kind, self.namespace, name))
            except ApiError as exc:
                log.warning("cannot read %s %s: %s", kind, name, exc)
                return None

        found = await asyncio.gather(*(read(kind, name) for kind, name in listed))
        return {name: obj for (_, name), obj in zip(listed, found, strict=True)}

    async def load(self, config_map: Mapping[str, Any], secret: Mapping[str, Any], wanted: str) -> str | None:
        """Load the config the primaries announce; ShardsIncomplete (after rejecting it) when a shard is
        not there yet, so the caller asks again."""
        from kubegate.dataplane.server import ConfigRejected

        try:
            encoded = halves(config_map, secret, await self._shards(config_map, secret))
            apply_encoded = getattr(self.gateway, "apply_encoded", None)  # --workers: they decode it
            if apply_encoded is not None and await off_loop(canonical_digest, *encoded) == wanted:
                return self._loaded(apply_encoded(encoded, wanted), wanted)
            async with self._decoding:
                config, secrets, digest = await off_loop(self._decoder.decode, *encoded)
        except ShardsIncomplete as exc:
            self.gateway.reject(str(exc))
            raise
        except ConfigDecodeError as exc:
            self.gateway.reject(str(exc))
            return None
        try:
            loaded = await self.gateway.apply_off_loop(config, secrets, digest, encoded)
        except ConfigRejected:
            return None  # the gateway logged and counted it; the last good config stays
        return self._loaded(loaded, wanted)

    def _loaded(self, loaded: str, wanted: str) -> str:
        if loaded != wanted:
            log.warning("config content hash %s differs from the announced %s", loaded[:12], wanted[:12])
        if self.on_loaded is not None:
            self.on_loaded(loaded)
        return loaded

    async def run(self) -> None:
        try:
            await asyncio.gather(self.config_maps.run(), self.secrets.run())
        finally:
            for task in self._loads:
                task.cancel()
