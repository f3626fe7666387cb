"""Instructions and CPU per bare-route request, A/B between source trees, in ONE run (prints figures; not a test).

Usage: python bench/instructions.py TREE [TREE ...] [--seconds 8] [--rounds 5] [--case bare|hs256|apikey]
       [--tracing none,off,0.1,1]

A TREE is a checkout of this repository (e.g. ``git archive main | tar -x -C /tmp/main``);
each kubegate runs with ``PYTHONPATH=TREE``, so trees are compared in the same session:

* ``instr/req``: the kubegate process (``kubegate run``, one worker, uvloop, one route
  ``/bare/*rest`` to a hello-world nginx) under ``valgrind --tool=callgrind``, instrumentation
  switched on after a warm-up, ``wrk -t1 -c8`` (``--connections``) for ``--seconds``; instructions counted divided by
  requests served. User-space instructions do not depend on what else the machine runs: the
  steady figure for an A/B on a shared machine (syscalls are not in it).
* ``cpu us/req``: the same kubegate without valgrind, pinned with ``taskset`` to the first CPU
  (wrk and the backend on the second), utime + stime per request over interleaved ``--rounds``
  of 3 s (median); noisy on a busy machine, the figure bench/peers.py compares with its peers.

``--case hs256`` measures bench/peers.py's policy route instead (HS256 JWT + Redis rate limit + IP
filter, a real redis-server on the second CPU); ``--case apikey`` its API key + Redis route;
``hs256-memory`` the policy route with in-memory limits and ``bare-jwt-header`` the bare route sent
the policy case's Authorization header: the differences split the policy cost (header, admission, Redis);
docs/performance.md has that split, step by step (bench/policy_steps.py). For the Redis cases ``req/call`` is
the requests served per script call Redis ran in the window (INFO commandstats): requests per round trip,
which sets how many requests share a batch's own cost.

``--tracing none,off,0.1,1`` measures each tree once per tracing setting: ``none`` no tracing flags,
``off`` ``--otlp-endpoint`` with ``OTEL_SDK_DISABLED=true``, a number ``--trace-sample-ratio`` that
share (spans POSTed to a small OTLP/HTTP sink in this process, keep-alive, answering 200). The export
thread is in the count: with ``OTEL_BSP_SCHEDULE_DELAY`` 2 s, the queue is left to empty before
instrumentation starts and again before it stops, so every span of a measured request is encoded and
sent inside the window (the thread's share is printed beside the total). ``--rounds 0``: no CPU rounds.
For every case the instructions the process spends unloaded (its idle rate over 4 s just before the
window) are taken out of the window's count: they depend on the window's length, not on the requests.
"""

from __future__ import annotations

import argparse
import glob
import http.server
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

_spec = importlib.util.spec_from_file_location("bench_dataplane", os.path.join(os.path.dirname(__file__),
                                                                             "dataplane.py"))
bd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bd)  # type: ignore[union-attr]
_spec = importlib.util.spec_from_file_location("bench_peers", os.path.join(os.path.dirname(__file__), "peers.py"))
peers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peers)  # type: ignore[union-attr]
_spec = importlib.util.spec_from_file_location("bench_admission", os.path.join(os.path.dirname(__file__),
                                                                               "admission.py"))
ba = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ba)  # type: ignore[union-attr]  (its evalsha_calls: script calls a Redis has run)

# name -> (path, the Authorization header sent: none / a JWT / the API key, rate limits in Redis)
CASES = {
    "bare": ("/bare/bench", None, False),
    "bare-jwt-header": ("/bare/bench", "jwt", False),  # the bare route, the policy case's request
    "hs256": ("/hs256/bench", "jwt", True),
    "hs256-memory": ("/hs256/bench", "jwt", False),  # in-memory limits: the policy case without Redis
    "apikey": ("/apikey/bench", "key", True),
}


class Case:
    """The route measured: its path, the request headers wrk sends, the Redis URL kubegate uses (or none)."""

    def __init__(self, name: str, redis_url: str | None, api_key: str) -> None:
        self.path, credential, redis = CASES[name]
        self.redis_url = redis_url if redis else None
        self.sent: dict[str, str] = {}  # the request headers
        if credential == "jwt":
            token = peers.jwt.encode({"sub": "bench", "iss": bd.ISSUER, "aud": bd.AUDIENCE,
                                      "exp": int(time.time()) + 3600}, bd.HS_SECRET, algorithm="HS256")
            self.sent = {"Authorization": f"Bearer {token}"}
        elif credential == "key":
            self.sent = {"X-API-Key": api_key}  # as bench/peers.py sends it
        self.headers = tuple(arg for name, value in self.sent.items() for arg in ("-H", f"{name}: {value}"))


CASE = Case("bare", None, "")
SINK = ""  # the OTLP/HTTP sink's base URL (--tracing)
EXPORT_DELAY = 2.0  # OTEL_BSP_SCHEDULE_DELAY of a traced kubegate, seconds
REDIS_PORT = 0
BATCHES: dict[tuple[str, str], float] = {}  # (tree, tracing) -> requests per Redis script call in the window
IDLE = 4.0  # seconds of unloaded instructions counted before the window (their rate is taken out of it)


class _Sink(http.server.BaseHTTPRequestHandler):
    """Takes OTLP/HTTP export requests over keep-alive connections and answers 200 with an empty body."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def otlp_sink() -> str:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def tracing_args(tracing: str) -> tuple[tuple[str, ...], dict[str, str]]:
    """kubegate's flags and environment for one --tracing setting."""
    if tracing == "none":
        return (), {}
    if tracing == "off":
        return ("--otlp-endpoint", SINK), {"OTEL_SDK_DISABLED": "true"}
    return ("--otlp-endpoint", SINK, "--trace-sample-ratio", tracing), \
        {"OTEL_BSP_SCHEDULE_DELAY": str(int(EXPORT_DELAY * 1000))}


def kubegate(tree: str, folder: str, workdir: str, prefix: tuple[str, ...],
             tracing: str = "none") -> tuple[subprocess.Popen, str]:
    port = bd.free_port()
    flags, extra_env = tracing_args(tracing)
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree), "KUBEGATE_EVENT_LOOP": "uvloop",
           "XDG_CACHE_HOME": os.path.join(workdir, "cache"), **extra_env}
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "kubegate.cli", "run", "-f", folder, "--host", "127.0.0.1",
                             "--http-port", str(port), "--https-port", "0", "--admin-port", "0", "--workers", "1",
                             *(("--redis-url", CASE.redis_url) if CASE.redis_url else ()), *flags],
                            env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}{CASE.path}"
    bd.wait_port(port, timeout=120)
    return proc, url


def requests_served(url: str, seconds: int, connections: int, client: tuple[str, ...]) -> int:
    out = subprocess.run([*client, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", *CASE.headers, url], capture_output=True,
                         text=True, check=True).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"bench: non-2xx answers from {url}")
    return int(re.search(r"(\d+) requests in", out).group(1))


def instructions(tree: str, folder: str, workdir: str, seconds: int, client: tuple[str, ...],
                 tracing: str = "none", connections: int = 8) -> tuple[int, int, int]:
    """(instructions, requests, instructions of threads other than the event loop's) of one callgrind run,
    less what the process spends unloaded in as long (its idle rate, measured just before): on a busy machine
    the window's length varies, and with it the timers' share per request."""
    out = os.path.join(workdir, f"callgrind-{time.monotonic_ns()}.out")
    proc, url = kubegate(tree, folder, workdir, ("valgrind", "--tool=callgrind", "--instr-atstart=no",
                                                 "--separate-threads=yes", f"--callgrind-out-file={out}"), tracing)
    settle = EXPORT_DELAY * 1.5 if tracing not in ("none", "off") else 0  # the span queue empties meanwhile
    try:
        peers.answers(url, CASE.sent, timeout=180)  # valgrind makes the start slow: until the route answers 200
        requests_served(url, 2, connections, client)  # warm
        time.sleep(settle)
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
        idle_started = time.monotonic()
        time.sleep(IDLE)  # what the process does unloaded (timers, file watch), subtracted per second below
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
        started = time.monotonic()
        idle_seconds = started - idle_started
        scripts = ba.evalsha_calls(REDIS_PORT) if CASE.redis_url else 0
        served = requests_served(url, seconds, connections, client)
        if CASE.redis_url:
            BATCHES[(tree, tracing)] = served / max(1, ba.evalsha_calls(REDIS_PORT) - scripts)
        time.sleep(settle)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
        loaded_seconds = time.monotonic() - started
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.terminate()
        proc.wait(60)
    dumps: dict[int, list[int]] = {}  # dump number -> totals of its threads (<out>.<dump>-<thread>), the first first
    for name in sorted(glob.glob(out + ".*-*")):
        dump = int(name[len(out) + 1:].partition("-")[0])
        with open(name) as handle:  # (a later dump's "summary:" is off: it subtracts the earlier dumps wrongly)
            counts = [int(line.split()[1]) for line in handle if line.startswith("totals:")]
        dumps.setdefault(dump, []).append(max(counts, default=0))
    idle, loaded = dumps[1], dumps[2]
    rate = [n / idle_seconds for n in idle]  # per thread, per second
    threads = [max(0, n - r * loaded_seconds) for n, r in zip(loaded, rate)] + loaded[len(rate):]
    return round(sum(threads)), served, round(sum(threads[1:]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", help="source trees to compare (their kubegate runs the same route)")
    parser.add_argument("--seconds", type=int, default=8, help="wrk duration under callgrind (default 8)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved 3 s CPU rounds per tree (default 5)")
    parser.add_argument("--case", choices=list(CASES), default="bare",
                        help="route measured: bare, bare-jwt-header (+ the JWT header), hs256 (JWT + Redis rate "
                             "limit + IP filter), hs256-memory (in-memory limits), apikey (API key + Redis)")
    parser.add_argument("--tracing", default="none",
                        help="comma-separated tracing settings, each tree measured with each: none (no flags), "
                             "off (endpoint + OTEL_SDK_DISABLED), or a sample ratio such as 0.1")
    parser.add_argument("--keep", action="store_true", help="keep the callgrind output files (printed)")
    parser.add_argument("--connections", type=int, default=8,
                        help="wrk connections under callgrind (default 8; bench/peers.py's 64 batches more "
                             "requests per Redis round trip)")
    args = parser.parse_args(argv)
    global CASE, SINK, REDIS_PORT
    tracings = [t.strip() for t in args.tracing.split(",") if t.strip()]
    for tracing in tracings:
        if tracing not in ("none", "off"):
            try:
                if not 0 <= float(tracing) <= 1:
                    raise ValueError
            except ValueError:
                parser.error(f"--tracing {tracing!r}: none, off or a ratio between 0 and 1")
    configs = [(tree, tracing) for tree in args.trees for tracing in tracings]
    for tool in ("valgrind", "callgrind_control", "wrk", "nginx", "taskset", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} is not installed")
    cpus = sorted(os.sched_getaffinity(0))
    proxy_core, client_core = str(cpus[0]), str(cpus[-1])
    client = ("taskset", "-c", client_core)
    work = tempfile.mkdtemp(prefix="kubegate-instructions-")
    backend = bd.free_port()
    folder = os.path.join(work, "manifests")
    api_key = peers.generate_api_key()
    peers.kubegate_manifests(folder, backend, api_key)
    nginx = bd.nginx(f'server {{ listen 127.0.0.1:{backend}; location / {{ return 200 "hello world"; }} }}', work,
                     prefix=client)
    redis_port = REDIS_PORT = bd.free_port()
    redis = bd.redis_server(redis_port, work)
    if tracings != ["none"]:
        SINK = otlp_sink()
    try:
        bd.wait_port(redis_port)
        subprocess.run(["taskset", "-a", "-cp", client_core, str(redis.pid)], check=True, stdout=subprocess.DEVNULL)
        CASE = Case(args.case, f"redis://127.0.0.1:{redis_port}/0", api_key)
        bd.wait_port(backend)
        counted = {config: instructions(config[0], folder, work, args.seconds, client, config[1], args.connections)
                   for config in configs}
        cpu: dict[tuple[str, str], list[float]] = {config: [] for config in configs}
        if args.rounds:
            started = {config: kubegate(config[0], folder, work, ("taskset", "-c", proxy_core), config[1])
                       for config in configs}
            try:
                for _, url in started.values():
                    peers.answers(url, CASE.sent)
                    requests_served(url, 1, 64, client)
                for _ in range(args.rounds):
                    for config, (proc, url) in started.items():
                        before = bd.cpu_seconds([proc.pid])
                        served = requests_served(url, 3, 64, client)
                        cpu[config].append((bd.cpu_seconds([proc.pid]) - before) / served * 1e6)
            finally:
                for proc, _ in started.values():
                    proc.terminate()
                    proc.wait(30)
    finally:
        for server in (nginx, redis):
            server.terminate()
            server.wait(30)
        if args.keep:
            print(f"callgrind output kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    first = configs[0]
    base_instr = counted[first][0] / counted[first][1]
    base_cpu = statistics.median(cpu[first]) if args.rounds else 0.0
    print(f"\nkubegate {args.case} route ({CASE.path}), one worker, uvloop; callgrind under wrk -t1 -c{args.connections} for {args.seconds} s; CPU pinned to "
          f"CPU {proxy_core} under wrk -t1 -c64, median of {args.rounds} interleaved 3 s rounds")
    print(f"{'tree':40s} {'tracing':>7s} {'requests':>8s} {'instr/req':>10s} {'x first':>8s} {'threads':>8s} "
          f"{'cpu us/req':>11s} {'x first':>8s} {'req/call':>8s}   (threads: instr/req outside the event loop's thread; "
          f"req/call: requests per Redis script call, i.e. per round trip)")
    for config in configs:
        total, served, others = counted[config]
        instr = total / served
        median = statistics.median(cpu[config]) if args.rounds else float("nan")
        print(f"{config[0]:40s} {config[1]:>7s} {served:8d} {instr:10,.0f} {instr / base_instr:8.3f} {others / served:8,.0f} "
              f"{median:11.1f} {median / base_cpu if base_cpu else float('nan'):8.2f} "
              f"{BATCHES.get(config, float('nan')):8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
