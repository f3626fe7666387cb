"""The dev cluster itself: real API server, RBAC on, TokenRequest works, CRDs Established."""

from __future__ import annotations

import json


def test_server_version_is_the_pinned_release(cluster):
    from kubegate.devcluster import versions

    out = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert out["serverVersion"]["gitVersion"] == versions()[0]


def test_kubegate_and_fixture_crds_are_established(cluster):
    names = cluster.kubectl("get", "crd", "-o", "jsonpath={.items[*].metadata.name}").stdout.split()
    for crd in ("gatewayroutes.kubegate.dev", "ratelimitpolicies.kubegate.dev", "apikeys.kubegate.dev",
                "tlspolicies.kubegate.dev", "certificates.cert-manager.io"):
        assert crd in names
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=5s", "crd/gatewayroutes.kubegate.dev")


def test_service_account_token_authenticates_and_rbac_is_enforced(cluster, namespace):
    cluster.kubectl("create", "serviceaccount", "probe", "-n", namespace)
    token = cluster.token_for(namespace, "probe")
    who = cluster.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", as_token=token)
    assert who.stdout == f"system:serviceaccount:{namespace}:probe"
    denied = cluster.kubectl("get", "secrets", "-n", namespace, as_token=token, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr


def test_kubegate_system_is_installed_from_manifests(cluster):
    sas = cluster.kubectl("get", "serviceaccounts", "-n", "kubegate-system",
                          "-o", "jsonpath={.items[*].metadata.name}").stdout.split()
    assert {"kubegate-operator", "kubegate-dataplane"} <= set(sas)
