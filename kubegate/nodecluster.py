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
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from kubegate import devcluster, images
from kubegate.errors import UserError

HACK_DIR = devcluster.HACK_DIR
BRIDGE = "kg-cni0"
CNI_NETWORK = "kg-node"
POD_CIDR = "10.244.0.0/24"
NODE_IP = "10.244.0.1"  # the bridge's address: node InternalIP and API server address, reachable from pods
CLUSTER_DNS = "10.96.0.10"
API_SERVICE_IP = "10.96.0.1"
API_PORT = 6443
NODE_NAME = "kubegate-node"
PAUSE_IMAGE = "localhost/kubegate-pause:v1"
CNI_BIN_DIR = "/usr/lib/cni"
K8S_NODE_COMPONENTS = ("kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy")
NODE_READY_TIMEOUT_S = 180.0
# Stopped by down() in this order, after the pods are gone (containerd last of all).
CONTROLLERS = ("kube-controller-manager", "kube-scheduler")
AGENTS = ("kubelet", "kube-router", "kube-proxy")


# --------------------------------------------------------------------------- binaries


@dataclass(frozen=True)
class GoBuild:
    """One binary built from a Go module in hack/: where, what package, cached under which key."""

    name: str
    module_dir: Path
    package: str
    cache_key: str
    ldflags: str = "-s -w"


def coredns_version() -> str:
    return devcluster.module_version((HACK_DIR / "coredns/go.mod").read_text(), "github.com/coredns/coredns")


def kube_router_version() -> str:
    return devcluster.module_version((HACK_DIR / "kube-router/go.mod").read_text(),
                                     "github.com/cloudnativelabs/kube-router/v2")


def node_builds() -> list[GoBuild]:
    k8s, _ = devcluster.versions()
    builds = [GoBuild(name, HACK_DIR / "controlplane", f"./{name}", f"kubernetes-{k8s}", devcluster.ldflags_for(k8s))
              for name in K8S_NODE_COMPONENTS]
    builds.append(GoBuild("coredns", HACK_DIR / "coredns", ".", f"coredns-{coredns_version()}"))
    builds.append(GoBuild("kube-router", HACK_DIR / "kube-router", "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router",
                          f"kube-router-{kube_router_version()}"))
    builds.append(GoBuild("pause", HACK_DIR / "pause", ".", "pause-v1"))
    return builds


def node_cache() -> Path:
    return devcluster.cache_root() / "node"


def binary_path(build: GoBuild) -> Path:
    return node_cache() / build.cache_key / build.name


def ensure_node_binaries(log=print) -> dict[str, Path]:
    """Every node binary from the version-keyed cache, building the missing ones (at most two at a time)."""
    builds = node_builds()
    missing = [b for b in builds if not os.access(binary_path(b), os.X_OK)]
    if missing:
        _build_all(missing, log)
    return {b.name: binary_path(b) for b in builds}


def _build_all(builds: list[GoBuild], log) -> None:
    go = devcluster._go()
    env = {**os.environ, "GOFLAGS": "-mod=mod -buildvcs=false", "CGO_ENABLED": "0"}
    log(f"building {', '.join(b.name for b in builds)} from Go modules into {node_cache()} "
        "(cold: ~10 min on 2 cores after kube-apiserver; cached afterwards)")
    started = time.monotonic()
    queue = list(builds)
    running: dict[str, tuple[subprocess.Popen, GoBuild, Path]] = {}
    failed = []
    while queue or running:
        while queue and len(running) < 2:
            b = queue.pop(0)
            folder = binary_path(b).parent
            folder.mkdir(parents=True, exist_ok=True)
            partial = folder / f".{b.name}.partial"
            with open(folder / f"build-{b.name}.log", "w") as out:
                proc = subprocess.Popen([go, "build", "-trimpath", "-ldflags", b.ldflags, "-o", str(partial),
                                         b.package], cwd=b.module_dir, env=env, stdout=out, stderr=subprocess.STDOUT)
            running[b.name] = (proc, b, partial)
        time.sleep(2)
        for name, (proc, b, partial) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            if proc.returncode == 0:
                partial.rename(binary_path(b))
                log(f"  built {name} in {time.monotonic() - started:.0f}s")
            else:
                failed.append(name)
                log(f"  building {name} failed: {devcluster._tail(binary_path(b).parent / f'build-{name}.log')}")
    if failed:
        raise UserError(f"go build failed for {', '.join(failed)}; see {node_cache()}/*/build-*.log")
    log(f"node binaries built in {time.monotonic() - started:.0f}s")


# --------------------------------------------------------------------------- configuration (pure)


def containerd_config(state: Path) -> str:
    root = state / "containerd"
    return f"""version = 2
root = "{root / 'root'}"
state = "{root / 'state'}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{containerd_socket(state)}"
[ttrpc]
  address = "{root / 'containerd.sock.ttrpc'}"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{images.runc()}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{state / 'cni' / 'net.d'}"
"""


def containerd_socket(state: Path) -> Path:
    return state / "containerd" / "containerd.sock"


def cni_config(state: Path) -> dict:
    return {
        "cniVersion": "1.0.0", "name": CNI_NETWORK,
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "isDefaultGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                      "dataDir": str(state / "cni" / "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(state: Path, port: int, healthz_port: int) -> dict:
    pki = state / "pki"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": NODE_IP, "port": port, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
        "cgroupsPerQOS": False, "enforceNodeAllocatable": [],
        "containerRuntimeEndpoint": f"unix://{containerd_socket(state)}",
        "clusterDNS": [CLUSTER_DNS], "clusterDomain": "cluster.local",
        "resolvConf": "/etc/resolv.conf",
        # This machine's disk and memory belong to many users: never evict on their account.
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False, "maxPods": 60,
        "shutdownGracePeriod": "0s", "protectKernelDefaults": False,
        "syncFrequency": "10s", "fileCheckFrequency": "5s", "nodeStatusUpdateFrequency": "5s",
        "localStorageCapacityIsolation": False,
        "podLogsDir": str(state / "pod-logs"),
    }


COREDNS_MANIFEST = """\
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }
        cache 30
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      # Port 53 as a non-root user without any capability (a namespaced, "safe" sysctl):
      # NetworkPolicies allow DNS on port 53 *after* the Service's DNAT.
      securityContext:
        sysctls: [{name: net.ipv4.ip_unprivileged_port_start, value: "53"}]
      containers:
        - name: coredns
          image: IMAGE
          imagePullPolicy: Never
          args: ["-conf", "/etc/coredns/Corefile"]
          ports:
            - {name: dns, containerPort: 53, protocol: UDP}
            - {name: dns-tcp, containerPort: 53, protocol: TCP}
          readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
          livenessProbe: {httpGet: {path: /health, port: 8080}, periodSeconds: 10}
          securityContext:
            runAsNonRoot: true
            runAsUser: 65532
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
            seccompProfile: {type: RuntimeDefault}
          volumeMounts: [{name: config, mountPath: /etc/coredns}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  selector: {k8s-app: kube-dns}
  clusterIP: CLUSTER_DNS
  ports:
    - {name: dns, port: 53, targetPort: 53, protocol: UDP}
    - {name: dns-tcp, port: 53, targetPort: 53, protocol: TCP}
"""


def coredns_image() -> str:
    return f"localhost/kubegate-coredns:{coredns_version()}"


def coredns_manifest() -> str:
    return COREDNS_MANIFEST.replace("IMAGE", coredns_image()).replace("CLUSTER_DNS", CLUSTER_DNS)


# --------------------------------------------------------------------------- host plumbing


def _sh(*argv: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise UserError(f"{' '.join(argv)} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc


def _require_host() -> None:
    if os.geteuid() != 0:
        raise UserError("the node cluster needs root (containerd, kubelet, iptables)")
    missing = [t for t in ("containerd", "containerd-shim-runc-v2", "ctr", "iptables", "ipset", "conntrack", "ip")
               if not shutil.which(t)]
    if not os.access(f"{CNI_BIN_DIR}/bridge", os.X_OK):
        missing.append("containernetworking-plugins")
    if missing:
        raise UserError(f"missing for the node cluster: {', '.join(missing)} (scripts/install.sh installs them)")
    if _sh("ip", "link", "show", BRIDGE).returncode == 0:
        raise UserError(f"bridge {BRIDGE} already exists: another node cluster is up "
                        "(`kubegate dev-cluster down --node` removes it)")


def _make_bridge() -> None:
    _sh("ip", "link", "add", BRIDGE, "type", "bridge", check=True)
    _sh("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE, check=True)
    _sh("ip", "link", "set", BRIDGE, "up", check=True)
    # Forwarding on the bridge only (ClusterIP traffic between pods is DNATed and routed back to it).
    Path(f"/proc/sys/net/ipv4/conf/{BRIDGE}/forwarding").write_text("1")


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
    return Path(os.environ.get("KUBEGATE_DEV_NODE_DIR") or devcluster.cache_root() / "dev-node")


def running(state_dir: Path | None = None) -> Node | None:
    cluster = devcluster.DevCluster.load(Path(state_dir or default_node_dir()))
    if cluster is None or not cluster.alive():
        return None
    return Node(cluster)


def _spawn(name: str, argv: list[str], cluster: devcluster.DevCluster) -> subprocess.Popen:
    proc = devcluster._spawn(argv, cluster.state_dir / f"{name}.log")
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
    _require_host()
    bins = ensure_node_binaries(log=log)
    images.image_from_binary(PAUSE_IMAGE, bins["pause"], "/pause")
    images.image_from_binary(coredns_image(), bins["coredns"], "/coredns")
    started = time.monotonic()
    _make_bridge()
    try:
        node = _start(state_dir, bins, log, install_crds)
    except BaseException:
        if os.environ.get("KUBEGATE_KEEP_DEV_CLUSTER"):
            raise  # left running for a look; `kubegate dev-cluster down --node` removes it
        if devcluster.DevCluster.load(state_dir) is None:  # failed before the state was written
            _sh("ip", "link", "del", BRIDGE)
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
    _wait(lambda: _sh("ctr", "--address", str(node.containerd_socket), "version").returncode == 0, 30,
          "containerd", [("containerd", containerd)], state_dir)
    node.load_images([PAUSE_IMAGE, coredns_image()], log=log)
    # control-plane controllers
    ports = {n: devcluster.free_port() for n in ("kcm", "sched", "kubelet", "kubelet-healthz", "proxy-metrics",
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
                raise UserError(f"{name} exited with {proc.returncode}: {devcluster._tail(state_dir / f'{name}.log')}")
        if time.monotonic() > deadline:
            raise UserError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


# --------------------------------------------------------------------------- down


def down(state_dir: Path | None = None, *, log=print, keep_logs: bool = False) -> bool:
    """Stop every process, remove pods' sandboxes, mounts, netns, the bridge and every iptables rule/ipset."""
    state_dir = Path(state_dir or default_node_dir())
    cluster = devcluster.DevCluster.load(state_dir)
    if cluster is None:
        log(f"no node cluster state in {state_dir}")
        _sh("ip", "link", "del", BRIDGE)
        return False
    bins = {b.name: binary_path(b) for b in node_builds()}
    socket = containerd_socket(state_dir)
    for name in CONTROLLERS:  # no new pods from here on
        if pid := cluster.pids.get(name):
            devcluster._stop(pid, name, timeout=15)
    if (state_dir / "pki" / "ca.crt").exists() and cluster.readyz() and _alive(cluster, "kubelet") and _alive(cluster, "containerd"):
        # Let the kubelet stop every pod (CNI DEL removes veths, addresses, masquerade rules).
        cluster.kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=0", "--force",
                        "--wait=false", check=False, timeout=60)
        ctr = ["ctr", "--address", str(socket), "-n", "k8s.io", "tasks", "ls", "-q"]
        deadline = time.monotonic() + 30
        while _sh(*ctr).stdout.strip() and time.monotonic() < deadline:
            time.sleep(0.5)
    for name in AGENTS:
        if pid := cluster.pids.get(name):
            devcluster._stop(pid, name, timeout=15)
    if socket.exists():
        _remove_sandboxes(state_dir, cluster)
    if pid := cluster.pids.get("containerd"):
        devcluster._stop(pid, "containerd")
    _kill_shims(state_dir)
    # Their own cleanup modes remove exactly the chains and ipsets they created.
    if os.access(bins["kube-proxy"], os.X_OK):
        _sh(str(bins["kube-proxy"]), "--cleanup", "--proxy-mode=iptables", timeout=60)
    _remove_chains(KUBE_ROUTER_CHAINS)
    _remove_kube_router_ipsets()
    _remove_cni_masquerade()
    _remove_kubelet_chains()
    _unmount_under(state_dir)
    for veth in _bridge_ports():  # normally gone with the pods' netns; leftovers of a failed CNI DEL
        _sh("ip", "link", "del", veth)
    _sh("ip", "link", "del", BRIDGE)
    cluster.pids = {k: v for k, v in cluster.pids.items() if k in ("etcd", "kube-apiserver")}
    cluster.save()
    devcluster.down(state_dir, log=lambda *_: None, keep_logs=keep_logs)
    log(f"node cluster at {cluster.server} stopped and removed")
    return True


def _bridge_ports() -> list[str]:
    out = _sh("ip", "-o", "link", "show", "master", BRIDGE).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def _alive(cluster: devcluster.DevCluster, name: str) -> bool:
    pid = cluster.pids.get(name)
    return bool(pid) and devcluster._alive(pid) and devcluster._runs(pid, name)


def _remove_sandboxes(state_dir: Path, cluster: devcluster.DevCluster) -> None:
    """With containerd still up (the kubelet gone), stop and remove what is left: tasks, containers, netns."""
    pid = cluster.pids.get("containerd")
    if not pid or not devcluster._alive(pid):
        return
    ctr = ["ctr", "--address", str(containerd_socket(state_dir)), "-n", "k8s.io"]
    tasks = _sh(*ctr, "tasks", "ls", "-q").stdout.split()
    for task in tasks:
        _sh(*ctr, "tasks", "kill", "-s", "SIGKILL", task)
    deadline = time.monotonic() + 10
    for task in tasks:
        while _sh(*ctr, "tasks", "delete", task).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
    for container in _sh(*ctr, "containers", "ls", "-q").stdout.split():
        _sh(*ctr, "containers", "delete", container)


def _kill_shims(state_dir: Path) -> None:
    """containerd-shim-runc-v2 processes of this node (found by their -address argument)."""
    marker = str(containerd_socket(state_dir)).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in cmdline.split(b"\0", 1)[0] and marker in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _remove_cni_masquerade() -> None:
    """The bridge plugin's ipMasq chains of network kg-node (CNI DEL removes them; this catches leftovers)."""
    rules = _sh("iptables", "-t", "nat", "-S", "POSTROUTING").stdout.splitlines()
    for rule in rules:
        parts = _split_rule(rule)
        if parts[:1] == ["-A"] and f'name: "{CNI_NETWORK}"' in " ".join(parts) and "-j" in parts:
            chain = parts[parts.index("-j") + 1]
            _sh("iptables", "-t", "nat", "-D", *parts[1:])
            _sh("iptables", "-t", "nat", "-F", chain)
            _sh("iptables", "-t", "nat", "-X", chain)
    # chains whose jump is already gone (a CNI DEL that stopped halfway)
    for rule in _sh("iptables", "-t", "nat", "-S").stdout.splitlines():
        parts = _split_rule(rule)
        if parts[:1] == ["-A"] and parts[1].startswith("CNI-") and f'name: "{CNI_NETWORK}"' in " ".join(parts):
            _sh("iptables", "-t", "nat", "-F", parts[1])
            _sh("iptables", "-t", "nat", "-X", parts[1])


# kube-router's firewall chains and ipsets (its --cleanup-config crashes in v2.1.0 and leaves them).
KUBE_ROUTER_CHAINS = ("KUBE-ROUTER-", "KUBE-NWPLCY-", "KUBE-POD-FW-")


def _remove_chains(prefixes: tuple[str, ...], tables: tuple[str, ...] = ("filter",)) -> None:
    """Every rule jumping to a chain named with one of ``prefixes``, then those chains (IPv4 and IPv6)."""
    for tool in ("iptables", "ip6tables"):
        for table in tables:
            rules = _sh(tool, "-t", table, "-S").stdout.splitlines()
            ours = [r.split()[1] for r in rules if r.startswith("-N ") and r.split()[1].startswith(prefixes)]
            for rule in rules:
                parts = _split_rule(rule)
                if parts[:1] == ["-A"] and not parts[1].startswith(prefixes) and "-j" in parts \
                        and parts[parts.index("-j") + 1].startswith(prefixes):
                    _sh(tool, "-t", table, "-D", *parts[1:])
            for chain in ours:
                _sh(tool, "-t", table, "-F", chain)
            for chain in ours:
                _sh(tool, "-t", table, "-X", chain)


def _remove_kube_router_ipsets() -> None:
    for name in _sh("ipset", "list", "-n").stdout.split():
        if name.startswith(("KUBE-SRC-", "KUBE-DST-", "kube-router-")):
            _sh("ipset", "destroy", name)


KUBELET_CHAINS = ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT")


def _remove_kubelet_chains() -> None:
    """The kubelet's own iptables chains (kube-proxy's --cleanup leaves them)."""
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            rules = _sh(tool, "-t", table, "-S").stdout.splitlines()
            for rule in rules:
                parts = _split_rule(rule)
                if parts[:1] == ["-A"] and any(f"-j {c}" in rule for c in KUBELET_CHAINS) \
                        and parts[1] not in KUBELET_CHAINS:
                    _sh(tool, "-t", table, "-D", *parts[1:])
            for chain in KUBELET_CHAINS:
                if f"-N {chain}" in rules:
                    _sh(tool, "-t", table, "-F", chain)
                    _sh(tool, "-t", table, "-X", chain)


def _split_rule(rule: str) -> list[str]:
    import shlex

    return shlex.split(rule)


def _unmount_under(state_dir: Path) -> None:
    """Unmount, deepest first, everything mounted below the state folder: volumes, rootfs, shm and the
    pods' network namespaces (``netns_mounts_under_state``)."""
    prefix = str(state_dir.resolve())
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    ours = sorted({m for m in mounts if m == prefix or m.startswith(prefix + "/")}, key=len, reverse=True)
    for mount in ours:
        _sh("umount", "-l", mount)


def main(argv: list[str]) -> int:
    """``python3 -m kubegate.nodecluster --build``: what scripts/install.sh runs (binaries and base images)."""
    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if "--build" not in argv:
        print("usage: python3 -m kubegate.nodecluster --build", file=sys.stderr)
        return 2
    started = time.monotonic()
    ensure_node_binaries(log=log)
    images.ensure_base_image(log=log)
    images.ensure_redis_image(log=log)
    log(f"node cluster binaries and base images ready in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
