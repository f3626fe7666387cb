"""The dev cluster itself: real API server, RBAC on, TokenRequest works, CRDs Established."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from kubegate.devcluster import DevCluster
from kubegate.gobuild import versions


def test_server_version_is_the_pinned_release(cluster):
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


def test_cli_up_env_down_round_trip(tmp_path):
    """`kubegate dev-cluster` as a user runs it: detached processes, idempotent up, env, clean down."""
    env = {**os.environ, "KUBEGATE_DEV_CLUSTER_DIR": str(tmp_path / "dc")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "kubegate.cli", "dev-cluster", *args], env=env,
                              capture_output=True, text=True, timeout=180, check=False)

    missing = cli("env")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "dev-cluster up" in missing.stderr
    up = cli("up")
    assert up.returncode == 0, up.stderr
    assert up.stdout == f"export KUBECONFIG={tmp_path / 'dc' / 'kubeconfig'}\n"
    assert "dev cluster up at https://127.0.0.1:" in up.stderr and "CRDs" in up.stderr
    running = DevCluster.load(tmp_path / "dc")
    try:
        assert running is not None and running.alive() and running.readyz()
        assert "already running" in cli("up").stderr
        assert cli("env").stdout == up.stdout
        crds = running.kubectl("get", "crd", "-o", "name").stdout
        assert "customresourcedefinition.apiextensions.k8s.io/gatewayroutes.kubegate.dev" in crds
        assert "cert-manager" not in crds  # the Certificate CRD is a test fixture only
    finally:
        down = cli("down")
    assert down.returncode == 0 and "stopped" in down.stderr
    assert not running.alive() and not (tmp_path / "dc").exists()
