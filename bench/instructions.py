"""Instructions and CPU per bare-route request, A/B between source trees, in ONE run (prints figures; not a test).

Usage: python bench/instructions.py TREE [TREE ...] [--seconds 8] [--rounds 5] [--case bare|hs256|apikey]

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
the policy case's Authorization header: the differences split the policy cost (header, admission, Redis).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

_spec = importlib.util.spec_from_file_location("bench_dataplane", os.path.join(os.path.dirname(__file__),
                                                                             "dataplane.py"))
bd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bd)  # type: ignore[union-attr]
_spec = importlib.util.spec_from_file_location("bench_peers", os.path.join(os.path.dirname(__file__), "peers.py"))
peers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peers)  # type: ignore[union-attr]

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


def kubegate(tree: str, folder: str, workdir: str, prefix: tuple[str, ...]) -> tuple[subprocess.Popen, str]:
    port = bd.free_port()
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree), "KUBEGATE_EVENT_LOOP": "uvloop",
           "XDG_CACHE_HOME": os.path.join(workdir, "cache")}
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "kubegate.cli", "run", "-f", folder, "--host", "127.0.0.1",
                             "--http-port", str(port), "--https-port", "0", "--admin-port", "0", "--workers", "1",
                             *(("--redis-url", CASE.redis_url) if CASE.redis_url else ())],
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


IDLE_SECONDS = 3  # callgrind counts the idle process this long first: its timers' work is not the requests'


def _dump_totals(out: str) -> dict[int, int]:
    """Instructions of each numbered callgrind dump (``out.1``, ``out.2``, ...): each counts since the last."""
    totals = {}
    for name in glob.glob(out + ".*"):
        number = name.rsplit(".", 1)[1]
        if not number.isdigit():
            continue
        with open(name) as handle:
            for line in handle:
                if line.startswith("totals:"):  # a later dump's summary: line underflows (callgrind 3.19)
                    totals[int(number)] = int(line.split()[1])
    return totals


def instructions(tree: str, folder: str, workdir: str, seconds: int, client: tuple[str, ...],
                 connections: int = 8) -> tuple[int, int, float]:
    """(instructions, requests, idle instructions per second) of one callgrind run: the instructions are
    those counted under wrk less what the idle process spends in as long (timers, watches), which would
    otherwise be divided by however few requests a slow valgrind served on a busy machine."""
    out = os.path.join(workdir, f"callgrind-{time.monotonic_ns()}.out")
    proc, url = kubegate(tree, folder, workdir, ("valgrind", "--tool=callgrind", "--instr-atstart=no",
                                                 f"--callgrind-out-file={out}"))
    pid = str(proc.pid)
    try:
        peers.answers(url, CASE.sent, timeout=180)  # valgrind makes the start slow: until the route answers 200
        requests_served(url, 2, connections, client)  # warm
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        started = time.monotonic()
        time.sleep(IDLE_SECONDS)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)  # dump 1: idle
        idle = time.monotonic() - started
        started = time.monotonic()
        served = requests_served(url, seconds, connections, client)
        loaded = time.monotonic() - started
        subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)  # dump 2: under wrk
    finally:
        proc.terminate()
        proc.wait(60)
    totals = _dump_totals(out)
    idle_rate = totals.get(1, 0) / idle
    return max(0, round(totals.get(2, 0) - idle_rate * loaded)), served, idle_rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", help="source trees to compare (their kubegate runs the same route)")
    parser.add_argument("--seconds", type=int, default=8, help="wrk duration under callgrind (default 8)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved 3 s CPU rounds per tree (default 5)")
    parser.add_argument("--case", choices=list(CASES), default="bare",
                        help="route measured: bare, bare-jwt-header (+ the JWT header), hs256 (JWT + Redis rate "
                             "limit + IP filter), hs256-memory (in-memory limits), apikey (API key + Redis)")
    parser.add_argument("--keep", action="store_true", help="keep the callgrind output files (printed)")
    parser.add_argument("--connections", type=int, default=8,
                        help="wrk connections under callgrind (default 8; bench/peers.py's 64 batches more "
                             "requests per Redis round trip)")
    args = parser.parse_args(argv)
    global CASE
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
    redis_port = bd.free_port()
    redis = bd.redis_server(redis_port, work)
    try:
        bd.wait_port(redis_port)
        subprocess.run(["taskset", "-a", "-cp", client_core, str(redis.pid)], check=True, stdout=subprocess.DEVNULL)
        CASE = Case(args.case, f"redis://127.0.0.1:{redis_port}/0", api_key)
        bd.wait_port(backend)
        counted = {tree: instructions(tree, folder, work, args.seconds, client, args.connections)
                   for tree in args.trees}
        started = {tree: kubegate(tree, folder, work, ("taskset", "-c", proxy_core)) for tree in args.trees}
        try:
            for _, url in started.values():
                peers.answers(url, CASE.sent)
                requests_served(url, 1, 64, client)
            cpu: dict[str, list[float]] = {tree: [] for tree in args.trees}
            for _ in range(args.rounds):
                for tree, (proc, url) in started.items():
                    before = bd.cpu_seconds([proc.pid])
                    served = requests_served(url, 3, 64, client)
                    cpu[tree].append((bd.cpu_seconds([proc.pid]) - before) / served * 1e6)
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
    first = args.trees[0]
    base_instr = counted[first][0] / counted[first][1]
    base_cpu = statistics.median(cpu[first])
    print(f"\nkubegate {args.case} route ({CASE.path}), one worker, uvloop; callgrind under wrk -t1 -c{args.connections} for {args.seconds} s; CPU pinned to "
          f"CPU {proxy_core} under wrk -t1 -c64, median of {args.rounds} interleaved 3 s rounds")
    print("(instr/req: less the idle process's instructions in as long; idle instr/s: those, per second)")
    print(f"{'tree':40s} {'instr/req':>10s} {'x first':>8s} {'cpu us/req':>11s} {'x first':>8s} {'idle instr/s':>13s}")
    for tree in args.trees:
        instr = counted[tree][0] / counted[tree][1]
        median = statistics.median(cpu[tree])
        print(f"{tree:40s} {instr:10,.0f} {instr / base_instr:8.2f} {median:11.1f} {median / base_cpu:8.2f} "
              f"{counted[tree][2]:13,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
