"""Least privilege, proven by the real RBAC authorizer of the dev cluster (manifests/ applied).

`kubectl auth can-i --as=<ServiceAccount>` asks the API server's authorizer
(SelfSubjectAccessReview via impersonation), so these are the permissions the
operator and the data plane really have, not a reading of the YAML.
"""

from __future__ import annotations

import pytest

SYSTEM = "kubegate-system"
OPERATOR = f"system:serviceaccount:{SYSTEM}:kubegate-operator"
DATAPLANE = f"system:serviceaccount:{SYSTEM}:kubegate-dataplane"
USER_NS = "shop"  # any user namespace; RBAC answers without it existing


def can_i(cluster, who: str, *args: str) -> bool:
    proc = cluster.kubectl("auth", "can-i", *args, f"--as={who}", check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), proc.stderr
    return answer == "yes"


OPERATOR_MUST = [
    ("list", "gatewayroutes.kubegate.dev", "-A"),
    ("watch", "ratelimitpolicies.kubegate.dev", "-A"),
    ("get", "apikeys.kubegate.dev", "-n", USER_NS),
    ("list", "tlspolicies.kubegate.dev", "-A"),
    ("patch", "gatewayroutes.kubegate.dev", "--subresource=status", "-n", USER_NS),
    ("update", "tlspolicies.kubegate.dev", "--subresource=status", "-n", USER_NS),
    ("patch", "apikeys.kubegate.dev", "--subresource=status", "-n", USER_NS),
    ("patch", "ratelimitpolicies.kubegate.dev", "--subresource=status", "-n", USER_NS),
    ("list", "secrets", "-A"),  # referenced Secrets live in any namespace
    ("watch", "services", "-A"),
    ("create", "secrets", "-n", USER_NS),  # an ApiKey's Secret when it is absent
    ("create", "configmaps", "-n", SYSTEM),
    ("patch", "configmaps", "-n", SYSTEM),
    ("delete", "configmaps", "-n", SYSTEM),
    ("patch", "secrets", "-n", SYSTEM),
    ("create", "leases.coordination.k8s.io", "-n", SYSTEM),
    ("update", "leases.coordination.k8s.io", "-n", SYSTEM),
    ("watch", "leases.coordination.k8s.io", "-n", SYSTEM),
    ("create", "certificates.cert-manager.io", "-n", SYSTEM),
    ("delete", "certificates.cert-manager.io", "-n", SYSTEM),
    ("create", "networkpolicies.networking.k8s.io", "-n", USER_NS),
    ("delete", "networkpolicies.networking.k8s.io", "-n", USER_NS),
    ("list", "networkpolicies.networking.k8s.io", "-A"),
    ("create", "events", "-n", USER_NS),
    ("create", "events.events.k8s.io", "-n", USER_NS),
    # The API server's endpoints, to scope the data plane's egress policy (namespace default only).
    ("get", "endpointslices.discovery.k8s.io", "-n", "default"),
    ("list", "endpointslices.discovery.k8s.io", "-n", "default"),
    ("watch", "endpointslices.discovery.k8s.io", "-n", "default"),
]

OPERATOR_MUST_NOT = [
    ("delete", "pods", "-n", SYSTEM),
    ("create", "pods", "-n", USER_NS),
    ("create", "pods", "--subresource=exec", "-n", SYSTEM),
    ("get", "pods", "--subresource=log", "-n", USER_NS),
    ("update", "gatewayroutes.kubegate.dev", "-n", USER_NS),  # never writes a user's spec
    ("patch", "apikeys.kubegate.dev", "-n", USER_NS),
    ("delete", "tlspolicies.kubegate.dev", "-n", USER_NS),
    ("create", "gatewayroutes.kubegate.dev", "-n", USER_NS),
    ("update", "secrets", "-n", USER_NS),  # creates absent ApiKey Secrets, never rewrites user Secrets
    ("delete", "secrets", "-n", USER_NS),
    ("patch", "configmaps", "-n", USER_NS),
    ("create", "certificates.cert-manager.io", "-n", USER_NS),
    ("create", "leases.coordination.k8s.io", "-n", USER_NS),
    ("create", "services", "-n", USER_NS),
    ("create", "deployments.apps", "-n", SYSTEM),
    ("bind", "clusterroles.rbac.authorization.k8s.io"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io", "-n", SYSTEM),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("impersonate", "serviceaccounts", "-n", SYSTEM),
    ("create", "serviceaccounts", "--subresource=token", "-n", SYSTEM),
    ("delete", "namespaces"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io"),
    ("*", "*", "-A"),
    ("list", "endpointslices.discovery.k8s.io", "-A"),
    ("list", "endpointslices.discovery.k8s.io", "-n", USER_NS),
    ("list", "endpointslices.discovery.k8s.io", "-n", SYSTEM),
    ("create", "endpointslices.discovery.k8s.io", "-n", "default"),
    ("update", "endpointslices.discovery.k8s.io", "-n", "default"),
    ("list", "endpoints", "-n", "default"),
    ("list", "configmaps", "-n", "default"),
]

DATAPLANE_MUST = [
    ("get", "configmaps/kubegate-config", "-n", SYSTEM),
    ("watch", "configmaps/kubegate-config", "-n", SYSTEM),
    ("list", "configmaps/kubegate-config", "-n", SYSTEM),
    ("get", "secrets/kubegate-secrets", "-n", SYSTEM),
    ("watch", "secrets/kubegate-secrets", "-n", SYSTEM),
    ("get", "configmaps/kubegate-config-1", "-n", SYSTEM),  # the shards of a config above one object
    ("get", "configmaps/kubegate-config-15", "-n", SYSTEM),
    ("get", "secrets/kubegate-secrets-1", "-n", SYSTEM),
    ("get", "secrets/kubegate-secrets-15", "-n", SYSTEM),
    ("create", "leases.coordination.k8s.io", "-n", SYSTEM),
    ("update", "leases.coordination.k8s.io/kubegate-dataplane-a", "-n", SYSTEM),
    ("delete", "leases.coordination.k8s.io/kubegate-dataplane-a", "-n", SYSTEM),
]

DATAPLANE_MUST_NOT = [
    ("list", "secrets", "-A"),
    ("list", "secrets", "-n", SYSTEM),  # only by name
    ("get", "secrets/acme-api-key", "-n", USER_NS),
    ("get", "secrets/other", "-n", SYSTEM),
    ("get", "configmaps/other", "-n", SYSTEM),
    ("get", "configmaps/kubegate-config-16", "-n", SYSTEM),  # beyond names.MAX_SHARDS
    ("get", "secrets/kubegate-secrets-16", "-n", SYSTEM),
    ("get", "secrets/kubegate-secrets-0", "-n", SYSTEM),
    ("patch", "secrets/kubegate-secrets-1", "-n", SYSTEM),
    ("list", "configmaps", "-n", SYSTEM),
    ("patch", "configmaps/kubegate-config", "-n", SYSTEM),
    ("update", "secrets/kubegate-secrets", "-n", SYSTEM),
    ("get", "configmaps/kubegate-config", "-n", USER_NS),
    ("create", "leases.coordination.k8s.io", "-n", USER_NS),
    ("list", "leases.coordination.k8s.io", "-A"),
    ("list", "gatewayroutes.kubegate.dev", "-A"),
    ("get", "gatewayroutes.kubegate.dev", "-n", USER_NS),
    ("create", "gatewayroutes.kubegate.dev", "-n", USER_NS),
    ("patch", "gatewayroutes.kubegate.dev", "--subresource=status", "-n", USER_NS),
    ("delete", "pods", "-n", SYSTEM),
    ("create", "pods", "--subresource=exec", "-n", SYSTEM),
    ("list", "services", "-A"),
    ("create", "events", "-n", SYSTEM),
    ("bind", "clusterroles.rbac.authorization.k8s.io"),
    ("escalate", "roles.rbac.authorization.k8s.io", "-n", SYSTEM),
    ("create", "serviceaccounts", "--subresource=token", "-n", SYSTEM),
]


def _id(case: tuple[str, ...]) -> str:
    return " ".join(case)


@pytest.mark.parametrize("case", OPERATOR_MUST, ids=_id)
def test_operator_can(cluster, case):
    assert can_i(cluster, OPERATOR, *case)


@pytest.mark.parametrize("case", OPERATOR_MUST_NOT, ids=_id)
def test_operator_cannot(cluster, case):
    assert not can_i(cluster, OPERATOR, *case)


@pytest.mark.parametrize("case", DATAPLANE_MUST, ids=_id)
def test_dataplane_can(cluster, case):
    assert can_i(cluster, DATAPLANE, *case)


@pytest.mark.parametrize("case", DATAPLANE_MUST_NOT, ids=_id)
def test_dataplane_cannot(cluster, case):
    assert not can_i(cluster, DATAPLANE, *case)


def test_dataplane_token_reads_its_config_by_name_only(cluster):
    """With a real token: a name-restricted list works only with the field selector the data plane sends.

    Nothing is created here: kubegate-config belongs to the operator (the e2e tests run one).
    """
    token = cluster.token_for(SYSTEM, "kubegate-dataplane")
    by_name = cluster.kubectl("get", "configmaps", "-n", SYSTEM, "--field-selector=metadata.name=kubegate-config",
                              "-o", "name", as_token=token)
    assert by_name.returncode == 0 and "forbidden" not in by_name.stderr
    everything = cluster.kubectl("get", "configmaps", "-n", SYSTEM, as_token=token, check=False)
    assert everything.returncode != 0 and "forbidden" in everything.stderr
    secrets = cluster.kubectl("get", "secrets", "-A", as_token=token, check=False)
    assert secrets.returncode != 0 and "forbidden" in secrets.stderr


def test_operator_token_cannot_touch_pods_or_specs(cluster, namespace):
    token = cluster.token_for(SYSTEM, "kubegate-operator")
    routes = cluster.kubectl("get", "gatewayroutes", "-A", "-o", "name", as_token=token)
    assert routes.returncode == 0
    pods = cluster.kubectl("delete", "pods", "--all", "-n", namespace, as_token=token, check=False)
    assert pods.returncode != 0 and "forbidden" in pods.stderr
    route = (f"apiVersion: kubegate.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {{name: r, namespace: {namespace}}}\n"
             "spec: {path: /r, backends: [{url: 'http://127.0.0.1:9'}]}\n")
    created = cluster.kubectl("create", "-f", "-", input=route, as_token=token, check=False)
    assert created.returncode != 0 and "forbidden" in created.stderr
