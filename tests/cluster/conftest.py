"""The product as users install it, on a real node: one node cluster per pytest session.

``node`` is a :class:`kubegate.nodecluster.Node` (the code of ``kubegate
dev-cluster up --node``) in a temporary folder, with the image built from the
Dockerfile (podman + runc, :mod:`kubegate.images`) loaded into its containerd
and ``kubectl apply --server-side -k manifests/overlays/dev`` applied: both
Deployments rolled out in the restricted ``kubegate-system`` namespace. The
``shop`` fixture adds the examples/ with echo backends running as pods.

Figures (image size, node start, apply -> all Ready) are printed with ``-s``
and recorded on the node object (``node.figures``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from kubegate import gobuild, images, nodecluster

REPO = Path(__file__).resolve().parents[2]
OVERLAY = REPO / "manifests" / "overlays" / "dev"
CERT_MANAGER_CRD = REPO / "tests" / "fixtures" / "cert-manager-certificate-crd.yaml"
NS = "kubegate-system"


def log(message: str) -> None:
    print(f"[node] {message}", flush=True)


def pods_ready(node, namespace: str, selector: str | None = None) -> bool:
    args = ["get", "pods", "-n", namespace, "-o", "json"] + (["-l", selector] if selector else [])
    items = json.loads(node.kubectl(*args).stdout)["items"]
    live = [p for p in items if not p["metadata"].get("deletionTimestamp")]
    return bool(live) and all(
        any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
        for p in live)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll until ``predicate()`` is truthy. A connection refused or reset counts as "not yet": while
    pods roll out, kube-proxy and the NetworkPolicy enforcer (kube-router REJECTs) catch up in their own time."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except OSError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="session")
def node(tmp_path_factory):
    figures: dict[str, float] = {}
    started = time.monotonic()
    image, took = images.build_kubegate(log=log)
    figures["image_build_s"] = took
    figures["image_size_mb"] = images.image_size(image) / 1e6
    redis = images.ensure_redis_image(log=log)
    # Not under pytest's basetemp: other pytest sessions on this machine prune old basetemps
    # (rename to garbage-*, rmtree) while the node's mounts and sockets live there.
    root = gobuild.cache_root() / "test-nodes"
    root.mkdir(parents=True, exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix="node-", dir=root))
    t = time.monotonic()
    up = nodecluster.up(state, log=log, install_crds=False)
    figures["node_up_s"] = time.monotonic() - t
    try:
        up.load_images([image, redis], log=log)
        up.cluster.install_crds(CERT_MANAGER_CRD)
        t = time.monotonic()
        up.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(OVERLAY))
        for deployment in ("kubegate-operator", "kubegate-dataplane", "kubegate-redis"):
            up.kubectl("rollout", "status", "-n", NS, f"deployment/{deployment}", "--timeout=240s", timeout=250)
        wait_for(lambda: pods_ready(up, NS), 120, "every kubegate pod Ready")
        figures["apply_to_ready_s"] = time.monotonic() - t
        figures["fixture_total_s"] = time.monotonic() - started
        up.figures = figures
        log("figures: " + ", ".join(f"{k}={v:.1f}" for k, v in figures.items()))
        yield up
    finally:
        if not os.environ.get("KUBEGATE_KEEP_DEV_CLUSTER"):
            nodecluster.down(state, log=log)
            shutil.rmtree(state, ignore_errors=True)


def node_kubectl_json(node, *args: str) -> dict:
    return json.loads(node.kubectl(*args, "-o", "json").stdout)
