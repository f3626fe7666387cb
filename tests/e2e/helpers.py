"""Helpers for the end-to-end tests: real processes, real backends, real HTTP, polling.

The operator and the data plane run as ``python -m kubegate.cli ...``
subprocesses with kubeconfigs holding their own ServiceAccount tokens; the
backends are aiohttp servers on free ports in a background thread.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from kubegate.pki import mint_cert

REPO = Path(__file__).resolve().parents[2]
GATEWAY_NS = "kubegate-system"


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


# --- processes -----------------------------------------------------------------------


class Proc:
    """A kubegate subprocess with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen([sys.executable, "-m", "kubegate.cli", *args], env=env, cwd=REPO,
                                      stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        if self.alive():
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


def service_account_env(cluster: Any, service_account: str, **extra: str) -> dict[str, str]:
    token = cluster.token_for(GATEWAY_NS, service_account)
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    env.update(KUBECONFIG=str(cluster.kubeconfig_for_token(token)), KUBEGATE_LOG_LEVEL="INFO", **extra)
    return env


class Operator(Proc):
    metrics: int  # the /metrics, /healthz, /readyz port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics}{path}"


def start_operator(cluster: Any, tmp: Path, name: str = "operator-a", *args: str, **env_extra: str) -> Operator:
    env = service_account_env(cluster, "kubegate-operator", POD_NAME=name, **env_extra)
    proc = Operator(["operator", "--namespace", GATEWAY_NS, "--metrics-port", "0", *args], env,
                    tmp / f"{name}.log")
    port = wait_until(lambda: re.search(r"metrics=(\d+)", proc.log()), 30, "the operator's metrics port")
    proc.metrics = int(port.group(1))
    return proc


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text at ``url`` as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    status, _, body = http(url)
    assert status == 200, body
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


class DataPlane(Proc):
    http: int
    https: int
    admin: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http}{path}"


def start_dataplane(cluster: Any, tmp: Path, name: str = "dp-a", *args: str) -> DataPlane:
    env = service_account_env(cluster, "kubegate-dataplane", KUBEGATE_REPLICA_ID=name)
    proc = DataPlane(["dataplane", "--namespace", GATEWAY_NS, "--host", "127.0.0.1", "--http-port", "0",
                      "--https-port", "0", "--admin-port", "0", *args], env, tmp / f"{name}.log")
    ports = wait_until(lambda: re.search(r"http=(\d+) https=(\d+) admin=(\d+)", proc.log()), 30,
                       "the data plane to listen")
    proc.http, proc.https, proc.admin = (int(p) for p in ports.groups())
    return proc


# --- kubectl views ------------------------------------------------------------------------


def get(cluster: Any, kind: str, name: str, namespace: str = GATEWAY_NS) -> dict[str, Any] | None:
    out = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def conditions(cluster: Any, kind: str, name: str, namespace: str) -> dict[str, tuple[str, str]]:
    obj = get(cluster, kind, name, namespace) or {}
    return {c["type"]: (c["status"], c["reason"]) for c in (obj.get("status") or {}).get("conditions") or ()}


def condition(cluster: Any, kind: str, name: str, namespace: str, type_: str) -> tuple[str, str] | None:
    return conditions(cluster, kind, name, namespace).get(type_)


def ready(cluster: Any, kind: str, name: str, namespace: str) -> bool:
    """Ready=True for the object's current generation."""
    obj = get(cluster, kind, name, namespace) or {}
    status = obj.get("status") or {}
    conds = {c["type"]: c for c in status.get("conditions") or ()}
    generation = obj.get("metadata", {}).get("generation")
    return (status.get("observedGeneration") == generation
            and conds.get("Ready", {}).get("status") == "True")


def apply_yaml(cluster: Any, text: str) -> None:
    cluster.kubectl("apply", "-f", "-", input=text)


def resource_version(cluster: Any, kind: str, name: str, namespace: str = GATEWAY_NS) -> str | None:
    obj = get(cluster, kind, name, namespace)
    return obj["metadata"]["resourceVersion"] if obj else None


# --- HTTP ---------------------------------------------------------------------------------


def http(url: str, headers: dict[str, str] | None = None, method: str = "GET", body: bytes | None = None,
         context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


class Backends:
    """Echo backends (aiohttp) on free ports, in a background thread with its own loop."""

    def __init__(self, names: list[str]) -> None:
        self.ports: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._runners: list[web.AppRunner] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        for name in names:
            self.ports[name] = asyncio.run_coroutine_threadsafe(self._start(name), self._loop).result(10)

    async def _start(self, name: str) -> int:
        async def echo(request: web.Request) -> web.Response:
            body = await request.read()
            return web.json_response({"backend": name, "path": request.path_qs, "method": request.method,
                                      "headers": dict(request.headers), "body": body.decode(errors="replace")})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def close(self) -> None:
        async def cleanup() -> None:
            for runner in self._runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


# --- PKI (acting as cert-manager) ----------------------------------------------------------


def self_signed(hostnames: list[str], days: int = 30) -> tuple[bytes, bytes, datetime.datetime]:
    leaf = mint_cert(None, hostnames[0], tuple(hostnames), days=days)
    return leaf.cert_pem.encode(), leaf.key_pem.encode(), leaf.cert.not_valid_after_utc
