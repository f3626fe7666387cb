"""``kubegate run``: a complete local gateway from manifest files, no cluster needed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import signal
import sys
from typing import TYPE_CHECKING

from kubegate.errors import UserError

if TYPE_CHECKING:
    from kubegate.dataplane.devca import DevCa
    from kubegate.dataplane.server import Gateway
    from kubegate.dataplane.sources.file import FileConfigSource
    from kubegate.dataplane.supervisor import Supervisor
    from kubegate.resources import TranslationResult

log = logging.getLogger("kubegate.run")


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


async def serve(args: argparse.Namespace, workers: int = 1, metrics_dir: str | None = None) -> int:
    from kubegate.dataplane.devca import DevCa
    from kubegate.dataplane.launch import start_gateway
    from kubegate.dataplane.metrics import Metrics
    from kubegate.dataplane.sources.file import FileConfigSource, LoadFailed, build

    ca = DevCa()
    try:
        first = build(args.paths, args.namespace, ca)
    except LoadFailed as failed:
        for line in failed.problems[1:]:
            print(f"kubegate: {line}", file=sys.stderr)
        raise UserError(failed.problems[0]) from None
    gateway, limiter = await start_gateway(args, workers, Metrics(), metrics_dir)
    source = FileConfigSource(list(args.paths), gateway, args.namespace, ca)  # type: ignore[arg-type]
    demo_backends = []
    try:
        if args.demo_backends:
            from kubegate.demo import local_backend_ports, start_demo_backends

            demo_backends = await start_demo_backends(local_backend_ports(first.config),
                                                      busy=set(gateway.ports.values()))
        await _serve_first_config(gateway, first)
        await _watch_until_stopped(args, gateway, source, workers, ca)
    finally:
        for runner in demo_backends:
            await runner.cleanup()
        await gateway.stop()
        if limiter is not None:
            await limiter.close()
    return 0


async def _serve_first_config(gateway: Gateway | Supervisor, first: TranslationResult) -> None:
    """Serve the files' config as loaded at start, or fail the command: a refusal is the user's error."""
    from kubegate.dataplane.server import ConfigRejected
    from kubegate.dataplane.sources.file import report
    from kubegate.dataplane.supervisor import Supervisor

    for line in report(first):
        log.warning("%s", line)
    try:
        digest = gateway.apply(first.config, first.secrets)
    except ConfigRejected as exc:
        raise UserError(f"config refused: {exc.reason}") from None
    if isinstance(gateway, Supervisor):
        refusal = await gateway.outcome(digest)
        if refusal is not None:
            raise UserError(f"config refused: {refusal}")
        await gateway.wait_listening()


async def _watch_until_stopped(args: argparse.Namespace, gateway: Gateway | Supervisor, source: FileConfigSource,
                               workers: int, ca: DevCa) -> None:
    """Say where it listens, then reload on file changes until SIGINT/SIGTERM."""
    from kubegate import eventloop

    # Before the "listening" line: a SIGTERM right after it must stop us cleanly, not kill us.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    log.info("listening: http://%s:%d https://%s:%d admin http://%s:%d/metrics (%d worker%s, %s)",
             host, gateway.ports["http"], host, gateway.ports["https"], host, gateway.ports["admin"],
             workers, "" if workers == 1 else "s", eventloop.loop_name())
    log.info("development CA (for curl --cacert): %s", ca.ca_path)
    watcher = asyncio.create_task(source.run())
    await stop.wait()
    log.info("shutting down")
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher


def main(args: argparse.Namespace) -> int:
    from kubegate import eventloop
    from kubegate.dataplane.launch import default_workers, use_multiprocess_metrics

    _configure_logging()
    workers = args.workers or default_workers()
    metrics_dir = use_multiprocess_metrics() if workers > 1 else None
    try:
        return eventloop.run(serve(args, workers, metrics_dir))
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
