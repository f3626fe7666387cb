"""``kubegate operator [--namespace NS] [--metrics-port 8081] [--redis-url URL]``: the kopf operator.

In-cluster or from KUBECONFIG. ``--redis-url`` is the data plane's, read only to scope the data plane's
egress NetworkPolicy; it is never logged (its password least of all).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from kubegate import eventloop
from kubegate.errors import UserError
from kubegate.kubeapi import load_credentials


def _logging() -> None:
    level = os.environ.get("KUBEGATE_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kopf").setLevel(logging.WARNING)  # per-event handler chatter
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


async def _main(namespace: str, metrics_port: int, redis_url: str | None) -> None:
    from kubegate.operator.runtime import run_operator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_operator(namespace, stop=stop, metrics_port=metrics_port, redis_url=redis_url)


def main(args: argparse.Namespace) -> int:
    if not 0 <= args.metrics_port <= 65535:
        raise UserError(f"--metrics-port {args.metrics_port}: not a port number (0-65535)")
    if args.redis_url:
        from kubegate.dataplane.ratelimit import check_redis_url

        try:
            check_redis_url(args.redis_url)  # its messages never quote the URL
        except ValueError as exc:
            raise UserError(f"--redis-url: {exc}") from None
    asyncio.run(load_credentials())  # a missing/broken kubeconfig: a one-line UserError before anything starts
    _logging()
    # kopf picks uvloop only in its own CLI (kopf/_kits/loops.py; not in kopf.run() or kopf.operator()):
    # kubegate runs kopf.operator() inside its own loop, so it picks uvloop here
    eventloop.run(_main(args.namespace, args.metrics_port, args.redis_url))
    return 0
