"""Route lookup: host index, then a path-segment trie, so cost does not grow with route count.

Precedence (Gateway API habits): exact host over ``*.`` wildcard (longest
suffix first) over any-host; within a host, literal segment over ``:id`` /
``{id}`` param over trailing ``*name`` catch-all; at a node, a method-specific
entry over an any-method one. A path that matches somewhere but not for this
method is a 405 carrying the union of allowed methods.

Pure: no I/O, values are opaque (the server stores precomputed route runtimes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar
from urllib.parse import unquote

V = TypeVar("V")

ANY_METHOD = "*"
MEMO_SIZE = 4096  # RouteTable.memo entries before it starts again (paths with ids do not repeat)


def wildcard_suffixes(host: str) -> Iterable[str]:
    """The keys a ``*.`` pattern is stored under that can match ``host``, longest first.

    ``a.b.example.com`` yields ``.b.example.com``, ``.example.com``, ``.com``:
    ``*.example.com`` matches any subdomain (Gateway API). Routes and TLS
    policies (SNI) share this one definition.
    """
    dot = host.find(".")
    while dot != -1:
        yield host[dot:]
        dot = host.find(".", dot + 1)


class Match(NamedTuple, Generic[V]):
    value: V
    params: dict[str, str]


class MethodNotAllowed(NamedTuple):
    allow: tuple[str, ...]


@dataclass(slots=True)
class _Node(Generic[V]):
    literals: dict[str, _Node[V]] = field(default_factory=dict)
    param: _Node[V] | None = None
    # method -> (value, parameter names in path order); names differ per route, so they
    # live with the route, not in the shared trie node.
    catch_all: dict[str, tuple[V, tuple[str, ...]]] | None = None  # a trailing "*name" here
    methods: dict[str, tuple[V, tuple[str, ...]]] | None = None  # routes ending exactly here


def split_pattern(pattern: str) -> list[str]:
    return [s for s in pattern.split("/") if s]


class RouteTable(Generic[V]):
    """Its routes are immutable once built and ``lookup`` is safe to call concurrently; ``memo`` is a
    cache its user fills (the pipeline, on the event loop)."""

    __slots__ = ("_any", "_exact", "_has_wildcards", "_wildcard", "memo", "size")

    def __init__(self, entries: Iterable[tuple[Sequence[str], str, Sequence[str], V]]) -> None:
        """entries: (hosts, path pattern, methods, value); first entry wins a duplicate claim."""
        self._exact: dict[str, _Node[V]] = {}
        self._wildcard: dict[str, _Node[V]] = {}  # ".example.com" -> trie
        self._any: _Node[V] | None = None
        self.size = 0
        # what its user derived from a lookup, by the request's (host, method, raw path): the pipeline
        # keeps normalised path + match here (both pure), bounded by MEMO_SIZE; a new table starts empty
        self.memo: dict[tuple[str, str, str], Any] = {}
        for hosts, pattern, methods, value in entries:
            self.size += 1
            for host in hosts or (None,):
                self._insert(self._root_for(host), split_pattern(pattern), methods, value)
        self._has_wildcards = bool(self._wildcard)

    def _root_for(self, host: str | None) -> _Node[V]:
        if host is None:
            if self._any is None:
                self._any = _Node()
            return self._any
        host = host.lower().rstrip(".")  # as target.parse_host gives a request's Host
        table = self._wildcard if host.startswith("*.") else self._exact
        key = host[1:] if host.startswith("*.") else host
        return table.setdefault(key, _Node())

    @staticmethod
    def _insert(node: _Node[V], segments: list[str], methods: Sequence[str], value: V) -> None:
        names: list[str] = []
        for i, seg in enumerate(segments):
            if seg.startswith("*"):
                if i != len(segments) - 1:
                    raise ValueError(f"catch-all {seg!r} must be the last segment")
                names.append(seg[1:])
                if node.catch_all is None:
                    node.catch_all = {}
                for method in methods or (ANY_METHOD,):
                    node.catch_all.setdefault(method, (value, tuple(names)))
                return
            if seg.startswith(":") or (seg.startswith("{") and seg.endswith("}")):
                names.append(seg[1:-1] if seg.startswith("{") else seg[1:])
                if node.param is None:
                    node.param = _Node()
                node = node.param
            else:
                node = node.literals.setdefault(unquote(seg), _Node())
        if node.methods is None:
            node.methods = {}
        for method in methods or (ANY_METHOD,):
            node.methods.setdefault(method, (value, tuple(names)))

    def lookup(self, host: str, method: str, segments: list[str]) -> Match[V] | MethodNotAllowed | None:
        """Find the route for a parsed host + method + path segments (see target.py).

        Tries in precedence order: the exact host's, wildcards (longest suffix first), any-host."""
        allowed: set[str] = set()
        root = self._exact.get(host)
        if root is not None:  # the common case first
            found = _search(root, segments, 0, method, (), allowed)
            if found is not None:
                return found
        if self._has_wildcards:
            for suffix in wildcard_suffixes(host):
                root = self._wildcard.get(suffix)
                if root is not None:
                    found = _search(root, segments, 0, method, (), allowed)
                    if found is not None:
                        return found
        if self._any is not None:
            found = _search(self._any, segments, 0, method, (), allowed)
            if found is not None:
                return found
        if allowed:
            return MethodNotAllowed(tuple(sorted(allowed)))
        return None


_new_match = tuple.__new__  # a Match without NamedTuple's Python-level __new__ (once per request)


def _pick(table: dict[str, Any], method: str, allowed: set[str]) -> Any:
    entry = table.get(method)
    if entry is None:
        entry = table.get(ANY_METHOD)
        if entry is None:
            allowed.update(table)
    return entry


def _search(node: _Node[V], segments: list[str], i: int, method: str, values: tuple[str, ...],
            allowed: set[str]) -> Match[V] | None:
    if i == len(segments):
        if node.methods is not None:
            entry = _pick(node.methods, method, allowed)
            if entry is not None:
                value, names = entry
                return _new_match(Match, (value, dict(zip(names, values)) if names else {}))
    else:
        seg = segments[i]
        child = node.literals.get(seg)
        if child is None and "%" in seg:
            child = node.literals.get(unquote(seg))
        if child is not None:
            found = _search(child, segments, i + 1, method, values, allowed)
            if found is not None:
                return found
        if node.param is not None:
            found = _search(node.param, segments, i + 1, method, (*values, unquote(seg)), allowed)
            if found is not None:
                return found
    if node.catch_all is not None:
        entry = _pick(node.catch_all, method, allowed)
        if entry is not None:
            value, names = entry
            rest = "/".join(segments[i:])
            if "%" in rest:
                rest = unquote(rest)
            return _new_match(Match, (value, dict(zip(names, (*values, rest)))))
    return None
