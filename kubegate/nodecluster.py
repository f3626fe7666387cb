"""A real single-node Kubernetes cluster on this machine: ``kubegate dev-cluster up --node``.

Why: the product is an image, two Deployments, Services and NetworkPolicies. Only
a node that really runs pods proves the manifests, probes, rollouts, drains and
policies. Nothing here is downloaded as a binary or pulled from a registry:

- etcd, kube-apiserver (the plain dev cluster, :mod:`kubegate.devcluster`) and
  kube-controller-manager, kube-scheduler, kubelet, kube-proxy (iptables mode),
  built from the same pinned ``k8s.io/kubernetes`` module in hack/controlplane;
- containerd, runc and the CNI plugins (bridge, host-local, portmap, loopback)
  from Debian packages;
- CoreDNS built from its Go module (hack/coredns) as pods in kube-system
  (labels ``k8s-app: kube-dns``, Service ``kube-dns`` at 10.96.0.10);
- kube-router, firewall only, from its Go module (hack/kube-router): the
  NetworkPolicy enforcer. TEST ONLY: kube-router v2.1.0 has reported security
  flaws; it never ships with kubegate.

Everything the node creates is named so ``down`` can remove it all: the bridge
``kg-cni0`` (10.244.0.1/24, also the node's and the API server's address), the
processes recorded in ``state.json``, mounts under the state folder and
containerd's netns, kube-proxy's and kube-router's iptables chains and ipsets
(their own ``--cleanup`` modes) and the CNI masquerade chains of network
``kg-node``. Loopback traffic of other processes is never matched: kube-proxy
serves NodePorts only on the bridge address and kube-router's rules match pod
addresses only.

Binary builds are cached under ``~/.cache/kubegate/node/<component>-<version>/``
(keyed by version, separately from the API server's folder, so adding node
binaries never rebuilds kube-apiserver; the Go build cache is shared).

This module is the node's lifecycle (``up``, ``down``); the binaries are
:mod:`kubegate.gobuild`'s, the files it writes :mod:`kubegate.node_config`'s and
what it changes on the host (and removes again) :mod:`kubegate.node_host`'s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from kubegate import devcluster, gobuild, images, local_processes, node_host
from kubegate.errors import UserError
from kubegate.node_config import (
    API_PORT,
    API_SERVICE_IP,
    BRIDGE,
    CLUSTER_DNS,
    NODE_IP,
    NODE_NAME,
    PAUSE_IMAGE,
    cni_config,
    containerd_config,
    containerd_socket,
    coredns_image,
    coredns_manifest,
    kubelet_config,
)

NODE_READY_TIMEOUT_S = 180.0
# Stopped by down() in this order, after the pods are gone (containerd last of all).
CONTROLLERS = ("kube-controller-manager", "kube-scheduler")
AGENTS = ("kubelet", "kube-router", "kube-proxy")


# --------------------------------------------------------------------------- the node


@dataclass
class Node:
    cluster: devcluster.DevCluster

    @property
    def state_dir(self) -> Path:
        return self.cluster.state_dir

    @property
    def containerd_socket(self) -> Path:
        return containerd_socket(self.state_dir)

    def kubectl(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.cluster.kubectl(*args, **kw)

    def load_images(self, names: list[str], log=print) -> None:
        images.load_into_containerd(names, self.containerd_socket, log=log)


def default_node_dir() -> Path:
    return Path(os.environ.get("KUBEGATE_DEV_NODE_DIR") or gobuild.cache_root() / "dev-node")


def owner_file() -> Path:
    """Where ``up`` records which state folder owns the bridge, so ``down`` and the next ``up`` find it."""
    return gobuild.cache_root() / "node-owner"


def _recorded_owner() -> Path | None:
    try:
        return Path(owner_file().read_text().strip())
    except OSError:
        return None


def _claimants() -> list[devcluster.DevCluster]:
    """Node states that may hold the bridge: the owner on record, the default folder, the test folders."""
    paths = [p for p in (_recorded_owner(), default_node_dir()) if p is not None]
    paths += sorted((gobuild.cache_root() / "test-nodes").glob("node-*"))
    unique = dict.fromkeys(p.resolve() for p in paths)
    return [c for p in unique if (c := devcluster.DevCluster.load(p)) is not None]


def _any_process_alive(cluster: devcluster.DevCluster) -> bool:
    return any(_alive(cluster, name) for name in cluster.pids)


def reclaim_bridge(log=print) -> None:
    """A bridge left by a node whose processes are all gone (a killed test run, a crash, a lost session)
    is taken down with everything that node left; one whose processes still run is another node
    cluster, and is refused rather than touched."""
    if not node_host.bridge_exists():
        return
    states = _claimants()
    if live := [c for c in states if _any_process_alive(c)]:
        raise UserError(f"bridge {BRIDGE} already exists: the node cluster in {live[0].state_dir} is up "
                        "(`kubegate dev-cluster down --node` removes it)")
    log(f"bridge {BRIDGE} is left from a node cluster whose processes are gone: removing its leftovers")
    for cluster in states:
        down(cluster.state_dir, log=lambda *_: None)
    if node_host.bridge_exists():  # no state recorded it: the host-wide leftovers only
        node_host.remove_leftovers()


def running(state_dir: Path | None = None) -> Node | None:
    cluster = devcluster.DevCluster.load(Path(state_dir or default_node_dir()))
    if cluster is None or not cluster.alive():
        return None
    return Node(cluster)


def _spawn(name: str, argv: list[str], cluster: devcluster.DevCluster) -> subprocess.Popen:
    proc = local_processes.spawn(argv, cluster.state_dir / f"{name}.log")
    cluster.pids[name] = proc.pid
    cluster.save()
    return proc


def up(state_dir: Path | None = None, *, log=print, install_crds: bool = True) -> Node:
    """Bring up the whole node; returns when the Node is Ready and cluster DNS answers."""
    state_dir = Path(state_dir or default_node_dir())
    if (existing := running(state_dir)) is not None and existing.cluster.readyz():
        log(f"node cluster already running at {existing.cluster.server}")
        return existing
    if devcluster.DevCluster.load(state_dir) is not None:
        log("removing the state of a node cluster that is no longer running")
        down(state_dir, log=lambda *_: None)
    node_host.require_host()
    reclaim_bridge(log)
    bins = gobuild.ensure_node_binaries(log=log)
    images.image_from_binary(PAUSE_IMAGE, bins["pause"], "/pause")
    images.image_from_binary(coredns_image(), bins["coredns"], "/coredns")
    started = time.monotonic()
    node_host.make_bridge()
    owner_file().write_text(f"{state_dir.resolve()}\n")
    try:
        node = _start(state_dir, bins, log, install_crds)
    except BaseException:
        if os.environ.get("KUBEGATE_KEEP_DEV_CLUSTER"):
            raise  # left running for a look; `kubegate dev-cluster down --node` removes it
        if devcluster.DevCluster.load(state_dir) is None:  # failed before the state was written
            node_host.sh("ip", "link", "del", BRIDGE)
        else:
            down(state_dir, log=lambda *_: None, keep_logs=True)
        raise
    node.cluster.started_in = time.monotonic() - started
    node.cluster.save()
    log(f"node cluster up at {node.cluster.server} in {node.cluster.started_in:.0f}s "
        f"(node {NODE_NAME} Ready, CoreDNS serving {CLUSTER_DNS})")
    return node


def _start(state_dir: Path, bins: dict[str, Path], log, install_crds: bool) -> Node:
    pki = state_dir / "pki"
    # 6443 on the bridge address (ours alone): NetworkPolicies see the endpoint port after the Service's DNAT,
    # and kubegate's egress policy admits the API server on 443/6443.
    cluster = devcluster.up(state_dir, install_crds=install_crds, log=log, address=NODE_IP, port=API_PORT,
                            extra_sans=[API_SERVICE_IP],
                            extra_args=[f"--kubelet-client-certificate={pki / 'admin.crt'}",
                                        f"--kubelet-client-key={pki / 'admin.key'}",
                                        "--kubelet-preferred-address-types=InternalIP",
                                        "--service-node-port-range=30000-32767",
                                        "--allow-privileged=true"])
    kubeconfig = str(cluster.kubeconfig)
    node = Node(cluster)
    # containerd
    (state_dir / "cni" / "net.d").mkdir(parents=True, exist_ok=True)
    (state_dir / "cni" / "net.d" / "10-kg-node.conflist").write_text(json.dumps(cni_config(state_dir), indent=1))
    (state_dir / "containerd").mkdir(parents=True, exist_ok=True)
    (state_dir / "containerd" / "config.toml").write_text(containerd_config(state_dir))
    containerd = _spawn("containerd", ["containerd", "--config", str(state_dir / "containerd" / "config.toml")],
                        cluster)
    _wait(lambda: node_host.sh("ctr", "--address", str(node.containerd_socket), "version").returncode == 0, 30,
          "containerd", [("containerd", containerd)], state_dir)
    node.load_images([PAUSE_IMAGE, coredns_image()], log=log)
    # control-plane controllers
    ports = {n: local_processes.free_port() for n in ("kcm", "sched", "kubelet", "kubelet-healthz", "proxy-metrics",
                                                  "proxy-healthz", "router-health")}
    procs = [("containerd", containerd)]
    procs.append(("kube-controller-manager", _spawn("kube-controller-manager", [
        str(bins["kube-controller-manager"]), f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1",
        f"--secure-port={ports['kcm']}", f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}", "--use-service-account-credentials=true",
        "--allocate-node-cidrs=true", "--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size=24",
        f"--service-cluster-ip-range={devcluster.SERVICE_CLUSTER_IP_RANGE}", "--controllers=*,-cloud-node-lifecycle",
        "--node-monitor-grace-period=20s", "--v=1"], cluster)))
    procs.append(("kube-scheduler", _spawn("kube-scheduler", [
        str(bins["kube-scheduler"]), f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1",
        f"--secure-port={ports['sched']}", "--v=1"], cluster)))
    # kubelet
    (state_dir / "kubelet").mkdir(exist_ok=True)
    config = state_dir / "kubelet-config.yaml"
    config.write_text(yaml.safe_dump(kubelet_config(state_dir, ports["kubelet"], ports["kubelet-healthz"])))
    procs.append(("kubelet", _spawn("kubelet", [
        str(bins["kubelet"]), f"--config={config}", f"--kubeconfig={kubeconfig}",
        f"--root-dir={state_dir / 'kubelet'}", f"--cert-dir={state_dir / 'kubelet' / 'pki'}",
        f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}", "--v=1"], cluster)))
    # kube-proxy: iptables; NodePorts on the bridge address only (no route_localnet, loopback untouched).
    procs.append(("kube-proxy", _spawn("kube-proxy", [
        str(bins["kube-proxy"]), f"--kubeconfig={kubeconfig}", "--proxy-mode=iptables",
        f"--hostname-override={NODE_NAME}", "--cluster-cidr=10.244.0.0/16", f"--nodeport-addresses={NODE_IP}/32",
        f"--metrics-bind-address=127.0.0.1:{ports['proxy-metrics']}",
        f"--healthz-bind-address=127.0.0.1:{ports['proxy-healthz']}", "--conntrack-max-per-core=0",
        "--v=1"], cluster)))

    def node_ready() -> bool:
        out = node.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if out.returncode != 0:
            return False
        conds = {c["type"]: c["status"] for c in json.loads(out.stdout)["status"].get("conditions", [])}
        return conds.get("Ready") == "True"

    _wait(node_ready, NODE_READY_TIMEOUT_S, f"node {NODE_NAME} to be Ready", procs, state_dir)
    # kube-router finds its node by name: only once the kubelet registered it.
    procs.append(("kube-router", _spawn("kube-router", [
        str(bins["kube-router"]), f"--kubeconfig={kubeconfig}", "--run-firewall=true", "--run-router=false",
        "--run-service-proxy=false", f"--hostname-override={NODE_NAME}", "--metrics-port=0",
        f"--health-port={ports['router-health']}", f"--service-cluster-ip-range={devcluster.SERVICE_CLUSTER_IP_RANGE}",
        "--iptables-sync-period=10s", "--v=1"], cluster)))
    _wait(lambda: _healthy(ports["router-health"]), 60, "kube-router's firewall", procs, state_dir)
    node.kubectl("apply", "--server-side", "-f", "-", input=coredns_manifest())
    done = node.kubectl("rollout", "status", "-n", "kube-system", "deployment/coredns", "--timeout=120s",
                        timeout=130, check=False)
    if done.returncode != 0:
        logs = node.kubectl("logs", "-n", "kube-system", "deployment/coredns", "--tail=5", check=False)
        raise UserError(f"CoreDNS did not become ready: {(logs.stdout or logs.stderr).strip()[-600:]}")
    return node


def _healthy(port: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait(predicate, timeout: float, what: str, procs: list[tuple[str, subprocess.Popen]], state_dir: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for name, proc in procs:
            if proc.poll() is not None:
                raise UserError(f"{name} exited with {proc.returncode}: {local_processes.log_tail(state_dir / f'{name}.log')}")
        if time.monotonic() > deadline:
            raise UserError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


# --------------------------------------------------------------------------- down


def down(state_dir: Path | None = None, *, log=print, keep_logs: bool = False) -> bool:
    """Stop every process, remove pods' sandboxes, mounts, netns, the bridge and every iptables rule/ipset."""
    state_dir = Path(state_dir or _recorded_owner() or default_node_dir())
    cluster = devcluster.DevCluster.load(state_dir)
    if cluster is None:
        log(f"no node cluster state in {state_dir}")
        node_host.sh("ip", "link", "del", BRIDGE)
        _forget_owner(state_dir)
        return False
    bins = {b.name: gobuild.binary_path(b) for b in gobuild.node_builds()}
    socket = containerd_socket(state_dir)
    for name in CONTROLLERS:  # no new pods from here on
        if pid := cluster.pids.get(name):
            local_processes.stop(pid, name, timeout=15)
    if (state_dir / "pki" / "ca.crt").exists() and cluster.readyz() and _alive(cluster, "kubelet") and _alive(cluster, "containerd"):
        # Let the kubelet stop every pod (CNI DEL removes veths, addresses, masquerade rules).
        cluster.kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=0", "--force",
                        "--wait=false", check=False, timeout=60)
        ctr = ["ctr", "--address", str(socket), "-n", "k8s.io", "tasks", "ls", "-q"]
        deadline = time.monotonic() + 30
        while node_host.sh(*ctr).stdout.strip() and time.monotonic() < deadline:
            time.sleep(0.5)
    for name in AGENTS:
        if pid := cluster.pids.get(name):
            local_processes.stop(pid, name, timeout=15)
    if socket.exists() and (pid := cluster.pids.get("containerd")) and local_processes.alive(pid):
        node_host.remove_sandboxes(socket)
    if pid := cluster.pids.get("containerd"):
        local_processes.stop(pid, "containerd")
    node_host.kill_shims(state_dir)
    # Their own cleanup modes remove exactly the chains and ipsets they created.
    if os.access(bins["kube-proxy"], os.X_OK):
        node_host.sh(str(bins["kube-proxy"]), "--cleanup", "--proxy-mode=iptables", timeout=60)
    node_host.unmount_under(state_dir)
    node_host.remove_leftovers()
    _forget_owner(state_dir)
    cluster.pids = {k: v for k, v in cluster.pids.items() if k in ("etcd", "kube-apiserver")}
    cluster.save()
    devcluster.down(state_dir, log=lambda *_: None, keep_logs=keep_logs)
    log(f"node cluster at {cluster.server} stopped and removed")
    return True


def _forget_owner(state_dir: Path) -> None:
    if _recorded_owner() == state_dir.resolve():
        owner_file().unlink(missing_ok=True)


def _alive(cluster: devcluster.DevCluster, name: str) -> bool:
    pid = cluster.pids.get(name)
    return bool(pid) and local_processes.alive(pid) and local_processes.runs(pid, name)


def main(argv: list[str]) -> int:
    """``python3 -m kubegate.nodecluster --build``: what scripts/install.sh runs (binaries and base images)."""
    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if "--build" not in argv:
        print("usage: python3 -m kubegate.nodecluster --build", file=sys.stderr)
        return 2
    started = time.monotonic()
    gobuild.ensure_node_binaries(log=log)
    images.ensure_base_image(log=log)
    images.ensure_redis_image(log=log)
    log(f"node cluster binaries and base images ready in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
