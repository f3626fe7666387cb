"""Real TLS handshakes against the HTTPS listener: Python ssl, curl and openssl s_client."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp

from kubegate.config import (
    CompiledClientAuth,
    CompiledConfig,
    CompiledHsts,
    CompiledTls,
    SecretBundle,
)
from kubegate.pki import mint_cert


def _policy(pid: str, hosts: tuple[str, ...], **fields) -> CompiledTls:
    return CompiledTls(id=pid, hostnames=hosts, cert_chain=f"{pid}.crt", private_key=f"{pid}.key", **fields)


def _secrets(pki, **extra) -> SecretBundle:
    return SecretBundle(values={
        "ns/api.crt": pki.server.cert_pem, "ns/api.key": pki.server.key_pem,
        "ns/other.crt": pki.other.cert_pem, "ns/other.key": pki.other.key_pem,
        "clientca": pki.client_ca.cert_pem, **extra,
    })


async def _run(*cmd: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    return proc.returncode, out.decode(errors="replace")


def _files(tmp_path: Path, pki) -> dict[str, str]:
    paths = {}
    for name, text in {"ca": pki.ca.cert_pem, "client.crt": pki.client.cert_pem, "client.key": pki.client.key_pem,
                       "rogue.crt": pki.stranger.cert_pem, "rogue.key": pki.stranger.key_pem}.items():
        (tmp_path / name).write_text(text)
        paths[name] = str(tmp_path / name)
    return paths


async def _fetch_cn(port: int, server_name: str, cafile_pem: str) -> str:
    ctx = ssl.create_default_context(cadata=cafile_pem)
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_name)
    cert = writer.get_extra_info("peercert")
    writer.close()
    return dict(x[0] for x in cert["subject"])["commonName"]


def _tls_errors(gw) -> float:
    return sum(s.value for m in gw.metrics.tls_errors.collect() for s in m.samples if s.name == "tls_errors_total")


async def test_sni_hsts_and_version_floor(backend, start_gateway, make_route, pki, tmp_path):
    b = await backend()
    config = CompiledConfig(
        routes=(make_route("/*rest", b.url),),
        tls=(_policy("ns/api", ("api.test", "*.wild.test"), hsts=CompiledHsts(max_age=600, include_subdomains=True)),
             _policy("ns/other", ("other.test",), min_version="1.3")),
    )
    gw = await start_gateway(config, _secrets(pki))
    port = gw.ports["https"]
    assert await _fetch_cn(port, "api.test", pki.ca.cert_pem) == "api.test"
    assert await _fetch_cn(port, "other.test", pki.ca.cert_pem) == "other.test"
    assert await _fetch_cn(port, "x.wild.test", pki.ca.cert_pem) == "api.test"
    files = _files(tmp_path, pki)
    code, out = await _run("curl", "-sS", "-i", "--cacert", files["ca"], "--resolve", f"api.test:{port}:127.0.0.1",
                           f"https://api.test:{port}/hello")
    assert code == 0 and "strict-transport-security: max-age=600; includesubdomains" in out.lower(), out
    # TLS 1.1 never, TLS 1.2 refused by the 1.3-only policy, accepted by the 1.2 one.
    before = _tls_errors(gw)
    code, out = await _run("openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "api.test",
                           "-tls1_1")
    assert code != 0, out
    code, out = await _run("openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "other.test",
                           "-tls1_2")
    assert code != 0 and "Cipher is (NONE)" in out, out
    code, out = await _run("openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "api.test",
                           "-tls1_2", "-CAfile", files["ca"])
    assert code == 0 and "Verify return code: 0" in out, out
    await asyncio.sleep(0.1)
    assert _tls_errors(gw) >= before + 2


async def test_mtls_require_and_optional_with_curl(backend, start_gateway, make_route, pki, tmp_path):
    b = await backend()
    config = CompiledConfig(
        routes=(make_route("/*rest", b.url),),
        tls=(_policy("ns/api", ("api.test",), client_auth=CompiledClientAuth(mode="require", ca_bundle="clientca")),
             _policy("ns/other", ("other.test",),
                     client_auth=CompiledClientAuth(mode="optional", ca_bundle="clientca"))),
    )
    gw = await start_gateway(config, _secrets(pki))
    port, files = gw.ports["https"], _files(tmp_path, pki)

    def curl(host: str, *cert: str):
        return _run("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", files["ca"],
                    "--resolve", f"{host}:{port}:127.0.0.1", *cert, f"https://{host}:{port}/who")

    client = ("--cert", files["client.crt"], "--key", files["client.key"])
    rogue = ("--cert", files["rogue.crt"], "--key", files["rogue.key"])
    assert (await curl("api.test", *client)) == (0, "200")
    before = _tls_errors(gw)
    code, _ = await curl("api.test")
    assert code != 0  # no client certificate: the handshake fails
    code, _ = await curl("api.test", *rogue)
    assert code != 0
    assert (await curl("other.test")) == (0, "200")
    assert (await curl("other.test", *client)) == (0, "200")
    code, _ = await curl("other.test", *rogue)
    assert code != 0
    await asyncio.sleep(0.1)
    assert _tls_errors(gw) >= before + 3
    labels = {s.labels["reason"] for m in gw.metrics.tls_errors.collect() for s in m.samples}
    assert labels, labels


async def test_peer_cert_reaches_admission_facts(backend, start_gateway, make_route, pki, tmp_path):
    b = await backend()
    config = CompiledConfig(
        routes=(make_route("/*rest", b.url),),
        tls=(_policy("ns/api", ("api.test",), client_auth=CompiledClientAuth(mode="require", ca_bundle="clientca")),),
    )
    gw = await start_gateway(config, _secrets(pki))
    ctx = ssl.create_default_context(cadata=pki.ca.cert_pem)
    files = _files(tmp_path, pki)
    ctx.load_cert_chain(files["client.crt"], files["client.key"])
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.ports["https"], ssl=ctx, server_hostname="api.test")
    writer.write(b"GET /x HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
    response = await reader.read()
    writer.close()
    assert response.startswith(b"HTTP/1.1 200")
    assert b.received[-1]["headers"]["x-forwarded-proto"] == "https"


async def test_certificate_rotation_without_restart(backend, start_gateway, make_route, pki):
    b = await backend()
    config = CompiledConfig(routes=(make_route("/*rest", b.url),), tls=(_policy("ns/api", ("api.test",)),))
    gw = await start_gateway(config, _secrets(pki))
    port = gw.ports["https"]
    ctx = ssl.create_default_context(cadata=pki.ca.cert_pem)
    # A connection opened before the rotation keeps working on its certificate.
    connector = aiohttp.TCPConnector(ssl=ctx, resolver=_Static(), limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"https://api.test:{port}/a") as r:
            assert r.status == 200
        first = await _serial(port, pki)
        rotated = mint_cert(pki.ca, "api.test", ("api.test",))
        gw.apply(config, _secrets(pki, **{"ns/api.crt": rotated.cert_pem, "ns/api.key": rotated.key_pem}))
        async with session.get(f"https://api.test:{port}/b") as r:
            assert r.status == 200
    second = await _serial(port, pki)
    assert first != second and second == rotated.cert.serial_number


async def _serial(port: int, pki) -> int:
    from cryptography import x509

    ctx = ssl.create_default_context(cadata=pki.ca.cert_pem)
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="api.test")
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return x509.load_der_x509_certificate(der).serial_number


class _Static(aiohttp.abc.AbstractResolver):
    async def resolve(self, host, port=0, family=0):
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": 2, "proto": 0, "flags": 0}]

    async def close(self):
        return None


async def test_handshake_fails_cleanly_without_tls_config(start_gateway, backend, make_route, pki):
    b = await backend()
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url),)))
    ctx = ssl.create_default_context(cadata=pki.ca.cert_pem)
    try:
        await asyncio.open_connection("127.0.0.1", gw.ports["https"], ssl=ctx, server_hostname="api.test")
        raise AssertionError("handshake unexpectedly succeeded")
    except (ssl.SSLError, ConnectionError):
        pass
    await asyncio.sleep(0.05)
    assert _tls_errors(gw) == 1
