"""In-memory rate limits that stay exact across workers: one counter owner, the supervisor.

Without ``--redis-url`` the buckets live in the supervisor's
:class:`MemoryRateLimiter`; each worker's :class:`OwnedRateLimiter` sends a
request's charges over a unix socket and waits for the decision. The owner
decides every message in one synchronous step, in arrival order, so N workers
admit exactly what one process would. Replies come back in request order on
each connection (a FIFO of waiters, no ids). Charges are encoded once per
ChargeSet and kept on it.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from collections import deque
from collections.abc import Sequence

from .ipc import FrameProtocol, frame
from .ratelimit import ALLOWED_EMPTY, Charge, FailureMode, MemoryRateLimiter, RateResult

log = logging.getLogger("kubegate.ratelimit")


def _encode(charges: Sequence[Charge]) -> bytes:
    cached = getattr(charges, "owner_frame", None)
    if cached is not None:
        return cached
    data = frame(pickle.dumps(tuple((c.bucket, c.requests, c.capacity, c.per_second, c.dimension) for c in charges),
                              protocol=pickle.HIGHEST_PROTOCOL))
    try:
        charges.owner_frame = data  # type: ignore[attr-defined]  # a ChargeSet: reused for the next request
    except AttributeError:  # a plain tuple or list
        pass
    return data


class CounterOwner:
    """The supervisor's side: serves its MemoryRateLimiter on a unix socket."""

    def __init__(self, path: str, limiter: MemoryRateLimiter | None = None) -> None:
        self.path = path
        self.limiter = limiter or MemoryRateLimiter()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(self._protocol, self.path)

    def _protocol(self) -> FrameProtocol:
        protocol: FrameProtocol

        def decide(payload: bytes) -> None:
            charges = [Charge(*fields) for fields in pickle.loads(payload)]
            r = self.limiter.hit_now(charges)
            if protocol.transport is not None:
                protocol.transport.write(frame(pickle.dumps(
                    (r.allowed, r.limit, r.remaining, r.reset_seconds, r.retry_after, r.denied_dimension))))

        protocol = FrameProtocol(decide)
        return protocol

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self.limiter.close()


class OwnedRateLimiter:
    """A worker's rate limiter: every decision made by the counter owner."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._waiting: deque[asyncio.Future] = deque()
        self._protocol: FrameProtocol | None = None

    async def connect(self) -> OwnedRateLimiter:
        loop = asyncio.get_running_loop()
        _, self._protocol = await loop.create_unix_connection(
            lambda: FrameProtocol(self._reply, self._lost), self.path)
        return self

    def _reply(self, payload: bytes) -> None:
        waiter = self._waiting.popleft()
        if not waiter.done():
            waiter.set_result(RateResult(*pickle.loads(payload)))

    def _lost(self) -> None:
        self._protocol = None
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError("the counter owner (supervisor) has gone"))

    async def hit(self, charges: Sequence[Charge], failure_mode: FailureMode = "open") -> RateResult:
        if not charges:
            return ALLOWED_EMPTY
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            return RateResult(allowed=failure_mode == "open", store_unavailable=True)
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        protocol.transport.write(_encode(charges))
        try:
            return await waiter
        except ConnectionError:
            return RateResult(allowed=failure_mode == "open", store_unavailable=True)

    async def close(self) -> None:
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
        self._protocol = None
