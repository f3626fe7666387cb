"""The operator's metrics and health port: counts per condition, pure probe decisions, the real HTTP endpoints."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from kubegate.operator.health import HealthServer, liveness_problem, readiness_problem
from kubegate.operator.metrics import OperatorMetrics, object_counts
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubegate.errors import UserError


def status(**conditions: str) -> dict:
    return {"conditions": [{"type": t, "status": s} for t, s in conditions.items()]}


def test_object_counts_per_kind_condition_and_status():
    counts = object_counts([
        ("GatewayRoute", status(Accepted="True", ResolvedRefs="True", Programmed="True", Ready="True")),
        ("GatewayRoute", status(Accepted="True", ResolvedRefs="False", Programmed="False", Ready="False",
                                Reconciling="True")),
        ("ApiKey", None),  # never reconciled: Unknown for every core condition
    ])
    assert counts[("GatewayRoute", "Programmed", "True")] == 1
    assert counts[("GatewayRoute", "Programmed", "False")] == 1
    assert counts[("GatewayRoute", "Reconciling", "True")] == 1
    assert counts[("ApiKey", "Programmed", "Unknown")] == 1 and counts[("ApiKey", "Ready", "Unknown")] == 1
    # Every series exists, at zero, so it drops to 0 instead of vanishing when its last object leaves it.
    assert counts[("TLSPolicy", "Ready", "False")] == 0
    assert counts[("RateLimitPolicy", "Accepted", "True")] == 0


def test_object_counts_tolerate_garbage_conditions():
    counts = object_counts([("GatewayRoute", {"conditions": ["x", {"status": "True"}, {"type": "Ready"}]})])
    assert counts[("GatewayRoute", "Ready", "Unknown")] == 1
    assert counts[("GatewayRoute", "Accepted", "Unknown")] == 1


def samples(registry) -> dict[tuple, float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_objects_gauge_only_when_the_source_reports():
    metrics = OperatorMetrics()
    current: dict | None = None
    metrics.watch_objects(lambda: current)
    assert not any(name == "kubegate_objects" for name, _ in samples(metrics.registry))  # a follower: nothing
    current = object_counts([("GatewayRoute", status(Programmed="False"))])
    got = samples(metrics.registry)
    assert got[("kubegate_objects", (("condition", "Programmed"), ("kind", "GatewayRoute"), ("status", "False")))] == 1


def test_liveness_names_the_stopped_task():
    async def scenario() -> tuple:
        forever = asyncio.create_task(asyncio.sleep(60))
        ended = asyncio.create_task(asyncio.sleep(0))
        await asyncio.sleep(0.01)
        try:
            return (liveness_problem({"kopf": forever}),
                    liveness_problem({"kopf": forever, "reconcile loop": ended}))
        finally:
            forever.cancel()

    assert asyncio.run(scenario()) == (None, "reconcile loop stopped")


def test_readiness_needs_lists_watches_and_a_first_pass_on_the_leader():
    assert "initial list" in readiness_problem(seeded=False, watching=False, leader=False, reconciled=False)
    assert "watches" in readiness_problem(seeded=True, watching=False, leader=False, reconciled=False)
    assert readiness_problem(seeded=True, watching=True, leader=False, reconciled=False) is None  # a follower
    assert "first reconcile" in readiness_problem(seeded=True, watching=True, leader=True, reconciled=False)
    assert readiness_problem(seeded=True, watching=True, leader=True, reconciled=True) is None


async def test_health_server_answers_over_http():
    metrics = OperatorMetrics()
    metrics.leader.set(1)
    problem: dict[str, str | None] = {"ready": "leader has not finished its first reconcile"}
    server = HealthServer(metrics.registry, alive=lambda: None, ready=lambda: problem["ready"], port=0,
                          host="127.0.0.1")
    port = await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            async def get(path: str) -> tuple[int, str]:
                async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
                    return resp.status, await resp.text()

            assert await get("/healthz") == (200, "ok\n")
            assert await get("/readyz") == (503, "leader has not finished its first reconcile\n")
            problem["ready"] = None
            assert (await get("/readyz"))[0] == 200
            code, text = await get("/metrics")
            assert code == 200 and "kubegate_operator_leader 1.0" in text
    finally:
        await server.stop()


async def test_a_busy_port_is_a_one_line_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HealthServer(OperatorMetrics().registry, alive=lambda: None, ready=lambda: None, port=port,
                              host="127.0.0.1")
        with pytest.raises(UserError, match=f"cannot listen on metrics port {port}"):
            await server.start()
