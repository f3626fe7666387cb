"""Leader election decisions on the operator Lease."""

from kubegate.operator.leader import decide, lease_body

NOW = 1_800_000_000.0


def held(holder, renewed="2027-01-15T08:00:00.000000Z", duration=8):
    return {"spec": {"holderIdentity": holder, "renewTime": renewed, "leaseDurationSeconds": duration}}


def test_decisions():
    assert decide(None, "me", NOW) == "create"
    assert decide(held("me"), "me", NOW + 100) == "renew"
    assert decide(held("other"), "me", NOW + 3) == "follow"
    assert decide(held("other"), "me", NOW + 8) == "acquire"
    assert decide(held(""), "me", NOW) == "acquire"
    assert decide({"spec": {"holderIdentity": "other"}}, "me", NOW) == "acquire"


def test_takeover_counts_a_transition_and_keeps_the_resource_version():
    previous = {"metadata": {"name": "l", "namespace": "ns", "resourceVersion": "42"},
                **held("other"), }
    previous["spec"]["leaseTransitions"] = 3
    body = lease_body("ns", "l", "me", NOW, 8, previous)
    assert body["metadata"]["resourceVersion"] == "42"  # optimistic concurrency: a racing writer gets 409
    assert body["spec"]["holderIdentity"] == "me" and body["spec"]["leaseTransitions"] == 4
    assert body["spec"]["renewTime"] == body["spec"]["acquireTime"] == "2027-01-15T08:00:00.000000Z"
    renewed = lease_body("ns", "l", "me", NOW + 2, 8, body)
    assert renewed["spec"]["leaseTransitions"] == 4 and renewed["spec"]["acquireTime"] == body["spec"]["acquireTime"]
