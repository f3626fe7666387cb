"""kubegate.kubeapi over real HTTP against a scripted API server (aiohttp on a free port).

The e2e suite runs the same code against a real kube-apiserver; this covers
what it cannot provoke on demand: a watch stream the server ends (resume at
the last resourceVersion, bookmarks included), 410 Gone (relist, and objects
that vanished meanwhile are reported DELETED), refused watches (an error,
never a tight reconnect loop) and the exact shape of a server-side apply.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kubegate.kubeapi import ApiError, Informer, KubeApi, api_error, needs_environment, path_for

TOKEN = "Bearer t0ken"
CONFIGMAPS = path_for("v1", "ConfigMap", "ns")


def cm(name: str, version: str) -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": version}}


def line(event_type: str, obj: dict) -> bytes:
    return json.dumps({"type": event_type, "object": obj}).encode() + b"\n"


class FakeApiServer:
    """Answers from a script; records every request it saw."""

    def __init__(self) -> None:
        self.lists = [
            {"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {"resourceVersion": "10"},
             "items": [cm("a", "9")]},
            {"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {"resourceVersion": "20"},
             "items": [cm("b", "19")]},
        ]
        self.streams = [
            [line("ADDED", {"apiVersion": "v1", "kind": "ConfigMap", **cm("c", "11")}),
             line("BOOKMARK", {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"resourceVersion": "12"}})],
            [line("ERROR", {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"})],
            [line("ERROR", {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"})],
        ]
        self.watches: list[dict[str, str]] = []
        self.requests: list[tuple[str, str, dict[str, str], str, str]] = []
        self.closing = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert request.headers.get("Authorization") == TOKEN
        body = await request.text()
        self.requests.append((request.method, request.path, dict(request.query),
                              request.headers.get("Content-Type", ""), body))
        if request.path.endswith("/forbidden"):
            status = {"kind": "Status", "code": 403, "reason": "Forbidden",
                      "message": 'configmaps is forbidden: User "x" cannot watch resource "configmaps"'}
            return web.json_response(status, status=403)
        if request.path.endswith("/empty-refusal"):
            return web.Response(status=401)
        if request.path.endswith("/missing"):
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound", "message": "gone"},
                                     status=404)
        if request.method == "PATCH":
            return web.json_response({**json.loads(body), "metadata": {"resourceVersion": "7"}})
        if request.query.get("watch") != "true":
            return web.json_response(self.lists.pop(0))
        self.watches.append(dict(request.query))
        response = web.StreamResponse()
        await response.prepare(request)
        if not self.streams:
            await self.closing.wait()  # the last watch stays open until the test ends
        for chunk in self.streams.pop(0):
            await response.write(chunk)
        return response  # the server ends the stream (as at timeoutSeconds)


@pytest.fixture
async def served():
    fake = FakeApiServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    cfg = client.Configuration(host=f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}")
    cfg.api_key = {"BearerToken": TOKEN}
    api = KubeApi(cfg)
    yield fake, api
    fake.closing.set()
    await api.close()
    await runner.cleanup()


async def test_informer_resumes_after_stream_end_and_relists_on_410(served):
    fake, api = served
    events: list[tuple[str, str]] = []
    informer = Informer(api, CONFIGMAPS, lambda t, o: events.append((t, o["metadata"]["name"])),
                        label_selector="app=x")
    task = asyncio.create_task(informer.run())
    try:
        for _ in range(200):
            if len(fake.watches) == 4:
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # List at 10; the stream ends after a bookmark at 12, so the watch resumes at 12; 410 Gone
    # (Watch retries once) ends it; the relist at 20 reports what vanished meanwhile.
    assert [w["resourceVersion"] for w in fake.watches] == ["10", "12", "12", "20"]
    assert all(w["labelSelector"] == "app=x" and w["allowWatchBookmarks"] == "true" for w in fake.watches)
    assert events == [("ADDED", "a"), ("ADDED", "c"), ("DELETED", "a"), ("DELETED", "c"), ("ADDED", "b")]
    assert list(informer.objects) == [("ns", "b")]
    assert informer.objects[("ns", "b")]["kind"] == "ConfigMap"  # list items get their kind back


async def test_refused_watches_raise_one_line_errors(served):
    _, api = served
    with pytest.raises(ApiError) as forbidden:
        async for _ in api.watch(CONFIGMAPS + "/forbidden", "1"):
            pass
    assert forbidden.value.status == 403
    assert str(forbidden.value) == ('403 Forbidden: configmaps is forbidden: User "x" cannot watch resource '
                                    '"configmaps"')
    with pytest.raises(ApiError) as empty:  # an empty error body is not the normal end of a stream
        async for _ in api.watch(CONFIGMAPS + "/empty-refusal", "1"):
            pass
    assert empty.value.status == 401


async def test_server_side_apply_get_and_delete(served):
    fake, api = served
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "ns"}, "data": {"k": "v"}}
    answer = await api.apply(obj)
    method, path, query, content_type, body = fake.requests[-1]
    assert (method, path, query, content_type) == (
        "PATCH", "/api/v1/namespaces/ns/configmaps/x", {"fieldManager": "kubegate", "force": "true"},
        "application/apply-patch+yaml")
    assert json.loads(body) == obj
    assert answer["metadata"]["resourceVersion"] == "7"
    assert await api.get(CONFIGMAPS + "/missing") is None
    assert await api.delete(CONFIGMAPS + "/missing") is False
    with pytest.raises(ApiError) as refused:
        await api.create(CONFIGMAPS + "/forbidden", {"metadata": {"name": "y"}})
    assert refused.value.status == 403 and "\n" not in str(refused.value)


def test_library_exceptions_become_one_line():
    raised = ApiException(status=500, reason="Internal Server Error")
    raised.body = '{"kind":"Status","reason":"InternalError","message":"etcd timed out\\n"}'
    assert str(api_error(raised)) == "500 InternalError: etcd timed out"
    raised.body = "<html>bad gateway</html>"
    assert str(api_error(raised)) == "500 Internal Server Error: <html>bad gateway</html>"
    from_event = ApiException(status=410, reason="Expired: too old resource version: 5 (9)")
    error = api_error(from_event)
    assert (error.status, error.reason, error.message) == (410, "Expired", "too old resource version: 5 (9)")


def test_environment_lookups_only_when_a_proxy_or_netrc_is_set():
    assert not needs_environment({"PATH": "/bin", "HOME": "/root"})
    assert needs_environment({"HTTPS_PROXY": "http://proxy:3128"})
    assert needs_environment({"no_proxy": ".svc"})
    assert needs_environment({"NETRC": "/etc/netrc"})
    assert not needs_environment({"HTTPS_PROXY": ""})


async def test_client_skips_per_request_environment_lookups_without_a_proxy(served, monkeypatch):
    _, api = served
    assert api.client.rest_client.pool_manager.trust_env is False
    assert (await api.get(CONFIGMAPS + "/missing")) is None  # still talks through the same connector
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    with_proxy = KubeApi(client.Configuration(host="http://127.0.0.1:1"))
    try:
        assert with_proxy.client.rest_client.pool_manager.trust_env is True
    finally:
        await with_proxy.close()
