"""charts/kubegate and charts/kubegate-crds, with the real helm (built from helm.sh/helm/v3 at the
version hack/helm/go.mod pins) against manifests/ and real kube-apiservers.

One source of truth: manifests/. The chart is hand-written, and these tests compare the LIVE
output of both tools, so a change to manifests/ that the chart does not follow fails here:

- ``helm template`` with default values == ``kubectl kustomize manifests/`` object by object
  (apart from Helm's four labels and the Namespace, which ``--create-namespace`` makes);
  ``ha.enabled`` == ``manifests/overlays/ha``; ``monitoring.enabled`` == ``manifests/monitoring``.
- the files a chart carries verbatim (CRDs, alert rules, dashboard) are byte-identical to theirs.
- ``helm install`` on a fresh dev cluster (RBAC on) yields the same live objects, and the same
  permissions for both ServiceAccounts, as ``kubectl apply -k manifests/`` on the session
  cluster; ``helm upgrade`` changes what the values say; ``helm uninstall`` leaves nothing
  behind but the CRDs (and the empty namespace Helm created).
"""

from __future__ import annotations

import base64
import copy
import difflib
import json
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from kubegate import devcluster, gobuild

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubegate"
CRDS_CHART = REPO / "charts" / "kubegate-crds"
MANIFESTS = REPO / "manifests"
SYSTEM = "kubegate-system"
HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance",
               "app.kubernetes.io/version")
KUBEGATE_CRDS = {"gatewayroutes.kubegate.dev", "ratelimitpolicies.kubegate.dev", "apikeys.kubegate.dev",
                 "tlspolicies.kubegate.dev"}
# What the CRDs are, as `everything()` lists them: the four, plus the APIService the API server makes for the group.
CRD_OBJECTS = {f"customresourcedefinitions.apiextensions.k8s.io//{n}" for n in KUBEGATE_CRDS} | {
    "apiservices.apiregistration.k8s.io//v1alpha1.kubegate.dev"}
REDIS_URL = "rediss://:s3cr3t-pa55@redis.example.internal:6380/0"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def helm() -> Path:
    return gobuild.helm_binary()


def run_helm(helm: Path, *args: str, kubeconfig: Path | None = None, check: bool = True,
             timeout: float = 180) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as home:  # no user config, cache or repositories leak in
        env = {"PATH": "/usr/bin:/bin", "HOME": home, "HELM_CACHE_HOME": f"{home}/cache",
               "HELM_CONFIG_HOME": f"{home}/config", "HELM_DATA_HOME": f"{home}/data"}
        if kubeconfig:
            env["KUBECONFIG"] = str(kubeconfig)
        proc = subprocess.run([str(helm), *args], capture_output=True, text=True, env=env, timeout=timeout,
                              check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def docs_of(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def template(helm: Path, *args: str, chart: Path = CHART) -> list[dict]:
    return docs_of(run_helm(helm, "template", "kubegate", str(chart), "-n", SYSTEM, "--include-crds",
                            *args).stdout)


def kustomize(path: Path) -> list[dict]:
    return docs_of(subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True,
                                  check=True).stdout)


def key(doc: dict) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


def without_helm_labels(doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    for meta in (doc["metadata"], doc.get("spec", {}).get("template", {}).get("metadata", {})):
        labels = meta.get("labels") or {}
        for name in HELM_LABELS:
            labels.pop(name, None)
    return doc


def by_key(docs: list[dict]) -> dict[tuple[str, str, str], dict]:
    out = {}
    for doc in docs:
        assert key(doc) not in out, f"{key(doc)} rendered twice"
        out[key(doc)] = doc
    return out


def kustomize_objects(*paths: Path) -> dict[tuple[str, str, str], dict]:
    """What kustomize renders, minus the Namespace (Helm's --create-namespace owns it)."""
    return {k: d for p in paths for k, d in by_key(kustomize(p)).items() if d["kind"] != "Namespace"}


def chart_objects(docs: list[dict]) -> dict[tuple[str, str, str], dict]:
    return {k: without_helm_labels(d) for k, d in by_key(docs).items()}


def crd_without_kustomize_label(doc: dict) -> dict:
    # crds/ is applied verbatim by Helm; kustomize's `labels:` adds part-of on top of the same file.
    doc = copy.deepcopy(doc)
    doc["metadata"].get("labels", {}).pop("app.kubernetes.io/part-of", None)
    if not doc["metadata"].get("labels"):
        doc["metadata"].pop("labels", None)
    return doc


def assert_same_objects(chart: dict, manifests: dict) -> None:
    assert sorted(chart) == sorted(manifests), (
        f"only in the chart: {sorted(set(chart) - set(manifests))}; "
        f"only in manifests/: {sorted(set(manifests) - set(chart))}")
    for k, want in manifests.items():
        got = chart[k]
        if k[0] == "CustomResourceDefinition":
            got, want = crd_without_kustomize_label(got), crd_without_kustomize_label(want)
        if got != want:
            diff = difflib.unified_diff(yaml.safe_dump(want).splitlines(), yaml.safe_dump(got).splitlines(),
                                        "manifests/", "chart", lineterm="")
            raise AssertionError(f"{k} differs (adjust charts/kubegate/templates):\n" + "\n".join(diff))


def find(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def pod_spec(docs: list[dict], name: str) -> dict:
    return find(docs, "Deployment", name)["spec"]["template"]["spec"]


def crd_sources() -> dict[str, bytes]:
    """The CRD files of crds/ (wherever in it they live), by file name."""
    found = {}
    for path in sorted((REPO / "crds").rglob("*.yaml")):
        if any(d and d.get("kind") == "CustomResourceDefinition" for d in yaml.safe_load_all(path.read_text())):
            found[path.name] = path.read_bytes()
    return found


# --------------------------------------------------------------------------- static: lint, template


def test_helm_is_the_pinned_real_helm(helm):
    out = run_helm(helm, "version", "--template", "{{ .Version }}").stdout.strip()
    assert out == gobuild.module_version((REPO / "hack/helm/go.mod").read_text(), "helm.sh/helm/v3") == "v3.22.0"


@pytest.mark.parametrize("chart,args", [
    (CHART, []),
    (CHART, ["--set", "ha.enabled=true,monitoring.enabled=true,networkPolicies.enabled=false",
             "--set", f"redis.url={REDIS_URL}"]),
    (CRDS_CHART, []),
], ids=["kubegate-defaults", "kubegate-all-options", "kubegate-crds"])
def test_helm_lint_strict_passes(helm, chart, args):
    proc = run_helm(helm, "lint", "--strict", str(chart), "-n", SYSTEM, *args)
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout, proc.stdout


def test_default_values_render_exactly_what_manifests_installs(helm):
    chart = chart_objects(template(helm))
    manifests = kustomize_objects(MANIFESTS)
    assert {k[0] for k in manifests} >= {"CustomResourceDefinition", "Deployment", "ClusterRole", "NetworkPolicy"}
    assert_same_objects(chart, manifests)


def test_ha_renders_exactly_overlays_ha(helm):
    assert_same_objects(chart_objects(template(helm, "--set", "ha.enabled=true")),
                        kustomize_objects(MANIFESTS / "overlays" / "ha"))


def test_monitoring_renders_exactly_manifests_monitoring(helm):
    assert_same_objects(chart_objects(template(helm, "--set", "monitoring.enabled=true")),
                        kustomize_objects(MANIFESTS, MANIFESTS / "monitoring"))


def test_monitoring_without_dashboard_renders_no_configmap(helm):
    docs = template(helm, "--set", "monitoring.enabled=true,monitoring.dashboard=false")
    assert {d["kind"] for d in docs} >= {"PodMonitor", "PrometheusRule"}
    assert not [d for d in docs if d["kind"] == "ConfigMap"]


@pytest.mark.parametrize("copies", [CHART / "crds", CRDS_CHART / "files"], ids=["kubegate/crds", "kubegate-crds/files"])
def test_chart_crds_are_byte_identical_to_crds(copies):
    sources = crd_sources()
    assert set(sources) >= {f"kubegate.dev_{plural}.yaml" for plural in
                            ("gatewayroutes", "ratelimitpolicies", "apikeys", "tlspolicies")}
    copied = {p.name: p.read_bytes() for p in copies.iterdir()}
    assert copied == sources, f"{copies} is stale: run hack/sync-charts.sh"


def test_chart_monitoring_files_are_byte_identical_to_manifests_monitoring():
    for name in ("prometheusrule.yaml", "dashboard.json"):
        assert (CHART / "files" / name).read_bytes() == (MANIFESTS / "monitoring" / name).read_bytes(), (
            f"charts/kubegate/files/{name} is stale: run hack/sync-charts.sh")


def test_crds_chart_renders_the_crds_as_templates_kept_on_uninstall(helm):
    docs = template(helm, chart=CRDS_CHART)
    assert {d["metadata"]["name"] for d in docs} == KUBEGATE_CRDS
    sources = {d["metadata"]["name"]: d for text in crd_sources().values() for d in docs_of(text.decode())}
    for doc in docs:
        meta = doc["metadata"]
        assert meta["annotations"]["helm.sh/resource-policy"] == "keep"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "kubegate"
        assert doc["spec"] == sources[meta["name"]]["spec"]
    unkept = template(helm, "--set", "keep=false", chart=CRDS_CHART)
    assert not [d for d in unkept if "helm.sh/resource-policy" in (d["metadata"].get("annotations") or {})]


def test_image_values(helm):
    docs = template(helm, "--set", "image.repository=registry.example/kg,image.tag=9.9.9,image.pullPolicy=Always")
    for name in ("kubegate-operator", "kubegate-dataplane"):
        (container,) = pod_spec(docs, name)["containers"]
        assert (container["image"], container["imagePullPolicy"]) == ("registry.example/kg:9.9.9", "Always")
    digest = "sha256:" + "ab" * 32
    docs = template(helm, "--set", f"image.digest={digest}")
    assert pod_spec(docs, "kubegate-dataplane")["containers"][0]["image"] == f"ghcr.io/kubegate/kubegate@{digest}"
    docs = template(helm, "--set-json", 'imagePullSecrets=[{"name":"regcred"}]')
    assert pod_spec(docs, "kubegate-operator")["imagePullSecrets"] == [{"name": "regcred"}]


def test_replicas_and_resources_values(helm):
    docs = template(helm, "--set", "operator.replicas=1,dataplane.replicas=5",
                    "--set-json",
                    'dataplane.resources={"requests":{"cpu":"1","memory":"1Gi"},"limits":{"memory":"2Gi"}}')
    assert find(docs, "Deployment", "kubegate-dataplane")["spec"]["replicas"] == 5
    assert find(docs, "Deployment", "kubegate-operator")["spec"]["replicas"] == 1
    assert pod_spec(docs, "kubegate-dataplane")["containers"][0]["resources"] == {
        "requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    ha = template(helm, "--set", "ha.enabled=true,dataplane.replicas=5")
    assert find(ha, "Deployment", "kubegate-dataplane")["spec"]["replicas"] == 3, "ha.enabled wins, as documented"


def test_redis_url_goes_to_a_secret_and_never_into_the_pod_spec(helm):
    docs = template(helm, "--set", f"redis.url={REDIS_URL}")
    secret = find(docs, "Secret", "kubegate-redis")
    assert base64.b64decode(secret["data"]["url"]).decode() == REDIS_URL
    (container,) = pod_spec(docs, "kubegate-dataplane")["containers"]
    (env,) = [e for e in container["env"] if e["name"] == "KUBEGATE_REDIS_URL"]
    assert env["valueFrom"] == {"secretKeyRef": {"name": "kubegate-redis", "key": "url"}}
    elsewhere = yaml.safe_dump_all([d for d in docs if d["kind"] != "Secret"])
    assert "s3cr3t-pa55" not in elsewhere and "redis.example.internal" not in elsewhere
    # The kubelet expands the reference from the env: the Pod spec never holds the URL.
    assert not any("redis" in arg.lower() for arg in container["args"])  # the URL (a password) only in env


def test_redis_existing_secret_is_referenced_not_created(helm):
    docs = template(helm, "--set", "redis.existingSecret.name=my-redis,redis.existingSecret.key=uri")
    assert not [d for d in docs if d["kind"] == "Secret"]
    (env,) = [e for e in pod_spec(docs, "kubegate-dataplane")["containers"][0]["env"]
              if e["name"] == "KUBEGATE_REDIS_URL"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "my-redis", "key": "uri"}


def test_without_redis_there_is_no_redis_env(helm):
    for name in ("kubegate-operator", "kubegate-dataplane"):
        (container,) = pod_spec(template(helm), name)["containers"]
        assert "KUBEGATE_REDIS_URL" not in {e["name"] for e in container["env"]}
        assert "--redis-url" not in container["args"]


def test_common_labels_and_annotations_on_every_object_never_on_selectors(helm):
    docs = template(helm, "--set", "commonLabels.team=edge,commonAnnotations.owner=platform@example.com",
                    "--set", "monitoring.enabled=true")
    for doc in docs:
        if doc["kind"] == "CustomResourceDefinition":
            continue  # crds/ is never templated; the kubegate-crds chart labels them
        assert doc["metadata"]["labels"]["team"] == "edge", key(doc)
        assert doc["metadata"]["annotations"]["owner"] == "platform@example.com", key(doc)
        assert "team" not in json.dumps(doc.get("spec", {}).get("selector", {})), key(doc)
    for name in ("kubegate-operator", "kubegate-dataplane"):
        assert "team" not in find(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]


def test_node_placement_values_reach_both_pod_specs(helm):
    placement = {"nodeSelector": {"kubernetes.io/os": "linux", "pool": "edge"},
                 "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "edge", "effect": "NoSchedule"}],
                 "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                     "nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "pool", "operator": "In", "values": ["edge"]}]}]}}}}
    args = [arg for comp in ("operator", "dataplane") for field, value in placement.items()
            for arg in ("--set-json", f"{comp}.{field}={json.dumps(value)}")]
    docs = template(helm, *args, "--set", "operator.priorityClassName=system-cluster-critical")
    for name in ("kubegate-operator", "kubegate-dataplane"):
        spec = pod_spec(docs, name)
        assert {f: spec[f] for f in placement} == placement, name
    assert pod_spec(docs, "kubegate-operator")["priorityClassName"] == "system-cluster-critical"
    assert "priorityClassName" not in pod_spec(docs, "kubegate-dataplane")
    default = template(helm)
    assert not {"nodeSelector", "tolerations", "affinity"} & set(pod_spec(default, "kubegate-dataplane"))


def test_pod_labels_annotations_extra_args_and_env(helm):
    docs = template(helm, "--set", "dataplane.podLabels.tier=edge,operator.podAnnotations.note=x",
                    "--set-json", 'dataplane.extraArgs=["--trusted-proxy","10.0.0.0/8"]',
                    "--set-json", 'operator.extraEnv=[{"name":"TZ","value":"UTC"}]',
                    "--set", "operator.logLevel=DEBUG")
    dp = find(docs, "Deployment", "kubegate-dataplane")
    assert dp["spec"]["template"]["metadata"]["labels"]["tier"] == "edge"
    assert "tier" not in dp["spec"]["selector"]["matchLabels"]
    assert dp["spec"]["template"]["spec"]["containers"][0]["args"][-2:] == ["--trusted-proxy", "10.0.0.0/8"]
    op = find(docs, "Deployment", "kubegate-operator")
    assert op["spec"]["template"]["metadata"]["annotations"] == {"note": "x"}
    env = {e["name"]: e.get("value") for e in op["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TZ"] == "UTC" and env["KUBEGATE_LOG_LEVEL"] == "DEBUG"


def test_spread_pdb_and_operator_args_values(helm):
    docs = template(helm, "--set-json",
                    'dataplane.topologySpreadConstraints=[{"maxSkew":2,"topologyKey":"topology.kubernetes.io/zone",'
                    '"whenUnsatisfiable":"DoNotSchedule"}]',
                    "--set-json", 'dataplane.podDisruptionBudget={"minAvailable":1,"maxUnavailable":null}',
                    "--set-json", 'operator.extraArgs=["--flag","x"]')
    (spread,) = pod_spec(docs, "kubegate-dataplane")["topologySpreadConstraints"]
    assert spread == {"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
                      "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "kubegate",
                                                        "app.kubernetes.io/component": "dataplane"}}}
    pdb = find(docs, "PodDisruptionBudget", "kubegate-dataplane")["spec"]
    assert pdb["minAvailable"] == 1 and "maxUnavailable" not in pdb
    assert pod_spec(docs, "kubegate-operator")["containers"][0]["args"][-2:] == ["--flag", "x"]


def test_network_policies_and_service_values(helm):
    docs = template(helm, "--set", "networkPolicies.enabled=false,dataplane.service.type=LoadBalancer",
                    "--set-string", "dataplane.service.annotations.lb/internal=true",
                    "--set", "dataplane.service.httpPort=8000")
    assert not [d for d in docs if d["kind"] == "NetworkPolicy"]
    svc = find(docs, "Service", "kubegate")
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["metadata"]["annotations"] == {"lb/internal": "true"}
    assert [p["port"] for p in svc["spec"]["ports"]] == [8000, 443]


def test_release_namespace_is_used_everywhere(helm):
    docs = docs_of(run_helm(helm, "template", "kubegate", str(CHART), "-n", "edge-gw").stdout)
    # ... except the operator's read-only Role (and binding) for the API server's EndpointSlices in default.
    apiserver = {("Role", "kubegate-operator-apiserver-endpoints"), ("RoleBinding", "kubegate-operator-apiserver-endpoints")}
    for doc in docs:
        if (doc["kind"], doc["metadata"]["name"]) in apiserver:
            assert doc["metadata"]["namespace"] == "default", key(doc)
        elif doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == "edge-gw", key(doc)
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        for doc in (d for d in docs if d["kind"] == kind):
            assert {s["namespace"] for s in doc["subjects"]} == {"edge-gw"}


@pytest.mark.parametrize("args,message", [
    (["--set", "dataplane.replicas=two"], "at '/dataplane/replicas': got string, want integer"),
    (["--set", "image.pullPolicy=Sometimes"], "at '/image/pullPolicy'"),
    (["--set", "redis.url=http://redis:6379"], "at '/redis/url'"),
    (["--set", "dataplane.replica=3"], "at '/dataplane': additional properties 'replica' not allowed"),  # a typo
    (["--set", "image.digest=latest"], "at '/image/digest'"),
])
def test_bad_values_are_refused_with_a_clear_error(helm, args, message):
    proc = run_helm(helm, "template", "kubegate", str(CHART), *args, check=False)
    assert proc.returncode == 1 and not proc.stdout
    assert "values don't meet the specifications of the schema" in proc.stderr and message in proc.stderr, proc.stderr
    assert "panic" not in proc.stderr and "goroutine" not in proc.stderr


def gitops_example(name: str) -> list[dict]:
    return docs_of((REPO / "examples" / "gitops" / name).read_text())


def render_with_values(helm: Path, values: dict, tmp_path: Path) -> list[dict]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return template(helm, "-f", str(path))


def test_argocd_helm_application_renders_the_chart_into_a_restricted_namespace(helm, tmp_path):
    (app,) = [d for d in gitops_example("argocd-application-helm.yaml") if d["kind"] == "Application"]
    spec = app["spec"]
    assert (REPO / spec["source"]["path"] / "Chart.yaml").is_file()
    docs = render_with_values(helm, spec["source"]["helm"]["valuesObject"], tmp_path)
    assert find(docs, "Deployment", "kubegate-dataplane")["spec"]["replicas"] == 3  # ha.enabled
    assert spec["destination"]["namespace"] == SYSTEM
    assert {"ServerSideApply=true", "CreateNamespace=true"} <= set(spec["syncPolicy"]["syncOptions"])
    want = find(kustomize(MANIFESTS), "Namespace", SYSTEM)["metadata"]["labels"]
    assert spec["syncPolicy"]["managedNamespaceMetadata"]["labels"] == {
        k: v for k, v in want.items() if k.startswith("pod-security.kubernetes.io/")}


def test_flux_helmrelease_installs_and_upgrades_the_crds_with_the_chart(helm, tmp_path):
    docs = gitops_example("flux-helmrelease.yaml")
    (release,) = [d for d in docs if d["kind"] == "HelmRelease"]
    spec = release["spec"]
    chart = spec["chart"]["spec"]
    assert (REPO / chart["chart"] / "Chart.yaml").is_file()
    assert chart["sourceRef"]["name"] in {d["metadata"]["name"] for d in docs if d["kind"] == "GitRepository"}
    assert (spec["install"]["crds"], spec["upgrade"]["crds"]) == ("Create", "CreateReplace")
    assert spec["targetNamespace"] == SYSTEM
    rendered = render_with_values(helm, spec["values"], tmp_path)
    assert {d["kind"] for d in rendered} >= {"PodMonitor", "PrometheusRule"}


# --------------------------------------------------------------------------- live: install, upgrade, uninstall

LIVE_NOISE = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation", "selfLink")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A second dev cluster with nothing of kubegate in it (the session one has manifests/ applied)."""
    state = tmp_path_factory.mktemp("helm-cluster")
    fresh = devcluster.up(state, install_crds=False, log=lambda m: print(f"[helm-cluster] {m}"))
    yield fresh
    devcluster.down(state, log=lambda *_: None)


def listable_types(cluster) -> list[str]:
    out = cluster.kubectl("api-resources", "--verbs=list", "-o", "name").stdout.split()
    return [t for t in out if t not in ("events", "events.events.k8s.io")]


def everything(cluster) -> set[str]:
    """Every object in the cluster, as "type/namespace/name" (one list call per type)."""
    found = set()
    for kind in listable_types(cluster):
        items = json.loads(cluster.kubectl("get", kind, "-A", "-o", "json").stdout)["items"]
        found |= {f"{kind}/{i['metadata'].get('namespace', '')}/{i['metadata']['name']}" for i in items}
    return found


def live(cluster, doc: dict) -> dict:
    kind = doc["kind"] if doc["apiVersion"] in ("v1",) else f"{doc['kind']}.{doc['apiVersion'].split('/')[0]}"
    args = ["get", kind, doc["metadata"]["name"], "-o", "json"]
    if ns := doc["metadata"].get("namespace"):
        args += ["-n", ns]
    obj = json.loads(cluster.kubectl(*args).stdout)
    obj.pop("status", None)
    meta = obj["metadata"]
    for field in LIVE_NOISE:
        meta.pop(field, None)
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if not k.startswith("meta.helm.sh/") and k != "kubectl.kubernetes.io/last-applied-configuration"}
    meta.pop("annotations", None)
    if annotations:
        meta["annotations"] = annotations
    if obj["kind"] == "Service":  # allocated by the API server
        obj["spec"].pop("clusterIP", None)
        obj["spec"].pop("clusterIPs", None)
    if obj["kind"] == "CustomResourceDefinition":
        return crd_without_kustomize_label(obj)
    return without_helm_labels(obj)


def permissions(cluster, serviceaccount: str) -> dict[str, str]:
    who = f"--as=system:serviceaccount:{SYSTEM}:{serviceaccount}"
    return {ns: cluster.kubectl("auth", "can-i", "--list", who, "-n", ns).stdout for ns in (SYSTEM, "shop")}


def remove_kubegate_crds(cluster) -> None:
    cluster.kubectl("delete", "crd", *sorted(KUBEGATE_CRDS), "--ignore-not-found", "--wait=true")


def test_install_upgrade_uninstall_matches_kubectl_apply_k_and_leaves_only_the_crds(helm, fresh, cluster):
    remove_kubegate_crds(fresh)
    before = everything(fresh)
    namespace_existed = f"namespaces//{SYSTEM}" in before
    kc = fresh.kubeconfig

    # The install command of API.md.
    out = run_helm(helm, "install", "kubegate", str(CHART), "-n", SYSTEM, "--create-namespace", kubeconfig=kc).stdout
    assert "STATUS: deployed" in out
    # Helm's namespace lacks the Pod Security labels of manifests/base/namespace.yaml: NOTES says how to add them.
    command = re.search(r"kubectl label namespace .*?(?=\n\n|\Z)", out, re.DOTALL)
    assert command, out
    fresh.kubectl(*command.group(0).replace("\\\n", " ").split()[1:])
    labels = json.loads(fresh.kubectl("get", "namespace", SYSTEM, "-o", "json").stdout)["metadata"]["labels"]
    want_ns = find(kustomize(MANIFESTS), "Namespace", SYSTEM)["metadata"]["labels"]
    assert {k: v for k, v in want_ns.items() if k.startswith("pod-security")} == {
        k: v for k, v in labels.items() if k.startswith("pod-security")}

    # Live objects are those of `kubectl apply -k manifests/` (the session cluster), one by one.
    wanted = kustomize_objects(MANIFESTS)
    for k, doc in wanted.items():
        assert live(fresh, doc) == live(cluster, doc), f"live {k} differs between helm install and kubectl apply -k"
    installed = everything(fresh) - before
    # Beyond the chart's objects: the release record, the namespace, the APIService the CRDs
    # bring and the Services' cluster IPs (IPAddress objects).
    extra = {f"secrets/{SYSTEM}/sh.helm.release.v1.kubegate.v1",
             *(CRD_OBJECTS - {f"customresourcedefinitions.apiextensions.k8s.io//{n}" for n in KUBEGATE_CRDS})}
    if not namespace_existed:
        extra.add(f"namespaces//{SYSTEM}")
    ips = {o for o in installed if o.startswith("ipaddresses.networking.k8s.io/")}
    assert extra <= installed and len(ips) == 2, sorted(installed)
    assert sorted(o.split("/", 1)[1] for o in installed - extra - ips) == sorted(
        f"{ns}/{name}" for _, ns, name in wanted), "\n".join(sorted(installed - extra - ips))

    # RBAC on: the ServiceAccounts have exactly the permissions kubectl apply -k gives them.
    for sa in ("kubegate-operator", "kubegate-dataplane"):
        assert permissions(fresh, sa) == permissions(cluster, sa), sa
    assert fresh.kubectl("auth", "can-i", "list", "gatewayroutes.kubegate.dev", "-A",
                         f"--as=system:serviceaccount:{SYSTEM}:kubegate-operator").stdout.strip() == "yes"
    assert fresh.kubectl("auth", "can-i", "delete", "pods", "-n", SYSTEM,
                         f"--as=system:serviceaccount:{SYSTEM}:kubegate-operator", check=False).stdout.strip() == "no"

    # Upgrade: the values say what changes, live.
    out = run_helm(helm, "upgrade", "kubegate", str(CHART), "-n", SYSTEM, "--set", "dataplane.replicas=4",
                   "--set", "commonLabels.team=edge", "--set", f"redis.url={REDIS_URL}", kubeconfig=kc).stdout
    assert "STATUS: deployed" in out and "WARNING" not in out, "the namespace is labelled now"
    dp = json.loads(fresh.kubectl("get", "deployment", "kubegate-dataplane", "-n", SYSTEM, "-o", "json").stdout)
    assert dp["spec"]["replicas"] == 4 and dp["metadata"]["labels"]["team"] == "edge"
    secret = json.loads(fresh.kubectl("get", "secret", "kubegate-redis", "-n", SYSTEM, "-o", "json").stdout)
    assert base64.b64decode(secret["data"]["url"]).decode() == REDIS_URL
    assert "s3cr3t-pa55" not in json.dumps(dp)
    history = run_helm(helm, "history", "kubegate", "-n", SYSTEM, "-o", "json", kubeconfig=kc).stdout
    assert [(r["revision"], r["status"]) for r in json.loads(history)] == [(1, "superseded"), (2, "deployed")]
    # Roll back to revision 1: the Secret it did not have is removed, the replicas are back.
    run_helm(helm, "rollback", "kubegate", "1", "-n", SYSTEM, kubeconfig=kc)  # no --wait: no pods here
    assert fresh.kubectl("get", "secret", "kubegate-redis", "-n", SYSTEM, check=False).returncode == 1
    dp = json.loads(fresh.kubectl("get", "deployment", "kubegate-dataplane", "-n", SYSTEM, "-o", "json").stdout)
    assert dp["spec"]["replicas"] == 2 and "team" not in dp["metadata"]["labels"]

    # Uninstall: nothing left but the CRDs (and the namespace Helm created, now empty).
    run_helm(helm, "uninstall", "kubegate", "-n", SYSTEM, "--wait", kubeconfig=kc)
    left = everything(fresh) - before
    expected = set(CRD_OBJECTS)
    if not namespace_existed:
        expected.add(f"namespaces//{SYSTEM}")
    assert left == expected
    assert not [o for o in everything(fresh) if f"/{SYSTEM}/" in o], "objects left in the release namespace"

    # The CRDs left behind can be handed to the kubegate-crds chart (docs/install.md).
    run_helm(helm, "install", "kubegate-crds", str(CRDS_CHART), "-n", SYSTEM, "--take-ownership", kubeconfig=kc)
    for name in KUBEGATE_CRDS:
        crd = json.loads(fresh.kubectl("get", "crd", name, "-o", "json").stdout)
        assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == "kubegate-crds", name
    run_helm(helm, "uninstall", "kubegate-crds", "-n", SYSTEM, "--wait", kubeconfig=kc)
    assert everything(fresh) - before == expected


def test_crds_chart_upgrades_the_crds_and_keeps_them_on_uninstall(helm, fresh, tmp_path):
    remove_kubegate_crds(fresh)
    kc = fresh.kubeconfig
    if fresh.kubectl("get", "namespace", SYSTEM, check=False).returncode != 0:
        fresh.kubectl("apply", "-f", str(MANIFESTS / "base" / "namespace.yaml"))
    before = everything(fresh)
    run_helm(helm, "install", "kubegate-crds", str(CRDS_CHART), "-n", SYSTEM, kubeconfig=kc)
    run_helm(helm, "install", "kubegate", str(CHART), "-n", SYSTEM, "--skip-crds", kubeconfig=kc)

    # A newer chart changes a CRD (here: a new printer column); `helm upgrade` applies it.
    newer = tmp_path / "kubegate-crds"
    subprocess.run(["cp", "-r", str(CRDS_CHART), str(newer)], check=True)
    path = newer / "files" / "kubegate.dev_gatewayroutes.yaml"
    crd = yaml.safe_load(path.read_text())
    crd["spec"]["versions"][0].setdefault("additionalPrinterColumns", []).append(
        {"name": "Upgraded", "type": "string", "jsonPath": ".metadata.name", "priority": 1})
    path.write_text(yaml.safe_dump(crd))
    run_helm(helm, "upgrade", "kubegate-crds", str(newer), "-n", SYSTEM, kubeconfig=kc)
    live_crd = json.loads(fresh.kubectl("get", "crd", "gatewayroutes.kubegate.dev", "-o", "json").stdout)
    assert "Upgraded" in [c["name"] for c in live_crd["spec"]["versions"][0]["additionalPrinterColumns"]]

    # A user's route survives uninstalling both releases: the CRDs are kept (helm.sh/resource-policy: keep).
    user_ns = f"shop-{tmp_path.name[-6:].lower().replace('_', '')}"
    fresh.kubectl("create", "namespace", user_ns)
    route = yaml.safe_load((REPO / "examples" / "21-route-orders.yaml").read_text())
    route["metadata"]["namespace"] = user_ns
    fresh.kubectl("apply", "-f", "-", input=yaml.safe_dump(route))
    run_helm(helm, "uninstall", "kubegate", "-n", SYSTEM, "--wait", kubeconfig=kc)
    out = run_helm(helm, "uninstall", "kubegate-crds", "-n", SYSTEM, "--wait", kubeconfig=kc)
    assert "kept due to the resource policy" in out.stdout + out.stderr
    assert fresh.kubectl("get", "gatewayroute", "orders", "-n", user_ns).returncode == 0
    left = everything(fresh) - before
    assert left == CRD_OBJECTS | {f"namespaces//{user_ns}", f"gatewayroutes.kubegate.dev/{user_ns}/orders"}
