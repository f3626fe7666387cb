"""A real ``redis-server`` on a free port, for the rate-limit tests.

A test module puts this folder on sys.path, imports this module and wraps
:func:`running_redis` in its own fixture. Each test gets its own server, so
a test may kill it (and restart it on the same port) to prove the failure
modes.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    def __init__(self, *extra_args: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._extra_args = extra_args  # e.g. ("--requirepass", "...")
        self._proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self._proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             *self._extra_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")):  # up (and maybe locked)
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def command(self, *words: str, password: str | None = None) -> bytes:
        """One raw command (inline protocol), for test setup such as SCRIPT FLUSH."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            if password is not None:
                sock.sendall(f"AUTH {password}\r\n".encode())
                if not sock.recv(64).startswith(b"+OK"):
                    raise RuntimeError("redis refused AUTH")
            sock.sendall((" ".join(words) + "\r\n").encode())
            return sock.recv(65536)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its socket but answers nothing (a hung Redis)."""
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)
            self._proc.kill()
            self._proc.wait(timeout=5)
        self._proc = None


def running_redis() -> Iterator[RedisServer]:
    """Generator for a fixture: a started server, killed afterwards."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


def free_port_pair() -> int:
    """A free port whose cluster-bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 < 65536:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


class RedisCluster:
    """Three real redis-server masters (``--cluster-enabled yes``) joined by ``redis-cli --cluster create``."""

    def __init__(self, directory, password: str | None = None, size: int = 3) -> None:
        self.directory = directory
        self.password = password
        self.nodes: list[RedisServer] = []
        for i in range(size):
            auth = ("--requirepass", password, "--masterauth", password) if password else ()
            server = RedisServer("--cluster-enabled", "yes", "--cluster-config-file", f"{directory}/nodes-{i}.conf",
                                 "--dir", str(directory), "--cluster-node-timeout", "2000", *auth)
            server.port = free_port_pair()
            self.nodes.append(server)

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        subprocess.run([shutil.which("redis-cli"), *auth, "--cluster", "create",
                        *(f"127.0.0.1:{n.port}" for n in self.nodes), "--cluster-yes"],
                       check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if all(b"cluster_state:ok" in n.command("CLUSTER", "INFO", password=self.password) for n in self.nodes):
                return self
            time.sleep(0.1)
        raise RuntimeError("redis cluster did not reach cluster_state:ok")

    def keys_per_node(self) -> list[int]:
        """DBSIZE of every node: which nodes the keys landed on."""
        return [int(n.command("DBSIZE", password=self.password)[1:].strip()) for n in self.nodes]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
