"""Data-plane benchmark (prints figures; not a test).

Same run, with wrk: an nginx static backend directly, nginx proxying it (the
practical limit), and kubegate with a bare route; plus route lookup time at
10 / 1,000 / 10,000 routes. Usage: python bench/dataplane.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

from kubegate.dataplane.router import RouteTable, normalize_path

from kubegate.config import CompiledBackend, CompiledConfig, CompiledRoute, SecretBundle


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"port {port} did not open")


def wrk(url: str, seconds: int, connections: int = 64) -> tuple[float, str, str]:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"\n\s+50%\s+(\S+)", out).group(1)
    p99 = re.search(r"99%\s+(\S+)", out).group(1)
    return rps, p50, p99


def nginx(conf_body: str, workdir: str) -> subprocess.Popen:
    conf = os.path.join(workdir, f"nginx-{time.monotonic_ns()}.conf")
    with open(conf, "w") as handle:
        handle.write(f"""worker_processes 1; daemon off; pid {conf}.pid; error_log stderr error;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {workdir}; proxy_temp_path {workdir};
fastcgi_temp_path {workdir}; uwsgi_temp_path {workdir}; scgi_temp_path {workdir};
{conf_body} }}""")
    return subprocess.Popen(["nginx", "-c", conf, "-p", workdir], stderr=subprocess.DEVNULL)


def lookup_cost(n: int, iterations: int = 200_000) -> float:
    table = RouteTable(((f"h{i % 50}.test",), f"/svc{i}/items/:id", ("GET",), i) for i in range(n))
    _, segments = normalize_path(f"/svc{n - 1}/items/7")
    host = f"h{(n - 1) % 50}.test"
    started = time.perf_counter()
    for _ in range(iterations):
        table.lookup(host, "GET", segments)
    return (time.perf_counter() - started) / iterations * 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="kubegate-bench-")
    backend_port, nginx_port, gw_port = free_port(), free_port(), free_port()
    procs = [nginx(f'server {{ listen 127.0.0.1:{backend_port}; location / {{ return 200 "ok\\n"; }} }}', work),
             nginx(f"upstream b {{ server 127.0.0.1:{backend_port}; keepalive 64; }}\n"
                   f"server {{ listen 127.0.0.1:{nginx_port}; location / {{ proxy_pass http://b; "
                   f"proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}", work)]
    config = CompiledConfig(routes=(CompiledRoute(
        id="bench/bare", namespace="bench", name="bare", path="/*rest",
        backends=(CompiledBackend(url=f"http://127.0.0.1:{backend_port}"),)),))
    script = os.path.join(work, "gw.py")
    with open(script, "w") as handle:
        handle.write(f"""
import asyncio, signal
from kubegate.config import CompiledConfig, SecretBundle
from kubegate.dataplane.ratelimit import build_rate_limiter
from kubegate.dataplane.server import Gateway
async def main():
    gw = Gateway(host="127.0.0.1", http_port={gw_port}, https_port=0, admin_port=0, limiter=build_rate_limiter(None))
    await gw.start()
    gw.apply(CompiledConfig.model_validate_json({config.model_dump_json()!r}), SecretBundle())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await gw.stop()
try:
    import uvloop
    uvloop.install()
except ImportError:
    pass
asyncio.run(main())
""")
    procs.append(subprocess.Popen([sys.executable, script]))
    try:
        for port in (backend_port, nginx_port, gw_port):
            wait_port(port)
        wrk(f"http://127.0.0.1:{gw_port}/warm", 1)
        results = {}
        for name, port in (("backend direct", backend_port), ("nginx proxy", nginx_port),
                           ("kubegate bare", gw_port)):
            results[name] = wrk(f"http://127.0.0.1:{port}/bench", args.seconds)
            print(f"{name:16s} {results[name][0]:10.0f} req/s  p50 {results[name][1]:>8s}  p99 {results[name][2]:>8s}")
        print(f"kubegate bare / nginx = {results['kubegate bare'][0] / results['nginx proxy'][0]:.2f} (target >= 0.25)")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    costs = {n: lookup_cost(n) for n in (10, 1_000, 10_000)}
    for n, ns in costs.items():
        print(f"route lookup at {n:6d} routes: {ns:7.0f} ns")
    print(f"lookup 10,000 vs 10 routes: {costs[10_000] / costs[10] - 1:+.1%} (target within 10%)")
    _ = SecretBundle


if __name__ == "__main__":
    main()
