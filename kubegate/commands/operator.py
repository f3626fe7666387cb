"""``kubegate operator [--namespace NS] [--metrics-port 8081]``: the kopf operator (in-cluster or from KUBECONFIG)."""

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


async def _main(namespace: str, metrics_port: int) -> None:
    from kubegate.operator.runtime import run_operator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_operator(namespace, stop=stop, metrics_port=metrics_port)


def main(args: argparse.Namespace) -> int:
    if not 0 <= args.metrics_port <= 65535:
        raise UserError(f"--metrics-port {args.metrics_port}: not a port number (0-65535)")
    asyncio.run(load_credentials())  # a missing/broken kubeconfig: a one-line UserError before anything starts
    _logging()
    # kopf picks uvloop only in its own CLI (kopf/_kits/loops.py; not in kopf.run() or kopf.operator()):
    # kubegate runs kopf.operator() inside its own loop, so it picks uvloop here
    eventloop.run(_main(args.namespace, args.metrics_port))
    return 0
