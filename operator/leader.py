"""Leader election on a coordination.k8s.io Lease, so two operator replicas never fight.

Every replica watches and computes; only the Lease holder writes (generated
objects, statuses, events, ApiKey Secrets). A holder that cannot renew stops
acting as leader before its Lease can expire, so there is never a moment with
two writers. Takeover uses the Lease's resourceVersion: of two replicas racing
for an expired Lease, the API server lets exactly one win.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from kubegate.kubeapi import ApiError, KubeApi, micro_time, path_for
from kubegate.names import OPERATOR_LEASE_NAME

from .programmed import parse_time

log = logging.getLogger("kubegate.operator.leader")

LEASE_NAME = OPERATOR_LEASE_NAME

Action = Literal["create", "renew", "acquire", "follow"]


def decide(lease: Mapping[str, Any] | None, me: str, now: float) -> Action:
    """What a replica should do with the current Lease (pure)."""
    if lease is None:
        return "create"
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity")
    if holder == me:
        return "renew"
    renewed = parse_time(spec.get("renewTime") or spec.get("acquireTime"))
    duration = float(spec.get("leaseDurationSeconds") or 0)
    if not holder or renewed is None or renewed + duration <= now:
        return "acquire"
    return "follow"


def lease_body(namespace: str, name: str, me: str, now: float, duration: int,
               previous: Mapping[str, Any] | None = None, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    spec = dict((previous or {}).get("spec") or {})
    meta = dict((previous or {}).get("metadata") or {"name": name, "namespace": namespace})
    if labels:
        meta["labels"] = {**(meta.get("labels") or {}), **labels}
    taking_over = spec.get("holderIdentity") != me
    spec.update({"holderIdentity": me, "leaseDurationSeconds": duration, "renewTime": micro_time(now)})
    if taking_over:
        spec["acquireTime"] = micro_time(now)
        if previous is not None:
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}


class LeaderElector:
    """Keeps trying to hold the Lease; ``is_leader`` is True only while the hold is certainly valid."""

    def __init__(self, api: KubeApi, namespace: str, identity: str, *, name: str = LEASE_NAME,
                 duration: int = 8, renew_every: float = 2.0,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self.api, self.namespace, self.identity, self.name = api, namespace, identity, name
        self.duration, self.renew_every, self.on_change = duration, renew_every, on_change
        self._held_until = 0.0  # monotonic deadline of our own hold
        self._was_leader = False

    @property
    def is_leader(self) -> bool:
        # Leave a safety margin: stop writing well before another replica may take over.
        return time.monotonic() < self._held_until

    async def run(self) -> None:
        try:
            while True:
                started = time.monotonic()
                try:
                    if await self._attempt():
                        self._held_until = started + self.duration - 2 * self.renew_every
                except (TimeoutError, ApiError, OSError) as exc:
                    log.warning("leader election: %s", exc)
                self._notify()
                await asyncio.sleep(self.renew_every)
                self._notify()
        finally:
            if self.is_leader:
                await self._release()

    def _notify(self) -> None:
        leader = self.is_leader
        if leader != self._was_leader:
            self._was_leader = leader
            log.info("%s leadership of Lease %s/%s", "acquired" if leader else "lost", self.namespace, self.name)
            if self.on_change is not None:
                self.on_change(leader)

    async def _attempt(self) -> bool:
        path = path_for("coordination.k8s.io/v1", "Lease", self.namespace, self.name)
        lease = await self.api.get(path)
        action = decide(lease, self.identity, time.time())
        if action == "follow":
            return False
        body = lease_body(self.namespace, self.name, self.identity, time.time(), self.duration, lease)
        try:
            if action == "create":
                await self.api.create(path_for("coordination.k8s.io/v1", "Lease", self.namespace), body)
            else:
                await self.api.replace(path, body)  # carries resourceVersion: a racing writer gets 409
        except ApiError as exc:
            if exc.status in (409, 422):
                return False
            raise
        return True

    async def _release(self) -> None:
        """Hand over at once on a clean shutdown instead of making the other replica wait for expiry."""
        path = path_for("coordination.k8s.io/v1", "Lease", self.namespace, self.name)
        try:
            lease = await self.api.get(path)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["renewTime"] = micro_time(0)
                lease["spec"]["holderIdentity"] = ""
                await self.api.replace(path, lease)
        except (TimeoutError, ApiError, OSError):
            pass
        self._held_until = 0.0
