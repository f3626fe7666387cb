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
