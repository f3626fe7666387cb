"""``kubegate run``: a complete local gateway from manifest files, no cluster needed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from kubegate.errors import UserError


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


async def serve(args: argparse.Namespace) -> int:
    from kubegate.dataplane.devca import DevCa
    from kubegate.dataplane.metrics import Metrics
    from kubegate.dataplane.observe import observer_from_args
    from kubegate.dataplane.ratelimit import build_rate_limiter
    from kubegate.dataplane.reload import FileConfigSource, LoadFailed, build, report
    from kubegate.dataplane.server import ConfigRejected, Gateway

    log = logging.getLogger("kubegate.run")
    ca = DevCa()
    try:
        first = build(args.paths, args.namespace, ca)
    except LoadFailed as failed:
        for line in failed.problems[1:]:
            print(f"kubegate: {line}", file=sys.stderr)
        raise UserError(failed.problems[0]) from None
    metrics = Metrics()
    try:
        limiter = build_rate_limiter(args.redis_url, metrics=metrics)
    except ValueError as exc:
        raise UserError(f"--redis-url: {exc}") from None
    try:
        gateway = Gateway(host=args.host, http_port=args.http_port, https_port=args.https_port,
                          admin_port=args.admin_port, limiter=limiter, trusted_proxies=args.trusted_proxies,
                          metrics=metrics, observer=observer_from_args(args))
    except ValueError as exc:
        await limiter.close()
        raise UserError(str(exc)) from None
    try:
        await gateway.start()
    except OSError as exc:
        await limiter.close()
        raise UserError(exc.strerror or str(exc)) from None
    source = FileConfigSource(list(args.paths), gateway, args.namespace, ca)
    demo_backends = []
    try:
        if args.demo_backends:
            from kubegate.demo import local_backend_ports, start_demo_backends

            demo_backends = await start_demo_backends(local_backend_ports(first.config),
                                                      busy=set(gateway.ports.values()))
        for line in report(first):
            log.warning("%s", line)
        try:
            gateway.apply(first.config, first.secrets)
        except ConfigRejected as exc:
            raise UserError(f"config refused: {exc.reason}") from None
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        log.info("listening: http://%s:%d https://%s:%d admin http://%s:%d/metrics", host, gateway.ports["http"],
                 host, gateway.ports["https"], host, gateway.ports["admin"])
        log.info("development CA (for curl --cacert): %s", ca.ca_path)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        watcher = asyncio.create_task(source.watch())
        await stop.wait()
        log.info("shutting down")
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    finally:
        for runner in demo_backends:
            await runner.cleanup()
        await gateway.stop()
        await limiter.close()
    return 0


def main(args: argparse.Namespace) -> int:
    _configure_logging()
    return asyncio.run(serve(args))
