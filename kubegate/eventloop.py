"""The event loop every long-running command runs on: uvloop (libuv), asyncio's own loop as the fallback.

uvloop is a dependency (more requests per core: ``KUBEGATE_EVENT_LOOP=asyncio``
with bench/peers.py measures the difference; figures in git log); the fallback exists only for a platform
where it does not install, and says so in one log line. ``KUBEGATE_EVENT_LOOP=asyncio``
picks asyncio's loop on purpose (the A/B of bench/peers.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("kubegate.eventloop")
ENV = "KUBEGATE_EVENT_LOOP"


def loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """(the factory asyncio.Runner takes, a name for logs): uvloop's unless unavailable or refused."""
    if os.environ.get(ENV, "").strip().lower() == "asyncio":
        return None, "asyncio"
    try:
        import uvloop
    except ImportError:
        log.warning("uvloop is not installed: running on asyncio's own event loop (slower)")
        return None, "asyncio"
    return uvloop.new_event_loop, f"uvloop {uvloop.__version__}"


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """What the running loop is, as the startup lines print it: "uvloop" or "asyncio"."""
    loop = loop or asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on the chosen loop."""
    factory, _ = loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
