"""Where a data plane's config comes from: one interface, two sources.

``file.FileConfigSource`` (``kubegate run``) translates manifest files on
disk; ``kubernetes.KubernetesConfigSource`` (``kubegate dataplane``) reads the
ConfigMap and Secret the operator writes. Both feed a :class:`ConfigTarget`
(a ``Gateway``, or the ``--workers`` ``Supervisor``) and keep the last good
config serving when a new one cannot be loaded.
"""

from __future__ import annotations

from typing import Protocol

from kubegate.config import CompiledConfig, SecretBundle


class ConfigTarget(Protocol):
    """What a source feeds: a Gateway or the supervisor of ``--workers``."""

    @property
    def loaded_hash(self) -> str | None: ...

    def reject(self, reason: str) -> None:
        """Count and log a config that could not be used."""

    async def apply_off_loop(self, config: CompiledConfig, secrets: SecretBundle, digest: str | None = None,
                             encoded: tuple[str, bytes] | None = None) -> str:
        """Build the new snapshot without stalling requests, then swap; returns the served hash.
        ``digest``: ``config_hash(config, secrets)`` when the source already computed it; ``encoded``:
        the payloads it was decoded from (decode.halves), which --workers' workers decode themselves."""


class ConfigSource(Protocol):
    gateway: ConfigTarget

    async def run(self) -> None:
        """Feed ``gateway`` every new config until cancelled."""
