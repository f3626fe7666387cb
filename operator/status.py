"""Status of a kubegate object from the translator's verdict and programmed facts (pure).

Conditions follow API.md (Accepted, ResolvedRefs, Programmed, Ready) plus the
kstatus pair (Reconciling while the object is not Ready for a reason that
can still resolve by itself: a missing reference, a data plane that has not
loaded this generation; Stalled while the spec itself is rejected, which only
a spec change can fix). ``lastTransitionTime`` moves only when a condition's status
changes, so an unchanged status is byte-identical and never re-written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubegate.resources import (
    ACCEPTED,
    CERTIFICATE_READY,
    PROGRAMMED,
    READY,
    RECONCILING,
    STALLED,
    Condition,
    ObjectResult,
)

from .programmed import Acknowledgement

NO_DATA_PLANE = "no data-plane replica is running"
PROGRAMMED_MESSAGE = "loaded by a live data-plane replica"
OPTIONAL_FIELDS = ("keyId", "certificate", "notAfter")  # removed from a status when no longer true


@dataclass(frozen=True)
class CertificateFacts:
    """What cert-manager says about a TLSPolicy's generated Certificate."""

    name: str
    ready: str = "Unknown"  # status of the Certificate's Ready condition
    reason: str = ""
    not_after: str | None = None


def programmed_condition(result: ObjectResult, ack: Acknowledgement) -> Condition:
    if result.accepted.status != "True":
        return Condition(type=PROGRAMMED, status="False", reason="Invalid",
                         message=f"not programmed: {result.accepted.message}".strip())
    if not result.programmable:
        reason = result.resolved_refs.reason if result.resolved_refs.status != "True" else "NotProgrammable"
        return Condition(type=PROGRAMMED, status="False", reason=reason,
                         message=f"not programmed: {result.resolved_refs.message}".strip())
    if ack.refused:
        return Condition(type=PROGRAMMED, status="False", reason="DataPlaneRefused",
                         message=f"the data plane could not load generation {result.generation}: {ack.refused}")
    if ack.live_replicas == 0:
        return Condition(type=PROGRAMMED, status="False", reason="NoDataPlane", message=NO_DATA_PLANE)
    if ack.acknowledged_by == 0:
        return Condition(type=PROGRAMMED, status="Unknown", reason="Pending",
                         message=f"waiting for a data-plane replica to load generation {result.generation}")
    # No replica count in the message: a replica coming or going would rewrite every status it leaves True.
    return Condition(type=PROGRAMMED, status="True", reason="Programmed", message=PROGRAMMED_MESSAGE)


def ready_condition(conditions: Sequence[Condition]) -> Condition:
    for cond in conditions:
        if cond.status != "True":
            return Condition(type=READY, status="False", reason=cond.reason, message=cond.message)
    return Condition(type=READY, status="True", reason="Ready",
                     message="accepted, references resolved, and loaded by the data plane")


def desired_conditions(result: ObjectResult, ack: Acknowledgement) -> list[Condition]:
    programmed = programmed_condition(result, ack)
    core = [result.accepted, result.resolved_refs, programmed]
    ready = ready_condition(core)
    stalled = result.accepted.status == "False" or bool(ack.refused)  # waiting will not help either
    # Not Ready for any other reason (a missing reference, no or a slow data
    # plane) is work in progress: kstatus (Flux) must keep waiting, not report
    # Current, which it would do if neither Reconciling nor Stalled were True.
    reconciling = ready.status != "True" and not stalled
    return [
        *core,
        ready,
        Condition(type=RECONCILING, status="True" if reconciling else "False",
                  reason=ready.reason if reconciling else "Idle",
                  message=ready.message if reconciling else ""),
        Condition(type=STALLED, status="True" if stalled else "False",
                  reason=(programmed.reason if ack.refused else result.accepted.reason) if stalled else "Idle",
                  message=(programmed.message if ack.refused else result.accepted.message) if stalled else ""),
    ]


def render_conditions(conditions: Sequence[Condition], generation: int, previous: Sequence[Mapping[str, Any]],
                      now: str) -> list[dict[str, Any]]:
    """Conditions as API objects; keeps lastTransitionTime when a condition's status did not change."""
    before = {c.get("type"): c for c in previous or ()}
    out = []
    for cond in conditions:
        old = before.get(cond.type)
        since = old.get("lastTransitionTime") if old and old.get("status") == cond.status else None
        out.append({
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": since or now,
            "observedGeneration": generation,
        })
    return out


def desired_status(result: ObjectResult, ack: Acknowledgement, previous: Mapping[str, Any] | None, now: str,
                   certificate: CertificateFacts | None = None) -> dict[str, Any]:
    """The full ``status`` of one object."""
    previous = previous or {}
    conditions = desired_conditions(result, ack)
    if certificate is not None:
        conditions.append(certificate_condition(certificate))
    status: dict[str, Any] = {
        "observedGeneration": result.generation,
        "conditions": render_conditions(conditions, result.generation, previous.get("conditions") or (), now),
    }
    if result.key_id:
        status["keyId"] = result.key_id
    if certificate is not None:
        status["certificate"] = certificate.name
        if certificate.not_after:
            status["notAfter"] = certificate.not_after
    return status


def certificate_condition(cert: CertificateFacts) -> Condition:
    """The generated Certificate's own Ready condition, mirrored for users (informative, not part of Ready)."""
    if cert.ready == "True":
        return Condition(type=CERTIFICATE_READY, status="True", reason=cert.reason or "Ready",
                         message=f"Certificate {cert.name} is ready")
    return Condition(type=CERTIFICATE_READY, status="False" if cert.ready == "False" else "Unknown",
                     reason=cert.reason or "Pending", message=f"Certificate {cert.name} is not ready yet")


def status_changed(live: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    """Whether the managed part of a live status differs from the desired one."""
    live = live or {}
    return any(live.get(k) != v for k, v in desired.items()) or any(
        k in live for k in OPTIONAL_FIELDS if k not in desired
    )


def condition_of(status: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    for cond in (status or {}).get("conditions") or ():
        if cond.get("type") == type_:
            return cond
    return None


@dataclass(frozen=True)
class EventNote:
    type: str  # Normal | Warning
    reason: str
    message: str


def transition_events(previous: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> list[EventNote]:
    """Events worth telling a user: a spec newly refused, Ready gained or lost."""
    notes = []
    old_acc, new_acc = condition_of(previous, ACCEPTED), condition_of(desired, ACCEPTED)
    if new_acc and new_acc["status"] == "False" and (
        not old_acc or old_acc.get("status") != "False" or old_acc.get("reason") != new_acc["reason"]
    ):
        notes.append(EventNote("Warning", new_acc["reason"], new_acc["message"]))
    old_ready, new_ready = condition_of(previous, "Ready"), condition_of(desired, "Ready")
    if new_ready and new_ready["status"] == "True" and (not old_ready or old_ready.get("status") != "True"):
        notes.append(EventNote("Normal", "Ready", new_ready["message"]))
    elif new_ready and new_ready["status"] != "True" and old_ready and old_ready.get("status") == "True":
        notes.append(EventNote("Warning", "NotReady", f"{new_ready['reason']}: {new_ready['message']}"))
    return notes
