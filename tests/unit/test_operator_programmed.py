"""Which generations a live data-plane replica has acknowledged."""

from kubegate.operator.programmed import (
    GenerationHistory,
    ReplicaLease,
    acknowledgement,
    live_hashes,
    next_expiry,
    replica_lease,
)

from kubegate.config import HASH_ANNOTATION

NOW = 1_800_000_000.0


def lease(name, config_hash, renewed, duration=10.0):
    return ReplicaLease(name=name, config_hash=config_hash, renewed_at=renewed, duration=duration)


def test_replica_lease_parses_a_dataplane_lease_and_ignores_others():
    obj = {"metadata": {"name": "kubegate-dataplane-a", "labels": {"app.kubernetes.io/component": "dataplane"},
                        "annotations": {HASH_ANNOTATION: "h1"}},
           "spec": {"renewTime": "2027-01-15T08:00:00.123456Z", "leaseDurationSeconds": 10}}
    parsed = replica_lease(obj)
    assert parsed.name == "kubegate-dataplane-a" and parsed.config_hash == "h1" and parsed.duration == 10
    assert abs(parsed.renewed_at - 1800000000.123456) < 1e-3
    assert replica_lease({**obj, "metadata": {**obj["metadata"], "labels": {}}}) is None
    assert replica_lease({**obj, "spec": {}}) is None


def test_only_live_leases_count():
    leases = [lease("a", "h1", NOW - 5), lease("b", "h1", NOW - 1), lease("c", "h2", NOW - 11)]
    assert live_hashes(leases, NOW) == {"h1": 2}
    assert next_expiry(leases, NOW) == NOW + 5
    assert next_expiry([lease("c", "h2", NOW - 11)], NOW) is None


def test_acknowledged_only_for_the_current_generation():
    history = GenerationHistory()
    history.record("old", {"GatewayRoute/shop/a": 1})
    history.record("new", {"GatewayRoute/shop/a": 2, "GatewayRoute/shop/b": 1})
    assert acknowledgement("GatewayRoute/shop/a", 2, {"old": 1}, history).acknowledged_by == 0
    assert acknowledgement("GatewayRoute/shop/a", 2, {"old": 1, "new": 2}, history).acknowledged_by == 2
    ack = acknowledgement("GatewayRoute/shop/c", 1, {"new": 1, "unknown": 1}, history)
    assert (ack.live_replicas, ack.acknowledged_by) == (2, 0)


def test_history_is_bounded_oldest_first():
    history = GenerationHistory(limit=3)
    for i in range(5):
        history.record(f"h{i}", {"k": i})
    assert len(history) == 3 and history.get("h0") is None and history.get("h4") == {"k": 4}
    history.record("h2", {"k": 2})  # re-recorded: becomes the newest
    history.record("h5", {"k": 5})
    assert history.get("h2") is not None and history.get("h3") is None
