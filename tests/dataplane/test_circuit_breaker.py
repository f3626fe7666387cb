"""spec.circuitBreaker with real backends: overflow (503 reason overflow) and passive outlier detection.

Every request sent is counted: the test knows what each backend saw and what each client got.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from aiohttp import web

from kubegate.config import CompiledCircuitBreaker, CompiledConfig


class Flaky:
    """A real backend that answers 500 while ``failing`` and 200 otherwise; ``hold`` delays answers."""

    def __init__(self, name: str) -> None:
        self.name, self.failing, self.hits, self.hold = name, False, 0, 0.0
        self.in_flight = self.peak = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> Flaky:
        async def handle(request: web.Request) -> web.Response:
            self.hits += 1
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                if self.hold:
                    await asyncio.sleep(self.hold)
                if self.failing:
                    return web.Response(status=500, text=f"{self.name} broken")
                return web.Response(text=self.name)
            finally:
                self.in_flight -= 1

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def flaky():
    started: list[Flaky] = []

    async def start(name: str) -> Flaky:
        started.append(await Flaky(name).start())
        return started[-1]

    yield start
    for backend in started:
        await backend.stop()


async def _metric(session: aiohttp.ClientSession, gw, name: str) -> float:
    async with session.get(f"http://127.0.0.1:{gw.ports['admin']}/metrics") as resp:
        text = await resp.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_overflow_beyond_max_requests_and_pending_is_503_overflow(flaky, start_gateway, make_route):
    slow = await flaky("slow")
    slow.hold = 0.5
    breaker = CompiledCircuitBreaker(max_requests=2, max_pending_requests=1, consecutive_errors=0)
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", slow.url, circuit_breaker=breaker),)))
    base = f"http://127.0.0.1:{gw.ports['http']}"
    async with aiohttp.ClientSession() as session:
        async def call(i: int) -> tuple[int, dict | str]:
            async with session.get(f"{base}/x{i}") as resp:
                text = await resp.text()
                return resp.status, (json.loads(text) if resp.status == 503 else text)

        started = time.monotonic()
        results = await asyncio.gather(*(call(i) for i in range(6)))
        elapsed = time.monotonic() - started
        overflows = await _metric(session, gw, "kubegate_circuit_overflows_total")
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 503]
    # 2 in flight + 1 pending are served (the pending one after a slot frees), 3 refused at once
    assert len(ok) == 3 and len(refused) == 3, results
    assert all(body["reason"] == "overflow" and body["status"] == 503 and body["request_id"] for _, body in refused)
    assert slow.hits == 3 and slow.peak == 2  # the backend never saw more than maxRequests at once
    assert elapsed >= 1.0  # the pending request waited for a slot, then took its own 0.5 s
    assert overflows == 3


async def test_consecutive_errors_eject_then_the_endpoint_recovers(flaky, start_gateway, make_route):
    bad, good = await flaky("bad"), await flaky("good")
    bad.failing = True
    breaker = CompiledCircuitBreaker(consecutive_errors=3, ejection_time=0.5)
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", bad.url, good.url, circuit_breaker=breaker),)))
    base = f"http://127.0.0.1:{gw.ports['http']}"
    async with aiohttp.ClientSession() as session:
        async def run(n: int) -> list[int]:
            statuses = []
            for _ in range(n):
                async with session.get(f"{base}/") as resp:
                    statuses.append(resp.status)
            return statuses

        # until bad has failed 3 times in a row it gets about half the traffic
        first = []
        while bad.hits < 3:
            first += await run(1)
        assert first.count(500) == 3 and len(first) == 3 + good.hits
        assert await _metric(session, gw, "kubegate_circuit_ejected_endpoints") == 1
        assert await _metric(session, gw, "kubegate_circuit_ejections_total") == 1
        # ejected: every request goes to good
        hits_before = bad.hits
        assert await run(20) == [200] * 20
        assert bad.hits == hits_before
        # it recovers; after ejectionTime it is back in rotation and serves 200s
        bad.failing = False
        await asyncio.sleep(0.6)
        assert await _metric(session, gw, "kubegate_circuit_ejected_endpoints") == 0
        statuses = await run(40)
        assert statuses == [200] * 40 and bad.hits > hits_before
        # failing again: ejected again, for twice as long (1 s)
        bad.failing = True
        while await _metric(session, gw, "kubegate_circuit_ejected_endpoints") == 0:
            await run(1)
        assert await _metric(session, gw, "kubegate_circuit_ejections_total") == 2
        await asyncio.sleep(0.6)
        assert await _metric(session, gw, "kubegate_circuit_ejected_endpoints") == 1  # doubled: still out
        await asyncio.sleep(0.6)
        assert await _metric(session, gw, "kubegate_circuit_ejected_endpoints") == 0


async def test_the_last_endpoint_is_never_ejected(flaky, start_gateway, make_route):
    only = await flaky("only")
    only.failing = True
    breaker = CompiledCircuitBreaker(consecutive_errors=2, ejection_time=30)
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", only.url, circuit_breaker=breaker),)))
    base = f"http://127.0.0.1:{gw.ports['http']}"
    async with aiohttp.ClientSession() as session:
        statuses = []
        for _ in range(10):
            async with session.get(f"{base}/") as resp:
                statuses.append(resp.status)
        assert statuses == [500] * 10 and only.hits == 10
        assert await _metric(session, gw, "kubegate_circuit_ejections_total") == 0
        only.failing = False
        async with session.get(f"{base}/") as resp:
            assert resp.status == 200


async def test_connect_failures_count_as_errors(flaky, start_gateway, make_route, free_port):
    good = await flaky("good")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    breaker = CompiledCircuitBreaker(consecutive_errors=2, ejection_time=30)
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", dead, good.url, circuit_breaker=breaker),)))
    base = f"http://127.0.0.1:{gw.ports['http']}"
    async with aiohttp.ClientSession() as session:
        statuses = []
        for _ in range(30):
            async with session.get(f"{base}/") as resp:
                statuses.append(resp.status)
        assert statuses.count(502) == 2  # two refused connects, then the dead endpoint is ejected
        assert statuses[-10:] == [200] * 10 and good.hits == 28
        assert await _metric(session, gw, "kubegate_circuit_ejected_endpoints") == 1
