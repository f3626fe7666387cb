"""A local development CA for ``kubegate run``: what cert-manager does in a cluster.

TLSPolicies with an ``issuerRef`` get a server certificate signed by a CA kept
in ``~/.cache/kubegate/devca/`` (``$XDG_CACHE_HOME`` honoured), so users can
``curl --cacert <path>``. The certificate is injected as the Secret the
operator's Certificate would produce (``kubegate-<ns>-<name>`` in the gateway
namespace), keeping the translator pure. ``mint_ca``/``mint_cert`` are also
the test suite's certificate factory.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LEAF_DAYS = 90
CA_DAYS = 3650


@dataclass(frozen=True, slots=True)
class Minted:
    cert_pem: str
    key_pem: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def mint_ca(common_name: str = "kubegate development CA", days: int = CA_DAYS) -> Minted:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Minted(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key), cert, key)


def mint_cert(ca: Minted, common_name: str, dns_names: tuple[str, ...] = (), *, client: bool = False,
              days: int = LEAF_DAYS) -> Minted:
    """A leaf certificate signed by ``ca``: server (SANs = dns_names) or client."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = []
    for name in dns_names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return Minted(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key), cert, key)


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kubegate" / "devca"


def certificate_secret_name(namespace: str, name: str) -> str:
    """The Secret the operator's cert-manager Certificate for TLSPolicy namespace/name writes."""
    return f"kubegate-{namespace}-{name}"


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
