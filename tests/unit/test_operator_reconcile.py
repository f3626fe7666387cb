"""One reconcile pass against a recording stand-in for the API (this unit only; the e2e suite uses a real one).

What matters here is how many requests a pass makes: a pass with nothing new
writes nothing, a data-plane acknowledgement writes each object's status once,
and the Events about it go out in the background.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kubegate.operator.programmed import ReplicaLease
from kubegate.operator.reconcile import Reconciler
from kubegate.operator.state import ClusterState


class RecordingApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.version = 100

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        return {**body, "metadata": {**(body.get("metadata") or {}), "resourceVersion": str(self.version)}}

    async def get(self, path: str, **_: Any) -> None:
        self.calls.append(("GET", path))

    async def apply(self, obj: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.calls.append(("APPLY", obj["kind"]))
        return self._answer(obj)

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("PATCH", path))
        return self._answer(body)

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("CREATE", path))
        return self._answer(body)

    def count(self, verb: str) -> int:
        return sum(1 for v, _ in self.calls if v == verb)


def route(i: int) -> dict[str, Any]:
    return {"apiVersion": "kubegate.dev/v1alpha1", "kind": "GatewayRoute",
            "metadata": {"name": f"r{i}", "namespace": "shop", "uid": f"u{i}", "generation": 1,
                         "resourceVersion": str(i + 1), "creationTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {"path": f"/r/{i}", "backends": [{"url": "http://127.0.0.1:1"}]}}


def acknowledge(reconciler: Reconciler, config_hash: str) -> None:
    reconciler.replicas["dp"] = ReplicaLease(name="dp", config_hash=config_hash, renewed_at=4e9, duration=10)


async def test_statuses_are_written_once_per_change_and_events_go_out_afterwards():
    api = RecordingApi()
    state = ClusterState("gw")
    for i in range(20):
        state.upsert_object(route(i))
    reconciler = Reconciler(api, state, identity="op", ack_grace=0.0)  # type: ignore[arg-type]
    acknowledge(reconciler, "not-yet")

    await reconciler.reconcile_once()
    await reconciler.settle()
    assert api.count("APPLY") >= 2  # ConfigMap and Secret (and the data plane's NetworkPolicy)
    assert api.count("PATCH") == 20  # Accepted, waiting for the data plane
    assert api.count("CREATE") == 0  # no Event yet: nothing became Ready

    api.calls.clear()
    await reconciler.reconcile_once()
    await reconciler.settle()
    assert api.calls == []  # nothing new: no status re-derived, nothing written

    acknowledge(reconciler, reconciler.config_hash or "")
    await reconciler.reconcile_once()
    await reconciler.settle()
    assert api.count("PATCH") == 20 and api.count("APPLY") == 0
    assert all(live.status["conditions"][3]["status"] == "True" for live in state.objects.values())
    assert api.count("CREATE") == 0  # the Ready events are queued, not in the status path
    await reconciler.events.drain()
    assert api.count("CREATE") == 20

    api.calls.clear()
    await reconciler.reconcile_once()
    await reconciler.settle()
    assert api.calls == []


async def test_event_queue_drops_beyond_its_limit():
    from kubegate.operator.events import EventQueue

    api = RecordingApi()
    queue = EventQueue(api, "op", limit=2)  # type: ignore[arg-type]
    involved = {"apiVersion": "v1", "kind": "X", "name": "n", "namespace": "shop", "uid": "u"}
    for _ in range(3):
        queue.put(involved, "Normal", "Ready", "ok")
    assert queue.dropped == 1
    worker = asyncio.create_task(queue.run())
    for _ in range(50):
        if api.count("CREATE") == 2:
            break
        await asyncio.sleep(0.01)
    worker.cancel()
    assert api.count("CREATE") == 2


async def test_normal_events_have_a_budget_and_warnings_do_not():
    """10,000 routes turning Ready at once must not cost 10,000 Event writes; a Warning always gets through."""
    from kubegate.operator.events import EventQueue

    queue = EventQueue(RecordingApi(), "op", normal_burst=5, normal_rate=0)  # type: ignore[arg-type]
    involved = {"apiVersion": "v1", "kind": "X", "name": "n", "namespace": "shop", "uid": "u"}
    for _ in range(20):
        queue.put(involved, "Normal", "Ready", "ok")
    for _ in range(3):
        queue.put(involved, "Warning", "Conflicted", "taken")
    assert queue.dropped == 15
    assert [queue._queue.get_nowait()[1] for _ in range(8)] == ["Normal"] * 5 + ["Warning"] * 3


def test_the_normal_event_budget_refills():
    from kubegate.operator.events import Budget

    now = [0.0]
    budget = Budget(2, 4, clock=lambda: now[0])
    assert [budget.take() for _ in range(3)] == [True, True, False]
    now[0] = 0.5  # 2 tokens back, never more than the burst
    assert [budget.take() for _ in range(3)] == [True, True, False]


class SlowStatusApi(RecordingApi):
    """Status patches hang until released, as on a busy API server."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("PATCH", path))
        await self.release.wait()
        return self._answer(body)


async def test_config_passes_do_not_wait_for_status_writes_nor_repeat_them():
    api = SlowStatusApi()
    state = ClusterState("gw")
    for i in range(5):
        state.upsert_object(route(i))
    reconciler = Reconciler(api, state, identity="op", ack_grace=0.0)  # type: ignore[arg-type]
    acknowledge(reconciler, "not-yet")
    await asyncio.wait_for(reconciler.reconcile_once(), 5)  # returns while 5 patches are still in flight
    await asyncio.sleep(0.01)
    assert api.count("PATCH") == 5

    state.upsert_object(route(5))  # a new route arrives meanwhile: its config is written at once
    reconciler.mark(config=True)
    await asyncio.wait_for(reconciler.reconcile_once(), 5)
    await asyncio.sleep(0.01)
    assert api.count("APPLY") >= 4  # two configs written while the first statuses hang
    assert api.count("PATCH") == 6  # the five in flight are not patched a second time

    api.release.set()
    await reconciler.settle()
    assert all(live.status for live in state.objects.values())


async def test_events_gate_opens_once_the_loop_waits_and_the_writes_landed():
    api = SlowStatusApi()
    state = ClusterState("gw")
    state.upsert_object(route(0))
    reconciler = Reconciler(api, state, identity="op", ack_grace=0.0)  # type: ignore[arg-type]
    await reconciler.reconcile_once()
    waiting = asyncio.create_task(reconciler._next_wake())
    await asyncio.sleep(0.01)
    assert not reconciler.idle.is_set()  # a status write is still in flight
    api.release.set()
    await reconciler.settle()
    await asyncio.sleep(0)
    assert reconciler.idle.is_set()
    reconciler.mark(config=False)
    assert not reconciler.idle.is_set()
    await asyncio.wait_for(waiting, 5)


async def test_a_burst_of_changes_waits_for_a_longer_quiet_moment():
    state = ClusterState("gw")
    reconciler = Reconciler(RecordingApi(), state, identity="op", debounce=0.01, max_wait=5.0,  # type: ignore[arg-type]
                            burst_events=20, burst_debounce=1.0, burst_max_wait=5.0)

    async def trickle(marks: int, gap: float) -> None:
        for _ in range(marks):
            reconciler.mark(config=True)
            await asyncio.sleep(gap)

    started = asyncio.get_running_loop().time()
    feeder = asyncio.create_task(trickle(5, 0.1))  # a few changes: each 0.1 s pause closes the window
    await asyncio.wait_for(reconciler._next_wake(), 5)
    assert asyncio.get_running_loop().time() - started < 0.1
    await feeder

    for _ in range(25):
        reconciler.mark(config=True)  # a burst arrived ...
    started = asyncio.get_running_loop().time()
    feeder = asyncio.create_task(trickle(6, 0.1))  # ... and keeps trickling with 0.1 s pauses
    await asyncio.wait_for(reconciler._next_wake(), 5)
    assert asyncio.get_running_loop().time() - started >= 0.6  # one window for the whole trickle
    await feeder


async def test_a_new_config_rewrites_only_the_statuses_it_changes():
    api = RecordingApi()
    state = ClusterState("gw")
    for i in range(10):
        state.upsert_object(route(i))
    reconciler = Reconciler(api, state, identity="op", ack_grace=0.0)  # type: ignore[arg-type]
    acknowledge(reconciler, "not-yet")
    await reconciler.reconcile_once()
    await reconciler.settle()
    acknowledge(reconciler, reconciler.config_hash or "")
    await reconciler.reconcile_once()
    await reconciler.settle()
    assert all(live.status["conditions"][3]["status"] == "True" for live in state.objects.values())
    api.calls.clear()

    state.upsert_object(route(10))  # one more route: a new config, new live hash, same generations for the rest
    reconciler.mark(config=True)
    await reconciler.reconcile_once()
    acknowledge(reconciler, reconciler.config_hash or "")
    await reconciler.reconcile_once()
    await reconciler.settle()
    patched = [path for verb, path in api.calls if verb == "PATCH"]
    assert patched and all(path.endswith("/r10/status") for path in patched)


def test_pending_waits_longer_for_a_data_plane_that_was_slow_to_acknowledge():
    """A data plane that took 2 s to load the last config: Pending is held 4 s (then 5 s at most), so a
    burst's routes get one status write (Ready), not two (Pending, then Ready)."""
    from kubegate.operator.reconcile import MAX_ACK_GRACE

    reconciler = Reconciler(RecordingApi(), ClusterState("gw"), identity="op")  # type: ignore[arg-type]
    assert reconciler.hold_for() == 1.0
    reconciler._last_ack = 2.0
    assert reconciler.hold_for() == 4.0
    reconciler._last_ack = 30.0
    assert reconciler.hold_for() == MAX_ACK_GRACE
    assert Reconciler(RecordingApi(), ClusterState("gw"), identity="op", ack_grace=0).hold_for() == 0  # type: ignore[arg-type]
