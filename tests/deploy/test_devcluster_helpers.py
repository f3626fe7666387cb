"""Pure helpers of kubegate.devcluster and kubegate.gobuild: versions from go.mod, flags, kubeconfigs."""

from __future__ import annotations

import base64

import pytest

from kubegate import devcluster, gobuild, local_processes
from kubegate.errors import UserError


def test_module_version_reads_require_lines_in_both_forms():
    go_mod = "module x\n\nrequire go.etcd.io/etcd/server/v3 v3.6.16\n\nrequire (\n\tk8s.io/kubernetes v1.34.4\n)\n"
    assert gobuild.module_version(go_mod, "k8s.io/kubernetes") == "v1.34.4"
    assert gobuild.module_version(go_mod, "go.etcd.io/etcd/server/v3") == "v3.6.16"
    with pytest.raises(UserError, match="does not require"):
        gobuild.module_version(go_mod, "k8s.io/api")


def test_versions_come_from_the_hack_modules():
    k8s, etcd = gobuild.versions()
    assert k8s.startswith("v1.") and int(k8s.split(".")[1]) >= 33
    major, minor, patch = (int(x) for x in etcd.lstrip("v").split("."))
    assert (major, minor) >= (3, 6) or (major, minor, patch) >= (3, 5, 24)
    assert gobuild.binaries_dir(k8s, etcd).name == f"{k8s}-etcd{etcd}"


def test_ldflags_stamp_the_kubernetes_version():
    flags = gobuild.ldflags_for("v1.34.4")
    assert "gitVersion=v1.34.4" in flags and "gitMajor=1" in flags and "gitMinor=34" in flags


def test_apiserver_flags_enable_rbac_and_token_signing(tmp_path):
    args = devcluster.apiserver_args(tmp_path, 2379, 6443)
    assert "--authorization-mode=RBAC" in args
    assert f"--service-account-signing-key-file={tmp_path / 'sa.key'}" in args
    assert "--bind-address=127.0.0.1" in args and "--secure-port=6443" in args


def test_token_kubeconfig_carries_only_the_token_and_the_ca():
    cfg = devcluster.kubeconfig("https://127.0.0.1:1", b"PEM", {"token": "abc"})
    assert cfg["users"][0]["user"] == {"token": "abc"}
    assert base64.b64decode(cfg["clusters"][0]["cluster"]["certificate-authority-data"]) == b"PEM"
    assert cfg["current-context"] == cfg["contexts"][0]["name"]


def test_crd_names_and_manifest_files(tmp_path):
    docs = [{"kind": "CustomResourceDefinition", "metadata": {"name": "a.x"}}, {"kind": "Namespace"}, None]
    assert devcluster.crd_names(docs) == ["a.x"]
    for name in ("kustomization.yaml", "b.yaml", "a.yml", "notes.md"):
        (tmp_path / name).write_text("")
    assert [p.name for p in devcluster.manifest_files(tmp_path)] == ["a.yml", "b.yaml"]
    assert devcluster.manifest_files(tmp_path / "missing") == []


def test_env_without_a_cluster_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="dev-cluster up"):
        devcluster.env_lines(tmp_path)


def test_down_never_signals_a_reused_pid():
    import os

    assert not local_processes.runs(os.getpid(), "kube-apiserver")  # our PID, but not that program
    assert not local_processes.runs(2**22 + 12345, "etcd")  # beyond pid_max: no such process


def test_helm_is_pinned_once_and_cached_by_that_version(tmp_path, monkeypatch):
    go_mod = (gobuild.HACK_DIR / "helm" / "go.mod").read_text()
    assert "tool helm.sh/helm/v3/cmd/helm" in go_mod
    version = gobuild.module_version(go_mod, "helm.sh/helm/v3")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cached = tmp_path / "kubegate" / "tools" / f"helm-{version}"
    cached.parent.mkdir(parents=True)
    cached.write_text("#!/bin/sh\n")
    cached.chmod(0o755)
    built = []
    assert gobuild.helm_binary(log=built.append) == cached
    assert not built, "a cached helm of the pinned version is reused, not rebuilt"
