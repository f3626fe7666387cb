"""Token-bucket rate limiting in two interchangeable stores: in-memory and Redis.

A request's limits (route policy limits plus the per-key limit) are passed as
one list of :class:`Charge` and decided all-or-nothing: every bucket is
checked first and charged only if all pass, so a request refused by one
limit never consumes another. Redis does this in one Lua script (one round
trip, server time, and one script call for a whole batch of requests); the
in-memory store does the same in one synchronous step (atomic under asyncio).

Bucket semantics (both stores): capacity = burst, refill = requests/period
tokens per second, one token per request. Results carry what the response
headers need: the binding limit, the remaining tokens, seconds until the
bucket is full again, and on refusal seconds until a retry can pass.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from kubegate.dataplane.redis_nodes import RedisNode, RedisNodes, parse_redis_url
from redis.asyncio.connection import Connection
from redis.exceptions import AskError, MovedError, NoScriptError, ResponseError

if TYPE_CHECKING:
    from kubegate.dataplane.metrics import Metrics

FailureMode = Literal["open", "closed", "local"]
log = logging.getLogger("kubegate.ratelimit")


@dataclass(slots=True, frozen=True)
class Charge:
    """One bucket a request must draw a token from."""

    bucket: str  # full store key, e.g. "kg:{shop}:rl:shop/p#0:ip=10.0.0.1"
    requests: int  # advertised in X-RateLimit-Limit
    capacity: int  # burst
    per_second: float  # refill rate = requests / period
    dimension: str = "global"  # metric label of a refusal


class ChargeSet(tuple):
    """The charges of one kind of request (the same buckets every time), as a tuple of Charge.

    Admission builds one per route and client (or user, key, ...) and reuses
    it, so a store can keep its encoding of the request on it (``wire``)
    instead of encoding the same buckets again for every request.
    """

    wire: object = None  # the Redis store's encoded KEYS/ARGV (see RedisRateLimiter)


@dataclass(slots=True)
class RateResult:  # not frozen: a frozen dataclass's __init__ costs ~1.3 us more, on every request
    allowed: bool
    limit: int = 0  # requests of the binding limit
    remaining: int = 0  # min remaining tokens over all buckets
    reset_seconds: int = 0  # until the binding bucket is full again
    retry_after: int = 0  # on refusal: seconds until a retry can pass (>= 1)
    denied_dimension: str | None = None
    store_unavailable: bool = False  # the shared store failed; failure mode applied

    def headers(self) -> dict[str, str]:
        """X-RateLimit-* (and Retry-After on refusal); empty when the store was unavailable."""
        if self.store_unavailable:
            return {}
        out = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_seconds),
        }
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after)
        return out


ALLOWED_EMPTY = RateResult(allowed=True)  # shared: never modified


class RateLimiter(Protocol):
    async def hit(self, charges: Sequence[Charge], failure_mode: FailureMode) -> RateResult: ...

    async def close(self) -> None: ...


# --- pure token-bucket arithmetic ------------------------------------------------


def refill(tokens: float, last: float, now: float, charge: Charge) -> float:
    """Tokens in a bucket at ``now`` (seconds), never above capacity."""
    return min(float(charge.capacity), tokens + max(0.0, now - last) * charge.per_second)


def decide(levels: Sequence[float], charges: Sequence[Charge]) -> RateResult:
    """All-or-nothing decision over refilled bucket levels (one token per bucket)."""
    if len(levels) == 1 and levels[0] >= 1.0:  # the common case, without the generic bookkeeping
        c, left = charges[0], levels[0] - 1.0
        return RateResult(True, c.requests, int(left), math.ceil((c.capacity - left) / c.per_second))
    denied = [i for i, level in enumerate(levels) if level < 1.0]
    if denied:
        waits = [(1.0 - levels[i]) / charges[i].per_second for i in denied]
        worst = max(range(len(denied)), key=lambda j: waits[j])
        i = denied[worst]
        c = charges[i]
        return RateResult(
            allowed=False,
            limit=c.requests,
            remaining=0,
            reset_seconds=math.ceil((c.capacity - levels[i]) / c.per_second),
            retry_after=max(1, math.ceil(waits[worst])),
            denied_dimension=c.dimension,
        )
    after = [level - 1.0 for level in levels]
    i = min(range(len(after)), key=after.__getitem__)  # first on ties, as the Lua script
    c = charges[i]
    return RateResult(
        allowed=True,
        limit=c.requests,
        remaining=int(after[i]),
        reset_seconds=math.ceil((c.capacity - after[i]) / c.per_second),
    )


# --- in-memory store ---------------------------------------------------------------


class MemoryRateLimiter:
    """Buckets in a dict (local mode, `kubegate run` without --redis-url)."""

    def __init__(self, *, clock=time.monotonic, sweep_every: int = 10_000) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # bucket -> (tokens, at)
        self._clock = clock
        self._sweep_every = sweep_every
        self._hits = 0

    async def hit(self, charges: Sequence[Charge], failure_mode: FailureMode = "open") -> RateResult:
        """Never suspends, so it is atomic under asyncio. One limit (the common case) is decided
        right here, refill() and decide() inlined; anything else by hit_now."""
        if len(charges) != 1:
            return self.hit_now(charges)
        c = charges[0]
        now = self._clock()
        buckets = self._buckets
        state = buckets.get(c.bucket)
        capacity = c.capacity
        if state is None:
            level = float(capacity)
        else:
            level = state[0] + (now - state[1]) * c.per_second if now > state[1] else state[0]
            if level > capacity:
                level = float(capacity)
        self._hits += 1
        if self._hits >= self._sweep_every:
            self._sweep(now, charges)
        if level < 1.0:
            return decide((level,), charges)
        left = level - 1.0
        buckets[c.bucket] = (left, now)
        return RateResult(True, c.requests, int(left), math.ceil((capacity - left) / c.per_second))

    def hit_now(self, charges: Sequence[Charge]) -> RateResult:
        if not charges:
            return ALLOWED_EMPTY
        now = self._clock()
        buckets = self._buckets
        levels = []
        for c in charges:
            state = buckets.get(c.bucket)
            levels.append(float(c.capacity) if state is None else refill(state[0], state[1], now, c))
        result = decide(levels, charges)
        if result.allowed:
            for c, level in zip(charges, levels):
                buckets[c.bucket] = (level - 1.0, now)
        self._hits += 1
        if self._hits >= self._sweep_every:
            self._sweep(now, charges)
        return result

    def _sweep(self, now: float, recent: Sequence[Charge]) -> None:
        """Drop buckets idle for long enough that they would be full (bounded memory)."""
        self._hits = 0
        horizon = max((c.capacity / c.per_second for c in recent), default=60.0)
        stale = [k for k, (_, at) in self._buckets.items() if now - at > max(horizon, 3600.0)]
        for k in stale:
            del self._buckets[k]

    async def close(self) -> None:
        self._buckets.clear()


def local_share(charges: Sequence[Charge], replicas: int) -> tuple[Charge, ...]:
    """One replica's part of each limit when ``replicas`` share it without the store (pure): requests and
    burst divided and rounded down (at least 1, so a limit never closes a route), refill divided."""
    n = max(1, replicas)
    return tuple(Charge(c.bucket, max(1, c.requests // n), max(1, c.capacity // n), c.per_second / n, c.dimension)
                 for c in charges)


# --- Redis store -------------------------------------------------------------------

LUA_SOURCE = (Path(__file__).with_name("ratelimit.lua")).read_text()


class CircuitBreaker:
    """After ``threshold`` consecutive failures, skip the store for ``cooldown`` seconds;
    then let one probe through (half-open) and close again on its success."""

    def __init__(self, threshold: int = 3, cooldown: float = 2.0, clock=time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._failures >= self.threshold

    def allow(self) -> bool:
        """May this call use the store?"""
        if self._failures < self.threshold:
            return True
        if self._probing or self._clock() < self._open_until:
            return False
        self._probing = True  # half-open: exactly one probe at a time
        return True

    def success(self) -> None:
        self._failures = 0
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        self._probing = False
        if self._failures >= self.threshold:
            self._open_until = self._clock() + self.cooldown


class Deadline:
    """Calls ``on_expire`` once the event loop has been responsive for ``timeout`` seconds.

    A plain timer (asyncio.timeout, redis-py's socket timeout) also fires when
    the loop itself was blocked while Redis answered in time: the reply is
    read, but the waiting task only resumes some turns after the timer has
    cancelled it. So time is counted in ticks of ``timeout / 4``, and a tick
    that fires late (the loop was busy) counts for nothing; ``hard_limit`` (10
    x timeout, at least 1 s) still decides a hung Redis on a loop that is
    never on time. In the common case one timer is armed and cancelled.
    """

    def __init__(self, timeout: float, on_expire: Callable[[], object], *,
                 hard_limit: float | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._tick = timeout / 4
        self._needed = timeout
        self._counted = 0.0
        self._give_up_at = self._loop.time() + (hard_limit if hard_limit is not None else max(1.0, 10 * timeout))
        self._on_expire = on_expire
        self.expired = False
        self._armed_at = self._loop.time()
        self._handle = self._loop.call_at(self._armed_at + self._tick, self._on_tick)

    def _on_tick(self) -> None:
        now = self._loop.time()
        if now - self._armed_at <= 2 * self._tick:  # on time: the loop could have read a reply
            self._counted += self._tick
        if self._counted >= self._needed - 1e-9 or now >= self._give_up_at:
            self.expired = True
            self._on_expire()
            return
        self._armed_at = now
        self._handle = self._loop.call_at(now + self._tick, self._on_tick)

    def cancel(self) -> None:
        self._handle.cancel()


class _Wire:
    """One request's part of a script call, RESP-encoded once per ChargeSet."""

    __slots__ = ("args", "argv", "group", "keys", "nkeys")

    def __init__(self, charges: Sequence[Charge], ttl_args: Callable[[Charge], tuple[bytes, bytes, bytes]]) -> None:
        first = charges[0].bucket
        start = first.find("{")
        end = first.find("}", start + 1)
        # Requests are combined into one call only when their keys hash to the same cluster slot.
        self.group = first[start + 1:end] if start >= 0 and end > start + 1 else first
        self.nkeys = len(charges)
        self.keys = b"".join(_bulk(c.bucket.encode()) for c in charges)
        self.argv = _bulk(str(len(charges)).encode()) + b"".join(
            _bulk(arg) for c in charges for arg in ttl_args(c))
        self.args = 1 + 3 * len(charges)


def _bulk(data: bytes) -> bytes:
    """One RESP bulk string. Requests are encoded here, once per ChargeSet, not by redis-py per call:
    its pack_command cost about 5 us per request, more than everything else a cached request costs."""
    return b"$%d\r\n%s\r\n" % (len(data), data)


class RedisRateLimiter:
    """Buckets in Redis (redis.asyncio), shared by every data-plane replica.

    Auto-pipelined: requests made while no batch is in flight go out together
    on the next loop turn, requests made while one is in flight go out
    together as soon as it returns; and a batch is ONE script call per
    cluster slot (usually one per batch), which decides its requests one
    after another, each all-or-nothing (see ratelimit.lua). So one round trip
    and one script call carry every request of a busy moment: Redis's
    per-command cost and redis-py's per-reply cost are paid once per batch.
    A request's part of the call is encoded once per ChargeSet and cached on
    it. The batches use one connection from the client's pool through
    redis-py's Connection API (send_packed_command, read_response, hiredis
    parser when installed): its Pipeline class would add a task and two loop
    turns per batch (and, given a Script, a SCRIPT EXISTS round trip). On
    NOSCRIPT (a restarted or flushed Redis) the refused calls are repeated
    once as EVAL, which caches the script again. Keys carry one hash tag per
    request (see kubegate.dataplane.admission), so the script works on Redis
    Cluster.

    Failures are decided within ``timeout`` seconds (see :class:`Deadline`)
    and trip a breaker, so a dead Redis costs nothing per request while it
    stays dead; redis-py's own retries are off, the breaker decides. A bucket
    Redis cannot use (a foreign key of another type) fails only the requests
    that charge it.

    With failure mode ``local``, a request the store cannot decide is decided
    in memory against its share of each limit: requests, burst and refill
    divided by ``live_replicas()`` (the data-plane replicas alive now, from
    their heartbeat Leases; 1 for ``kubegate run``), so the replicas together
    admit at most what the shared limit would while Redis is away.
    """

    MAX_REQUESTS_PER_CALL = 256  # bounds how long one script call holds Redis

    def __init__(
        self,
        url: str,
        *,
        metrics: Metrics | None = None,
        timeout: float = 0.1,
        breaker: CircuitBreaker | None = None,
        live_replicas: Callable[[], int] = lambda: 1,
    ) -> None:
        self.live_replicas = live_replicas
        self._local = MemoryRateLimiter()  # failure mode "local": this replica's share while Redis is away
        self._timeout = timeout
        self._metrics = metrics
        self.breaker = breaker or CircuitBreaker()
        self._nodes = RedisNodes(url, timeout=timeout)
        sha = hashlib.sha1(LUA_SOURCE.encode()).hexdigest().encode()
        self._evalsha = _bulk(b"EVALSHA") + _bulk(sha)
        self._eval = _bulk(b"EVAL") + _bulk(LUA_SOURCE.encode())
        self._queue: list[tuple[ChargeSet, asyncio.Future]] = []
        self._sender: asyncio.Task | None = None
        self._args_cache: dict[tuple[int, float], tuple[bytes, bytes, bytes]] = {}
        self.calls = 0  # requests that went to Redis (tests prove the breaker skips it)
        self.round_trips = 0  # batches sent (calls / round_trips = requests per round trip)

    async def hit(self, charges: Sequence[Charge], failure_mode: FailureMode = "open") -> RateResult:
        if not charges:
            return ALLOWED_EMPTY
        breaker = self.breaker
        if breaker._failures and not breaker.allow():  # no failures: allow() is True, skip the call
            return self._unavailable(failure_mode, charges)
        self.calls += 1
        if type(charges) is not ChargeSet:
            charges = ChargeSet(charges)
        if charges.wire is None:
            charges.wire = _Wire(charges, self._ttl_args)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((charges, future))
        if self._sender is None:
            self._sender = loop.create_task(self._send_batches())
        try:
            result = _result_from_reply(await future, charges)
        except Exception as exc:  # noqa: BLE001 - any store failure applies the failure mode, never a 500
            self._failed(exc)
            return self._unavailable(failure_mode, charges)
        if breaker._failures or breaker._probing:
            breaker.success()
        return result

    def _ttl_args(self, c: Charge) -> tuple[bytes, bytes, bytes]:
        """capacity, refill per second, TTL ms of one bucket (see ratelimit.lua)."""
        cache = self._args_cache
        args = cache.get((c.capacity, c.per_second))
        if args is None:
            ttl_ms = math.ceil(c.capacity / c.per_second * 1000) + 1000
            args = (str(c.capacity).encode(), repr(c.per_second).encode(), str(ttl_ms).encode())
            if len(cache) < 4096:
                cache[(c.capacity, c.per_second)] = args
        return args

    async def _send_batches(self) -> None:
        """One batch in flight at a time, until nothing is queued."""
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._send(batch)
        finally:
            self._sender = None

    async def _send(self, batch: list[tuple[ChargeSet, asyncio.Future]]) -> None:
        """Settle a batch's futures with their replies, or all with the store failure."""
        task = asyncio.current_task()
        assert task is not None
        deadline = Deadline(self._timeout, task.cancel)
        self.round_trips += 1
        try:
            replies = await self._round_trip([charges.wire for charges, _ in batch])
        except asyncio.CancelledError:
            if not deadline.expired:  # close()
                _settle(batch, error=ConnectionError("rate limiter closed"))
                raise
            task.uncancel()
            # whoever queued meanwhile would only wait on the same hung server
            batch, self._queue = batch + self._queue, []
            error: Exception = TimeoutError("redis did not answer in time")
        except Exception as exc:  # noqa: BLE001 - every waiter sees the store failure
            error = exc
        else:
            _settle(batch, replies=replies)
            return
        finally:
            deadline.cancel()
        await self._nodes.disconnect()  # never reuse a stream with replies unread
        self._nodes.forget_slots()  # a cluster node may have failed over
        _settle(batch, error=error)

    def _calls(self, wires: list[_Wire]) -> list[tuple[list[int], int, bytes]]:
        """The script calls of a batch: (indexes of its requests, argument count, the arguments after
        the command and script); one per slot group, at most MAX_REQUESTS_PER_CALL requests each."""
        groups: dict[str, list[int]] = {}
        for i, wire in enumerate(wires):
            groups.setdefault(wire.group, []).append(i)
        calls = []
        step = self.MAX_REQUESTS_PER_CALL
        for indexes in groups.values():
            for start in range(0, len(indexes), step):
                part = indexes[start:start + step]
                parts = [wires[i] for i in part]
                nkeys = sum(w.nkeys for w in parts)
                argc = 3 + nkeys + 1 + sum(w.args for w in parts)  # command, script, numkeys, keys, count, args
                body = b"".join((_bulk(b"%d" % nkeys), *(w.keys for w in parts),
                                 _bulk(b"%d" % len(parts)), *(w.argv for w in parts)))
                calls.append((part, argc, body))
        return calls

    async def _round_trip(self, wires: list[_Wire]) -> list[object]:
        """One reply per request (its five integers, or the error that failed it): the script calls of
        each node in one write, the nodes in parallel; calls a cluster node refuses with MOVED/ASK (slots
        moved) go again, once, after the slot map is read again."""
        calls = self._calls(wires)
        replies: list[object] = [None] * len(calls)
        pending = list(range(len(calls)))
        for _attempt in range(2):
            by_node: dict[RedisNode, list[int]] = {}
            for i in pending:
                by_node.setdefault(await self._nodes.node_for(wires[calls[i][0][0]].group), []).append(i)
            if len(by_node) == 1:  # the common case: no task per node
                ((node, indexes),) = by_node.items()
                answered = [await self._node_round_trip(node, [calls[i] for i in indexes])]
            else:
                answered = await asyncio.gather(*(self._node_round_trip(node, [calls[i] for i in indexes])
                                                  for node, indexes in by_node.items()))
            for indexes, node_replies in zip(by_node.values(), answered):
                for i, reply in zip(indexes, node_replies):
                    replies[i] = reply
            pending = [i for i in pending if isinstance(replies[i], (MovedError, AskError))]
            if not pending:
                break
            self._nodes.cluster = True  # a plain URL naming one cluster node works too: its slot map decides
            self._nodes.forget_slots()
        out: list[object] = [None] * len(wires)
        for (indexes, _, _), reply in zip(calls, replies):
            if isinstance(reply, BaseException):
                for i in indexes:
                    out[i] = reply
                continue
            for n, i in enumerate(indexes):
                part = reply[5 * n:5 * n + 5]
                out[i] = part if part[0] >= 0 else ResponseError("rate-limit bucket unusable (wrong type?)")
        return out

    async def _node_round_trip(self, node: RedisNode, calls: list[tuple[list[int], int, bytes]]) -> list[object]:
        """EVALSHA calls in one write to one node; calls refused with NOSCRIPT (a restarted, flushed or
        new node: each caches scripts of its own) go again as EVAL, which caches the script there."""
        conn = await node.connection()
        await conn.send_packed_command(self._packed(calls, self._evalsha), False)
        replies = [await _read_reply(conn) for _ in calls]
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            await conn.send_packed_command(self._packed([calls[i] for i in missing], self._eval), False)
            for i in missing:
                replies[i] = await _read_reply(conn)
        return replies

    @staticmethod
    def _packed(calls: list[tuple[list[int], int, bytes]], command: bytes) -> bytes:
        """``command`` is the encoded EVALSHA + sha or EVAL + source."""
        return b"".join(b"*%d\r\n%s%s" % (argc, command, body) for _, argc, body in calls)

    def _failed(self, exc: Exception) -> None:
        self.breaker.failure()
        log.warning("rate-limit store unavailable: %s: %s", type(exc).__name__, str(exc)[:200])

    def _unavailable(self, failure_mode: FailureMode, charges: Sequence[Charge]) -> RateResult:
        if self._metrics is not None:
            self._metrics.ratelimit_store_errors.labels(failure_mode).inc()
        if failure_mode == "local":
            return self._local.hit_now(local_share(charges, self.live_replicas()))
        return RateResult(allowed=failure_mode == "open", store_unavailable=True)

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
        _settle(self._queue, error=ConnectionError("rate limiter closed"))
        self._queue = []
        await self._nodes.close()


async def _read_reply(conn: Connection) -> object:
    """The next reply; an error reply is returned, not raised, so the stream stays in step."""
    try:
        return await conn.read_response()
    except ResponseError as exc:
        return exc


def _settle(batch: list[tuple[object, asyncio.Future]], *, replies: list[object] | None = None,
            error: BaseException | None = None) -> None:
    """Resolve each waiter with its reply (an error reply is raised to its caller) or ``error``."""
    for i, (_, future) in enumerate(batch):
        if future.done():  # the caller went away
            continue
        outcome = error if replies is None else replies[i]
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def check_redis_url(url: str) -> None:
    """Reject what redis-py would misread (a non-numeric database is silently db 0 there); see redis_nodes."""
    parse_redis_url(url)


def _result_from_reply(reply: Sequence[int], charges: Sequence[Charge]) -> RateResult:
    """Decode one request's part of the script's reply: allowed, index (1-based), remaining, reset_ms,
    retry_ms (integers already: Redis converts Lua numbers to integer replies)."""
    allowed, index, remaining, reset_ms, retry_ms = reply
    c = charges[index - 1]
    if allowed:
        return RateResult(True, c.requests, max(0, remaining), -(-reset_ms // 1000))
    return RateResult(False, c.requests, 0, -(-reset_ms // 1000), max(1, -(-retry_ms // 1000)), c.dimension)


def build_rate_limiter(redis_url: str | None, *, metrics: Metrics | None = None,
                       live_replicas: Callable[[], int] = lambda: 1) -> RateLimiter:
    """Redis when a URL is given (shared across replicas), otherwise in-memory."""
    if redis_url:
        return RedisRateLimiter(redis_url, metrics=metrics, live_replicas=live_replicas)
    return MemoryRateLimiter()
