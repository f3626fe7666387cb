"""The data plane's count of live replicas (it divides a failureMode: local limit)."""

from __future__ import annotations

import time

from kubegate.dataplane.heartbeat import lease_patch, live_replica_count


def _lease(replica: str, renewed: float, duration: int = 10) -> dict:
    return lease_patch(replica, "h", renewed, duration)


def test_live_replicas_are_the_unexpired_dataplane_leases_and_always_this_one():
    now = time.time()
    own = _lease("a", now)["metadata"]["name"]
    leases = [_lease("a", now), _lease("b", now - 5), _lease("c", now - 11),  # c expired a second ago
              {"metadata": {"name": "kubegate-operator", "labels": {}}, "spec": {"renewTime": "x"}}]
    assert live_replica_count(leases, now, own) == 2
    assert live_replica_count([], now, own) == 1  # before its own Lease shows up in a list
    assert live_replica_count([_lease("b", now)], now, own) == 2
