"""The level-based reconcile loop: one task, debounced, recomputing everything.

Watch handlers only record facts and call :meth:`Reconciler.mark`. The loop
waits for a quiet moment (``debounce``, but never longer than ``max_wait``
after the first change), then translates the whole picture with the pure
translator, applies the generated objects that changed, and starts patching
the statuses that changed. A single change therefore reaches the ConfigMap
about 30 ms after its watch event. Once a window has seen ``burst_events``
changes it is a burst: the quiet moment must last ``burst_debounce`` and the
window may stretch to ``burst_max_wait``, so 1,000 CRs trickling in from
``kubectl create`` cost a handful of ConfigMap writes, not one per pause
between two of them (a window cut off by its time limit mid-burst makes the
next one a burst window from the start). Data-plane Lease changes skip translation and only
re-evaluate Programmed; Lease expiry has no event, so the loop also wakes up
when the next live Lease runs out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubegate.kubeapi import ApiError, Informer, KubeApi, path_for
from kubegate.resources import ObjectRef, TranslationInput, TranslationResult
from kubegate.spec import API_VERSION

from . import apikey_secrets
from .apply import MANAGED_BY, Applier, Key, garbage, needs_apply, object_key, with_content_hash
from .events import EventQueue, post_event
from .metrics import OperatorMetrics
from .programmed import (
    COMPONENT_LABEL,
    DATAPLANE_COMPONENT,
    GenerationHistory,
    ReplicaLease,
    acknowledgement,
    live_hashes,
    live_refusals,
    next_expiry,
    replica_lease,
)
from .state import ClusterState, LiveObject
from .status import (
    OPTIONAL_FIELDS,
    CertificateFacts,
    desired_status,
    status_changed,
    transition_events,
)

log = logging.getLogger("kubegate.operator.reconcile")

API_KEY_GRACE_SECONDS = 2.0  # let `kubectl apply` create a user's own key Secret before generating one
STATUS_WRITERS = 32  # status patches in flight; fewer than the client's slots, so config writes never queue behind


def compute(inp: TranslationInput) -> tuple[TranslationResult, list[dict[str, Any]]]:
    """Translate and generate (pure, CPU-bound: runs in a worker thread)."""
    from kubegate.generate import generate_objects
    from kubegate.translate import translate

    result = translate(inp)
    return result, [with_content_hash(o) for o in generate_objects(result, inp)]


def certificate_facts(name: str, cert: Mapping[str, Any] | None) -> CertificateFacts:
    status = (cert or {}).get("status") or {}
    ready = next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), None)
    return CertificateFacts(
        name=name,
        ready=(ready or {}).get("status", "Unknown"),
        reason=(ready or {}).get("reason", "") if ready else ("NotFound" if cert is None else ""),
        not_after=status.get("notAfter"),
    )


def _iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reconciler:
    def __init__(self, api: KubeApi, state: ClusterState, *, identity: str,
                 is_leader: Callable[[], bool] = lambda: True,
                 debounce: float = 0.03, max_wait: float = 1.0, ack_grace: float = 1.0,
                 burst_events: int = 50, burst_debounce: float = 0.15, burst_max_wait: float = 3.0,
                 metrics: OperatorMetrics | None = None) -> None:
        self.api, self.state, self.identity, self.is_leader = api, state, identity, is_leader
        self.metrics = metrics or OperatorMetrics()
        self.debounce, self.max_wait, self.ack_grace = debounce, max_wait, ack_grace
        self.burst_events, self.burst_debounce, self.burst_max_wait = burst_events, burst_debounce, burst_max_wait
        self._changes = 0  # config-relevant marks since the current window opened
        self._bursting = False  # the last window was cut short by its time limit in a burst
        self._ack_deadline = 0.0  # until then, "Pending" is not worth a status write
        ns = state.gateway_namespace
        managed = f"{MANAGED_BY}=kubegate"
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
                               label_selector=f"{COMPONENT_LABEL}={DATAPLANE_COMPONENT}")
        self.replicas: dict[str, ReplicaLease] = {}
        self.history = GenerationHistory()
        self.applier = Applier(api, on_write=lambda kind: self.metrics.config_writes.labels(kind).inc())
        self.result: TranslationResult | None = None
        self._input: TranslationInput | None = None
        self._desired: dict[Key, dict[str, Any]] = {}
        self.config_hash: str | None = None
        self.status_writes = 0
        self.passes = 0
        self.reconciled = False  # a first pass finished (readiness)
        self.informer_tasks: dict[str, asyncio.Task] = {}
        self.idle = asyncio.Event()  # the loop waits for work and no status write is in flight
        self.events = EventQueue(api, identity, gate=self.idle)  # Events wait for quiet moments
        # ref -> (verdict, acknowledgement, certificate facts, live status, hashes epoch) when its status was last
        # found current; the epoch moves when the set of live config hashes does (acknowledgements may differ).
        # a pass re-derives a status only when one of those changed (1,000 unchanged objects cost ~2 ms, not 20).
        self._status_memo: dict[ObjectRef, tuple[Any, Any, Any, dict[str, Any], int]] = {}
        self._hashes: dict[str, int] = {}
        self._refusals: dict[str, tuple[str, str]] = {}
        self._hashes_epoch = 0
        # Status writes run beside the loop: the next config pass need not wait for 1,000 patches to land.
        self._writing: set[ObjectRef] = set()  # objects with a status patch in flight
        self._writers: set[asyncio.Task] = set()
        self._status_slots = asyncio.Semaphore(STATUS_WRITERS)
        self._waiting = False  # the loop is parked in _next_wake
        self._skipped_writing = False
        self._written_at: dict[str, float] = {}  # config hash -> when written, until a replica announces it
        self._config_dirty = True
        self._wake = asyncio.Event()

    # --- facts in ----------------------------------------------------------------------

    def mark(self, config: bool = True) -> None:
        """Something changed: recompute soon (``config=False``: only statuses may differ)."""
        if config:
            self._config_dirty = True
            self._changes += 1
        self._wake.set()
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
                self.metrics.acknowledgement.observe(time.monotonic() - written)
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
        informers = {f"{kind}s": i for (_, kind), i in self.generated.items()} | {"data-plane Leases": self.leases}
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
            while True:
                await self._next_wake()
                if not self.is_leader():
                    continue
                try:
                    await self.reconcile_once()
                    self.reconciled = True
                except (TimeoutError, ApiError, OSError) as exc:
                    self.metrics.reconcile_errors.inc()
                    log.warning("reconcile failed: %s; retrying", exc)
                    await asyncio.sleep(1)
                    self.mark(config=True)
        finally:
            for task in [*tasks, *self._writers]:
                task.cancel()
            await asyncio.gather(*tasks, *self._writers, return_exceptions=True)

    async def _next_wake(self) -> None:
        expiry = next_expiry(self.replicas.values(), time.time())
        timeout = None if expiry is None else max(0.0, expiry - time.time()) + 0.05
        self._waiting = True
        self._update_idle()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            return  # a data-plane Lease just expired: re-evaluate Programmed
        finally:
            self._waiting = False
            self._update_idle()
        first = time.monotonic()
        while True:
            self._wake.clear()
            burst = self._bursting or self._changes >= self.burst_events
            await asyncio.sleep(self.burst_debounce if burst else self.debounce)
            limit = self.burst_max_wait if burst else self.max_wait
            if not self._wake.is_set():
                self._bursting = False  # a quiet moment: whatever burst there was has ended
                break
            if time.monotonic() - first >= limit:
                self._bursting = burst  # still going: the next window starts as a burst
                break
        self._wake.clear()
        self._changes = 0

    async def reconcile_once(self) -> None:
        self.passes += 1
        started = time.monotonic()
        computed = False
        timing = self.metrics.reconcile_duration
        if self._config_dirty or self.result is None:
            self._config_dirty = False
            await self._fetch_unknown_secrets()
            if await self._generate_api_key_secrets():
                await self._fetch_unknown_secrets()
            inp = self.state.translation_input()
            if self.result is None or inp != self._input:
                result, desired = await asyncio.to_thread(compute, inp)
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
                self._ack_deadline = time.monotonic() + self.ack_grace
                asyncio.get_running_loop().call_later(self.ack_grace + 0.01, self.mark, False)
            self.result, self.config_hash = result, result.hash
        middle = time.monotonic()
        writes = self.status_writes
        await self._sync_statuses()
        finished = time.monotonic()
        timing.labels("status").observe(finished - middle)
        timing.labels("total").observe(finished - started)
        log.debug("pass %d: config %.3fs (computed: %s), %d status writes in %.3fs", self.passes,
                  middle - started, computed, self.status_writes - writes, finished - middle)

    # --- secrets ---------------------------------------------------------------------------

    async def _fetch_unknown_secrets(self) -> None:
        unknown = sorted(self.state.unknown_secrets())
        bodies = await asyncio.gather(*(self.api.get(path_for("v1", "Secret", ns, name)) for ns, name in unknown))
        for key, body in zip(unknown, bodies, strict=True):
            self.state.record_fetched_secret(key, body)

    async def _generate_api_key_secrets(self) -> int:
        made, now = 0, time.time()
        for live in list(self.state.objects.values()):
            src = live.source
            if src.kind != "ApiKey":
                continue
            where = apikey_secrets.secret_ref(src)
            if where is None or where not in self.state.absent_secrets:
                continue
            age = now - _timestamp(src.creation_timestamp)
            if age < API_KEY_GRACE_SECONDS:
                asyncio.get_running_loop().call_later(API_KEY_GRACE_SECONDS - age + 0.1, self.mark, True)
                continue
            fresh = apikey_secrets.new_api_key_secret(src)
            if fresh is None:
                continue
            secret, kid = fresh
            try:
                created = await self.api.create(path_for("v1", "Secret", src.namespace), secret)
            except ApiError as exc:
                if exc.status == 409:  # somebody created it meanwhile: read theirs
                    self.state.absent_secrets.discard(where)
                    continue
                log.warning("cannot create Secret %s/%s for ApiKey %s: %s", *where, src.name, exc)
                continue
            self.state.record_fetched_secret(where, created)
            made += 1
            log.info("generated API key Secret %s/%s for ApiKey %s (%s)", *where, src.name, kid)
            await post_event(self.api, live.involved, "Normal", "KeyGenerated",
                             f"generated Secret {where[1]} with a new API key ({kid})", self.identity)
        return made

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

    async def _sync_statuses(self) -> None:
        """Derive every status whose inputs changed; the patches run in the background (see ``settle``)."""
        result = self.result
        if result is None:
            return
        now = time.time()
        hashes = live_hashes(self.replicas.values(), now)
        refusals = live_refusals(self.replicas.values(), now)
        if hashes != self._hashes or refusals != self._refusals:
            self._hashes, self._refusals, self._hashes_epoch = hashes, refusals, self._hashes_epoch + 1
        epoch = self._hashes_epoch
        stamp = _iso_now()
        certs = self.generated[("cert-manager.io/v1", "Certificate")].objects
        gateway_ns = self.state.gateway_namespace
        memo = self._status_memo
        batch = []
        holding = time.monotonic() < self._ack_deadline
        for ref, live in list(self.state.objects.items()):
            verdict = result.results.get(ref)
            if verdict is None or verdict.generation != live.source.generation:
                self._config_dirty = True  # translated before this change arrived; next pass
                continue
            if ref in self._writing:
                self._skipped_writing = True  # looked at again when that write lands
                continue
            seen = memo.get(ref)
            unchanged = seen is not None and seen[0] is verdict and (seen[3] is live.status or seen[3] == live.status)
            if unchanged and seen[4] == epoch and not verdict.certificate:
                continue  # same verdict, same live hashes, same status: nothing to re-derive
            ack = acknowledgement(str(ref), verdict.generation, hashes, self.history, refusals)
            cert = (certificate_facts(verdict.certificate, certs.get((gateway_ns, verdict.certificate)))
                    if verdict.certificate else None)
            if unchanged and seen[1] == ack and seen[2] == cert:
                memo[ref] = (verdict, ack, cert, live.status, epoch)
                continue
            if holding and ack.live_replicas and not ack.acknowledged_by and verdict.programmable \
                    and verdict.accepted.status == "True":
                continue  # the acknowledgement is probably on its way
            desired = desired_status(verdict, ack, live.status, stamp, cert)
            if status_changed(live.status, desired):
                batch.append((ref, live, desired, (verdict, ack, cert, epoch)))
            else:
                memo[ref] = (verdict, ack, cert, live.status, epoch)
        if len(memo) > len(self.state.objects):
            for gone in memo.keys() - self.state.objects.keys():
                del memo[gone]
        if self._config_dirty:
            self._wake.set()
        if batch:
            self._writing.update(ref for ref, *_ in batch)
            task = asyncio.create_task(self._write_statuses(batch))
            self._writers.add(task)
            task.add_done_callback(self._writer_done)

    def _writer_done(self, task: asyncio.Task) -> None:
        self._writers.discard(task)
        self._update_idle()

    def _update_idle(self) -> None:
        """Idle: the loop waits for work, none is pending, and no status write is in flight."""
        if self._waiting and not self._wake.is_set() and not self._writers:
            self.idle.set()
        else:
            self.idle.clear()

    async def _write_statuses(self, batch: list[tuple[ObjectRef, LiveObject, dict[str, Any], tuple]]) -> None:
        try:
            await asyncio.gather(*(self._patch_status(*item) for item in batch))
        finally:
            self._writing.difference_update(ref for ref, *_ in batch)
            if self._skipped_writing:  # a pass meanwhile left these objects out: look at them again
                self._skipped_writing = False
                self.mark(config=False)

    async def settle(self) -> None:
        """Wait until the status writes started so far have landed."""
        while self._writers:
            await asyncio.gather(*list(self._writers), return_exceptions=True)

    async def _patch_status(self, ref: ObjectRef, live: LiveObject, desired: dict[str, Any],
                            facts: tuple[Any, Any, Any, int]) -> None:
        if not self.is_leader():
            return
        body: dict[str, Any] = dict(desired)
        for stale in OPTIONAL_FIELDS:
            if stale in live.status and stale not in desired:
                body[stale] = None
        path = path_for(API_VERSION, ref.kind, ref.namespace, ref.name, "status")
        try:
            async with self._status_slots:
                answer = await self.api.merge_patch(path, {"status": body})
        except (TimeoutError, OSError) as exc:
            log.warning("status of %s not written: %s", ref, exc)
            return
        except ApiError as exc:
            if exc.status != 404:
                log.warning("status of %s not written: %s", ref, exc)
            return
        self.status_writes += 1
        self.metrics.status_writes.inc()
        previous = live.status
        self.state.set_status(ref, answer.get("status") or desired,
                              (answer.get("metadata") or {}).get("resourceVersion"))
        current = self.state.objects.get(ref)
        if current is not None:
            verdict, ack, cert, epoch = facts
            self._status_memo[ref] = (verdict, ack, cert, current.status, epoch)
        for note in transition_events(previous, desired):
            self.events.put(live.involved, note.type, note.reason, note.message)


def _timestamp(value: str) -> float:
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return 0.0
