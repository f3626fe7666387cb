"""Builders for translator inputs and real PEM material (minted by kubegate.pki)."""

from __future__ import annotations

from typing import Any

import pytest

from kubegate.pki import key_pem, mint_ca, mint_cert, new_key, public_key_pem
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


@pytest.fixture(scope="session")
def pki() -> dict[str, bytes]:
    """A CA, a server certificate/key pair it signed, an unrelated key and a public key PEM."""
    ca = mint_ca("test CA")
    server = mint_cert(ca, "api.example.com", ("api.example.com",))
    return {
        "ca.crt": ca.cert_pem.encode(),
        "tls.crt": server.cert_pem.encode(),
        "tls.key": server.key_pem.encode(),
        "other.key": key_pem(new_key()).encode(),
        "public.pem": public_key_pem(server.key).encode(),
    }


@pytest.fixture(scope="session")
def build():
    """The builders above (test modules cannot import conftest under --import-mode=importlib)."""
    import types

    return types.SimpleNamespace(obj=obj, route=route, service=service, make_input=make_input)
