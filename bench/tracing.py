"""Cost of tracing and the access log (prints figures; not a test). Usage: python bench/tracing.py [--seconds 4] [--rounds 3]

In one run, on free loopback ports: an nginx static backend, a real Jaeger
(hack/jaeger, built by gobuild.go_tool) receiving the spans, and one
kubegate process per case serving one bare route, loaded by wrk:

* ``untraced``  no tracing flags (the baseline)
* ``off``       --otlp-endpoint given but OTEL_SDK_DISABLED=true (tracing off: must cost nothing)
* ``10%``       --trace-sample-ratio 0.1 (target: >= 0.95x untraced)
* ``100%``      every request recorded and exported
* ``access-log``  --access-log (stdout to /dev/null)

Cases are interleaved over ``--rounds`` rounds and each keeps its best round
(the machine is shared; interference only makes a round slower). Ratios are
against ``untraced`` from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile

from kubegate.config import CompiledBackend, CompiledConfig, CompiledRoute, SecretBundle

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load("bench_dataplane", os.path.join(HERE, "dataplane.py"))  # nginx, wrk, free ports

CASES = {
    "untraced": ([], {}),
    "off": (["--otlp"], {"OTEL_SDK_DISABLED": "true"}),
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

    asyncio.run(main())


def start_case(name: str, config_path: str, otlp: str) -> tuple[subprocess.Popen, int]:
    flags, env = CASES[name]
    port = bench.free_port()
    cmd = [sys.executable, os.path.abspath(__file__), "--serve", config_path, "--port", str(port)]
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


def jaeger(workdir: str) -> tuple[subprocess.Popen, str]:
    from kubegate import gobuild

    binary = gobuild.go_tool("jaeger", package="github.com/jaegertracing/jaeger/cmd/jaeger")
    config = _load("jaeger_fixture", os.path.join(HERE, "..", "tests", "dataplane", "jaeger_fixture.py")).CONFIG

    ports = {"query": bench.free_port(), "query_grpc": bench.free_port(), "otlp": bench.free_port()}
    path = os.path.join(workdir, "jaeger.yaml")
    with open(path, "w") as handle:
        handle.write(config.format(**ports))
    proc = subprocess.Popen([str(binary), "--config", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bench.wait_port(ports["otlp"])
    return proc, f"http://127.0.0.1:{ports['otlp']}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve")
    parser.add_argument("--port", type=int)
    parser.add_argument("--otlp")
    parser.add_argument("--ratio", type=float)
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.otlp, args.ratio, args.access_log)
        return 0
    with tempfile.TemporaryDirectory() as workdir:
        backend_port = bench.free_port()
        web = bench.nginx(f"server {{ listen 127.0.0.1:{backend_port}; location / {{ return 200 'ok'; }} }}", workdir)
        tracer, otlp = jaeger(workdir)
        procs = []
        try:
            bench.wait_port(backend_port)
            config_path = os.path.join(workdir, "config.json")
            route = CompiledRoute(id="bench/bare", namespace="bench", name="bare", path="/*rest",
                                  backends=(CompiledBackend(url=f"http://127.0.0.1:{backend_port}"),))
            bench.write_config(config_path, CompiledConfig(routes=(route,)), SecretBundle())
            cases = {}
            for name in CASES:
                proc, port = start_case(name, config_path, otlp)
                procs.append(proc)
                cases[name] = (proc, port)
            best: dict[str, dict] = {}
            for _ in range(args.rounds):
                for name, (proc, port) in cases.items():
                    result = bench.wrk(f"http://127.0.0.1:{port}/x", args.seconds, pids=[proc.pid])
                    if result["non2xx"] or result["errors"]:
                        raise SystemExit(f"bench: {name}: {result}")
                    if name not in best or result["rps"] > best[name]["rps"]:
                        best[name] = result
            base = best["untraced"]["rps"]
            print(f"{'case':<12}{'req/s':>10}{'vs untraced':>13}{'cpu us/req':>12}{'p99':>10}")
            for name, result in best.items():
                print(f"{name:<12}{result['rps']:>10.0f}{result['rps'] / base:>12.2f}x"
                      f"{result['cpu_us'] or 0:>12.1f}{result['p99']:>10}")
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
