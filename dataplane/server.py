"""The data-plane Gateway: listeners, the request pipeline, and the swap of config snapshots.

``apply`` builds a new :class:`~.snapshot.Snapshot` off to the side
(snapshot.py) and swaps one reference, so a request keeps the snapshot it
started with and a bad config never replaces a good one.

Pipeline: Host and path parsed once (400, target.py) -> the TLS connection and
the Host agree (421 on HTTPS; 308 to HTTPS on HTTP for a hostname a TLSPolicy
covers) -> TLSPolicy allowedSubjects (403) -> route match (404/405; TRACE and
CONNECT only where a route names them) -> Admission (IP filter, auth, rate
limit) -> body limit / JSON Schema (413/400) -> proxy. Both fronts (http1.py
and aiohttp's, webfront.py) run this one pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubegate.config import CompiledConfig, SecretBundle, config_hash

from . import proxy
from .audit import AuditLog
from .bodies import BodyTooLarge, is_json
from .clientip import ClientAddress
from .http1 import ClientConnections, FastHttpProtocol, SimpleRequest
from .metrics import Metrics
from .mtls_auth import client_identity
from .observe import Note, Observer
from .problems import SERVER, error_body
from .router import MethodNotAllowed
from .snapshot import (
    GUARDED_METHODS,
    ConfigRejected,
    RouteMetrics,
    RouteRuntime,
    Snapshot,
    SnapshotBuilder,
    off_loop,
    one_line,
    settle_heap,
)
from .target import PathRefused, normalise_request_path, parse_host
from .tls import EMPTY_TLS, PolicyContext, SniPeekProtocol, TlsSet
from .upstream import UpstreamPool
from .webfront import ClientTimeouts, FrontServer

try:  # the security layer; a checkout without it can still serve routes that need no admission
    from .admission import RequestFacts
except ImportError:  # pragma: no cover
    RequestFacts = None  # type: ignore[assignment,misc]

log = logging.getLogger("kubegate.dataplane")


SHUTDOWN_GRACE = 10.0


def _drain_aiohttp(web_server: web.Server) -> bool:
    """Shutting down aiohttp's connections (bodies, TLS, upgrades): idle ones close at once, busy ones
    close after their response, which says ``Connection: close``. aiohttp's own shutdown() instead holds
    an idle keep-alive connection for the whole timeout and then drops it. True while any is busy."""
    busy = False
    for conn in web_server.connections:
        request = conn._current_request
        if request is None and not conn._request_in_progress:
            conn.force_close()
            continue
        busy = True
        if request is not None and not request._message.should_close:
            request._message = request._message._replace(should_close=True)
        conn.close()
    return busy
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
_ALLOW_DEFAULT = "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"
_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


class Gateway:
    def __init__(self, *, host: str = "0.0.0.0", http_port: int = 8080, https_port: int = 8443,
                 admin_port: int | None = 9090, limiter: Any, trusted_proxies: tuple[str, ...] | list[str] = (),
                 metrics: Metrics | None = None, audit: AuditLog | None = None, jwks: Any = None,
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
        self._client_address = ClientAddress(trusted_proxies)
        self._snapshot: Snapshot | None = None
        self.draining = False  # set by stop(): /readyz fails from then on
        self._session = None
        self._pool: UpstreamPool | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._web_servers: list[web.Server] = []
        self._admin_runner: web.AppRunner | None = None
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._miss_latency = self.metrics.request_latency.labels("")
        self._reloading = asyncio.Lock()
        self._builder = SnapshotBuilder(limiter=limiter, metrics=self.metrics, audit=self.audit)
        self._observer = observer
        if observer is not None:  # decided once: without access log or tracing the pipeline is untouched
            self._handle = observer.wrap(self._handle)  # type: ignore[method-assign]

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

    def _metrics_for(self, route_id: str) -> RouteMetrics:
        return self._builder.metrics_for(route_id)

    def reject(self, reason: str) -> None:
        """Count and log a config that could not be used (or not even decoded)."""
        self.metrics.config_reloads.labels("rejected").inc()
        log.warning("config rejected, keeping %s: %s",
                    self.loaded_hash[:12] if self.loaded_hash else "no config", reason)

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Bind all listeners; OSError (e.g. port in use) propagates with the port named."""
        loop = asyncio.get_running_loop()
        if self._jwks is None:
            try:
                from .jwks import JwksCache

                self._jwks = JwksCache()
            except ImportError:
                self._jwks = None
        self._session = proxy.build_session()
        self._pool = UpstreamPool()
        http = FrontServer(self._handle_http, self.timeouts, access_log=None, handler_cancellation=True)
        https = FrontServer(self._handle_https, self.timeouts, access_log=None, handler_cancellation=True)
        self._web_servers = [http, https]
        try:
            http_factory: Any = http
            if self.fast_http:
                def http_factory() -> FastHttpProtocol:
                    return FastHttpProtocol(self._handle_simple, http, self._fast_connections)
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
                busy = _drain_aiohttp(web_server) or busy
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
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
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

    # --- request pipeline ---------------------------------------------------------------

    async def _handle_http(self, request: web.BaseRequest) -> web.StreamResponse:
        return await self._handle(request, False)

    async def _handle_https(self, request: web.BaseRequest) -> web.StreamResponse:
        return await self._handle(request, True)

    async def _handle_simple(self, request: SimpleRequest, relay: Any) -> Any:
        return await self._handle(request, False, relay)

    async def _handle(self, request: web.BaseRequest, tls: bool, relay: Any = None,
                      note: Note | None = None) -> web.StreamResponse:
        snap = self._snapshot  # this request's config, whatever apply() does meanwhile
        loop = asyncio.get_running_loop()
        started = loop.time()
        headers = request.headers
        rid = proxy.request_id(headers.get("X-Request-Id"))
        extra = {"X-Request-Id": rid}
        if snap is None:
            return self._error(503, "not_ready", "no configuration loaded", extra, "", request, started)
        host_header = headers.get("Host", "")
        host = parse_host(host_header)  # request.host would resolve our FQDN without one
        if host is None or (relay is None and len(headers.getall("Host", ())) > 1):
            return self._error(400, "bad_host", "invalid Host header", extra, "", request, started)
        method = request.method
        if relay is None and request.raw_path[:1] not in ("/", "") and method != "CONNECT" \
                and not self._authority_agrees(request.raw_path, host):
            return self._error(400, "bad_host", "the request target names another host than Host", extra, "",
                               request, started)
        if method in GUARDED_METHODS and method not in snap.guarded_methods:
            extra["Allow"] = _ALLOW_DEFAULT
            return self._error(405, "method_not_allowed", "method not allowed", extra, "", request, started)
        rel = request.rel_url
        normalised = normalise_request_path(rel.raw_path)
        if isinstance(normalised, PathRefused):
            return self._error(400, "bad_path", normalised.reason, extra, "", request, started)
        path, segments = normalised
        if tls:
            refused = self._tls_refusal(snap.tls, request, host, extra)
            if refused is not None:
                return self._error(*refused, extra, "", request, started)
        elif (snap.tls.exact or snap.tls.wildcard) and snap.tls.owner(host) is not None:
            # never proxied in plaintext (API.md): the same request, over HTTPS
            extra["Location"] = self._https_location(host_header, path, rel.raw_query_string)
            return self._error(308, "https_required", "this host is served over HTTPS only", extra, "",
                               request, started)
        found = snap.table.lookup(host, method, segments)
        if found is None:
            return self._error(404, "no_route", "no route matches", extra, "", request, started)
        if isinstance(found, MethodNotAllowed):
            extra["Allow"] = ", ".join(found.allow)
            return self._error(405, "method_not_allowed", "method not allowed", extra, "", request, started)
        if method in GUARDED_METHODS and method not in found.value.route.methods:
            extra["Allow"] = ", ".join(found.value.route.methods) or _ALLOW_DEFAULT
            return self._error(405, "method_not_allowed", "method not allowed", extra, found.value.id, request,
                               started)
        rt: RouteRuntime = found.value
        if note is not None:
            note.route, note.rid, note.compiled = rt.id, rid, rt.route
        peer = request.remote or ""
        claim_headers: dict[str, str] | None = None
        if rt.needs_admission:
            client_ip = self._client_address.resolve(peer, headers.getall("X-Forwarded-For", []))
            verdict = await snap.admission.admit(rt.route, self._facts(request, path, host, client_ip, tls))
            if note is not None:
                note.verdict = verdict
            if verdict.response_headers:
                extra.update(verdict.response_headers)
            if verdict.status is not None:
                return self._error(verdict.status, verdict.reason, verdict.message, extra, rt.id, request,
                                   started)
            claim_headers = verdict.upstream_headers
        length = request.content_length
        if length is not None and length > rt.max_body:
            return self._error(413, "body_too_large", "request body too large", extra, rt.id, request, started)
        query = rel.raw_query_string
        target = rt.plan.upstream_path(path) + ("?" + query if query else "")
        websocket = proxy.is_websocket_upgrade(headers)
        upstream_headers = proxy.upstream_headers(
            headers, peer=peer, proto="https" if tls else "http", host=headers.get("Host", ""), rid=rid,
            drop=rt.claim_headers, websocket=websocket, hide_api_key=rt.hide_api_key,
        )
        if claim_headers:
            upstream_headers.extend(claim_headers.items())
        if note is not None:
            note.upstream(upstream_headers)
        try:
            if websocket:
                response = await proxy.relay_websocket(request, self._session, rt.plan, target, upstream_headers,
                                                       extra)
                self._count(rt.id, request.method, 101, started, rt.metrics.latency)
                return response
            body: Any = None
            if request.body_exists:
                if headers.get("Expect", "").lower() == "100-continue":
                    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                if rt.schema is not None:
                    if not is_json(headers.get("Content-Type", "")):
                        return self._error(415, "unsupported_media_type", "request body must be application/json",
                                           extra, rt.id, request, started)
                    body = await proxy.read_body(request.content, rt.max_body)
                    problem = rt.schema.problem(body)
                    if problem is not None:
                        return self._error(400, problem.reason, problem.message, extra, rt.id, request, started)
                elif length is not None and length <= proxy.SMALL_UPLOAD:
                    body = await proxy.read_body(request.content, rt.max_body)  # one write, replayable
                else:
                    body = proxy.stream_body(request.content, rt.max_body)
            response = await proxy.forward(request, self._pool, rt.plan, target, upstream_headers, body, extra,
                                           rt.metrics.observe_upstream if note is None else
                                           note.timed(rt.metrics.observe_upstream), relay)
        except BodyTooLarge:
            return self._error(413, "body_too_large", "request body too large", extra, rt.id, request, started)
        except proxy.ProxyFailure as failure:
            return self._error(failure.status, failure.reason, failure.message, extra, rt.id, request, started)
        self._count(rt.id, request.method, response.status, started, rt.metrics.latency)
        return response

    def _tls_refusal(self, tls: TlsSet, request: web.BaseRequest, host: str,
                     extra: dict[str, str]) -> tuple[int, str, str] | None:
        """421 when the connection may not carry this Host, 403 for a client the policy does not allow."""
        transport = request.transport
        connection = transport.get_extra_info("sslcontext") if transport is not None else None
        policy = tls.admits(connection, host) if isinstance(connection, PolicyContext) else None
        if policy is None:
            return 421, "misdirected_request", "this connection does not serve this host"
        if policy.hsts:
            extra["Strict-Transport-Security"] = policy.hsts
        if policy.subjects is not None:
            identity = client_identity(transport.get_extra_info("peercert"))
            if identity is None and policy.client_mode == "require":  # pragma: no cover - the handshake
                return 403, "forbidden_subject", "client certificate required"
            if identity is not None and not policy.subjects.allows(identity):
                method = request.method if request.method in _KNOWN_METHODS else "OTHER"
                self.metrics.auth_failures.labels("", method, "forbidden_subject").inc()
                self.audit.event("auth_failure", reason="forbidden_subject", policy=policy.policy_id, host=host,
                                 client_ip=request.remote or "", principal=f"mtls:{identity.label}")
                return 403, "forbidden_subject", "client certificate subject not allowed"
        return None

    @staticmethod
    def _authority_agrees(target: str, host: str) -> bool:
        """An absolute-form target (``GET http://a.test/x``) must name the host the request is routed by."""
        scheme, sep, rest = target.partition("://")
        if not sep or scheme.lower() not in ("http", "https"):
            return False
        authority = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")
        return not authority[1] and parse_host(authority[2]) == host

    def _https_location(self, host_header: str, path: str, query: str) -> str:
        """The request's URL on the HTTPS listener: an explicit port becomes the HTTPS port."""
        authority = host_header
        if host_header.startswith("["):
            end = host_header.find("]")
            if end + 1 < len(host_header):
                authority = f"{host_header[:end + 1]}:{self.ports['https']}"
        elif ":" in host_header:
            authority = f"{host_header.partition(':')[0]}:{self.ports['https']}"
        return f"https://{authority}{path}" + ("?" + query if query else "")

    def _facts(self, request: web.BaseRequest, path: str, host: str, client_ip: str, tls: bool) -> Any:
        peer_cert = request.transport.get_extra_info("peercert") if tls and request.transport else None
        return RequestFacts(method=request.method, path=path, host=host, client_ip=client_ip,
                            headers=request.headers, peer_cert=peer_cert or None, tls=tls)

    def _count(self, route: str, method: str, status: int, started: float, latency: Any) -> None:
        if method not in _KNOWN_METHODS:
            method = "OTHER"
        key = (route, method, status // 100)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = self.metrics.requests.labels(route, method, _CLASSES.get(status // 100,
                                                                                               "other"))
        child.inc()
        latency.observe(asyncio.get_running_loop().time() - started)

    def _error(self, status: int, reason: str, message: str, headers: dict[str, str], route: str,
               request: web.BaseRequest, started: float) -> web.Response:
        body = error_body(status, reason, message, headers.get("X-Request-Id", ""))
        self._count(route, request.method, status, started,
                    self._miss_latency if not route else self._metrics_for(route).latency)
        return web.Response(status=status, body=body, content_type="application/json", headers=headers)

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


def config_summary(config: CompiledConfig | None, digest: str | None, loaded_at: float | None) -> dict[str, Any]:
    """The admin port's /config answer (pure; the supervisor of ``--workers`` serves it too)."""
    if config is None:
        return {"hash": None, "routes": 0, "loaded_at": None}
    return {"hash": digest, "routes": len(config.routes), "api_keys": len(config.api_keys),
            "tls_policies": len(config.tls), "loaded_at": loaded_at, "generations": config.generations}


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
