"""Where the rate-limit store lives, from ``--redis-url``: one Redis server or a Redis Cluster.

URL forms (see README):

- ``redis://[user:password@]host:port[/db]``, ``rediss://...`` (TLS): one server;
- ``redis://host1:port1,host2:port2,...`` (a node list) or ``...?cluster=true``:
  a Redis Cluster; the nodes named are only seeds, the slot map comes from
  ``CLUSTER SLOTS`` and is read again whenever a node answers ``MOVED``/``ASK``
  or cannot be reached;
- ``rediss://...?ssl_ca_certs=/path/ca.pem``: verify the servers against that CA
  (default: the system's trust store); hostnames are checked either way.

The password belongs in the URL given as ``KUBEGATE_REDIS_URL`` (from a
Secret), never in a Pod's args. Every connection is made by redis-py's own
``Connection`` (TCP or TLS, AUTH, SELECT: all of the URL's options as redis-py
reads them); then a :class:`Wire` takes its transport over, on which the rate
limiter writes its packed script calls (see kubegate.dataplane.redis_limits).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, NoScriptError, ResponseError
from redis.retry import Retry

OUR_QUERY = ("cluster", "ssl_ca_certs")  # read here; redis-py never sees them
TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class RedisTarget:
    seeds: tuple[tuple[str, int], ...]  # (host, port) of every node the URL names
    cluster: bool
    scheme: str  # redis | rediss
    userinfo: str  # "user:password@" or ""
    db: int
    query: str  # redis-py query parameters, passed to every node
    ssl_ca_certs: str | None

    def node_url(self, host: str, port: int) -> str:
        netloc = f"{self.userinfo}[{host}]:{port}" if ":" in host else f"{self.userinfo}{host}:{port}"
        return urlunsplit((self.scheme, netloc, f"/{self.db}", self.query, ""))


def parse_redis_url(url: str) -> RedisTarget:
    """``--redis-url`` -> RedisTarget; ValueError names what is wrong (never echoing the password)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"redis URL must start with redis:// or rediss://, not {parts.scheme or 'no scheme'!r}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    seeds = []
    for node in hosts.split(","):
        try:
            parsed = urlsplit(f"//{node}")
            host, port = parsed.hostname, parsed.port or 6379
        except ValueError:
            raise ValueError("redis URL port must be a number") from None
        if not host:
            raise ValueError("redis URL names a node without a host")
        seeds.append((host, port))
    db_text = parts.path.strip("/")
    if db_text and not db_text.isdigit():
        raise ValueError(f"redis URL database must be a number, not {db_text!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in OUR_QUERY}
    cluster = len(seeds) > 1 or ours.get("cluster", "").lower() in TRUE
    if cluster and int(db_text or 0) != 0:
        raise ValueError("a Redis Cluster has only database 0")
    ca = ours.get("ssl_ca_certs") or None
    if ca is not None:
        if parts.scheme != "rediss":
            raise ValueError("ssl_ca_certs needs a rediss:// (TLS) URL")
        if not Path(ca).is_file():
            raise ValueError(f"ssl_ca_certs: no such file {ca!r}")
    return RedisTarget(tuple(seeds), cluster, parts.scheme, f"{userinfo}@" if userinfo else "", int(db_text or 0),
                       urlencode([(k, v) for k, v in query if k not in OUR_QUERY]), ca)


CONNECT_TIMEOUT = 5.0  # seconds to reach a store; each request still waits at most its own deadline


class Wire(asyncio.Protocol):
    """One connection as the rate limiter uses it: replies parsed by hiredis as they arrive, each
    handed to the next waiter in send order, from the event loop's read callback itself. No task,
    stream or await per reply: that machinery (redis-py's read_response) cost more per request
    than the script call it read. Connecting, TLS and AUTH/SELECT stay redis-py's (see
    RedisNode.connect); the transport is taken over afterwards."""

    def __init__(self, transport: asyncio.Transport, on_lost: Callable[[Wire, Exception], object]) -> None:
        self.transport = transport
        self._reader = hiredis.Reader()  # error replies come back as hiredis.ReplyError values
        self._waiters: deque[Callable[[object], object]] = deque()
        self._on_lost = on_lost
        self.open = True

    def send(self, data: bytes, waiters: list[Callable[[object], object]]) -> None:
        """Write requests; ``waiters[i]`` is called with the i-th reply (a value or an exception)."""
        self._waiters.extend(waiters)
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiters = self._waiters
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.close(ConnectionError(f"redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not waiters:  # a reply nobody asked for: this stream cannot be trusted
                self.close(ConnectionError("redis sent a reply nobody asked for"))
                return
            if isinstance(reply, hiredis.ReplyError):
                reply = reply_error(str(reply))
            waiters.popleft()(reply)

    def eof_received(self) -> bool:
        return False  # close: the server is gone

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(ConnectionError(f"redis closed the connection ({exc or 'end of stream'})"))

    def close(self, error: Exception) -> None:
        """Never reuse a stream with replies unread: the waiters get ``error``."""
        self.transport.close()
        self._lost(error)

    def _lost(self, error: Exception) -> None:
        if not self.open:
            return
        self.open = False
        waiters, self._waiters = self._waiters, deque()
        self._on_lost(self, error)
        for waiter in waiters:
            waiter(error)


def reply_error(message: str) -> ResponseError:
    """An error reply as redis-py's exception class (NoScriptError, MovedError, AskError, ...)."""
    code, _, rest = message.partition(" ")
    kind = _ERROR_KINDS.get(code)
    if kind is not None:
        try:
            return kind(rest)
        except ValueError:  # a MOVED/ASK without "slot host:port": a plain error
            pass
    return ResponseError(message)


_ERROR_KINDS: dict[str, type[ResponseError]] = {"NOSCRIPT": NoScriptError, "MOVED": MovedError, "ASK": AskError}


class RedisNode:
    """One server and the one connection (a :class:`Wire`) the rate limiter's batches use on it."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.conn: Connection | None = None  # redis-py's, for connecting; its transport is the Wire's
        self.wire: Wire | None = None
        self._connecting: asyncio.Task | None = None

    async def connection(self) -> Wire:
        """The open Wire. Connecting (DNS, TCP, TLS, AUTH) runs in its own task that a request's
        100 ms deadline does not cancel: a store that takes longer to reach than one decision
        allows is still reached, and later requests use the connection."""
        wire = self.wire
        if wire is not None and wire.open:
            return wire
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> Wire:
        conn = self.conn
        if conn is None:
            conn = self.conn = await self.client.connection_pool.get_connection()
        if conn.is_connected:  # the stream of a Wire that was closed
            await conn.disconnect(nowait=True)
        await conn.connect()  # TCP, TLS, AUTH, SELECT: every option of the URL, as redis-py reads it
        stream, transport = conn._reader, conn._writer.transport
        parsed = getattr(conn._parser, "_reader", None)  # hiredis's reader: what it read and did not hand out
        if stream is None or stream._buffer or (parsed is not None and parsed.has_data()):
            await conn.disconnect(nowait=True)
            raise ConnectionError("redis sent data nobody asked for while connecting")
        self.wire = Wire(transport, self._lost)
        transport.set_protocol(self.wire)
        return self.wire

    def _lost(self, wire: Wire, error: Exception) -> None:
        if self.wire is wire:
            self.wire = None

    def disconnect(self, error: Exception) -> None:
        """Close the connection; whatever waits on it gets ``error``."""
        if self.wire is not None:
            self.wire.close(error)

    async def close(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        self.disconnect(ConnectionError("rate limiter closed"))
        if self.conn is not None:
            await self.conn.disconnect(nowait=True)
            await self.client.connection_pool.release(self.conn)
            self.conn = None
        await self.client.aclose()


class RedisNodes:
    """Which node serves a request's slot group: the one server, or the cluster's slot owner."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self.target = parse_redis_url(url)
        self.cluster = self.target.cluster
        self._timeout = timeout
        self._nodes: dict[tuple[str, int], RedisNode] = {}
        self._slots: list[tuple[str, int]] | None = None  # slot -> (host, port); None: to be read
        self._refreshing: asyncio.Task | None = None

    def node(self, address: tuple[str, int]) -> RedisNode:
        node = self._nodes.get(address)
        if node is None:
            extra = {"ssl_ca_certs": self.target.ssl_ca_certs} if self.target.ssl_ca_certs else {}
            client = aioredis.Redis.from_url(
                self.target.node_url(*address),
                # Connecting runs beside the requests (RedisNode.connection), so it may take
                # longer than one decision's deadline: DNS + TCP + TLS on a busy node often do.
                socket_connect_timeout=max(self._timeout, CONNECT_TIMEOUT),
                # No socket timeout: redis-py's would also fire when the event loop,
                # not Redis, was slow (and costs a task per write); Deadline decides.
                socket_timeout=None,
                retry=Retry(NoBackoff(), 0),
                # RESP2 without CLIENT SETINFO: a fresh connection needs no round
                # trip of its own (HELLO, SETINFO) before the first batch.
                protocol=2,
                driver_info=None,
                **extra,
            )
            self._nodes[address] = node = RedisNode(client)
        return node

    async def node_for(self, group: str) -> RedisNode:
        """The node holding ``group``'s slot (the hash tag's content, see _Wire.group)."""
        if not self.cluster:
            return self.node(self.target.seeds[0])
        if self._slots is None:
            await self.refresh()
        assert self._slots is not None
        return self.node(self._slots[key_slot(group.encode())])

    def known_node_for(self, group: str) -> RedisNode | None:
        """node_for without waiting: None while a cluster's slot map is still to be read."""
        if not self.cluster:
            return self.node(self.target.seeds[0])
        slots = self._slots
        return None if slots is None else self.node(slots[key_slot(group.encode())])

    def forget_slots(self) -> None:
        """A MOVED/ASK reply or an unreachable node: read the slot map again before the next batch."""
        if self.cluster:
            self._slots = None

    async def refresh(self) -> None:
        """The slot map from the first seed (or known node) that answers CLUSTER SLOTS."""
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._read_slots())
        task = self._refreshing
        try:
            await asyncio.shield(task)
        finally:
            if task.done() and self._refreshing is task:
                self._refreshing = None

    async def _read_slots(self) -> None:
        candidates = list(dict.fromkeys([*self.target.seeds, *self._nodes]))
        error: Exception = ConnectionError("no Redis Cluster node answered")
        for address in candidates:
            try:
                reply = await self.node(address).client.execute_command("CLUSTER", "SLOTS")
            except Exception as exc:  # noqa: BLE001 - the next seed may answer
                error = exc
                continue
            slots: list[tuple[str, int]] = [address] * 16384
            for entry in reply:
                start, end, primary = entry[0], entry[1], entry[2]
                host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
                owner = (host or address[0], int(primary[1]))
                for slot in range(int(start), int(end) + 1):
                    slots[slot] = owner
            self._slots = slots
            return
        raise error

    def disconnect(self, error: Exception) -> None:
        for node in self._nodes.values():
            node.disconnect(error)

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        for node in self._nodes.values():
            await node.close()
        self._nodes.clear()
