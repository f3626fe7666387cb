"""Prometheus metrics of the data plane, served on the admin port.

The three security counters have the exact names the security guide and
API.md promise (``auth_failures_total``, ``rate_limit_exceeded_total``,
``tls_errors_total``); dashboards and alerts in manifests/ depend on them.
Label values are bounded (route ids, fixed reason words), never credentials.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.values import MutexValue


class Metrics:
    """One registry per data-plane instance, so tests can run several in one process.

    With several workers (``--workers N``) every process runs prometheus_client's
    multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor): the
    values live in files the supervisor's admin port adds up (:func:`aggregated`);
    the gauges say how (``multiprocess_mode``, ignored in one process).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "kubegate_requests", "Requests by route, method and status class", ["route", "method", "code"], registry=r
        )
        self.request_latency = Histogram(
            "kubegate_request_duration_seconds", "Request latency as seen by the client, by route", ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r,
        )
        self.upstream_latency = Histogram(
            "kubegate_upstream_duration_seconds", "Upstream response time (headers received), by route", ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r,
        )
        self.auth_failures = Counter(
            "auth_failures", "Requests refused for missing, invalid or unauthorized credentials",
            ["route", "method", "reason"], registry=r,
        )
        self.rate_limited = Counter(
            "rate_limit_exceeded", "Requests refused with 429", ["route", "dimension"], registry=r
        )
        self.tls_errors = Counter("tls_errors", "Failed TLS handshakes", ["reason"], registry=r)
        self.ip_denied = Counter("kubegate_ip_denied", "Requests refused by an IP filter", ["route"], registry=r)
        self.ratelimit_store_errors = Counter(
            "kubegate_ratelimit_store_errors", "Shared rate-limit store failures, by failure mode applied",
            ["failure_mode"], registry=r,
        )
        self.config_reloads = Counter(
            "kubegate_config_reloads", "Config reload attempts by result", ["result"], registry=r
        )
        self.config_info = Info("kubegate_config", "The loaded config: hash and counts", registry=r)
        self.config_timestamp = Gauge(
            "kubegate_config_last_reload_timestamp_seconds", "When the loaded config was swapped in", registry=r
        )
        self.routes = Gauge("kubegate_routes", "Routes in the loaded config", registry=r, multiprocess_mode="livemax")
        self.cert_expiry = Gauge(
            "kubegate_certificate_expiry_timestamp_seconds", "notAfter of each served certificate", ["policy"],
            registry=r, multiprocess_mode="livemin",
        )
        self.circuit_overflows = Counter(
            "kubegate_circuit_overflows", "Requests refused with 503 overflow by a route's circuit breaker",
            ["route"], registry=r,
        )
        self.circuit_ejections = Counter(
            "kubegate_circuit_ejections", "Backend endpoints ejected by outlier detection", ["route"], registry=r
        )
        self.circuit_ejected = Gauge(
            "kubegate_circuit_ejected_endpoints", "Backend endpoints ejected right now (open breakers)", registry=r,
            multiprocess_mode="livesum",
        )


def _lockless(*values: object) -> bool:
    """Whether these are one process's own values (not multiprocess-mode files), which the request path
    may add to without their lock: only the event loop's thread writes a request metric, and a
    reader (a scrape) reads a float that is never half-written under the GIL."""
    return all(type(value) is MutexValue for value in values)


def observing(child: Histogram) -> Callable[[float], None]:
    """``child.observe`` for the request path: one bisect and two value increments instead of
    prometheus_client's checks and its Python loop over the buckets (same buckets, same sum)."""
    return recording(None, child)


def recording(counter: Counter | None, histogram: Histogram) -> Callable[[float], None]:
    """One request counted in ``counter`` (when given) and its seconds observed in ``histogram``, in
    one call: what the pipeline does once per request and route (see :func:`observing`)."""
    count, total, buckets = (counter._value if counter is not None else None), histogram._sum, histogram._buckets
    bounds = list(histogram._upper_bounds)
    find = bisect.bisect_left
    if _lockless(total, *buckets, *([count] if count is not None else [])):
        if count is None:
            def observe(seconds: float) -> None:
                total._value += seconds
                buckets[find(bounds, seconds)]._value += 1
            return observe

        def record(seconds: float) -> None:
            count._value += 1
            total._value += seconds
            buckets[find(bounds, seconds)]._value += 1
        return record
    add_total = total.inc
    adds = [bucket.inc for bucket in buckets]
    add_count = count.inc if count is not None else None

    def record_shared(seconds: float) -> None:  # multiprocess mode: the values write through to their files
        if add_count is not None:
            add_count(1)
        add_total(seconds)
        adds[find(bounds, seconds)](1)
    return record_shared


class _Collected:
    """A registry entry that yields one metric of another registry (the supervisor's config Info:
    Info values are per process and never written to the multiprocess files)."""

    def __init__(self, metric: Info) -> None:
        self._metric = metric

    def collect(self):  # prometheus_client's collector protocol
        return self._metric.collect()


def aggregated(path: str, own: Metrics) -> CollectorRegistry:
    """The registry the supervisor's /metrics serves: every worker's values added up (dead ones'
    counters included, so totals never go back), plus the supervisor's config Info."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    registry.register(_Collected(own.config_info))
    return registry


class _Uncounted:
    """A counter that counts nothing: a worker's reloads are counted once, by its supervisor."""

    def labels(self, *_values: str) -> _Uncounted:
        return self

    def inc(self, _amount: float = 1) -> None:
        return None


def worker_metrics() -> Metrics:
    """A worker's Metrics: everything counted except reloads, which the supervisor counts once for all."""
    metrics = Metrics()
    metrics.config_reloads = _Uncounted()  # type: ignore[assignment]
    return metrics
