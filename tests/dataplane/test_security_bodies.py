"""Attacks on routes with a requestSchema, through a real data plane and the real translator.

- a remote ``$ref`` made the gateway fetch any URL when a body arrived (SSRF): proved with a real
  loopback listener that counts the gateway's fetches;
- 100,000 ``[`` gave a 500 and a traceback; NaN/Infinity passed as JSON;
- a body without a JSON Content-Type skipped the schema altogether;
- an unresolvable ``$ref`` passed ``kubegate validate`` and then made every request fail.
"""

from __future__ import annotations

import json
import logging
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aiohttp
import pytest
from kubegate.dataplane.bodies import MAX_JSON_DEPTH

from kubegate.cli import main
from kubegate.config import CompiledConfig, SecretBundle
from kubegate.spec import parse_spec

ANY_JSON: dict = {}  # the empty schema: any JSON document, but JSON it must be


@pytest.fixture
def schema_host():
    """A real HTTP listener on loopback (its own thread: the old fetch blocked the event loop)
    serving a schema and recording every request it gets."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            body = b'{"type": "object"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


async def post(port: int, path: str, data: bytes | str, content_type: str | None = "application/json"):
    headers = {"Content-Type": content_type} if content_type else {}
    async with aiohttp.ClientSession(skip_auto_headers=("Content-Type",)) as session, \
            session.post(f"http://127.0.0.1:{port}{path}", data=data, headers=headers) as r:
        return r.status, await r.read()


async def test_a_remote_ref_is_never_fetched_by_the_data_plane(backend, start_gateway, make_route, schema_host):
    url, hits = schema_host
    b = await backend()
    remote = make_route("/orders/*rest", b.url, name="orders", request_schema={"$ref": f"{url}/schema.json"})
    other = make_route("/ok/*rest", b.url, name="ok")
    gw = await start_gateway(CompiledConfig(routes=(remote, other)), SecretBundle())
    status, _ = await post(gw.ports["http"], "/orders/1", json.dumps({"a": 1}))
    assert hits == [], "the gateway fetched a URL named by a route's schema"
    assert status == 404  # the route with the remote $ref is not loaded ...
    assert "outside the schema" in gw.dropped["GatewayRoute/shop/orders"]
    status, _ = await post(gw.ports["http"], "/ok/1", "{}")
    assert status == 200  # ... and the rest of the config is


@pytest.mark.parametrize("ref", ["http://169.254.169.254/latest/meta-data", "other.json",
                                 "https://json-schema.org/draft/2020-12/schema", "file:///etc/passwd"])
def test_the_translator_refuses_a_remote_ref(ref):
    model, errors = parse_spec("GatewayRoute", {"path": "/x", "backends": [{"url": "http://a"}],
                                                "requestSchema": {"properties": {"a": {"$ref": ref}}}})
    assert model is None
    assert errors[0].field == "spec.requestSchema"
    assert "points outside the schema" in errors[0].reason and "/properties/a" in errors[0].reason


def test_local_refs_anchors_and_embedded_ids_are_accepted():
    schema = {"$id": "https://example.test/order", "$defs": {
        "qty": {"type": "integer"}, "named": {"$anchor": "name", "type": "string"},
        "embedded": {"$id": "https://example.test/item", "type": "object"}},
        "properties": {"q": {"$ref": "#/$defs/qty"}, "n": {"$ref": "#name"}, "i": {"$ref": "item"},
                       "$ref": {"type": "string"}},  # a property called "$ref" is not a reference
        "enum": [{"$ref": "http://not-a-reference.test"}]}
    model, errors = parse_spec("GatewayRoute", {"path": "/x", "backends": [{"url": "http://a"}],
                                                "requestSchema": schema})
    assert errors == [] and model is not None


def test_kubegate_validate_refuses_an_unresolvable_ref(tmp_path, capsys):
    (tmp_path / "route.yaml").write_text(textwrap.dedent("""
        apiVersion: kubegate.dev/v1alpha1
        kind: GatewayRoute
        metadata: {name: orders, namespace: shop}
        spec:
          path: /orders
          backends: [{url: "http://orders"}]
          requestSchema:
            type: object
            properties: {item: {$ref: "#/definitions/item"}}
    """))
    assert main(["validate", "-f", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "GatewayRoute/shop/orders: spec.requestSchema:" in err
    assert "'#/definitions/item' at /properties/item does not resolve inside the schema" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("schema", [ANY_JSON, {"type": ["array", "object"]}], ids=["empty", "typed"])
async def test_deep_nesting_is_a_400_not_a_500(backend, start_gateway, make_route, caplog, schema):
    b = await backend()
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url, request_schema=schema),)))
    port = gw.ports["http"]
    with caplog.at_level(logging.DEBUG):
        status, body = await post(port, "/x", "[" * 100_000)
    assert status == 400 and json.loads(body)["reason"] == "body_too_deep"
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"
    assert (await post(port, "/x", "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH))[0] == 200
    deeper = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    assert (await post(port, "/x", deeper))[0] == 400
    objects = '{"a":' * (MAX_JSON_DEPTH + 1) + "1" + "}" * (MAX_JSON_DEPTH + 1)
    assert (await post(port, "/x", objects))[0] == 400
    assert b.received == [b.received[0]]  # only the one within the limit reached the backend


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a": -Infinity}', '{"a": 1} x', "1" * 5000])
async def test_non_strict_json_is_refused(backend, start_gateway, make_route, text):
    b = await backend()
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url, request_schema=ANY_JSON),)))
    status, body = await post(gw.ports["http"], "/x", text)
    assert status == 400 and json.loads(body)["reason"] == "invalid_json"
    assert b.received == []


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx"])
async def test_a_body_that_is_not_declared_json_gets_415(backend, start_gateway, make_route, content_type):
    b = await backend()
    schema = {"type": "object", "required": ["qty"]}
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url, request_schema=schema),)))
    status, body = await post(gw.ports["http"], "/x", "qty=1", content_type)
    assert status == 415 and json.loads(body)["reason"] == "unsupported_media_type"
    assert b.received == []  # before today's fix the schema was skipped and this reached the backend
    status, _ = await post(gw.ports["http"], "/x", '{"qty": 1}', "application/merge-patch+json; charset=utf-8")
    assert status == 200


async def test_routes_without_a_schema_take_any_body(backend, start_gateway, make_route):
    b = await backend()
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url),)))
    assert (await post(gw.ports["http"], "/x", "[" * 100_000, "text/plain"))[0] == 200
