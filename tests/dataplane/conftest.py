"""Shared data-plane fixtures: real aiohttp backends, real Gateways on free ports, minted certs.

Everything binds port 0; nothing is mocked. Other data-plane test files (security)
may use: ``backend``, ``start_gateway``, ``make_route``, ``pki``, ``free_port``,
``kubegate_run`` (the real ``kubegate run`` command as a subprocess).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from kubegate.dataplane.ratelimit import build_rate_limiter
from kubegate.dataplane.server import Gateway

from kubegate.config import CompiledBackend, CompiledConfig, CompiledRoute, SecretBundle
from kubegate.pki import Minted, mint_ca, mint_cert

sys.path.insert(0, str(Path(__file__).parent))  # the helper modules beside this file (run_process, ...)
from run_process import _collect, _read_ports


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def free_port() -> Callable[[], int]:
    return _free_port


@dataclass
class Backend:
    """A real HTTP backend; ``url`` is its base, ``hits`` counts requests by path."""

    name: str
    url: str = ""
    port: int = 0
    hits: dict[str, int] = field(default_factory=dict)
    received: list[dict] = field(default_factory=list)
    runner: web.AppRunner | None = None


def _backend_app(state: Backend) -> web.Application:
    async def echo(request: web.Request) -> web.StreamResponse:
        state.hits[request.path] = state.hits.get(request.path, 0) + 1
        if request.path.startswith("/ws"):
            ws = web.WebSocketResponse(protocols=("chat",))
            await ws.prepare(request)
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await ws.send_str(f"{state.name}:{msg.data}")
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await ws.send_bytes(msg.data[::-1])
            return ws
        if request.path.startswith("/status/"):
            return web.Response(status=int(request.path.rsplit("/", 1)[1]), text=state.name)
        if request.path.startswith("/slow"):
            await asyncio.sleep(float(request.query.get("s", "3")))
            return web.Response(text="slow")
        if request.path.startswith("/big"):
            size = int(request.query["n"])
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.content_length = size
            await response.prepare(request)
            chunk = b"x" * 65536
            while size > 0:
                await response.write(chunk[:size])
                size -= len(chunk)
            await response.write_eof()
            return response
        length = 0
        async for chunk in request.content.iter_any():
            length += len(chunk)
        record = {"backend": state.name, "method": request.method, "path": request.path,
                  "raw_path": request.raw_path, "query": request.query_string,
                  "headers": {k.lower(): v for k, v in request.headers.items()}, "body_len": length}
        state.received.append(record)
        return web.Response(text=json.dumps(record), content_type="application/json",
                            headers={"Connection": "keep-alive, X-Hop", "X-Hop": "1", "X-Backend": state.name})

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def backend():
    """Factory: ``await backend("a")`` starts a real backend on a free port (the echo app, or ``app``)."""
    started: list[Backend] = []

    async def start(name: str = "backend", app: web.Application | None = None) -> Backend:
        state = Backend(name)
        state.runner = web.AppRunner(app or _backend_app(state), access_log=None)
        await state.runner.setup()
        site = web.TCPSite(state.runner, "127.0.0.1", 0)
        await site.start()
        state.port = site._server.sockets[0].getsockname()[1]
        state.url = f"http://127.0.0.1:{state.port}"
        started.append(state)
        return state

    yield start
    for state in started:
        await state.runner.cleanup()


@pytest.fixture
def make_route():
    def make(path: str = "/*rest", *backends: str, name: str = "r", namespace: str = "shop",
             **fields) -> CompiledRoute:
        return CompiledRoute(
            id=f"{namespace}/{name}", namespace=namespace, name=name, path=path,
            backends=tuple(CompiledBackend(url=b) if isinstance(b, str) else b for b in backends), **fields,
        )
    return make


@pytest.fixture
async def start_gateway():
    """Factory: ``gw = await start_gateway(config, secrets)``; ports in ``gw.ports``."""
    gateways: list[tuple[Gateway, object]] = []

    async def start(config: CompiledConfig | None = None, secrets: SecretBundle | None = None,
                    **kwargs) -> Gateway:
        limiter = kwargs.pop("limiter", None) or build_rate_limiter(None)
        gateway = Gateway(host="127.0.0.1", http_port=0, https_port=0, admin_port=0, limiter=limiter, **kwargs)
        await gateway.start()
        gateways.append((gateway, limiter))
        if config is not None:
            gateway.apply(config, secrets or SecretBundle())
        return gateway

    yield start
    for gateway, limiter in gateways:
        await gateway.stop()
        await limiter.close()


@dataclass(frozen=True)
class Pki:
    ca: Minted
    server: Minted  # CN api.test, SANs api.test, *.wild.test, localhost, 127.0.0.1
    other: Minted  # CN other.test
    client_ca: Minted
    client: Minted  # CN client.test, signed by client_ca
    stranger: Minted  # a client cert from an unrelated CA


@pytest.fixture(scope="session")
def pki() -> Pki:
    ca = mint_ca("test server CA")
    client_ca = mint_ca("test client CA")
    return Pki(
        ca=ca,
        server=mint_cert(ca, "api.test", ("api.test", "*.wild.test", "localhost", "127.0.0.1")),
        other=mint_cert(ca, "other.test", ("other.test",)),
        client_ca=client_ca,
        client=mint_cert(client_ca, "client.test", ("client.test",), client=True),
        stranger=mint_cert(mint_ca("rogue CA"), "client.test", ("client.test",), client=True),
    )


@dataclass
class RunningGateway:
    """A ``kubegate run`` subprocess; ``ports`` from its "listening" line, ``logs`` both streams so far."""

    proc: asyncio.subprocess.Process
    ports: dict[str, int] = field(default_factory=dict)
    err_lines: list[str] = field(default_factory=list)
    out_lines: list[str] = field(default_factory=list)
    collectors: list[asyncio.Task] = field(default_factory=list)

    @property
    def logs(self) -> str:
        return "".join(self.err_lines) + "".join(self.out_lines)

    async def stop(self) -> int:
        """SIGTERM, then the exit code once both streams are drained."""
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 20)
        await asyncio.gather(*self.collectors)
        return code


@pytest.fixture
async def kubegate_run(tmp_path):
    """Factory: ``gw = await kubegate_run(folder)`` starts ``kubegate run -f folder`` on free ports."""
    started: list[RunningGateway] = []

    async def start(*paths: Path, args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> RunningGateway:
        env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kubegate.cli", "run", *(a for p in paths for a in ("-f", str(p))),
            "--host", "127.0.0.1", "--http-port", "0", "--https-port", "0", "--admin-port", "0", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )
        running = RunningGateway(proc)
        started.append(running)
        running.ports = await _read_ports(proc.stderr, running.err_lines)
        running.collectors = [asyncio.create_task(_collect(proc.stderr, running.err_lines)),
                              asyncio.create_task(_collect(proc.stdout, running.out_lines))]
        return running

    yield start
    for running in started:
        if running.proc.returncode is None:
            running.proc.kill()
            await running.proc.wait()
        for task in running.collectors:
            task.cancel()
