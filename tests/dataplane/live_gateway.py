"""A real Gateway and a recording backend on their own event-loop thread, for blocking raw-socket tests.

Hypothesis drives plain (sync) test functions; this keeps one gateway up for a
whole property run instead of one per example. Everything binds port 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import web
from kubegate.dataplane.ratelimit import build_rate_limiter
from kubegate.dataplane.server import Gateway

from kubegate.config import CompiledConfig, SecretBundle


@dataclass
class Live:
    gateway: Gateway
    backend_url: str
    seen: list[dict] = field(default_factory=list)  # what the backend received: method, raw target

    @property
    def http(self) -> int:
        return self.gateway.ports["http"]

    @property
    def https(self) -> int:
        return self.gateway.ports["https"]


@contextmanager
def live_gateway(config: Callable[[str], CompiledConfig], secrets: SecretBundle | None = None,
                 **gateway_kwargs) -> Iterator[Live]:
    """``config(backend_url)`` builds the config once the backend's port is known."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    seen: list[dict] = []

    async def record(request: web.BaseRequest) -> web.Response:
        body = await request.read()
        entry = {"method": request.method, "target": request.raw_path, "body_len": len(body),
                 "headers": {k.lower(): v for k, v in request.headers.items()}}
        seen.append(entry)
        return web.Response(text=json.dumps(entry), content_type="application/json",
                            headers={"Server": "backend/1.2.3"})

    async def start():
        # its own logger: a request the gateway cuts short is the backend's log line, not the gateway's
        backend = web.Server(record, logger=logging.getLogger("live.backend"))
        server = await asyncio.get_running_loop().create_server(backend, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        limiter = build_rate_limiter(None)
        gateway = Gateway(host="127.0.0.1", http_port=0, https_port=0, admin_port=0, limiter=limiter,
                          **gateway_kwargs)
        await gateway.start()
        gateway.apply(config(url), secrets or SecretBundle())
        return gateway, backend, server, limiter, url

    gateway, backend, server, limiter, url = asyncio.run_coroutine_threadsafe(start(), loop).result(20)

    async def stop() -> None:
        await gateway.stop()
        await limiter.close()
        server.close()
        await backend.shutdown(1)

    try:
        yield Live(gateway, url, seen)
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def exchange(port: int, data: bytes, *, timeout: float = 5.0, tls: ssl.SSLContext | None = None,
             server_name: str | None = None, half_close: bool = False) -> bytes:
    """Send raw bytes, read until the gateway closes; ``socket.timeout`` after ``timeout`` s.

    Like aiohttp, the gateway treats a client's EOF as goodbye (a request in flight
    is cancelled), so requests that want an answer say ``Connection: close`` instead
    of ``half_close``.
    """
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        sock = tls.wrap_socket(raw, server_hostname=server_name) if tls is not None else raw
        sock.sendall(data)
        if half_close and tls is None:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except (ssl.SSLError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if tls is not None and _complete(b"".join(chunks)):
                break
        return b"".join(chunks)


def _complete(data: bytes) -> bool:
    """One whole response with Content-Length (TLS peers may not close first)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def status_of(response: bytes) -> int:
    """The first status code in a raw response (0 when there is none)."""
    line = response.split(b"\r\n", 1)[0].split(b" ")
    return int(line[1]) if len(line) > 1 and line[1].isdigit() else 0


def body_of(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[2]
