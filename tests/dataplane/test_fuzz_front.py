"""Hypothesis against the HTTP/1.1 front of the real data plane and its pure parsers (issue 8, item 14).

Raw sockets carry generated request lines, header blocks and chunked bodies to
both fronts (the lean llhttp one and aiohttp's) and to the HTTPS listener. The
gateway must answer below 500 or close, within a few seconds, and log no
traceback. Examples are bounded so the module runs in seconds.
"""

from __future__ import annotations

import logging
import ssl
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubegate.dataplane.target import PathRefused, RequestPath, normalise_request_path, parse_host
from kubegate.dataplane.webfront import ClientTimeouts

from kubegate.config import (
    CompiledAuth,
    CompiledBackend,
    CompiledConfig,
    CompiledRoute,
    CompiledTls,
    SecretBundle,
)
from kubegate.pki import mint_ca, mint_cert

sys.path.insert(0, str(Path(__file__).parent))
from live_gateway import exchange, live_gateway, status_of

FUZZ = settings(max_examples=40, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def pki():
    ca = mint_ca("fuzz CA")
    return ca, mint_cert(ca, "fuzz.test", ("fuzz.test",))


@pytest.fixture(scope="module")
def live(pki):
    _, server = pki

    def config(url: str) -> CompiledConfig:
        def route(name: str, path: str, **fields) -> CompiledRoute:
            return CompiledRoute(id=f"f/{name}", namespace="f", name=name, path=path,
                                 backends=(CompiledBackend(url=url),), **fields)
        return CompiledConfig(
            routes=(route("open", "/*rest"), route("keyed", "/keyed/*rest", auth=CompiledAuth(methods=("apiKey",))),
                    route("items", "/items/:id", methods=("GET", "POST", "TRACE"))),
            tls=(CompiledTls(id="f/tls", hostnames=("fuzz.test",), cert_chain="c", private_key="k"),))

    errors = _Errors()
    for name in ("kubegate", "aiohttp", "asyncio"):
        logging.getLogger(name).addHandler(errors)
    try:
        with live_gateway(config, SecretBundle(values={"c": server.cert_pem, "k": server.key_pem}),
                          timeouts=ClientTimeouts(header=1.0, idle=2.0)) as gateway:
            gateway.errors = errors.records
            yield gateway
    finally:
        for name in ("kubegate", "aiohttp", "asyncio"):
            logging.getLogger(name).removeHandler(errors)


def _tls_ctx(pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=pki[0].cert_pem)
    return ctx


def check(live, response: bytes) -> None:
    """Below 500 or closed without an answer; nothing logged at WARNING or above; never a traceback."""
    code = status_of(response)
    assert code == 0 or 100 <= code < 500, response[:300]
    if code == 0:
        assert response == b"" or not response.startswith(b"HTTP/"), response[:300]
    assert not live.errors, [r.getMessage() for r in live.errors]
    assert b"Traceback" not in response


TOKEN = st.text(alphabet="!#$%&'*+-.^_`|~ABCXYZabcxyz0129", min_size=1, max_size=8)
METHODS = st.one_of(st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT",
                                     "PATCH", "PRI", "get", "M-SEARCH"]), TOKEN)
TARGETS = st.one_of(
    st.sampled_from(["/", "*", "/items/1", "/keyed/x", "http://fuzz.test/x", "fuzz.test:443", "//x", "/a?b#c",
                     "/%2e%2e/x", "/..;/x", "/%00", "/\\x", "/?%", "/" + "a" * 9000]),
    st.text(alphabet="/abc.%2eEfF5;?#=&:@!$'()*+,~-_", min_size=1, max_size=30).map(lambda t: "/" + t),
    st.binary(min_size=1, max_size=12).map(lambda b: "/" + b.decode("latin-1")),
)
VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/2.0", "HTTP/0.9", "http/1.1", "HTTP/1.1 ", ""])
HEADER_NAMES = st.one_of(st.sampled_from(["Host", "Content-Length", "Transfer-Encoding", "Connection", "Expect",
                                          "X-API-Key", "Upgrade", "Cookie", "X-Forwarded-For", " Host", "Host "]),
                         TOKEN)
HEADER_VALUES = st.one_of(
    st.sampled_from(["fuzz.test", "plain.test", "0", "5", "-1", "chunked", "gzip, chunked", "close", "keep-alive",
                     "100-continue", "websocket", "h2c", "x@evil.test", "a.test:evil", "[::1]:80", "1, 2"]),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=20),
    st.binary(max_size=12).map(lambda b: b.decode("latin-1")),
)
HEADERS = st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6)


def _head(method: str, target: str, version: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {target} {version}".rstrip()] + [f"{n}: {v}" for n, v in headers] + ["Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


@FUZZ
@given(METHODS, TARGETS, VERSIONS, HEADERS)
def test_request_lines_and_headers(live, method, target, version, headers):
    head = _head(method, target, version, [("Host", "plain.test"), *headers])
    check(live, exchange(live.http, head, timeout=6))


@FUZZ
@given(METHODS, TARGETS, HEADERS)
def test_request_lines_and_headers_over_tls(live, pki, method, target, headers):
    head = _head(method, target, "HTTP/1.1", [("Host", "fuzz.test"), *headers])
    check(live, exchange(live.https, head, timeout=6, tls=_tls_ctx(pki), server_name="fuzz.test"))


CHUNK_SIZES = st.one_of(st.integers(0, 40).map(lambda n: f"{n:x}"),
                        st.sampled_from(["", "-1", "0x5", "fffffffffffffffffff", "5;ext=1", "5 ", "5\n", " 5", "g"]))


@FUZZ
@given(st.lists(st.tuples(CHUNK_SIZES, st.binary(max_size=40)), max_size=5),
       st.sampled_from(["0\r\n\r\n", "0\r\nX-Trailer: 1\r\n\r\n", "", "0\r\n", "0;x\r\n\r\n"]),
       st.sampled_from(["chunked", "Chunked", "chunked, chunked", "gzip", "chunked\x0b"]),
       st.booleans())
def test_chunked_bodies(live, chunks, end, encoding, with_length):
    body = b"".join(size.encode() + b"\r\n" + data + b"\r\n" for size, data in chunks) + end.encode()
    extra = [("Content-Length", str(len(body)))] if with_length else []
    head = _head("POST", "/items/7", "HTTP/1.1", [("Host", "plain.test"), ("Transfer-Encoding", encoding), *extra])
    check(live, exchange(live.http, head + body, timeout=6, half_close=True))


# --- the pure parsers -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.one_of(st.sampled_from(list("/.%;\\2eEfF5cC0aZ~")), st.characters()), max_size=40))
def test_normaliser_is_total_and_idempotent(raw):
    result = normalise_request_path("/" + raw)
    if isinstance(result, PathRefused):
        assert result.reason  # a fixed phrase, never the path
        return
    assert isinstance(result, RequestPath) and result.path.startswith("/")
    assert "/./" not in result.path + "/" and "/../" not in result.path + "/" and "//" not in result.path
    assert normalise_request_path(result.path) == result  # normalised once means normalised
    assert all(result.segments) and "/".join(result.segments) == result.path.strip("/")


LABEL = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@settings(max_examples=100, deadline=None)
@given(st.lists(LABEL, min_size=1, max_size=4), st.one_of(st.none(), st.integers(0, 65535)), st.booleans())
def test_valid_hosts_parse_to_their_lower_case_name(labels, port, upper):
    name = ".".join(labels)
    value = (name.upper() if upper else name) + ("" if port is None else f":{port}")
    assert parse_host(value) == name


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_host_parser_is_total_and_refuses_what_is_not_a_host(value):
    result = parse_host(value)
    if result is None:
        return
    assert result == result.lower() and not result.endswith(".")
    for char in "@/\\?# \t\r\n\x00":
        assert char not in result
