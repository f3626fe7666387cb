"""Kubernetes Events on kubegate objects, for the transitions a user wants to see.

Messages come from conditions and key ids only, never from secret data.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
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
