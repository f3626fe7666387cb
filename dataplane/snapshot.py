"""Config snapshots: everything derived from one config, built once and swapped in as one reference.

A :class:`Snapshot` holds the router, admission (auth, IP filters, rate
limits), TLS contexts, compiled schemas and upstream plans of one config. A
request keeps the snapshot it started with; a bad config never replaces a
good one (:class:`ConfigRejected`). :class:`SnapshotBuilder` belongs to one
Gateway and keeps what outlives a snapshot: per-route metrics children and
circuit breakers, and the previous snapshot's route runtimes, which a new
snapshot reuses for every route whose compiled form did not change, and its
route table, which a new snapshot updates when only a few routes changed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kubegate.config import CompiledConfig, CompiledRoute, SecretBundle

from . import proxy
from .audit import AuditLog
from .bodies import SchemaCheck
from .circuit import Breakers
from .metrics import Metrics
from .router import RouteTable
from .tls import EMPTY_TLS, TlsSet, build_tls_set

T = TypeVar("T")
log = logging.getLogger("kubegate.dataplane")
API_KEY_HEADERS = frozenset({"x-api-key"})
# Served only by a route whose `methods` names them (API.md): TRACE reflects a request's
# credentials back (cross-site tracing), CONNECT would make the gateway an open tunnel.
GUARDED_METHODS = frozenset({"TRACE", "CONNECT"})
PAUSE_EVERY = 1000  # routes between two pause() calls of a build
UPDATE_AT_MOST = 100  # changed routes (or a tenth of them) up to which the route table is updated, not rebuilt


class ConfigRejected(Exception):
    """A config that cannot be served; the last good snapshot keeps serving."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RouteRuntime:
    """Per-route work done once per snapshot, not per request."""

    route: CompiledRoute
    id: str
    plan: proxy.UpstreamPlan
    schema: SchemaCheck | None
    max_body: int
    needs_admission: bool
    claim_headers: frozenset[str]  # lower-case headers never passed on from clients (claims, API keys)
    hide_api_key: bool  # drop `Authorization: ApiKey ...`: the gateway consumed that credential


@dataclass(frozen=True, slots=True)
class Snapshot:
    config: CompiledConfig
    hash: str
    table: RouteTable[RouteRuntime]
    admission: Any
    tls: TlsSet
    loaded_at: float
    guarded_methods: frozenset[str]  # TRACE / CONNECT where some route names them
    dropped: dict[str, str] = field(default_factory=dict)  # "Kind/ns/name" -> why it is not served


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def needs_admission(route: CompiledRoute) -> bool:
    return bool(route.auth or route.ip_allow or route.ip_deny or route.rate_limit)


_HEADER_SETS: dict[frozenset[str], frozenset[str]] = {}


def _shared(headers: frozenset[str]) -> frozenset[str]:
    """One object per distinct header set (a frozenset is 216 bytes; 10,000 routes have a handful)."""
    return _HEADER_SETS.setdefault(headers, headers) if len(_HEADER_SETS) < 4096 else headers


def _nothing() -> None:
    pass


def _paced(entries: list[tuple[Any, ...]], pause: Callable[[], None]) -> Iterator[tuple[Any, ...]]:
    for count, entry in enumerate(entries, 1):
        yield entry
        if count % PAUSE_EVERY == 0:
            pause()


def settle_heap() -> None:
    """Move the new snapshot out of the collector's sight (gc.freeze, O(1)), after a young collection.

    A snapshot is hundreds of thousands of long-lived objects; left in the
    collected generations they make every full collection walk them, several
    times a second under load. The old
    snapshot is freed by reference counting as soon as its last request ends:
    it holds no reference cycles (tests/dataplane/test_reload_off_loop.py
    proves it), so no full collection is needed: one on the event loop would
    make every request wait for it (bench/reload.py measures the stall).
    """
    gc.collect(1)
    gc.freeze()


# The interpreter's switch interval while a config decodes or builds in a worker thread. CPython hands
# the GIL to a waiting thread only after this long (default 5 ms): the event loop waits that long every
# time it wakes up (a request wakes it several times), so a busy builder thread makes each request wait
# several intervals. A tenth of the default bounds that wait at a small cost in switching.
BACKGROUND_SWITCH_INTERVAL = 0.0005
_background = [0, 0.005]  # builds running, the switch interval to restore


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """``asyncio.to_thread(fn, *args)`` with the switch interval lowered while any such call runs."""
    if _background[0] == 0:
        _background[1] = sys.getswitchinterval()
        sys.setswitchinterval(BACKGROUND_SWITCH_INTERVAL)
    _background[0] += 1
    try:
        return await asyncio.to_thread(fn, *args)
    finally:
        _background[0] -= 1
        if _background[0] == 0:
            sys.setswitchinterval(_background[1])


class SnapshotBuilder:
    """Builds one Gateway's snapshots (pure of event-loop state: it may run in a worker thread)."""

    def __init__(self, *, limiter: Any, metrics: Metrics, audit: AuditLog) -> None:
        self.limiter, self.metrics, self.audit = limiter, metrics, audit
        self.jwks: Any = None  # the Gateway's JWKS cache, set when it starts
        self._breakers = Breakers(metrics)
        self._runtimes: dict[int, RouteRuntime] = {}  # id(route) -> its runtime, of the last build
        # the last build's route table and its entries by id(runtime) (they keep the runtimes alive)
        self._table: tuple[RouteTable[RouteRuntime], dict[int, tuple[Any, ...]]] | None = None

    def build(self, config: CompiledConfig, secrets: SecretBundle, digest: str,
              pause: Callable[[], None] | None = None) -> Snapshot:
        """The snapshot of ``config``. An object that cannot be loaded (the translator refuses it first;
        this is defence in depth) is left out, never served half-secured, and named in ``dropped``.
        A route that is the very same object as in the previous build (sources/decode.py reuses the
        models of unchanged routes) keeps its runtime (schema, upstream plan). ``pause`` is called
        every PAUSE_EVERY routes (settle_heap in a worker thread)."""
        pause = pause or _nothing
        admission = self._admission(config, secrets)
        pause()
        dropped: dict[str, str] = dict(admission.dropped) if admission is not None else {}
        previous, runtimes = self._runtimes, {}
        entries = []
        for count, route in enumerate(config.routes, 1):
            ref = f"GatewayRoute/{route.id}"
            if ref in dropped:
                continue
            try:
                entry = self._route_entry(route, admission, previous.get(id(route)))
            except Exception as exc:  # noqa: BLE001 - jsonschema, yarl and friends raise many types
                dropped[ref] = one_line(exc)
                continue
            entries.append(entry)
            runtimes[id(route)] = entry[3]
            if count % PAUSE_EVERY == 0:
                pause()
        table = self._route_table(entries, pause)
        self._runtimes = runtimes
        tls = build_tls_set(config.tls, secrets, dropped) if config.tls else EMPTY_TLS
        for ref, reason in sorted(dropped.items()):
            log.warning("config %s: %s left out: %s", digest[:12], ref, reason)
        guarded = frozenset(m for route in config.routes if f"GatewayRoute/{route.id}" not in dropped
                            for m in route.methods if m in GUARDED_METHODS)
        return Snapshot(config, digest, table, admission, tls, time.time(), guarded, dropped)

    def _route_table(self, entries: list[tuple[Any, ...]], pause: Callable[[], None]) -> RouteTable[RouteRuntime]:
        """The previous build's table updated with the entries that changed (RouteTable.updated: only their
        paths are copied) when few did, else a full build."""
        by_runtime = {id(entry[3]): entry for entry in entries}
        table = None
        if self._table is not None:
            previous, previous_entries = self._table
            removed = [e for key, e in previous_entries.items() if key not in by_runtime]
            added = [e for key, e in by_runtime.items() if key not in previous_entries]
            if len(removed) + len(added) <= max(UPDATE_AT_MOST, len(entries) // 10):
                table = RouteTable.updated(previous, removed, added)
        if table is None:
            table = RouteTable(_paced(entries, pause))
        self._table = (table, by_runtime)
        return table

    def _route_entry(self, route: CompiledRoute, admission: Any, previous: RouteRuntime | None) -> tuple[Any, ...]:
        """One route's RouteTable entry; ValueError (or jsonschema's errors) when it cannot be served."""
        has_work = admission.has_work(route) if admission is not None else needs_admission(route)
        if has_work and admission is None:
            raise ValueError("auth, IP filter and rate limits are unavailable")
        if previous is not None and previous.route is route and previous.needs_admission == has_work:
            return (route.hosts, route.path, route.methods, previous)
        if route.request_schema is not None:
            try:
                schema = SchemaCheck(route.request_schema)
            except Exception as exc:  # noqa: BLE001
                raise ValueError(f"invalid requestSchema: {one_line(exc)}") from None
        else:
            schema = None
        claims = route.auth.jwt.forward_claims.values() if route.auth and route.auth.jwt else ()
        # API keys authenticate to the gateway, not to backends: like Kong's hide_credentials,
        # they never travel further (JWTs do: backends may verify them again).
        hide_api_key = bool(route.auth and "apiKey" in route.auth.methods)
        runtime = RouteRuntime(
            route=route, id=route.id, plan=proxy.UpstreamPlan.for_route(route, self._breakers), schema=schema,
            max_body=route.max_body_bytes, needs_admission=has_work,
            claim_headers=_shared(frozenset(h.lower() for h in claims) | (API_KEY_HEADERS if hide_api_key else set())),
            hide_api_key=hide_api_key,
        )
        return (route.hosts, route.path, route.methods, runtime)

    def _admission(self, config: CompiledConfig, secrets: SecretBundle) -> Any:
        try:
            from .admission import Admission
        except ImportError:  # security engineer's module not present in this checkout
            return None
        return Admission(config, secrets, limiter=self.limiter, jwks=self.jwks, metrics=self.metrics,
                         audit=self.audit)
