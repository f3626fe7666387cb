"""Container images built on this machine with podman + runc, without any registry.

Why: no registry is reachable here, yet the product must be tested as the image
users run. ``FROM python:3.11-slim`` cannot be pulled, so a base image with the
same layout (``/usr/local/bin/python`` and ``pip`` from a venv at /usr/local) is
made from Debian packages with debootstrap, cached as a tarball under
``~/.cache/kubegate/images/``, and handed to the unchanged Dockerfile with
``--build-arg PYTHON_IMAGE=...``. Elsewhere the Dockerfile builds from the
official image as it is.

The same base carries the test-only images of the node cluster (a Redis, the
pause image, CoreDNS). Images reach a node's containerd with ``podman save |
ctr images import`` (see :func:`load_into_containerd`).

podman's default runtime here (crun) refuses cgroup v1 "hybrid" hosts and its
default RLIMITs exceed this machine's hard limits, hence :data:`PODMAN` and
:data:`ULIMITS`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kubegate.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/kubegate:dev"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("KUBEGATE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_IMAGE = f"localhost/kubegate-python-base:{DEBIAN_SUITE}-py3.11"
REDIS_IMAGE = f"localhost/kubegate-redis:{DEBIAN_SUITE}"
ULIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"
# Builds see the host's CA bundle (this machine reaches PyPI through a TLS proxy with its own CA).
HOST_CA_MOUNT = ("-v", f"{SYSTEM_CA}:{SYSTEM_CA}:ro") if Path(SYSTEM_CA).is_file() else ()


def _cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kubegate" / "images"


def runc() -> str:
    found = shutil.which("runc") or "/usr/sbin/runc"
    if not os.access(found, os.X_OK):
        raise UserError("runc is missing: apt-get install runc (scripts/install.sh does)")
    return found


def podman(*args: str, input: bytes | None = None, check: bool = True, capture: bool = True,
           timeout: float = 1800) -> subprocess.CompletedProcess:
    if not shutil.which("podman"):
        raise UserError("podman is missing: apt-get install podman (scripts/install.sh does)")
    proc = subprocess.run(["podman", "--runtime", runc(), "--cgroup-manager", "cgroupfs", *args], input=input,
                          capture_output=capture, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        err = (proc.stderr or b"").decode(errors="replace").strip().splitlines()[-5:]
        raise UserError(f"podman {' '.join(args[:2])} failed ({proc.returncode}): {' | '.join(err)}")
    return proc


def exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def image_size(image: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.decode().strip())


def base_rootfs_tarball(log=print) -> Path:
    """Debian minbase + python3 with a venv at /usr/local (the official image's layout), cached."""
    key = hashlib.sha256(f"{DEBIAN_SUITE} {' '.join(BASE_PACKAGES)} venv=/usr/local v1".encode()).hexdigest()[:12]
    tarball = _cache() / f"python-base-{DEBIAN_SUITE}-{key}.tar"
    if tarball.is_file():
        return tarball
    if not shutil.which("debootstrap"):
        raise UserError("debootstrap is missing: apt-get install debootstrap (scripts/install.sh does)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    log(f"building the Python base image from Debian {DEBIAN_SUITE} packages with debootstrap (once)")
    with tempfile.TemporaryDirectory(dir=tarball.parent) as tmp:
        root = Path(tmp) / "rootfs"
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", DEBIAN_SUITE,
              str(root), DEBIAN_MIRROR], "debootstrap")
        _run(["chroot", str(root), "python3", "-m", "venv", "/usr/local"], "python3 -m venv /usr/local")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for child in (root / junk).glob("*"):
                if child.is_file():
                    child.unlink()
        partial = tarball.with_suffix(".partial")
        _run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], "tar")
        partial.rename(tarball)
    log(f"  base rootfs cached as {tarball} in {time.monotonic() - started:.0f}s")
    return tarball


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800)
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise UserError(f"{what} failed ({proc.returncode}): {tail}")


def ensure_base_image(log=print) -> str:
    if not exists(BASE_IMAGE):
        tarball = base_rootfs_tarball(log=log)
        with open(tarball, "rb") as f:
            proc = subprocess.run(
                ["podman", "--runtime", runc(), "import",
                 "--change", "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
                 "--change", "ENV LANG=C.UTF-8",
                 # pip trusts the system bundle (where builds mount the host's, see HOST_CA_MOUNT)
                 "--change", f"ENV PIP_CERT={SYSTEM_CA}", "--change", 'CMD ["python3"]', "-", BASE_IMAGE],
                stdin=f, capture_output=True, check=False)
        if proc.returncode != 0:
            raise UserError(f"podman import failed: {proc.stderr.decode(errors='replace').strip()}")
    return BASE_IMAGE


def build_kubegate(tag: str = IMAGE, log=print) -> tuple[str, float]:
    """Build the repository's Dockerfile, unchanged, from the local Debian base; returns (tag, seconds)."""
    base = ensure_base_image(log=log)
    started = time.monotonic()
    # --no-cache: podman 4.3 (buildah) keys the final stage's `RUN --mount=type=bind,from=build` layer
    # without the mounted wheels, so a cached build silently kept the old code in the image.
    podman("build", "--no-cache", *ULIMITS, *HOST_CA_MOUNT, "--network", "host", "--build-arg", f"PYTHON_IMAGE={base}", "-t", tag,
           "-f", str(REPO_ROOT / "Dockerfile"), str(REPO_ROOT))
    took = time.monotonic() - started
    log(f"built {tag} ({image_size(tag) / 1e6:.0f} MB) in {took:.0f}s")
    return tag, took


def build_from_text(tag: str, containerfile: str, context: Path | None = None) -> str:
    """Build a small image from Containerfile text (test images: redis, pause, coredns)."""
    with tempfile.TemporaryDirectory() as tmp:
        ctx = context or Path(tmp)
        (Path(tmp) / "Containerfile").write_text(containerfile)
        podman("build", *ULIMITS, *HOST_CA_MOUNT, "--network", "host", "-t", tag, "-f", str(Path(tmp) / "Containerfile"), str(ctx))
    return tag


def ensure_redis_image(log=print) -> str:
    """redis-server from Debian on the base image (the with-redis overlay's image on the dev node)."""
    if not exists(REDIS_IMAGE):
        base = ensure_base_image(log=log)
        build_from_text(REDIS_IMAGE, f"FROM {base}\n"
                        "RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server "
                        "&& rm -rf /var/lib/apt/lists/*\n"
                        "WORKDIR /data\nUSER 999:999\nENTRYPOINT [\"redis-server\"]\n")
    return REDIS_IMAGE


def image_from_binary(tag: str, binary: Path, entrypoint: str) -> str:
    """A ``FROM scratch`` image holding one static binary (pause, CoreDNS)."""
    if not exists(tag):
        with tempfile.TemporaryDirectory() as ctx:
            shutil.copy2(binary, Path(ctx) / Path(entrypoint).name)
            build_from_text(tag, f"FROM scratch\nCOPY {Path(entrypoint).name} {entrypoint}\n"
                            f"ENTRYPOINT [\"{entrypoint}\"]\n", context=Path(ctx))
    return tag


def load_into_containerd(images: list[str], address: Path, log=print) -> None:
    """``podman save`` each image into the node's containerd (namespace k8s.io), no registry involved."""
    for image in images:
        save = subprocess.Popen(["podman", "save", "--format", "docker-archive", image], stdout=subprocess.PIPE)
        proc = subprocess.run(["ctr", "--address", str(address), "-n", "k8s.io", "images", "import",
                               "--no-unpack", "-"], stdin=save.stdout, capture_output=True, text=True, check=False)
        save.stdout.close()
        save.wait()
        if proc.returncode != 0 or save.returncode != 0:
            raise UserError(f"importing {image} into containerd failed: {proc.stderr.strip()}")
        log(f"  loaded {image} into containerd")


def main(argv: list[str]) -> int:
    """``python3 -m kubegate.images [--load]``: what ``make image`` runs."""
    tag, _ = build_kubegate(log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"{tag} {image_size(tag)}")
    if "--load" in argv:
        from kubegate import nodecluster

        node = nodecluster.running()
        if node is None:
            print("no node cluster is up: image not loaded (kubegate dev-cluster up --node)", file=sys.stderr)
        else:
            load_into_containerd([tag], node.containerd_socket, log=lambda m: print(m, file=sys.stderr))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
