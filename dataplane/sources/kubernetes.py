"""The data plane's config source in a cluster: ConfigMap + Secret read through the API.

Watches exactly two objects, by name (``fieldSelector=metadata.name=...``), so
the data plane's Role can be restricted to those names. A config is loaded
only when both halves carry the same hash annotation (the operator writes
them one after the other); undecodable or refused configs are rejected and
the last good one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from kubegate.config import HASH_ANNOTATION, ConfigDecodeError
from kubegate.kubeapi import Informer, KubeApi, path_for

from ..snapshot import off_loop
from .decode import CONFIG_MAP_NAME, SECRET_NAME, IncrementalDecoder, halves

log = logging.getLogger("kubegate.dataplane.sources.kubernetes")



def announced_hash(obj: Mapping[str, Any] | None) -> str | None:
    return ((obj or {}).get("metadata") or {}).get("annotations", {}).get(HASH_ANNOTATION)


def matching_hash(config_map: Mapping[str, Any] | None, secret: Mapping[str, Any] | None) -> str | None:
    """The hash both halves announce, or None while they disagree or one is missing (pure)."""
    a, b = announced_hash(config_map), announced_hash(secret)
    return a if a and a == b else None


class KubernetesConfigSource:
    """Feeds ``gateway.apply`` from the API; ``on_loaded(hash)`` fires after every successful swap."""

    def __init__(self, api: KubeApi, namespace: str, gateway: Any,
                 on_loaded: Callable[[str], None] | None = None) -> None:
        self.gateway, self.on_loaded = gateway, on_loaded
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
        task = asyncio.get_running_loop().create_task(self.load(config_map, secret, wanted))  # type: ignore[arg-type]
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)

    async def load(self, config_map: Mapping[str, Any], secret: Mapping[str, Any], wanted: str) -> str | None:
        from kubegate.dataplane.server import ConfigRejected

        try:
            encoded = halves(config_map, secret)
            async with self._decoding:
                config, secrets, digest = await off_loop(self._decoder.decode, *encoded)
        except ConfigDecodeError as exc:
            self.gateway.reject(str(exc))
            return None
        try:
            loaded = await self.gateway.apply_off_loop(config, secrets, digest, encoded)
        except ConfigRejected:
            return None  # the gateway logged and counted it; the last good config stays
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
