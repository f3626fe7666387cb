"""``failureMode: local`` for real: ``kubegate run --redis-url`` under load while its redis-server is killed
and restarted. ``kubegate run`` is one replica, so while Redis is away it enforces the whole limit in memory."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from echo_route import echo_route
from redis_fixture import RedisServer


def _manifests(port: int) -> str:
    return echo_route(port, "/limited/*rest", "limited") + """---
apiVersion: kubegate.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: ten, namespace: shop}
spec:
  targetRefs: [{kind: GatewayRoute, name: limited}]
  limits: [{dimension: global, requests: 10, period: 1h}]
  failureMode: local
"""


async def _load(session: aiohttp.ClientSession, url: str, seconds: float, counts: dict[int, int]) -> None:
    """20 clients back to back for ``seconds``."""
    stop = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < stop:
            async with session.get(url) as response:
                await response.read()
                counts[response.status] = counts.get(response.status, 0) + 1

    await asyncio.gather(*(client() for _ in range(20)))


async def test_local_failure_mode_under_load_with_redis_killed_and_restarted(backend, tmp_path, kubegate_run):
    b = await backend()
    (tmp_path / "gateway.yaml").write_text(_manifests(b.port))
    redis = RedisServer().start()
    try:
        gateway = await kubegate_run(tmp_path / "gateway.yaml", args=("--redis-url", redis.url))
        url = f"http://127.0.0.1:{gateway.ports['http']}/limited/x"
        phases: list[dict[int, int]] = [{}, {}, {}]
        async with aiohttp.ClientSession() as session:
            await _load(session, url, 1.0, phases[0])  # Redis decides: 10 of the hour
            redis.stop()
            await _load(session, url, 2.0, phases[1])  # store gone: one replica's share (all 10) in memory
            redis.start()  # same port, empty
            await _load(session, url, 4.0, phases[2])  # breaker cool-down (2 s), then Redis counts again
        assert [p.get(200, 0) for p in phases] == [10, 10, 10], phases
        assert all(set(p) <= {200, 429} for p in phases), phases  # never a 503: local decides
        assert redis.command("KEYS", "kg:*").count(b"kg:{shop}") == 1  # the new admissions were Redis's
        await gateway.stop()
    finally:
        redis.stop()
    assert "Traceback" not in gateway.logs
