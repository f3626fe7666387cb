"""uvloop is the event loop of the long-running commands: read from the real processes' startup lines.

A kubeconfig pointing at a closed loopback port is enough: both commands
print their startup line (ports, loop) before they first talk to the API.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest


def _kubeconfig(tmp_path) -> str:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = tmp_path / "kubeconfig"
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{token: not-a-real-token}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
""")
    return str(path)


def _startup_line(proc: subprocess.Popen, pattern: str, timeout: float = 90) -> str:
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in lines:
            if line.startswith(pattern):
                return line.strip()
        if proc.poll() is not None and not reader.is_alive():
            break
        time.sleep(0.1)
    raise AssertionError(f"no {pattern!r} line:\n{''.join(lines)}")


@pytest.mark.parametrize(("command", "pattern"), [
    (["operator", "--metrics-port", "0"], "kubegate operator: metrics="),
    (["dataplane", "--host", "127.0.0.1", "--http-port", "0", "--https-port", "0", "--admin-port", "0",
      "--workers", "2"], "kubegate dataplane: http="),
])
def test_the_command_runs_on_uvloop(command, pattern, tmp_path):
    env = {**os.environ, "KUBECONFIG": _kubeconfig(tmp_path), "PYTHONUNBUFFERED": "1"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    env.pop("KUBEGATE_EVENT_LOOP", None)
    proc = subprocess.Popen([sys.executable, "-m", "kubegate.cli", *command], env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        line = _startup_line(proc, pattern)
        assert line.endswith("loop=uvloop"), line
        if command[0] == "dataplane":
            assert "workers=2" in line
            proc.send_signal(signal.SIGTERM)  # the supervisor stops its workers and exits cleanly
            assert proc.wait(40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
