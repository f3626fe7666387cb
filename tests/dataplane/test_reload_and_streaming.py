"""Hot reload under load, large streamed bodies, trusted-proxy client IPs, log hygiene."""

from __future__ import annotations

import asyncio
import logging
import resource

import aiohttp

from kubegate.config import CompiledConfig, CompiledTls, SecretBundle


async def test_reload_under_load_zero_failures(backend, start_gateway, make_route):
    a, c = await backend("a"), await backend("c")
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", a.url),)))
    url = f"http://127.0.0.1:{gw.ports['http']}/load"
    failures: list[int] = []
    done = 0

    async def client() -> None:
        nonlocal done
        async with aiohttp.ClientSession() as session:
            for _ in range(250):
                async with session.get(url) as response:
                    await response.read()
                    if response.status != 200:
                        failures.append(response.status)
                done += 1

    async def reloader() -> None:
        for i in range(20):
            await asyncio.sleep(0.02)
            backend_url = (a.url, c.url)[i % 2]
            gw.apply(CompiledConfig(routes=(make_route("/*rest", backend_url, name=f"r{i}"),)), SecretBundle())

    await asyncio.gather(*(client() for _ in range(8)), reloader())
    assert done == 2000 and failures == []
    reloads = {s.labels["result"]: s.value for m in gw.metrics.config_reloads.collect() for s in m.samples
               if s.name.endswith("_total")}
    assert reloads["ok"] == 21


async def test_an_unloadable_object_is_left_out_and_the_rest_is_served(backend, start_gateway, make_route, caplog):
    b = await backend()
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url),)))
    broken_tls = CompiledTls(id="ns/t", hostnames=("a.test",), cert_chain="missing", private_key="missing")
    bad_schema = make_route("/bad/*rest", b.url, name="bad", request_schema={"type": "nonsense"})
    with caplog.at_level(logging.WARNING):
        gw.apply(CompiledConfig(routes=(make_route("/*rest", b.url), bad_schema), tls=(broken_tls,)),
                 SecretBundle())
    assert "certificate chain is missing" in gw.dropped["TLSPolicy/ns/t"]
    assert "requestSchema" in gw.dropped["GatewayRoute/shop/bad"]
    assert sum("left out" in r.getMessage() for r in caplog.records) == 2
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{gw.ports['http']}/x") as r:
            assert r.status == 200
        async with session.get(f"http://127.0.0.1:{gw.ports['http']}/bad/x") as r:
            assert r.status == 200 and (await r.json())["path"] == "/bad/x"  # the catch-all, not the bad route


def _rss_kib() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def test_50mb_streams_through_both_ways_without_buffering(backend, start_gateway, make_route):
    b = await backend()
    size = 50 * 1024 * 1024
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url, max_body_bytes=size),)))
    url = f"http://127.0.0.1:{gw.ports['http']}"
    before = _rss_kib()
    peak = before

    async def upload():
        nonlocal peak
        chunk = b"u" * (256 * 1024)
        for _ in range(size // len(chunk)):
            peak = max(peak, _rss_kib())
            yield chunk

    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/upload", data=upload()) as r:
            assert r.status == 200 and (await r.json())["body_len"] == size
        received = 0
        async with session.get(f"{url}/big?n={size}") as r:
            assert r.headers["Content-Length"] == str(size)
            async for chunk in r.content.iter_chunked(1 << 20):
                received += len(chunk)
                peak = max(peak, _rss_kib())
    assert received == size
    # backend, gateway and client share this process: a buffered copy would add >= 50 MiB
    assert peak - before < 40 * 1024, f"RSS grew by {(peak - before) // 1024} MiB"


async def test_forwarded_for_only_from_trusted_proxies(backend, start_gateway, make_route):
    b = await backend()
    route = make_route("/*rest", b.url, ip_deny=("198.51.100.0/24",))
    config = CompiledConfig(routes=(route,))
    trusting = await start_gateway(config, trusted_proxies=("127.0.0.1/32",))
    naive = await start_gateway(config)
    spoof = {"X-Forwarded-For": "198.51.100.7"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{trusting.ports['http']}/x", headers=spoof) as r:
            assert r.status == 403
        async with session.get(f"http://127.0.0.1:{naive.ports['http']}/x", headers=spoof) as r:
            assert r.status == 200  # the peer is not a trusted proxy: the header is not believed
