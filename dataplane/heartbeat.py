"""Each data-plane replica renews a Lease carrying the config hash it serves.

The operator reads these Leases to decide Programmed: a generation counts as
programmed only when a *live* replica (renewTime + leaseDurationSeconds in the
future) announces a hash whose config included it. A replica that stops
renewing (crashed, frozen, partitioned) therefore stops counting by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import time
from typing import Any

from kubegate.config import DROPPED_ANNOTATION, HASH_ANNOTATION
from kubegate.kubeapi import ApiError, KubeApi, micro_time, path_for
from kubegate.leases import replica_lease
from kubegate.names import DATAPLANE_LEASE_PREFIX, DATAPLANE_SELECTOR, LEASE_LABELS

log = logging.getLogger("kubegate.dataplane.heartbeat")




def replica_id() -> str:
    return os.environ.get("KUBEGATE_REPLICA_ID") or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def lease_name(replica: str) -> str:
    """A valid object name for this replica's Lease (pure)."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", replica.lower()).strip("-") or "replica"
    return (DATAPLANE_LEASE_PREFIX + cleaned)[:63].rstrip("-")


MAX_DROPPED = 200  # objects named on the Lease (annotations share 256 KiB); more are summarised by count
MAX_REASON = 300


def dropped_annotation(dropped: dict[str, str]) -> str:
    """The objects of the served config this replica left out, as the Lease annotation (pure)."""
    names = sorted(dropped)
    shown = {name: dropped[name][:MAX_REASON] for name in names[:MAX_DROPPED]}
    return json.dumps(shown, separators=(",", ":"), sort_keys=True) if shown else ""


def lease_patch(replica: str, config_hash: str | None, now: float, duration: int,
                dropped: dict[str, str] | None = None) -> dict[str, Any]:
    """The Lease content this replica asserts (pure): the hash it serves and what of it it left out."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": lease_name(replica), "labels": dict(LEASE_LABELS),
                     "annotations": {HASH_ANNOTATION: config_hash or "",
                                     DROPPED_ANNOTATION: dropped_annotation(dropped or {})}},
        "spec": {"holderIdentity": replica, "leaseDurationSeconds": duration, "renewTime": micro_time(now)},
    }


def live_replica_count(leases: Any, now: float, own: str) -> int:
    """Live data-plane Leases, counting this replica's own even if the list did not show it yet (pure)."""
    names = {lease.name for lease in map(replica_lease, leases) if lease is not None and lease.live(now)}
    return len(names | {own})


class Heartbeat:
    def __init__(self, api: KubeApi, namespace: str, gateway: Any, *, replica: str | None = None,
                 interval: float = 2.0, duration: int = 10) -> None:
        self.api, self.namespace, self.gateway = api, namespace, gateway
        self.replica = replica or replica_id()
        self.interval, self.duration = interval, duration
        self.name = lease_name(self.replica)
        self._wake = asyncio.Event()
        self.renewals = 0
        self.live_replicas = 1  # live data-plane Leases, this one included (failureMode: local divides by it)

    def nudge(self, _hash: str | None = None) -> None:
        """Renew now: a freshly loaded config should be acknowledged at once, not in 2 s."""
        self._wake.set()

    async def renew(self) -> None:
        body = lease_patch(self.replica, self.gateway.loaded_hash, time.time(), self.duration,
                           getattr(self.gateway, "dropped", None))
        path = path_for("coordination.k8s.io/v1", "Lease", self.namespace, self.name)
        try:
            await self.api.merge_patch(path, body)
        except ApiError as exc:
            if exc.status != 404:
                raise
            body["metadata"]["namespace"] = self.namespace
            await self.api.create(path_for("coordination.k8s.io/v1", "Lease", self.namespace), body)
        self.renewals += 1

    async def count_replicas(self) -> None:
        """Live data-plane replicas from their Leases; the last count stays when the list fails."""
        try:
            listed = await self.api.list(path_for("coordination.k8s.io/v1", "Lease", self.namespace),
                                         labelSelector=DATAPLANE_SELECTOR)
        except (TimeoutError, ApiError, OSError) as exc:
            log.debug("cannot list data-plane leases: %s", exc)
            return
        self.live_replicas = live_replica_count(listed.get("items") or (), time.time(), self.name)
        share = getattr(self.gateway, "set_live_replicas", None)  # a Supervisor passes it to its workers
        if share is not None:
            share(self.live_replicas)

    async def run(self) -> None:
        failing = False
        try:
            while True:
                self._wake.clear()
                try:
                    await self.renew()
                    if failing:
                        log.info("lease %s/%s renewed again", self.namespace, self.name)
                    failing = False
                    await self.count_replicas()
                except (TimeoutError, ApiError, OSError) as exc:
                    if not failing:
                        log.warning("cannot renew lease %s/%s: %s", self.namespace, self.name, exc)
                    failing = True
                try:
                    await asyncio.wait_for(self._wake.wait(), self.interval)
                except TimeoutError:
                    pass
        finally:
            await self.release()

    async def release(self) -> None:
        """On a clean stop the Lease goes at once, so the operator does not wait for expiry."""
        try:
            await self.api.delete(path_for("coordination.k8s.io/v1", "Lease", self.namespace, self.name))
        except (TimeoutError, ApiError, OSError):
            pass
