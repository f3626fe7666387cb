"""Generate the Secret of an ApiKey whose Secret does not exist yet.

The key is created here, written once into the ApiKey's own namespace, and
never copied anywhere else: the translator reads it back from that Secret and
passes on only its hash.
"""

from __future__ import annotations

import base64
from typing import Any

from kubegate.apikeys import generate_api_key, key_hash, key_id
from kubegate.resources import SourceObject
from kubegate.spec import API_VERSION

from .apply import API_KEY_LABEL, MANAGED_BY


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
            "labels": {MANAGED_BY: "kubegate", API_KEY_LABEL: apikey.name},
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
