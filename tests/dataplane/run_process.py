"""Reading a ``kubegate run`` subprocess: its ports from the "listening" line, and its output."""

from __future__ import annotations

import asyncio
import re


async def _read_ports(stream: asyncio.StreamReader, lines: list[str]) -> dict[str, int]:
    while True:
        line = (await asyncio.wait_for(stream.readline(), 30)).decode()
        if not line:
            raise AssertionError("kubegate run exited early:\n" + "".join(lines))
        lines.append(line)
        found = re.search(r"listening: http://[^:]+:(\d+) https://[^:]+:(\d+) admin http://[^:]+:(\d+)", line)
        if found:
            return dict(zip(("http", "https", "admin"), map(int, found.groups())))


async def _collect(stream: asyncio.StreamReader, lines: list[str]) -> None:
    async for line in stream:
        lines.append(line.decode())
