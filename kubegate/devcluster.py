"""A real local control plane: kube-apiserver + etcd on loopback, no containers.

Why: the operator, its RBAC and the GitOps health checks must be proven against
the real API server (real authorizer, real CEL, real status subresource), and
this machine has neither Docker nor kind. The binaries are built from the Go
modules in ``hack/controlplane`` and ``hack/etcd`` (:mod:`kubegate.gobuild`); their
versions live only in those ``go.mod`` files. Its processes are started and
stopped by :mod:`kubegate.local_processes`.

Pure parts (flags, kubeconfigs, PKI) are plain functions; the
imperative shell is :func:`up`, :func:`down` and the :class:`DevCluster`
handle that the CLI, the e2e fixture and the benches share.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from kubegate import gobuild, local_processes
from kubegate.errors import UserError
from kubegate.pki import key_pem, mint_ca, mint_cert, public_key_pem

REPO_ROOT = Path(__file__).resolve().parent.parent
CRDS_DIR = REPO_ROOT / "crds"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
READY_TIMEOUT_S = 90.0
WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION")


def default_state_dir() -> Path:
    return Path(os.environ.get("KUBEGATE_DEV_CLUSTER_DIR") or gobuild.cache_root() / "dev-cluster")


# --------------------------------------------------------------------------- PKI


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def write_pki(pki: Path, extra_ips: Sequence[str] = ()) -> None:
    """A throwaway CA, the serving cert (127.0.0.1/localhost, plus ``extra_ips``: the node's bridge
    address), an admin client cert and the SA signing key."""
    pki.mkdir(parents=True, exist_ok=True)
    ca = mint_ca("kubegate-dev-cluster-ca", 365, key=_key())
    serving = mint_cert(ca, "kube-apiserver", ("localhost", "kubernetes", "kubernetes.default.svc",
                                               "kubernetes.default.svc.cluster.local", "127.0.0.1", *extra_ips),
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


def apiserver_args(pki: Path, etcd_port: int, secure_port: int, address: str = "127.0.0.1") -> list[str]:
    return [
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        f"--bind-address={address}", f"--advertise-address={address}", f"--secure-port={secure_port}",
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
        return bool(self.pids) and all(local_processes.alive(p) and local_processes.runs(p, name) for name, p in self.pids.items())

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

    def _admin_context(self) -> ssl.SSLContext:
        pki = self.state_dir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return ctx

    def readyz(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.server}/readyz", context=self._admin_context(), timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def write_requests(self) -> dict[tuple[str, str], float]:
        """The API server's own count of write requests so far, {(verb, resource[/subresource]): n}
        (``apiserver_request_total``: what benches and tests diff to count writes per object)."""
        with urllib.request.urlopen(f"{self.server}/metrics", context=self._admin_context(), timeout=30) as resp:
            text = resp.read().decode()
        out: dict[tuple[str, str], float] = {}
        for line in text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if labels.get("verb") not in WRITE_VERBS:
                continue
            sub = labels.get("subresource")
            key = (labels["verb"], labels.get("resource", "") + (f"/{sub}" if sub else ""))
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        return out


def up(state_dir: Path | None = None, *, install_crds: bool = True, log=print, address: str = "127.0.0.1",
       port: int | None = None, extra_sans: Sequence[str] = (), extra_args: Sequence[str] = ()) -> DevCluster:
    """Start etcd + kube-apiserver detached, wait for /readyz, write the kubeconfig, install the CRDs.

    ``address`` is where the API server listens and what it advertises (the node cluster uses an
    address its pods can reach); ``extra_sans``/``extra_args`` extend its certificate and flags."""
    state_dir = Path(state_dir or default_state_dir())
    if (existing := DevCluster.load(state_dir)) is not None:
        if existing.alive() and existing.readyz():
            log(f"dev cluster already running at {existing.server}")
            return existing
        log("removing the state of a dev cluster that is no longer running")
        down(state_dir, log=lambda *_: None)
    binaries = gobuild.ensure_binaries(log=log)
    started = time.monotonic()
    state_dir.mkdir(parents=True, exist_ok=True)
    pki = state_dir / "pki"
    write_pki(pki, extra_ips=[*([address] if address != "127.0.0.1" else []), *extra_sans])
    etcd_port, peer_port, api_port = local_processes.free_port(), local_processes.free_port(), port or local_processes.free_port()
    cluster = DevCluster(state_dir, f"https://{address}:{api_port}")
    etcd = local_processes.spawn([str(binaries.etcd), *etcd_args(state_dir / "etcd", etcd_port, peer_port)],
                  state_dir / "etcd.log")
    cluster.pids["etcd"] = etcd.pid
    cluster.save()
    apiserver = local_processes.spawn([str(binaries.apiserver), *apiserver_args(pki, etcd_port, api_port, address), *extra_args],
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
                                f"{local_processes.log_tail(state_dir / f'{name}.log')}")
        if time.monotonic() > deadline:
            down(state_dir, log=lambda *_: None, keep_logs=True)
            raise UserError(f"kube-apiserver not ready after {READY_TIMEOUT_S:.0f}s: "
                            f"{local_processes.log_tail(state_dir / 'kube-apiserver.log')}")
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
            local_processes.stop(pid, name)
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
