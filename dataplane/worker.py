"""One worker of ``--workers N`` (``python -m kubegate.dataplane.worker CONTROL_SOCKET INDEX``).

Started by the supervisor (:mod:`supervisor`), never by hand. It connects
to the control socket, gets its settings (never from argv: a Redis URL may
hold a password), and serves a :class:`Gateway` on the shared ports
(SO_REUSEPORT) with the configs the supervisor pushes: ``prepare`` builds,
``commit`` swaps, ``abort`` drops, ``load`` does both; it binds the listeners
only once it serves the current config (``listen``: there is none yet). When
the supervisor goes away the worker stops too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from kubegate import eventloop

log = logging.getLogger("kubegate.worker")


def _rate_limiter(settings: dict, metrics: object, replicas: list[int]) -> object:
    """Redis when configured (while Redis is down, failureMode local, this worker is one of
    workers x replicas sharing a limit), else a client of the supervisor's in-memory counters."""
    from .ratelimit import build_rate_limiter
    from .shared_limits import OwnedRateLimiter

    if settings["redis_url"]:
        return build_rate_limiter(settings["redis_url"], metrics=metrics,
                                  live_replicas=lambda: replicas[0] * settings["workers"])
    return OwnedRateLimiter(settings["limits"])


async def serve(control: str, index: int) -> int:
    from .ipc import receive, send
    from .jwks import JwksCache
    from .launch import gateway_kwargs
    from .metrics import worker_metrics
    from .server import ConfigRejected, Gateway, config_counts
    from .shared_limits import OwnedRateLimiter
    from .snapshot import off_loop
    from .sources.decode import IncrementalDecoder

    reader, writer = await asyncio.open_unix_connection(control)
    await send(writer, ("hello", index, os.getpid()))
    _, settings = await receive(reader)  # type: ignore[misc]
    metrics = worker_metrics()
    replicas = [settings["replicas"]]  # the supervisor says when it changes
    limiter = _rate_limiter(settings, metrics, replicas)
    if isinstance(limiter, OwnedRateLimiter):
        limiter = await limiter.connect()
    jwks = JwksCache()
    gateway = Gateway(**gateway_kwargs(settings["gateway"]), admin_port=None, limiter=limiter, metrics=metrics, jwks=jwks,
                      reuse_port=True)
    listening = False
    prepared: dict[str, object] = {}
    decoder = IncrementalDecoder()

    async def listen() -> None:
        nonlocal listening
        if not listening:
            await gateway.start()
            listening = True

    async def handle(message: tuple) -> tuple:
        command = message[0]
        if command == "listen":
            await listen()
            return ("serving", gateway.loaded_hash, listening)
        if command == "replicas":
            replicas[0] = max(1, int(message[1]))
            return ("replicas", replicas[0])
        digest = message[1]
        if command in ("prepare", "load"):
            try:
                snapshot = await off_loop(_prepare, gateway, decoder, message[2], digest)  # off the loop
            except ConfigRejected as exc:
                return ("rejected", digest, exc.reason)
            if command == "prepare":
                prepared.clear()
                prepared[digest] = snapshot
                # the counts: a supervisor that did not decode the config itself tells them (/config, metrics)
                return ("prepared", digest, dict(snapshot.dropped), config_counts(snapshot.config))
            gateway.commit(snapshot)
        elif command == "commit":
            snapshot = prepared.pop(digest, None)
            if snapshot is not None:
                gateway.commit(snapshot)  # type: ignore[arg-type]
        elif command == "abort":
            prepared.pop(digest, None)
            return ("aborted", digest)
        await listen()
        return ("serving", gateway.loaded_hash, listening)

    try:
        await _answer_until_stopped(reader, writer, handle, index)
    finally:
        await gateway.stop()
        await limiter.close()
        await jwks.close()
        writer.close()
    return 0


async def _answer_until_stopped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                handle: Callable[[tuple], Awaitable[tuple]], index: int) -> None:
    """Answer the supervisor's commands until SIGINT/SIGTERM or until the supervisor goes away."""
    from .ipc import receive, send

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def commands() -> None:
        while True:
            try:
                message = await receive(reader)
            except (asyncio.IncompleteReadError, OSError):
                log.warning("worker %d: the supervisor has gone; stopping", index)
                return
            await send(writer, await handle(message))  # type: ignore[arg-type]

    channel = asyncio.create_task(commands())
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({channel, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        channel.cancel()
        stopped.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await channel


def _prepare(gateway: Any, decoder: Any, blob: bytes, digest: str) -> Any:
    """Decode a config the supervisor sent and build its snapshot, in a worker thread (snapshot.off_loop
    keeps the event loop answering meanwhile). ``("encoded", ConfigMap payload, Secret payload)`` goes
    through this worker's IncrementalDecoder, so unchanged routes keep their models and runtimes;
    ``("models", config, secrets)`` is unpickled whole."""
    from kubegate.config import ConfigDecodeError

    from .snapshot import ConfigRejected, settle_heap

    kind, first, second = pickle.loads(blob)
    if kind == "encoded":
        try:
            config, secrets, _ = decoder.decode(first, second, settle_heap)
        except ConfigDecodeError as exc:  # the supervisor decoded it; a worker refusing it refuses the reload
            raise ConfigRejected(str(exc)) from None
    else:
        config, secrets = first, second
    return gateway.prepare(config, secrets, digest, settle_heap)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=os.environ.get("KUBEGATE_LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s[worker {argv[1]}]: %(message)s")
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    try:
        return eventloop.run(serve(argv[0], int(argv[1])))
    except KeyboardInterrupt:
        return 130
    except (OSError, asyncio.IncompleteReadError) as exc:  # no supervisor (any more)
        log.warning("worker %s: cannot talk to the supervisor: %s", argv[1], exc)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
