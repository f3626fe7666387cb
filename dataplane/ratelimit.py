"""Token-bucket rate limiting in two interchangeable stores: in-memory and Redis.

A request's limits (route policy limits plus the per-key limit) are passed as
one list of :class:`Charge` and decided all-or-nothing: every bucket is
checked first and charged only if all pass, so a request refused by one
limit never consumes another. Redis does this in one Lua script (one round
trip, server time); the in-memory store does the same in one synchronous
step (atomic under asyncio).

Bucket semantics (both stores): capacity = burst, refill = requests/period
tokens per second, one token per request. Results carry what the response
headers need: the binding limit, the remaining tokens, seconds until the
bucket is full again, and on refusal seconds until a retry can pass.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from kubegate.dataplane.metrics import Metrics

FailureMode = Literal["open", "closed"]
log = logging.getLogger("kubegate.ratelimit")


@dataclass(slots=True, frozen=True)
class Charge:
    """One bucket a request must draw a token from."""

    bucket: str  # full store key, e.g. "kg:{shop}:rl:shop/p#0:ip=10.0.0.1"
    requests: int  # advertised in X-RateLimit-Limit
    capacity: int  # burst
    per_second: float  # refill rate = requests / period
    dimension: str = "global"  # metric label of a refusal


@dataclass(slots=True, frozen=True)
class RateResult:
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


ALLOWED_EMPTY = RateResult(allowed=True)


class RateLimiter(Protocol):
    async def hit(self, charges: Sequence[Charge], failure_mode: FailureMode) -> RateResult: ...

    async def close(self) -> None: ...


# --- pure token-bucket arithmetic ------------------------------------------------


def refill(tokens: float, last: float, now: float, charge: Charge) -> float:
    """Tokens in a bucket at ``now`` (seconds), never above capacity."""
    return min(float(charge.capacity), tokens + max(0.0, now - last) * charge.per_second)


def decide(levels: Sequence[float], charges: Sequence[Charge]) -> RateResult:
    """All-or-nothing decision over refilled bucket levels (one token per bucket)."""
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
        return self.hit_now(charges)

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
            self._hits = 0
            self._sweep(now, charges)
        return result

    def _sweep(self, now: float, recent: Sequence[Charge]) -> None:
        """Drop buckets idle for long enough that they would be full (bounded memory)."""
        horizon = max((c.capacity / c.per_second for c in recent), default=60.0)
        stale = [k for k, (_, at) in self._buckets.items() if now - at > max(horizon, 3600.0)]
        for k in stale:
            del self._buckets[k]

    async def close(self) -> None:
        self._buckets.clear()


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


class RedisRateLimiter:
    """Buckets in Redis, shared by every data-plane replica.

    One EVALSHA per request (redis-py's Script falls back to SCRIPT LOAD on
    NOSCRIPT). Keys carry one hash tag per request (see :func:`bucket_prefix`),
    so the script works on Redis Cluster. Failures are decided within
    ``timeout`` seconds and trip a breaker, so a dead Redis costs nothing
    per request while it stays dead.
    """

    def __init__(
        self,
        url: str,
        *,
        metrics: Metrics | None = None,
        timeout: float = 0.1,
        max_connections: int = 64,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._redis = aioredis.Redis(connection_pool=self._pool)
        self._script = self._redis.register_script(LUA_SOURCE)
        self._timeout = timeout
        self._metrics = metrics
        self.breaker = breaker or CircuitBreaker()
        self.calls = 0  # round trips attempted (tests prove the breaker skips Redis)

    async def hit(self, charges: Sequence[Charge], failure_mode: FailureMode = "open") -> RateResult:
        if not charges:
            return ALLOWED_EMPTY
        if not self.breaker.allow():
            return self._unavailable(failure_mode)
        keys = [c.bucket for c in charges]
        args: list[float | int] = []
        for c in charges:
            args += (c.capacity, c.per_second, math.ceil(c.capacity / c.per_second * 1000) + 1000)
        self.calls += 1
        try:
            async with asyncio.timeout(self._timeout * 2):
                reply = await self._script(keys=keys, args=args)
        except Exception as exc:  # noqa: BLE001 - any store failure applies the failure mode
            self.breaker.failure()
            log.warning("rate-limit store unavailable: %s", type(exc).__name__)
            return self._unavailable(failure_mode)
        self.breaker.success()
        return _result_from_reply(reply, charges)

    def _unavailable(self, failure_mode: FailureMode) -> RateResult:
        if self._metrics is not None:
            self._metrics.ratelimit_store_errors.labels(failure_mode).inc()
        return RateResult(allowed=failure_mode == "open", store_unavailable=True)

    async def close(self) -> None:
        await self._redis.aclose()
        await self._pool.aclose()


def _result_from_reply(reply: Sequence[int], charges: Sequence[Charge]) -> RateResult:
    """Decode the script's reply: allowed, index (1-based), remaining, reset_ms, retry_ms."""
    allowed, index, remaining, reset_ms, retry_ms = (int(x) for x in reply)
    c = charges[index - 1]
    return RateResult(
        allowed=bool(allowed),
        limit=c.requests,
        remaining=max(0, remaining),
        reset_seconds=math.ceil(reset_ms / 1000),
        retry_after=0 if allowed else max(1, math.ceil(retry_ms / 1000)),
        denied_dimension=None if allowed else c.dimension,
    )


def build_rate_limiter(redis_url: str | None, *, metrics: Metrics | None = None) -> RateLimiter:
    """Redis when a URL is given (shared across replicas), otherwise in-memory."""
    if redis_url:
        return RedisRateLimiter(redis_url, metrics=metrics)
    return MemoryRateLimiter()
