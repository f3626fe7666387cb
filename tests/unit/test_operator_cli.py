"""`kubegate operator` and `kubegate dataplane` fail with one clear line when there is no cluster to talk to."""

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("command", ["operator", "dataplane"])
def test_missing_kubeconfig_is_one_line(command, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    env["KUBECONFIG"] = str(tmp_path / "nope.yaml")
    out = subprocess.run([sys.executable, "-m", "kubegate.cli", command], env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    expected = (f"kubegate: no kubeconfig: {tmp_path / 'nope.yaml'} does not exist "
                "(set KUBECONFIG or run in a cluster)")
    assert lines == [expected]


def test_broken_kubeconfig_is_one_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    env = {**os.environ, "KUBECONFIG": str(broken)}
    out = subprocess.run([sys.executable, "-m", "kubegate.cli", "operator"], env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("kubegate: cannot load Kubernetes credentials:") and out.stderr.count("\n") == 1


def test_metrics_port_out_of_range_is_one_line():
    out = subprocess.run([sys.executable, "-m", "kubegate.cli", "operator", "--metrics-port", "70000"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == ["kubegate: --metrics-port 70000: not a port number (0-65535)"]


@pytest.mark.parametrize(("url", "reason"), [
    ("http://:hunter2-secret@10.0.0.5:6379/0", "redis URL must start with redis:// or rediss://, not 'http'"),
    ("redis://:hunter2-secret@10.0.0.5:port/0", "redis URL port must be a number"),
])
def test_bad_redis_url_is_one_line_without_its_password(url, reason, tmp_path):
    """From the flag and from KUBEGATE_REDIS_URL (how the manifests pass it, from a Secret) alike."""
    for args, extra in ((["--redis-url", url], {}), ([], {"KUBEGATE_REDIS_URL": url})):
        env = {**os.environ, "KUBECONFIG": str(tmp_path / "nope.yaml"), **extra}
        out = subprocess.run([sys.executable, "-m", "kubegate.cli", "operator", *args], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 1
        assert out.stderr.strip().splitlines() == [f"kubegate: --redis-url: {reason}"]
        assert "hunter2" not in out.stdout + out.stderr
