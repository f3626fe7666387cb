"""What the node cluster changes on this host, and how ``down`` takes it all back: the bridge,
containerd's sandboxes and shims, the CNI masquerade chains, kube-router's and the kubelet's
iptables chains and ipsets, and the mounts under the state folder. Each helper removes only what
the node created (names with the node's prefixes), never loopback traffic of other processes."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from kubegate.errors import UserError
from kubegate.node_config import BRIDGE, CNI_BIN_DIR, CNI_NETWORK, NODE_IP, containerd_socket


def sh(*argv: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise UserError(f"{' '.join(argv)} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc


def require_host() -> None:
    if os.geteuid() != 0:
        raise UserError("the node cluster needs root (containerd, kubelet, iptables)")
    missing = [t for t in ("containerd", "containerd-shim-runc-v2", "ctr", "iptables", "ipset", "conntrack", "ip")
               if not shutil.which(t)]
    if not os.access(f"{CNI_BIN_DIR}/bridge", os.X_OK):
        missing.append("containernetworking-plugins")
    if missing:
        raise UserError(f"missing for the node cluster: {', '.join(missing)} (scripts/install.sh installs them)")


def bridge_exists() -> bool:
    return sh("ip", "link", "show", BRIDGE).returncode == 0


def make_bridge() -> None:
    sh("ip", "link", "add", BRIDGE, "type", "bridge", check=True)
    sh("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE, check=True)
    sh("ip", "link", "set", BRIDGE, "up", check=True)
    # Forwarding on the bridge only (ClusterIP traffic between pods is DNATed and routed back to it).
    Path(f"/proc/sys/net/ipv4/conf/{BRIDGE}/forwarding").write_text("1")


def bridge_ports() -> list[str]:
    out = sh("ip", "-o", "link", "show", "master", BRIDGE).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def remove_sandboxes(socket: Path) -> None:
    """With containerd still up (the kubelet gone), stop and remove what is left: tasks, containers, netns."""
    ctr = ["ctr", "--address", str(socket), "-n", "k8s.io"]
    tasks = sh(*ctr, "tasks", "ls", "-q").stdout.split()
    for task in tasks:
        sh(*ctr, "tasks", "kill", "-s", "SIGKILL", task)
    deadline = time.monotonic() + 10
    for task in tasks:
        while sh(*ctr, "tasks", "delete", task).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
    for container in sh(*ctr, "containers", "ls", "-q").stdout.split():
        sh(*ctr, "containers", "delete", container)


def kill_shims(state_dir: Path) -> None:
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


def remove_cni_masquerade() -> None:
    """The bridge plugin's ipMasq chains of network kg-node (CNI DEL removes them; this catches leftovers)."""
    rules = sh("iptables", "-t", "nat", "-S", "POSTROUTING").stdout.splitlines()
    for rule in rules:
        parts = _split_rule(rule)
        if parts[:1] == ["-A"] and f'name: "{CNI_NETWORK}"' in " ".join(parts) and "-j" in parts:
            chain = parts[parts.index("-j") + 1]
            sh("iptables", "-t", "nat", "-D", *parts[1:])
            sh("iptables", "-t", "nat", "-F", chain)
            sh("iptables", "-t", "nat", "-X", chain)
    # chains whose jump is already gone (a CNI DEL that stopped halfway)
    for rule in sh("iptables", "-t", "nat", "-S").stdout.splitlines():
        parts = _split_rule(rule)
        if parts[:1] == ["-A"] and parts[1].startswith("CNI-") and f'name: "{CNI_NETWORK}"' in " ".join(parts):
            sh("iptables", "-t", "nat", "-F", parts[1])
            sh("iptables", "-t", "nat", "-X", parts[1])


# kube-router's firewall chains and ipsets (its --cleanup-config crashes in v2.1.0 and leaves them).
KUBE_ROUTER_CHAINS = ("KUBE-ROUTER-", "KUBE-NWPLCY-", "KUBE-POD-FW-")


def remove_chains(prefixes: tuple[str, ...], tables: tuple[str, ...] = ("filter",)) -> None:
    """Every rule jumping to a chain named with one of ``prefixes``, then those chains (IPv4 and IPv6)."""
    for tool in ("iptables", "ip6tables"):
        for table in tables:
            rules = sh(tool, "-t", table, "-S").stdout.splitlines()
            ours = [r.split()[1] for r in rules if r.startswith("-N ") and r.split()[1].startswith(prefixes)]
            for rule in rules:
                parts = _split_rule(rule)
                if parts[:1] == ["-A"] and not parts[1].startswith(prefixes) and "-j" in parts \
                        and parts[parts.index("-j") + 1].startswith(prefixes):
                    sh(tool, "-t", table, "-D", *parts[1:])
            for chain in ours:
                sh(tool, "-t", table, "-F", chain)
            for chain in ours:
                sh(tool, "-t", table, "-X", chain)


def remove_kube_router_ipsets() -> None:
    for name in sh("ipset", "list", "-n").stdout.split():
        if name.startswith(("KUBE-SRC-", "KUBE-DST-", "kube-router-")):
            sh("ipset", "destroy", name)


KUBELET_CHAINS = ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT")


def remove_kubelet_chains() -> None:
    """The kubelet's own iptables chains (kube-proxy's --cleanup leaves them)."""
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            rules = sh(tool, "-t", table, "-S").stdout.splitlines()
            for rule in rules:
                parts = _split_rule(rule)
                if parts[:1] == ["-A"] and any(f"-j {c}" in rule for c in KUBELET_CHAINS) \
                        and parts[1] not in KUBELET_CHAINS:
                    sh(tool, "-t", table, "-D", *parts[1:])
            for chain in KUBELET_CHAINS:
                if f"-N {chain}" in rules:
                    sh(tool, "-t", table, "-F", chain)
                    sh(tool, "-t", table, "-X", chain)


def _split_rule(rule: str) -> list[str]:
    return shlex.split(rule)


def remove_leftovers() -> None:
    """Everything host-wide a node leaves once its processes are gone: kube-router's chains and ipsets,
    the CNI masquerade and kubelet chains, stray veths and the bridge."""
    remove_chains(KUBE_ROUTER_CHAINS)
    remove_kube_router_ipsets()
    remove_cni_masquerade()
    remove_kubelet_chains()
    for veth in bridge_ports():  # normally gone with the pods' netns; leftovers of a failed CNI DEL
        sh("ip", "link", "del", veth)
    sh("ip", "link", "del", BRIDGE)


def unmount_under(state_dir: Path) -> None:
    """Unmount, deepest first, everything mounted below the state folder: volumes, rootfs, shm and the
    pods' network namespaces (``netns_mounts_under_state``)."""
    prefix = str(state_dir.resolve())
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    ours = sorted({m for m in mounts if m == prefix or m.startswith(prefix + "/")}, key=len, reverse=True)
    for mount in ours:
        sh("umount", "-l", mount)
