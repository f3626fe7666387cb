"""``failureMode: local`` for real: ``kubegate run --redis-url`` under load while its redis-server is killed
and restarted. ``kubegate run`` is one replica, so while Redis is away it enforces the whole limit in memory."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from redis_fixture import RedisServer
from run_process import _collect, _read_ports


def _manifests(port: int) -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: shop}}
spec:
  selector: {{app: echo}}
  ports: [{{name: http, port: {port}}}]
---
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: limited, namespace: shop}}
spec:
  path: "/limited/*rest"
  backends: [{{service: echo, port: {port}}}]
---
apiVersion: kubegate.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: ten, namespace: shop}}
spec:
  targetRefs: [{{kind: GatewayRoute, name: limited}}]
  limits: [{{dimension: global, requests: 10, period: 1h}}]
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


async def test_local_failure_mode_under_load_with_redis_killed_and_restarted(backend, tmp_path):
    b = await backend()
    (tmp_path / "gateway.yaml").write_text(_manifests(b.port))
    redis = RedisServer().start()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kubegate.cli", "run", "-f", str(tmp_path / "gateway.yaml"), "--host", "127.0.0.1",
        "--http-port", "0", "--https-port", "0", "--admin-port", "0", "--redis-url", redis.url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    lines: list[str] = []
    try:
        ports = await _read_ports(proc.stderr, lines)
        collectors = [asyncio.create_task(_collect(proc.stderr, lines)), asyncio.create_task(_collect(proc.stdout, []))]
        url = f"http://127.0.0.1:{ports['http']}/limited/x"
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
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)
        await asyncio.gather(*collectors)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        redis.stop()
    assert "Traceback" not in "".join(lines)
