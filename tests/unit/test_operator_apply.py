"""Skip-unchanged, hand-edit detection and garbage collection of generated objects."""

from kubegate.operator.apply import (
    API_KEY_LABEL,
    CONTENT_HASH,
    garbage,
    needs_apply,
    object_key,
    with_content_hash,
)

from kubegate.names import MANAGED_BY_LABEL

CM = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kubegate-config", "namespace": "gw"},
      "data": {"hash": "abc"}}


def live_of(desired, rv="10", managers=("kubegate",)):
    meta = {**desired["metadata"], "resourceVersion": rv,
            "managedFields": [{"manager": m, "operation": "Apply"} for m in managers]}
    return {**desired, "metadata": meta}


def test_content_hash_is_stable_and_tracks_content():
    a, b = with_content_hash(CM), with_content_hash(CM)
    assert a == b and a["metadata"]["labels"][MANAGED_BY_LABEL] == "kubegate"
    changed = with_content_hash({**CM, "data": {"hash": "def"}})
    assert changed["metadata"]["annotations"][CONTENT_HASH] != a["metadata"]["annotations"][CONTENT_HASH]
    assert with_content_hash(a) == a  # idempotent
    assert CONTENT_HASH not in CM.get("metadata", {}).get("annotations", {})  # input untouched


def test_needs_apply():
    desired = with_content_hash(CM)
    assert needs_apply(desired, None, None)  # deleted by hand / first time
    assert not needs_apply(desired, live_of(desired), "10")  # settled
    assert not needs_apply(desired, live_of(desired, rv="11"), None)  # after a restart, only we manage it
    assert needs_apply(desired, live_of(desired, rv="11", managers=("kubegate", "kubectl-edit")), "10")
    stale = live_of(with_content_hash({**CM, "data": {"hash": "old"}}))
    assert needs_apply(desired, stale, "10")


def test_garbage_spares_desired_objects_and_api_key_secrets():
    desired = with_content_hash(CM)
    stale_cert = {"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
                  "metadata": {"name": "kubegate-shop-old", "namespace": "gw", "labels": {MANAGED_BY_LABEL: "kubegate"}}}
    key_secret = {"apiVersion": "v1", "kind": "Secret",
                  "metadata": {"name": "k", "namespace": "gw", "labels": {MANAGED_BY_LABEL: "kubegate", API_KEY_LABEL: "a"}}}
    foreign = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x", "namespace": "gw", "labels": {}}}
    assert garbage([desired, stale_cert, key_secret, foreign], {object_key(desired)}) == [stale_cert]
