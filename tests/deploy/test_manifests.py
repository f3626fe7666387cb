"""manifests/: renders with kustomize, installs on the real API server, and meets the restricted profile.

The restricted Pod Security profile is checked by the API server itself: every
pod template is submitted as a Pod (server-side dry run) to kubegate-system,
whose namespace enforces `restricted`.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
import yaml

from kubegate import devcluster

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
SYSTEM = "kubegate-system"
OVERLAYS = ["overlays/with-redis", "overlays/ha", "overlays/dev"]


def render(path: Path) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return render(MANIFESTS)


def test_base_has_the_crds_namespace_and_both_components(base):
    assert set(by_kind(base, "CustomResourceDefinition")) == {
        "gatewayroutes.kubegate.dev", "ratelimitpolicies.kubegate.dev", "apikeys.kubegate.dev",
        "tlspolicies.kubegate.dev"}
    labels = by_kind(base, "Namespace")[SYSTEM]["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    deployments = by_kind(base, "Deployment")
    assert deployments["kubegate-operator"]["spec"]["template"]["spec"]["serviceAccountName"] == "kubegate-operator"
    assert deployments["kubegate-dataplane"]["spec"]["template"]["spec"]["serviceAccountName"] == "kubegate-dataplane"
    # Everything namespaced is in kubegate-system except the operator's read-only Role (and its binding)
    # for the API server's EndpointSlices, which live in default.
    elsewhere = {(d["kind"], d["metadata"]["name"], d["metadata"]["namespace"]) for d in base
                 if d["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding")
                 and d["metadata"]["namespace"] != SYSTEM}
    assert elsewhere == {("Role", "kubegate-operator-apiserver-endpoints", "default"),
                         ("RoleBinding", "kubegate-operator-apiserver-endpoints", "default")}
    endpoints = by_kind(base, "Role")["kubegate-operator-apiserver-endpoints"]["rules"]
    assert endpoints == [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                          "verbs": ["get", "list", "watch"]}]


def test_pod_labels_match_what_generated_network_policies_select(base):
    deployments = by_kind(base, "Deployment")
    for name, component in (("kubegate-operator", "operator"), ("kubegate-dataplane", "dataplane")):
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "kubegate"
        assert labels["app.kubernetes.io/component"] == component


def test_dataplane_is_highly_available_and_probed(base):
    dp = by_kind(base, "Deployment")["kubegate-dataplane"]
    assert dp["spec"]["replicas"] == 2
    pod = dp["spec"]["template"]["spec"]
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    (container,) = pod["containers"]
    assert container["args"][0] == "dataplane"
    assert {p["containerPort"] for p in container["ports"]} == {8080, 8443, 9090}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    pdb = by_kind(base, "PodDisruptionBudget")["kubegate-dataplane"]
    assert pdb["spec"]["maxUnavailable"] == 1
    services = by_kind(base, "Service")
    assert {p["targetPort"] for p in services["kubegate"]["spec"]["ports"]} == {"http", "https"}
    assert [p["port"] for p in services["kubegate-metrics"]["spec"]["ports"]] == [9090]


@pytest.mark.parametrize("path", [".", *OVERLAYS])
def test_every_container_is_locked_down(path):
    for dep in by_kind(render(MANIFESTS / path), "Deployment").values():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert isinstance(pod["securityContext"].get("runAsUser", sc.get("runAsUser")), int)


def test_network_policies_default_deny_and_open_only_the_listeners(base):
    policies = by_kind(base, "NetworkPolicy")
    deny = policies["kubegate-default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    dp = policies["kubegate-dataplane"]["spec"]
    assert {p["port"] for rule in dp["ingress"] for p in rule["ports"]} == {8080, 8443, 9090}
    egress_ports = {p["port"] for rule in dp["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 443, 6443, 6379}
    op = policies["kubegate-operator"]["spec"]
    # The operator accepts only metrics scrapes; it dials only DNS and the API server.
    assert {p["port"] for r in op["ingress"] for p in r["ports"]} == {8081}
    assert {p["port"] for r in op["egress"] for p in r["ports"]} == {53, 443, 6443}


def test_overlays_render_what_they_promise():
    redis = render(MANIFESTS / "overlays/with-redis")
    # The data plane and the operator take the same Redis URL from the same Secret (never from args:
    # a password in the URL never sits in the Pod spec).
    for name in ("kubegate-dataplane", "kubegate-operator"):
        container = by_kind(redis, "Deployment")[name]["spec"]["template"]["spec"]["containers"][0]
        assert not [a for a in container["args"] if "redis" in a], name
        env = {e["name"]: e for e in container["env"]}
        assert env["KUBEGATE_REDIS_URL"]["valueFrom"] == {"secretKeyRef": {"name": "kubegate-redis", "key": "url"}}
    secret = by_kind(redis, "Secret")["kubegate-redis"]
    assert base64.b64decode(secret["data"]["url"]).decode().startswith("redis://kubegate-redis.")
    assert "kubegate-redis" in by_kind(redis, "Service")
    ha = render(MANIFESTS / "overlays/ha")
    deployments = by_kind(ha, "Deployment")
    assert deployments["kubegate-operator"]["spec"]["replicas"] == 2
    assert deployments["kubegate-dataplane"]["spec"]["replicas"] == 3
    assert set(by_kind(ha, "PodDisruptionBudget")) == {"kubegate-dataplane", "kubegate-operator"}
    spread = deployments["kubegate-dataplane"]["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread[0]["whenUnsatisfiable"] == "DoNotSchedule"
    # dev: the whole install on the local node, from the locally built images only (never pulled)
    dev = by_kind(render(MANIFESTS / "overlays/dev"), "Deployment")
    containers = {name: d["spec"]["template"]["spec"]["containers"][0] for name, d in dev.items()}
    assert containers["kubegate-operator"]["image"] == containers["kubegate-dataplane"]["image"] == "localhost/kubegate:dev"
    assert containers["kubegate-redis"]["image"].startswith("localhost/")
    assert {c["imagePullPolicy"] for c in containers.values()} == {"Never"}
    env = {e["name"]: e for e in containers["kubegate-dataplane"].get("env", ())}
    assert env["KUBEGATE_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "kubegate-redis"  # never in args


def test_apply_k_succeeds_on_the_dev_cluster(cluster):
    applied = cluster.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(MANIFESTS))
    assert "would violate PodSecurity" not in applied.stderr
    names = cluster.kubectl("get", "deployments,services,serviceaccounts,networkpolicies,poddisruptionbudgets",
                            "-n", SYSTEM, "-o", "name").stdout.split()
    for expected in ("deployment.apps/kubegate-operator", "deployment.apps/kubegate-dataplane",
                     "service/kubegate", "service/kubegate-metrics", "serviceaccount/kubegate-operator",
                     "networkpolicy.networking.k8s.io/kubegate-default-deny",
                     "poddisruptionbudget.policy/kubegate-dataplane"):
        assert expected in names


CRDS = REPO / "crds"
KUBEGATE_CRDS = [f"crd/{plural}.kubegate.dev" for plural in
                 ("apikeys", "gatewayroutes", "ratelimitpolicies", "tlspolicies")]


def test_install_commands_succeed_on_a_fresh_dev_cluster(tmp_path):
    """What a new user or a GitOps tool runs, plain client-side apply, in a cluster of its own (issue 13).

    A fresh cluster (not the session one, whose CRDs the fixture already applied
    server-side) so that the first command really creates the CRDs and every
    command must exit 0 with nothing at all on stderr.
    """
    fresh = devcluster.up(tmp_path / "fresh", install_crds=False, log=lambda *_: None)
    try:
        for args, verb in ((("-f", CRDS), "created"), (("-k", CRDS), "unchanged"),
                           (("--server-side", "-f", CRDS), "serverside-applied"),
                           (("-k", MANIFESTS), "configured")):  # manifests/ adds the part-of label
            out = fresh.kubectl("apply", *map(str, args), check=False)
            assert (out.returncode, out.stderr) == (0, ""), (args, out.stdout)
            for crd in KUBEGATE_CRDS:
                line = f"customresourcedefinition.apiextensions.k8s.io/{crd.removeprefix('crd/')} {verb}"
                assert line in out.stdout, (args, out.stdout)
            fresh.kubectl("wait", "--for=condition=Established", "--timeout=30s", *KUBEGATE_CRDS)
        names = fresh.kubectl("get", "deployments", "-n", SYSTEM, "-o", "name").stdout.split()
        assert names == ["deployment.apps/kubegate-dataplane", "deployment.apps/kubegate-operator"]
    finally:
        devcluster.down(tmp_path / "fresh", log=lambda *_: None)


@pytest.mark.parametrize("path", OVERLAYS)
def test_overlays_apply_on_the_dev_cluster(cluster, path):
    out = cluster.kubectl("apply", "--server-side", "--force-conflicts", "--dry-run=server", "-k",
                          str(MANIFESTS / path))
    assert "would violate PodSecurity" not in out.stderr


@pytest.mark.parametrize("path", [".", "overlays/with-redis"])
def test_pod_templates_pass_restricted_pod_security_enforcement(cluster, path):
    docs = render(MANIFESTS / path)
    accounts = list(by_kind(docs, "ServiceAccount").values())
    cluster.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(accounts))
    for dep in by_kind(docs, "Deployment").values():
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"{dep['metadata']['name']}-pss-probe", "namespace": SYSTEM,
                            "labels": dep["spec"]["template"]["metadata"]["labels"]},
               "spec": dep["spec"]["template"]["spec"]}
        out = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(pod))
        assert "created (server dry run)" in out.stdout


def test_restricted_enforcement_is_real(cluster):
    """The control: a root pod is refused in kubegate-system by the same admission."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root-probe", "namespace": SYSTEM},
           "spec": {"serviceAccountName": "kubegate-dataplane", "containers": [{"name": "c", "image": "busybox"}]}}
    out = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(pod), check=False)
    assert out.returncode != 0 and "violates PodSecurity" in out.stderr
