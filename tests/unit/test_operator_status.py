"""Status conditions from the translator's verdict and the data plane's acknowledgements."""

from kubegate.operator.programmed import Acknowledgement
from kubegate.operator.status import (
    NO_DATA_PLANE,
    CertificateFacts,
    condition_of,
    desired_status,
    status_changed,
    transition_events,
)

from kubegate.resources import Condition, ObjectRef, ObjectResult

REF = ObjectRef("GatewayRoute", "shop", "orders")
OK_ACCEPTED = Condition(type="Accepted", status="True", reason="Accepted")
OK_REFS = Condition(type="ResolvedRefs", status="True", reason="ResolvedRefs")


def result(accepted=OK_ACCEPTED, refs=OK_REFS, programmable=True, generation=3, **extra):
    return ObjectResult(ref=REF, generation=generation, accepted=accepted, resolved_refs=refs,
                        programmable=programmable, **extra)


def conds(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_programmed_and_ready_when_a_live_replica_acknowledged_this_generation():
    status = desired_status(result(), Acknowledgement(2, 1), None, "2026-01-01T00:00:00Z")
    assert status["observedGeneration"] == 3
    assert conds(status) == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs"),
        "Programmed": ("True", "Programmed"), "Ready": ("True", "Ready"),
        "Reconciling": ("False", "Idle"), "Stalled": ("False", "Idle"),
    }
    assert all(c["observedGeneration"] == 3 for c in status["conditions"])
    # Replicas coming and going (2 live, 1 or 3 acknowledging) change nothing a status write would carry.
    for ack in (Acknowledgement(1, 1), Acknowledgement(3, 2), Acknowledgement(3, 3)):
        assert desired_status(result(), ack, status, "2026-01-02T00:00:00Z") == status


def test_no_live_replica_is_no_data_plane():
    status = desired_status(result(), Acknowledgement(0, 0), None, "t")
    programmed = condition_of(status, "Programmed")
    assert (programmed["status"], programmed["reason"], programmed["message"]) == ("False", "NoDataPlane",
                                                                                   NO_DATA_PLANE)
    assert conds(status)["Ready"] == ("False", "NoDataPlane")


def test_pending_is_reconciling_not_stalled():
    status = desired_status(result(), Acknowledgement(1, 0), None, "t")
    assert conds(status)["Programmed"] == ("Unknown", "Pending")
    assert conds(status)["Reconciling"] == ("True", "Pending")
    assert conds(status)["Stalled"] == ("False", "Idle")
    assert conds(status)["Ready"] == ("False", "Pending")


def test_rejected_spec_is_stalled_and_ready_false_with_the_first_failing_reason():
    refused = Condition(type="Accepted", status="False", reason="Conflicted", message="path taken by shop/older")
    status = desired_status(result(accepted=refused, programmable=False), Acknowledgement(1, 1), None, "t")
    assert conds(status)["Stalled"] == ("True", "Conflicted")
    assert conds(status)["Programmed"] == ("False", "Invalid")
    ready = condition_of(status, "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "Conflicted", "path taken by shop/older")


def test_unresolved_reference_reports_the_reference_reason():
    missing = Condition(type="ResolvedRefs", status="False", reason="SecretNotFound", message="Secret shop/x not found")
    status = desired_status(result(refs=missing, programmable=False), Acknowledgement(1, 0), None, "t")
    assert conds(status)["Programmed"] == ("False", "SecretNotFound")
    assert conds(status)["Ready"] == ("False", "SecretNotFound")
    assert conds(status)["Stalled"] == ("False", "Idle")


def test_last_transition_time_moves_only_when_the_status_changes():
    first = desired_status(result(), Acknowledgement(1, 0), None, "2026-01-01T00:00:00Z")
    second = desired_status(result(), Acknowledgement(1, 0), first, "2026-01-01T00:05:00Z")
    assert second == first and not status_changed(first, second)
    third = desired_status(result(), Acknowledgement(1, 1), second, "2026-01-01T00:09:00Z")
    times = {c["type"]: c["lastTransitionTime"] for c in third["conditions"]}
    assert times["Accepted"] == "2026-01-01T00:00:00Z"
    assert times["Programmed"] == times["Ready"] == times["Reconciling"] == "2026-01-01T00:09:00Z"
    assert status_changed(second, third)


def test_api_key_and_certificate_facts_are_shown():
    status = desired_status(result(key_id="ak_0123456789"), Acknowledgement(1, 1), None, "t",
                            CertificateFacts("kubegate-shop-public", "True", "Ready", "2027-01-01T00:00:00Z"))
    assert status["keyId"] == "ak_0123456789"
    assert (status["certificate"], status["notAfter"]) == ("kubegate-shop-public", "2027-01-01T00:00:00Z")
    assert conds(status)["CertificateReady"] == ("True", "Ready")
    assert conds(status)["Ready"] == ("True", "Ready")
    pending = desired_status(result(), Acknowledgement(1, 1), None, "t", CertificateFacts("c"))
    assert conds(pending)["CertificateReady"] == ("Unknown", "Pending") and "notAfter" not in pending
    assert status_changed({**status, "extra": 1}, status) is False
    assert status_changed(status, {k: v for k, v in status.items() if k != "keyId"}) is True


def test_events_for_refusal_and_ready_transitions_only():
    ready = desired_status(result(), Acknowledgement(1, 1), None, "t")
    assert [(e.type, e.reason) for e in transition_events(None, ready)] == [("Normal", "Ready")]
    assert transition_events(ready, ready) == []
    lost = desired_status(result(), Acknowledgement(0, 0), ready, "t")
    assert [(e.type, e.reason) for e in transition_events(ready, lost)] == [("Warning", "NotReady")]
    refused = Condition(type="Accepted", status="False", reason="Conflicted", message="m")
    conflicted = desired_status(result(accepted=refused, programmable=False), Acknowledgement(1, 1), ready, "t")
    notes = transition_events(ready, conflicted)
    assert [(e.type, e.reason) for e in notes] == [("Warning", "Conflicted"), ("Warning", "NotReady")]
    assert transition_events(conflicted, conflicted) == []


def test_missing_reference_and_missing_data_plane_are_reconciling_so_kstatus_keeps_waiting():
    missing = Condition(type="ResolvedRefs", status="False", reason="SecretNotFound", message="Secret shop/x")
    status = desired_status(result(refs=missing, programmable=False), Acknowledgement(1, 1), None, "t")
    assert conds(status)["Reconciling"] == ("True", "SecretNotFound")
    assert conds(status)["Stalled"] == ("False", "Idle")
    no_dp = desired_status(result(), Acknowledgement(0, 0), None, "t")
    assert conds(no_dp)["Reconciling"] == ("True", "NoDataPlane")
    assert conds(no_dp)["Stalled"] == ("False", "Idle")
