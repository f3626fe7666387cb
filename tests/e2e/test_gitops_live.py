"""Argo CD's Lua health and Flux's kstatus on statuses written by the REAL operator.

tests/deploy/test_gitops_health.py covers every state with statuses the test
writes itself; here the operator and a data plane run as processes with their
own ServiceAccount tokens, and the GitOps verdicts are taken on what they
really produce: Ready, Conflicted (Stalled), a missing Service, and a data
plane that went away.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
from gitops_checks import argo_health, flux_status, kstatus_binary
from helpers import start_dataplane, start_operator, wait_until


def route(namespace: str, name: str, path: str, backend: dict) -> str:
    return yaml.safe_dump({"apiVersion": "kubegate.dev/v1alpha1", "kind": "GatewayRoute",
                           "metadata": {"name": name, "namespace": namespace},
                           "spec": {"hosts": [f"{namespace}.gitops.example"], "path": path, "backends": [backend]}})


@pytest.fixture(scope="module")
def live(cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gitops-live")
    namespace = f"gitops-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    operator = start_operator(cluster, tmp, "operator-gitops")
    dataplane = start_dataplane(cluster, tmp, "dp-gitops")
    yield {"ns": namespace, "operator": operator, "dataplane": dataplane}
    dataplane.stop()
    operator_alive = operator.alive()
    cluster.kubectl("delete", "gatewayroutes", "--all", "-n", namespace, "--wait=false")
    operator.stop()
    assert operator_alive, operator.log()[-2000:]


def fetch(cluster, namespace: str, name: str) -> dict:
    return json.loads(cluster.kubectl("get", "gatewayroutes", name, "-n", namespace, "-o", "json").stdout)


def settled(cluster, namespace: str, name: str, ready: str, timeout: float = 30) -> dict:
    """The object once the operator has observed its generation and Ready has the wanted status."""
    def check():
        obj = fetch(cluster, namespace, name)
        status = obj.get("status") or {}
        conds = {c["type"]: c["status"] for c in status.get("conditions") or ()}
        return obj if (status.get("observedGeneration") == obj["metadata"]["generation"]
                       and conds.get("Ready") == ready) else None
    return wait_until(check, timeout, f"GatewayRoute {namespace}/{name} Ready={ready}")


@pytest.fixture(scope="module")
def kstatus():
    return kstatus_binary()


def test_operator_states_read_by_argo_cd_and_flux(cluster, live, kstatus):
    ns = live["ns"]
    cluster.kubectl("apply", "-f", "-", input=route(ns, "first", "/live/*rest", {"url": "http://127.0.0.1:9"}))
    ok = settled(cluster, ns, "first", "True")
    assert argo_health(ok)[0] == "Healthy"
    assert flux_status(kstatus, ok)["status"] == "Current"

    # The same host + path again: the newer route is Conflicted, a spec problem only an edit fixes.
    cluster.kubectl("apply", "-f", "-", input=route(ns, "second", "/live/*rest", {"url": "http://127.0.0.1:9"}))
    conflicted = settled(cluster, ns, "second", "False")
    status, message = argo_health(conflicted)
    assert status == "Degraded" and "Conflicted" in message
    assert flux_status(kstatus, conflicted)["status"] == "Failed"

    # A missing Service: not a spec error, but it needs a person; Argo CD says why.
    cluster.kubectl("apply", "-f", "-", input=route(ns, "orphan", "/orphan", {"service": "absent", "port": 80}))
    orphan = settled(cluster, ns, "orphan", "False")
    status, message = argo_health(orphan)
    assert status == "Degraded" and "absent" in message
    # kstatus keeps waiting (Reconciling=True) instead of calling it Current: Flux times out, never passes.
    assert flux_status(kstatus, orphan)["status"] == "InProgress"


def test_a_stopped_data_plane_is_degraded_in_argo_cd(cluster, live):
    ns = live["ns"]
    settled(cluster, ns, "first", "True")
    live["dataplane"].stop()
    gone = settled(cluster, ns, "first", "False")
    status, message = argo_health(gone)
    assert status == "Degraded" and "data-plane" in message
