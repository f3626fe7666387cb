"""Builders for translator inputs and real PEM material (minted with `cryptography`)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kubegate.resources import ServiceInfo, ServicePort, SourceObject, TranslationInput


def obj(kind: str, name: str, spec: dict[str, Any], namespace: str = "shop", created: str = "",
        generation: int = 1) -> SourceObject:
    return SourceObject(kind=kind, namespace=namespace, name=name, spec=spec,
                        creation_timestamp=created, generation=generation)


def route(name: str, path: str = "/x", namespace: str = "shop", created: str = "", **spec: Any) -> SourceObject:
    spec.setdefault("backends", [{"service": "web", "port": 80}])
    return obj("GatewayRoute", name, {"path": path, **spec}, namespace, created)


def service(name: str = "web", namespace: str = "shop", ports: tuple[int, ...] = (80,),
            selector: dict[str, str] | None = None, **kw: Any) -> ServiceInfo:
    return ServiceInfo(namespace=namespace, name=name,
                       ports=tuple(ServicePort(port=p, target_port=p + 8000) for p in ports),
                       selector={"app": name} if selector is None else selector, **kw)


def make_input(*objects: SourceObject, services: list[ServiceInfo] | None = None,
               secrets: dict[tuple[str, str], dict[str, bytes]] | None = None,
               gateway_namespace: str = "kubegate-system") -> TranslationInput:
    services = [service()] if services is None else services
    return TranslationInput(
        gateway_namespace=gateway_namespace,
        objects=tuple(objects),
        services={(s.namespace, s.name): s for s in services},
        secrets=secrets or {},
    )


def _pem_cert(subject: str, key, issuer_key=None, issuer_name=None, ca: bool = False) -> bytes:
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name or name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key or key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="session")
def pki() -> dict[str, bytes]:
    """A CA, a server certificate/key pair it signed, an unrelated key and a public key PEM."""
    ca_key, server_key, other_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _pem_cert("test CA", ca_key, ca=True)
    ca_name = x509.load_pem_x509_certificate(ca).subject
    return {
        "ca.crt": ca,
        "tls.crt": _pem_cert("api.example.com", server_key, ca_key, ca_name),
        "tls.key": _pem_key(server_key),
        "other.key": _pem_key(other_key),
        "public.pem": server_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    }


@pytest.fixture(scope="session")
def build():
    """The builders above (test modules cannot import conftest under --import-mode=importlib)."""
    import types

    return types.SimpleNamespace(obj=obj, route=route, service=service, make_input=make_input)
