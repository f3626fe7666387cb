"""The debounce window of the reconcile loop: many watch events, one pass.

A pass starts after a quiet moment (``debounce``), but never later than
``max_wait`` after the first change. Once a window has seen ``burst_events``
config changes it is a burst: the quiet moment must last ``burst_debounce``
and the window may stretch to ``burst_max_wait``, so 1,000 CRs trickling in
from ``kubectl create`` cost a handful of ConfigMap writes, not one per pause
between two of them. A window cut off by its time limit mid-burst makes the
next one a burst window from the start.
"""

from __future__ import annotations

import asyncio
import time


class DebounceWindow:
    def __init__(self, debounce: float = 0.03, max_wait: float = 1.0, burst_events: int = 50,
                 burst_debounce: float = 0.15, burst_max_wait: float = 3.0) -> None:
        self.debounce, self.max_wait = debounce, max_wait
        self.burst_events, self.burst_debounce, self.burst_max_wait = burst_events, burst_debounce, burst_max_wait
        self.changes = 0  # config-relevant marks since the current window opened
        self.bursting = False  # the last window was cut short by its time limit in a burst
        self._wake = asyncio.Event()

    def mark(self, counts: bool = True) -> None:
        """Something changed; ``counts``: a config change (burst detection counts only those)."""
        if counts:
            self.changes += 1
        self._wake.set()

    @property
    def pending(self) -> bool:
        """A change arrived that no pass has picked up yet."""
        return self._wake.is_set()

    async def arrival(self, timeout: float | None) -> bool:
        """Wait for the first change of a window; False when ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """After the first change: wait for the quiet moment or the time limit, then start afresh."""
        first = time.monotonic()
        while True:
            self._wake.clear()
            burst = self.bursting or self.changes >= self.burst_events
            await asyncio.sleep(self.burst_debounce if burst else self.debounce)
            limit = self.burst_max_wait if burst else self.max_wait
            if not self._wake.is_set():
                self.bursting = False  # a quiet moment: whatever burst there was has ended
                break
            if time.monotonic() - first >= limit:
                self.bursting = burst  # still going: the next window starts as a burst
                break
        self._wake.clear()
        self.changes = 0
