"""Wiring of the operator process: credentials, initial lists, kopf, leader election, reconcile loop.

Before kopf starts, the four kinds and all Services are listed once, so the
first reconcile sees the whole cluster: an operator that restarts must never
write a config built from a half-read picture.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from typing import Any

import kopf

from kubegate.errors import UserError
from kubegate.eventloop import loop_name
from kubegate.kubeapi import ApiError, KubeApi, load_credentials, path_for
from kubegate.spec import API_VERSION, PLURALS

from .handlers import build_registry
from .health import HealthServer, liveness_problem, readiness_problem
from .leader import LeaderElector
from .metrics import OperatorMetrics, object_counts
from .reconcile import Reconciler
from .state import ClusterState

log = logging.getLogger("kubegate.operator")

API_CONCURRENCY = 64  # API requests in flight (status patches take at most status_writer.STATUS_WRITERS of them)


def replica_identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's change detection, switched off: only ``on.event`` handlers are registered, which never use it.

    The default storage deep-copies every object (managedFields and all) on
    every watch event to diff it against the last one: about a third of kopf's
    CPU per event, for nothing here.
    """

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return None

    def fetch(self, *, body: Any) -> Any:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


def kopf_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.WARNING  # kopf's own events: only problems
    settings.scanning.disabled = True  # no CRD/namespace scanning: fewer permissions, fixed resources
    settings.batching.batch_window = 0.01  # our reconciler debounces; kopf need not add latency
    settings.watching.server_timeout = 240
    settings.watching.client_timeout = 300
    settings.networking.request_timeout = 30
    return settings


async def seed(api: KubeApi, state: ClusterState) -> None:
    """One full list of everything kopf is about to watch."""
    for kind, plural in PLURALS.items():
        listing = await api.list(path_for(API_VERSION, plural))
        for item in listing.get("items") or []:
            item.setdefault("kind", kind)
            state.upsert_object(item)
    for item in (await api.list(path_for("v1", "Service"))).get("items") or []:
        state.upsert_service(item)
    log.info("initial state: %d kubegate objects, %d services", len(state.objects), len(state.services))


async def seed_with_retry(api: KubeApi, state: ClusterState, attempts: int = 30) -> None:
    """The API server may still be warming up (429/5xx); a 403 is a real RBAC problem, said once."""
    for attempt in range(attempts):
        try:
            return await seed(api, state)
        except ApiError as exc:
            if exc.status in (401, 403, 404) or attempt == attempts - 1:
                raise UserError(f"cannot list kubegate objects: {exc}") from None
            await asyncio.sleep(1)
        except (TimeoutError, OSError) as exc:
            if attempt == attempts - 1:
                raise UserError(f"cannot reach the API server: {exc}") from None
            await asyncio.sleep(1)


async def run_operator(namespace: str, *, stop: asyncio.Event | None = None, metrics_port: int | None = None,
                       redis_url: str | None = None) -> None:
    """Run until ``stop``; ``metrics_port`` None serves no health/metrics port (0: any free port).

    ``redis_url``: the data plane's ``--redis-url`` ("" none, None unknown), only to scope its egress policy.
    """
    credentials = await load_credentials()
    identity = replica_identity()
    stop = stop or asyncio.Event()
    metrics = OperatorMetrics()
    tasks: dict[str, asyncio.Task] = {}
    state = ClusterState(namespace)
    seeded = asyncio.Event()
    kopf_stop, kopf_ready = asyncio.Event(), asyncio.Event()
    reconciler: Reconciler | None = None
    elector: LeaderElector | None = None

    def ready() -> str | None:
        if reconciler is None or elector is None:
            return readiness_problem(seeded=seeded.is_set(), watching=False, leader=False, reconciled=False)
        return readiness_problem(seeded=seeded.is_set(), watching=kopf_ready.is_set() and reconciler.synced,
                                 leader=elector.is_leader, reconciled=reconciler.reconciled)

    def counts() -> dict | None:
        if reconciler is None or elector is None or not elector.is_leader or not reconciler.reconciled:
            return None
        return object_counts((ref.kind, live.status) for ref, live in state.objects.items())

    metrics.watch_objects(counts)
    health = None
    if metrics_port is not None:
        health = HealthServer(metrics.registry, alive=lambda: liveness_problem({**tasks, **_informers(reconciler)}),
                              ready=ready, port=metrics_port)
        port = await health.start()
        print(f"kubegate operator: metrics={port} namespace={namespace} loop={loop_name()}", file=sys.stderr,
              flush=True)
    try:
        async with KubeApi(credentials, concurrency=API_CONCURRENCY) as api:
            await seed_with_retry(api, state)
            seeded.set()

            def on_leadership(leader: bool) -> None:
                metrics.leader.set(1 if leader else 0)
                if leader and reconciler is not None:
                    reconciler.mark(config=True)

            elector = LeaderElector(api, namespace, identity, on_change=on_leadership)
            reconciler = Reconciler(api, state, identity=identity, is_leader=lambda: elector.is_leader,
                                    metrics=metrics, redis_url=redis_url, api_host=credentials.host)
            registry = build_registry(state, reconciler)
            tasks["leader election"] = asyncio.create_task(elector.run(), name="leader")
            tasks["reconcile loop"] = asyncio.create_task(reconciler.run(), name="reconcile")
            tasks["kopf"] = asyncio.create_task(
                # identity given: kopf's default calls getpass.getuser(), a KeyError for a uid without a
                # passwd entry (the image runs as 65532: the pod crashed with "getpwuid(): uid not found")
                kopf.operator(registry=registry, settings=kopf_settings(), standalone=True, clusterwide=True,
                              stop_flag=kopf_stop, ready_flag=kopf_ready, identity=identity),
                name="kopf",
            )
            await _take_back_signals(kopf_ready, stop)
            await _run_until_stopped(tasks, stop, kopf_stop)
    finally:
        if health is not None:
            await health.stop()


def _informers(reconciler: Reconciler | None) -> dict[str, asyncio.Task]:
    return {} if reconciler is None else {f"watch {name}": t for name, t in reconciler.informer_tasks.items()}


async def _run_until_stopped(tasks: dict[str, asyncio.Task], stop: asyncio.Event, kopf_stop: asyncio.Event) -> None:
    ours = [t for name, t in tasks.items() if name != "kopf"]
    kopf_task = tasks["kopf"]
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*ours, kopf_task, waiter], return_when=asyncio.FIRST_COMPLETED)
    # Hand leadership over first (the other replica takes over at once), then stop watching.
    for task in ours:
        task.cancel()
    await asyncio.gather(*ours, return_exceptions=True)
    kopf_stop.set()
    finished, _ = await asyncio.wait({kopf_task}, timeout=2)
    if not finished:  # kopf's own shutdown can be slow; we are done
        kopf_task.cancel()
        await asyncio.gather(kopf_task, return_exceptions=True)
    waiter.cancel()
    for task in done:
        if task is not waiter and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def _take_back_signals(kopf_ready: asyncio.Event, stop: asyncio.Event) -> None:
    """kopf installs its own SIGINT/SIGTERM handlers at startup; ours must win to release the Lease first."""
    try:
        await asyncio.wait_for(kopf_ready.wait(), 30)
    except TimeoutError:
        pass
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
