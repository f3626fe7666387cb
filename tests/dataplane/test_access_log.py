"""--access-log on the real `kubegate run`: one JSON line per request on stdout, fields right, no credential."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import jwt
import yaml

HMAC = "access-log-test-hmac-secret-0123456789abcdef0123"
API_KEY = "kg_GaskNRmsqHu2d7zQskzRVCGofweaqcedI0L876y8gFO_3e24kE"  # examples/40-apikey-acme.yaml (EXAMPLE ONLY)


def _manifests(url: str) -> str:
    docs = [
        {"apiVersion": "kubegate.dev/v1alpha1", "kind": "GatewayRoute", "metadata": {"name": "jwt", "namespace": "shop"},
         "spec": {"path": "/jwt/*rest", "backends": [{"url": url}],
                  "auth": {"methods": ["jwt"], "jwt": {"issuer": "https://issuer.test", "audiences": ["api"],
                                                       "algorithms": ["HS256"],
                                                       "secretRef": {"name": "hmac", "key": "secret"}}}}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hmac", "namespace": "shop"},
         "stringData": {"secret": HMAC}},
        {"apiVersion": "kubegate.dev/v1alpha1", "kind": "GatewayRoute", "metadata": {"name": "keyed", "namespace": "shop"},
         "spec": {"path": "/keyed/*rest", "backends": [{"url": url}], "auth": {"methods": ["apiKey"]}}},
        {"apiVersion": "kubegate.dev/v1alpha1", "kind": "ApiKey", "metadata": {"name": "acme", "namespace": "shop"},
         "spec": {"secretRef": {"name": "acme-key", "key": "api-key"}}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "acme-key", "namespace": "shop"},
         "stringData": {"api-key": API_KEY}},
        {"apiVersion": "kubegate.dev/v1alpha1", "kind": "GatewayRoute", "metadata": {"name": "open", "namespace": "shop"},
         "spec": {"path": "/open/*rest", "backends": [{"url": url}]}},
    ]
    return yaml.safe_dump_all(docs)


async def _lines(gateway, count: int) -> list[dict]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in "".join(gateway.out_lines).splitlines() if line.strip()]
        access = [line for line in lines if line.get("log") == "access"]
        assert all("event" in line for line in lines if line not in access)  # the rest is the audit log
        if len(access) >= count:
            return access
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} access-log lines, got: {gateway.out_lines}")


async def test_one_json_line_per_request_with_fields_and_never_a_credential(backend, kubegate_run, tmp_path):
    echo = await backend("echo")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "all.yaml").write_text(_manifests(echo.url))
    gateway = await kubegate_run(folder, args=("--access-log",))
    base = f"http://127.0.0.1:{gateway.ports['http']}"
    token = jwt.encode({"iss": "https://issuer.test", "aud": "api", "sub": "alice", "exp": int(time.time()) + 300},
                       HMAC, algorithm="HS256")
    async with aiohttp.ClientSession() as session:
        async def call(method, path, headers=None):
            async with session.request(method, base + path, headers=headers or {}) as resp:
                return resp.status, len(await resp.read()), resp.headers.get("X-Request-Id")

        sent = [
            await call("GET", "/jwt/a?token=" + token, {"Authorization": f"Bearer {token}"}),
            await call("GET", "/jwt/b", {"Authorization": "Bearer not.a.valid-token"}),
            await call("GET", "/keyed/c?api_key=" + API_KEY, {"X-API-Key": API_KEY}),
            await call("POST", "/open/d", {"X-Request-Id": "caller-chosen-id"}),
            await call("GET", "/nowhere"),
            await call("HEAD", "/open/e"),
        ]
    lines = await _lines(gateway, len(sent))
    assert len(lines) == len(sent), lines  # one line per request, nothing else on stdout
    stdout = "".join(gateway.out_lines)
    assert token not in stdout and API_KEY not in stdout and "not.a.valid-token" not in stdout
    assert token.split(".")[2] not in stdout
    assert token not in gateway.logs and API_KEY not in gateway.logs  # nor on stderr (audit log)
    for line, (status, size, rid) in zip(lines, sent):
        assert set(line) == {"log", "time", "request_id", "method", "path", "route", "status", "bytes", "upstream_time",
                             "total_time", "client", "auth", "subject", "key_id"}
        assert line["status"] == status and line["request_id"] == rid and line["client"] == "127.0.0.1"
        assert line["bytes"] == size
        assert line["time"].endswith("Z") and line["total_time"] >= 0
    ok_jwt, bad_jwt, keyed, open_, miss, head = lines
    assert (ok_jwt["route"], ok_jwt["path"], ok_jwt["auth"], ok_jwt["subject"], ok_jwt["key_id"]) == \
        ("shop/jwt", "/jwt/a", "authenticated", "jwt:alice", None)
    assert ok_jwt["upstream_time"] is not None and ok_jwt["upstream_time"] <= ok_jwt["total_time"]
    assert (bad_jwt["status"], bad_jwt["auth"], bad_jwt["upstream_time"], bad_jwt["subject"]) == \
        (401, "refused", None, None)
    assert keyed["status"] == 200 and keyed["auth"] == "authenticated" and keyed["key_id"]
    assert keyed["subject"] == f"apikey:{keyed['key_id']}" and keyed["path"] == "/keyed/c"
    assert (open_["method"], open_["request_id"], open_["auth"], open_["route"]) == \
        ("POST", "caller-chosen-id", "none", "shop/open")
    assert (miss["status"], miss["route"], miss["upstream_time"]) == (404, None, None)
    assert head["method"] == "HEAD" and head["bytes"] == 0


async def test_no_access_log_without_the_flag(backend, kubegate_run, tmp_path):
    echo = await backend("echo")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "all.yaml").write_text(_manifests(echo.url))
    gateway = await kubegate_run(folder)
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{gateway.ports['http']}/open/x") as resp:
        assert resp.status == 200
    await gateway.stop()
    assert "".join(gateway.out_lines).strip() == ""
