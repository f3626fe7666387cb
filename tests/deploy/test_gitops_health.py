"""Argo CD's Lua health check and Flux's kstatus, run against real objects read from the API server.

The test acts as the operator: it creates kubegate objects and writes their
status through the status subresource for each state a GitOps tool must tell
apart, then reads them back with kubectl and asks (1) the shipped
manifests/argocd/health.lua under lua5.4 and (2) the real
sigs.k8s.io/cli-utils kstatus library (hack/kstatus, built with go build).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from gitops_checks import HEALTH_LUA, REPO, argo_health, flux_status, kstatus_binary

MINIMAL_SPECS = {
    "GatewayRoute": {"path": "/health/*rest", "backends": [{"url": "http://127.0.0.1:9"}]},
    "RateLimitPolicy": {"limits": [{"dimension": "ip", "requests": 10, "period": "1m"}]},
    "ApiKey": {"secretRef": {"name": "health-key", "key": "api-key"}},
    "TLSPolicy": {"hostnames": ["health.example.com"], "certificate": {"secretRef": {"name": "health-tls"}}},
}


@pytest.fixture(scope="module")
def kstatus() -> Path:
    return kstatus_binary()


PLURALS = {"GatewayRoute": "gatewayroutes", "RateLimitPolicy": "ratelimitpolicies", "ApiKey": "apikeys",
           "TLSPolicy": "tlspolicies"}


def cond(type_: str, status: str, reason: str, message: str = "", generation: int = 1) -> dict:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": generation}


def status_body(generation: int, ready: str, reason: str, message: str = "", *,
                reconciling: bool = False, stalled: bool = False) -> dict:
    ok = ready == "True"
    return {"observedGeneration": generation, "conditions": [
        cond("Accepted", "False" if stalled else "True", reason if stalled else "Accepted", message, generation),
        cond("ResolvedRefs", "True", "ResolvedRefs", "", generation),
        cond("Programmed", "True" if ok else ("Unknown" if reconciling else "False"),
             "Programmed" if ok else reason, message, generation),
        cond("Ready", ready, "Ready" if ok else reason, message, generation),
        cond("Reconciling", "True" if reconciling else "False", reason if reconciling else "Idle",
             message if reconciling else "", generation),
        cond("Stalled", "True" if stalled else "False", reason if stalled else "Idle",
             message if stalled else "", generation),
    ]}


class Objects:
    """Create kubegate objects and write their status as the operator would."""

    def __init__(self, cluster, namespace: str):
        self.cluster, self.namespace = cluster, namespace

    def create(self, kind: str, name: str, spec: dict | None = None) -> dict:
        body = {"apiVersion": "kubegate.dev/v1alpha1", "kind": kind,
                "metadata": {"name": name, "namespace": self.namespace}, "spec": spec or MINIMAL_SPECS[kind]}
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(body))
        return self.get(kind, name)

    def get(self, kind: str, name: str) -> dict:
        return json.loads(self.cluster.kubectl("get", PLURALS[kind], name, "-n", self.namespace,
                                               "-o", "json").stdout)

    def set_status(self, kind: str, name: str, status: dict) -> dict:
        self.cluster.kubectl("patch", PLURALS[kind], name, "-n", self.namespace, "--subresource=status",
                             "--type=merge", "-p", json.dumps({"status": status}))
        return self.get(kind, name)


@pytest.fixture
def objects(cluster, namespace):
    yield Objects(cluster, namespace)
    # These statuses are fakes: leave nothing for an operator started later in the session.
    cluster.kubectl("delete", ",".join(PLURALS.values()), "--all", "-n", namespace, "--wait=false")


@pytest.mark.parametrize("kind", sorted(MINIMAL_SPECS))
def test_ready_object_is_healthy_and_current(objects, kstatus, kind):
    obj = objects.create(kind, "ok")
    obj = objects.set_status(kind, "ok", status_body(obj["metadata"]["generation"], "True", "Ready",
                                                     "loaded by a live data-plane replica"))
    assert argo_health(obj) == ("Healthy", "loaded by a live data-plane replica")
    assert flux_status(kstatus, obj)["status"] == "Current"


def test_object_without_status_is_progressing(objects, kstatus):
    obj = objects.create("GatewayRoute", "fresh")
    assert "status" not in obj or not obj["status"].get("conditions")
    assert argo_health(obj)[0] == "Progressing"
    # kstatus has nothing to wait on without observedGeneration or conditions (its generic rule);
    # the operator writes status within one reconcile, so this state is transient.
    assert flux_status(kstatus, obj)["status"] == "Current"


def test_stalled_object_is_degraded_and_failed(objects, kstatus):
    obj = objects.create("GatewayRoute", "bad")
    message = "spec.backends[0]: service port 3000 is not exposed by Service admin-service"
    obj = objects.set_status("GatewayRoute", "bad", status_body(obj["metadata"]["generation"], "False",
                                                                 "Invalid", message, stalled=True))
    status, text = argo_health(obj)
    assert status == "Degraded" and text == f"Invalid: {message}"
    flux = flux_status(kstatus, obj)
    assert flux["status"] == "Failed" and message in flux["message"]


def test_reconciling_object_is_progressing_and_in_progress(objects, kstatus):
    obj = objects.create("GatewayRoute", "pending")
    message = "waiting for a data-plane replica to load generation 1"
    obj = objects.set_status("GatewayRoute", "pending", status_body(obj["metadata"]["generation"], "False",
                                                                     "Pending", message, reconciling=True))
    assert argo_health(obj) == ("Progressing", f"Pending: {message}")
    assert flux_status(kstatus, obj)["status"] == "InProgress"


def test_stale_observed_generation_is_progressing_and_in_progress(objects, kstatus):
    obj = objects.create("GatewayRoute", "edited")
    objects.set_status("GatewayRoute", "edited", status_body(obj["metadata"]["generation"], "True", "Ready"))
    edited = {**MINIMAL_SPECS["GatewayRoute"], "methods": ["GET"]}
    obj = objects.create("GatewayRoute", "edited", edited)
    assert obj["metadata"]["generation"] == obj["status"]["observedGeneration"] + 1
    status, message = argo_health(obj)
    assert status == "Progressing" and str(obj["metadata"]["generation"]) in message
    assert flux_status(kstatus, obj)["status"] == "InProgress"


def test_ready_false_without_progress_needs_a_person(objects):
    obj = objects.create("ApiKey", "orphan")
    obj = objects.set_status("ApiKey", "orphan", status_body(obj["metadata"]["generation"], "False",
                                                             "NoDataPlane", "no data-plane replica is running"))
    assert argo_health(obj) == ("Degraded", "NoDataPlane: no data-plane replica is running")


def test_kstatus_reads_live_objects_through_the_api(cluster, objects, kstatus):
    obj = objects.create("TLSPolicy", "live")
    objects.set_status("TLSPolicy", "live", status_body(obj["metadata"]["generation"], "True", "Ready"))
    objects.create("TLSPolicy", "stuck")
    objects.set_status("TLSPolicy", "stuck", status_body(1, "False", "Invalid", "bad hostname", stalled=True))
    proc = subprocess.run([str(kstatus), "-kubeconfig", str(cluster.kubeconfig), "-namespace", objects.namespace,
                           "-resource", "kubegate.dev/v1alpha1/tlspolicies"],
                          capture_output=True, text=True, check=True)
    results = {r["name"]: r["status"] for r in map(json.loads, proc.stdout.splitlines())}
    assert results == {"live": "Current", "stuck": "Failed"}


def test_argocd_cm_snippet_ships_health_lua_verbatim():
    cm = yaml.safe_load((REPO / "manifests" / "argocd" / "argocd-cm.yaml").read_text())
    assert cm["data"]["resource.customizations.health.kubegate.dev_*"] == HEALTH_LUA.read_text()
