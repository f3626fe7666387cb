"""Data-plane benchmark (prints figures; not a test). Usage: python bench/dataplane.py [--seconds 4] [--rounds 3]

Everything is started here on free loopback ports, in one run:

* wrk against an nginx static backend directly, nginx proxying it (the practical
  limit; ``worker_processes 1``), and one kubegate process (plain asyncio, one
  worker, as ``kubegate run`` starts it) serving three routes: bare; JWT HS256 +
  Redis rate limit + IP filter; the same with RS256. A real redis-server backs
  the limits (limit set high so nothing is 429). For reference: the HS256 route
  on a process with in-memory limits, the bare route on a process whose plain-HTTP
  listener is aiohttp's own server (what the lean front, http1.py, saves), and 2 workers (SO_REUSEPORT) vs nginx with
  ``worker_processes 2``. Cases are interleaved over ``--rounds`` rounds and the
  best round is kept: the machine is shared, and interference only ever makes a
  round slower. The proxy's CPU time per request is printed too (less noisy).
* added latency at a fixed 1,000 req/s (an open-loop asyncio client; latency is
  measured from each request's scheduled send time, so stalls are not hidden):
  direct to the backend vs through kubegate.
* route lookup time at 10 / 1,000 / 10,000 routes (same lookup mix, best of
  several repeats).
* RSS of a data-plane process holding 10,000 routes + 100,000 API keys.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import timeit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from kubegate.dataplane.router import RouteTable
from kubegate.dataplane.target import normalise_request_path

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

WRK_THREADS, WRK_CONNECTIONS = 2, 64
HS_SECRET = "bench-hmac-secret-0123456789abcdef0123456789"
ISSUER, AUDIENCE = "https://issuer.bench", "bench-api"


# --- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"bench: port {port} did not open")


def nginx(conf_body: str, workdir: str, workers: int = 1, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    """``prefix``: e.g. ``("taskset", "-c", "0")`` to pin it (bench/peers.py)."""
    conf = os.path.join(workdir, f"nginx-{time.monotonic_ns()}.conf")
    with open(conf, "w") as handle:
        handle.write(f"""worker_processes {workers}; daemon off; pid {conf}.pid; error_log stderr error;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {workdir}; proxy_temp_path {workdir};
fastcgi_temp_path {workdir}; uwsgi_temp_path {workdir}; scgi_temp_path {workdir};
{conf_body} }}""")
    return subprocess.Popen([*prefix, "nginx", "-c", conf, "-p", workdir], stderr=subprocess.DEVNULL)


def redis_server(port: int, workdir: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, "--loglevel", "warning"], stdout=subprocess.DEVNULL,
    )


def gateway(config_path: str, port: int, redis_url: str | None, reuse_port: bool = False,
            fast_http: bool = True) -> subprocess.Popen:
    """A kubegate data-plane process (this script's --serve mode)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--serve", config_path, "--port", str(port)]
    if redis_url:
        cmd += ["--redis-url", redis_url]
    if reuse_port:
        cmd.append("--reuse-port")
    if not fast_http:
        cmd.append("--aiohttp-front")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    words = proc.stdout.readline().split()
    if not words or words[0] != "ready":
        proc.kill()
        raise SystemExit("bench: a kubegate process did not start")
    proc.admin_port = int(words[1])  # type: ignore[attr-defined]
    return proc


def handler_buckets(admin_port: int, route: str) -> dict[str, float]:
    """The gateway's own request-duration histogram for one route: {le: cumulative count}."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    pattern = re.compile(r'kubegate_request_duration_seconds_bucket\{le="([^"]+)",route="' + re.escape(route)
                         + r'"\} ([0-9.e+]+)')
    return {le: float(count) for le, count in pattern.findall(text)}


def family(pid: int) -> list[int]:
    """A process and its direct children (nginx's workers)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [pid, *map(int, handle.read().split())]
    except OSError:
        return [pid]


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU time consumed so far by these processes."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1])
    return values["VmRSS"], values["VmHWM"]


# --- configs -------------------------------------------------------------------------------------


def rsa_keys() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def throughput_config(backend: str, rsa_public: str) -> tuple[CompiledConfig, SecretBundle]:
    limit = CompiledRateLimit(policy="bench/generous", scope="route", failure_mode="open", limits=(
        CompiledLimit(key="bench/generous#0", dimension="ip", requests=100_000_000, period_seconds=1,
                      burst=100_000_000),))
    secured = {"ip_allow": ("127.0.0.0/8", "10.0.0.0/8", "::1/128"), "ip_deny": ("192.0.2.0/24",),
               "rate_limit": limit}

    def route(name: str, **fields) -> CompiledRoute:
        return CompiledRoute(id=f"bench/{name}", namespace="bench", name=name, path=f"/{name}/*rest",
                             backends=(CompiledBackend(url=backend),), **fields)

    hs = CompiledJwt(algorithms=("HS256",), hmac_secret="bench/hs", issuer=ISSUER, audiences=(AUDIENCE,))
    rs = CompiledJwt(algorithms=("RS256",), public_key_pem=rsa_public, issuer=ISSUER, audiences=(AUDIENCE,))
    routes = (
        route("bare"),
        route("hs256", auth=CompiledAuth(methods=("jwt",), jwt=hs), **secured),
        route("rs256", auth=CompiledAuth(methods=("jwt",), jwt=rs), **secured),
    )
    return CompiledConfig(routes=routes), SecretBundle(values={"bench/hs": HS_SECRET})


def big_config(backend: str, routes: int = 10_000, keys: int = 100_000) -> tuple[CompiledConfig, SecretBundle]:
    """10k routes over 100 namespaces/hosts (every 4th needs an API key) and 100k keys."""
    out_routes = []
    for i in range(routes):
        ns = f"team{i % 100}"
        fields = {"auth": CompiledAuth(methods=("apiKey",))} if i % 4 == 0 else {}
        out_routes.append(CompiledRoute(
            id=f"{ns}/r{i}", namespace=ns, name=f"r{i}", hosts=(f"{ns}.bench.test",),
            path=f"/svc{i}/items/:id", methods=("GET", "POST"), backends=(CompiledBackend(url=backend),),
            **fields))
    out_keys, values = [], {}
    for i in range(keys):
        digest = hashlib.sha256(f"bench-key-{i}".encode()).hexdigest()
        ns = f"team{i % 100}"
        values[f"apikey/{ns}/k{i}"] = digest
        out_keys.append(CompiledApiKey(id=digest[:12], namespace=ns, name=f"k{i}", hash_ref=f"apikey/{ns}/k{i}"))
    return CompiledConfig(routes=tuple(out_routes), api_keys=tuple(out_keys)), SecretBundle(values=values)


def write_config(path: str, config: CompiledConfig, secrets: SecretBundle) -> None:
    with open(path, "w") as handle:
        json.dump({"config": json.loads(config.model_dump_json()), "secrets": secrets.values}, handle)


# --- --serve mode: the data-plane process -----------------------------------------------------------


def serve(config_path: str, port: int, redis_url: str | None, reuse_port: bool, fast_http: bool) -> None:
    from kubegate.dataplane.ratelimit import build_rate_limiter
    from kubegate.dataplane.server import Gateway

    with open(config_path) as handle:
        raw = json.load(handle)
    config, secrets = CompiledConfig.model_validate(raw["config"]), SecretBundle(values=raw["secrets"])
    del raw

    async def main() -> None:
        limiter = build_rate_limiter(redis_url)
        gw = Gateway(host="127.0.0.1", http_port=port, https_port=0, admin_port=0, limiter=limiter,
                     reuse_port=reuse_port, fast_http=fast_http)
        await gw.start()
        gw.apply(config, secrets)
        gc.collect()
        print("ready", gw.ports["admin"], flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await gw.stop()
        await limiter.close()

    asyncio.run(main())


# --- measurements --------------------------------------------------------------------------------------


def wrk(url: str, seconds: float, headers: dict[str, str] | None = None, pids: list[int] = (),
        threads: int = WRK_THREADS, connections: int = WRK_CONNECTIONS, prefix: tuple[str, ...] = ()) -> dict:
    """One wrk run; ``cpu_us`` is the CPU time the ``pids`` (the proxy under test) spent per request.
    ``prefix``: e.g. ``("taskset", "-c", "1")`` to keep wrk off the proxy's core (bench/peers.py)."""
    cmd = [*prefix, "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    cpu_before = cpu_seconds(pids)
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pids) - cpu_before
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": re.search(r"\n\s+50%\s+(\S+)", out).group(1),
        "p99": re.search(r"\n\s+99%\s+(\S+)", out).group(1),
        "non2xx": int(bad.group(1)) if bad else 0,
        "errors": errors.group(0) if errors else "",
        "cpu_us": cpu / requests * 1e6 if pids and requests else None,
    }


async def fixed_rate(url: str, rate: int, seconds: float, headers: dict[str, str] | None = None) -> list[float]:
    """Open loop: request i is due at start + i/rate whatever happened before; returns
    latencies (seconds) from the due time to the end of the response body.

    The client is a few lines of asyncio keep-alive HTTP/1.1 (one write, read until
    Content-Length), so its own cost stays small next to what it measures."""
    from yarl import URL

    target = URL(url)
    head = (f"GET {target.raw_path_qs} HTTP/1.1\r\nHost: {target.raw_authority}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()) + "\r\n").encode()
    loop = asyncio.get_running_loop()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    latencies: list[float] = []
    failures = 0

    async def one(due: float) -> None:
        nonlocal failures
        conn = idle.pop() if idle else await asyncio.open_connection(target.host, target.port)
        reader, writer = conn
        try:
            writer.write(head)
            status = await reader.readline()
            length, reusable = 0, True
            while (line := await reader.readline()) not in (b"\r\n", b""):
                lower = line.lower()
                if lower.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
                elif lower.startswith(b"connection:") and b"close" in lower:
                    reusable = False  # nginx closes after keepalive_requests (1000)
            await reader.readexactly(length)
            latencies.append(loop.time() - due)
            if b" 200 " not in status:
                failures += 1
            if reusable:
                idle.append(conn)
            else:
                writer.close()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            failures += 1
            writer.close()

    for _ in range(50):  # warm the connections and the path
        await one(loop.time())
    latencies.clear()
    start = loop.time() + 0.05
    tasks = []
    for i in range(int(rate * seconds)):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one(due)))
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    if failures:
        print(f"  ({failures} failed requests at fixed rate against {url})")
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


LOOKUP_MIX = [(f"h{i % 50}.test", normalise_request_path(f"/svc{i}/items/{i * 7}").segments) for i in range(10)]


def lookup_table(n: int) -> RouteTable:
    """n routes over 50 hosts; the 10 routes of LOOKUP_MIX exist at every size."""
    table = RouteTable(((f"h{i % 50}.test",), f"/svc{i}/items/:id", ("GET",), i) for i in range(n))
    assert all(table.lookup(host, "GET", segs) is not None for host, segs in LOOKUP_MIX)
    return table


def lookup_cost(table: RouteTable, repeats: int = 5, number: int = 20_000) -> float:
    """CPU ns per lookup (thread time: other processes' load does not count), best of
    ``repeats`` runs of the same 10-lookup mix."""
    lookup = table.lookup

    def run() -> None:
        for host, segs in LOOKUP_MIX:
            lookup(host, "GET", segs)

    best = min(timeit.repeat(run, repeat=repeats, number=number, timer=time.thread_time))
    return best / (number * len(LOOKUP_MIX)) * 1e9


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}ms"


# --- main ----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4, help="wrk duration per case and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best is kept")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--aiohttp-front", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.redis_url, args.reuse_port, not args.aiohttp_front)
        return 0

    work = tempfile.mkdtemp(prefix="kubegate-bench-")
    backend_port, nginx_port, nginx2_port = free_port(), free_port(), free_port()
    gw_port, gw2_port, gw_local_port, redis_port = free_port(), free_port(), free_port(), free_port()
    gw_aiohttp_port = free_port()
    backend = f"http://127.0.0.1:{backend_port}"
    rsa_private, rsa_public = rsa_keys()
    config, secrets = throughput_config(backend, rsa_public)
    config_path = os.path.join(work, "throughput.json")
    write_config(config_path, config, secrets)
    claims = {"sub": "bench-user", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 3600}
    tokens = {"hs256": jwt.encode(claims, HS_SECRET, algorithm="HS256"),
              "rs256": jwt.encode(claims, rsa_private, algorithm="RS256")}

    def proxy_conf(port: int) -> str:
        return (f"upstream b {{ server 127.0.0.1:{backend_port}; keepalive 64; }}\n"
                f"server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://b; "
                f"proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}")

    procs = [
        nginx(f'server {{ listen 127.0.0.1:{backend_port}; location / {{ return 200 "ok\\n"; }} }}', work),
        nginx(proxy_conf(nginx_port), work),
        nginx(proxy_conf(nginx2_port), work, workers=2),
        redis_server(redis_port, work),
    ]
    try:
        for port in (backend_port, nginx_port, nginx2_port, redis_port):
            wait_port(port)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        one = gateway(config_path, gw_port, redis_url)
        local = gateway(config_path, gw_local_port, None)  # same config, in-memory limits: isolates Redis's cost
        plain = gateway(config_path, gw_aiohttp_port, None, fast_http=False)  # what the lean front saves
        two = [gateway(config_path, gw2_port, redis_url, reuse_port=True) for _ in range(2)]
        procs += [one, local, plain, *two]
        gw1, gw2 = [one.pid], [proc.pid for proc in two]
        hs = {"Authorization": f"Bearer {tokens['hs256']}"}
        rs = {"Authorization": f"Bearer {tokens['rs256']}"}
        cases = {  # name: (url, headers, pids whose CPU is charged to the case)
            "backend direct": (f"http://127.0.0.1:{backend_port}/bench", None, family(procs[0].pid)),
            "nginx proxy": (f"http://127.0.0.1:{nginx_port}/bench", None, family(procs[1].pid)),
            "kubegate bare": (f"http://127.0.0.1:{gw_port}/bare/bench", None, gw1),
            "kubegate bare, aiohttp": (f"http://127.0.0.1:{gw_aiohttp_port}/bare/bench", None, [plain.pid]),
            "kubegate HS256+redis+ip": (f"http://127.0.0.1:{gw_port}/hs256/bench", hs, gw1),
            "kubegate RS256+redis+ip": (f"http://127.0.0.1:{gw_port}/rs256/bench", rs, gw1),
            "kubegate HS256+memory+ip": (f"http://127.0.0.1:{gw_local_port}/hs256/bench", hs, [local.pid]),
            "nginx proxy, 2 workers": (f"http://127.0.0.1:{nginx2_port}/bench", None, family(procs[2].pid)),
            "kubegate bare, 2 workers": (f"http://127.0.0.1:{gw2_port}/bare/bench", None, gw2),
        }
        for url, headers, _ in cases.values():  # warm-up (and a check that every case answers 200)
            warm = wrk(url, 1, headers)
            if warm["non2xx"] or warm["rps"] == 0:
                raise SystemExit(f"bench: {url} does not answer 200 ({warm})")
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for name, (url, headers, pids) in cases.items():
                result = wrk(url, args.seconds, headers, pids)
                if result["non2xx"]:
                    print(f"  warning: {name}: {result['non2xx']} non-2xx responses")
                if name not in best or result["rps"] > best[name]["rps"]:
                    best[name] = result
        nginx_rps, bare_rps = best["nginx proxy"]["rps"], best["kubegate bare"]["rps"]
        print(f"\nThroughput: wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}, {args.seconds:g}s x {args.rounds} interleaved "
              f"rounds (best kept). Backend: nginx static 'return 200' (1 worker). nginx proxy: worker_processes 1 "
              f"(and 2). kubegate: 1 process, asyncio (and 2 processes on SO_REUSEPORT). 2 CPUs shared by all, "
              f"wrk included. cpu us/req: CPU time of the proxy (or backend) processes per request.")
        print(f"{'case':26s} {'req/s':>9s} {'p50':>9s} {'p99':>9s} {'x nginx':>8s} {'x bare':>7s} {'cpu us/req':>11s}")
        for name, r in best.items():
            reference = best["nginx proxy, 2 workers"]["rps"] if "2 workers" in name else nginx_rps
            print(f"{name:26s} {r['rps']:9.0f} {r['p50']:>9s} {r['p99']:>9s} {r['rps'] / reference:8.2f} "
                  f"{r['rps'] / bare_rps:7.2f} {r['cpu_us']:11.1f}  {r['errors']}")
        print("(x nginx: against nginx with the same number of workers)")
        print(f"target: kubegate bare >= 0.25 x nginx: {bare_rps / nginx_rps:.2f} "
              f"{'MET' if bare_rps / nginx_rps >= 0.25 else 'NOT MET'}"
              f"   [CPU per request: nginx / kubegate = "
              f"{best['nginx proxy']['cpu_us'] / best['kubegate bare']['cpu_us']:.2f}]")
        for name in ("kubegate HS256+redis+ip", "kubegate RS256+redis+ip", "kubegate HS256+memory+ip"):
            ratio = best[name]["rps"] / bare_rps
            cpu_ratio = best["kubegate bare"]["cpu_us"] / best[name]["cpu_us"]
            print(f"target: {name} >= 0.85 x bare: {ratio:.2f} {'MET' if ratio >= 0.85 else 'NOT MET'}"
                  f"   [CPU per request: bare / this = {cpu_ratio:.2f}; redis-server CPU not included]")
        two_ratio = best["kubegate bare, 2 workers"]["rps"] / best["nginx proxy, 2 workers"]["rps"]
        print(f"(2 workers each: kubegate bare / nginx = {two_ratio:.2f})")
        front = best["kubegate bare, aiohttp"]
        print(f"lean HTTP/1.1 front (http1.py) vs aiohttp's server, bare route: "
              f"{bare_rps / front['rps']:.2f} x req/s, {best['kubegate bare']['cpu_us'] / front['cpu_us']:.2f} x "
              f"CPU per request")

        rate, seconds, rounds = 1000, 2, 5
        print(f"\nAdded latency at a fixed {rate} req/s (open loop, keep-alive asyncio client; {rounds} interleaved "
              f"rounds of {seconds}s per path, the round with the lowest p99 kept, median of rounds in brackets):")
        paths = {name: cases[key][:2] for name, key in (("direct", "backend direct"), ("kubegate bare", "kubegate bare"),
                                                         ("kubegate HS256+redis+ip", "kubegate HS256+redis+ip"))}
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
        before = handler_buckets(one.admin_port, "bench/bare")
        for _ in range(rounds):
            for name, (url, headers) in paths.items():
                values = asyncio.run(fixed_rate(url, rate, seconds, headers))
                runs[name].append((percentile(values, 0.5), percentile(values, 0.99)))
        kept = {name: min(results, key=lambda r: r[1]) for name, results in runs.items()}
        median99 = {name: sorted(r[1] for r in results)[len(results) // 2] for name, results in runs.items()}
        d50, d99 = kept["direct"]
        print(f"{'path':26s} {'p50':>9s} {'p99':>9s} {'added p50':>10s} {'added p99':>10s}")
        for name, (p50, p99) in kept.items():
            print(f"{name:26s} {ms(p50):>9s} {ms(p99):>9s} {ms(p50 - d50):>10s} {ms(p99 - d99):>10s}"
                  f"   [p99 median {ms(median99[name])}]")
        after = handler_buckets(one.admin_port, "bench/bare")
        served = after["+Inf"] - before["+Inf"]
        within = {le: (after[le] - before[le]) / served for le in ("0.001", "0.0025")}
        print(f"kubegate's own handling time (route bench/bare, its histogram, these runs only): "
              f"{within['0.001']:.2%} of requests within 1 ms, {within['0.0025']:.2%} within 2.5 ms")
        added = kept["kubegate bare"][1] - d99
        print(f"target: p99 added latency (bare) <= 2 ms: {ms(added)} {'MET' if added <= 0.002 else 'NOT MET'}")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)

    print("\nRoute lookup (RouteTable.lookup, same 10-lookup mix; sizes interleaved, 5 passes x best of 5 x 20,000):")
    tables = {n: lookup_table(n) for n in (10, 1_000, 10_000)}
    costs = {n: float("inf") for n in tables}
    for _ in range(5):
        for n, table in tables.items():
            costs[n] = min(costs[n], lookup_cost(table))
    for n, ns in costs.items():
        print(f"  {n:6d} routes: {ns:6.0f} ns/lookup")
    change = costs[10_000] / costs[10] - 1
    print(f"target: 10,000 routes no more than 10% slower than 10: {change:+.1%} {'MET' if change <= 0.10 else 'NOT MET'}")

    print("\nMemory: data-plane process holding 10,000 routes + 100,000 API keys:")
    empty_path, big_path = os.path.join(work, "empty.json"), os.path.join(work, "big.json")
    write_config(empty_path, CompiledConfig(), SecretBundle())
    write_config(big_path, *big_config(backend))
    for label, path in (("empty config", empty_path), ("10k routes + 100k keys", big_path)):
        proc = gateway(path, free_port(), None)
        try:
            rss, peak = rss_kib(proc.pid)
            print(f"  {label:24s} RSS {rss / 1024:7.1f} MiB  (peak while loading {peak / 1024:.1f} MiB)")
        finally:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
