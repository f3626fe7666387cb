"""A real local control plane: kube-apiserver + etcd on loopback, no containers.

Why: the operator, its RBAC and the GitOps health checks must be proven against
the real API server (real authorizer, real CEL, real status subresource), and
this machine has neither Docker nor kind. The binaries are built from the Go
modules in ``hack/controlplane`` and ``hack/etcd``; their versions live only in
those ``go.mod`` files.

Pure parts (versions, flags, kubeconfigs, PKI) are plain functions; the
imperative shell is :func:`up`, :func:`down` and the :class:`DevCluster`
handle that the CLI, the e2e fixture and the benches share.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from kubegate.errors import UserError
from kubegate.pki import key_pem, mint_ca, mint_cert, public_key_pem

REPO_ROOT = Path(__file__).resolve().parent.parent
HACK_DIR = REPO_ROOT / "hack"
CRDS_DIR = REPO_ROOT / "crds"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
READY_TIMEOUT_S = 90.0


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


def default_state_dir() -> Path:
    return Path(os.environ.get("KUBEGATE_DEV_CLUSTER_DIR") or cache_root() / "dev-cluster")


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


def _go() -> str:
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
    go = _go()
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


def go_tool(name: str, log=print) -> Path:
    """Build a small Go helper from hack/<name> (e.g. kstatus), cached by its sources' hash."""
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
    proc = subprocess.run([_go(), "build", "-trimpath", "-o", str(partial), "."], cwd=src, capture_output=True,
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
    proc = subprocess.run([_go(), "build", "-trimpath", "-ldflags", ldflags, "-o", str(partial), package],
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


# --------------------------------------------------------------------------- PKI


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def write_pki(pki: Path) -> None:
    """A throwaway CA, the serving cert (127.0.0.1/localhost), an admin client cert and the SA signing key."""
    pki.mkdir(parents=True, exist_ok=True)
    ca = mint_ca("kubegate-dev-cluster-ca", 365, key=_key())
    serving = mint_cert(ca, "kube-apiserver", ("localhost", "kubernetes", "kubernetes.default.svc", "127.0.0.1"),
                        days=365, key=_key())
    admin = mint_cert(ca, "kubegate-dev-admin", client=True, days=365, key=_key(), organization="system:masters")
    sa_key = _key()
    files = {
        "ca.crt": ca.cert_pem.encode(),
        "apiserver.crt": serving.cert_pem.encode(),
        "apiserver.key": serving.key_pem.encode(),
        "admin.crt": admin.cert_pem.encode(),
        "admin.key": admin.key_pem.encode(),
        "sa.key": key_pem(sa_key).encode(),
        "sa.pub": public_key_pem(sa_key).encode(),
    }
    for name, data in files.items():
        path = pki / name
        path.write_bytes(data)
        path.chmod(0o600)


# --------------------------------------------------------------------------- flags & kubeconfig


def etcd_args(data_dir: Path, client_port: int, peer_port: int) -> list[str]:
    peer = f"http://127.0.0.1:{peer_port}"
    client = f"http://127.0.0.1:{client_port}"
    return [
        "--name=dev", f"--data-dir={data_dir}",
        f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=dev={peer}", "--initial-cluster-state=new",
        "--unsafe-no-fsync=true",  # throwaway data: durability is not worth the latency here
        "--log-level=warn",
    ]


def apiserver_args(pki: Path, etcd_port: int, secure_port: int) -> list[str]:
    return [
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={secure_port}",
        f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        "--authorization-mode=RBAC",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--allow-privileged=false",
        "--v=0",
    ]


def kubeconfig(server: str, ca_pem: bytes, user: dict[str, str], name: str = "kubegate-dev") -> dict[str, Any]:
    """A one-context kubeconfig for ``server``; ``user`` is the kubeconfig user stanza (cert or token)."""
    import base64

    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": name, "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }


def admin_user(pki: Path) -> dict[str, str]:
    import base64

    return {"client-certificate-data": base64.b64encode((pki / "admin.crt").read_bytes()).decode(),
            "client-key-data": base64.b64encode((pki / "admin.key").read_bytes()).decode()}


def crd_names(docs: Iterable[Any]) -> list[str]:
    """Names of the CustomResourceDefinitions in parsed YAML documents."""
    return [d["metadata"]["name"] for d in docs
            if isinstance(d, dict) and d.get("kind") == "CustomResourceDefinition"]


def manifest_files(folder: Path) -> list[Path]:
    """Applicable YAML files of a folder (a kustomization.yaml is not an object)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.suffix in (".yaml", ".yml") and p.stem != "kustomization")


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _runs(pid: int, program: str) -> bool:
    """Is ``pid`` still ``program``? A recorded PID may have been reused after a reboot or crash."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return False
    return Path(argv0).name == program


def _stop(pid: int, program: str, timeout: float = 10.0) -> None:
    if not _alive(pid) or not _runs(pid, program):
        return
    try:
        os.killpg(pid, signal.SIGTERM)  # started with setsid, so pid == its process group
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)


def _spawn(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class DevCluster:
    """A running dev cluster: where it lives and how to talk to it (admin or as a ServiceAccount)."""

    state_dir: Path
    server: str
    pids: dict[str, int] = field(default_factory=dict)
    started_in: float = 0.0

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def ca_path(self) -> Path:
        return self.state_dir / "pki" / "ca.crt"

    @classmethod
    def load(cls, state_dir: Path) -> DevCluster | None:
        try:
            state = json.loads((state_dir / "state.json").read_text())
        except (OSError, ValueError):
            return None
        return cls(state_dir, state["server"], state["pids"], state.get("started_in", 0.0))

    def save(self) -> None:
        (self.state_dir / "state.json").write_text(json.dumps(
            {"server": self.server, "pids": self.pids, "started_in": self.started_in}, indent=1))

    def alive(self) -> bool:
        return bool(self.pids) and all(_alive(p) and _runs(p, name) for name, p in self.pids.items())

    # -- talking to it

    def kubectl(self, *args: str, input: str | bytes | None = None, check: bool = True,
                as_token: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run the real kubectl against this cluster (admin, or authenticated only by ``as_token``)."""
        config = self.kubeconfig_for_token(as_token) if as_token else self.kubeconfig
        text = not isinstance(input, bytes)
        proc = subprocess.run(["kubectl", f"--kubeconfig={config}", *args], input=input, capture_output=True,
                              text=text, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            err = proc.stderr if text else proc.stderr.decode(errors="replace")
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {err.strip()}")
        return proc

    def token_for(self, namespace: str, serviceaccount: str, duration: str = "12h") -> str:
        """A bound ServiceAccount token from the TokenRequest API."""
        return self.kubectl("create", "token", serviceaccount, "-n", namespace,
                            f"--duration={duration}").stdout.strip()

    def kubeconfig_for_token(self, token: str) -> Path:
        """A kubeconfig that authenticates with ``token`` only (to run a process as its ServiceAccount)."""
        folder = self.state_dir / "token-kubeconfigs"
        folder.mkdir(exist_ok=True)
        path = folder / f"{hashlib.sha256(token.encode()).hexdigest()[:16]}.yaml"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(yaml.safe_dump(kubeconfig(self.server, self.ca_path.read_bytes(), {"token": token})))
            tmp.chmod(0o600)
            tmp.rename(path)
        return path

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig)}

    def apply_files(self, files: Sequence[Path]) -> list[str]:
        """Server-side apply YAML files; returns the CRD names among them (to wait for)."""
        if not files:
            return []
        args = ["apply", "--server-side", "--force-conflicts", "--field-manager=kubegate-dev-cluster"]
        for f in files:
            args += ["-f", str(f)]
        self.kubectl(*args)
        docs = [d for f in files for d in yaml.safe_load_all(f.read_text())]
        return crd_names(docs)

    def wait_established(self, names: Sequence[str], timeout: str = "60s") -> None:
        if names:
            self.kubectl("wait", "--for=condition=Established", f"--timeout={timeout}",
                         *[f"crd/{n}" for n in names])

    def install_crds(self, *extra: Path) -> list[str]:
        """Install crds/*.yaml (and ``extra`` files) and wait until they are Established."""
        names = self.apply_files([*manifest_files(CRDS_DIR), *extra])
        self.wait_established(names)
        return names

    def readyz(self) -> bool:
        pki = self.state_dir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        try:
            with urllib.request.urlopen(f"{self.server}/readyz", context=ctx, timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False


def up(state_dir: Path | None = None, *, install_crds: bool = True, log=print) -> DevCluster:
    """Start etcd + kube-apiserver detached, wait for /readyz, write the kubeconfig, install the CRDs."""
    state_dir = Path(state_dir or default_state_dir())
    if (existing := DevCluster.load(state_dir)) is not None:
        if existing.alive() and existing.readyz():
            log(f"dev cluster already running at {existing.server}")
            return existing
        log("removing the state of a dev cluster that is no longer running")
        down(state_dir, log=lambda *_: None)
    binaries = ensure_binaries(log=log)
    started = time.monotonic()
    state_dir.mkdir(parents=True, exist_ok=True)
    pki = state_dir / "pki"
    write_pki(pki)
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    cluster = DevCluster(state_dir, f"https://127.0.0.1:{api_port}")
    etcd = _spawn([str(binaries.etcd), *etcd_args(state_dir / "etcd", etcd_port, peer_port)],
                  state_dir / "etcd.log")
    cluster.pids["etcd"] = etcd.pid
    cluster.save()
    apiserver = _spawn([str(binaries.apiserver), *apiserver_args(pki, etcd_port, api_port)],
                       state_dir / "kube-apiserver.log")
    cluster.pids["kube-apiserver"] = apiserver.pid
    cluster.save()
    cluster.kubeconfig.write_text(yaml.safe_dump(kubeconfig(cluster.server, (pki / "ca.crt").read_bytes(),
                                                            admin_user(pki))))
    cluster.kubeconfig.chmod(0o600)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not cluster.readyz():
        for name, proc in (("etcd", etcd), ("kube-apiserver", apiserver)):
            if proc.poll() is not None:
                down(state_dir, log=lambda *_: None, keep_logs=True)
                raise UserError(f"{name} exited with {proc.returncode}: "
                                f"{_tail(state_dir / f'{name}.log')}")
        if time.monotonic() > deadline:
            down(state_dir, log=lambda *_: None, keep_logs=True)
            raise UserError(f"kube-apiserver not ready after {READY_TIMEOUT_S:.0f}s: "
                            f"{_tail(state_dir / 'kube-apiserver.log')}")
        time.sleep(0.2)
    ready_in = time.monotonic() - started
    if install_crds:
        names = cluster.install_crds()
        log(f"installed {len(names)} CRDs from {CRDS_DIR}" if names else f"no CRDs found in {CRDS_DIR}")
    cluster.started_in = time.monotonic() - started
    cluster.save()
    log(f"dev cluster up at {cluster.server}: API ready in {ready_in:.1f}s, "
        f"with CRDs in {cluster.started_in:.1f}s")
    return cluster


def down(state_dir: Path | None = None, *, log=print, keep_logs: bool = False) -> bool:
    """Stop the processes recorded in the state dir and remove it; False if nothing was running."""
    state_dir = Path(state_dir or default_state_dir())
    cluster = DevCluster.load(state_dir)
    if cluster is None:
        log(f"no dev cluster state in {state_dir}")
        return False
    for name in ("kube-apiserver", "etcd"):
        if pid := cluster.pids.get(name):
            _stop(pid, name)
    if keep_logs:
        for child in state_dir.iterdir():
            if not child.name.endswith(".log"):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    else:
        shutil.rmtree(state_dir, ignore_errors=True)
    log(f"dev cluster at {cluster.server} stopped")
    return True


def env_lines(state_dir: Path | None = None) -> str:
    state_dir = Path(state_dir or default_state_dir())
    cluster = DevCluster.load(state_dir)
    if cluster is None:
        raise UserError(f"no dev cluster in {state_dir}; run `kubegate dev-cluster up` first")
    return f"export KUBECONFIG={cluster.kubeconfig}\n"


if __name__ == "__main__":  # used by hack/build-controlplane.sh and hack/build-helm.sh
    def _stderr(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if sys.argv[1:] == ["helm"]:
        print(helm_binary(log=_stderr))
    else:
        ensure_binaries(log=_stderr)
