"""The request-target parsers (target.py) case by case; test_fuzz_front.py fuzzes the same functions."""

from __future__ import annotations

import pytest
from kubegate.dataplane.target import PathRefused, RequestPath, normalise_request_path, parse_host


@pytest.mark.parametrize("raw, path", [
    ("/", "/"), ("/a//b/", "/a/b/"), ("/a/./b/../c", "/a/c"), ("/a/..", "/"), ("/a/b/..", "/a/"),
    ("/a/%2e%2e/b", "/b"), ("/a/.%2E/b", "/b"), ("/%61%62c", "/abc"), ("/a/%7e", "/a/~"), ("/a/%3a%2b", "/a/%3A%2B"),
    ("/a/%252e", "/a/%252e"), ("/a;x/b", "/a;x/b"), ("/a/...", "/a/..."), ("/.well-known/x", "/.well-known/x"),
])
def test_paths_are_normalised(raw, path):
    result = normalise_request_path(raw)
    assert isinstance(result, RequestPath) and result.path == path
    assert result.segments == [s for s in path.split("/") if s]


@pytest.mark.parametrize("raw", [
    "/..", "/a/../..", "/%2e%2e", "/a%2fb", "/a%2Fb", "/a%5cb", "/a\\b", "/a/..;/b", "/a/.;x/b", "/a/%2e%2e;/b",
    "/a%00", "/a%", "/a%4", "/a%zz", "*", "http://x/", "",
])
def test_paths_backends_may_read_differently_are_refused(raw):
    assert isinstance(normalise_request_path(raw), PathRefused)


@pytest.mark.parametrize("value, host", [
    ("API.Example.com:8443", "api.example.com"), ("[::1]:8080", "[::1]"), ("[2001:DB8::1]", "[2001:db8::1]"),
    ("host.", "host"), ("h", "h"), ("10.0.0.1:80", "10.0.0.1"), ("a_b.test", "a_b.test"), ("a.test:", "a.test"),
    ("", ""),
])
def test_valid_hosts(value, host):
    assert parse_host(value) == host


@pytest.mark.parametrize("value", [
    "internal.test:x@evil.test", "internal.test:evil", "a.test:65536", "a.test:123456", "a..b", ".a", "a b",
    "a/b", "[::1", "[::1]x", "[fe80::1%eth0]", "[v1.x]", "a.test:80:80", "-a.test", "a-.test", "é.test", "a.test\x00",
])
def test_invalid_hosts(value):
    assert parse_host(value) is None
