"""The TLS connection, the Host header and the method, attacked on the real listeners (issue 8, items 1, 2, 4, 7, 10).

Real handshakes: Python's ssl, curl and openssl s_client, with certificates
minted here. Every case was served on the code before the fix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from pathlib import Path

import pytest

from kubegate.config import CompiledClientAuth, CompiledConfig, CompiledTls, SecretBundle
from kubegate.pki import mint_cert

HOSTS = {"a": ("a.test",), "b": ("b.test",), "c": ("c.test",), "w": ("*.w.test",), "x": ("admin.w.test",)}


@pytest.fixture(scope="module")
def certs(pki):
    server = {name: mint_cert(pki.ca, hosts[0].lstrip("*."), hosts) for name, hosts in HOSTS.items()}
    return {"server": server, "smo": mint_cert(pki.client_ca, "smo.test", ("smo.test",), client=True)}


def _policy(name: str, client: CompiledClientAuth | None = None) -> CompiledTls:
    return CompiledTls(id=f"ns/{name}", hostnames=HOSTS[name], cert_chain=f"{name}.crt", private_key=f"{name}.key",
                       client_auth=client)


def _secrets(pki, certs) -> SecretBundle:
    values = {"clientca": pki.client_ca.cert_pem}
    for name, minted in certs["server"].items():
        values[f"{name}.crt"], values[f"{name}.key"] = minted.cert_pem, minted.key_pem
    return SecretBundle(values=values)


REQUIRE = CompiledClientAuth(mode="require", ca_bundle="clientca", allowed_subjects=("CN=smo.test",))
OPTIONAL = CompiledClientAuth(mode="optional", ca_bundle="clientca", allowed_subjects=("CN=smo.test",))


@pytest.fixture
async def gateway(backend, start_gateway, make_route, pki, certs):
    b = await backend()
    config = CompiledConfig(
        routes=(make_route("/*rest", b.url), make_route("/trace/*rest", b.url, name="trace", methods=("TRACE",))),
        tls=(_policy("a", REQUIRE), _policy("b"), _policy("c", OPTIONAL), _policy("w"),
             _policy("x", CompiledClientAuth(mode="require", ca_bundle="clientca"))),
    )
    gw = await start_gateway(config, _secrets(pki, certs))
    gw.backend = b
    return gw


def _client_ctx(pki, cert=None, tmp: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=pki.ca.cert_pem)
    ctx.check_hostname = False  # the attacks send a Host the certificate may not name
    if cert is not None:
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "c.crt").write_text(cert.cert_pem)
        (tmp / "c.key").write_text(cert.key_pem)
        ctx.load_cert_chain(tmp / "c.crt", tmp / "c.key")
    return ctx


async def https(port: int, ctx: ssl.SSLContext, sni: str | None, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni)
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.read(), 10)
    except (ssl.SSLError, ConnectionResetError) as exc:  # TLS 1.3: a refused client cert shows up here
        return f"ALERT {exc}".encode()
    finally:
        writer.close()


async def plain(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def get(host: str, path: str = "/x", method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode()


def status(response: bytes) -> int:
    parts = response.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def header(response: bytes, name: str) -> str | None:
    for line in response.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower().encode():
            return value.strip().decode()
    return None


async def test_tlspolicy_allowed_subjects_apply_to_every_request(gateway, pki, certs, tmp_path):
    port = gateway.ports["https"]
    wrong = _client_ctx(pki, pki.client, tmp_path / "1")  # CN=client.test: trusted CA, subject not allowed
    right = _client_ctx(pki, certs["smo"], tmp_path / "2")
    assert status(await https(port, right, "a.test", get("a.test"))) == 200
    assert status(await https(port, wrong, "a.test", get("a.test"))) == 403
    # optional client auth: no certificate is the route's business, a wrong one is refused
    assert status(await https(port, _client_ctx(pki), "c.test", get("c.test"))) == 200
    assert status(await https(port, wrong, "c.test", get("c.test"))) == 403
    assert status(await https(port, right, "c.test", get("c.test"))) == 200
    assert gateway.metrics.registry.get_sample_value(
        "auth_failures_total", {"route": "", "method": "GET", "reason": "forbidden_subject"}) == 2


async def test_sni_and_host_must_agree(gateway, pki, certs, tmp_path):
    port = gateway.ports["https"]
    anonymous = _client_ctx(pki)
    smo = _client_ctx(pki, certs["smo"], tmp_path / "1")
    # SNI b.test (no client auth) carrying Host a.test (client cert required): misdirected
    response = await https(port, anonymous, "b.test", get("a.test"))
    assert status(response) == 421 and json.loads(response.partition(b"\r\n\r\n")[2])["reason"] == \
        "misdirected_request"
    assert status(await https(port, anonymous, "b.test", get("b.test:443"))) == 200
    assert status(await https(port, smo, "a.test", get("b.test"))) == 421
    # a wildcard policy's connection never reaches a more specific policy's hostname
    assert status(await https(port, anonymous, "www.w.test", get("www.w.test"))) == 200
    assert status(await https(port, anonymous, "www.w.test", get("admin.w.test"))) == 421
    # a hostname no TLSPolicy covers is not served on a connection made for another
    assert status(await https(port, anonymous, "b.test", get("elsewhere.test"))) == 421


async def test_without_sni_only_hosts_without_client_auth(gateway, pki, certs, tmp_path):
    port = gateway.ports["https"]
    anonymous = _client_ctx(pki)
    assert status(await https(port, anonymous, None, get("a.test"))) == 421
    assert status(await https(port, anonymous, None, get("c.test"))) == 421
    assert status(await https(port, anonymous, None, get("admin.w.test"))) == 421
    assert status(await https(port, anonymous, None, get("b.test"))) == 200
    assert status(await https(port, anonymous, None, get("x.w.test"))) == 200
    # an SNI no policy claims is the same as none
    assert status(await https(port, anonymous, "unknown.test", get("a.test"))) == 421
    # openssl without SNI: the certificate it gets is not a.test's, and a.test is refused
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-noservername", "-quiet", "-ign_eof",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(get("a.test")), 20)
    assert b"HTTP/1.1 421" in out, out


async def test_without_sni_a_tls12_connection_never_reaches_a_tls13_only_host(backend, start_gateway, make_route,
                                                                               pki, certs):
    b = await backend()
    strict = CompiledTls(id="ns/c", hostnames=HOSTS["c"], cert_chain="c.crt", private_key="c.key", min_version="1.3")
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url),), tls=(_policy("b"), strict)),
                             _secrets(pki, certs))
    tls12 = _client_ctx(pki)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert status(await https(gw.ports["https"], tls12, None, get("b.test"))) == 200
    assert status(await https(gw.ports["https"], tls12, None, get("c.test"))) == 421
    assert status(await https(gw.ports["https"], _client_ctx(pki), "c.test", get("c.test"))) == 200


async def test_without_sni_and_every_policy_requiring_certs_the_handshake_is_refused(
        backend, start_gateway, make_route, pki, certs):
    b = await backend()
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url),), tls=(_policy("a", REQUIRE),)),
                             _secrets(pki, certs))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await https(gw.ports["https"], _client_ctx(pki), None, get("a.test"))


async def test_tls_hostnames_are_never_proxied_in_plaintext(gateway):
    port = gateway.ports["http"]
    for host, location in [("a.test", "https://a.test/x?q=1"), ("b.test", "https://b.test/x?q=1"),
                           (f"b.test:{port}", f"https://b.test:{gateway.ports['https']}/x?q=1"),
                           ("deep.w.test", "https://deep.w.test/x?q=1")]:
        response = await plain(port, get(host, "/x?q=1"))
        assert status(response) == 308, (host, response)
        assert header(response, "Location") == location
    before = len(gateway.backend.received)
    assert status(await plain(port, get("A.TEST.", "/y"))) == 308
    assert len(gateway.backend.received) == before
    assert status(await plain(port, get("plain.test"))) == 200


async def test_curl_follows_the_redirect_and_is_refused_without_a_certificate(gateway, pki, tmp_path):
    (tmp_path / "ca.pem").write_text(pki.ca.cert_pem)
    http, https_port = gateway.ports["http"], gateway.ports["https"]

    async def curl(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "--cacert",
            str(tmp_path / "ca.pem"), "--resolve", f"a.test:{http}:127.0.0.1",
            "--resolve", f"a.test:{https_port}:127.0.0.1", *args, f"http://a.test:{http}/secret",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
        return proc.returncode, out.decode()

    assert await curl() == (0, f"308 https://a.test:{https_port}/secret")
    code, _ = await curl("-L")  # followed: the HTTPS handshake wants a client certificate
    assert code != 0
    assert gateway.backend.received == []


@pytest.mark.parametrize("host", ["internal.test:x@evil.test", "internal.test:evil", "a.test:99999",
                                  "a b.test", "[::1", "a..test", "evil.test/x", "a.test:80:80", "[v1.x]"])
async def test_invalid_host_headers_get_400_on_both_listeners(gateway, pki, host):
    for response in (await plain(gateway.ports["http"], get(host)),  # the lean front
                     await plain(gateway.ports["http"], get(host, method="POST", extra="Content-Length: 0\r\n")),
                     await https(gateway.ports["https"], _client_ctx(pki), "b.test", get(host))):
        assert status(response) == 400, (host, response)
        assert json.loads(response.partition(b"\r\n\r\n")[2])["reason"] == "bad_host"
    assert gateway.backend.received == []


async def test_an_absolute_form_target_cannot_name_another_host(gateway):
    for target, code in [("http://a.test/x", 400), ("http://user@plain.test/x", 400), ("ftp://plain.test/x", 400),
                         ("http://PLAIN.test:80/x", 200)]:
        response = await plain(gateway.ports["http"], get("plain.test", target))
        assert status(response) == code, (target, response)


async def test_two_host_headers_get_400(gateway):
    response = await plain(gateway.ports["http"], b"GET /x HTTP/1.1\r\nHost: plain.test\r\nHost: a.test\r\n"
                                                  b"Connection: close\r\n\r\n")
    assert status(response) == 400


async def test_trace_and_connect_only_where_a_route_names_them(gateway, pki):
    cookie = "Cookie: session=s3cret\r\n"
    for response in (await plain(gateway.ports["http"], get("plain.test", method="TRACE", extra=cookie)),
                     await https(gateway.ports["https"], _client_ctx(pki), "b.test",
                                 get("b.test", method="TRACE", extra=cookie)),
                     await plain(gateway.ports["http"], get("plain.test", "evil.test:443", method="CONNECT")),
                     await plain(gateway.ports["http"], get("plain.test", "/x", method="CONNECT"))):
        assert status(response) == 405, response
        assert b"s3cret" not in response and header(response, "Allow")
    assert gateway.backend.received == []
    assert status(await plain(gateway.ports["http"], get("plain.test", "/trace/x", method="TRACE"))) == 200


KEY = "kg_secretkeymaterial0123456789abcdef"


@pytest.mark.parametrize("attack", [
    f"X-API-Key: {KEY}\x00\r\n",  # a NUL in the key's line
    f"X-API-Key: {KEY}{'A' * 9000}\r\n",  # a 9 KB header line starting with the key
    f"X-API-Key: {KEY}\r\nX-Long: {'B' * 9000}\r\n",  # the key, then a line too long
])
async def test_refused_requests_quote_no_request_bytes(gateway, pki, attack, caplog):
    caplog.set_level(logging.DEBUG)
    request = f"GET /x HTTP/1.1\r\nHost: b.test\r\n{attack}Connection: close\r\n\r\n".encode()
    for response in (await https(gateway.ports["https"], _client_ctx(pki), "b.test", request),
                     await plain(gateway.ports["http"], request.replace(b"b.test", b"plain.test"))):
        assert status(response) in (400, 431), response
        body = json.loads(response.partition(b"\r\n\r\n")[2])
        assert set(body) == {"error", "reason", "status", "request_id"}, body
        assert KEY.encode() not in response and b"AAAA" not in response
        assert header(response, "Server") == "kubegate"
    logged = caplog.text
    assert KEY not in logged and "AAAA" not in logged and "Traceback" not in logged, logged
    assert "refused a malformed request" in logged


async def test_server_header_names_no_library(gateway, pki):
    responses = [await plain(gateway.ports["http"], get("plain.test")),  # proxied, lean front
                 await plain(gateway.ports["http"], get("plain.test", method="POST", extra="Content-Length: 0\r\n")),
                 await https(gateway.ports["https"], _client_ctx(pki), "b.test", get("b.test")),
                 await https(gateway.ports["https"], _client_ctx(pki), "b.test", get("b.test", "/%2f")),
                 await plain(gateway.ports["admin"], get("localhost", "/healthz"))]
    for response in responses:
        assert header(response, "Server") == "kubegate", response
