"""Slow clients against ``kubegate run`` (issue 8, item 6): a head sent at 1 byte/s, and silence.

Before the fix, a plain-HTTP connection dripping its headers was held for 75 s
and an HTTPS one indefinitely. Here the limits come from the command line and
from ``KUBEGATE_HEADER_TIMEOUT``, as a Deployment would set them; each case
measures how long the gateway kept the connection and must stay under the
limit plus the sweep's slack.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from echo_route import echo_route

HEADER, IDLE = 2.0, 3.0
SLACK = 1.5  # the lean front's sweep runs every header/4 s; scheduling on a shared CI machine
GIVE_UP = 12.0
DRIP = b"GET /slow HTTP/1.1\r\nHost: slow.test\r\nX-Padding: " + b"a" * 200


def _manifests(port: int) -> str:
    return echo_route(port) + """---
apiVersion: kubegate.dev/v1alpha1
kind: TLSPolicy
metadata: {name: tls, namespace: kubegate-system}
spec:
  hostnames: ["tls.test"]
  certificate: {issuerRef: {name: dev, kind: ClusterIssuer}}
"""


@pytest.fixture
async def gateway(backend, tmp_path, kubegate_run):
    b = await backend()
    (tmp_path / "gw.yaml").write_text(_manifests(b.port))
    running = await kubegate_run(tmp_path / "gw.yaml", args=("--idle-timeout", f"{IDLE:g}s"),
                                 env={"KUBEGATE_HEADER_TIMEOUT": f"{HEADER:g}s"})
    ca = next(Path(tmp_path / "cache").rglob("ca.crt"))
    yield {"http": running.ports["http"], "https": running.ports["https"], "ca": ca.read_text()}
    await running.stop()


async def _open(gateway, tls: bool):
    if not tls:
        return await asyncio.open_connection("127.0.0.1", gateway["http"])
    ctx = ssl.create_default_context(cadata=gateway["ca"])
    return await asyncio.open_connection("127.0.0.1", gateway["https"], ssl=ctx, server_hostname="tls.test")


async def held_for(gateway, *, tls: bool, first: bytes = b"", drip: bytes = b"") -> float:
    """Seconds until the gateway closes a connection that sends ``first``, then ``drip`` at 1 byte/s."""
    loop = asyncio.get_running_loop()
    reader, writer = await _open(gateway, tls)
    if first:
        writer.write(first)
        await reader.readuntil(b"\r\n\r\n")  # the first answer; its small JSON body follows
    started = loop.time()

    async def dripping() -> None:
        for byte in drip:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(1)

    sender = asyncio.create_task(dripping())
    try:
        while await asyncio.wait_for(reader.read(65536), GIVE_UP - (loop.time() - started)):
            pass
    except (ConnectionError, ssl.SSLError):
        pass
    except TimeoutError:
        return float("inf")
    finally:
        sender.cancel()
        writer.close()
    return loop.time() - started


async def test_slow_heads_and_idle_connections_are_cut_on_both_listeners(gateway):
    keepalive = b"GET /k HTTP/1.1\r\nHost: %s\r\n\r\n"
    with_body = b"POST /k HTTP/1.1\r\nHost: plain.test\r\nContent-Length: 2\r\n\r\nhi"  # aiohttp's front
    cases = {
        "http: head at 1 byte/s": held_for(gateway, tls=False, drip=DRIP),
        "https: head at 1 byte/s": held_for(gateway, tls=True, drip=DRIP.replace(b"slow.test", b"tls.test")),
        "http, aiohttp's front: second head at 1 byte/s": held_for(gateway, tls=False, first=with_body, drip=DRIP),
        "https: second head at 1 byte/s": held_for(gateway, tls=True, first=keepalive % b"tls.test",
                                                   drip=DRIP.replace(b"slow.test", b"tls.test")),
        "http: silent": held_for(gateway, tls=False),
        "https: silent after the handshake": held_for(gateway, tls=True),
        "http: idle keep-alive": held_for(gateway, tls=False, first=keepalive % b"plain.test"),
        "https: idle keep-alive": held_for(gateway, tls=True, first=keepalive % b"tls.test"),
    }
    held = dict(zip(cases, await asyncio.gather(*cases.values())))
    print("seconds each connection was held:", {k: round(v, 2) for k, v in held.items()})
    for name, seconds in held.items():
        limit = HEADER if "1 byte/s" in name else IDLE
        assert seconds <= limit + SLACK, (name, seconds)
        assert seconds >= limit - 0.5, (name, seconds)  # the limit, not something shorter
