"""``kubegate run`` as a real subprocess: serving, hot reload from files, broken files, logs, shutdown."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from echo_route import echo_route

HMAC_SECRET = "s3cr3t-hmac-value-never-logged-0123456789"


def _manifests(port: int, path: str) -> str:
    return echo_route(port, path) + f"""---
apiVersion: v1
kind: Secret
metadata: {{name: jwt-hmac, namespace: shop}}
stringData: {{secret: {HMAC_SECRET}}}
---
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: private, namespace: shop}}
spec:
  path: "/private/*rest"
  backends: [{{service: echo, port: {port}}}]
  auth:
    methods: [jwt]
    jwt: {{algorithms: [HS256], secretRef: {{name: jwt-hmac, key: secret}}}}
"""


async def _status(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        await response.read()
        return response.status


async def test_run_serves_reloads_and_survives_a_broken_file(backend, tmp_path, kubegate_run):
    b = await backend()
    folder = tmp_path / "manifests"
    folder.mkdir()
    route_file = folder / "gateway.yaml"
    route_file.write_text(_manifests(b.port, "/v1/*rest"))
    gateway = await kubegate_run(folder)
    ports = gateway.ports
    base = f"http://127.0.0.1:{ports['http']}"
    async with aiohttp.ClientSession() as session:
        assert await _status(session, f"{base}/v1/hello") == 200
        assert b.received[-1]["path"] == "/v1/hello"
        assert await _status(session, f"{base}/private/x") == 401
        async with session.get(f"http://127.0.0.1:{ports['admin']}/config") as r:
            first_hash = (await r.json())["hash"]

        route_file.write_text(_manifests(b.port, "/v1/*rest") + "\n---\nkind: [this is: not yaml\n")
        await asyncio.sleep(1.5)
        assert await _status(session, f"{base}/v1/hello") == 200  # last good config keeps serving
        async with session.get(f"http://127.0.0.1:{ports['admin']}/config") as r:
            assert (await r.json())["hash"] == first_hash

        route_file.write_text(_manifests(b.port, "/v2/*rest"))
        deadline = time.monotonic() + 10
        while await _status(session, f"{base}/v2/hello") != 200:
            assert time.monotonic() < deadline, "reload did not happen"
            await asyncio.sleep(0.2)
        assert await _status(session, f"{base}/v1/hello") == 404
        async with session.get(f"http://127.0.0.1:{ports['admin']}/metrics") as r:
            metrics = await r.text()
        assert 'kubegate_config_reloads_total{result="rejected"} 1.0' in metrics
    assert await gateway.stop() == 0
    logs = gateway.logs
    assert "gateway.yaml" in logs and "development CA" in logs
    assert HMAC_SECRET not in logs
    assert "Traceback" not in logs


async def test_run_reports_port_in_use_in_one_line(tmp_path, free_port):
    import socket

    (tmp_path / "r.yaml").write_text(
        "apiVersion: kubegate.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: r, namespace: shop}\n"
        "spec: {path: /, backends: [{url: 'http://127.0.0.1:9'}]}\n"
    )
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kubegate.cli", "run", "-f", str(tmp_path), "--host", "127.0.0.1",
            "--http-port", str(port), "--https-port", "0", "--admin-port", "0",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert f"kubegate: cannot listen on 127.0.0.1:{port} (http)" in err.decode()
    assert "Traceback" not in err.decode()


async def test_run_rejects_bad_files_in_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("kind: [broken\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kubegate.cli", "run", "-f", str(tmp_path / "bad.yaml"), "-f", str(tmp_path / "nope"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1 and err.decode().startswith("kubegate: ") and "Traceback" not in err.decode()
