"""kopf registration: watch events feed the in-memory state and wake the reconciler.

Only ``@kopf.on.event`` handlers: kopf then writes nothing into users' objects
(no finalizers, no last-handled-configuration annotation, no progress).
Handlers are ``async`` so they run on the event loop, never in a thread,
and touch the state without locks.
"""

from __future__ import annotations

from typing import Any

import kopf

from kubegate.spec import GROUP, PLURALS, VERSION

from .reconcile import Reconciler
from .state import ClusterState


def build_registry(state: ClusterState, reconciler: Reconciler) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    # Same credentials and library as kubegate.kubeapi: kubeconfig or the in-cluster service account.
    kopf.on.login(registry=registry, id="login")(kopf.login_via_async_client)

    for kind, plural in PLURALS.items():
        def on_custom_resource(event: dict[str, Any], _kind: str = kind, **_: Any) -> None:
            body = dict(event["object"])
            body.setdefault("kind", _kind)
            if event.get("type") == "DELETED":
                changed = state.delete_object(body)
            else:
                changed = state.upsert_object(body)
            if changed:
                reconciler.mark(config=True)

        kopf.on.event(GROUP, VERSION, plural, registry=registry, id=f"watch-{plural}")(_async(on_custom_resource))

    async def on_service(event: dict[str, Any], **_: Any) -> None:
        body = event["object"]
        changed = state.delete_service(body) if event.get("type") == "DELETED" else state.upsert_service(body)
        if changed:
            reconciler.mark(config=True)

    async def on_secret(event: dict[str, Any], **_: Any) -> None:
        if state.secret_event(event.get("type") or "ADDED", event["object"]):
            reconciler.mark(config=True)

    kopf.on.event("", "v1", "services", registry=registry, id="watch-services")(on_service)
    kopf.on.event("", "v1", "secrets", registry=registry, id="watch-secrets")(on_secret)
    return registry


def _async(fn: Any) -> Any:
    async def handler(**kwargs: Any) -> None:
        fn(**kwargs)

    handler.__name__ = fn.__name__
    return handler
