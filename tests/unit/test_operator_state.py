"""The operator's watch-fed state: what marks it dirty, and which Secret data it keeps."""

import base64

from kubegate.operator.state import ClusterState, referenced_secrets

from kubegate.resources import SourceObject


def cr(kind, name, spec, rv="1", generation=1, status=None, ns="shop"):
    return {"apiVersion": "kubegate.dev/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": ns, "resourceVersion": rv, "generation": generation},
            "spec": spec, "status": status or {}}


def secret(name, ns="shop", **data):
    return {"metadata": {"name": name, "namespace": ns},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def test_referenced_secrets_of_every_kind():
    key = SourceObject(kind="ApiKey", namespace="shop", name="a", spec={"secretRef": {"name": "ks", "key": "k"}})
    route = SourceObject(kind="GatewayRoute", namespace="shop", name="r", spec={
        "auth": {"jwt": {"secretRef": {"name": "hmac", "key": "s"}, "publicKeySecretRef": {"name": "pub"}}}})
    tls = SourceObject(kind="TLSPolicy", namespace="gw", name="public", spec={
        "certificate": {"issuerRef": {"name": "le"}}, "clientAuth": {"caSecretRef": {"name": "ca", "key": "c"}}})
    assert referenced_secrets(key, "gw") == {("shop", "ks")}
    assert referenced_secrets(route, "gw") == {("shop", "hmac"), ("shop", "pub")}
    assert referenced_secrets(tls, "gw") == {("gw", "kubegate-gw-public"), ("gw", "ca")}
    broken = SourceObject(kind="GatewayRoute", namespace="shop", name="x", spec={"auth": "nonsense"})
    assert referenced_secrets(broken, "gw") == set()


def test_status_only_updates_and_stale_replays_do_not_mark_dirty():
    state = ClusterState("gw")
    assert state.upsert_object(cr("GatewayRoute", "r", {"path": "/a"}, rv="5"))
    assert not state.upsert_object(cr("GatewayRoute", "r", {"path": "/a"}, rv="6", status={"x": 1}))
    assert not state.upsert_object(cr("GatewayRoute", "r", {"path": "/b"}, rv="4"))  # older than what we hold
    assert state.upsert_object(cr("GatewayRoute", "r", {"path": "/b"}, rv="7", generation=2))
    assert state.delete_object(cr("GatewayRoute", "r", {}))
    assert not state.delete_object(cr("GatewayRoute", "r", {}))


def test_the_echo_of_our_status_write_is_skipped_but_a_spec_change_it_overtook_is_not():
    from kubegate.resources import ObjectRef

    state = ClusterState("gw")
    ref = ObjectRef("GatewayRoute", "shop", "r")
    assert state.upsert_object(cr("GatewayRoute", "r", {"path": "/a"}, rv="5"))
    state.set_status(ref, {"observedGeneration": 1}, "6")  # our status patch's answer
    live = state.objects[ref]
    assert not state.upsert_object(cr("GatewayRoute", "r", {"path": "/a"}, rv="6", status={"observedGeneration": 1}))
    assert state.objects[ref] is live  # the echo: not parsed again, the same live status dict stays
    # A status patch that landed after a spec change whose event has not arrived yet: its answer
    # (rv 9, generation 2) overtakes the spec's own event (rv 8, dropped as older); the echo at rv 9
    # carries generation 2 and must be read.
    state.set_status(ref, {"observedGeneration": 1}, "9")
    assert not state.upsert_object(cr("GatewayRoute", "r", {"path": "/b"}, rv="8", generation=2))
    assert state.upsert_object(cr("GatewayRoute", "r", {"path": "/b"}, rv="9", generation=2))
    assert state.objects[ref].source.spec == {"path": "/b"}


def test_only_referenced_secret_data_is_kept():
    state = ClusterState("gw")
    assert not state.secret_event("ADDED", secret("unrelated", token="t0p"))
    assert state.secrets == {}
    state.upsert_object(cr("ApiKey", "a", {"secretRef": {"name": "ks", "key": "k"}}))
    assert state.unknown_secrets() == {("shop", "ks")}
    state.record_fetched_secret(("shop", "ks"), None)
    assert state.unknown_secrets() == set() and ("shop", "ks") in state.absent_secrets
    assert state.secret_event("ADDED", secret("ks", k="kg_x"))
    assert state.translation_input().secrets == {("shop", "ks"): {"k": b"kg_x"}}
    assert not state.secret_event("MODIFIED", secret("ks", k="kg_x"))  # same data
    state.delete_object(cr("ApiKey", "a", {}))
    assert state.referenced == set() and state.secrets == {}  # dropped once nothing references it


def test_referenced_secrets_follow_each_object_incrementally():
    state = ClusterState("gw")
    state.upsert_object(cr("ApiKey", "a", {"secretRef": {"name": "ks", "key": "k"}}))
    assert state.referenced == {("shop", "ks")}
    state.upsert_object(cr("GatewayRoute", "r", {"path": "/a"}))  # references nothing
    assert state.referenced == {("shop", "ks")}
    state.upsert_object(cr("ApiKey", "a", {"secretRef": {"name": "other", "key": "k"}}, rv="2", generation=2))
    assert state.referenced == {("shop", "other")}
    state.upsert_object(cr("GatewayRoute", "r", {"path": "/a", "auth": {"jwt": {"secretRef": {"name": "h"}}}},
                           rv="3", generation=2))
    assert state.referenced == {("shop", "other"), ("shop", "h")}
    state.delete_object(cr("ApiKey", "a", {}))
    assert state.referenced == {("shop", "h")}
