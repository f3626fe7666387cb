"""The request pipeline: one client request in, one answer out (messages.py), for both fronts.

Host and path parsed once (400, target.py) -> the TLS connection and the Host
agree (421 on HTTPS; 308 to HTTPS on HTTP for a hostname a TLSPolicy covers)
-> TLSPolicy allowedSubjects (403) -> route match (404/405; TRACE and CONNECT
only where a route names them) -> Admission (IP filter, auth, rate limit) ->
body limit / JSON Schema (413/415/400) -> proxy (502/503/504 when the upstream
fails). :meth:`Pipeline.serve` has the answer written by the request's front
(framing.py) and counts it in the route's metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Protocol

import aiohttp

from . import proxy
from .admission import Decision, RequestFacts
from .audit import AuditLog
from .bodies import BodyTooLarge, is_json
from .clientip import ClientAddress
from .framing import Front
from .messages import Answer, Refusal, Relay, Request, Sent, Upgrade
from .metrics import Metrics, observing, recording
from .mtls_auth import client_identity
from .observe import Note
from .ratelimit import limit_headers
from .router import MEMO_SIZE, MethodNotAllowed
from .snapshot import GUARDED_METHODS
from .target import PathRefused, RequestPath, normalise_request_path, parse_host
from .tls import PolicyContext, TlsSet
from .upstream import UpstreamPool

if TYPE_CHECKING:
    from .snapshot import RouteRuntime, Snapshot

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
_ALLOW_DEFAULT = "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"
_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
_new_facts = tuple.__new__  # RequestFacts (a NamedTuple) without its Python-level __new__, once per secured request


class SnapshotSource(Protocol):
    """The Gateway: the config snapshot a request starts with, whatever a reload does meanwhile."""

    @property
    def snapshot(self) -> Snapshot | None: ...


class Pipeline:
    """The request path of one Gateway; ``pool`` and ``session`` are set while it serves."""

    def __init__(self, source: SnapshotSource, *, metrics: Metrics, audit: AuditLog, client_address: ClientAddress,
                 ports: dict[str, int | None]) -> None:
        self._source = source
        self.metrics = metrics
        self.audit = audit
        self._client_address = client_address
        self._ports = ports  # the Gateway's, filled in when it binds (the HTTPS port for 308 redirects)
        self.pool: UpstreamPool | None = None
        self.session: aiohttp.ClientSession | None = None  # upstream WebSockets
        self._loop: asyncio.AbstractEventLoop | None = None
        # metric children by label values, created on first use (an idle route costs no buckets)
        self._counters: dict[tuple[str, str, int], Callable[[float], None]] = {}
        self._upstream: dict[str, Callable[[float], None]] = {}

    def open(self) -> None:
        """Start serving: the upstream pool and WebSocket session, on the running loop."""
        self._loop = asyncio.get_running_loop()
        self.session = proxy.build_session()
        self.pool = UpstreamPool()

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def serve(self, request: Request, front: Front, note: Note | None = None) -> Sent:
        """Answer ``request`` through ``front``; counted once written (latency includes the body)."""
        started = self._loop.time()
        answer = await self.answer(request, note)
        try:
            sent = front.write(request, answer)
            if type(sent) is not Sent:  # it has to wait: a streamed body, or aiohttp's writer
                sent = await sent
        finally:
            answer.release()
        self._count(answer.route, request.method, sent.status, started)
        return sent

    async def answer(self, request: Request, note: Note | None = None) -> Answer:
        snap = self._source.snapshot  # this request's config, whatever apply() does meanwhile
        headers = request.headers
        rid = proxy.request_id(headers.get("X-Request-Id"))
        if note is not None:
            note.rid = rid
        extra = {"X-Request-Id": rid}
        if snap is None:
            return Refusal(503, "not_ready", "no configuration loaded", extra)
        routed = self._route(snap, request, extra)
        if isinstance(routed, Refusal):
            return routed
        rt, host, host_header, path = routed
        if note is not None:
            note.route, note.compiled = rt.id, rt.route
        claim_headers: dict[str, str] | None = None
        limit_lines = b""
        if rt.needs_admission:
            decision = snap.admission.decide(rt.route, self._facts(request, host, path))
            if type(decision) is not Decision:  # something to wait for (a new token, the Redis store)
                decision = await decision
            if note is not None:
                note.decision = decision
            if decision.response_headers:
                extra.update(decision.response_headers)
            if decision.status is not None:
                return Refusal(decision.status, decision.reason, decision.message, extra, rt)
            claim_headers = decision.upstream_headers
            limit_lines = decision.limit_lines
        length = request.content_length
        if length is not None and length > rt.max_body:
            answer: Answer = Refusal(413, "body_too_large", "request body too large", extra, rt)
        else:
            try:
                answer = await self._proxy(request, rt, host_header, path, rid, extra, claim_headers, note)
            except BodyTooLarge:
                answer = Refusal(413, "body_too_large", "request body too large", extra, rt)
            except proxy.ProxyFailure as failure:
                answer = Refusal(failure.status, failure.reason, failure.message, extra, rt)
        if limit_lines:  # X-RateLimit-*: a relayed head takes the encoded lines as they are, any other answer a dict
            if type(answer) is Relay:
                answer.lines = limit_lines
            else:
                extra.update(limit_headers(limit_lines))
        return answer

    def _route(self, snap: Snapshot, request: Request,
               extra: dict[str, str]) -> Refusal | tuple[RouteRuntime, str, str, str]:
        """The request's route, host, Host header and normalised path, or why it has none."""
        headers = request.headers
        host_header = headers.get("Host", "")
        host = parse_host(host_header)  # request.host would resolve our FQDN without one
        if host is None or (not request.vetted and len(headers.getall("Host", ())) > 1):
            return Refusal(400, "bad_host", "invalid Host header", extra)
        method = request.method
        if not request.vetted and request.target[:1] not in ("/", "") and method != "CONNECT" \
                and not _authority_agrees(request.target, host):
            return Refusal(400, "bad_host", "the request target names another host than Host", extra)
        if method in GUARDED_METHODS and method not in snap.guarded_methods:
            extra["Allow"] = _ALLOW_DEFAULT
            return Refusal(405, "method_not_allowed", "method not allowed", extra)
        table = snap.table
        key = (host, method, request.path)
        memo = table.memo.get(key)  # the same request target again: normalised and matched already
        if memo is None:
            normalised = normalise_request_path(request.path)
            found = table.lookup(host, method, normalised[1]) if type(normalised) is RequestPath else None
            if len(table.memo) >= MEMO_SIZE:
                table.memo.clear()
            memo = table.memo[key] = (normalised, found)
        normalised, found = memo
        if type(normalised) is PathRefused:
            return Refusal(400, "bad_path", normalised.reason, extra)
        path = normalised[0]
        if request.tls:
            refused = self._tls_refusal(snap.tls, request, host, extra)
            if refused is not None:
                return refused
        elif (snap.tls.exact or snap.tls.wildcard) and snap.tls.owner(host) is not None:
            # never proxied in plaintext (API.md): the same request, over HTTPS
            extra["Location"] = self._https_location(host_header, path, request.query)
            return Refusal(308, "https_required", "this host is served over HTTPS only", extra)
        if found is None:
            return Refusal(404, "no_route", "no route matches", extra)
        if isinstance(found, MethodNotAllowed):
            extra["Allow"] = ", ".join(found.allow)
            return Refusal(405, "method_not_allowed", "method not allowed", extra)
        rt = found.value
        if method in GUARDED_METHODS and method not in rt.route.methods:
            extra["Allow"] = ", ".join(rt.route.methods) or _ALLOW_DEFAULT
            return Refusal(405, "method_not_allowed", "method not allowed", extra, rt)
        return rt, host, host_header, path

    def _facts(self, request: Request, host: str, path: str) -> RequestFacts:
        tls = request.tls
        peer_cert = None
        if tls:
            transport = request.transport
            peer_cert = transport.get_extra_info("peercert") if transport is not None else None
        return _new_facts(RequestFacts, (request.method, path, host, self._client_address.of(request.remote, request.headers),
                                         request.headers, peer_cert or None, tls))

    async def _proxy(self, request: Request, rt: RouteRuntime, host_header: str, path: str, rid: str,
                     extra: dict[str, str], claim_headers: dict[str, str] | None, note: Note | None) -> Answer:
        headers = request.headers
        query = request.query
        plan = rt.plan
        target = (plan.upstream_path(path) if plan.strip_prefix else path) + ("?" + query if query else "")
        websocket = "Upgrade" in headers and proxy.is_websocket_upgrade(headers)
        upstream_headers = proxy.upstream_headers(
            headers, peer=request.remote, proto="https" if request.tls else "http", host=host_header,
            rid=rid, drop=rt.claim_headers, websocket=websocket, hide_api_key=rt.hide_api_key,
        )
        if claim_headers:
            upstream_headers.extend(claim_headers.items())
        if note is not None:
            note.upstream(upstream_headers)
        if websocket:
            return self._upgrade(rt, target, upstream_headers, extra)
        body: bytes | AsyncIterator[bytes] | None = None
        content = request.content
        if content is not None:
            if headers.get("Expect", "").lower() == "100-continue" and request.writer is not None:
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            length = request.content_length
            if rt.schema is not None:
                if not is_json(headers.get("Content-Type", "")):
                    return Refusal(415, "unsupported_media_type", "request body must be application/json", extra,
                                   rt)
                body = await proxy.read_body(content, rt.max_body)
                problem = rt.schema.problem(body)
                if problem is not None:
                    return Refusal(400, problem.reason, problem.message, extra, rt)
            elif length is not None and length <= proxy.SMALL_UPLOAD:
                body = await proxy.read_body(content, rt.max_body)  # one write, replayable
            else:
                body = proxy.stream_body(content, rt.max_body)
        observe = self._upstream.get(rt.id) or self._upstream_observer(rt.id)
        relay = await proxy.forward(request, self.pool, plan, target, upstream_headers, body, extra,
                                    observe if note is None or note.timed is None else note.timed(observe))
        relay.route = rt
        return relay

    def _upgrade(self, rt: RouteRuntime, target: str, headers: list[tuple[str, str]],
                 extra: dict[str, str]) -> Upgrade:
        async def open_websocket(client: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse | Refusal:
            try:
                return await proxy.relay_websocket(client, self.session, rt.plan, target, headers, extra)
            except proxy.ProxyFailure as failure:
                return Refusal(failure.status, failure.reason, failure.message, extra, rt)
        return Upgrade(open_websocket, rt)

    def _tls_refusal(self, tls: TlsSet, request: Request, host: str, extra: dict[str, str]) -> Refusal | None:
        """421 when the connection may not carry this Host, 403 for a client the policy does not allow."""
        transport = request.transport
        connection = transport.get_extra_info("sslcontext") if transport is not None else None
        policy = tls.admits(connection, host) if isinstance(connection, PolicyContext) else None
        if policy is None:
            return Refusal(421, "misdirected_request", "this connection does not serve this host", extra)
        if policy.hsts:
            extra["Strict-Transport-Security"] = policy.hsts
        if policy.subjects is not None:
            identity = client_identity(transport.get_extra_info("peercert"))
            if identity is None and policy.client_mode == "require":  # pragma: no cover - the handshake
                return Refusal(403, "forbidden_subject", "client certificate required", extra)
            if identity is not None and not policy.subjects.allows(identity):
                method = request.method if request.method in KNOWN_METHODS else "OTHER"
                self.metrics.auth_failures.labels("", method, "forbidden_subject").inc()
                self.audit.event("auth_failure", reason="forbidden_subject", policy=policy.policy_id, host=host,
                                 client_ip=request.remote, principal=f"mtls:{identity.label}")
                return Refusal(403, "forbidden_subject", "client certificate subject not allowed", extra)
        return None

    def _https_location(self, host_header: str, path: str, query: str) -> str:
        """The request's URL on the HTTPS listener: an explicit port becomes the HTTPS port."""
        authority = host_header
        https_port = self._ports["https"]
        if host_header.startswith("["):
            end = host_header.find("]")
            if end + 1 < len(host_header):
                authority = f"{host_header[:end + 1]}:{https_port}"
        elif ":" in host_header:
            authority = f"{host_header.partition(':')[0]}:{https_port}"
        return f"https://{authority}{path}" + ("?" + query if query else "")

    def _count(self, rt: RouteRuntime | None, method: str, status: int, started: float) -> None:
        route = rt.id if rt is not None else ""
        if method not in KNOWN_METHODS:
            method = "OTHER"
        key = (route, method, status // 100)
        record = self._counters.get(key)
        if record is None:  # the request counter and the latency histogram, both in one call
            record = self._counters[key] = recording(
                self.metrics.requests.labels(route, method, _CLASSES.get(status // 100, "other")),
                self.metrics.request_latency.labels(route))
        record(self._loop.time() - started)

    def _upstream_observer(self, route: str) -> Callable[[float], None]:
        observe = self._upstream[route] = observing(self.metrics.upstream_latency.labels(route))
        return observe


def _authority_agrees(target: str, host: str) -> bool:
    """An absolute-form target (``GET http://a.test/x``) must name the host the request is routed by."""
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return False
    authority = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")
    return not authority[1] and parse_host(authority[2]) == host
