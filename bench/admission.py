"""Micro-benchmark of Admission.decide() (awaited when it must wait, as the request path does): microseconds per call.

Cases (the bench/dataplane.py "secured" route: IP allow/deny + JWT + one
generous ip-dimension limit, so nothing is refused):
  HS256 cached + IP + memory      in-memory limits, sequential awaits
  RS256 cached + IP + memory      same, RS256 token (a cache hit must cost what HS256 costs)
  HS256 + IP + redis, c=1         real redis-server, one request at a time
  HS256 + IP + redis, c=50        real redis-server, 50 concurrent admits per batch
  API key + IP + memory           X-API-Key instead of a JWT
  IP + memory (no auth)           the IP filter and limiter alone
Figures: wall us/call and CPU us/call of this process, and for the Redis
cases redis-server's own CPU per call (it shares the machine's cores).
With --e2e it also runs wrk against real gateway processes (started through
bench/dataplane.py's own helpers, read-only) for bare / HS256+redis+ip /
RS256+redis+ip / HS256+memory+ip and prints req/s, gateway CPU us/request
and the ratios to bare: a quicker end-to-end check than the full bench.
Run: python bench/admission.py [--calls N] [--rounds R] [--e2e] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import io
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time

import jwt
from kubegate.dataplane.admission import Admission, Decision, RequestFacts
from kubegate.dataplane.audit import AuditLog
from kubegate.dataplane.jwks import JwksCache
from kubegate.dataplane.metrics import Metrics
from kubegate.dataplane.ratelimit import MemoryRateLimiter
from kubegate.dataplane.redis_limits import RedisRateLimiter
from multidict import CIMultiDict, CIMultiDictProxy

from kubegate.apikeys import generate_api_key, key_hash, key_id
from kubegate.config import (
    CompiledApiKey,
    CompiledAuth,
    CompiledBackend,
    CompiledConfig,
    CompiledJwt,
    CompiledLimit,
    CompiledRateLimit,
    CompiledRoute,
    SecretBundle,
)

# Process and key helpers are bench/dataplane.py's (loaded, not copied): one definition for both benches.
_spec = importlib.util.spec_from_file_location("bench_dataplane", os.path.join(os.path.dirname(__file__),
                                                                               "dataplane.py"))
bd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bd)

HS_SECRET = "bench-hmac-secret-0123456789abcdef0123456789"
API_KEY = generate_api_key()
ISSUER, AUDIENCE = "https://issuer.bench", "bench-api"


def config(rsa_public: str) -> tuple[CompiledConfig, SecretBundle]:
    """The routes of bench/dataplane.py's throughput config, plus an IP-only one."""
    limit = CompiledRateLimit(policy="bench/generous", scope="route", failure_mode="open", limits=(
        CompiledLimit(key="bench/generous#0", dimension="ip", requests=100_000_000, period_seconds=1,
                      burst=100_000_000),))
    secured = {"ip_allow": ("127.0.0.0/8", "10.0.0.0/8", "::1/128"), "ip_deny": ("192.0.2.0/24",),
               "rate_limit": limit}

    def route(name: str, **fields) -> CompiledRoute:
        return CompiledRoute(id=f"bench/{name}", namespace="bench", name=name, path=f"/{name}/*rest",
                             backends=(CompiledBackend(url="http://127.0.0.1:1"),), **fields)

    hs = CompiledJwt(algorithms=("HS256",), hmac_secret="bench/hs", issuer=ISSUER, audiences=(AUDIENCE,))
    rs = CompiledJwt(algorithms=("RS256",), public_key_pem=rsa_public, issuer=ISSUER, audiences=(AUDIENCE,))
    routes = (
        route("hs256", auth=CompiledAuth(methods=("jwt",), jwt=hs), **secured),
        route("rs256", auth=CompiledAuth(methods=("jwt",), jwt=rs), **secured),
        route("apikey", auth=CompiledAuth(methods=("apiKey",)), **secured),
        route("iponly", **secured),
    )
    keys = (CompiledApiKey(id=key_id(key_hash(API_KEY)), namespace="bench", name="k", hash_ref="bench/key"),)
    return CompiledConfig(routes=routes, api_keys=keys), SecretBundle(values={"bench/hs": HS_SECRET,
                                                                              "bench/key": key_hash(API_KEY)})


def facts(token: str | None, api_key: str | None = None) -> RequestFacts:
    headers = CIMultiDict({"Host": "bench.test", "User-Agent": "wrk", "Accept": "*/*"})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if api_key is not None:
        headers["X-API-Key"] = api_key
    return RequestFacts(method="GET", path="/x/bench", host="bench.test", client_ip="127.0.0.1",
                        headers=CIMultiDictProxy(headers), peer_cert=None, tls=False)


def process_cpu(pid: int) -> float:
    """utime + stime of a process, seconds."""
    return bd.cpu_seconds([pid])


async def measure(admission: Admission, route: CompiledRoute, request: RequestFacts, calls: int,
                  concurrency: int, redis_pid: int | None = None) -> tuple[float, float, float | None]:
    """(wall us/call, CPU us/call, redis-server CPU us/call); every decision must admit."""
    admit = admission.admit
    for _ in range(200):  # warm: the token cache, the limiter's connection, lazily made objects
        assert (await admit(route, request)).status is None
    wall, cpu = time.perf_counter(), time.process_time()
    redis_cpu = process_cpu(redis_pid) if redis_pid else 0.0
    if concurrency == 1:  # as the request path asks (Pipeline.answer): decide(), awaited only when it must wait
        decide = admission.decide
        for _ in range(calls):
            decision = decide(route, request)
            if type(decision) is not Decision:
                decision = await decision
        assert decision.status is None, decision
    else:
        for _ in range(calls // concurrency):
            decisions = await asyncio.gather(*(admit(route, request) for _ in range(concurrency)))
            assert all(v.status is None for v in decisions)
    done = (calls // concurrency) * concurrency
    redis_us = (process_cpu(redis_pid) - redis_cpu) / done * 1e6 if redis_pid else None
    return (time.perf_counter() - wall) / done * 1e6, (time.process_time() - cpu) / done * 1e6, redis_us


async def gather_overhead(calls: int, concurrency: int = 50) -> float:
    async def noop() -> None:
        return None

    cpu = time.process_time()
    for _ in range(calls // concurrency):
        await asyncio.gather(*(noop() for _ in range(concurrency)))
    return (time.process_time() - cpu) / ((calls // concurrency) * concurrency) * 1e6


def start_redis(workdir: str) -> tuple[subprocess.Popen, str]:
    port = bd.free_port()
    proc = bd.redis_server(port, workdir)
    bd.wait_port(port, timeout=5)
    return proc, f"redis://127.0.0.1:{port}/0"


async def run(calls: int, rounds: int) -> None:
    rsa_private, rsa_public = bd.rsa_keys()
    cfg, secrets = config(rsa_public)
    routes = {r.name: r for r in cfg.routes}
    claims = {"sub": "bench-user", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 3600}
    hs = facts(jwt.encode(claims, HS_SECRET, algorithm="HS256"))
    rs = facts(jwt.encode(claims, rsa_private, algorithm="RS256"))
    anonymous = facts(None)
    common = {"jwks": JwksCache(), "metrics": Metrics(), "audit": AuditLog(io.StringIO())}
    memory = Admission(cfg, secrets, limiter=MemoryRateLimiter(), **common)
    workdir = tempfile.mkdtemp(prefix="kubegate-bench-admission-")
    proc, url = start_redis(workdir)
    limiter = RedisRateLimiter(url, timeout=1.0)
    try:
        shared = Admission(cfg, secrets, limiter=limiter, **common)
        cases = {
            "IP + memory (no auth)": (memory, routes["iponly"], anonymous, 1),
            "HS256 cached + IP + memory": (memory, routes["hs256"], hs, 1),
            "RS256 cached + IP + memory": (memory, routes["rs256"], rs, 1),
            "API key + IP + memory": (memory, routes["apikey"], facts(None, API_KEY), 1),
            "HS256 + IP + redis, c=1": (shared, routes["hs256"], hs, 1),
            "HS256 + IP + redis, c=50": (shared, routes["hs256"], hs, 50),
            "RS256 + IP + redis, c=50": (shared, routes["rs256"], rs, 50),
        }
        best: dict[str, tuple[float, float, float | None]] = {}
        for _ in range(rounds):
            for name, (admission, route, request, concurrency) in cases.items():
                n = calls if concurrency > 1 or admission is memory else calls // 4
                figures = await measure(admission, route, request, n, concurrency,
                                        None if admission is memory else proc.pid)
                if name not in best or figures[1] < best[name][1]:
                    best[name] = figures
        gather = min([await gather_overhead(calls) for _ in range(rounds)])
        print(f"Admission.decide() (c=1; admit() under gather for c=50): {calls} calls x {rounds} rounds, "
              f"best round (least CPU) kept")
        print(f"{'case':30s} {'wall us/call':>13s} {'cpu us/call':>12s} {'redis-server cpu':>17s}")
        for name, (wall, cpu, redis_us) in best.items():
            print(f"{name:30s} {wall:13.2f} {cpu:12.2f} {'' if redis_us is None else f'{redis_us:.2f}':>17s}")
        print(f"(c=50 includes asyncio.gather's task per call: {gather:.2f} us CPU for a no-op coroutine; a gateway "
              "request is a task anyway)")
    finally:
        await limiter.close()
        proc.kill()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def evalsha_calls(port: int) -> int:
    """EVALSHA calls the Redis server has run (INFO commandstats)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"INFO commandstats\r\n")
        data = b""
        while b"\r\n" not in data or len(data) < data.index(b"\r\n") + 2 + int(data[1:data.index(b"\r\n")]):
            data += sock.recv(65536)
    found = re.search(rb"cmdstat_evalsha:calls=(\d+)", data)
    return int(found.group(1)) if found else 0


def end_to_end(seconds: float, rounds: int) -> None:
    """wrk against gateway processes; the helpers are bench/dataplane.py's (imported, not copied)."""
    work = tempfile.mkdtemp(prefix="kubegate-bench-e2e-")
    backend_port, redis_port, gw_port, local_port = bd.free_port(), bd.free_port(), bd.free_port(), bd.free_port()
    rsa_private, rsa_public = bd.rsa_keys()
    cfg, secrets = bd.throughput_config(f"http://127.0.0.1:{backend_port}", rsa_public)
    config_path = os.path.join(work, "throughput.json")
    bd.write_config(config_path, cfg, secrets)
    claims = {"sub": "bench-user", "iss": bd.ISSUER, "aud": bd.AUDIENCE, "exp": int(time.time()) + 3600}
    hs = {"Authorization": "Bearer " + jwt.encode(claims, bd.HS_SECRET, algorithm="HS256")}
    rs = {"Authorization": "Bearer " + jwt.encode(claims, rsa_private, algorithm="RS256")}
    procs = [bd.nginx(f'server {{ listen 127.0.0.1:{backend_port}; location / {{ return 200 "ok\\n"; }} }}', work),
             bd.redis_server(redis_port, work)]
    try:
        for port in (backend_port, redis_port):
            bd.wait_port(port)
        shared = bd.gateway(config_path, gw_port, f"redis://127.0.0.1:{redis_port}/0")
        local = bd.gateway(config_path, local_port, None)
        procs += [shared, local]
        cases = {
            "bare": (f"http://127.0.0.1:{gw_port}/bare/x", None, [shared.pid]),
            # the same bytes on the wire as the secured cases: what the token costs outside admission
            "bare+same header": (f"http://127.0.0.1:{gw_port}/bare/x", hs, [shared.pid]),
            "HS256+redis+ip": (f"http://127.0.0.1:{gw_port}/hs256/x", hs, [shared.pid]),
            "RS256+redis+ip": (f"http://127.0.0.1:{gw_port}/rs256/x", rs, [shared.pid]),
            "HS256+memory+ip": (f"http://127.0.0.1:{local_port}/hs256/x", hs, [local.pid]),
        }
        for url, headers, _ in cases.values():
            warm = bd.wrk(url, 1, headers)
            if warm["non2xx"] or warm["rps"] == 0:
                raise SystemExit(f"bench: {url} does not answer 200 ({warm})")
        runs: dict[str, list[dict]] = {name: [] for name in cases}
        script_calls = 0
        redis_requests = 0
        for _ in range(rounds):
            for name, (url, headers, pids) in cases.items():
                before = evalsha_calls(redis_port)
                runs[name].append(bd.wrk(url, seconds, headers, pids))
                if "redis" in name:
                    script_calls += evalsha_calls(redis_port) - before
                    redis_requests += int(runs[name][-1]["rps"] * seconds)
        best = {name: max(results, key=lambda r: r["rps"]) for name, results in runs.items()}
        cpu = {name: sorted(r["cpu_us"] for r in results)[len(results) // 2] for name, results in runs.items()}
        bare = best["bare"]
        print(f"\nEnd to end: wrk -t{bd.WRK_THREADS} -c{bd.WRK_CONNECTIONS}, {seconds:g}s x {rounds} interleaved "
              "rounds; req/s: best round; cpu: median round of the gateway's CPU per request")
        print(f"{'case':18s} {'req/s':>8s} {'x bare':>7s} {'cpu us/req':>11s} {'bare/this cpu':>14s}")
        for name, r in best.items():
            print(f"{name:18s} {r['rps']:8.0f} {r['rps'] / bare['rps']:7.2f} {cpu[name]:11.1f} "
                  f"{cpu['bare'] / cpu[name]:14.2f}")
        print(f"Redis: about {redis_requests / max(1, script_calls):.1f} requests per script call (= per round trip)")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except Exception:  # noqa: BLE001 - a stuck helper is killed
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20_000, help="admit() calls per case and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--e2e", action="store_true", help="also measure gateway processes with wrk")
    parser.add_argument("--seconds", type=float, default=3, help="wrk duration per e2e case and round")
    args = parser.parse_args()
    asyncio.run(run(args.calls, args.rounds))
    if args.e2e:
        end_to_end(args.seconds, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
