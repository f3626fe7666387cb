"""The file config source of ``kubegate run``: manifests on disk -> translator -> Gateway.apply.

Polls file mtimes (no extra dependency, works on every filesystem). A file
that fails to load refuses the whole reload, so a half-saved edit never drops
routes: the last good config keeps serving until the files are fixed.
Local conventions: every non-ExternalName Service becomes an ExternalName
Service for 127.0.0.1 (``service: x, port: N`` reaches 127.0.0.1:N), and
TLSPolicies with an issuerRef get a dev-CA certificate.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from kubegate.errors import UserError
from kubegate.manifests import LoadedManifests, load_manifests, manifest_files
from kubegate.resources import ServiceInfo, TranslationInput, TranslationResult
from kubegate.translate import certificate_name, translate

from ..devca import DevCa
from ..server import ConfigRejected, Gateway

log = logging.getLogger("kubegate.run")

POLL_SECONDS = 0.5
LOCAL_HOST = "127.0.0.1"


class LoadFailed(Exception):
    """The manifests could not be loaded; ``problems`` has one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems[0] if problems else "manifests could not be loaded")
        self.problems = problems


def local_services(services: dict[tuple[str, str], ServiceInfo]) -> dict[tuple[str, str], ServiceInfo]:
    """Point every cluster Service at loopback: there is no cluster in local mode."""
    out = {}
    for key, svc in services.items():
        if svc.type != "ExternalName":
            svc = svc.model_copy(update={"type": "ExternalName", "external_name": LOCAL_HOST})
        out[key] = svc
    return out


def dev_certificates(loaded: LoadedManifests, namespace: str, ca: DevCa | None) -> dict[tuple[str, str], dict]:
    """The Secrets cert-manager would write for TLSPolicies with an issuerRef."""
    out: dict[tuple[str, str], dict] = {}
    if ca is None:
        return out
    for obj in loaded.objects:
        certificate = obj.spec.get("certificate") if obj.kind == "TLSPolicy" else None
        if isinstance(certificate, dict) and certificate.get("issuerRef"):
            hostnames = tuple(h for h in obj.spec.get("hostnames") or () if isinstance(h, str))
            if hostnames:
                out[(namespace, certificate_name(obj.namespace, obj.name))] = ca.tls_secret(hostnames)
    return out


def build(paths: list[str], namespace: str, ca: DevCa | None) -> TranslationResult:
    """Load + translate; LoadFailed when any file has a problem."""
    try:
        loaded = load_manifests(paths)
    except UserError as exc:
        raise LoadFailed([str(exc)]) from None
    if loaded.problems:
        raise LoadFailed([str(p) for p in loaded.problems])
    secrets = {**loaded.secrets, **dev_certificates(loaded, namespace, ca)}
    inp = TranslationInput(gateway_namespace=namespace, objects=tuple(loaded.objects), secrets=secrets,
                           services=local_services(loaded.services))
    return translate(inp)


def report(result: TranslationResult) -> list[str]:
    """One line per object that is not served as written (never secret values)."""
    lines = []
    for ref, res in sorted(result.results.items(), key=lambda item: str(item[0])):
        for cond in (res.accepted, res.resolved_refs):
            if cond.status != "True":
                lines.append(f"{ref}: {cond.type}={cond.status} {cond.reason}: {cond.message}")
                break
    lines.extend(result.warnings)
    return lines


@dataclass
class FileConfigSource:
    paths: list[str]
    gateway: Gateway
    namespace: str
    ca: DevCa | None = None
    poll_seconds: float = POLL_SECONDS

    def _stamp(self) -> tuple:
        stamps = []
        for path in [Path(p) for p in self.paths]:
            try:
                stamps.append((str(path), path.stat().st_mtime_ns))
            except OSError:
                stamps.append((str(path), None))
        try:
            for file in manifest_files(self.paths):
                stat = file.stat()
                stamps.append((str(file), stat.st_mtime_ns, stat.st_size))
        except (OSError, UserError) as exc:  # a vanished path: the loader reports it
            stamps.append(("error", str(exc)))
        return tuple(stamps)

    def load(self) -> str | None:
        """Translate and apply once, on the calling thread (the first load, before serving)."""
        return self._apply(self._translate())

    async def load_off_loop(self) -> str | None:
        """load(), with loading, translating and building the snapshot in a worker thread."""
        result = await asyncio.to_thread(self._translate)
        if result is None:
            return None
        try:
            return await self.gateway.apply_off_loop(result.config, result.secrets)
        except ConfigRejected:
            return None

    def _translate(self) -> TranslationResult | None:
        try:
            result = build(self.paths, self.namespace, self.ca)
        except LoadFailed as failed:
            for line in failed.problems:
                log.warning("%s", line)
            self.gateway.reject(f"{len(failed.problems)} problem(s) in the manifests")
            return None
        for line in report(result):
            log.warning("%s", line)
        return result

    def _apply(self, result: TranslationResult | None) -> str | None:
        if result is None:
            return None
        try:
            digest = self.gateway.apply(result.config, result.secrets)
        except ConfigRejected:
            return None
        return digest

    async def run(self) -> None:
        """Reload whenever a watched file changes; runs until cancelled."""
        last = self._stamp()
        while True:
            await asyncio.sleep(self.poll_seconds)
            current = self._stamp()
            if current != last:
                last = current
                await asyncio.sleep(0.05)  # let an editor finish writing
                last = self._stamp()
                await self.load_off_loop()
