"""Router unit tests: precedence, params, catch-all, 404 vs 405 (paths normalised by target.py)."""

from __future__ import annotations

from kubegate.dataplane.router import MethodNotAllowed, RouteTable
from kubegate.dataplane.target import normalise_request_path


def _table(*routes):
    return RouteTable((hosts, path, methods, name) for name, hosts, path, methods in routes)


def _lookup(table, host, method, path):
    _, segments = normalise_request_path(path)
    return table.lookup(host, method, segments)


def test_literal_over_param_over_catch_all():
    table = _table(("all", (), "/users/*rest", ()), ("param", (), "/users/:id", ()),
                   ("me", (), "/users/me", ()))
    assert _lookup(table, "h", "GET", "/users/me").value == "me"
    assert _lookup(table, "h", "GET", "/users/42") == ("param", {"id": "42"})
    assert _lookup(table, "h", "GET", "/users/42/posts") == ("all", {"rest": "42/posts"})
    assert _lookup(table, "h", "GET", "/users") == ("all", {"rest": ""})


def test_param_names_belong_to_each_route():
    table = _table(("a", (), "/u/:id", ()), ("b", (), "/u/{uid}/posts/:post", ()))
    assert _lookup(table, "h", "GET", "/u/1") == ("a", {"id": "1"})
    assert _lookup(table, "h", "GET", "/u/1/posts/9") == ("b", {"uid": "1", "post": "9"})


def test_backtracks_from_literal_to_param():
    table = _table(("lit", (), "/a/b/c", ()), ("par", (), "/a/:x/d", ()))
    assert _lookup(table, "h", "GET", "/a/b/d") == ("par", {"x": "b"})


def test_hosts_exact_over_wildcard_over_any():
    table = _table(("any", (), "/*p", ()), ("wild", ("*.example.com",), "/*p", ()),
                   ("exact", ("api.example.com",), "/*p", ()), ("deep", ("*.eu.example.com",), "/*p", ()))
    assert _lookup(table, "api.example.com", "GET", "/").value == "exact"
    assert _lookup(table, "web.example.com", "GET", "/").value == "wild"
    assert _lookup(table, "a.eu.example.com", "GET", "/").value == "deep"
    assert _lookup(table, "example.com", "GET", "/").value == "any"
    assert _lookup(table, "other.org", "GET", "/").value == "any"


def test_host_falls_through_when_path_missing():
    table = _table(("exact", ("api.test",), "/only", ()), ("any", (), "/other", ()))
    assert _lookup(table, "api.test", "GET", "/other").value == "any"


def test_method_specific_over_any_and_405():
    table = _table(("get", (), "/items", ("GET",)), ("any", (), "/items", ()), ("post", (), "/orders", ("POST",)))
    assert _lookup(table, "h", "GET", "/items").value == "get"
    assert _lookup(table, "h", "DELETE", "/items").value == "any"
    assert _lookup(table, "h", "GET", "/orders") == MethodNotAllowed(("POST",))
    assert _lookup(table, "h", "GET", "/missing") is None


def test_405_falls_back_to_a_less_specific_path_that_allows_the_method():
    table = _table(("me", (), "/users/me", ("GET",)), ("param", (), "/users/:id", ("DELETE",)))
    assert _lookup(table, "h", "DELETE", "/users/me").value == "param"
    assert _lookup(table, "h", "POST", "/users/me") == MethodNotAllowed(("DELETE", "GET"))


def test_first_claim_wins():
    table = _table(("old", (), "/x", ("GET",)), ("new", (), "/x", ("GET",)))
    assert _lookup(table, "h", "GET", "/x").value == "old"


def test_percent_encoded_params_are_decoded():
    table = _table(("p", (), "/files/:name", ()))
    assert _lookup(table, "h", "GET", "/files/a%20b") == ("p", {"name": "a b"})


class _Value:
    """A route's runtime stand-in: compared by identity, like the data plane's."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def _random_entries(rng, count, start=0):
    hosts = [(), ("api.example.com",), ("*.example.com",), ("a.test", "b.test"), ("*.eu.example.com",)]
    segments = ["users", "orders", ":id", "{oid}", "v1", "x%41y"]
    methods = [(), ("GET",), ("POST",), ("GET", "PUT"), ("DELETE",)]
    out = []
    for i in range(start, start + count):
        path = "/" + "/".join(rng.choice(segments) for _ in range(rng.randint(0, 3)))
        if rng.random() < 0.3:
            path = path.rstrip("/") + "/*rest"
        out.append((rng.choice(hosts), path, rng.choice(methods), _Value(f"v{i}")))
    return out


def _probes(rng):
    hosts = ["api.example.com", "x.example.com", "z.eu.example.com", "a.test", "b.test", "other.test"]
    words = ["users", "orders", "42", "v1", "xAy", "x%41y", "me"]
    return [(rng.choice(hosts), rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH"]),
             "/" + "/".join(rng.choice(words) for _ in range(rng.randint(0, 4)))) for _ in range(300)]


def _answers(table, probes):
    return [_lookup(table, host, method, path) for host, method, path in probes]


def test_an_updated_table_answers_exactly_as_a_full_build_and_leaves_the_old_one_as_it_was():
    import random

    rng = random.Random(7)
    updated = fallbacks = 0
    for round_ in range(300):
        before = _random_entries(rng, rng.randint(0, 12))
        removed = [e for e in before if rng.random() < 0.3]
        added = _random_entries(rng, rng.randint(0, 4), start=1000)
        after = [e for e in before if e not in removed] + added
        old = RouteTable(before)
        probes = _probes(rng)
        old_answers = _answers(old, probes)
        new = RouteTable.updated(old, removed, added)
        assert _answers(old, probes) == old_answers, round_  # requests still on the old table see no change
        if new is None:  # a claim held twice somewhere: only a full build knows which entry wins
            fallbacks += 1
            continue
        updated += 1
        assert _answers(new, probes) == _answers(RouteTable(after), probes), round_
        assert new.size == len(after)
        again = RouteTable.updated(new, added, [])  # and back: the added ones out again
        assert again is not None and _answers(again, probes) == _answers(RouteTable([e for e in before
                                                                                     if e not in removed]), probes)
    assert updated > 100 and fallbacks > 10  # both paths were taken


def test_an_update_that_would_claim_what_another_route_holds_falls_back_to_a_full_build():
    a, b = _Value("a"), _Value("b")
    old = RouteTable([((), "/x", ("GET",), a)])
    assert RouteTable.updated(old, [], [((), "/x", (), b)]) is not None  # any-method beside GET: no clash
    assert RouteTable.updated(old, [], [((), "/x", ("GET",), b)]) is None
    assert RouteTable.updated(old, [((), "/y", ("GET",), a)], []) is None  # not where it was inserted
    clashing = RouteTable([((), "/x", ("GET",), a), ((), "/x", ("GET",), b)])
    assert RouteTable.updated(clashing, [((), "/x", ("GET",), a)], []) is None  # b would win: a full build says so


def test_removing_the_last_route_under_a_host_leaves_no_trace():
    a, b = _Value("a"), _Value("b")
    old = RouteTable([(("h.test",), "/deep/er/path", (), a), ((), "/other", (), b)])
    new = RouteTable.updated(old, [(("h.test",), "/deep/er/path", (), a)], [])
    assert new is not None and not new._exact and _lookup(new, "h.test", "GET", "/deep/er/path") is None
    assert _lookup(new, "h.test", "GET", "/other").value is b
    assert _lookup(old, "h.test", "GET", "/deep/er/path").value is a
