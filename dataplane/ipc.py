"""Messages between the supervisor and its workers: length-prefixed pickles over unix sockets.

Both ends are kubegate processes of the same user; the sockets live in a
directory only that user can open (mode 0700, made by the supervisor), so
what arrives was sent by one of them. Config snapshots (secrets included)
travel this way and are never written to disk.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from collections.abc import Callable

HEADER = struct.Struct("!I")
MAX_FRAME = 1 << 30  # a config of 10,000 routes and 100,000 keys pickles to tens of MiB


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def encode(message: object) -> bytes:
    return frame(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


async def send(writer: asyncio.StreamWriter, message: object) -> None:
    writer.write(encode(message))
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> object:
    """The next message; asyncio.IncompleteReadError when the other end has gone."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if size > MAX_FRAME:
        raise ValueError(f"message of {size} bytes refused")
    return pickle.loads(await reader.readexactly(size))


class FrameProtocol(asyncio.Protocol):
    """A stream of frames, each handed to ``on_frame(payload)`` in order (the high-rate channel:
    no task and no stream reader per message)."""

    def __init__(self, on_frame: Callable[[bytes], None], on_lost: Callable[[], None] | None = None) -> None:
        self._on_frame, self._on_lost = on_frame, on_lost
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start, end = 0, len(buffer)
        while end - start >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer, start)
            if end - start - HEADER.size < size:
                break
            begin = start + HEADER.size
            start = begin + size
            self._on_frame(bytes(buffer[begin:start]))
        del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._on_lost is not None:
            self._on_lost()
