"""mTLS subject authorization on real certificates: minted by kubegate.pki, and the
getpeercert() dicts taken from a real (in-memory) TLS 1.3 handshake."""

from __future__ import annotations

import io
import ssl

import pytest
from kubegate.dataplane.admission import Admission, RequestFacts
from kubegate.dataplane.audit import AuditLog
from kubegate.dataplane.jwks import JwksCache
from kubegate.dataplane.metrics import Metrics
from kubegate.dataplane.mtls_auth import SubjectMatcher, client_identity
from kubegate.dataplane.ratelimit import MemoryRateLimiter
from multidict import CIMultiDict, CIMultiDictProxy

from kubegate.config import (
    CompiledAuth,
    CompiledBackend,
    CompiledConfig,
    CompiledRoute,
    SecretBundle,
)
from kubegate.pki import mint_ca, mint_cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = mint_ca("kubegate test CA", days=1)
    (folder / "ca.pem").write_text(ca.cert_pem)

    def issue(name: str, cn: str, dns: tuple[str, ...] = (), client: bool = True):
        minted = mint_cert(ca, cn, dns, client=client, days=1)
        (folder / f"{name}.pem").write_text(minted.cert_pem + minted.key_pem)
        return folder / f"{name}.pem"

    return {
        "ca": folder / "ca.pem",
        "server": issue("server", "gateway.test", ("gateway.test",), client=False),
        "smo": issue("smo", "smo.example.com"),
        "san": issue("san", "some-cn", ("client-a.example.com", "client-b.example.com")),
        "other": issue("other", "intruder.example.com"),
    }


def handshake_peer_cert(pki, client: str) -> dict:
    """A real TLS handshake over memory BIOs; returns the server's getpeercert() of the client."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki["server"])
    server_ctx.load_verify_locations(pki["ca"])
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(pki["ca"])
    client_ctx.load_cert_chain(pki[client])
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client_obj = client_ctx.wrap_bio(c_in, c_out, server_hostname="gateway.test")
    done = {"s": False, "c": False}
    for _ in range(20):
        for name, side in (("c", client_obj), ("s", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    # TLS 1.3: the server verifies the client certificate after the client's Finished
    client_obj.write(b"ping")
    s_in.write(c_out.read())
    assert server.read(4) == b"ping"
    return server.getpeercert()


def route(subjects: tuple[str, ...], required: bool = True) -> CompiledRoute:
    return CompiledRoute(id="o2ims/api", namespace="o2ims", name="api", path="/o2ims/*rest",
                         backends=(CompiledBackend(url="http://b"),),
                         auth=CompiledAuth(required=required, methods=("mtls",), mtls_subjects=subjects))


def facts(peer_cert: dict | None) -> RequestFacts:
    return RequestFacts(method="GET", path="/o2ims/x", host="gateway.test", client_ip="10.0.0.1",
                        headers=CIMultiDictProxy(CIMultiDict()), peer_cert=peer_cert, tls=True)


async def admit(r: CompiledRoute, peer_cert: dict | None):
    adm = Admission(CompiledConfig(routes=(r,)), SecretBundle(), limiter=MemoryRateLimiter(), jwks=JwksCache(),
                    metrics=Metrics(), audit=AuditLog(io.StringIO()))
    return await adm.admit(r, facts(peer_cert))


def test_identity_from_a_real_handshake(pki):
    identity = client_identity(handshake_peer_cert(pki, "san"))
    assert identity.common_names == ("some-cn",)
    assert identity.dns_names == ("client-a.example.com", "client-b.example.com")
    assert client_identity(None) is None and client_identity({}) is None


@pytest.mark.parametrize("client,subjects,status,reason", [
    ("smo", ("CN=smo.example.com",), None, ""),
    ("smo", (), None, ""),  # empty list: any verified client
    ("other", ("CN=smo.example.com",), 403, "forbidden_subject"),
    ("san", ("CLIENT-B.example.com",), None, ""),  # SAN DNS, case-insensitive
    ("san", ("CN=client-a.example.com",), 403, "forbidden_subject"),  # CN= entries match the CN only
    ("san", ("some-cn",), 403, "forbidden_subject"),  # plain entries match SAN DNS only
])
async def test_subject_matching(pki, client, subjects, status, reason):
    decision = await admit(route(subjects), handshake_peer_cert(pki, client))
    assert (decision.status, decision.reason) == (status, reason)
    if status is None:
        assert decision.principal.startswith("mtls:")


async def test_no_client_certificate(pki):
    missing = await admit(route(("CN=smo.example.com",)), None)
    assert (missing.status, missing.reason) == (401, "missing_credentials")
    assert (await admit(route(("CN=smo.example.com",), required=False), None)).status is None


def test_matcher_normalises_entries():
    matcher = SubjectMatcher([" cn=smo.example.com ", "API.example.com"])
    assert matcher.allows(client_identity({"subject": ((("commonName", "smo.example.com"),),)}))
    assert matcher.allows(client_identity({"subject": (), "subjectAltName": (("DNS", "api.EXAMPLE.com"),)}))
    assert not matcher.allows(client_identity({"subject": ((("commonName", "SMO.example.com"),),)}))
