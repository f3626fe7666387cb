"""Generate the Secret of an ApiKey whose Secret does not exist yet.

The key is created here, written once into the ApiKey's own namespace, and
never copied anywhere else: the translator reads it back from that Secret and
passes on only its hash. A new ApiKey gets ``GRACE_SECONDS`` for ``kubectl
apply`` to create the user's own Secret before one is generated.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from typing import Any

from kubegate.apikeys import generate_api_key, key_hash, key_id
from kubegate.kubeapi import ApiError, KubeApi, path_for
from kubegate.names import MANAGED_BY_LABEL
from kubegate.resources import SourceObject
from kubegate.spec import API_VERSION

from .apply import API_KEY_LABEL
from .events import post_event
from .programmed import parse_time
from .state import ClusterState

log = logging.getLogger("kubegate.operator.reconcile")

GRACE_SECONDS = 2.0  # let `kubectl apply` create a user's own key Secret before generating one


def api_key_secret(apikey: SourceObject, key: str) -> dict[str, Any] | None:
    """The Secret holding ``key`` for ``apikey`` (pure); None if the ApiKey has no usable secretRef."""
    ref = (apikey.spec or {}).get("secretRef") or {}
    if not isinstance(ref, dict) or not ref.get("name") or not ref.get("key"):
        return None
    owner = [{"apiVersion": API_VERSION, "kind": "ApiKey", "name": apikey.name, "uid": apikey.uid,
              "controller": True, "blockOwnerDeletion": False}] if apikey.uid else []
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": ref["name"],
            "namespace": apikey.namespace,
            "labels": {MANAGED_BY_LABEL: "kubegate", API_KEY_LABEL: apikey.name},
            "ownerReferences": owner,
        },
        "data": {ref["key"]: base64.b64encode(key.encode()).decode()},
    }


def new_api_key_secret(apikey: SourceObject) -> tuple[dict[str, Any], str] | None:
    """A fresh Secret and the non-secret key id of the key in it."""
    key = generate_api_key()
    secret = api_key_secret(apikey, key)
    return (secret, key_id(key_hash(key))) if secret is not None else None


def secret_ref(apikey: SourceObject) -> tuple[str, str] | None:
    ref = (apikey.spec or {}).get("secretRef") or {}
    return (apikey.namespace, ref["name"]) if isinstance(ref, dict) and ref.get("name") else None


async def generate_missing(api: KubeApi, state: ClusterState, identity: str,
                           retry: Callable[[], None]) -> int:
    """Create the Secret of every ApiKey whose Secret is known to be absent; how many were made.

    ``retry`` is called once the grace period of a too-young ApiKey has passed.
    """
    if not state.absent_secrets:  # every referenced Secret exists: nothing to make (and no pass over 10,000 objects)
        return 0
    made, now = 0, time.time()
    for live in list(state.objects.values()):
        src = live.source
        if src.kind != "ApiKey":
            continue
        where = secret_ref(src)
        if where is None or where not in state.absent_secrets:
            continue
        age = now - (parse_time(src.creation_timestamp) or 0.0)
        if age < GRACE_SECONDS:
            asyncio.get_running_loop().call_later(GRACE_SECONDS - age + 0.1, retry)
            continue
        fresh = new_api_key_secret(src)
        if fresh is None:
            continue
        secret, kid = fresh
        try:
            created = await api.create(path_for("v1", "Secret", src.namespace), secret)
        except ApiError as exc:
            if exc.status == 409:  # somebody created it meanwhile: read theirs
                state.absent_secrets.discard(where)
                continue
            log.warning("cannot create Secret %s/%s for ApiKey %s: %s", *where, src.name, exc)
            continue
        state.record_fetched_secret(where, created)
        made += 1
        log.info("generated API key Secret %s/%s for ApiKey %s (%s)", *where, src.name, kid)
        await post_event(api, live.involved, "Normal", "KeyGenerated",
                         f"generated Secret {where[1]} with a new API key ({kid})", identity)
    return made
