"""The binaries the dev clusters run, built from the pinned Go modules in hack/ (nothing downloaded).

Versions live only in those ``go.mod`` files. Builds are cached under ``~/.cache/kubegate/``, keyed by
version (or by the sources' hash for kubegate's own helpers), so a warm machine builds nothing:
kube-apiserver and etcd (``controlplane/``), the node's components (``node/``), helm and the
test tools (``tools/``). ``python3 -m kubegate.gobuild [helm]`` is what hack/build-controlplane.sh
and hack/build-helm.sh run.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kubegate.errors import UserError
from kubegate.local_processes import log_tail

HACK_DIR = Path(__file__).resolve().parent.parent / "hack"
K8S_NODE_COMPONENTS = ("kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy")


# --------------------------------------------------------------------------- versions & paths


def module_version(go_mod: str, module: str) -> str:
    """The version ``go_mod`` (file text) requires for ``module``; the single source of versions."""
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", go_mod, re.MULTILINE)
    if not match:
        raise UserError(f"go.mod does not require {module}")
    return match.group(1)


def versions(hack_dir: Path = HACK_DIR) -> tuple[str, str]:
    """(kubernetes, etcd) versions pinned by hack/controlplane and hack/etcd."""
    try:
        k8s = module_version((hack_dir / "controlplane/go.mod").read_text(), "k8s.io/kubernetes")
        etcd = module_version((hack_dir / "etcd/go.mod").read_text(), "go.etcd.io/etcd/server/v3")
    except FileNotFoundError as exc:
        raise UserError(
            f"cannot find {exc.filename}: build the control plane from a kubegate source checkout "
            "or point KUBEBUILDER_ASSETS at a folder with kube-apiserver and etcd"
        ) from None
    return k8s, etcd


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kubegate"


def binaries_dir(k8s_version: str, etcd_version: str) -> Path:
    return cache_root() / "controlplane" / f"{k8s_version}-etcd{etcd_version}"


def ldflags_for(k8s_version: str) -> str:
    """Stamp the version so ``kubectl version`` reports it (a module build has no git metadata)."""
    major, minor = k8s_version.lstrip("v").split(".")[:2]
    pkg = "k8s.io/component-base/version"
    return (f"-s -w -X {pkg}.gitVersion={k8s_version} -X {pkg}.gitMajor={major} "
            f"-X {pkg}.gitMinor={minor} -X {pkg}.gitTreeState=clean")


# --------------------------------------------------------------------------- binaries


@dataclass(frozen=True)
class Binaries:
    apiserver: Path
    etcd: Path


def _assets(folder: Path) -> Binaries | None:
    b = Binaries(folder / "kube-apiserver", folder / "etcd")
    return b if all(os.access(p, os.X_OK) for p in (b.apiserver, b.etcd)) else None


def go_toolchain() -> str:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not os.access(go, os.X_OK):
        raise UserError("Go is needed to build kube-apiserver and etcd (or set KUBEBUILDER_ASSETS)")
    return go


def ensure_binaries(log=print) -> Binaries:
    """KUBEBUILDER_ASSETS if it holds both binaries, else the version-keyed cache, built when absent."""
    if assets := os.environ.get("KUBEBUILDER_ASSETS"):
        if found := _assets(Path(assets)):
            return found
        log(f"KUBEBUILDER_ASSETS={assets} lacks kube-apiserver or etcd; using the kubegate cache")
    k8s, etcd = versions()
    target = binaries_dir(k8s, etcd)
    if found := _assets(target):
        return found
    build_binaries(target, k8s, etcd, log=log)
    found = _assets(target)
    assert found, "build reported success but binaries are missing"
    return found


def build_binaries(target: Path, k8s_version: str, etcd_version: str, log=print) -> float:
    """Build kube-apiserver and etcd in parallel with ``go build``; returns the seconds it took."""
    target.mkdir(parents=True, exist_ok=True)
    go = go_toolchain()
    env = {**os.environ, "GOFLAGS": "-mod=mod -buildvcs=false", "CGO_ENABLED": "0"}
    jobs = {
        "kube-apiserver": (HACK_DIR / "controlplane", "./kube-apiserver", ldflags_for(k8s_version)),
        "etcd": (HACK_DIR / "etcd", ".", "-s -w"),
    }
    log(f"building kube-apiserver {k8s_version} and etcd {etcd_version} from Go modules "
        f"into {target} (cold: ~6 min on 2 cores; cached afterwards)")
    started = time.monotonic()
    procs = {}
    for name, (cwd, pkg, ldflags) in jobs.items():
        out = target / f".{name}.partial"
        logfile = open(target / f"build-{name}.log", "w")  # noqa: SIM115 - closed below
        procs[name] = (subprocess.Popen([go, "build", "-trimpath", "-ldflags", ldflags, "-o", str(out), pkg],
                                        cwd=cwd, env=env, stdout=logfile, stderr=subprocess.STDOUT), logfile, out)
    failed = []
    pending = dict(procs)
    while pending:
        time.sleep(2)
        for name, (proc, logfile, out) in list(pending.items()):
            if proc.poll() is None:
                continue
            logfile.close()
            del pending[name]
            took = time.monotonic() - started
            if proc.returncode == 0:
                out.rename(target / name)
                log(f"  built {name} in {took:.0f}s")
            else:
                failed.append(name)
                tail = (target / f"build-{name}.log").read_text().strip().splitlines()[-5:]
                log(f"  building {name} failed after {took:.0f}s:\n    " + "\n    ".join(tail))
        if pending and int(time.monotonic() - started) % 30 < 2:
            log(f"  ... still building {', '.join(pending)} ({time.monotonic() - started:.0f}s)")
    if failed:
        raise UserError(f"go build failed for {', '.join(failed)}; see {target}/build-*.log")
    took = time.monotonic() - started
    log(f"control plane built in {took:.0f}s")
    return took


def go_tool(name: str, log=print, package: str = ".") -> Path:
    """Build a Go helper from hack/<name> (e.g. kstatus), cached by its sources' hash.

    ``package``: what to build in that module (a tool it pins, e.g. jaeger's cmd), default its own main."""
    src = HACK_DIR / name
    digest = hashlib.sha256()
    for path in sorted(src.glob("*")):
        if path.suffix in (".go", ".mod", ".sum"):
            digest.update(path.name.encode() + path.read_bytes())
    target = cache_root() / "tools" / f"{name}-{digest.hexdigest()[:12]}"
    if os.access(target, os.X_OK):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    partial = target.with_suffix(".partial")
    proc = subprocess.run([go_toolchain(), "build", "-trimpath", "-o", str(partial), package], cwd=src, capture_output=True,
                          text=True, env={**os.environ, "GOFLAGS": "-mod=mod -buildvcs=false"}, check=False)
    if proc.returncode != 0:
        raise UserError(f"go build of hack/{name} failed: {proc.stderr.strip().splitlines()[-1:]}")
    partial.rename(target)
    log(f"built hack/{name} in {time.monotonic() - started:.0f}s")
    return target


def pinned_go_binary(name: str, package: str, module: str, ldflags: str = "-s -w", log=print) -> Path:
    """Build ``package`` with the versions hack/<name>/go.mod pins (a ``tool`` wrapper module).

    Cached as ``tools/<name>-<version of module>``, so bumping the pin in go.mod is the
    only change needed to get a new build; an unchanged pin costs one ``stat``.
    """
    src = HACK_DIR / name
    version = module_version((src / "go.mod").read_text(), module)
    target = cache_root() / "tools" / f"{name}-{version}"
    if os.access(target, os.X_OK):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log(f"building {package} {version} from its Go module (cold: ~5 min on 2 cores; cached afterwards)")
    started = time.monotonic()
    partial = target.with_name(target.name + ".partial")
    proc = subprocess.run([go_toolchain(), "build", "-trimpath", "-ldflags", ldflags, "-o", str(partial), package],
                          cwd=src, capture_output=True, text=True, check=False,
                          env={**os.environ, "GOFLAGS": "-mod=mod -buildvcs=false", "CGO_ENABLED": "0"})
    if proc.returncode != 0:
        raise UserError(f"go build of {package} failed: {proc.stderr.strip().splitlines()[-1:]}")
    partial.rename(target)
    log(f"built {name} {version} in {time.monotonic() - started:.0f}s")
    return target


def helm_binary(log=print) -> Path:
    """The real helm, at the version hack/helm/go.mod pins, stamped as its Makefile does."""
    go_mod = (HACK_DIR / "helm" / "go.mod").read_text()
    version = module_version(go_mod, "helm.sh/helm/v3")
    client_go = module_version(go_mod, "k8s.io/client-go")  # helm reports Kubernetes 1.<client-go minor>
    k8s_minor = client_go.lstrip("v").split(".")[1]
    stamps = {"internal/version.version": version, "internal/version.gitTreeState": "clean",
              "pkg/lint/rules.k8sVersionMajor": "1", "pkg/lint/rules.k8sVersionMinor": k8s_minor,
              "pkg/chartutil.k8sVersionMajor": "1", "pkg/chartutil.k8sVersionMinor": k8s_minor}
    ldflags = "-s -w " + " ".join(f"-X helm.sh/helm/v3/{var}={value}" for var, value in stamps.items())
    return pinned_go_binary("helm", "helm.sh/helm/v3/cmd/helm", "helm.sh/helm/v3", ldflags, log=log)


# --------------------------------------------------------------------------- the node's binaries


@dataclass(frozen=True)
class GoBuild:
    """One binary built from a Go module in hack/: where, what package, cached under which key."""

    name: str
    module_dir: Path
    package: str
    cache_key: str
    ldflags: str = "-s -w"


def coredns_version() -> str:
    return module_version((HACK_DIR / "coredns/go.mod").read_text(), "github.com/coredns/coredns")


def kube_router_version() -> str:
    return module_version((HACK_DIR / "kube-router/go.mod").read_text(),
                                     "github.com/cloudnativelabs/kube-router/v2")


def node_builds() -> list[GoBuild]:
    k8s, _ = versions()
    builds = [GoBuild(name, HACK_DIR / "controlplane", f"./{name}", f"kubernetes-{k8s}", ldflags_for(k8s))
              for name in K8S_NODE_COMPONENTS]
    builds.append(GoBuild("coredns", HACK_DIR / "coredns", ".", f"coredns-{coredns_version()}"))
    builds.append(GoBuild("kube-router", HACK_DIR / "kube-router", "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router",
                          f"kube-router-{kube_router_version()}"))
    builds.append(GoBuild("pause", HACK_DIR / "pause", ".", "pause-v1"))
    return builds


def node_cache() -> Path:
    return cache_root() / "node"


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
    go = go_toolchain()
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
                log(f"  building {name} failed: {log_tail(binary_path(b).parent / f'build-{name}.log')}")
    if failed:
        raise UserError(f"go build failed for {', '.join(failed)}; see {node_cache()}/*/build-*.log")
    log(f"node binaries built in {time.monotonic() - started:.0f}s")


if __name__ == "__main__":  # used by hack/build-controlplane.sh and hack/build-helm.sh
    def _stderr(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if sys.argv[1:] == ["helm"]:
        print(helm_binary(log=_stderr))
    else:
        ensure_binaries(log=_stderr)
