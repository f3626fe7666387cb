"""Cost of tracing and the access log (prints figures; not a test).

Usage: python bench/tracing.py [--seconds 4] [--rounds 3] [--cases untraced,10%]

In one run, on free loopback ports: an nginx static backend, a real Jaeger
(hack/jaeger, built by gobuild.go_tool) receiving the spans, and one
kubegate process per case serving one bare route, loaded by wrk. As in
bench/peers.py, the kubegate processes are pinned to one core and wrk, nginx
and Jaeger to the other (with ``-t1 -c64``), so the figures are kubegate's own:

* ``untraced``  no tracing flags (the baseline)
* ``off``       --otlp-endpoint given but OTEL_SDK_DISABLED=true (tracing off: must cost nothing)
* ``0%``        --trace-sample-ratio 0 (tracing on, nothing recorded: the unsampled path alone)
* ``10%``       --trace-sample-ratio 0.1 (target: >= 0.95x untraced)
* ``100%``      every request recorded and exported
* ``access-log``  --access-log (stdout to /dev/null)

Each round loads every case TOGETHER with ``untraced`` (two wrk at once, the
two kubegate processes sharing their core): whatever else runs on the machine
hits both alike, and the req/s ratio of the pair is their CPU cost ratio. The
ratio printed is the median over ``--rounds`` rounds (with min-max); the CPU
figures are each case's least-disturbed round. ``cpu us/req`` is the kubegate
process's CPU time (utime + stime from /proc) per request, the less noisy
figure; ``bg us/req`` the part of it spent in threads other than the event
loop's (the span exporter's batch thread, executor threads).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile

from kubegate import eventloop
from kubegate.config import CompiledBackend, CompiledConfig, CompiledRoute, SecretBundle

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load("bench_dataplane", os.path.join(HERE, "dataplane.py"))  # nginx, wrk, free ports, cpu_seconds
peers = _load("bench_peers", os.path.join(HERE, "peers.py"))  # cores(), pinned(), wrk's -t/-c

CASES = {
    "untraced": ([], {}),
    "off": (["--otlp"], {"OTEL_SDK_DISABLED": "true"}),
    "0%": (["--otlp", "--ratio", "0"], {}),
    "10%": (["--otlp", "--ratio", "0.1"], {}),
    "100%": (["--otlp", "--ratio", "1"], {}),
    "access-log": (["--access-log"], {}),
}


def serve(config_path: str, port: int, otlp: str | None, ratio: float | None, access_log: bool) -> None:
    from kubegate.dataplane.observe import build_observer
    from kubegate.dataplane.ratelimit import build_rate_limiter
    from kubegate.dataplane.server import Gateway

    with open(config_path) as handle:
        raw = json.load(handle)
    config = CompiledConfig.model_validate(raw["config"])

    async def main() -> None:
        limiter = build_rate_limiter(None)
        observer = build_observer(access_log=access_log, otlp_endpoint=otlp, sample_ratio=ratio)
        gw = Gateway(host="127.0.0.1", http_port=port, https_port=0, admin_port=0, limiter=limiter,
                     observer=observer)
        await gw.start()
        gw.apply(config, SecretBundle())
        print("ready", gw.ports["admin"], "observer" if observer else "none", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await gw.stop()
        await limiter.close()

    eventloop.run(main())  # the product's loop (uvloop), as `kubegate run` serves


def background_cpu_seconds(pid: int) -> float:
    """CPU time of a process's threads other than its main (event-loop) thread."""
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
    total = 0.0
    for tid in tids:
        try:
            total += bench.cpu_seconds([f"{pid}/task/{tid}"])
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return total


def measure(name: str, proc: subprocess.Popen, port: int, seconds: float, prefix: tuple[str, ...]) -> dict:
    """One wrk run against one case, with its CPU per request and its background threads' share."""
    bg_before = background_cpu_seconds(proc.pid)
    result = bench.wrk(f"http://127.0.0.1:{port}/x", seconds, pids=[proc.pid], threads=peers.THREADS,
                       connections=peers.CONNECTIONS, prefix=prefix)
    if result["non2xx"] or result["errors"]:
        raise SystemExit(f"bench: {name}: {result}")
    result["bg_us"] = (background_cpu_seconds(proc.pid) - bg_before) / (result["rps"] * seconds) * 1e6
    return result


def start_case(name: str, config_path: str, otlp: str, prefix: tuple[str, ...]) -> tuple[subprocess.Popen, int]:
    flags, env = CASES[name]
    port = bench.free_port()
    cmd = [*prefix, sys.executable, os.path.abspath(__file__), "--serve", config_path, "--port", str(port)]
    if "--otlp" in flags:
        cmd += ["--otlp", otlp]
    if "--ratio" in flags:
        cmd += ["--ratio", flags[flags.index("--ratio") + 1]]
    if "--access-log" in flags:
        cmd.append("--access-log")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})
    words = proc.stderr.readline().split()
    if not words or words[0] != "ready":
        proc.kill()
        raise SystemExit(f"bench: case {name} did not start")
    return proc, port


def jaeger(workdir: str, prefix: tuple[str, ...]) -> tuple[subprocess.Popen, str]:
    from kubegate import gobuild

    binary = gobuild.go_tool("jaeger", package="github.com/jaegertracing/jaeger/cmd/jaeger")
    config = _load("jaeger_fixture", os.path.join(HERE, "..", "tests", "dataplane", "jaeger_fixture.py")).CONFIG

    ports = {"query": bench.free_port(), "query_grpc": bench.free_port(), "otlp": bench.free_port()}
    path = os.path.join(workdir, "jaeger.yaml")
    with open(path, "w") as handle:
        handle.write(config.format(**ports))
    proc = subprocess.Popen([*prefix, str(binary), "--config", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bench.wait_port(ports["otlp"])
    return proc, f"http://127.0.0.1:{ports['otlp']}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--serve")
    parser.add_argument("--port", type=int)
    parser.add_argument("--otlp")
    parser.add_argument("--ratio", type=float)
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.otlp, args.ratio, args.access_log)
        return 0
    chosen = ["untraced"] + [c for c in args.cases.split(",") if c and c != "untraced"]
    unknown = set(chosen) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    proxy_core, client_core = peers.cores()
    on_proxy, on_client = peers.pinned(proxy_core), peers.pinned(client_core)
    with tempfile.TemporaryDirectory() as workdir:
        backend_port = bench.free_port()
        web = bench.nginx(f"server {{ listen 127.0.0.1:{backend_port}; location / {{ return 200 'ok'; }} }}", workdir,
                          prefix=on_client)
        tracer, otlp = jaeger(workdir, on_client)
        procs = []
        try:
            bench.wait_port(backend_port)
            config_path = os.path.join(workdir, "config.json")
            route = CompiledRoute(id="bench/bare", namespace="bench", name="bare", path="/*rest",
                                  backends=(CompiledBackend(url=f"http://127.0.0.1:{backend_port}"),))
            bench.write_config(config_path, CompiledConfig(routes=(route,)), SecretBundle())
            cases = {}
            for name in chosen:
                proc, port = start_case(name, config_path, otlp, on_proxy)
                procs.append(proc)
                cases[name] = (proc, port)
            for name, (proc, port) in cases.items():  # warm-up: connections, caches, the exporter's session
                bench.wrk(f"http://127.0.0.1:{port}/x", 1, threads=peers.THREADS, connections=peers.CONNECTIONS,
                          prefix=on_client)
            ratios: dict[str, list[float]] = {name: [] for name in cases if name != "untraced"}
            figures: dict[str, dict] = {}
            for _ in range(args.rounds):
                for name, kept_ratios in ratios.items():  # with the baseline at once: same core, same interference
                    with concurrent.futures.ThreadPoolExecutor(2) as pool:
                        pair = dict(zip(("untraced", name), pool.map(
                            lambda n: measure(n, *cases[n], args.seconds, on_client), ("untraced", name))))
                    kept_ratios.append(pair[name]["rps"] / pair["untraced"]["rps"])
                    for n, result in pair.items():
                        kept = figures.setdefault(n, result)
                        if result["cpu_us"] <= kept["cpu_us"]:  # the least-disturbed round's CPU figures
                            figures[n] = result
            base = figures["untraced"]
            print(f"kubegate pinned to CPU {proxy_core}; wrk -t{peers.THREADS} -c{peers.CONNECTIONS}, nginx and Jaeger "
                  f"to CPU {client_core}; {args.rounds} rounds of {args.seconds:g}s, each case loaded together "
                  "with untraced (the two share the core)")
            print(f"{'case':<12}{'req/s vs untraced':>19}{'cpu us/req':>12}{'vs untraced':>13}{'bg us/req':>11}"
                  f"{'p99':>10}   (req/s ratio: median of rounds, min-max)")
            for name, result in figures.items():
                ratio = sorted(ratios.get(name, [1.0]))
                print(f"{name:<12}{statistics.median(ratio):>18.2f}x{result['cpu_us']:>12.1f}"
                      f"{result['cpu_us'] / base['cpu_us']:>12.2f}x{result['bg_us']:>11.1f}{result['p99']:>10}"
                      f"   {ratio[0]:.2f}-{ratio[-1]:.2f}")
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(15)
            tracer.kill()
            web.terminate()
            tracer.wait(10)
            web.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
