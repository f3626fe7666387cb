"""Property-based: hostile JSON bodies through a real data plane on a schema route (bounded examples).

For any body (random bytes, random JSON values, deep nesting, odd numbers) and any Content-Type
the answer is 200 (valid, forwarded), 400, 413 or 415: never a 5xx, never a traceback, never a
hang (each request has a deadline).
"""

from __future__ import annotations

import json
import logging

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubegate.dataplane.bodies import MAX_JSON_DEPTH, parse_json

from kubegate.config import CompiledConfig

SCHEMA = {"type": "object", "properties": {"qty": {"type": "integer", "minimum": 1},
                                           "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}}},
          "$defs": {"tag": {"type": "string", "maxLength": 8}}}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 3 * MAX_JSON_DEPTH).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 3 * MAX_JSON_DEPTH).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(1, 20_000).map(lambda n: b"[" * n),
    st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999999", b"9" * 5000, b'"\\ud800"', b"\xef\xbb\xbf{}",
                     b'{"qty": 1, "qty": 2}', b"", b" ", b"\x00"]),
)
content_types = st.sampled_from([None, "application/json", "application/json; charset=utf-8",
                                 "application/problem+json", "text/plain", "application/jsonx", "", ";"])


async def test_hostile_bodies_never_get_a_5xx_a_traceback_or_a_hang(backend, start_gateway, make_route, caplog):
    b = await backend()
    gw = await start_gateway(CompiledConfig(routes=(make_route("/*rest", b.url, request_schema=SCHEMA,
                                                               max_body_bytes=64_000),)))
    url = f"http://127.0.0.1:{gw.ports['http']}/orders"
    seen: set[int] = set()
    async with aiohttp.ClientSession(skip_auto_headers=("Content-Type",)) as session:

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(body=bodies, content_type=content_types)
        def run(body: bytes, content_type: str | None) -> None:
            cases.append((body, content_type))  # hypothesis draws; the requests go out below, on this loop

        cases: list[tuple[bytes, str | None]] = []
        run()
        with caplog.at_level(logging.DEBUG):
            for body, content_type in cases:
                headers = {"Content-Type": content_type} if content_type is not None else {}
                async with session.post(url, data=body, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=10)) as r:
                    await r.read()
                    assert r.status in (200, 400, 413, 415), (body[:80], content_type, r.status)
                    seen.add(r.status)
                    if r.status == 200 and body:  # forwarded only as strict JSON satisfying the schema
                        document, problem = parse_json(body)
                        assert problem is None and isinstance(document, dict), (body[:80], content_type)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert {400, 415} <= seen
