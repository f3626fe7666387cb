"""Token-bucket rate limiting in interchangeable stores: in memory (here), in Redis
(kubegate.dataplane.redis_limits) and owned by the --workers supervisor
(kubegate.dataplane.shared_limits).

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

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from kubegate.dataplane.redis_nodes import parse_redis_url

if TYPE_CHECKING:
    from kubegate.dataplane.metrics import Metrics

FailureMode = Literal["open", "closed", "local"]


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

    wire: object = None  # the Redis store's encoded KEYS/ARGV (see redis_limits._Packed)


@dataclass(slots=True)
class RateResult:  # not frozen: a frozen dataclass's __init__ is dearer, on every request
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

    def lines(self) -> bytes:
        """An admitting result's X-RateLimit-* as header lines, encoded in one step (:func:`limit_headers`
        reads them back): the lean front writes them as they are, instead of a dict's items one by one."""
        return LIMIT_LINES % (self.limit, self.remaining, self.reset_seconds)


# % (limit, remaining, reset seconds): an admitting result's lines, which the stores' admission paths
# (MemoryRateLimiter.lines_now, RedisRateLimiter.hit_then) encode without making a RateResult
LIMIT_LINES = b"X-RateLimit-Limit: %d\r\nX-RateLimit-Remaining: %d\r\nX-RateLimit-Reset: %d\r\n"
LIMIT_HEADER_NAMES = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")  # RateResult.lines()'s


def limit_headers(lines: bytes) -> dict[str, str]:
    """RateResult.lines() as a dict, for the answers that are not a relayed head (aiohttp's writer, refusals)."""
    out = {}
    for line in lines.split(b"\r\n")[:-1]:
        name, _, value = line.partition(b": ")
        out[name.decode("latin-1")] = value.decode("latin-1")
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
        self._buckets: dict[str, tuple[float, float, float]] = {}  # bucket -> (tokens, at, full again at)
        self._clock = clock
        self._sweep_every = sweep_every
        self._hits = 0

    async def hit(self, charges: Sequence[Charge], failure_mode: FailureMode = "open") -> RateResult:
        """Never suspends, so it is atomic under asyncio (see hit_now)."""
        return self.hit_now(charges)

    def hit_now(self, charges: Sequence[Charge]) -> RateResult:
        """hit() without a coroutine (admission and the --workers counter owner call this): every bucket
        refilled and checked in one pass, refill() and decide() inlined for the admitting case."""
        n = len(charges)
        if not n:
            return ALLOWED_EMPTY
        now = self._clock()
        buckets = self._buckets
        self._hits += 1
        if self._hits >= self._sweep_every:
            self._sweep(now)
        levels = []
        for c in charges:
            state = buckets.get(c.bucket)
            capacity = c.capacity
            if state is None:
                level = float(capacity)
            else:
                level = state[0] + (now - state[1]) * c.per_second if now > state[1] else state[0]
                if level > capacity:
                    level = float(capacity)
            levels.append(level)
        if n == 1:  # one bucket (the usual limit): no search for the binding one
            lowest = level
            if lowest < 1.0:
                return decide(levels, charges)
        else:
            lowest = min(levels)
            if lowest < 1.0:
                return decide(levels, charges)
            for each, level in zip(charges, levels):  # (the binding one is written again below: the same)
                left = level - 1.0
                buckets[each.bucket] = (left, now, now + (each.capacity - left) / each.per_second)
            c = charges[levels.index(lowest)]  # first on ties, as decide() and the Lua script
        left = lowest - 1.0
        full_in = (c.capacity - left) / c.per_second
        buckets[c.bucket] = (left, now, now + full_in)
        return RateResult(True, c.requests, int(left), math.ceil(full_in))

    def lines_now(self, charges: Sequence[Charge]) -> bytes | RateResult:
        """hit_now() as admission needs it: an admitting result as its X-RateLimit-* lines (what
        ``hit_now(charges).lines()`` gives, without the RateResult), any other result as the RateResult.
        One bucket (the usual limit) is decided here, more by hit_now()."""
        if len(charges) != 1:
            result = self.hit_now(charges)
            return result.lines() if result.allowed and result is not ALLOWED_EMPTY else result
        c = charges[0]
        now = self._clock()
        self._hits += 1
        if self._hits >= self._sweep_every:
            self._sweep(now)
        state = self._buckets.get(c.bucket)
        capacity = c.capacity
        if state is None:
            level = float(capacity)
        else:
            level = state[0] + (now - state[1]) * c.per_second if now > state[1] else state[0]
            if level > capacity:
                level = float(capacity)
        if level < 1.0:
            return decide([level], charges)
        left = level - 1.0
        full_in = (capacity - left) / c.per_second
        self._buckets[c.bucket] = (left, now, now + full_in)
        return LIMIT_LINES % (c.requests, int(left), math.ceil(full_in))

    def _sweep(self, now: float) -> None:
        """Drop the buckets that are full again: a missing bucket is a full one (bounded memory, exact)."""
        self._hits = 0
        stale = [k for k, (_, _, full_at) in self._buckets.items() if now >= full_at]
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


def check_redis_url(url: str) -> None:
    """Reject what redis-py would misread (a non-numeric database is silently db 0 there); see redis_nodes."""
    parse_redis_url(url)


def build_rate_limiter(redis_url: str | None, *, metrics: Metrics | None = None,
                       live_replicas: Callable[[], int] = lambda: 1) -> RateLimiter:
    """Redis when a URL is given (shared across replicas), otherwise in-memory."""
    if redis_url:
        from kubegate.dataplane.redis_limits import RedisRateLimiter  # imports this module

        return RedisRateLimiter(redis_url, metrics=metrics, live_replicas=live_replicas)
    return MemoryRateLimiter()
