"""X.509 minting: the one place kubegate (and its test suite) makes keys and certificates.

Used by the local development CA (``dataplane/devca.py``: what cert-manager does for
``kubegate run``), the dev cluster's throwaway PKI (``devcluster.py``) and every test
that needs real certificates. Keys are EC P-256 unless the caller passes its own.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LEAF_DAYS = 90
CA_DAYS = 3650
_BACKDATE = dt.timedelta(minutes=5)  # clock skew between the minting and the verifying host


@dataclass(frozen=True, slots=True)
class Minted:
    cert_pem: str
    key_pem: str
    cert: x509.Certificate
    key: Any  # a cryptography private key (EC unless the caller passed another)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: Any) -> str:
    """An unencrypted PKCS#8 PEM private key."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_key_pem(key: Any) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)] if organization else []
    return x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name, key: Any, days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _minted(cert: x509.Certificate, key: Any) -> Minted:
    return Minted(cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem(key), cert, key)


def mint_ca(common_name: str = "kubegate development CA", days: int = CA_DAYS, *, key: Any = None) -> Minted:
    """A self-signed CA that signs leaves only (path length 0)."""
    key = key or new_key()
    cert = (
        _builder(name(common_name), name(common_name), key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _minted(cert, key)


def subject_alt_names(names: tuple[str, ...]) -> list[x509.GeneralName]:
    """IP literals as IP SANs, everything else as DNS names."""
    sans: list[x509.GeneralName] = []
    for entry in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            sans.append(x509.DNSName(entry))
    return sans


def mint_cert(ca: Minted | None, common_name: str, dns_names: tuple[str, ...] = (), *, client: bool = False,
              days: int = LEAF_DAYS, key: Any = None, organization: str | None = None) -> Minted:
    """A leaf certificate: server (SANs = dns_names) or client; signed by ``ca``, or self-signed if None."""
    key = key or new_key()
    subject = name(common_name, organization)
    signer = ca.key if ca is not None else key
    builder = (
        _builder(subject, ca.cert.subject if ca is not None else subject, key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
    )
    if dns_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(subject_alt_names(dns_names)), critical=False)
    return _minted(builder.sign(signer, hashes.SHA256()), key)
