"""``kubegate dataplane``: the in-cluster data plane (Gateway + K8s config source + Lease heartbeat)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from kubegate.errors import UserError
from kubegate.kubeapi import KubeApi, load_credentials


async def serve(args: argparse.Namespace, stop: asyncio.Event | None = None) -> None:
    from kubegate.dataplane.heartbeat import Heartbeat
    from kubegate.dataplane.k8s_source import KubernetesConfigSource
    from kubegate.dataplane.metrics import Metrics
    from kubegate.dataplane.observe import observer_from_args
    from kubegate.dataplane.ratelimit import build_rate_limiter
    from kubegate.dataplane.server import Gateway

    credentials = await load_credentials()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    metrics = Metrics()
    gateway = Gateway(host=args.host, http_port=args.http_port, https_port=args.https_port,
                      admin_port=args.admin_port, limiter=build_rate_limiter(args.redis_url, metrics=metrics),
                      trusted_proxies=tuple(args.trusted_proxies), metrics=metrics,
                      observer=observer_from_args(args))
    try:
        await gateway.start()
    except OSError as exc:
        raise UserError(str(exc.strerror or exc)) from None
    print(f"kubegate dataplane: http={gateway.ports['http']} https={gateway.ports['https']} "
          f"admin={gateway.ports['admin']} namespace={args.namespace}", file=sys.stderr, flush=True)
    async with KubeApi(credentials) as api:
        heartbeat = Heartbeat(api, args.namespace, gateway)
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
    asyncio.run(load_credentials())  # one-line error for a missing kubeconfig, before binding any port
    logging.basicConfig(level=os.environ.get("KUBEGATE_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    asyncio.run(serve(args))
    return 0
