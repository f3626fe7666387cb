"""Circuit breaking per route (GatewayRoute ``spec.circuitBreaker``), per backend endpoint, per replica.

Two protections, both local to this process:

* **Overflow**: at most ``maxRequests`` upstream requests in flight to one
  endpoint; the next ``maxPendingRequests`` wait (first come, first served)
  for a slot; any request beyond that is refused at once with ``503``,
  ``reason: overflow``.
* **Passive outlier detection**: ``consecutiveErrors`` 5xx answers or connect
  failures in a row eject the endpoint for ``ejectionTime``, doubling on each
  repeat up to 5 minutes (a success resets the error run, not the doubling).
  An endpoint is never ejected when every other endpoint of the route is
  already ejected: the last one keeps serving.

State lives in :class:`Breakers` (one per Gateway) keyed by route id and
endpoint, so it survives config reloads; a route's plan holds its
:class:`RouteBreaker`.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import random
import time
from typing import Any

from kubegate.config import CompiledCircuitBreaker

MAX_EJECTION = 300.0


class Overflow(Exception):
    """The endpoint's request and pending caps are both full."""


class EndpointBreaker:
    __slots__ = ("_waiters", "active", "ejected_until", "ejections", "errors", "pending", "settings")

    def __init__(self, settings: CompiledCircuitBreaker) -> None:
        self.settings = settings
        self.active = 0
        self.pending = 0
        self.errors = 0
        self.ejections = 0
        self.ejected_until = 0.0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def ejected(self, now: float) -> bool:
        return self.ejected_until > now

    async def acquire(self) -> None:
        """Take a request slot, waiting in the pending queue if there is room; Overflow otherwise."""
        if self.active < self.settings.max_requests and not self._waiters:
            self.active += 1
            return
        if self.pending >= self.settings.max_pending_requests:
            raise Overflow()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.pending += 1
        try:
            await waiter  # release() hands its slot over: active stays counted
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # got the slot just as we were cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise
        finally:
            self.pending -= 1

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.active -= 1


class RouteBreaker:
    """The endpoints of one route: slots, error runs and ejections."""

    def __init__(self, route: str, settings: CompiledCircuitBreaker, endpoints: list[EndpointBreaker],
                 metrics: Any) -> None:
        self.route, self.settings, self.endpoints = route, settings, endpoints
        self._metrics = metrics

    def pick(self, plan: Any, avoid: Any) -> tuple[int, Any] | None:
        """Weighted pick among endpoints not ejected (all of them if every one is); avoid the last tried."""
        origins = plan.origins
        if not origins:
            return None
        now = time.monotonic()
        live = [i for i, ep in enumerate(self.endpoints) if not ep.ejected(now)] or list(range(len(origins)))
        if len(live) > 1 and avoid is not None:
            live = [i for i in live if origins[i] is not avoid] or live
        if len(live) == 1:
            return live[0], origins[live[0]]
        weights = [plan.cumulative[i] - (plan.cumulative[i - 1] if i else 0) for i in live]
        running = list(_accumulate(weights))
        index = live[bisect.bisect_right(running, random.randrange(running[-1]))]
        return index, origins[index]

    def overflowed(self) -> None:
        self._metrics.circuit_overflows.labels(self.route).inc()

    def succeeded(self, endpoint: EndpointBreaker) -> None:
        endpoint.errors = 0

    def failed(self, endpoint: EndpointBreaker) -> None:
        limit = self.settings.consecutive_errors
        endpoint.errors += 1
        if not limit or endpoint.errors < limit:
            return
        now = time.monotonic()
        if endpoint.ejected(now):
            return
        others_live = any(not ep.ejected(now) for ep in self.endpoints if ep is not endpoint)
        if not others_live:
            return  # never eject the last endpoint in rotation
        seconds = min(self.settings.ejection_time * (2 ** endpoint.ejections), MAX_EJECTION)
        endpoint.ejections += 1
        endpoint.errors = 0
        endpoint.ejected_until = now + seconds
        self._metrics.circuit_ejections.labels(self.route).inc()

    def ejected_count(self) -> int:
        now = time.monotonic()
        return sum(ep.ejected(now) for ep in self.endpoints)


def _accumulate(values: list[int]):
    total = 0
    for value in values:
        total += value
        yield total


class Breakers:
    """Every route's breaker state in one process; reused across config reloads by (route, endpoint)."""

    def __init__(self, metrics: Any) -> None:
        self._metrics = metrics
        self._endpoints: dict[tuple[str, Any], EndpointBreaker] = {}
        self._routes: dict[str, RouteBreaker] = {}
        metrics.circuit_ejected.set_function(self._ejected_total)

    def for_route(self, route_id: str, settings: CompiledCircuitBreaker | None, origin_keys: list[Any]
                  ) -> RouteBreaker | None:
        if settings is None:
            self._routes.pop(route_id, None)
            return None
        endpoints = []
        for key in origin_keys:
            found = self._endpoints.get((route_id, key))
            if found is None:
                found = self._endpoints[(route_id, key)] = EndpointBreaker(settings)
            found.settings = settings  # a reload keeps the endpoint's slots, error run and ejections
            endpoints.append(found)
        breaker = self._routes[route_id] = RouteBreaker(route_id, settings, endpoints, self._metrics)
        return breaker

    def _ejected_total(self) -> float:
        return float(sum(route.ejected_count() for route in self._routes.values()))
