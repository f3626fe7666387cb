"""Reload stalls under load (prints figures; not a test). Usage: python bench/reload.py [--routes 10,1000,10000]

For each route count, one data-plane process (this script's --serve mode) holds
that many routes (bench/dataplane.py's big_config: 100 hosts, every 4th route
needs an API key, as many keys as routes) behind an nginx static backend, and
an open-loop client sends 300 req/s to one of them (latency from each request's
scheduled time, so a stalled loop is not hidden). Every second the process is
sent SIGHUP and reloads the config the way the in-cluster source does: the
ConfigMap/Secret payloads are decoded and the snapshot built, then swapped; the
next config differs in one route. Two modes, same run:

  on-loop    decode_pair + Gateway.apply on the event loop
  off-loop   decode_pair whole in a thread + Gateway.apply_off_loop (built in a
             worker thread, only the swap on the loop)
  source     KubernetesConfigSource.load, what `kubegate dataplane` runs: the
             incremental decoder (sources/decode.py: only changed routes are
             parsed, the hash fed piece by piece) in a thread, then
             apply_off_loop, which reuses unchanged routes' runtimes

Printed: p99 without reloads, p99 and worst request latency with reloads, the
reload time (decode + build + swap), the on-loop swap time (incl. the GC
settle, see snapshot.settle_heap), and the longest time the process's event
loop could not run a 1 ms timer (the stall every request in flight shares).
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
import time

_spec = importlib.util.spec_from_file_location("bench_dataplane", os.path.join(os.path.dirname(__file__),
                                                                               "dataplane.py"))
bd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bd)

RATE = 300
MODES = ("on-loop", "off-loop", "source")


def payloads(backend: str, routes: int, variant: int) -> tuple[dict, dict]:
    """The ConfigMap and Secret the operator would write (variant: which path route 1 has)."""
    from kubegate.config import CONFIG_KEY, SECRETS_KEY, encode_config, encode_secrets

    config, secrets = bd.big_config(backend, routes=routes, keys=routes)
    changed = list(config.routes)
    changed[1] = changed[1].model_copy(update={"path": f"/changed{variant}/items/:id"})
    changed[2] = changed[2].model_copy(update={"hosts": ()})  # the measured route: any Host
    config = config.model_copy(update={"routes": tuple(changed)})
    return {"data": {CONFIG_KEY: encode_config(config)}}, {"data": {SECRETS_KEY: encode_secrets(secrets)}}


def serve(backend: str, routes: int, port: int, mode: str) -> None:
    from kubegate.dataplane.ratelimit import build_rate_limiter
    from kubegate.dataplane.server import Gateway
    from kubegate.dataplane.sources.decode import decode_pair
    from kubegate.dataplane.sources.kubernetes import KubernetesConfigSource

    variants = [payloads(backend, routes, v) for v in (0, 1)]

    async def main() -> None:
        gw = Gateway(host="127.0.0.1", http_port=port, https_port=0, admin_port=0, limiter=build_rate_limiter(None))
        await gw.start()
        source = KubernetesConfigSource(None, "bench", gw)  # type: ignore[arg-type] - never watches
        if mode == "source":
            await source.load(*variants[0], "")
        else:
            gw.apply(*decode_pair(*variants[0]))
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        count = 0
        timings: list[tuple[float, float]] = []
        install = gw.commit

        def timed_install(snapshot):  # measures the on-loop part only
            started = time.perf_counter()
            try:
                return install(snapshot)
            finally:
                timings[-1] = (timings[-1][0], time.perf_counter() - started)

        gw.commit = timed_install

        async def reload() -> None:
            nonlocal count
            count += 1
            config_map, secret = variants[count % 2]
            started = time.perf_counter()
            timings.append((0.0, 0.0))
            if mode == "on-loop":
                gw.apply(*decode_pair(config_map, secret))
            elif mode == "source":
                await source.load(config_map, secret, "")
            else:
                config, secrets = await asyncio.to_thread(decode_pair, config_map, secret)
                await gw.apply_off_loop(config, secrets)
            timings[-1] = (time.perf_counter() - started, timings[-1][1])

        gap = [0.0]  # the longest the event loop did not get to run a 1 ms timer, reloads included

        async def ticker() -> None:
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gap[0] = max(gap[0], now - last)
                last = now

        tick = loop.create_task(ticker())
        tasks: set[asyncio.Task] = set()
        loop.add_signal_handler(signal.SIGHUP, lambda: tasks.add(loop.create_task(reload())))
        await stop.wait()
        await asyncio.gather(*tasks)
        tick.cancel()
        print(json.dumps({"timings": timings, "gap": gap[0]}), flush=True)
        await gw.stop()

    asyncio.run(main())


def measure(backend: str, routes: int, mode: str, seconds: float, rate: int) -> dict:
    port = bd.free_port()
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", backend, "--routes", str(routes),
                             "--port", str(port), "--mode", mode], stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("bench: the data plane did not start")
        url = f"http://127.0.0.1:{port}/svc2/items/7"
        headers = None
        quiet = asyncio.run(bd.fixed_rate(url, rate, 2, headers))

        async def with_reloads() -> list[float]:
            async def hups() -> None:
                for _ in range(int(seconds)):
                    await asyncio.sleep(1)
                    proc.send_signal(signal.SIGHUP)

            latencies, _ = await asyncio.gather(bd.fixed_rate(url, rate, seconds + 1.5, headers), hups())
            return latencies

        loaded = asyncio.run(with_reloads())
        proc.send_signal(signal.SIGTERM)
        reported = json.loads(proc.stdout.readline())
        timings = reported["timings"]
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return {"quiet_p99": bd.percentile(quiet, 0.99), "p99": bd.percentile(loaded, 0.99), "worst": max(loaded),
            "over_50ms": sum(1 for x in loaded if x > 0.05), "requests": len(loaded),
            "reload": max(t[0] for t in timings), "swap": max(t[1] for t in timings), "reloads": len(timings),
            "gap": reported["gap"]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--routes", default="10,1000,10000")
    parser.add_argument("--seconds", type=float, default=5, help="reloads per case (one a second)")
    parser.add_argument("--rate", type=int, default=RATE, help="requests per second (open loop)")
    parser.add_argument("--modes", default=",".join(MODES), help="which of " + ", ".join(MODES))
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, int(args.routes), args.port, args.mode)
        return 0
    work = tempfile.mkdtemp(prefix="kubegate-bench-reload-")
    backend_port = bd.free_port()
    nginx = bd.nginx(f'server {{ listen 127.0.0.1:{backend_port}; location / {{ return 200 "ok\\n"; }} }}', work)
    try:
        bd.wait_port(backend_port)
        backend = f"http://127.0.0.1:{backend_port}"
        print(f"{args.rate} req/s open loop, one reload a second ({args.seconds:g} per case); ms")
        print(f"{'routes':>7} {'mode':>9} {'p99 quiet':>10} {'p99':>8} {'worst':>8} {'>50ms':>6} "
              f"{'reload':>8} {'swap':>7} {'loop gap':>9}")
        for routes in (int(r) for r in args.routes.split(",")):
            results = {}
            for mode in args.modes.split(","):
                r = results[mode] = measure(backend, routes, mode, args.seconds, args.rate)
                print(f"{routes:>7} {mode:>9} {r['quiet_p99'] * 1e3:>10.1f} {r['p99'] * 1e3:>8.1f} "
                      f"{r['worst'] * 1e3:>8.1f} {r['over_50ms']:>6} {r['reload'] * 1e3:>8.0f} "
                      f"{r['swap'] * 1e3:>7.1f} {r['gap'] * 1e3:>9.1f}", flush=True)
            if "on-loop" in results:
                for mode in results.keys() - {"on-loop"}:
                    ratio = results["on-loop"]["worst"] / max(results[mode]["worst"], 1e-9)
                    print(f"{routes:>7} worst request latency on-loop / {mode}: {ratio:.1f}x")
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
