"""The status of kubegate objects: derive the ones whose inputs changed, patch them beside the loop.

Modelled on Contour's status updater. The reconcile loop hands over the
translator's verdicts and the data-plane facts; :meth:`StatusWriter.sync` finds
the objects whose status is out of date and starts patching them in the
background, so the next config pass need not wait for 1,000 patches to land.
Only the leader writes. An object whose verdict, acknowledgement, Certificate
and live status are what they were when its status was last found current is
skipped without re-deriving it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from kubegate.kubeapi import ApiError, KubeApi, path_for
from kubegate.resources import READY, ObjectRef, ObjectResult, TranslationResult
from kubegate.spec import API_VERSION

from .events import EventQueue
from .metrics import OperatorMetrics
from .programmed import (
    Acknowledgement,
    GenerationHistory,
    ReplicaLease,
    acknowledgement,
    live_hashes,
    live_refusals,
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

STATUS_WRITERS = 32  # status patches in flight; fewer than the client's slots, so config writes never queue behind


class Seen(NamedTuple):
    """What an object's status was derived from when it was last found current."""

    verdict: ObjectResult
    ack: Acknowledgement
    cert: CertificateFacts | None
    status: dict[str, Any]
    epoch: int  # moves when the set of live config hashes does (acknowledgements may differ)


class Pending(NamedTuple):
    """One status patch to write, and the facts to remember once it landed."""

    ref: ObjectRef
    live: LiveObject
    desired: dict[str, Any]
    verdict: ObjectResult
    ack: Acknowledgement
    cert: CertificateFacts | None
    epoch: int


def certificate_facts(name: str, cert: Mapping[str, Any] | None) -> CertificateFacts:
    status = (cert or {}).get("status") or {}
    ready = next((c for c in status.get("conditions") or () if c.get("type") == READY), None)
    return CertificateFacts(
        name=name,
        ready=(ready or {}).get("status", "Unknown"),
        reason=(ready or {}).get("reason", "") if ready else ("NotFound" if cert is None else ""),
        not_after=status.get("notAfter"),
    )


MAX_MOVED = 1000  # objects re-derived on every pass (see _moved) before all are, once


def _moved(before: Mapping[str, int], now: Mapping[str, int], history: GenerationHistory) -> set[ObjectRef] | None:
    """The objects whose acknowledgement may differ between two sets of live hashes, when the replicas
    only moved from one config to another (one hash each, as many replicas): those whose generation
    differs between the two configs. None when it is not that simple (every object may differ)."""
    if len(before) != 1 or len(now) != 1 or list(before.values()) != list(now.values()):
        return None
    old, new = history.get(next(iter(before))), history.get(next(iter(now)))
    if old is None or new is None:
        return None
    return {ObjectRef(*key.split("/", 2)) for key, _ in old.items() ^ new.items()}


def _iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusWriter:
    def __init__(self, api: KubeApi, state: ClusterState, events: EventQueue, metrics: OperatorMetrics,
                 is_leader: Callable[[], bool], *, on_done: Callable[[], None],
                 recheck: Callable[[], None]) -> None:
        """``on_done``: a write batch finished; ``recheck``: objects were skipped while being written."""
        self.api, self.state, self.events, self.metrics, self.is_leader = api, state, events, metrics, is_leader
        self._on_done, self._recheck = on_done, recheck
        self.writes = 0
        self._seen: dict[ObjectRef, Seen] = {}
        self._hashes: dict[str, int] = {}
        self._refusals: dict[str, tuple[str, str]] = {}
        self._epoch = 0
        # Seen entries from epoch _valid_since on are current but for the objects in _moved: every change of
        # the live hashes since then only moved replicas from one config to another that differ in those.
        self._valid_since = 0
        self._moved: set[ObjectRef] = set()
        self._writing: set[ObjectRef] = set()  # objects with a status patch in flight
        self._writers: set[asyncio.Task] = set()
        self._slots = asyncio.Semaphore(STATUS_WRITERS)
        self._skipped_writing = False

    @property
    def busy(self) -> bool:
        """A status write is in flight."""
        return bool(self._writers)

    def sync(self, result: TranslationResult, replicas: Mapping[str, ReplicaLease], history: GenerationHistory,
             certificates: Mapping[tuple[str, str], dict[str, Any]], holding: bool) -> bool:
        """Start writing every status whose inputs changed; True if some verdict predates its object.

        ``holding``: a new config was just written to live replicas, so "Pending" is not worth a write
        yet (the acknowledgement is probably on its way).
        """
        now = time.time()
        hashes = live_hashes(replicas.values(), now)
        refusals = live_refusals(replicas.values(), now)  # objects a live replica could not load
        if hashes != self._hashes or refusals != self._refusals:
            moved = _moved(self._hashes, hashes, history) if refusals == self._refusals else None
            self._hashes, self._refusals, self._epoch = hashes, refusals, self._epoch + 1
            if moved is None or len(self._moved) + len(moved) > MAX_MOVED:
                self._valid_since, self._moved = self._epoch, set()
            else:
                self._moved |= moved
        epoch, stamp, stale = self._epoch, _iso_now(), False
        valid_since, moved_refs = self._valid_since, self._moved
        gateway_ns = self.state.gateway_namespace
        seen_of = self._seen
        batch: list[Pending] = []
        for ref, live in list(self.state.objects.items()):
            verdict = result.results.get(ref)
            if verdict is None or verdict.generation != live.source.generation:
                stale = True  # translated before this change arrived; next pass
                continue
            if ref in self._writing:
                self._skipped_writing = True  # looked at again when that write lands
                continue
            seen = seen_of.get(ref)
            unchanged = seen is not None and seen.verdict is verdict and (
                seen.status is live.status or seen.status == live.status)
            if unchanged and not verdict.certificate and (seen.epoch == epoch or (
                    seen.epoch >= valid_since and ref not in moved_refs)):
                continue  # same verdict, same acknowledgement facts, same status: nothing to re-derive
            ack = acknowledgement(str(ref), verdict.generation, hashes, history, refusals)
            cert = (certificate_facts(verdict.certificate, certificates.get((gateway_ns, verdict.certificate)))
                    if verdict.certificate else None)
            if unchanged and seen.ack == ack and seen.cert == cert:
                seen_of[ref] = Seen(verdict, ack, cert, live.status, epoch)
                continue
            if holding and ack.live_replicas and not ack.acknowledged_by and not ack.refused \
                    and verdict.programmable and verdict.accepted.status == "True":
                continue  # the acknowledgement is probably on its way
            desired = desired_status(verdict, ack, live.status, stamp, cert)
            if status_changed(live.status, desired):
                batch.append(Pending(ref, live, desired, verdict, ack, cert, epoch))
            else:
                seen_of[ref] = Seen(verdict, ack, cert, live.status, epoch)
        if len(seen_of) > len(self.state.objects):
            for gone in seen_of.keys() - self.state.objects.keys():
                del seen_of[gone]
        if batch:
            self._writing.update(item.ref for item in batch)
            task = asyncio.create_task(self._write(batch))
            self._writers.add(task)
            task.add_done_callback(self._writer_done)
        return stale

    def _writer_done(self, task: asyncio.Task) -> None:
        self._writers.discard(task)
        self._on_done()

    async def _write(self, batch: list[Pending]) -> None:
        try:
            await asyncio.gather(*(self._patch(item) for item in batch))
        finally:
            self._writing.difference_update(item.ref for item in batch)
            if self._skipped_writing:  # a pass meanwhile left these objects out: look at them again
                self._skipped_writing = False
                self._recheck()

    async def settle(self) -> None:
        """Wait until the status writes started so far have landed."""
        while self._writers:
            await asyncio.gather(*list(self._writers), return_exceptions=True)

    async def stop(self) -> None:
        """Cancel the writes in flight (the loop is shutting down)."""
        writers = list(self._writers)
        for task in writers:
            task.cancel()
        await asyncio.gather(*writers, return_exceptions=True)

    async def _patch(self, item: Pending) -> None:
        if not self.is_leader():
            return
        ref, live, desired = item.ref, item.live, item.desired
        body: dict[str, Any] = dict(desired)
        for stale in OPTIONAL_FIELDS:
            if stale in live.status and stale not in desired:
                body[stale] = None
        path = path_for(API_VERSION, ref.kind, ref.namespace, ref.name, "status")
        try:
            async with self._slots:
                answer = await self.api.merge_patch(path, {"status": body})
        except (TimeoutError, OSError) as exc:
            log.warning("status of %s not written: %s", ref, exc)
            return
        except ApiError as exc:
            if exc.status != 404:
                log.warning("status of %s not written: %s", ref, exc)
            return
        self.writes += 1
        self.metrics.status_writes.inc()
        previous = live.status
        self.state.set_status(ref, answer.get("status") or desired,
                              (answer.get("metadata") or {}).get("resourceVersion"))
        current = self.state.objects.get(ref)
        if current is not None:
            self._seen[ref] = Seen(item.verdict, item.ack, item.cert, current.status, item.epoch)
        for note in transition_events(previous, desired):
            self.events.put(live.involved, note.type, note.reason, note.message)
