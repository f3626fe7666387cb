"""A local development CA for ``kubegate run``: what cert-manager does in a cluster.

TLSPolicies with an ``issuerRef`` get a server certificate signed by a CA kept
in ``~/.cache/kubegate/devca/`` (``$XDG_CACHE_HOME`` honoured), so users can
``curl --cacert <path>``. The certificate is injected as the Secret the
operator's Certificate would produce (``kubegate-<ns>-<name>`` in the gateway
namespace), keeping the translator pure. Minting itself is ``kubegate.pki``.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kubegate.pki import Minted, mint_ca, mint_cert


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kubegate" / "devca"


class DevCa:
    """The cached CA plus an in-memory cache of issued leaves (stable across reloads)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or default_dir()
        self.ca = self._load_or_create()
        self._issued: dict[tuple[str, ...], Minted] = {}

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.crt"

    def _load_or_create(self) -> Minted:
        cert_path, key_path = self.directory / "ca.crt", self.directory / "ca.key"
        if cert_path.is_file() and key_path.is_file():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if isinstance(key, ec.EllipticCurvePrivateKey) and cert.not_valid_after_utc > dt.datetime.now(dt.UTC):
                return Minted(cert_path.read_text(), key_path.read_text(), cert, key)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca = mint_ca()
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(ca.key_pem)
        cert_path.write_text(ca.cert_pem)
        return ca

    def server_certificate(self, hostnames: tuple[str, ...]) -> Minted:
        key = tuple(sorted(hostnames))
        if key not in self._issued:
            self._issued[key] = mint_cert(self.ca, key[0] if key else "localhost", key)
        return self._issued[key]

    def tls_secret(self, hostnames: tuple[str, ...]) -> dict[str, bytes]:
        """Secret data as a kubernetes.io/tls Secret holds it (chain includes the CA)."""
        leaf = self.server_certificate(hostnames)
        return {
            "tls.crt": (leaf.cert_pem + self.ca.cert_pem).encode(),
            "tls.key": leaf.key_pem.encode(),
            "ca.crt": self.ca.cert_pem.encode(),
        }
