"""``--workers N`` with real processes: a supervisor, N SO_REUSEPORT workers, kill -9, SIGTERM, SIGSTOP.

Every test starts ``kubegate run`` as a subprocess and talks to it over
loopback only: in-memory limits must be exact across workers, /metrics must
add the workers up, a dead worker comes back while requests keep being
served, a reload is served by every worker before the admin port (and so the
heartbeat) announces it, and SIGTERM to the supervisor stops them all.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
import sys
import time
from pathlib import Path

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from redis_fixture import running_redis

LIMIT = 20


def _manifests(backend_port: int, path: str = "/v1/*rest", limit: int = LIMIT) -> str:
    return f"""
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: api, namespace: shop}}
spec:
  path: "{path}"
  backends: [{{url: "http://127.0.0.1:{backend_port}"}}]
---
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: limited, namespace: shop}}
spec:
  path: "/limited/*rest"
  backends: [{{url: "http://127.0.0.1:{backend_port}"}}]
---
apiVersion: kubegate.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: tight, namespace: shop}}
spec:
  targetRefs: [{{kind: GatewayRoute, name: limited}}]
  limits:
    - {{dimension: global, requests: {limit}, period: 1h}}
"""


class Run:
    """``kubegate run --workers N`` as a real process; ``ports`` from its "listening:" line."""

    def __init__(self, proc: asyncio.subprocess.Process, ports: dict[str, int], lines: list[str],
                 reader: asyncio.Task) -> None:
        self.proc, self.ports, self.lines, self._reader = proc, ports, lines, reader

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    def admin(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports['admin']}{path}"

    def workers(self) -> list[int]:
        """The supervisor's live child processes (its workers)."""
        pids = []
        for task in os.listdir(f"/proc/{self.proc.pid}/task"):
            with open(f"/proc/{self.proc.pid}/task/{task}/children") as handle:
                pids += [int(p) for p in handle.read().split()]
        return [pid for pid in pids if _alive(pid)]

    @property
    def log(self) -> str:
        return "".join(self.lines)

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 40)
        await self._reader
        return code


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline") as handle:
        return handle.read().replace("\0", " ")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def start_run(folder: Path, *extra: str, env: dict[str, str] | None = None) -> Run:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kubegate.cli", "run", "-f", str(folder), "--host", "127.0.0.1",
        "--http-port", "0", "--https-port", "0", "--admin-port", "0", *extra,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "XDG_CACHE_HOME": str(folder.parent / "cache"), **(env or {})},
    )
    lines: list[str] = []
    found: asyncio.Future = asyncio.get_running_loop().create_future()

    async def read() -> None:
        async for raw in proc.stderr:
            line = raw.decode()
            lines.append(line)
            m = re.search(r"listening: http://[^:]+:(\d+) https://[^:]+:(\d+) admin http://[^:]+:(\d+)", line)
            if m and not found.done():
                found.set_result(dict(zip(("http", "https", "admin"), map(int, m.groups()))))
        if not found.done():
            found.set_exception(AssertionError("kubegate run exited early:\n" + "".join(lines)))

    reader = asyncio.create_task(read())
    try:
        ports = await asyncio.wait_for(found, 90)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return Run(proc, ports, lines, reader)


@pytest.fixture
async def running(tmp_path):
    started: list[Run] = []

    async def start(backend_port: int, *extra: str, env: dict[str, str] | None = None,
                    more_yaml: str = "") -> tuple[Run, Path]:
        folder = tmp_path / f"m{len(started)}"
        folder.mkdir()
        (folder / "gateway.yaml").write_text(_manifests(backend_port) + more_yaml)
        run = await start_run(folder, *extra, env=env)
        started.append(run)
        return run, folder / "gateway.yaml"

    yield start
    for run in started:
        if run.proc.returncode is None:
            run.proc.kill()
            await run.proc.wait()


async def _raw_get(port: int, path: str, timeout: float = 10) -> int:
    """One request on a fresh connection (each one a new 4-tuple: SO_REUSEPORT spreads them)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        status = await asyncio.wait_for(reader.readline(), timeout)
        return int(status.split()[1])
    finally:
        writer.close()


async def _listening(run: Run) -> int:
    """How many workers listen, as the supervisor's /healthz says."""
    async with aiohttp.ClientSession() as session, session.get(run.admin("/healthz")) as r:
        return (await r.json())["listening"]


def _sockets(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_workers_admit_exactly_the_limit_and_metrics_add_up(backend, running):
    b = await backend()
    run, _ = await running(b.port, "--workers", "3")
    assert "(3 workers, uvloop)" in run.log
    workers = run.workers()
    assert len(workers) == 3

    # Hold 60 keep-alive connections open at once: every worker must have been handed some.
    before = {pid: _sockets(pid) for pid in workers}
    held = [await asyncio.open_connection("127.0.0.1", run.ports["http"]) for _ in range(60)]
    for _, writer in held:
        writer.write(b"GET /v1/held HTTP/1.1\r\nHost: x\r\n\r\n")
    for reader, _ in held:
        assert b" 200 " in await asyncio.wait_for(reader.readline(), 20)
    gained = {pid: _sockets(pid) - before[pid] for pid in workers}
    for _, writer in held:
        writer.close()
    assert all(n > 0 for n in gained.values()), f"a worker got no connection: {gained}"

    # A burst from 150 connections at once: exactly LIMIT pass, whichever worker each lands on.
    statuses = await asyncio.gather(*(_raw_get(run.ports["http"], f"/limited/{i}") for i in range(150)))
    assert statuses.count(200) == LIMIT, statuses
    assert statuses.count(429) == 150 - LIMIT

    async with aiohttp.ClientSession() as session, session.get(run.admin("/metrics")) as r:
        text = await r.text()
    assert _metric(text, "kubegate_requests_total", route="shop/limited", code="2xx") == LIMIT
    assert _metric(text, "kubegate_requests_total", route="shop/limited", code="4xx") == 150 - LIMIT
    assert _metric(text, "rate_limit_exceeded_total", route="shop/limited") == 150 - LIMIT
    assert _metric(text, "kubegate_requests_total", route="shop/api") == 60
    assert 'kubegate_config_reloads_total{result="ok"} 1.0' in text  # once for all workers, not 3 times
    assert await run.stop() == 0


@pytest.fixture
def redis_server():
    yield from running_redis()


async def test_workers_share_redis_limits_exactly(backend, running, redis_server):
    b = await backend()
    run, _ = await running(b.port, "--workers", "2", "--redis-url", redis_server.url)
    assert all(redis_server.url not in _cmdline(pid) for pid in run.workers())  # settings never on argv
    statuses = await asyncio.gather(*(_raw_get(run.ports["http"], f"/limited/{i}") for i in range(80)))
    assert statuses.count(200) == LIMIT and statuses.count(429) == 80 - LIMIT, statuses
    assert redis_server.url not in run.log
    assert await run.stop() == 0


async def test_kill_9_worker_is_restarted_while_requests_keep_being_served(backend, running):
    b = await backend()
    run, _ = await running(b.port, "--workers", "2")
    victim, survivor = run.workers()
    results: list[tuple[float, int | str]] = []
    killed_at = 0.0

    async def client() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                results.append((time.monotonic(), await _raw_get(run.ports["http"], "/v1/x", 5)))
            except (OSError, asyncio.IncompleteReadError, TimeoutError, IndexError) as exc:
                results.append((time.monotonic(), type(exc).__name__))
            if killed_at and victim not in run.workers() and await _listening(run) == 2 \
                    and sum(1 for at, _ in results if at > killed_at + 1) > 20:
                return

    task = asyncio.create_task(client())
    await asyncio.sleep(1)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    await asyncio.wait_for(task, 90)
    replacement = set(run.workers()) - {survivor}
    assert len(replacement) == 1 and victim not in replacement
    after = [status for at, status in results if at > killed_at]
    # only a request in flight on the killed worker can fail (one at a time here)
    assert sum(1 for status in after if status != 200) <= 1, after
    assert after.count(200) > 20
    assert f"worker 0 (pid {victim}) exited with signal 9" in run.log or \
        f"worker 1 (pid {victim}) exited with signal 9" in run.log

    # the replacement serves too (it listens only once it serves the current config)
    held = [await asyncio.open_connection("127.0.0.1", run.ports["http"]) for _ in range(40)]
    (new_pid,) = replacement
    for _, writer in held:
        writer.write(b"GET /v1/held HTTP/1.1\r\nHost: x\r\n\r\n")
    for reader, _ in held:
        assert b" 200 " in await asyncio.wait_for(reader.readline(), 20)
    assert _sockets(new_pid) > 3
    for _, writer in held:
        writer.close()
    assert await run.stop() == 0


async def test_sigterm_to_the_supervisor_stops_every_worker(backend, running):
    b = await backend()
    run, _ = await running(b.port, "--workers", "2")
    workers = run.workers()
    assert len(workers) == 2
    assert await run.stop() == 0
    assert not [pid for pid in workers if _alive(pid)]
    assert "Traceback" not in run.log


async def test_a_reload_is_announced_only_once_every_worker_serves_it(backend, running):
    b = await backend()
    run, route_file = await running(b.port, "--workers", "2")
    async with aiohttp.ClientSession() as session:
        async def served_hash() -> str:
            async with session.get(run.admin("/config")) as r:
                return (await r.json())["hash"]

        first = await served_hash()
        frozen, _ = run.workers()
        os.kill(frozen, signal.SIGSTOP)
        try:
            route_file.write_text(_manifests(b.port, "/v2/*rest"))
            await asyncio.sleep(3)  # the file poller reloads within 0.55 s
            assert await served_hash() == first, "announced before the frozen worker served it"
        finally:
            os.kill(frozen, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while await served_hash() == first:
            assert time.monotonic() < deadline, "the reload never completed"
            await asyncio.sleep(0.2)
    # every worker serves the new config: fresh connections land on both
    statuses = await asyncio.gather(*(_raw_get(run.ports["http"], p) for p in ["/v2/x", "/v1/x"] * 30))
    assert statuses == [200, 404] * 30
    assert await run.stop() == 0


TLS_POLICY = """
---
apiVersion: kubegate.dev/v1alpha1
kind: TLSPolicy
metadata: {name: public, namespace: kubegate-system}
spec:
  hostnames: ["localhost"]
  certificate:
    issuerRef: {name: dev, kind: ClusterIssuer}
"""


async def test_tls_handshakes_on_uvloop_workers(backend, running):
    """uvloop's transports are not asyncio.Transport subclasses: the SNI peek must not care."""
    b = await backend()
    run, _ = await running(b.port, "--workers", "2", more_yaml=TLS_POLICY)
    for _ in range(100):  # logged right after the "listening:" line
        found = re.search(r"development CA \(for curl --cacert\): (\S+)", run.log)
        if found:
            break
        await asyncio.sleep(0.1)
    ca = found.group(1)
    context = ssl.create_default_context(cafile=ca)

    async def get() -> int:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", run.ports["https"], ssl=context, server_hostname="localhost"), 10)
        try:
            writer.write(b"GET /v1/tls HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            return int((await asyncio.wait_for(reader.readline(), 10)).split()[1])
        finally:
            writer.close()

    assert await asyncio.gather(*(get() for _ in range(30))) == [200] * 30  # fresh handshakes: both workers
    assert "Traceback" not in run.log
    assert await run.stop() == 0


async def test_uvloop_can_be_refused_for_an_ab_run(backend, running):
    b = await backend()
    run, _ = await running(b.port, "--workers", "1", env={"KUBEGATE_EVENT_LOOP": "asyncio"})
    assert "(1 worker, asyncio)" in run.log
    assert await _raw_get(run.ports["http"], "/v1/x") == 200
    assert await run.stop() == 0
