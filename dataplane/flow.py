"""Write back-pressure for our asyncio protocols (the client front and the upstream connections).

asyncio tells a protocol when its transport's buffer is full
(``pause_writing``) and drained again (``resume_writing``); a writer that
must not outrun a slow peer awaits :meth:`WriteFlowControl._wait_writable`.
"""

from __future__ import annotations

import asyncio


class WriteFlowControl:
    """Mixin for an ``asyncio.Protocol``: pause/resume writing and an awaitable drain."""

    _write_paused: bool = False
    _drain: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._settle_drain(None)

    def _settle_drain(self, exc: BaseException | None) -> None:
        """Wake a waiting writer: normally, or with ``exc`` when the connection is gone."""
        drain = self._drain
        if drain is not None and not drain.done():
            if exc is None:
                drain.set_result(None)
            else:
                drain.set_exception(exc)

    async def _wait_writable(self) -> None:
        """Return once the transport accepts writes again (at once when it is not paused)."""
        if not self._write_paused:
            return
        self._drain = asyncio.get_running_loop().create_future()
        try:
            await self._drain
        finally:
            self._drain = None
