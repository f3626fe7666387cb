"""Host precedence through the real ``kubegate run``: routes on one path with exact, ``*.`` and no hosts.

Every pair of host kinds (exact/exact, exact/wildcard, exact/none, wildcard/wildcard,
wildcard/none, none/none) gets its own path; each route has its own real backend,
so the ``X-Backend`` header of the answer says which route served a request. The
translator side (which pairs conflict) is tests/unit/test_translate.py::test_host_pairs_*.
"""

from __future__ import annotations

import aiohttp
import yaml

# (name, hosts, path, methods); names sort oldest first (files carry no creationTimestamp).
ROUTES = [
    # exact/exact: the same host conflicts (ee-2 refused), another host coexists.
    ("ee-1", ["api.example.com"], "/ee", []),
    ("ee-2", ["api.example.com"], "/ee", []),
    ("ee-3", ["web.example.com"], "/ee", []),
    # exact/wildcard
    ("ew-exact", ["api.example.com"], "/ew", []),
    ("ew-wild", ["*.example.com"], "/ew", []),
    # exact/none: the reproducer
    ("en-exact", ["api.example.com"], "/r/host", []),
    ("en-none", [], "/r/host", []),
    # wildcard/wildcard: the longest suffix wins; the same pattern twice conflicts (ww-3 refused).
    ("ww-1", ["*.example.com"], "/ww", []),
    ("ww-2", ["*.eu.example.com"], "/ww", []),
    ("ww-3", ["*.example.com"], "/ww", []),
    # wildcard/none
    ("wn-wild", ["*.example.com"], "/wn", []),
    ("wn-none", [], "/wn", []),
    # none/none: overlapping methods conflict (nn-2 shares GET with nn-1), disjoint ones coexist.
    ("nn-1", [], "/nn", ["GET"]),
    ("nn-2", [], "/nn", ["GET", "PUT"]),
    ("nn-3", [], "/nn", ["POST"]),
    # a host-specific route only for GET: other methods on that host fall back to the no-hosts route.
    ("em-exact", ["api.example.com"], "/em", ["GET"]),
    ("em-none", [], "/em", []),
    # the host comes before the path: an exact host's catch-all beats a no-hosts literal.
    ("ec-exact", ["api.example.com"], "/ec/*rest", []),
    ("ec-none", [], "/ec/me", []),
]
REFUSED = {"ee-2", "ww-3", "nn-2"}

# (method, Host header, path) -> the route whose backend must answer, or the status code.
EXPECTED = [
    ("GET", "api.example.com", "/ee", "ee-1"),
    ("GET", "web.example.com", "/ee", "ee-3"),
    ("GET", "other.test", "/ee", 404),
    ("GET", "api.example.com", "/ew", "ew-exact"),
    ("GET", "web.example.com", "/ew", "ew-wild"),
    ("GET", "a.b.example.com", "/ew", "ew-wild"),
    ("GET", "example.com", "/ew", 404),  # *.example.com does not match the apex
    ("GET", "api.example.com", "/r/host", "en-exact"),
    ("GET", "API.Example.COM.:8080", "/r/host", "en-exact"),  # case, trailing dot and port do not matter
    ("GET", "other.test", "/r/host", "en-none"),
    ("GET", "web.example.com", "/r/host", "en-none"),
    ("GET", "127.0.0.1", "/r/host", "en-none"),
    ("GET", "a.example.com", "/ww", "ww-1"),
    ("GET", "eu.example.com", "/ww", "ww-1"),
    ("GET", "a.eu.example.com", "/ww", "ww-2"),
    ("GET", "x.a.eu.example.com", "/ww", "ww-2"),
    ("GET", "other.test", "/ww", 404),
    ("GET", "a.example.com", "/wn", "wn-wild"),
    ("GET", "example.com", "/wn", "wn-none"),
    ("GET", "other.test", "/wn", "wn-none"),
    ("GET", "other.test", "/nn", "nn-1"),
    ("POST", "other.test", "/nn", "nn-3"),
    ("PUT", "other.test", "/nn", 405),  # nn-2 was refused: nobody serves PUT
    ("GET", "api.example.com", "/em", "em-exact"),
    ("POST", "api.example.com", "/em", "em-none"),
    ("GET", "other.test", "/em", "em-none"),
    ("GET", "api.example.com", "/ec/me", "ec-exact"),
    ("GET", "other.test", "/ec/me", "ec-none"),
    ("GET", "other.test", "/ec/you", 404),
]


def _manifests(backends: dict[str, str]) -> str:
    docs = []
    for name, hosts, path, methods in ROUTES:
        spec: dict = {"path": path, "backends": [{"url": backends[name]}]}
        if hosts:
            spec["hosts"] = hosts
        if methods:
            spec["methods"] = methods
        docs.append({"apiVersion": "kubegate.dev/v1alpha1", "kind": "GatewayRoute",
                     "metadata": {"name": name, "namespace": "web"}, "spec": spec})
    return yaml.safe_dump_all(docs)


async def test_each_request_reaches_the_most_specific_host_route(backend, kubegate_run, tmp_path):
    servers = {name: await backend(name) for name, *_ in ROUTES}
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "routes.yaml").write_text(_manifests({name: s.url for name, s in servers.items()}))
    gateway = await kubegate_run(folder)
    base = f"http://127.0.0.1:{gateway.ports['http']}"
    seen, allow = [], []
    async with aiohttp.ClientSession() as session:
        for method, host, path, _ in EXPECTED:
            async with session.request(method, f"{base}{path}", headers={"Host": host}) as response:
                await response.read()
                seen.append(response.headers.get("X-Backend") if response.status == 200 else response.status)
                allow.append(response.headers.get("Allow"))
    assert seen == [want for *_, want in EXPECTED]
    assert allow[seen.index(405)] == "GET, POST"
    for name in REFUSED:  # the backend of a refused route never saw a request
        assert servers[name].received == []
    assert await gateway.stop() == 0
    refused = {line.split("GatewayRoute/web/")[1].split(":")[0] for line in gateway.logs.splitlines()
               if "Conflicted" in line}
    assert refused == REFUSED, gateway.logs
