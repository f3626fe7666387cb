"""The level-based reconcile loop: one task, debounced, recomputing everything.

Watch handlers only record facts and call :meth:`Reconciler.mark`. The loop
waits for the debounce window to close (``debounce.py``), then translates the
whole picture with the pure translator, applies the generated objects that
changed, and hands the verdicts to the status writer (``status_writer.py``),
which patches the statuses that changed in the background. ApiKeys without a
Secret get one first (``apikey_secrets.py``). Data-plane Lease changes skip
translation and only re-evaluate Programmed; Lease expiry has no event, so
the loop also wakes up when the next live Lease runs out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from kubegate.generate import ConfigTooLarge, EgressTargets
from kubegate.kubeapi import ApiError, Informer, KubeApi, path_for
from kubegate.names import DATAPLANE_SELECTOR, MANAGED_SELECTOR
from kubegate.resources import TranslationInput, TranslationResult
from kubegate.translate import Translator

from . import apikey_secrets, apiserver
from .apply import Applier, Key, garbage, needs_apply, object_key, with_content_hash
from .debounce import DebounceWindow
from .events import EventQueue
from .heap import Heap
from .metrics import OperatorMetrics
from .programmed import (
    GenerationHistory,
    ReplicaLease,
    next_expiry,
    replica_lease,
)
from .state import ClusterState
from .status_writer import StatusWriter

log = logging.getLogger("kubegate.operator.reconcile")

MAX_ACK_GRACE = 5.0  # seconds "Pending" may wait for a slow data plane's acknowledgement


def compute(translator: Translator, inp: TranslationInput, targets: EgressTargets | None = None
            ) -> tuple[TranslationResult, list[dict[str, Any]]]:
    """Translate (incrementally: the Reconciler's translator remembers the previous input) and
    generate; pure but for that memo, CPU-bound: runs in a worker thread."""
    from kubegate.generate import generate_objects

    result = translator.translate(inp)
    return result, [with_content_hash(o) for o in generate_objects(result, inp, targets)]


class Reconciler:
    def __init__(self, api: KubeApi, state: ClusterState, *, identity: str,
                 is_leader: Callable[[], bool] = lambda: True,
                 debounce: float = 0.03, max_wait: float = 1.0, ack_grace: float = 1.0,
                 burst_events: int = 50, burst_debounce: float = 0.15, burst_max_wait: float = 3.0,
                 metrics: OperatorMetrics | None = None, redis_url: str | None = None,
                 api_host: str = "") -> None:
        self.api, self.state, self.identity, self.is_leader = api, state, identity, is_leader
        self.redis_url = redis_url  # the data plane's, for its egress policy only: never logged
        self.api_host = api_host  # the URL this process dials the API server at
        self.metrics = metrics or OperatorMetrics()
        self.ack_grace = ack_grace  # at least; stretched to twice the last acknowledgement, up to MAX_ACK_GRACE
        self._last_ack = 0.0  # seconds from the last config's translation to its first live replica's announcement
        self.translator = Translator()  # its memo makes each translation after the first incremental
        self.window = DebounceWindow(debounce, max_wait, burst_events, burst_debounce, burst_max_wait)
        self._ack_deadline = 0.0  # until then, "Pending" is not worth a status write
        self._hold_timer: asyncio.TimerHandle | None = None  # the pass at _ack_deadline
        ns = state.gateway_namespace
        managed = MANAGED_SELECTOR
        self.generated: dict[tuple[str, str], Informer] = {
            ("v1", "ConfigMap"): Informer(api, path_for("v1", "ConfigMap", ns), self._generated_event,
                                          label_selector=managed),
            ("v1", "Secret"): Informer(api, path_for("v1", "Secret", ns), self._generated_event,
                                       label_selector=managed),
            ("networking.k8s.io/v1", "NetworkPolicy"): Informer(
                api, path_for("networking.k8s.io/v1", "NetworkPolicy"), self._generated_event,
                label_selector=managed),
            ("cert-manager.io/v1", "Certificate"): Informer(
                api, path_for("cert-manager.io/v1", "Certificate", ns), self._certificate_event,
                label_selector=managed, retry_seconds=10.0),
        }
        self.leases = Informer(api, path_for("coordination.k8s.io/v1", "Lease", ns), self._lease_event,
                               label_selector=DATAPLANE_SELECTOR)
        # The API server's published endpoints: a change rewrites the data plane's egress policy.
        self.api_endpoints = Informer(api, path_for("discovery.k8s.io/v1", "endpointslices", apiserver.NAMESPACE),
                                      lambda *_: self.mark(config=True), label_selector=apiserver.SERVICE_LABEL,
                                      retry_seconds=10.0)
        self.replicas: dict[str, ReplicaLease] = {}
        self.history = GenerationHistory()
        self.applier = Applier(api, on_write=lambda kind: self.metrics.config_writes.labels(kind).inc())
        self.result: TranslationResult | None = None
        self._input: tuple[TranslationInput, EgressTargets] | None = None
        self._desired: dict[Key, dict[str, Any]] = {}
        self.config_hash: str | None = None
        self.passes = 0
        self.reconciled = False  # a first pass finished (readiness)
        self.informer_tasks: dict[str, asyncio.Task] = {}
        self.idle = asyncio.Event()  # the loop waits for work and no status write is in flight
        self.events = EventQueue(api, identity, gate=self.idle)  # Events wait for quiet moments
        self.statuses = StatusWriter(api, state, self.events, self.metrics, is_leader,
                                     on_done=self._update_idle, recheck=lambda: self.mark(config=False))
        self._waiting = False  # the loop is parked in _next_wake
        self._written_at: dict[str, float] = {}  # config hash -> when written, until a replica announces it
        self._config_dirty = True
        self.heap = Heap()

    @property
    def status_writes(self) -> int:
        return self.statuses.writes

    # --- facts in ----------------------------------------------------------------------

    def mark(self, config: bool = True) -> None:
        """Something changed: recompute soon (``config=False``: only statuses may differ)."""
        if config:
            self._config_dirty = True
        self.window.mark(counts=config)
        self.idle.clear()

    def _generated_event(self, event_type: str, obj: dict[str, Any]) -> None:
        """Deletions and other writers' edits need a pass; the echo of our own write does not."""
        key = object_key(obj)
        desired = self._desired.get(key)
        if event_type == "DELETED" or desired is None or needs_apply(desired, obj, self.applier.settled.get(key)):
            self.mark(config=True)

    def _certificate_event(self, _type: str, _obj: dict[str, Any]) -> None:
        self.mark(config=True)

    def _lease_event(self, event_type: str, obj: dict[str, Any]) -> None:
        name = (obj.get("metadata") or {}).get("name", "")
        old = self.replicas.get(name)
        lease = None if event_type == "DELETED" else replica_lease(obj)
        if lease is None:
            self.replicas.pop(name, None)
        else:
            self.replicas[name] = lease
            written = self._written_at.pop(lease.config_hash, None)
            if written is not None and lease.live(time.time()):
                self._last_ack = time.monotonic() - written
                self.metrics.acknowledgement.observe(self._last_ack)
                # Acknowledged: nothing is held any more, so the pass at the deadline would find nothing.
                self._ack_deadline = 0.0
                if self._hold_timer is not None:
                    self._hold_timer.cancel()
                    self._hold_timer = None
        now = time.time()
        if (old is None) != (lease is None) or (
            old is not None and lease is not None
            and (old.config_hash != lease.config_hash or old.live(now) != lease.live(now))
        ):
            self.mark(config=False)

    # --- the loop --------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        """The generated objects and data-plane Leases have been listed (Certificates are optional)."""
        return all(i.synced.is_set() for k, i in self.generated.items() if k[1] != "Certificate") \
            and self.leases.synced.is_set()

    async def run(self) -> None:
        informers = {f"{kind}s": i for (_, kind), i in self.generated.items()} | {
            "data-plane Leases": self.leases, "API server EndpointSlices": self.api_endpoints}
        self.informer_tasks = {name: asyncio.create_task(i.run(), name=name) for name, i in informers.items()}
        tasks = [*self.informer_tasks.values(), asyncio.create_task(self.events.run(), name="events")]
        try:
            required = [i for k, i in self.generated.items() if k[1] != "Certificate"] + [self.leases]
            await asyncio.gather(*(i.synced.wait() for i in required))
            certs = self.generated[("cert-manager.io/v1", "Certificate")]
            try:
                await asyncio.wait_for(certs.synced.wait(), 3)
            except TimeoutError:
                log.warning("cert-manager Certificates cannot be listed (%s); TLSPolicies with issuerRef "
                            "will not become Ready", certs.last_error)
            try:
                await asyncio.wait_for(self.api_endpoints.synced.wait(), 3)
            except TimeoutError:
                log.warning("the API server's EndpointSlices (namespace default) cannot be listed (%s); the data "
                            "plane's egress rule for the API server names its ports only", self.api_endpoints.last_error)
            while True:
                await self._next_wake()
                if not self.is_leader():
                    continue
                try:
                    await self.reconcile_once()
                    self.reconciled = True
                except (TimeoutError, ApiError, OSError, ConfigTooLarge) as exc:
                    self.metrics.reconcile_errors.inc()
                    log.warning("reconcile failed: %s; retrying", exc)
                    await asyncio.sleep(1)
                    self.mark(config=True)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, self.statuses.stop(), return_exceptions=True)

    async def _next_wake(self) -> None:
        expiry = next_expiry(self.replicas.values(), time.time())
        timeout = None if expiry is None else max(0.0, expiry - time.time()) + 0.05
        self._waiting = True
        self._update_idle()
        try:
            arrived = await self.window.arrival(timeout)
        finally:
            self._waiting = False
            self._update_idle()
        if arrived:  # else a data-plane Lease just expired: re-evaluate Programmed
            await self.window.close()

    async def reconcile_once(self) -> None:
        self.passes += 1
        started = time.monotonic()
        computed = False
        timing = self.metrics.reconcile_duration
        if self._config_dirty or self.result is None:
            self._config_dirty = False
            await self._fetch_unknown_secrets()
            if await apikey_secrets.generate_missing(self.api, self.state, self.identity,
                                                     lambda: self.mark(config=True)):
                await self._fetch_unknown_secrets()
            inp = (self.state.translation_input(), self.egress_targets())
            if self.result is None or inp != self._input:
                result, desired = await asyncio.to_thread(compute, self.translator, *inp)
                self.heap.settle()  # the new result and memo (and what piled up meanwhile): out of the collector's sight
                self._input, self._desired = inp, {object_key(o): o for o in desired}
                computed = True
            else:  # nothing the translator reads changed: only check the live objects for drift
                result, desired = self.result, list(self._desired.values())
            translated = time.monotonic()
            timing.labels("translate").observe(translated - started)
            self.history.record(result.hash, result.config.generations)
            if result.hash != self.config_hash:
                self._written_at = {result.hash: translated}  # only the newest config's acknowledgement counts
            await self._sync_generated(desired)
            timing.labels("apply").observe(time.monotonic() - translated)
            if result.hash != self.config_hash and self.replicas:
                # Live replicas usually acknowledge within milliseconds: write Ready once, not Pending then Ready.
                grace = self.hold_for()
                self._ack_deadline = time.monotonic() + grace
                if self._hold_timer is not None:
                    self._hold_timer.cancel()
                self._hold_timer = asyncio.get_running_loop().call_later(grace + 0.01, self.mark, False)
            self.result, self.config_hash = result, result.hash
        middle = time.monotonic()
        writes = self.status_writes
        self._sync_statuses()
        finished = time.monotonic()
        timing.labels("status").observe(finished - middle)
        timing.labels("total").observe(finished - started)
        log.debug("pass %d: config %.3fs (computed: %s), %d status writes in %.3fs", self.passes,
                  middle - started, computed, self.status_writes - writes, finished - middle)

    def hold_for(self) -> float:
        """How long "Pending" waits for a new config's acknowledgement before it is worth a status write.

        A data plane loading 10,000 routes on a busy machine takes seconds, not milliseconds: with a
        fixed second, every route of a burst would be written twice (Pending, then Ready).
        """
        if self.ack_grace <= 0:
            return 0.0
        return min(MAX_ACK_GRACE, max(self.ack_grace, 2 * self._last_ack))

    def egress_targets(self) -> EgressTargets:
        """What the data plane reaches besides backends: the API server's endpoints and its Redis URL."""
        slices = self.api_endpoints.objects.values() if self.api_endpoints.synced.is_set() else None
        endpoints = apiserver.api_server_endpoints(slices, self.api_host,
                                                   os.environ.get("KUBERNETES_SERVICE_HOST"))
        return EgressTargets(api_server=endpoints, redis_url=self.redis_url)

    # --- secrets ---------------------------------------------------------------------------

    async def _fetch_unknown_secrets(self) -> None:
        unknown = sorted(self.state.unknown_secrets())
        bodies = await asyncio.gather(*(self.api.get(path_for("v1", "Secret", ns, name)) for ns, name in unknown))
        for key, body in zip(unknown, bodies, strict=True):
            self.state.record_fetched_secret(key, body)

    # --- generated objects -----------------------------------------------------------------

    def live_generated(self) -> dict[Key, dict[str, Any]]:
        return {object_key(o): o for informer in self.generated.values() for o in informer.objects.values()}

    async def _sync_generated(self, desired: list[dict[str, Any]]) -> None:
        written = await self.applier.sync(desired, self.live_generated())
        wanted = {object_key(o) for o in desired}
        for (api_version, kind), informer in self.generated.items():
            if not informer.synced.is_set():
                continue
            stale = garbage(informer.objects.values(), wanted)
            written += await self.applier.collect(stale, api_version, kind)
        if written:
            log.info("wrote %d generated object(s)", written)

    # --- statuses -------------------------------------------------------------------------

    def _sync_statuses(self) -> None:
        """Hand the verdicts to the status writer; its patches run in the background (see ``settle``)."""
        if self.result is None:
            return
        holding = time.monotonic() < self._ack_deadline
        certificates = self.generated[("cert-manager.io/v1", "Certificate")].objects
        if self.statuses.sync(self.result, self.replicas, self.history, certificates, holding):
            self._config_dirty = True  # a verdict predates its object: translate again
        if self._config_dirty:
            self.window.mark(counts=False)

    def _update_idle(self) -> None:
        """Idle: the loop waits for work, none is pending, and no status write is in flight."""
        if self._waiting and not self.window.pending and not self.statuses.busy:
            self.idle.set()
        else:
            self.idle.clear()

    async def settle(self) -> None:
        """Wait until the status writes started so far have landed."""
        await self.statuses.settle()
