"""The operator's own HTTP port: /metrics, /healthz (liveness), /readyz (readiness).

Liveness says the process still does its job: every long-running task
(leader election, the reconcile loop, kopf's watches, our informers) is still
running. Readiness says it can be trusted: the initial lists are done and, on
the leader, the first reconcile pass has finished. The decisions are pure
functions; the server only reports them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from kubegate.errors import UserError


def liveness_problem(tasks: Mapping[str, asyncio.Task]) -> str | None:
    """Why the process is not alive, or None: a task that should run forever has ended (pure)."""
    for name, task in tasks.items():
        if task.done():
            return f"{name} stopped"
    return None


def readiness_problem(*, seeded: bool, watching: bool, leader: bool, reconciled: bool) -> str | None:
    """Why the process is not ready yet, or None (pure)."""
    if not seeded:
        return "initial list of kubegate objects not done"
    if not watching:
        return "watches not established"
    if leader and not reconciled:
        return "leader has not finished its first reconcile"
    return None


class HealthServer:
    def __init__(self, registry: CollectorRegistry, *, alive: Callable[[], str | None],
                 ready: Callable[[], str | None], port: int, host: str | None = None) -> None:
        self.registry, self.alive, self.ready = registry, alive, ready
        self.port, self.host = port, host
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0). A busy port is a one-line UserError."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._probe(self.alive))
        app.router.add_get("/readyz", self._probe(self.ready))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        # Every interface (IPv4 and IPv6) on a fixed port; a free port (0) must be one port, so IPv4 only then.
        host = self.host if self.host is not None or self.port else "0.0.0.0"
        site = web.TCPSite(self._runner, host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise UserError(f"cannot listen on metrics port {self.port}: {exc.strerror or exc}") from None
        server = site._server
        sockets = getattr(server, "sockets", None) or ()
        return sockets[0].getsockname()[1] if sockets else self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @staticmethod
    def _probe(check: Callable[[], str | None]) -> Callable[[web.Request], object]:
        async def handler(_request: web.Request) -> web.Response:
            problem = check()
            return web.Response(status=503, text=f"{problem}\n") if problem else web.Response(text="ok\n")

        return handler
