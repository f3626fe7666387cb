"""Operator + data plane on a private dev cluster: propagation latency, burst readiness, memory.

    python bench/operator.py [--routes 1000] [--changes 100] [--rss-routes 5000]

Starts a dev cluster (kube-apiserver + etcd, as ``kubegate dev-cluster``), the
operator and one data plane as subprocesses with their own ServiceAccount
tokens, and an aiohttp backend. Prints:

1. time until N routes created at once are all Ready (target < 10 s for 1,000),
   and how many ConfigMap writes that burst cost;
2. apply -> first successful request through the data plane, p50/p99 over
   single-route changes with N routes present (targets p50 < 0.5 s, p99 < 1.5 s);
3. operator RSS with --rss-routes routes (target < 300 MiB).

Everything shares this machine's cores: the API server and etcd included, and
other work on the machine moves the wall-clock figures; the CPU seconds each
process spent per phase are printed too, as the steadier measure. Each change
is split into apply -> ConfigMap written (operator), ConfigMap -> first 200
(data plane), and apply -> Ready (the Lease acknowledgement and status write).
``--profile`` runs the operator under pyinstrument (report in the log folder).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubegate import devcluster
from kubegate.kubeapi import Informer, KubeApi, load_credentials, path_for

GATEWAY_NS = "kubegate-system"
NS = "bench"
API = "kubegate.dev/v1alpha1"


def route(name: str, path: str, backend: str) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "GatewayRoute", "metadata": {"name": name, "namespace": NS},
            "spec": {"path": path, "backends": [{"url": backend}]}}


def is_ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"].get("generation"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())


def spawn(cluster: devcluster.DevCluster, args: list[str], sa: str, log: Path, profile: Path | None = None,
          **env: str) -> subprocess.Popen:
    token = cluster.token_for(GATEWAY_NS, sa)
    full_env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig_for_token(token)), **env}
    full_env.pop("KUBERNETES_SERVICE_HOST", None)
    runner = ["-m", "pyinstrument", "-o", str(profile), "-r", "pyisession", "-m"] if profile else ["-m"]
    return subprocess.Popen([sys.executable, *runner, "kubegate.cli", *args], env=full_env, cwd=REPO,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds per named process between two calls of :meth:`lap`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.last = self._read()

    def _read(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            try:
                out[name] = cpu_seconds(pid)
            except OSError:
                out[name] = 0.0
        return out

    def lap(self) -> str:
        now = self._read()
        spent = {name: now[name] - self.last.get(name, 0.0) for name in now}
        self.last = now
        return ", ".join(f"{name} {seconds:.1f}" for name, seconds in spent.items())


def rss_mib(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
    peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
    return rss, peak


async def start_backend() -> tuple[web.AppRunner, str]:
    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]


async def create_routes(api: KubeApi, start: int, count: int, backend: str) -> None:
    collection = path_for(API, "GatewayRoute", NS)
    await asyncio.gather(*(api.create(collection, route(f"r{i}", f"/r/{i}/*rest", backend))
                           for i in range(start, start + count)))


async def wait_all_ready(routes: Informer, count: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        ready = sum(1 for o in routes.objects.values() if is_ready(o))
        if ready >= count:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise SystemExit(f"timed out: only {sum(1 for o in routes.objects.values() if is_ready(o))}/{count} Ready")


async def first_success(session: aiohttp.ClientSession, url: str, timeout: float = 10.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        async with session.get(url) as resp:
            await resp.read()
            if resp.status == 200:
                return time.monotonic()
        await asyncio.sleep(0.005)
    raise SystemExit(f"{url} never answered 200")


async def scrape(session: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """The operator's /metrics as {"name{labels}": value}."""
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "le")
            if "le" not in sample.labels:
                out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


class OperatorCounters:
    """Differences of the operator's own counters between two calls of :meth:`lap`."""

    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.session, self.port = session, port
        self.last: dict[str, float] = {}

    async def lap(self) -> str:
        now = await scrape(self.session, self.port)
        d = {k: v - self.last.get(k, 0.0) for k, v in now.items()}
        self.last = now
        passes = d.get("kubegate_operator_reconcile_duration_seconds_count{part=total}", 0)
        parts = ", ".join(f"{part} {d.get(f'kubegate_operator_reconcile_duration_seconds_sum{{part={part}}}', 0):.2f}s"
                          for part in ("translate", "apply", "status"))
        configs = sum(v for k, v in d.items() if k.startswith("kubegate_operator_config_writes_total"))
        acks = d.get("kubegate_operator_config_acknowledged_seconds_count{}", 0)
        ack_mean = d.get("kubegate_operator_config_acknowledged_seconds_sum{}", 0) / acks if acks else 0.0
        return (f"{passes:.0f} passes ({parts}), {d.get('kubegate_operator_status_writes_total{}', 0):.0f} status "
                f"writes, {configs:.0f} generated-object writes, {acks:.0f} configs acknowledged "
                f"(mean {ack_mean * 1000:.0f} ms after translation)")


class ApiServerRequests:
    """The API server's own request counters (apiserver_request_total): writes per resource between laps."""

    def __init__(self, cluster: devcluster.DevCluster) -> None:
        self.cluster = cluster
        self.last = cluster.write_requests()

    def lap(self) -> dict[tuple[str, str], float]:
        now = self.cluster.write_requests()
        spent = {k: v - self.last.get(k, 0.0) for k, v in now.items() if v - self.last.get(k, 0.0) > 0}
        self.last = now
        return spent

    def lap_text(self, per: int) -> str:
        spent = self.lap()
        return ", ".join(f"{verb} {what} {n:.0f} ({n / per:.2f}/route)"
                         for (verb, what), n in sorted(spent.items(), key=lambda kv: -kv[1]))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ready_status(generation: int) -> dict[str, Any]:
    """The status the operator writes for an accepted route a live data plane serves."""
    from kubegate.operator.programmed import Acknowledgement
    from kubegate.operator.status import desired_status

    from kubegate.resources import ObjectRef, ObjectResult
    from kubegate.translate.common import ACCEPTED_OK, RESOLVED_OK

    verdict = ObjectResult(ref=ObjectRef("GatewayRoute", NS, "r"), generation=generation, accepted=ACCEPTED_OK,
                           resolved_refs=RESOLVED_OK, programmable=True)
    return desired_status(verdict, Acknowledgement(live_replicas=1, acknowledged_by=1), None,
                          time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


async def creation_floor(cluster: devcluster.DevCluster, count: int, backend: str) -> None:
    """What creating ``count`` routes and writing each one status cost with no operator running: the floor."""
    async with KubeApi(await load_credentials(str(cluster.kubeconfig)), concurrency=32) as api:
        cpu = CpuMeter({**cluster.pids, "bench": os.getpid()})
        requests = ApiServerRequests(cluster)
        started = time.monotonic()
        await create_routes(api, 0, count, backend)
        took = time.monotonic() - started
        print(f"floor: {count} routes created in {took:.2f}s with no operator running; CPU seconds: {cpu.lap()}")
        print(f"floor: API writes: {requests.lap_text(count)}", flush=True)
        started = time.monotonic()
        await asyncio.gather(*(api.merge_patch(path_for(API, "GatewayRoute", NS, f"r{i}", "status"),
                                               {"status": ready_status(1)}) for i in range(count)))
        took = time.monotonic() - started
        print(f"floor: {count} Ready statuses written (one merge patch each, the operator's body) in {took:.2f}s; "
              f"CPU seconds: {cpu.lap()}")
        print(f"floor: API writes: {requests.lap_text(count)}", flush=True)
        while (await api.list(path_for(API, "GatewayRoute", NS), limit=1)).get("items"):
            try:  # deletecollection; 10,000 take longer than the client's request timeout: again until none
                await api.request("DELETE", path_for(API, "GatewayRoute", NS))
            except TimeoutError:
                pass


async def bench(cluster: devcluster.DevCluster, args: argparse.Namespace, logs: Path) -> None:
    runner, backend = await start_backend()
    cluster.kubectl("create", "namespace", NS)
    if args.floor:
        await creation_floor(cluster, args.routes, backend)
    operator = spawn(cluster, ["operator", "--namespace", GATEWAY_NS, "--metrics-port", "0"], "kubegate-operator",
                     logs / "operator.log", logs / "operator.pyisession" if args.profile else None,
                     KUBEGATE_LOG_LEVEL=getattr(args, "log_level", "WARNING"))
    dataplane = spawn(cluster, ["dataplane", "--namespace", GATEWAY_NS, "--host", "127.0.0.1", "--http-port", "0",
                                "--https-port", "0", "--admin-port", "0"], "kubegate-dataplane",
                      logs / "dataplane.log", KUBEGATE_LOG_LEVEL=getattr(args, "log_level", "WARNING"))
    try:
        port = None
        for _ in range(300):
            found = re.search(r"http=(\d+)", (logs / "dataplane.log").read_text())
            if found:
                port = int(found.group(1))
                break
            await asyncio.sleep(0.1)
        if port is None:
            raise SystemExit("the data plane did not start; see " + str(logs / "dataplane.log"))
        metrics_port = None
        for _ in range(300):
            found = re.search(r"metrics=(\d+)", (logs / "operator.log").read_text())
            if found:
                metrics_port = int(found.group(1))
                break
            await asyncio.sleep(0.1)
        if metrics_port is None:
            raise SystemExit("the operator did not start; see " + str(logs / "operator.log"))
        async with KubeApi(await load_credentials(str(cluster.kubeconfig)), concurrency=32) as api, \
                aiohttp.ClientSession() as session:
            ready_at: dict[tuple[str, int], float] = {}  # (route, generation) -> when first seen Ready

            def route_event(_type: str, obj: dict[str, Any]) -> None:
                key = (obj["metadata"]["name"], obj["metadata"].get("generation", 0))
                if key not in ready_at and is_ready(obj):
                    ready_at[key] = time.monotonic()

            routes = Informer(api, path_for(API, "GatewayRoute", NS), route_event)
            config_writes: list[float] = []  # when each ConfigMap write was seen
            config_map = Informer(api, path_for("v1", "ConfigMap", GATEWAY_NS),
                                  lambda t, o: config_writes.append(time.monotonic()),
                                  field_selector="metadata.name=kubegate-config")
            watchers = [asyncio.create_task(routes.run()), asyncio.create_task(config_map.run())]
            await routes.synced.wait()
            await asyncio.sleep(5)  # the operator's first config is written; its data plane acknowledged it
            config_writes.clear()
            pids = {"operator": operator.pid, "data plane": dataplane.pid, **cluster.pids, "bench": os.getpid()}
            cpu = CpuMeter(pids)
            counters = OperatorCounters(session, metrics_port)
            await counters.lap()
            requests = ApiServerRequests(cluster)

            started = time.monotonic()
            await create_routes(api, 0, args.routes, backend)
            created = time.monotonic() - started
            last = f"http://127.0.0.1:{port}/r/{args.routes - 1}/x"
            served = asyncio.create_task(first_success(session, last, timeout=300))
            await wait_all_ready(routes, args.routes, 300)
            burst_total = time.monotonic() - started
            all_served = await served - started
            last_config = max((t for t in config_writes if t <= started + burst_total), default=started) - started
            await asyncio.sleep(2)
            writes = len(config_writes)
            print(f"burst: {args.routes} routes created in {created:.2f}s, all Ready {burst_total:.2f}s after the "
                  f"first create (target < {args.ready_target:g} s): "
                  f"{'met' if burst_total < args.ready_target else 'NOT met'}; "
                  f"{burst_total - created:.2f}s after the last create")
            print(f"burst: last ConfigMap write at {last_config:.2f}s, the last route served at {all_served:.2f}s")
            print(f"burst: {writes} ConfigMap writes for {args.routes} routes")
            print(f"burst: CPU seconds (incl. the 2 s settle): {cpu.lap()}")
            print(f"burst: operator: {await counters.lap()}")
            print(f"burst: API writes: {requests.lap_text(args.routes)}")

            latencies, to_config, to_serve, to_ready = [], [], [], []
            for k in range(args.changes):
                i = k % args.routes
                path = path_for(API, "GatewayRoute", NS, f"r{i}")
                t0 = time.monotonic()
                patched = await api.merge_patch(path, {"spec": {"path": f"/changed/{k}/*rest"}})
                t1 = await first_success(session, f"http://127.0.0.1:{port}/changed/{k}/x")
                latencies.append(t1 - t0)
                written = next((t for t in config_writes if t >= t0), None)
                if written is not None:
                    to_config.append(written - t0)
                    to_serve.append(t1 - written)
                key = (f"r{i}", patched["metadata"]["generation"])
                deadline = time.monotonic() + 10
                while key not in ready_at and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                if key in ready_at:
                    to_ready.append(ready_at[key] - t0)
            p50, p99 = statistics.median(latencies), pct(latencies, 0.99)
            print(f"apply -> first successful request ({args.changes} changes, {args.routes} routes present): "
                  f"p50 {p50 * 1000:.0f} ms (target < 500: {'met' if p50 < 0.5 else 'NOT met'}), "
                  f"p99 {p99 * 1000:.0f} ms (target < {args.p99_target * 1000:.0f}: "
                  f"{'met' if p99 < args.p99_target else 'NOT met'}), "
                  f"max {max(latencies) * 1000:.0f} ms")
            for label, values in (("apply -> ConfigMap written", to_config), ("ConfigMap -> first 200", to_serve),
                                  ("apply -> Ready", to_ready)):
                if values:
                    print(f"  {label}: p50 {statistics.median(values) * 1000:.0f} ms, "
                          f"p99 {pct(values, 0.99) * 1000:.0f} ms ({len(values)} samples)")
            print(f"changes: CPU seconds (incl. waiting for Ready): {cpu.lap()}")
            print(f"changes: operator: {await counters.lap()}")
            print(f"changes: API writes: {requests.lap_text(max(1, args.changes))}".replace("/route", "/change"))

            more = args.rss_routes - args.routes
            if more > 0:
                started = time.monotonic()
                await create_routes(api, args.routes, more, backend)
                await wait_all_ready(routes, args.rss_routes, 600)
                print(f"{args.rss_routes} routes all Ready {time.monotonic() - started:.1f}s after adding {more}")
                print(f"  CPU seconds: {cpu.lap()}")
            await asyncio.sleep(3)
            rss, peak = rss_mib(operator.pid)
            print(f"operator RSS with {args.rss_routes} routes: {rss:.0f} MiB (peak {peak:.0f} MiB; target < "
                  f"{args.rss_target:g}: {'met' if peak < args.rss_target else 'NOT met'})")
            dp_rss, dp_peak = rss_mib(dataplane.pid)
            print(f"data plane RSS with {args.rss_routes} routes: {dp_rss:.0f} MiB (peak {dp_peak:.0f} MiB)")
            for task in watchers:
                task.cancel()
    finally:
        for proc in (operator, dataplane):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        await runner.cleanup()


def add_targets(parser: argparse.ArgumentParser, ready: float = 10, p99: float = 1.5, rss: float = 300) -> None:
    """The targets the figures are printed against (bench/scale.py passes issue 10's at 10,000 routes)."""
    parser.add_argument("--ready-target", type=float, default=ready, help="seconds until the burst is all Ready")
    parser.add_argument("--p99-target", type=float, default=p99, help="seconds, apply -> first successful request")
    parser.add_argument("--rss-target", type=float, default=rss, help="MiB, operator peak RSS")


def run(args: argparse.Namespace) -> None:
    """bench() on a fresh private dev cluster, torn down afterwards."""
    state = Path(tempfile.mkdtemp(prefix="kubegate-bench-"))
    started = time.monotonic()
    cluster = devcluster.up(state / "cluster", log=lambda m: None)
    cluster.kubectl("apply", "--server-side", "--field-manager=bench", "-k", str(REPO / "manifests"))
    print(f"dev cluster up in {time.monotonic() - started:.1f}s (logs in {state})", flush=True)
    try:
        asyncio.run(bench(cluster, args, state))
    finally:
        devcluster.down(state / "cluster", log=lambda *_: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--rss-routes", type=int, default=5000)
    parser.add_argument("--profile", action="store_true", help="run the operator under pyinstrument")
    parser.add_argument("--log-level", default="WARNING",
                        help="KUBEGATE_LOG_LEVEL of the operator and the data plane (their logs are in the log folder)")
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip timing the creation alone (no operator running) first")
    add_targets(parser)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
