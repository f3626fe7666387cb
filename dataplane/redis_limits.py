"""The Redis store of the rate limits: one round trip and one script call for a busy moment's requests.

Auto-pipelined: requests made while no batch is in flight go out together on
the next loop turn, requests made while one is in flight go out together as
soon as it is answered; and a batch is ONE script call per cluster slot
(usually one per batch), which decides its requests one after another, each
all-or-nothing (see ratelimit.lua). So one round trip and one script call
carry every request of a busy moment: Redis's per-command cost and the
client's per-reply cost are paid once per batch. A request's part of the call
is RESP-encoded once per ChargeSet and cached on it; a batch is written as
EVALSHA straight to the node's transport, and the replies are parsed (hiredis)
and handed to the batch from the loop's read callback, with no task, stream or
await in between (see kubegate.dataplane.redis_nodes.Wire); only connecting
and reading a cluster's slot map take a task. On NOSCRIPT (a restarted or
flushed Redis, a new cluster node) the refused calls go again as EVAL, which
caches the script there. Keys carry one hash tag per request (see
kubegate.dataplane.admission), so the script works on Redis Cluster.

Failures are decided within ``timeout`` seconds (see :class:`Deadline`) and
trip a breaker, so a dead Redis costs nothing per request while it stays
dead; redis-py's own retries are off, the breaker decides. A bucket Redis
cannot use (a foreign key of another type) fails only the requests that
charge it.

With failure mode ``local``, a request the store cannot decide is decided in
memory against its share of each limit: requests, burst and refill divided by
``live_replicas()`` (the data-plane replicas alive now, from their heartbeat
Leases; 1 for ``kubegate run``), so the replicas together admit at most what
the shared limit would while Redis is away.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from kubegate.dataplane.ratelimit import (
    ALLOWED_EMPTY,
    LIMIT_LINES,
    Charge,
    ChargeSet,
    FailureMode,
    MemoryRateLimiter,
    RateResult,
    local_share,
)
from kubegate.dataplane.redis_nodes import RedisNode, RedisNodes, Wire
from redis.exceptions import AskError, MovedError, NoScriptError, ResponseError

if TYPE_CHECKING:
    from kubegate.dataplane.metrics import Metrics

log = logging.getLogger("kubegate.ratelimit")
T = TypeVar("T")
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
    never on time.

    One Deadline serves a limiter's batches one after another (one is in flight
    at a time): :meth:`release` ends a wait without touching the timer, which
    then lapses at its next tick unless :meth:`restart` has begun the next wait
    meanwhile; so a batch costs no timer of its own. A tick counts for a wait
    only when the wait spans it whole, so expiry comes after ``timeout`` of
    responsive loop and before ``timeout`` + one tick.
    """

    def __init__(self, timeout: float, on_expire: Callable[[], object], *,
                 hard_limit: float | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._tick = timeout / 4
        self._needed = timeout
        self._hard = hard_limit if hard_limit is not None else max(1.0, 10 * timeout)
        self._handle: asyncio.TimerHandle | None = None
        self.restart(on_expire)

    def restart(self, on_expire: Callable[[], object]) -> None:
        """Watch a new wait from now (the previous one released or expired)."""
        self._since = now = self._loop.time()
        self._counted = 0.0
        self._on_expire: Callable[[], object] | None = on_expire
        self.expired = False
        if self._handle is None:
            self._armed_at = now
            self._handle = self._loop.call_at(now + self._tick, self._on_tick)

    def _on_tick(self) -> None:
        self._handle = None
        on_expire = self._on_expire
        if on_expire is None:  # released: no wait to watch, the timer lapses
            return
        now = self._loop.time()
        # on time (the loop could have read a reply) and the wait spanned the whole tick
        if now - self._armed_at <= 2 * self._tick and self._since <= self._armed_at:
            self._counted += self._tick
        if self._counted >= self._needed - 1e-9 or now >= self._since + self._hard:
            self.expired = True
            self._on_expire = None
            on_expire()
            return
        self._armed_at = now
        self._handle = self._loop.call_at(now + self._tick, self._on_tick)

    def release(self) -> None:
        """The wait is over (answered or failed); the timer is left to lapse or to serve the next wait."""
        self._on_expire = None

    def cancel(self) -> None:
        self._on_expire = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class _Packed:
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
    its pack_command cost more per request than everything else a cached request does (bench/admission.py)."""
    return b"$%d\r\n%s\r\n" % (len(data), data)


_NUMBERS = [_bulk(b"%d" % i) for i in range(1024)]  # counts as bulk strings, made once (MAX_REQUESTS_PER_CALL fits)
_Call = tuple[Sequence[int], int, bytes]  # (indexes of its requests in the batch, argument count, arguments after the script)


class _Batch:
    """One round trip: its requests, their script calls, and the replies still awaited.

    Replies arrive through Wire callbacks (``_on_reply``); when the last one is in, every
    request's future is settled and the limiter sends what queued meanwhile. A call a cluster
    node refuses with MOVED/ASK (slots moved) goes again, once, after the slot map is read again."""

    __slots__ = (
        "calls",
        "deadline",
        "done",
        "limiter",
        "outstanding",
        "redirected",
        "replies",
        "requests",
        "retried",
        "task",
    )

    def __init__(self, limiter: RedisRateLimiter, requests: list[tuple[_Packed, asyncio.Future]]) -> None:
        self.limiter = limiter
        self.requests = requests
        self.calls = limiter._calls(requests)
        self.replies: list[object] = [None] * len(self.calls)
        self.outstanding = len(self.calls)
        self.redirected: list[int] = []
        self.retried = False
        self.done = False
        self.task: asyncio.Task | None = None
        deadline = self.deadline = limiter._deadline  # one per limiter, restarted per batch (no timer each)
        if deadline is None:
            self.deadline = limiter._deadline = Deadline(limiter._timeout, self._expired)
        else:
            deadline.restart(self._expired)
        self._route(range(len(self.calls)))

    def _route(self, indexes: Sequence[int]) -> None:
        """Write the calls to their nodes now when each node's connection is open (the common case);
        otherwise connect (and read the slot map) in a task first."""
        nodes = self.limiter._nodes
        if len(indexes) == 1:  # the usual batch: one script call
            node = nodes.known_node_for(self._group(indexes[0]))
            if node is not None and node.wire is not None:
                self._send(node, node.wire, list(indexes))
                return
        by_node: dict[RedisNode, list[int]] = {}
        for i in indexes:
            node = nodes.known_node_for(self._group(i))
            if node is None or node.wire is None:
                self.task = asyncio.ensure_future(self._route_later(indexes))
                return
            by_node.setdefault(node, []).append(i)
        for node, part in by_node.items():
            self._send(node, node.wire, part)

    def _group(self, i: int) -> str:
        return self.requests[self.calls[i][0][0]][0].group

    async def _route_later(self, indexes: Sequence[int]) -> None:
        try:
            by_node: dict[RedisNode, list[int]] = {}
            for i in indexes:
                by_node.setdefault(await self.limiter._nodes.node_for(self._group(i)), []).append(i)
            wires = [(node, await node.connection(), part) for node, part in by_node.items()]
        except Exception as exc:  # noqa: BLE001 - every waiter sees the store failure
            self.fail(exc)
            return
        if not self.done:
            for node, wire, part in wires:
                self._send(node, wire, part)

    def _send(self, node: RedisNode, wire: Wire, indexes: list[int], command: bytes | None = None) -> None:
        """``command``: the encoded EVALSHA + sha (default) or EVAL + source."""
        prefix = command or self.limiter._evalsha
        calls = self.calls
        evaled = command is not None
        if len(indexes) == 1:  # the usual batch: one script call
            i = indexes[0]
            _, argc, body = calls[i]
            wire.send(b"*%d\r\n%s%s" % (argc, prefix, body), [partial(self._on_reply, node, i, evaled)])
            return
        data = b"".join([b"*%d\r\n%s%s" % (calls[i][1], prefix, calls[i][2]) for i in indexes])
        wire.send(data, [partial(self._on_reply, node, i, evaled) for i in indexes])

    def _on_reply(self, node: RedisNode, i: int, evaled: bool, reply: object) -> None:
        if self.done:
            return
        if type(reply) is list:  # the script's answer (the usual reply)
            self.replies[i] = reply
        elif isinstance(reply, NoScriptError) and not evaled and node.wire is not None:
            self._send(node, node.wire, [i], self.limiter._eval)  # caches the script on that node
            return
        elif isinstance(reply, (MovedError, AskError)) and not self.retried:
            self.redirected.append(i)
        else:
            if isinstance(reply, OSError):  # the node went away: the slot map may have changed
                self.limiter._nodes.forget_slots()
            self.replies[i] = reply
        self.outstanding -= 1
        if self.outstanding:
            return
        if self.redirected:
            nodes = self.limiter._nodes
            nodes.cluster = True  # a plain URL naming one cluster node works too: its slot map decides
            nodes.forget_slots()
            again, self.redirected, self.retried = self.redirected, [], True
            self.outstanding = len(again)
            self.task = asyncio.ensure_future(self._route_later(again))
            return
        self._finish()

    def _finish(self) -> None:
        self.done = True
        self.deadline.release()
        requests = self.requests
        for (indexes, _, _), reply in zip(self.calls, self.replies):
            failed = isinstance(reply, BaseException)
            if not failed and (type(reply) is not list or len(reply) != 5 * len(indexes)):
                reply, failed = ResponseError("unexpected rate-limit script reply"), True
            n = 0
            for i in indexes:
                future = requests[i][1]
                part = reply if failed else reply[n:n + 5]
                n += 5
                if future.done():  # the caller went away
                    continue
                if failed:
                    future.set_exception(reply)
                elif part[0] >= 0:
                    future.set_result(part)
                else:
                    future.set_exception(ResponseError("rate-limit bucket unusable (wrong type?)"))
        self.limiter._batch_done()

    def _expired(self) -> None:
        # whoever queued meanwhile would only wait on the same hung server
        limiter = self.limiter
        self.requests, limiter._queue = self.requests + limiter._queue, []
        self.fail(TimeoutError("redis did not answer in time"))

    def fail(self, error: Exception) -> None:
        """Every waiter of the batch sees ``error``; the connections are closed (never reuse a stream
        with replies unread) and a cluster's slot map is read again (a node may have failed over)."""
        if self.done:
            return
        self.done = True
        self.deadline.release()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        nodes = self.limiter._nodes
        nodes.disconnect(error)
        nodes.forget_slots()
        _settle(self.requests, error)
        self.limiter._batch_done()


class RedisRateLimiter:
    """Buckets in Redis, shared by every data-plane replica (see the module's docstring)."""

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
        self._queue: list[tuple[_Packed, asyncio.Future]] = []
        self._busy = False  # a batch is due on the next loop turn or in flight
        self._batch: _Batch | None = None
        self._deadline: Deadline | None = None  # the batches' (see Deadline.restart)
        self._closed = False
        self._args_cache: dict[tuple[int, float], tuple[bytes, bytes, bytes]] = {}
        self.calls = 0  # requests that went to Redis (tests prove the breaker skips it)
        self.round_trips = 0  # batches sent (calls / round_trips = requests per round trip)

    async def hit(self, charges: Sequence[Charge], failure_mode: FailureMode = "open") -> RateResult:
        return await self.hit_then(charges, failure_mode, None)

    async def hit_then(self, charges: Sequence[Charge], failure_mode: FailureMode,
                       then: Callable[..., T] | None, *args: object) -> T | RateResult:
        """hit() as admission asks it: ``then(outcome, *args)``, where the outcome is an admitting answer
        of the store as its X-RateLimit-* lines (RateResult.lines(), no RateResult made) and any other
        result as the RateResult. ``then`` is called in this coroutine (None: the RateResult itself), so a
        waiting request resumes through one coroutine, not two."""
        if not charges:
            return ALLOWED_EMPTY if then is None else then(ALLOWED_EMPTY, *args)
        breaker = self.breaker
        if breaker._failures and not breaker.allow():  # no failures: allow() is True, skip the call
            result = self._unavailable(failure_mode, charges)
            return result if then is None else then(result, *args)
        self.calls += 1
        if type(charges) is not ChargeSet:
            charges = ChargeSet(charges)
        packed = charges.wire
        if packed is None:
            packed = charges.wire = _Packed(charges, self._ttl_args)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((packed, future))
        if not self._busy:
            self._busy = True
            loop.call_soon(self._flush)
        try:
            reply = await future
        except Exception as exc:  # noqa: BLE001 - any store failure applies the failure mode, never a 500
            self._failed(exc)
            result = self._unavailable(failure_mode, charges)
            return result if then is None else then(result, *args)
        if breaker._failures or breaker._probing:
            breaker.success()
        allowed, index, remaining, reset_ms, retry_ms = reply  # integers: Redis converts Lua numbers
        c = charges[index - 1]
        if allowed:
            if then is not None:
                return then(LIMIT_LINES % (c.requests, max(0, remaining), -(-reset_ms // 1000)), *args)
            return RateResult(True, c.requests, max(0, remaining), -(-reset_ms // 1000))
        result = RateResult(False, c.requests, 0, -(-reset_ms // 1000), max(1, -(-retry_ms // 1000)), c.dimension)
        return result if then is None else then(result, *args)

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

    def _flush(self) -> None:
        """Send what is queued as one batch (one batch in flight at a time)."""
        queue, self._queue = self._queue, []
        if not queue:
            self._busy = False
            return
        if self._closed:
            _settle(queue, ConnectionError("rate limiter closed"))
            self._busy = False
            return
        self.round_trips += 1
        self._batch = _Batch(self, queue)

    def _batch_done(self) -> None:
        self._batch = None
        if self._queue:
            self._flush()
        else:
            self._busy = False

    def _calls(self, requests: list[tuple[_Packed, asyncio.Future]]) -> list[_Call]:
        """The script calls of a batch: one per slot group, at most MAX_REQUESTS_PER_CALL requests each.
        Plain loops (no generator or comprehension per call): this runs for every batch."""
        group = requests[0][0].group
        n = len(requests)
        if n <= self.MAX_REQUESTS_PER_CALL:  # the usual batch: one slot group, one call (bench/policy_steps.py)
            keys: list[bytes] = []
            argv: list[bytes] = []
            nkeys = args = 0
            for packed, _ in requests:
                if packed.group != group:
                    break
                keys.append(packed.keys)
                argv.append(packed.argv)
                nkeys += packed.nkeys
                args += packed.args
            else:
                body = b"".join([_NUMBERS[nkeys] if nkeys < len(_NUMBERS) else _bulk(b"%d" % nkeys), *keys,
                                 _NUMBERS[n], *argv])
                return [(range(n), 4 + nkeys + args, body)]  # argc: command, script, numkeys, keys, count, args
        grouped: list[list[int]] = [list(range(n))]
        for packed, _ in requests:
            if packed.group != group:  # more than one slot group (Redis Cluster, several namespaces)
                groups: dict[str, list[int]] = {}
                for i, (each, _) in enumerate(requests):
                    groups.setdefault(each.group, []).append(i)
                grouped = list(groups.values())
                break
        calls = []
        step = self.MAX_REQUESTS_PER_CALL
        for indexes in grouped:
            for start in range(0, len(indexes), step):
                part = indexes[start:start + step]
                keys, argv = [], []
                nkeys = args = 0
                for i in part:
                    packed = requests[i][0]
                    keys.append(packed.keys)
                    argv.append(packed.argv)
                    nkeys += packed.nkeys
                    args += packed.args
                argc = 3 + nkeys + 1 + args  # command, script, numkeys, keys, count, args
                body = b"%s%s%s%s" % (_bulk(b"%d" % nkeys), b"".join(keys), _bulk(b"%d" % len(part)), b"".join(argv))
                calls.append((part, argc, body))
        return calls

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
        self._closed = True
        if self._batch is not None:
            self._batch.fail(ConnectionError("rate limiter closed"))
        _settle(self._queue, ConnectionError("rate limiter closed"))
        self._queue = []
        if self._deadline is not None:
            self._deadline.cancel()
        await self._nodes.close()


def _settle(requests: list[tuple[object, asyncio.Future]], error: BaseException) -> None:
    for _, future in requests:
        if not future.done():  # the caller may have gone away
            future.set_exception(error)
