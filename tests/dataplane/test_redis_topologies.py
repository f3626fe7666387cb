"""``--redis-url`` beyond one plain server: a real 3-master Redis Cluster and a real TLS redis-server."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from kubegate.dataplane.devca import mint_ca, mint_cert
from kubegate.dataplane.ratelimit import Charge
from kubegate.dataplane.redis_limits import CircuitBreaker, RedisRateLimiter
from kubegate.dataplane.redis_nodes import parse_redis_url

sys.path.insert(0, str(Path(__file__).parent))
from redis_fixture import RedisCluster, free_port

PASSWORD = "cluster-pass-never-logged-0123"
NAMESPACES = [f"ns{i}" for i in range(12)]  # their hash tags land on all three masters


def charges(namespace: str, requests: int = 5) -> list[Charge]:
    return [Charge(f"kg:{{{namespace}}}:rl:{namespace}/p#0:global", requests, requests, requests / 3600, "global")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = RedisCluster(tmp_path_factory.mktemp("redis-cluster"), password=PASSWORD).start()
    yield c
    c.stop()


async def _admitted(store: RedisRateLimiter, namespace: str, tries: int) -> list[bool]:
    results = await asyncio.gather(*(store.hit(charges(namespace), "closed") for _ in range(tries)))
    assert not any(r.store_unavailable for r in results), [type(r) for r in results]
    return [r.allowed for r in results]


@pytest.mark.parametrize("form", ["node-list", "cluster=true", "one-node-plain"])
async def test_every_namespace_is_limited_exactly_on_a_three_master_cluster(cluster, form):
    ports = [n.port for n in cluster.nodes]
    url = {
        "node-list": f"redis://:{PASSWORD}@" + ",".join(f"127.0.0.1:{p}" for p in ports),
        "cluster=true": f"redis://:{PASSWORD}@127.0.0.1:{ports[1]}/0?cluster=true",
        "one-node-plain": f"redis://:{PASSWORD}@127.0.0.1:{ports[2]}/0",  # MOVED teaches it the slot map
    }[form]
    cluster_keys = cluster.keys_per_node()
    store = RedisRateLimiter(url, timeout=0.5)
    namespaces = [f"{form}-{ns}" for ns in NAMESPACES]
    try:
        for ns in namespaces:  # one batch per namespace, 7 concurrent requests: 5 pass, 2 refused
            assert sorted(await _admitted(store, ns, 7)) == [False] * 2 + [True] * 5, ns
        # All namespaces at once, in one batch spread over three nodes: every one is exhausted.
        together = await asyncio.gather(*(store.hit(charges(ns), "closed") for ns in namespaces))
        assert [r.allowed for r in together] == [False] * len(namespaces)
    finally:
        await store.close()
    added = [after - before for after, before in zip(cluster.keys_per_node(), cluster_keys)]
    assert sum(added) == len(namespaces) and all(n > 0 for n in added), added  # keys on every master


async def test_script_is_loaded_on_each_node_after_a_flush(cluster):
    url = f"redis://:{PASSWORD}@" + ",".join(f"127.0.0.1:{n.port}" for n in cluster.nodes)
    store = RedisRateLimiter(url, timeout=0.5)
    try:
        for ns in NAMESPACES:
            assert (await store.hit(charges(f"flush-{ns}"), "closed")).allowed
        for node in cluster.nodes:
            assert node.command("SCRIPT", "FLUSH", password=PASSWORD).startswith(b"+OK")
        for ns in NAMESPACES:  # NOSCRIPT on every node: EVAL caches it again there
            result = await store.hit(charges(f"flush-{ns}"), "closed")
            assert result.allowed and result.remaining == 3
    finally:
        await store.close()


# --- TLS --------------------------------------------------------------------------------------


class TlsRedis:
    def __init__(self, directory: Path) -> None:
        self.ca = mint_ca("redis test CA")
        leaf = mint_cert(self.ca, "redis.test", ("localhost", "127.0.0.1"))
        self.ca_path, cert, key = directory / "ca.pem", directory / "redis.pem", directory / "redis-key.pem"
        self.ca_path.write_text(self.ca.cert_pem)
        cert.write_text(leaf.cert_pem)
        key.write_text(leaf.key_pem)
        self.port = free_port()
        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
             "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(self.ca_path),
             "--tls-auth-clients", "no", "--requirepass", PASSWORD, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        context = ssl.create_default_context(cafile=str(self.ca_path))
        deadline = time.monotonic() + 5
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw, \
                        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    tls.sendall(b"PING\r\n")
                    if tls.recv(16).startswith(b"-NOAUTH"):
                        return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=5)


@pytest.fixture
def tls_redis(tmp_path):
    server = TlsRedis(tmp_path)
    yield server
    server.stop()


async def test_rediss_with_the_ca_limits_exactly(tls_redis):
    url = f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis.port}/0?ssl_ca_certs={tls_redis.ca_path}"
    store = RedisRateLimiter(url, timeout=2.0)  # a first TLS connection (context, handshake) takes ~0.3 s here
    try:
        assert sorted(await _admitted(store, "tls", 7)) == [False] * 2 + [True] * 5
    finally:
        await store.close()


async def test_rediss_with_a_wrong_ca_fails_cleanly(tls_redis, tmp_path, caplog):
    wrong = tmp_path / "wrong-ca.pem"
    wrong.write_text(mint_ca("someone else's CA").cert_pem)
    url = f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis.port}/0?ssl_ca_certs={wrong}"
    store = RedisRateLimiter(url, timeout=2.0, breaker=CircuitBreaker(threshold=1, cooldown=60))
    try:
        with caplog.at_level(logging.WARNING, "kubegate.ratelimit"):
            closed = await store.hit(charges("tls-wrong"), "closed")
            opened = await store.hit(charges("tls-wrong"), "open")
        assert closed.store_unavailable and not closed.allowed
        assert opened.store_unavailable and opened.allowed
        assert "certificate verify failed" in caplog.text and PASSWORD not in caplog.text
    finally:
        await store.close()


@pytest.mark.parametrize(("url", "error"), [
    ("redis://127.0.0.1:1,127.0.0.1:2/3", "a Redis Cluster has only database 0"),
    ("redis://127.0.0.1:6379/0?ssl_ca_certs=/etc/hostname", "ssl_ca_certs needs a rediss:// (TLS) URL"),
    ("rediss://127.0.0.1:6379/0?ssl_ca_certs=/no/such/ca.pem", "ssl_ca_certs: no such file '/no/such/ca.pem'"),
    ("redis://127.0.0.1:x,127.0.0.1:2", "redis URL port must be a number"),
    ("redis+cluster://127.0.0.1:1", "redis URL must start with redis:// or rediss://, not 'redis+cluster'"),
])
def test_bad_redis_urls_are_one_clear_reason(url, error):
    with pytest.raises(ValueError) as info:
        parse_redis_url(url)
    assert str(info.value) == error


async def test_kubegate_run_takes_a_cluster_node_list_with_password_from_the_environment(cluster, backend, tmp_path):
    """KUBEGATE_REDIS_URL (as a Deployment sets it from a Secret): the password is in no argument and no log."""
    from run_process import _collect, _read_ports
    from test_failure_local import _load, _manifests

    b = await backend()
    (tmp_path / "gateway.yaml").write_text(_manifests(b.port).replace("failureMode: local", "failureMode: closed"))
    url = f"redis://:{PASSWORD}@" + ",".join(f"127.0.0.1:{n.port}" for n in cluster.nodes)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1",
           "KUBEGATE_REDIS_URL": url, "KUBEGATE_HOST": "127.0.0.1", "KUBEGATE_HTTP_PORT": "0",
           "KUBEGATE_HTTPS_PORT": "0", "KUBEGATE_ADMIN_PORT": "0"}
    args = [sys.executable, "-m", "kubegate.cli", "run", "-f", str(tmp_path / "gateway.yaml")]
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=env)
    lines: list[str] = []
    try:
        ports = await _read_ports(proc.stderr, lines)
        collectors = [asyncio.create_task(_collect(proc.stderr, lines)), asyncio.create_task(_collect(proc.stdout, lines))]
        assert PASSWORD not in Path(f"/proc/{proc.pid}/cmdline").read_text()
        counts: dict[int, int] = {}
        async with aiohttp.ClientSession() as session:
            await _load(session, f"http://127.0.0.1:{ports['http']}/limited/x", 1.0, counts)
        assert counts.get(200) == 10 and set(counts) == {200, 429}, counts  # Redis Cluster decided, exactly
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)
        await asyncio.gather(*collectors)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert PASSWORD not in "".join(lines) and "Traceback" not in "".join(lines)
