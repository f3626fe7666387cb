"""GatewayRoute: conflicts between routes (older wins), then each route's backends, JWT and settings.

A route is compiled without its rate limit (``ratelimits`` decides precedence
across policies); ``_serve`` attaches the winning policy and records the
backends the route sends to, for the NetworkPolicies ``generate`` writes.
"""

from __future__ import annotations

import re
from typing import Any

from kubegate.config import (
    CompiledAuth,
    CompiledBackend,
    CompiledCircuitBreaker,
    CompiledJwt,
    CompiledRoute,
)
from kubegate.jwt_keys import key_fits, load_public_key
from kubegate.spec import CircuitBreaker, GatewayRouteSpec

from .common import (
    BACKEND_NOT_FOUND,
    CONFLICTED,
    INVALID_KEY,
    ascii_text,
    backend_url,
    key_kind,
    seconds,
    text,
)
from .memo import Entry, Fragment
from .memo import Scope as _Scope
from .memo import Verdict as _Verdict
from .run import Processor, Run

# The names the route compilation below has used since it lived in translate.py (ports of hunks stay easy).
_ascii, _key_kind, _seconds, _text = ascii_text, key_kind, seconds, text

KIND = "GatewayRoute"
ANY = "*"  # "every host" / "every method" in the conflict index (empty lists in the spec)

_PARAM = re.compile(r"/:[A-Za-z_][A-Za-z0-9_]*")
_BRACED = re.compile(r"/\{[A-Za-z_][A-Za-z0-9_]*\}")
_CATCH_ALL = re.compile(r"/\*[A-Za-z_][A-Za-z0-9_]*")


def pattern_key(path: str) -> str:
    """A route path pattern's key in the conflict index, parameter names erased: ``/a/:id`` and
    ``/a/{x}`` claim the same requests; so do ``*rest`` and ``*tail``. (Request paths are
    normalised elsewhere: ``dataplane/target.py:normalise_request_path``.)"""
    path = _PARAM.sub("/{}", path)
    path = _BRACED.sub("/{}", path)
    return _CATCH_ALL.sub("/*", path)


def _overlap(a: tuple[str, ...], b: tuple[str, ...]) -> set[str] | None:
    """Shared values of two lists where empty means "everything"; None = no overlap."""
    if not a and not b:
        return {"*"}
    if not a or not b:
        return set(a or b)
    shared = set(a) & set(b)
    return shared or None


def claims_of(entry: Entry) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """A route's (pattern key, sorted hosts, sorted methods) for the conflict index."""
    if entry.route_claims is None:
        spec: GatewayRouteSpec = entry.model  # type: ignore[assignment]
        entry.route_claims = (pattern_key(spec.path), tuple(sorted(h.lower() for h in spec.hosts)),
                              tuple(sorted(spec.methods)))
    return entry.route_claims


class _ClaimIndex:
    """Accepted routes by (path pattern key, host, method); ``*`` stands for an empty list.

    A host claims only itself: ``api.example.com``, ``*.example.com`` and "no hosts"
    (``*``) are three distinct keys that coexist, and the data plane picks among them
    (exact, then longest ``*.`` suffix, then no hosts). Methods do overlap: an empty
    list claims every method. Finding the oldest accepted route that overlaps a new
    one costs a few dict lookups per host x method pair, not a scan over every route
    on the path. Each bucket keeps its oldest claimant; the oldest of those is the
    oldest overlap.
    """

    def __init__(self) -> None:
        self.cells: dict[tuple[str, str, str], int] = {}  # (path, host|*, method|*)
        self.by_host: dict[tuple[str, str], int] = {}  # (path, host|*): any method
        self.claimants: list[tuple[_Verdict, tuple[str, ...], tuple[str, ...]]] = []

    def oldest_overlap(self, path: str, hosts: tuple[str, ...], methods: tuple[str, ...]) -> int | None:
        found: list[int] = []
        for h in hosts or (ANY,):
            if methods:
                for m in methods:
                    for key in ((path, h, m), (path, h, ANY)):
                        if key in self.cells:
                            found.append(self.cells[key])
            elif (path, h) in self.by_host:
                found.append(self.by_host[(path, h)])
        return min(found) if found else None

    def claim(self, path: str, hosts: tuple[str, ...], methods: tuple[str, ...], verdict: _Verdict) -> None:
        index = len(self.claimants)
        self.claimants.append((verdict, hosts, methods))
        for h in hosts or (ANY,):
            self.by_host.setdefault((path, h), index)
            for m in methods or (ANY,):
                self.cells.setdefault((path, h, m), index)


def _claims(run: Run) -> None:
    """Older routes win same-host+path+method overlaps; losers get Accepted=False Conflicted."""
    index = _ClaimIndex()
    for verdict in run.of(KIND):  # already oldest first
        path, hosts, methods = claims_of(verdict.entry)
        winner = index.oldest_overlap(path, hosts, methods)
        if winner is None:
            index.claim(path, hosts, methods, verdict)
            continue
        other, other_hosts, other_methods = index.claimants[winner]
        shared_hosts = ", ".join(sorted(set(hosts) & set(other_hosts))) if hosts else "none"
        shared_methods = _overlap(methods, other_methods) or set()
        verdict.reject(
            CONFLICTED,
            f"path {verdict.entry.model.path} (hosts {shared_hosts}; methods "  # type: ignore[union-attr]
            f"{', '.join(sorted(shared_methods))}) is already claimed by the older "
            f"GatewayRoute {other.obj.namespace}/{other.obj.name}",
        )


def _backends(scope: _Scope, spec: GatewayRouteSpec) -> list[CompiledBackend]:
    ns = scope.obj.namespace
    out = []
    for backend in spec.backends:
        if backend.url is not None:
            out.append(CompiledBackend(url=backend.url, weight=backend.weight))
            continue
        service = scope.service(ns, backend.service)
        if service is None:
            scope.unresolved(BACKEND_NOT_FOUND, f"service {backend.service} not found in namespace {ns}")
            continue
        declared = {p.port for p in service.ports}
        if backend.port not in declared and not (service.type == "ExternalName" and not declared):
            scope.unresolved(BACKEND_NOT_FOUND, f"service {backend.service} has no port {backend.port}")
            continue
        url = backend_url(service, backend.port, scope.inp.cluster_domain)
        out.append(CompiledBackend(url=url, weight=backend.weight))
    return out


def _jwt(scope: _Scope, spec: GatewayRouteSpec) -> tuple[CompiledJwt | None, bool]:
    """(compiled JWT settings, usable); unusable key material fails the route closed."""
    jwt = spec.auth.jwt if spec.auth else None
    if jwt is None:
        return None, True
    obj = scope.obj
    compiled = {
        "issuer": jwt.issuer,
        "audiences": tuple(jwt.audiences),
        "algorithms": tuple(jwt.algorithms),
        "jwks_uri": jwt.jwksUri,
        "required_claims": dict(jwt.requiredClaims),
        "forward_claims": dict(jwt.forwardClaims),
    }
    if jwt.secretRef is not None:
        raw = scope.secret_value(obj.namespace, jwt.secretRef, "auth.jwt.secretRef")
        if raw is None:
            return None, False
        secret = _text(raw)
        if not secret:
            scope.unresolved(INVALID_KEY, f"auth.jwt.secretRef: Secret {obj.namespace}/{jwt.secretRef.name} "
                                          f"key {jwt.secretRef.key!r} is empty or not UTF-8")
            return None, False
        bundle_key = f"jwt.{obj.namespace}.{obj.name}"
        scope.put(bundle_key, secret)
        compiled["hmac_secret"] = bundle_key
    if jwt.publicKeySecretRef is not None:
        ref = jwt.publicKeySecretRef
        raw = scope.secret_value(obj.namespace, ref, "auth.jwt.publicKeySecretRef")
        if raw is None:
            return None, False
        where = f"auth.jwt.publicKeySecretRef: Secret {obj.namespace}/{ref.name} key {ref.key!r}"
        pem = _ascii(raw)
        try:
            public_key = load_public_key(pem) if pem is not None else None
        except (ValueError, TypeError):
            public_key = None
        if public_key is None:
            scope.unresolved(INVALID_KEY, f"{where} is not a PEM public key or certificate")
            return None, False
        unfit = [alg for alg in jwt.algorithms if not key_fits(alg, public_key)]
        if unfit:
            scope.unresolved(INVALID_KEY, f"{where} holds {_key_kind(public_key)}, which cannot verify "
                                          f"{', '.join(unfit)} (algorithms lists what the key must fit)")
            return None, False
        compiled["public_key_pem"] = pem
    return CompiledJwt(**compiled), True


def _route(scope: _Scope, spec: GatewayRouteSpec) -> CompiledRoute | None:
    """The route without its rate limit (precedence is decided across objects, later)."""
    backends = _backends(scope, spec)
    jwt, jwt_ok = _jwt(scope, spec)
    if not backends or not jwt_ok:
        return None
    obj = scope.obj
    auth = None
    if spec.auth is not None:
        auth = CompiledAuth(
            required=spec.auth.required,
            methods=tuple(spec.auth.methods),
            jwt=jwt,
            mtls_subjects=tuple(spec.auth.mtls.allowedSubjects) if spec.auth.mtls else (),
        )
    return CompiledRoute(
        id=f"{obj.namespace}/{obj.name}",
        namespace=obj.namespace,
        name=obj.name,
        hosts=tuple(h.lower() for h in spec.hosts),
        path=spec.path,
        methods=tuple(spec.methods),
        backends=tuple(backends),
        strip_prefix=spec.rewrite.stripPrefix if spec.rewrite else None,
        request_timeout=_seconds(spec.timeouts.request),
        connect_timeout=_seconds(spec.timeouts.connect),
        retries=spec.retries.attempts,
        max_body_bytes=spec.maxBodyBytes,
        request_schema=spec.requestSchema,
        auth=auth,
        ip_allow=tuple(spec.ipFilter.allow) if spec.ipFilter else (),
        ip_deny=tuple(spec.ipFilter.deny) if spec.ipFilter else (),
        circuit_breaker=_circuit_breaker(spec.circuitBreaker),
    )


def _circuit_breaker(spec: CircuitBreaker | None) -> CompiledCircuitBreaker | None:
    if spec is None:
        return None
    return CompiledCircuitBreaker(
        max_requests=spec.maxRequests, max_pending_requests=spec.maxPendingRequests,
        consecutive_errors=spec.consecutiveErrors, ejection_time=_seconds(spec.ejectionTime),
    )


def _serve(verdict: _Verdict, fragment: Fragment, run: Run) -> tuple[str, CompiledRoute, bytes]:
    """The route with the rate limit that wins for it; notes its backends for the NetworkPolicies."""
    rate_limit = run.precedence.limit_for(verdict.obj.namespace, verdict.obj.name)
    route, payload = verdict.entry.serve(fragment, rate_limit)
    _note_backends(run, verdict, fragment)
    return route.id, route, payload


def _note_backends(run: Run, verdict: _Verdict, fragment: Fragment) -> None:
    """Record what a programmed route reaches (see :func:`_reach`; memoised with its fragment)."""
    entry = verdict.entry
    reach = entry.reach
    if reach is None or reach[0] is not fragment:
        reach = entry.reach = (fragment, *_reach(run, verdict))
    if reach[1]:
        run.backend_urls.update(reach[1])
    for key, service, declared in reach[2]:
        ports = run.backend_services.setdefault(key, (service, []))[1]
        if declared not in ports:
            ports.append(declared)


def _reach(run: Run, verdict: _Verdict) -> tuple[tuple[str, ...], tuple[tuple[tuple[str, str], Any, Any], ...]]:
    """The url: backends and JWKS URI of a route, and ((ns, name), Service, declared port) of each
    selector-backed Service it names (unresolved, ExternalName or selector-less: no pods to name).
    Depends only on the spec and the Services the route's fragment read, so it lives as long as that."""
    spec: GatewayRouteSpec = verdict.entry.model  # type: ignore[assignment]
    namespace = verdict.obj.namespace
    urls = [b.url for b in spec.backends if b.url is not None]
    if spec.auth and spec.auth.jwt and spec.auth.jwt.jwksUri:
        urls.append(spec.auth.jwt.jwksUri)
    services = []
    for backend in spec.backends:
        if backend.url is not None:
            continue
        service = run.inp.services.get((namespace, backend.service))
        if service is None or not service.selector:
            continue
        declared = next((p for p in service.ports if p.port == backend.port), None)
        if declared is not None:
            services.append(((namespace, backend.service), service, declared))
    return tuple(urls), tuple(services)


PROCESSOR = Processor(kind=KIND, output="routes", prepare=_claims, build=_route, serve=_serve)
