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
import hashlib
import logging
import math
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol
from urllib.parse import unquote, urlsplit

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


class RespError(Exception):
    """An error reply from Redis (e.g. NOSCRIPT, WRONGTYPE)."""


_INCOMPLETE = object()


def parse_reply(buf: bytes | bytearray, pos: int) -> tuple[object, int] | object:
    """One RESP2 reply starting at ``pos``: (value, next position), or _INCOMPLETE.

    Error replies are returned as RespError values, not raised, so one bad
    reply never desynchronises a pipelined connection.
    """
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE
    kind = buf[pos]
    line = bytes(buf[pos + 1:end])
    if kind == 58:  # ':' integer
        return int(line), end + 2
    if kind == 43:  # '+' simple string
        return line.decode(), end + 2
    if kind == 45:  # '-' error
        return RespError(line.decode(errors="replace")), end + 2
    if kind == 36:  # '$' bulk string
        size = int(line)
        if size < 0:
            return None, end + 2
        stop = end + 2 + size
        if len(buf) < stop + 2:
            return _INCOMPLETE
        return bytes(buf[end + 2:stop]), stop + 2
    if kind == 42:  # '*' array
        size = int(line)
        items: list[object] = []
        pos = end + 2
        for _ in range(max(size, 0)):
            parsed = parse_reply(buf, pos)
            if parsed is _INCOMPLETE:
                return _INCOMPLETE
            item, pos = parsed
            items.append(item)
        return (items if size >= 0 else None), pos
    raise RespError(f"unexpected reply type {chr(kind)!r}")


def encode_command(*words: str | bytes | float) -> bytes:
    out = [b"*%d\r\n" % len(words)]
    for word in words:
        data = word if isinstance(word, bytes) else str(word).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _RespConnection(asyncio.Protocol):
    """One pipelined Redis connection: replies resolve waiting futures in FIFO order.

    Commands issued in the same event-loop turn go out in one write. A caller
    that times out leaves its future in the queue (cancelled), so a late reply
    is consumed and discarded instead of answering the next caller.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._pending: deque[asyncio.Future] = deque()
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._waiting_since: float | None = None  # outstanding requests and no reply since then
        self._watchdog: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._watchdog = self._loop.call_later(self._timeout / 2, self._check)

    def _check(self) -> None:
        """Declare Redis dead when requests are outstanding and nothing came back for ``timeout``.

        One timer per connection instead of one per request; and since asyncio
        reads sockets before it runs timers, a busy event loop is never taken
        for a slow Redis.
        """
        since = self._waiting_since
        if since is not None and self._loop.time() - since > self._timeout:
            self._fail(TimeoutError("redis did not answer in time"))
            return
        if not self.closed:
            self._watchdog = self._loop.call_later(self._timeout / 2, self._check)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError("redis connection lost"))

    def _fail(self, error: Exception) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._transport is not None and not self.closed:
            self.closed = True
            self._transport.close()
        self.closed = True
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(error)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        try:
            while pos < len(buf):
                parsed = parse_reply(buf, pos)
                if parsed is _INCOMPLETE:
                    break
                value, pos = parsed
                fut = self._pending.popleft()
                if not fut.done():
                    fut.set_result(value)
            self._waiting_since = self._loop.time() if self._pending else None
        except (RespError, ValueError, IndexError):
            self.close()  # unparsable stream: drop it; callers see a store failure
            return
        if pos:
            del buf[:pos]

    def send(self, payload: bytes) -> asyncio.Future:
        if self.closed:
            raise ConnectionError("redis connection closed")
        fut = self._loop.create_future()
        self._pending.append(fut)
        self._out.append(payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and not self.closed and self._transport is not None:
            self._transport.write(b"".join(self._out))
            if self._waiting_since is None:
                self._waiting_since = self._loop.time()
        self._out.clear()

    def close(self) -> None:
        self._fail(ConnectionError("redis connection closed"))


class RedisRateLimiter:
    """Buckets in Redis, shared by every data-plane replica.

    One EVALSHA per request over one pipelined connection; on NOSCRIPT (a
    restarted or flushed Redis) the call is repeated once as EVAL, which also
    caches the script again. Keys carry one hash tag per request (see
    kubegate.dataplane.admission), so the script works on Redis Cluster.

    A lean RESP client rather than redis-py: redis.asyncio costs 55 us per
    pipelined call and over 200 us per sequential call on the benchmark
    machine, which alone would eat the data plane's 15% budget for security.
    Failures are decided within ``timeout`` seconds and trip a breaker, so a
    dead Redis costs nothing per request while it stays dead.
    """

    def __init__(
        self,
        url: str,
        *,
        metrics: Metrics | None = None,
        timeout: float = 0.1,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"redis URL must start with redis:// or rediss://, not {parts.scheme or url!r}://")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._tls = parts.scheme == "rediss"
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ValueError(f"redis URL database must be a number, not {db!r}")
        self._db = int(db or 0)
        self._timeout = timeout
        self._metrics = metrics
        self.breaker = breaker or CircuitBreaker()
        self._conn: _RespConnection | None = None
        self._connecting: asyncio.Future | None = None
        self._source = LUA_SOURCE.encode()
        self._sha = hashlib.sha1(self._source).hexdigest().encode()
        self._args_cache: dict[tuple[int, float], tuple[bytes, bytes, bytes]] = {}
        self.calls = 0  # round trips attempted (tests prove the breaker skips Redis)

    async def _connection(self) -> _RespConnection:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _connect(self) -> _RespConnection:
        loop = asyncio.get_running_loop()
        ssl_ctx = ssl_module.create_default_context() if self._tls else None
        async with asyncio.timeout(max(1.0, self._timeout * 10)):  # bounded even if callers gave up
            _, conn = await loop.create_connection(
                lambda: _RespConnection(loop, self._timeout), self._host, self._port, ssl=ssl_ctx
            )
            hello = []
            if self._password is not None:
                auth = ("AUTH", self._username, self._password) if self._username else ("AUTH", self._password)
                hello.append(conn.send(encode_command(*auth)))
            if self._db:
                hello.append(conn.send(encode_command("SELECT", self._db)))
            for reply in await asyncio.gather(*hello):
                if isinstance(reply, RespError):
                    conn.close()
                    raise ConnectionError("redis refused AUTH/SELECT")
        self._conn = conn
        return conn

    def _command(self, verb: bytes, script: bytes, charges: Sequence[Charge]) -> bytes:
        n = len(charges)
        out = [b"*%d\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (3 + 4 * n, len(verb), verb, len(script), script),
               b"$%d\r\n%d\r\n" % (len(str(n)), n)]
        for c in charges:
            key = c.bucket.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(key), key))
        cache = self._args_cache
        for c in charges:
            args = cache.get((c.capacity, c.per_second))
            if args is None:
                args = tuple(
                    str(v).encode()
                    for v in (c.capacity, repr(c.per_second), math.ceil(c.capacity / c.per_second * 1000) + 1000)
                )
                if len(cache) < 4096:
                    cache[(c.capacity, c.per_second)] = args
            for a in args:
                out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    async def hit(self, charges: Sequence[Charge], failure_mode: FailureMode = "open") -> RateResult:
        if not charges:
            return ALLOWED_EMPTY
        if not self.breaker.allow():
            return self._unavailable(failure_mode)
        self.calls += 1
        try:
            conn = self._conn
            if conn is None or conn.closed:
                async with asyncio.timeout(self._timeout):
                    conn = await self._connection()
            # no per-request timer: the connection's watchdog fails every waiter when Redis stalls
            reply = await conn.send(self._command(b"EVALSHA", self._sha, charges))
            if isinstance(reply, RespError) and str(reply).startswith("NOSCRIPT"):
                reply = await conn.send(self._command(b"EVAL", self._source, charges))
            if isinstance(reply, RespError):
                raise reply
            result = _result_from_reply(reply, charges)  # type: ignore[arg-type]
        except (OSError, TimeoutError, RespError, ValueError, TypeError, IndexError) as exc:
            self._failed(exc)
            return self._unavailable(failure_mode)
        self.breaker.success()
        return result

    def _failed(self, exc: Exception) -> None:
        self.breaker.failure()
        log.warning("rate-limit store unavailable: %s", type(exc).__name__)
        if self.breaker.is_open and self._conn is not None:
            self._conn.close()  # a hung server: start from a fresh connection on the next probe
            self._conn = None

    def _unavailable(self, failure_mode: FailureMode) -> RateResult:
        if self._metrics is not None:
            self._metrics.ratelimit_store_errors.labels(failure_mode).inc()
        return RateResult(allowed=failure_mode == "open", store_unavailable=True)

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._conn is not None:
            self._conn.close()
            self._conn = None


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
