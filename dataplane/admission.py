"""Admission: the data plane's security decision for one request.

Built once per config snapshot (keys parsed, CIDR tables and the API-key
hash table compiled, one plan per route), then asked per request:
IP filter (403) -> authentication (401 invalid/missing, 403 not allowed)
-> rate limit (429; 503 when the shared store is down and failureMode is
closed). The result is a :class:`Decision`; the proxy turns a non-None
status into an error response and adds ``response_headers`` either way.
The request path asks :meth:`Admission.decide`, which returns the Decision
itself when nothing must be waited for and a coroutine only when something
must (a token not verified before, a shared rate-limit store).

Per request, the work is a few dict lookups: the IP filter remembers its
decision per client address, a bearer token seen before is a synchronous
cache hit (JwtVerifier.lookup), an admitted API key's caller is made once
per key (every check of the key still runs), and each route keeps the ChargeSet of every
client (user, key, header value) it has seen, so the limiter's encoding of
it is reused too (bounded: MAX_CHARGE_SETS over all routes).

Rate-limit buckets are keyed ``kg:{<route namespace>}:rl:<limit key>:<who>``.
The single hash tag per request (the route's namespace) puts every bucket
one request touches in the same Redis Cluster slot, so one script can check
and charge them atomically. Each bucket always gets the same tag (keys,
route policies and namespace policies never cross namespaces), so counts
are exact. Trade-offs: one namespace's limits live on one shard, and a
gateway-wide default policy counts per namespace rather than across all.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from kubegate.dataplane.api_key_auth import ApiKeyTable, KeyRecord, extract_api_key
from kubegate.dataplane.ipfilter import IpFilter, canonical_ip
from kubegate.dataplane.jwt_auth import JwtRejected, JwtVerifier, TokenCache
from kubegate.dataplane.mtls_auth import SubjectMatcher, client_identity
from kubegate.dataplane.ratelimit import (
    Charge,
    ChargeSet,
    MemoryRateLimiter,
    RateLimiter,
    RateResult,
    limit_headers,
)

from kubegate.config import CompiledConfig, CompiledLimit, CompiledRoute, SecretBundle

if TYPE_CHECKING:
    from kubegate.dataplane.audit import AuditLog
    from kubegate.dataplane.jwks import JwksCache
    from kubegate.dataplane.metrics import Metrics
    from multidict import CIMultiDictProxy

_MAX_DISCRIMINATOR = 64  # longer header values / subs are hashed into the key
MAX_CHARGE_SETS = 50_000  # remembered ChargeSets over all routes (~20 MiB); then the memory starts afresh


_NO_HEADERS: dict[str, str] = {}  # shared, never written to


class RequestFacts(NamedTuple):
    """A request as admission sees it. A NamedTuple, not a dataclass: the request path builds one per
    request with ``tuple.__new__`` (C), without a Python-level ``__init__`` (see Pipeline._facts)."""

    method: str
    path: str
    host: str
    client_ip: str
    headers: CIMultiDictProxy[str]
    peer_cert: dict | None  # ssl getpeercert() form; None without a verified client certificate
    tls: bool


class Decision(NamedTuple):
    """Admission's answer. A NamedTuple, not a dataclass: an admitting one is made per request with
    ``_new(Decision, (...))`` (C), without a Python-level ``__init__``; its dicts are read, never written."""

    status: int | None = None  # None = admitted
    reason: str = ""
    message: str = ""
    response_headers: dict[str, str] = _NO_HEADERS
    upstream_headers: dict[str, str] = _NO_HEADERS  # read-only: shared by a token's requests
    principal: str | None = None
    # An admitted request's X-RateLimit-* as encoded header lines (RateResult.lines()), not in
    # response_headers: the pipeline hands them to the answer as they are (messages.Relay.lines).
    limit_lines: bytes = b""

    def headers(self) -> dict[str, str]:
        """Every response header the decision adds (response_headers and limit_lines)."""
        if not self.limit_lines:
            return dict(self.response_headers)
        return {**self.response_headers, **limit_headers(self.limit_lines)}


_new = tuple.__new__  # _new(Decision, (status, reason, message, response_headers, upstream_headers, principal, lines))


@dataclass(slots=True, frozen=True)
class _LimitPlan:
    prefix: str  # "kg:{ns}:rl:<limit key>:"
    dimension: str
    header: str | None
    requests: int
    capacity: int
    per_second: float


@dataclass(slots=True, frozen=True)
class _RoutePlan:
    ip_filter: IpFilter | None
    auth_required: bool
    accepts_jwt: bool
    accepts_api_key: bool
    accepts_mtls: bool
    jwt: JwtVerifier | None
    mtls: SubjectMatcher | None
    challenge: str  # WWW-Authenticate value
    limits: tuple[_LimitPlan, ...]
    failure_mode: str
    tag: str  # "kg:{<namespace>}:rl:"
    has_auth: bool
    jwt_only: bool  # a bearer token is the only credential: a cached one needs no other check
    api_key_only: bool  # an API key is the only credential: checked synchronously (no JWT to await)
    ip_keyed: bool  # limits only per client address or global: the address alone picks the ChargeSet
    charge_sets: dict[object, ChargeSet] = field(default_factory=dict)  # who -> this route's charges


class _Authenticated:
    """Who a request is, as far as rate limits and the decision care (a JwtIdentity has the same
    attributes and stands for a token's caller as is)."""

    __slots__ = ("key", "principal", "sub", "upstream_headers")

    def __init__(self, principal: str | None = None, sub: str | None = None, key: KeyRecord | None = None,
                 upstream_headers: dict[str, str] | None = None) -> None:
        self.principal = principal
        self.sub = sub
        self.key = key
        self.upstream_headers = _NO_HEADERS if upstream_headers is None else upstream_headers


_ANONYMOUS = _Authenticated()


def _discriminator(value: str) -> str:
    if len(value) <= _MAX_DISCRIMINATOR and "{" not in value:
        return value
    return "#" + hashlib.sha256(value.encode()).hexdigest()[:32]


def _limit_plan(tag: str, limit: CompiledLimit) -> _LimitPlan:
    if limit.requests <= 0 or limit.period_seconds <= 0 or limit.burst <= 0:
        raise ValueError(f"rate limit {limit.key}: requests, period and burst must be positive")
    return _LimitPlan(
        prefix=f"{tag}{limit.key}:",
        dimension=limit.dimension,
        header=limit.header,
        requests=limit.requests,
        capacity=limit.burst,
        per_second=limit.requests / limit.period_seconds,
    )


class Admission:
    """Security decisions for one config snapshot; cheap to ask, built once."""

    def __init__(
        self,
        config: CompiledConfig,
        secrets: SecretBundle,
        *,
        limiter: RateLimiter,
        jwks: JwksCache,
        metrics: Metrics,
        audit: AuditLog,
    ) -> None:
        self._limiter = limiter
        # an in-memory store decides synchronously (no coroutine per request); any other is awaited,
        # Redis's through its own coroutine only (hit_then calls _settled in it)
        self._sync_store = type(limiter) is MemoryRateLimiter
        self._hit_then = getattr(limiter, "hit_then", None)
        self._metrics = metrics
        self._audit = audit
        self.token_cache = TokenCache()
        self._charge_sets = 0  # remembered over all routes (MAX_CHARGE_SETS)
        # Objects that cannot be used are left out, named with why (the translator refuses them first;
        # this is defence in depth): "Kind/namespace/name" -> reason.
        self.dropped: dict[str, str] = {}
        usable_keys = []
        for key in config.api_keys:
            try:
                if key.rate_limit is not None:
                    _limit_plan("", key.rate_limit)  # refuse an unusable per-key limit at load time
            except ValueError as exc:
                self.dropped[f"ApiKey/{key.namespace}/{key.name}"] = str(exc)
                continue
            usable_keys.append(key)
        self._keys = ApiKeyTable(tuple(usable_keys), secrets, self.dropped)
        self._key_limits: dict[str, tuple[str, _LimitPlan]] = {}  # key id -> (namespace, plan)
        self._key_callers: dict[int, _Authenticated] = {}  # id(KeyRecord) -> its caller (records live as long)
        verifiers: dict[str, JwtVerifier] = {}
        filters: dict[tuple[tuple[str, ...], tuple[str, ...]], IpFilter] = {}
        self._plans: dict[str, _RoutePlan] = {}
        for route in config.routes:
            try:
                plan = self._plan(route, secrets, jwks, verifiers, filters)
            except ValueError as exc:
                self.dropped[f"GatewayRoute/{route.id}"] = str(exc)
                continue
            if plan is not None:
                self._plans[route.id] = plan

    def _plan(
        self, route: CompiledRoute, secrets: SecretBundle, jwks: JwksCache, verifiers: dict[str, JwtVerifier],
        filters: dict[tuple[tuple[str, ...], tuple[str, ...]], IpFilter],
    ) -> _RoutePlan | None:
        auth = route.auth
        methods = set(auth.methods) if auth else set()
        verifier = None
        if "jwt" in methods:
            if auth.jwt is None:
                raise ValueError("auth method jwt without jwt settings")
            identity = auth.jwt.model_dump_json()
            verifier = verifiers.get(identity)
            if verifier is None:
                verifier = JwtVerifier(auth.jwt, secrets, jwks, self.token_cache, len(verifiers))
                verifiers[identity] = verifier
        ip_filter = None
        if route.ip_allow or route.ip_deny:  # routes with the same lists share one filter (and its memory)
            lists = (tuple(route.ip_allow), tuple(route.ip_deny))
            ip_filter = filters.get(lists)
            if ip_filter is None:
                ip_filter = filters[lists] = IpFilter(*lists)
        tag = f"kg:{{{route.namespace}}}:rl:"
        limits = tuple(_limit_plan(tag, lim) for lim in route.rate_limit.limits) if route.rate_limit else ()
        if not methods and ip_filter is None and not limits:
            return None
        challenges = []
        if "jwt" in methods:
            challenges.append('Bearer realm="kubegate"')
        if "apiKey" in methods:
            challenges.append('ApiKey realm="kubegate"')
        if "mtls" in methods and not challenges:
            challenges.append('Mutual realm="kubegate"')
        return _RoutePlan(
            ip_filter=ip_filter,
            auth_required=bool(auth and auth.required and methods),
            accepts_jwt="jwt" in methods,
            accepts_api_key="apiKey" in methods,
            accepts_mtls="mtls" in methods,
            jwt=verifier,
            mtls=SubjectMatcher(auth.mtls_subjects) if "mtls" in methods else None,
            challenge=", ".join(challenges),
            limits=limits,
            failure_mode=route.rate_limit.failure_mode if route.rate_limit else "open",
            tag=tag,
            has_auth=bool(methods),
            jwt_only=methods == {"jwt"},
            api_key_only=methods == {"apiKey"},
            ip_keyed=bool(limits) and all(lp.dimension in ("ip", "global") for lp in limits),
        )

    def has_work(self, route: CompiledRoute) -> bool:
        """False when the route has no auth, no IP filter and no rate limit: skip admit()."""
        return route.id in self._plans

    async def admit(self, route: CompiledRoute, facts: RequestFacts) -> Decision:
        """The decision for one request (see :meth:`decide`, which the request path calls)."""
        decision = self.decide(route, facts)
        return decision if type(decision) is Decision else await decision

    def decide(self, route: CompiledRoute, facts: RequestFacts) -> Decision | Coroutine[Any, Any, Decision]:
        """The decision, or a coroutine for it when something must be waited for (a token not verified
        before, a shared rate-limit store): the request path awaits only then.

        The hot path of every secured request: its common case (a remembered address, a cached bearer
        token, a remembered ChargeSet, an in-memory limit) is inlined and creates no coroutine, as each
        Python call costs about a microsecond on a busy gateway; everything else takes the general
        methods below."""
        plan = self._plans.get(route.id)
        if plan is None:
            return Decision()
        client_ip = facts.client_ip
        ip_filter = plan.ip_filter
        if ip_filter is not None and not (ip_filter.decisions.get(client_ip) or ip_filter.permits(client_ip)):
            self._metrics.ip_denied.labels(route.id).inc()
            self._audit.event("ip_denied", route=route.id, client_ip=client_ip, reason="ip_denied")
            return Decision(403, "ip_denied", "client address not allowed")
        who = _ANONYMOUS
        if plan.has_auth:
            known = None
            if plan.jwt_only:  # a bearer token verified before: a dict lookup
                authorization = facts.headers.get("Authorization")
                if authorization is not None and (authorization.startswith("Bearer ")  # the usual spelling
                                                  or authorization[:7].lower() == "bearer "):
                    try:
                        known = plan.jwt.lookup(authorization[7:].strip(), time.time())
                    except JwtRejected:
                        pass  # _authenticate refuses it, with its metric and audit line
            elif plan.api_key_only:  # a key that passes every check; anything else is refused below
                headers = facts.headers
                key = extract_api_key(headers.get("X-API-Key"), headers.get("Authorization"))
                if key is not None:
                    result = self._keys.check(key, route, facts.client_ip)
                    if result.ok:
                        known = self._key_caller(result.record)
            if known is None:
                return self._authenticated_admit(plan, route, facts)
            who = known
        if plan.ip_keyed and who.key is None:  # _limit's common case inlined: the address picks the ChargeSet
            charges = plan.charge_sets.get(client_ip)
            if charges is not None:
                if self._sync_store:
                    outcome = self._limiter.lines_now(charges)
                    if type(outcome) is bytes:  # admitted: its X-RateLimit-* lines
                        return _new(Decision, (None, "", "", _NO_HEADERS, who.upstream_headers, who.principal,
                                               outcome))
                    return self._limit_decision(outcome, route, facts, who)
                if self._hit_then is not None:
                    return self._hit_then(charges, plan.failure_mode, self._settled, route, facts, who)
        return self._limit(plan, route, facts, who)

    async def _authenticated_admit(self, plan: _RoutePlan, route: CompiledRoute, facts: RequestFacts) -> Decision:
        outcome = await self._authenticate(plan, route, facts)
        if type(outcome) is Decision:
            return outcome
        decision = self._limit(plan, route, facts, outcome)
        return decision if type(decision) is Decision else await decision

    def _limit(self, plan: _RoutePlan, route: CompiledRoute, facts: RequestFacts,
               who: _Authenticated) -> Decision | Coroutine[Any, Any, Decision]:
        """The rate-limit part of the decision for an authenticated (or anonymous) caller."""
        charges = None
        if plan.ip_keyed and who.key is None:
            charges = plan.charge_sets.get(facts.client_ip)
        if charges is None:
            charges = self._charge_set(plan, facts, who)
            if charges is None:
                return Decision(None, "", "", {}, who.upstream_headers, who.principal)
        if self._sync_store:
            outcome = self._limiter.lines_now(charges)
            if type(outcome) is bytes:  # admitted: its X-RateLimit-* lines
                return _new(Decision, (None, "", "", _NO_HEADERS, who.upstream_headers, who.principal, outcome))
            return self._limit_decision(outcome, route, facts, who)
        if self._hit_then is not None:
            return self._hit_then(charges, plan.failure_mode, self._settled, route, facts, who)
        return self._limited(plan, route, facts, who, charges)

    def _settled(self, outcome: bytes | RateResult, route: CompiledRoute, facts: RequestFacts,
                 who: _Authenticated) -> Decision:
        """The decision for a store's outcome (RedisRateLimiter.hit_then): admitting lines or a RateResult."""
        if type(outcome) is bytes:
            return _new(Decision, (None, "", "", _NO_HEADERS, who.upstream_headers, who.principal, outcome))
        return self._limit_decision(outcome, route, facts, who)

    async def _limited(self, plan: _RoutePlan, route: CompiledRoute, facts: RequestFacts, who: _Authenticated,
                       charges: ChargeSet) -> Decision:
        return self._limit_decision(await self._limiter.hit(charges, plan.failure_mode), route, facts, who)

    def _limit_decision(self, result: RateResult, route: CompiledRoute, facts: RequestFacts,
                        who: _Authenticated) -> Decision:
        if result.allowed:
            if result.store_unavailable:  # failure mode open: no X-RateLimit-* to say
                return Decision(None, "", "", {}, who.upstream_headers, who.principal)
            return Decision(None, "", "", _NO_HEADERS, who.upstream_headers, who.principal, result.lines())
        if result.store_unavailable:
            return Decision(503, "ratelimit_unavailable", "rate limit store unavailable", result.headers(),
                            who.upstream_headers, who.principal)
        dimension = result.denied_dimension or "global"
        self._metrics.rate_limited.labels(route.id, dimension).inc()
        self._audit.event(
            "rate_limited", route=route.id, client_ip=facts.client_ip, reason="rate_limited",
            dimension=dimension, principal=who.principal,
        )
        return Decision(429, "rate_limited", "rate limit exceeded", result.headers(), {}, who.principal)

    # --- authentication -------------------------------------------------------

    async def _authenticate(self, plan: _RoutePlan, route: CompiledRoute, facts: RequestFacts):
        """An _Authenticated (possibly anonymous) or a refusing Decision."""
        headers = facts.headers
        authorization = headers.get("Authorization")
        invalid: tuple[str, str] | None = None  # (reason, message) of a 401
        forbidden: tuple[str, str, str | None] | None = None  # (reason, message, principal) of a 403
        unavailable: tuple[str, str] | None = None
        presented = False

        if plan.accepts_mtls:
            identity = client_identity(facts.peer_cert)
            if identity is not None:
                presented = True
                if plan.mtls.allows(identity):
                    return _Authenticated(principal=f"mtls:{identity.label}")
                forbidden = ("forbidden_subject", "client certificate subject not allowed",
                             f"mtls:{identity.label}")

        if plan.accepts_api_key:
            key = extract_api_key(headers.get("X-API-Key"), authorization)
            if key is not None:
                presented = True
                result = self._keys.check(key, route, facts.client_ip)
                if result.ok:
                    return self._key_caller(result.record)
                if result.status == 403:
                    forbidden = (result.reason, "API key not allowed here", f"apikey:{result.record.id}")
                else:
                    invalid = (result.reason, "invalid API key")

        if plan.accepts_jwt and authorization and authorization[:7].lower() == "bearer ":
            presented = True
            token, now = authorization[7:].strip(), time.time()
            try:
                identity = plan.jwt.lookup(token, now) or await plan.jwt.verify(token, now)
            except JwtRejected as exc:
                if exc.status == 403:
                    forbidden = (exc.reason, exc.message, None)
                elif exc.status == 503:
                    unavailable = (exc.reason, exc.message)
                else:
                    invalid = (exc.reason, exc.message)
            else:
                return identity

        if invalid is not None:
            return self._refuse(route, facts, 401, *invalid, plan=plan)
        if unavailable is not None:
            return self._refuse(route, facts, 503, *unavailable)
        if forbidden is not None:
            reason, message, principal = forbidden
            return self._refuse(route, facts, 403, reason, message, principal=principal)
        if not presented and plan.auth_required:
            return self._refuse(route, facts, 401, "missing_credentials", "credentials required", plan=plan)
        return _ANONYMOUS

    def _key_caller(self, record: KeyRecord) -> _Authenticated:
        """The caller an admitted key stands for, made once per key of this snapshot."""
        cached = self._key_callers.get(id(record))
        if cached is None or cached.key is not record:
            cached = self._key_callers[id(record)] = _Authenticated(principal=f"apikey:{record.id}", key=record)
        return cached

    def _refuse(self, route: CompiledRoute, facts: RequestFacts, status: int, reason: str, message: str, *,
                plan: _RoutePlan | None = None, principal: str | None = None) -> Decision:
        self._metrics.auth_failures.labels(route.id, facts.method, reason).inc()
        event = "forbidden" if status == 403 else "auth_failure"
        fields: dict[str, Any] = {"route": route.id, "client_ip": facts.client_ip, "reason": reason}
        if principal is not None:
            fields["principal"] = principal
            if principal.startswith("apikey:"):
                fields["key_id"] = principal[7:]
        self._audit.event(event, **fields)
        headers = {}
        if status == 401 and plan is not None and plan.challenge:
            challenge = plan.challenge
            if reason != "missing_credentials" and plan.accepts_jwt:
                challenge = challenge.replace('Bearer realm="kubegate"',
                                              'Bearer realm="kubegate", error="invalid_token"', 1)
            headers["WWW-Authenticate"] = challenge
        return Decision(status, reason, message, response_headers=headers, principal=principal)

    # --- rate limiting ----------------------------------------------------------

    def _charge_set(self, plan: _RoutePlan, facts: RequestFacts, who: _Authenticated) -> ChargeSet | None:
        """The buckets this request draws from (None: no limit applies), remembered per route and who."""
        key = who.key
        key_limited = key is not None and key.rate_limit is not None
        if plan.ip_keyed:  # the address alone picks the plan's buckets; a key adds its own bucket
            memo = (facts.client_ip, key.id) if key_limited else facts.client_ip
        elif plan.limits or key_limited:
            memo = (tuple([self._who(lp, facts, who) for lp in plan.limits]), key.id if key_limited else None)
        else:
            return None
        charges = plan.charge_sets.get(memo)
        if charges is None:
            charges = self._charges(plan, facts, who)
            if self._charge_sets >= MAX_CHARGE_SETS:
                for each in self._plans.values():
                    each.charge_sets.clear()
                self._charge_sets = 0
            plan.charge_sets[memo] = charges
            self._charge_sets += 1
        return charges

    def _charges(self, plan: _RoutePlan, facts: RequestFacts, who: _Authenticated) -> ChargeSet:
        charges = [
            Charge(lp.prefix + self._who(lp, facts, who), lp.requests, lp.capacity, lp.per_second, lp.dimension)
            for lp in plan.limits
        ]
        key = who.key
        if key is not None and key.rate_limit is not None:
            lp = self._key_limit(plan.tag, key)
            charges.append(Charge(lp.prefix + key.id, lp.requests, lp.capacity, lp.per_second, "apiKey"))
        return ChargeSet(charges)

    def _key_limit(self, tag: str, key: KeyRecord) -> _LimitPlan:
        cached = self._key_limits.get(key.id)
        if cached is None or cached[0] != tag:
            cached = (tag, _limit_plan(tag, key.rate_limit))
            self._key_limits[key.id] = cached
        return cached[1]

    @staticmethod
    def _who(lp: _LimitPlan, facts: RequestFacts, who: _Authenticated) -> str:
        dimension = lp.dimension
        if dimension == "global":
            return "*"
        if dimension == "user" and who.sub is not None:
            return "u=" + _discriminator(who.sub)
        if dimension == "apiKey" and who.key is not None:
            return "k=" + who.key.id
        if dimension == "header":
            value = facts.headers.get(lp.header or "")
            return "-" if value is None else "h=" + _discriminator(value)
        return "ip=" + (canonical_ip(facts.client_ip) or _discriminator(facts.client_ip))

