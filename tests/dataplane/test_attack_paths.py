"""Path tricks against the real data plane (issue 8, item 3): what the router matched is what the backend gets.

An anonymous ``/public/*rest`` route next to an authenticated ``/admin/*rest`` one:
before the fix, ``/public/%2e%2e/admin/x`` and friends were served by the
public route while the backend resolved them to ``/admin/x``. Every request is
sent twice, once through each front (a bodyless HTTP/1.1 GET takes the lean
llhttp front, a POST with a body is aiohttp's), and the property test compares
both with a reference normaliser written from RFC 3986 §5.2.4 / §6.2.2.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubegate.config import CompiledAuth, CompiledBackend, CompiledConfig, CompiledRoute

sys.path.insert(0, str(Path(__file__).parent))
from live_gateway import exchange, live_gateway, status_of

UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _config(url: str) -> CompiledConfig:
    def route(name: str, path: str, **fields) -> CompiledRoute:
        return CompiledRoute(id=f"shop/{name}", namespace="shop", name=name, path=path,
                             backends=(CompiledBackend(url=url),), **fields)
    return CompiledConfig(routes=(
        route("public", "/public/*rest"),
        route("admin", "/admin/*rest", auth=CompiledAuth(methods=("apiKey",))),
        route("api", "/api/*rest", strip_prefix="/api"),
    ))


@pytest.fixture(scope="module")
def live():
    with live_gateway(_config) as gateway:
        yield gateway


class Refused(Exception):
    pass


def reference(raw: str) -> str:
    """RFC 3986 §6.2.2 + §5.2.4 done the long way; Refused where kubegate answers 400."""
    if not raw.startswith("/") or "\\" in raw:
        raise Refused(raw)

    def unescape(match: re.Match) -> str:
        value = int(match.group(1), 16)
        if value in (0x2F, 0x5C, 0x00):
            raise Refused(raw)
        return chr(value) if chr(value) in UNRESERVED else "%" + match.group(1).upper()

    if re.search(r"%(?![0-9A-Fa-f]{2})", raw):
        raise Refused(raw)
    text = re.sub(r"%([0-9A-Fa-f]{2})", unescape, raw)
    for segment in text.split("/"):
        if ";" in segment and segment.split(";")[0] in (".", ".."):
            raise Refused(raw)
    text = re.sub("/+", "/", text)  # empty segments are merged
    out: list[str] = []
    while text:  # §5.2.4, rules A to E; a ".." above the root is refused instead of dropped
        if text.startswith("/./") or text == "/.":
            text = "/" + text[3:]
        elif text.startswith("/../") or text == "/..":
            if not out:
                raise Refused(raw)
            out.pop()
            text = "/" + text[4:]
        else:
            end = text.find("/", 1)
            end = len(text) if end == -1 else end
            out.append(text[:end])
            text = text[end:]
    return "".join(out).replace("//", "/") or "/"


def expected(raw: str) -> tuple[int, str | None]:
    """(status, target the backend gets) for the three routes of :func:`_config`."""
    try:
        path = reference(raw)
    except Refused:
        return 400, None
    first = path.split("/")[1]
    if first == "public":
        return 200, path
    if first == "admin":
        return 401, None
    if first == "api":
        return 200, path[len("/api"):] or "/"
    return 404, None


_counter = itertools.count()


def through_both_fronts(live, raw: str) -> list[tuple[int, str | None]]:
    """(status, target the backend saw) via the lean front and via aiohttp."""
    results = []
    for head in (b"GET %s HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n",
                 b"POST %s HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"):
        n = next(_counter)
        response = exchange(live.http, head % f"{raw}?n={n}".encode())
        status = status_of(response)
        target = next((s["target"] for s in live.seen if s["target"].endswith(f"?n={n}")), None)
        results.append((status, target.rpartition("?")[0] if target else None))
    return results


ATTACKS = [
    "/public/%2e%2e/admin/x", "/public/%2E%2E/admin/x", "/public/.%2e/admin/x", "/public/%2e./admin/x",
    "/public/..%2fadmin/x", "/public/..%2Fadmin/x", "/public/..%5cadmin/x", "/public/..%5Cadmin/x",
    "/public/..;/admin/x", "/public/.;/../admin/x", "/public/%2e%2e;x/admin/x", "/public/..\\admin/x",
    "/public/%2e%2e%2fadmin/x", "/public/%252e%252e/admin/x", "/public/x/../../admin/x",
    "/%61dmin/x", "/public/..%00/admin/x", "/public/%", "/public/%zz",
]


@pytest.mark.parametrize("raw", ATTACKS)
def test_no_path_trick_reaches_admin_through_the_public_route(live, raw):
    want = expected(raw)
    assert want[0] in (400, 401, 200)
    # twice: the second time the route table's memo answers what the path normalises and matches to
    for got in through_both_fronts(live, raw) + through_both_fronts(live, raw):
        assert got == want, (raw, got, want)
        if got[1] is not None:  # what a backend gets never resolves (again) to /admin
            assert not reference(got[1]).startswith("/admin"), got


def test_stripprefix_applies_to_the_path_that_was_matched(live):
    for raw, target in [("/api/%2e/users", "/users"), ("/api/a/../b/", "/b/"), ("/api", "/"),
                        ("/api/%7Euser/%3a", "/~user/%3A"), ("/api/x/..", "/")]:
        assert through_both_fronts(live, raw) == [(200, target)] * 2, raw


def test_curl_path_as_is(live):
    """The same tricks as curl sends them (--path-as-is keeps the dots)."""
    for raw, status in [("/public/%2e%2e/admin/x", 401), ("/public/..%2fadmin/x", 400),
                        ("/public/..;/admin/x", 400), ("/public/../admin/x", 401)]:
        out = subprocess.run(["curl", "-sS", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}",
                              f"http://127.0.0.1:{live.http}{raw}"], check=False, capture_output=True, text=True,
                             timeout=20)
        assert out.stdout == str(status), (raw, out.stdout, out.stderr)


SEGMENTS = st.sampled_from([
    "public", "admin", "api", "a", "b", "", ".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "%2E.", "..;", ".;x",
    "%2f", "%2F", "%5c", "%00", "%41dmin", "%61", "%7e", "~x", "%3a", "%3A", "x;y", "%25", "%252e", "%", "%g1",
    "\\", "a%2Fb", "%C3%A9", "@", "!$&'()*+,;=:",
])
PCHAR = st.text(alphabet="abcXYZ019-._~!$&'()*+,;=:@%", min_size=1, max_size=6)


@settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(SEGMENTS, PCHAR), min_size=0, max_size=7), st.booleans())
def test_route_and_forwarded_path_agree_with_a_reference_normaliser(live, segments, slash):
    raw = "/" + "/".join(segments) + ("/" if slash and segments else "")
    want = expected(raw)
    for got in through_both_fronts(live, raw):
        assert got == want, (raw, got, want)


def test_the_route_memo_stays_bounded_and_paths_keep_their_answers(live, monkeypatch):
    monkeypatch.setattr("kubegate.dataplane.pipeline.MEMO_SIZE", 3)
    memo = live.gateway.snapshot.table.memo
    memo.clear()  # the module's other tests filled it; a hit never clears it
    for raw in ["/public/a", "/%61dmin/x", "/public/%2e%2e/admin/x", "/public/b", "/public/c", "/public/a"] * 2:
        assert through_both_fronts(live, raw) == [expected(raw)] * 2, raw
        assert len(memo) <= 3
