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


def test_an_object_a_live_replica_could_not_load_is_programmed_false_with_its_reason():
    """Defence in depth: the data plane names what it left out on its Lease; the status says so
    (not Programmed=Unknown forever), only for the generation that replica was given."""
    from kubegate.dataplane.heartbeat import lease_patch
    from kubegate.operator.programmed import live_refusals
    from kubegate.operator.status import desired_conditions

    from kubegate.resources import Condition, ObjectRef, ObjectResult

    history = GenerationHistory()
    history.record("h1", {"GatewayRoute/shop/a": 3, "GatewayRoute/shop/b": 1})
    body = lease_patch("replica-1", "h1", NOW, 10, {"GatewayRoute/shop/a": "jwt key does not fit algorithm RS256"})
    body["spec"]["renewTime"] = "2027-01-15T08:00:00.000000Z"
    parsed = replica_lease(body)
    now = parsed.renewed_at + 1
    hashes, refusals = live_hashes([parsed], now), live_refusals([parsed], now)
    ok = Condition(type="Accepted", status="True", reason="Accepted", message="")
    resolved = Condition(type="ResolvedRefs", status="True", reason="ResolvedRefs", message="")

    def conditions(name, generation):
        ack = acknowledgement(f"GatewayRoute/shop/{name}", generation, hashes, history, refusals)
        result = ObjectResult(ref=ObjectRef("GatewayRoute", "shop", name), generation=generation, accepted=ok,
                              resolved_refs=resolved, programmable=True)
        return {c.type: c for c in desired_conditions(result, ack)}

    refused = conditions("a", 3)
    assert refused["Programmed"].status == "False" and refused["Programmed"].reason == "DataPlaneRefused"
    assert "does not fit algorithm RS256" in refused["Programmed"].message
    assert refused["Ready"].status == "False" and refused["Stalled"].status == "True"
    assert conditions("b", 1)["Programmed"].status == "True"  # the rest of that config is programmed
    assert conditions("a", 4)["Programmed"].status == "Unknown"  # a newer generation is not refused by it
    assert replica_lease(lease_patch("r", "h1", NOW, 10))  # no annotation content when nothing was dropped
    assert lease_patch("r", "h1", NOW, 10)["metadata"]["annotations"]["kubegate.dev/dropped"] == ""
