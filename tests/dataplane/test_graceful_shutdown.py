"""SIGTERM to a real ``kubegate run``, watched with raw sockets: nothing in flight is dropped.

On SIGTERM the data plane fails readiness, stops accepting, closes idle
keep-alive connections at once (whether their last request went through the
lean HTTP front or aiohttp, e.g. a POST with a body), answers every request in
flight with ``Connection: close`` and exits as soon as they are answered, not
after a fixed grace period. Every request sent is counted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from echo_route import echo_route


def _request(method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: shop.test\r\n"
    if body:
        head += f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def _read_response(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """One whole HTTP/1.1 response (Content-Length framed) from a blocking socket."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a response body")
        rest += chunk
    return status, headers, rest[:length]


def _closed_within(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the server closed ``sock`` (EOF or reset), None if it stayed open."""
    started = time.monotonic()
    sock.settimeout(timeout)
    try:
        data = sock.recv(1)
    except TimeoutError:
        return None
    except ConnectionResetError:
        return time.monotonic() - started
    assert data == b"", f"unexpected bytes on an idle connection: {data!r}"
    return time.monotonic() - started


async def test_sigterm_closes_idle_keepalive_at_once_answers_in_flight_and_exits(backend, tmp_path, kubegate_run):
    b = await backend()
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "gateway.yaml").write_text(echo_route(b.port))
    gateway = await kubegate_run(folder)
    proc = gateway.proc
    http, admin = gateway.ports["http"], gateway.ports["admin"]

    def run_scenario() -> dict:
        sent = answered = 0
        addr = ("127.0.0.1", http)
        idle_post = socket.create_connection(addr)  # last request went through aiohttp (a body)
        idle_get = socket.create_connection(addr)  # last request went through the lean front
        for sock, req in ((idle_post, _request("POST", "/echo", b"x" * 100)), (idle_get, _request("GET", "/a"))):
            sock.sendall(req)
            sent += 1
            status, headers, _ = _read_response(sock, 10)
            assert status == 200 and headers.get("connection") != "close"
            answered += 1
        busy_get = socket.create_connection(addr)
        busy_post = socket.create_connection(addr)
        busy_get.sendall(_request("GET", "/slow?s=1.5"))
        busy_post.sendall(_request("POST", "/slow?s=1.5", b"y" * 100))
        sent += 2
        time.sleep(0.3)  # both are in flight at the backend
        signalled = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        result = {"idle_post_closed": _closed_within(idle_post, 5), "idle_get_closed": _closed_within(idle_get, 5)}
        # readiness fails while the in-flight requests are still being answered
        ready = socket.create_connection(("127.0.0.1", admin))
        ready.sendall(b"GET /readyz HTTP/1.1\r\nHost: admin\r\n\r\n")
        result["readyz"] = _read_response(ready, 5)[0]
        ready.close()
        try:
            socket.create_connection(addr, timeout=2).close()
            result["new_connection"] = "accepted"
        except OSError:
            result["new_connection"] = "refused"
        for sock in (busy_get, busy_post):
            status, headers, body = _read_response(sock, 10)
            assert status == 200 and body == b"slow", (status, body)
            answered += 1
            result.setdefault("busy_connection_headers", []).append(headers.get("connection"))
            result.setdefault("busy_closed_after", []).append(_closed_within(sock, 5))
        result.update(sent=sent, answered=answered, signalled=signalled)
        for sock in (idle_post, idle_get, busy_get, busy_post):
            sock.close()
        return result

    result = await asyncio.to_thread(run_scenario)
    code = await asyncio.wait_for(proc.wait(), 15)
    exited_after = time.monotonic() - result["signalled"]
    assert code == 0
    assert result["answered"] == result["sent"] == 4  # every request answered, none dropped
    assert result["idle_post_closed"] is not None and result["idle_post_closed"] < 1.0, result
    assert result["idle_get_closed"] is not None and result["idle_get_closed"] < 1.0, result
    assert result["readyz"] == 503, result
    assert result["new_connection"] == "refused", result
    assert result["busy_connection_headers"] == ["close", "close"], result
    assert all(t is not None and t < 1.0 for t in result["busy_closed_after"]), result
    assert exited_after < 5.0, f"exit took {exited_after:.1f}s after SIGTERM (in flight took 1.5 s)"
