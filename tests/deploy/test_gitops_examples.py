"""The GitOps examples point at paths that exist and ask for server-side apply / kstatus waiting."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
GITOPS = REPO / "examples" / "gitops"


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((GITOPS / name).read_text()) if d]


def test_argocd_application_installs_the_manifests_server_side():
    apps = {d["metadata"]["name"]: d for d in docs("argocd-application.yaml") if d["kind"] == "Application"}
    spec = apps["kubegate"]["spec"]
    assert (REPO / spec["source"]["path"] / "kustomization.yaml").is_file()
    assert "ServerSideApply=true" in spec["syncPolicy"]["syncOptions"]
    assert spec["destination"]["namespace"] == "kubegate-system"


def test_flux_kustomizations_wait_on_kstatus_and_order_routes_after_kubegate():
    ks = {d["metadata"]["name"]: d["spec"] for d in docs("flux-kustomization.yaml") if d["kind"] == "Kustomization"}
    assert (REPO / ks["kubegate"]["path"] / "kustomization.yaml").is_file()
    assert all(spec["wait"] is True for spec in ks.values())
    assert ks["shop-routes"]["dependsOn"] == [{"name": "kubegate"}]
    sources = {d["metadata"]["name"] for d in docs("flux-kustomization.yaml") if d["kind"] == "GitRepository"}
    assert {spec["sourceRef"]["name"] for spec in ks.values()} <= sources
