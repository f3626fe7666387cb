"""A real Jaeger all-in-one (v2, built from hack/jaeger by gobuild.go_tool) on loopback ports, memory storage.

Fixtures ``jaeger`` (import ``jaeger_process`` and ``jaeger_build`` to use them). ``jaeger.otlp`` is its OTLP/HTTP base URL, ``await jaeger.trace(trace_id)`` polls
``/api/traces/<trace id>`` until the trace arrives (None if it never does).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from kubegate import gobuild

JAEGER_PACKAGE = "github.com/jaegertracing/jaeger/cmd/jaeger"

CONFIG = """
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics: {{level: none}}
extensions:
  jaeger_storage:
    backends:
      mem: {{memory: {{max_traces: 10000}}}}
  jaeger_query:
    storage: {{traces: mem}}
    http: {{endpoint: "127.0.0.1:{query}"}}
    grpc: {{endpoint: "127.0.0.1:{query_grpc}"}}
receivers:
  otlp:
    protocols:
      http: {{endpoint: "127.0.0.1:{otlp}"}}
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
"""


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Jaeger:
    otlp: str
    query: str

    async def trace(self, trace_id: str, timeout: float = 15.0) -> dict | None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                async with session.get(f"{self.query}/api/traces/{trace_id}") as resp:
                    if resp.status == 200:
                        data = (await resp.json())["data"]
                        if data and data[0]["spans"]:
                            return data[0]
                await asyncio.sleep(0.2)
        return None


@pytest.fixture(scope="session", name="jaeger_binary")
def jaeger_build() -> Path:
    return gobuild.go_tool("jaeger", package=JAEGER_PACKAGE)


@pytest.fixture(name="jaeger")
def jaeger_process(jaeger_binary, tmp_path):
    ports = {"query": _port(), "query_grpc": _port(), "otlp": _port()}
    config = tmp_path / "jaeger.yaml"
    config.write_text(CONFIG.format(**ports))
    log = (tmp_path / "jaeger.log").open("w")
    proc = subprocess.Popen([str(jaeger_binary), "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    query = f"http://127.0.0.1:{ports['query']}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", ports["otlp"]), 0.2), \
                    socket.create_connection(("127.0.0.1", ports["query"]), 0.2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError("jaeger did not start:\n" + (tmp_path / "jaeger.log").read_text()[-3000:])
            time.sleep(0.1)
    yield Jaeger(f"http://127.0.0.1:{ports['otlp']}", query)
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:  # it drains its pipelines slowly; the memory store needs no flush
        proc.kill()
        proc.wait(5)
    log.close()
