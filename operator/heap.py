"""The garbage collector and the operator's long-lived state.

At 10,000 routes the operator holds ~450,000 tracked objects (its picture of
the cluster, the translator's memo, the last result). Every pass allocates a
few tens of thousands more (verdicts, acknowledgements, status facts), which
makes Python run full collections that walk all of them: measured at 10,000
routes, 12 full collections in 40 single-route changes, 16 s in total and up
to 2.8 s each, landing on whichever change comes next. The translator pauses
the collector while it runs (in a worker thread, so for the whole process):
what piled up meanwhile was then collected on the event loop by the next
allocation, inside the status sync (bench/operator.py at 3,000 routes: the
sync's loop header was its most expensive line). So right after a
translation everything is frozen (``gc.freeze``, O(1), no collection): out
of the collector's sight. A frozen object is still freed by reference
counting; only cyclic garbage among frozen objects would stay, so every
``full_every`` seconds a full collection runs over everything first.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable


class Heap:
    def __init__(self, full_every: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.full_every, self.clock = full_every, clock
        self._full_at = clock()
        self.settled = 0  # times the state was frozen (for tests and metrics)

    def settle(self) -> None:
        """After a translation: freeze what is there (now and then after a full collection)."""
        if self.clock() - self._full_at >= self.full_every:
            gc.unfreeze()
            gc.collect()
            self._full_at = self.clock()
        gc.freeze()
        self.settled += 1
