"""``kubegate run``: a complete local gateway from manifest files, no cluster needed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import signal
import sys

from kubegate.errors import UserError


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


async def serve(args: argparse.Namespace, workers: int = 1, metrics_dir: str | None = None) -> int:
    from kubegate import eventloop
    from kubegate.dataplane.devca import DevCa
    from kubegate.dataplane.metrics import Metrics
    from kubegate.dataplane.ratelimit import build_rate_limiter, check_redis_url
    from kubegate.dataplane.server import ConfigRejected, Gateway
    from kubegate.dataplane.sources.file import FileConfigSource, LoadFailed, build, report
    from kubegate.dataplane.supervisor import Supervisor, gateway_kwargs, gateway_options

    log = logging.getLogger("kubegate.run")
    ca = DevCa()
    try:
        first = build(args.paths, args.namespace, ca)
    except LoadFailed as failed:
        for line in failed.problems[1:]:
            print(f"kubegate: {line}", file=sys.stderr)
        raise UserError(failed.problems[0]) from None
    metrics = Metrics()
    limiter = None
    try:
        if workers > 1:
            if args.redis_url:
                check_redis_url(args.redis_url)
        else:
            limiter = build_rate_limiter(args.redis_url, metrics=metrics)
    except ValueError as exc:
        raise UserError(f"--redis-url: {exc}") from None
    try:
        if workers > 1:
            assert metrics_dir is not None
            gateway: Gateway | Supervisor = Supervisor(
                workers, gateway_options(args), admin_port=args.admin_port, redis_url=args.redis_url,
                metrics_dir=metrics_dir, metrics=metrics)
        else:
            gateway = Gateway(**gateway_kwargs(gateway_options(args)), admin_port=args.admin_port, limiter=limiter,
                              metrics=metrics)
    except ValueError as exc:
        if limiter is not None:
            await limiter.close()
        raise UserError(str(exc)) from None
    try:
        await gateway.start()
    except OSError as exc:
        if limiter is not None:
            await limiter.close()
        raise UserError(exc.strerror or str(exc)) from None
    source = FileConfigSource(list(args.paths), gateway, args.namespace, ca)  # type: ignore[arg-type]
    demo_backends = []
    try:
        if args.demo_backends:
            from kubegate.demo import local_backend_ports, start_demo_backends

            demo_backends = await start_demo_backends(local_backend_ports(first.config),
                                                      busy=set(gateway.ports.values()))
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
    finally:
        for runner in demo_backends:
            await runner.cleanup()
        await gateway.stop()
        if limiter is not None:
            await limiter.close()
    return 0


def main(args: argparse.Namespace) -> int:
    from kubegate import eventloop
    from kubegate.dataplane.supervisor import default_workers, use_multiprocess_metrics

    _configure_logging()
    workers = args.workers or default_workers()
    metrics_dir = use_multiprocess_metrics() if workers > 1 else None
    try:
        return eventloop.run(serve(args, workers, metrics_dir))
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
