"""The operator's Prometheus metrics, in a registry of its own.

``kubegate_objects{kind,condition,status}`` is what the KubegateObjectsNotProgrammed
alert and the dashboard read: how many objects of each kind have each status
of each condition. Only the leader reports it (a follower's copy would double
every ``sum``), computed at scrape time from the statuses the reconciler wrote,
so it is never staler than the last pass. An object with no status yet counts
as ``Unknown`` for every core condition: an operator that never gets to write
a status still shows up as "not Programmed".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kubegate.resources import CORE_CONDITIONS
from kubegate.spec import KINDS

STATUSES = ("True", "False", "Unknown")

CountKey = tuple[str, str, str]  # (kind, condition, status)


def object_counts(objects: Iterable[tuple[str, Mapping[str, Any] | None]]) -> dict[CountKey, int]:
    """(kind, status) pairs -> counts per (kind, condition, status) (pure).

    Every kind x core condition x status is present (zeros included), so a
    series drops to 0 instead of vanishing when the last object leaves it.
    """
    counts: dict[CountKey, int] = {(k, c, s): 0 for k in KINDS for c in CORE_CONDITIONS for s in STATUSES}
    for kind, status in objects:
        seen = set()
        for cond in (status or {}).get("conditions") or ():
            if not isinstance(cond, Mapping) or not isinstance(cond.get("type"), str):
                continue
            key = (kind, cond["type"], str(cond.get("status", "Unknown")))
            counts[key] = counts.get(key, 0) + 1
            seen.add(cond["type"])
        for missing in CORE_CONDITIONS:
            if missing not in seen:
                counts[(kind, missing, "Unknown")] += 1
    return counts


class ObjectsCollector(Collector):
    """Reads the current counts on each scrape; ``source`` returns None when this replica must not report."""

    def __init__(self, source: Callable[[], dict[CountKey, int] | None]) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("kubegate_objects", "kubegate objects per kind, condition type and status",
                                   labels=["kind", "condition", "status"])
        for (kind, condition, status), count in sorted((self.source() or {}).items()):
            family.add_metric([kind, condition, status], count)
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("kubegate_objects", "kubegate objects per kind, condition type and status",
                                labels=["kind", "condition", "status"])


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.leader = Gauge("kubegate_operator_leader", "1 while this replica holds the operator Lease", registry=r)
        self.reconcile_duration = Histogram(
            "kubegate_operator_reconcile_duration_seconds", "one reconcile pass, by part",
            ["part"], registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.config_writes = Counter("kubegate_operator_config_writes_total",
                                     "generated objects written or deleted (ConfigMap, Secret, ...)", ["kind"],
                                     registry=r)
        self.status_writes = Counter("kubegate_operator_status_writes_total", "status patches of kubegate objects",
                                     registry=r)
        self.acknowledgement = Histogram(
            "kubegate_operator_config_acknowledged_seconds",
            "from translating a new config to a live data-plane replica announcing its hash", registry=r,
            buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.reconcile_errors = Counter("kubegate_operator_reconcile_errors_total", "reconcile passes that failed",
                                        registry=r)

    def watch_objects(self, source: Callable[[], dict[CountKey, int] | None]) -> None:
        self.registry.register(ObjectsCollector(source))
