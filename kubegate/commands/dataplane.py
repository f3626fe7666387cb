"""``kubegate dataplane``: the in-cluster data plane (Gateway + K8s config source + Lease heartbeat).

With ``--workers N`` (N > 1) the supervisor stands in for the Gateway: the
config source feeds it, and the heartbeat announces the hash every worker
serves (so ``Programmed`` waits for all of them).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys

from kubegate.kubeapi import KubeApi, load_credentials


async def serve(args: argparse.Namespace, stop: asyncio.Event | None = None, workers: int = 1,
                metrics_dir: str | None = None) -> None:
    from kubegate.dataplane.heartbeat import Heartbeat
    from kubegate.dataplane.launch import start_gateway
    from kubegate.dataplane.metrics import Metrics
    from kubegate.dataplane.sources.kubernetes import KubernetesConfigSource
    from kubegate.dataplane.supervisor import Supervisor
    from kubegate.eventloop import loop_name

    credentials = await load_credentials()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    heartbeat: Heartbeat | None = None  # created with the API client below; its Lease count divides local limits
    gateway, _limiter = await start_gateway(args, workers, Metrics(), metrics_dir,
                                            live_replicas=lambda: heartbeat.live_replicas if heartbeat else 1)
    if isinstance(gateway, Supervisor):
        await gateway.wait_listening()
    print(f"kubegate dataplane: http={gateway.ports['http']} https={gateway.ports['https']} "
          f"admin={gateway.ports['admin']} namespace={args.namespace} workers={workers} loop={loop_name()}",
          file=sys.stderr, flush=True)
    async with KubeApi(credentials) as api:
        heartbeat = Heartbeat(api, args.namespace, gateway)
        if isinstance(gateway, Supervisor):
            gateway.on_loaded = heartbeat.nudge  # all workers serve a new config: announce it now
        source = KubernetesConfigSource(api, args.namespace, gateway, on_loaded=heartbeat.nudge)
        tasks = [asyncio.create_task(source.run()), asyncio.create_task(heartbeat.run())]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await gateway.stop()


def main(args: argparse.Namespace) -> int:
    from kubegate import eventloop
    from kubegate.dataplane.launch import default_workers, use_multiprocess_metrics

    asyncio.run(load_credentials())  # one-line error for a missing kubeconfig, before binding any port
    logging.basicConfig(level=os.environ.get("KUBEGATE_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    workers = args.workers or default_workers()
    metrics_dir = use_multiprocess_metrics() if workers > 1 else None
    try:
        eventloop.run(serve(args, workers=workers, metrics_dir=metrics_dir))
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
