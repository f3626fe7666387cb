"""The operator's long-lived state leaves the collector's sight, and frozen cyclic garbage still goes."""

from __future__ import annotations

import gc
import weakref

from kubegate.operator.heap import Heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_settle_freezes_and_a_full_collection_comes_only_every_full_every():
    now = [0.0]
    heap = Heap(full_every=600, clock=lambda: now[0])
    try:
        cycle = Node()
        gone = weakref.ref(cycle)
        heap.settle()
        assert gc.get_freeze_count() > 0 and heap.settled == 1
        del cycle
        gc.collect()
        assert gone() is not None  # frozen: a full collection of the others does not see it
        now[0] = 599.0
        heap.settle()
        assert gone() is not None
        now[0] = 600.0
        heap.settle()  # the periodic full collection, over everything
        assert gone() is None
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
