"""Which object generations a live data-plane replica has actually loaded (pure).

A data-plane replica renews a Lease carrying the config hash it serves. The
operator remembers, for the last few configs it wrote, which generation of
each object that config included; an object is Programmed only when a live
replica's hash maps to its *current* generation. Nothing here does I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kubegate.leases import (  # noqa: F401 - re-exported: the operator reads what the data plane writes
    ReplicaLease,
    parse_time,
    replica_lease,
)


def live_refusals(leases: Iterable[ReplicaLease], now: float) -> dict[str, tuple[str, str]]:
    """"Kind/ns/name" -> (config hash, reason) for objects a live replica could not load from that config."""
    out: dict[str, tuple[str, str]] = {}
    for lease in sorted(leases, key=lambda x: x.name):
        if lease.live(now):
            for key, reason in lease.dropped.items():
                out.setdefault(key, (lease.config_hash, reason))
    return out


def live_hashes(leases: Iterable[ReplicaLease], now: float) -> dict[str, int]:
    """config hash -> number of live replicas serving it (a replica with no config yet counts under "")."""
    counts: dict[str, int] = {}
    for lease in leases:
        if lease.live(now):
            counts[lease.config_hash] = counts.get(lease.config_hash, 0) + 1
    return counts


def next_expiry(leases: Iterable[ReplicaLease], now: float) -> float | None:
    """When the next live lease runs out: the operator must re-evaluate then, with no event to wake it."""
    times = [lease.expires_at for lease in leases if lease.live(now)]
    return min(times) if times else None


class GenerationHistory:
    """Bounded map config hash -> {"Kind/ns/name": generation} of the configs this operator produced."""

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._by_hash: OrderedDict[str, Mapping[str, int]] = OrderedDict()

    def record(self, config_hash: str, generations: Mapping[str, int]) -> None:
        self._by_hash[config_hash] = generations
        self._by_hash.move_to_end(config_hash)
        while len(self._by_hash) > self.limit:
            self._by_hash.popitem(last=False)

    def get(self, config_hash: str) -> Mapping[str, int] | None:
        return self._by_hash.get(config_hash)

    def __len__(self) -> int:
        return len(self._by_hash)


@dataclass(frozen=True)
class Acknowledgement:
    """The programmed facts about one object generation."""

    live_replicas: int  # all live data-plane replicas
    acknowledged_by: int  # live replicas whose config includes this generation
    refused: str = ""  # why a live replica could not load this generation ("" = none refused it)


def acknowledgement(key: str, generation: int, hashes: Mapping[str, int], history: GenerationHistory,
                    refusals: Mapping[str, tuple[str, str]] | None = None) -> Acknowledgement:
    """How many live replicas serve a config that includes ``key`` at ``generation``, and whether one of
    them reported it could not load it (``refusals`` from :func:`live_refusals`)."""
    acked = 0
    for config_hash, replicas in hashes.items():
        generations = history.get(config_hash)
        if generations is not None and generations.get(key) == generation:
            acked += replicas
    refused = ""
    found = refusals.get(key) if refusals else None
    if found is not None:
        generations = history.get(found[0])
        if generations is not None and generations.get(key) == generation:
            refused = found[1]
    return Acknowledgement(live_replicas=sum(hashes.values()), acknowledged_by=acked, refused=refused)
