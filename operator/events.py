"""Kubernetes Events on kubegate objects, for the transitions a user wants to see.

Messages come from conditions and key ids only, never from secret data.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubegate.kubeapi import ApiError, KubeApi, path_for

log = logging.getLogger("kubegate.operator.events")

COMPONENT = "kubegate-operator"


def event_body(involved: Mapping[str, str], type_: str, reason: str, message: str, now: datetime,
               instance: str) -> dict[str, Any]:
    """A core/v1 Event about ``involved`` (pure)."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{involved['name']}.{uuid.uuid4().hex[:16]}", "namespace": involved["namespace"]},
        "involvedObject": dict(involved),
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT, "host": instance},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


async def post_event(api: KubeApi, involved: Mapping[str, str], type_: str, reason: str, message: str,
                     instance: str) -> None:
    body = event_body(involved, type_, reason, message, datetime.now(UTC), instance)
    try:
        await api.create(path_for("v1", "Event", involved["namespace"]), body)
    except (ApiError, OSError) as exc:  # events are best effort
        log.debug("event %s on %s/%s not posted: %s", reason, involved["namespace"], involved["name"], exc)


class Budget:
    """A token bucket: ``burst`` at once, then ``rate`` per second."""

    def __init__(self, burst: float, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.rate, self.clock = burst, rate, clock
        self.tokens, self.at = burst, clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class EventQueue:
    """Events posted in the background, a few at a time, after the status writes they describe.

    A burst of 1,000 objects turning Ready is 1,000 Events: posting each inline
    would double the API requests standing between an object and its Ready
    status, so they wait for a quiet moment (``gate``) instead. Normal Events
    (an object turned Ready) have a budget (``normal_burst`` at once, then
    ``normal_rate`` a second, one by default): beyond it they are dropped, so 10,000 routes
    created at once cost the API server 10,000 status writes, not 20,000
    writes (an Event costs about what a status patch does, and they would
    still be posting while the next changes wait). Warnings are never
    budgeted. A full queue drops the newest notes (events are best effort).
    """

    def __init__(self, api: KubeApi, instance: str, *, concurrency: int = 4, limit: int = 10_000,
                 gate: asyncio.Event | None = None, normal_burst: float = 100, normal_rate: float = 1) -> None:
        self.api, self.instance, self.concurrency = api, instance, concurrency
        self.gate = gate  # when given, post only while it is set (the reconciler is idle)
        self._queue: asyncio.Queue[tuple[Mapping[str, str], str, str, str]] = asyncio.Queue(limit)
        self.normal = Budget(normal_burst, normal_rate)
        self.dropped = 0

    def put(self, involved: Mapping[str, str], type_: str, reason: str, message: str) -> None:
        if type_ == "Normal" and not self.normal.take():
            self.dropped += 1
            return
        try:
            self._queue.put_nowait((dict(involved), type_, reason, message))
        except asyncio.QueueFull:
            self.dropped += 1

    async def run(self) -> None:
        await asyncio.gather(*(self._post_forever() for _ in range(self.concurrency)))

    async def _post_forever(self) -> None:
        while True:
            involved, type_, reason, message = await self._queue.get()
            if self.gate is not None:
                await self.gate.wait()
            await post_event(self.api, involved, type_, reason, message, self.instance)

    async def drain(self) -> None:
        """Post what is queued now (for a clean shutdown and for tests)."""
        while not self._queue.empty():
            involved, type_, reason, message = self._queue.get_nowait()
            await post_event(self.api, involved, type_, reason, message, self.instance)
