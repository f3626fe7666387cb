"""The data-plane Gateway: listeners, atomic config snapshots and the admin port.

``apply`` builds a new :class:`~.snapshot.Snapshot` off to the side
(snapshot.py) and swaps one reference, so a request keeps the snapshot it
started with and a bad config never replaces a good one.

Requests: both fronts (http1.py's lean one and aiohttp's, webfront.py) hand a
messages.Request to the one pipeline (pipeline.py), which returns an answer
that framing.py writes back through the request's front.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubegate.config import CompiledConfig, SecretBundle, config_hash

from .audit import AuditLog
from .clientip import ClientAddress
from .framing import AiohttpFront
from .http1 import ClientConnections, FastHttpProtocol
from .jwks import JwksCache
from .messages import Request
from .metrics import Metrics
from .observe import Observer
from .pipeline import Pipeline
from .problems import SERVER
from .ratelimit import RateLimiter
from .snapshot import ConfigRejected, Snapshot, SnapshotBuilder, off_loop, one_line, settle_heap
from .tls import EMPTY_TLS, SniPeekProtocol, TlsSet
from .webfront import ClientTimeouts, FrontServer

log = logging.getLogger("kubegate.dataplane")


def _young_collections_rarer() -> None:
    """Collect the young generation every YOUNG_THRESHOLD allocations instead of Python's 700.

    Each proxied request allocates a few dozen tracked objects (coroutines, futures, lists,
    the answer), nearly all freed by reference counting when it ends, so a young collection
    only walks what is in flight: doing it 70 times less often costs a little memory for cyclic
    garbage and saves the collector's share of every request.
    """
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


YOUNG_THRESHOLD = 50_000
SHUTDOWN_GRACE = 10.0


class Gateway:
    def __init__(self, *, host: str = "0.0.0.0", http_port: int = 8080, https_port: int = 8443,
                 admin_port: int | None = 9090, limiter: RateLimiter,
                 trusted_proxies: tuple[str, ...] | list[str] = (), metrics: Metrics | None = None,
                 audit: AuditLog | None = None, jwks: JwksCache | None = None,
                 reuse_port: bool = False, fast_http: bool = True,
                 timeouts: ClientTimeouts | None = None, observer: Observer | None = None) -> None:
        """``reuse_port``: bind the HTTP/HTTPS listeners with SO_REUSEPORT so several worker
        processes can share them (the kernel spreads connections; nginx/Envoy do the same).
        ``admin_port`` None: no admin port (a worker: its supervisor serves the aggregated one).
        ``fast_http``: serve simple plain-HTTP requests with the lean front (http1.py)."""
        self.host = host
        self.reuse_port = reuse_port
        self.fast_http = fast_http
        self.timeouts = timeouts or ClientTimeouts()
        self._fast_connections = ClientConnections(self.timeouts)
        self.ports = {"http": http_port, "https": https_port, "admin": admin_port}
        self.limiter = limiter
        self.metrics = metrics or Metrics()
        self.audit = audit or AuditLog()
        self._jwks = jwks
        self._owns_jwks = jwks is None
        self._snapshot: Snapshot | None = None
        self.draining = False  # set by stop(): /readyz fails from then on
        self._pipeline = Pipeline(self, metrics=self.metrics, audit=self.audit,
                                  client_address=ClientAddress(trusted_proxies), ports=self.ports)
        self._servers: list[asyncio.base_events.Server] = []
        self._web_servers: list[FrontServer] = []
        self._admin_runner: web.AppRunner | None = None
        self._reloading = asyncio.Lock()
        self._builder = SnapshotBuilder(limiter=limiter, metrics=self.metrics, audit=self.audit)
        self._observer = observer
        self._serve = self._pipeline.serve
        if observer is not None:  # decided once: without access log or tracing the pipeline is untouched
            self._serve = observer.wrap(self._pipeline.serve)

    # --- config ----------------------------------------------------------------

    @property
    def loaded_hash(self) -> str | None:
        snap = self._snapshot
        return snap.hash if snap else None

    @property
    def dropped(self) -> dict[str, str]:
        """Objects of the loaded config that are not served ("Kind/ns/name" -> reason), for the heartbeat."""
        snap = self._snapshot
        return snap.dropped if snap else {}

    @property
    def ready(self) -> bool:
        return self._snapshot is not None

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def apply(self, config: CompiledConfig, secrets: SecretBundle) -> str:
        """Validate and swap in a new config; ConfigRejected keeps the last good one serving."""
        return self.commit(self.prepare(config, secrets))

    async def apply_off_loop(self, config: CompiledConfig, secrets: SecretBundle, digest: str | None = None,
                             encoded: tuple[str, bytes] | None = None) -> str:
        """apply(), with the snapshot built in a worker thread: requests keep being served while it
        builds; only the swap itself runs on the event loop. The build reuses what did not change and
        settles the heap as it goes (snapshot.py), so the thread does not stall the loop either.
        Reloads are applied one at a time, in the order they were asked for. ``digest``: the config's
        ``config_hash`` when the caller already has it (sources/decode.py computes it piece by piece);
        ``encoded`` is for the --workers supervisor (sources/__init__.py), not needed here."""
        async with self._reloading:
            return self.commit(await off_loop(self.prepare, config, secrets, digest, settle_heap))

    def prepare(self, config: CompiledConfig, secrets: SecretBundle, digest: str | None = None,
                pause: Callable[[], None] | None = None) -> Snapshot:
        """The snapshot to serve (the current one when nothing changed); no event-loop state is touched,
        so it may run in a thread. The first half of ``apply``: workers all build before any swaps."""
        digest = digest or config_hash(config, secrets)
        current = self._snapshot
        if current is not None and current.hash == digest:
            return current
        try:
            self._builder.jwks = self._jwks  # created by start()
            return self._builder.build(config, secrets, digest, pause)
        except Exception as exc:  # noqa: BLE001 - any problem refuses the config, never the process
            reason = one_line(exc)
            self.reject(reason)
            raise ConfigRejected(reason) from None

    def commit(self, snapshot: Snapshot) -> str:
        """Serve a prepared snapshot (one reference swap)."""
        if snapshot is self._snapshot:
            return snapshot.hash
        config, digest = snapshot.config, snapshot.hash
        self._snapshot = snapshot
        settle_heap()
        m = self.metrics
        m.config_reloads.labels("ok").inc()
        m.config_info.info({"hash": digest, "routes": str(len(config.routes)),
                            "api_keys": str(len(config.api_keys)), "tls_policies": str(len(config.tls))})
        m.config_timestamp.set(snapshot.loaded_at)
        m.routes.set(len(config.routes))
        for policy_id, not_after in snapshot.tls.expiry.items():
            m.cert_expiry.labels(policy_id).set(not_after)
        log.info("config %s loaded: %d routes, %d api keys, %d tls policies", digest[:12], len(config.routes),
                 len(config.api_keys), len(config.tls))
        return digest

    def reject(self, reason: str) -> None:
        """Count and log a config that could not be used (or not even decoded)."""
        self.metrics.config_reloads.labels("rejected").inc()
        log.warning("config rejected, keeping %s: %s",
                    self.loaded_hash[:12] if self.loaded_hash else "no config", reason)

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Bind all listeners; OSError (e.g. port in use) propagates with the port named."""
        loop = asyncio.get_running_loop()
        _young_collections_rarer()
        if self._jwks is None:
            self._jwks = JwksCache()
        self._pipeline.open()
        http = FrontServer(self._handle_http, self.timeouts, access_log=None, handler_cancellation=True)
        https = FrontServer(self._handle_https, self.timeouts, access_log=None, handler_cancellation=True)
        self._web_servers = [http, https]
        try:
            http_factory: Any = http
            if self.fast_http:
                def http_factory() -> FastHttpProtocol:
                    return FastHttpProtocol(self._serve, http, self._fast_connections)
            server = await self._bind(loop, http_factory, "http")
            self._servers.append(server)
            server = await self._bind(
                loop, lambda: SniPeekProtocol(self._current_tls, https, self._tls_error), "https"
            )
            self._servers.append(server)
            if self.ports["admin"] is not None:  # None: a worker; its supervisor serves the admin port
                await self._start_admin()
        except BaseException:
            await self.stop()
            raise

    async def _start_admin(self) -> None:
        self._admin_runner, self.ports["admin"] = await serve_admin(self.host, self.ports["admin"], {
            "/metrics": self._metrics_endpoint, "/healthz": self._healthz, "/readyz": self._readyz,
            "/config": self._config_endpoint,
        })

    async def _bind(self, loop: asyncio.AbstractEventLoop, factory: Any, name: str) -> asyncio.base_events.Server:
        try:
            server = await loop.create_server(factory, self.host, self.ports[name], reuse_address=True,
                                              reuse_port=self.reuse_port or None,
                                              backlog=1024)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {self.host}:{self.ports[name]} ({name}): "
                                     f"{exc.strerror}") from None
        self.ports[name] = server.sockets[0].getsockname()[1]
        return server

    async def stop(self) -> None:
        """Graceful shutdown: fail readiness, stop accepting, close idle keep-alive connections at once,
        answer what is in flight (``Connection: close`` on busy connections' last response; bounded by
        SHUTDOWN_GRACE), then close upstream pools."""
        self.draining = True
        for server in self._servers:
            server.close()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while True:
            for conn in self._fast_connections:
                conn.drain()
            busy = any(conn.busy for conn in self._fast_connections)
            for web_server in self._web_servers:
                busy = web_server.drain() or busy
            if not busy or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        self._fast_connections.close()
        for web_server in self._web_servers:
            await web_server.shutdown(max(0.0, deadline - time.monotonic()))
        for server in self._servers:
            await server.wait_closed()
        self._servers = []
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
            self._admin_runner = None
        await self._pipeline.close()
        if self._observer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._observer.close)
        if self._owns_jwks and self._jwks is not None:
            await self._jwks.close()
            self._jwks = None

    # --- TLS -------------------------------------------------------------------------

    def _current_tls(self) -> TlsSet:
        snap = self._snapshot
        return snap.tls if snap is not None else EMPTY_TLS

    def _tls_error(self, reason: str, server_name: str | None, peer: str) -> None:
        self.metrics.tls_errors.labels(reason).inc()
        self.audit.event("tls_error", reason=reason, server_name=server_name, client_ip=peer)

    # --- requests (pipeline.py answers them) ------------------------------------------------

    async def _handle_http(self, request: web.BaseRequest) -> web.StreamResponse:
        return await self._serve_aiohttp(request, False)

    async def _handle_https(self, request: web.BaseRequest) -> web.StreamResponse:
        return await self._serve_aiohttp(request, True)

    async def _serve_aiohttp(self, request: web.BaseRequest, tls: bool) -> web.StreamResponse:
        front = AiohttpFront(request)
        await self._serve(Request.of_aiohttp(request, tls), front)
        return front.response  # type: ignore[return-value]

    # --- admin endpoints ----------------------------------------------------------------------

    async def _metrics_endpoint(self, request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(self.metrics.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.json_response({"status": "shutting down"}, status=503)
        if self._snapshot is None:
            return web.json_response({"status": "no configuration loaded"}, status=503)
        return web.json_response({"status": "ready", "hash": self._snapshot.hash})

    async def _config_endpoint(self, request: web.Request) -> web.Response:
        snap = self._snapshot
        return web.json_response(config_summary(snap.config, snap.hash, snap.loaded_at) if snap else
                                 config_summary(None, None, None))


def config_counts(config: CompiledConfig) -> dict[str, Any]:
    """What /config tells about a config besides its hash (pure; a --workers worker sends it to its supervisor)."""
    return {"routes": len(config.routes), "api_keys": len(config.api_keys), "tls_policies": len(config.tls),
            "generations": config.generations}


def config_summary(config: CompiledConfig | dict[str, Any] | None, digest: str | None,
                   loaded_at: float | None) -> dict[str, Any]:
    """The admin port's /config answer (pure; the supervisor of ``--workers`` serves it too, from the
    config or its ``config_counts``)."""
    if config is None:
        return {"hash": None, "routes": 0, "loaded_at": None}
    counts = config if isinstance(config, dict) else config_counts(config)
    return {"hash": digest, "routes": counts["routes"], "api_keys": counts["api_keys"],
            "tls_policies": counts["tls_policies"], "loaded_at": loaded_at, "generations": counts["generations"]}


async def serve_admin(host: str, port: int, handlers: dict[str, Any]) -> tuple[web.AppRunner, int]:
    """The admin listener (a Gateway's or a supervisor's): GET ``handlers`` by path; returns its
    runner and the port it got (``port`` 0: a free one)."""
    app = web.Application()
    app.on_response_prepare.append(server_header)
    for path, handler in handlers.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(exc.errno, f"cannot listen on {host}:{port} (admin): {exc.strerror}") from None
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER
