"""Echo backends for ``kubegate run --demo-backends``: the examples answer without a cluster.

In local mode a Service backend ``service: x, port: N`` reaches 127.0.0.1:N.
This starts one tiny aiohttp server on each such port that answers with what
it received (method, path, the gateway's forwarding headers), so a first
``curl`` through the gateway shows routing, auth and rate limits at work.
Credentials are never echoed.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from aiohttp import web

from kubegate.config import CompiledConfig

log = logging.getLogger("kubegate.demo")

_HIDDEN = frozenset({"authorization", "x-api-key", "cookie", "proxy-authorization"})


def local_backend_ports(config: CompiledConfig) -> list[int]:
    """Loopback ports the compiled routes proxy to (sorted, unique)."""
    ports = set()
    for route in config.routes:
        for backend in route.backends:
            url = urlsplit(backend.url)
            if url.hostname in ("127.0.0.1", "localhost") and url.port:
                ports.add(url.port)
    return sorted(ports)


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({
        "backend": f"127.0.0.1:{request.url.port}",
        "method": request.method,
        "path": request.path_qs,
        "headers": {k: v for k, v in request.headers.items() if k.lower() not in _HIDDEN},
        "body_bytes": len(body),
    })


async def start_demo_backends(ports: list[int], busy: set[int]) -> list[web.AppRunner]:
    """One echo server per port; ports the gateway itself uses are skipped with a warning."""
    runners = []
    for port in ports:
        if port in busy:
            log.warning("demo backend: port %d is one of the gateway's own listeners; skipped", port)
            continue
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", _echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
        except OSError as exc:
            log.warning("demo backend: 127.0.0.1:%d unavailable (%s); skipped", port, exc.strerror or exc)
            await runner.cleanup()
            continue
        runners.append(runner)
        log.info("demo backend: echo server on http://127.0.0.1:%d", port)
    return runners
