"""Route lookup: host index, then a path-segment trie, so cost does not grow with route count.

Precedence (Gateway API habits): exact host over ``*.`` wildcard (longest
suffix first) over any-host; within a host, literal segment over ``:id`` /
``{id}`` param over trailing ``*name`` catch-all; at a node, a method-specific
entry over an any-method one. A path that matches somewhere but not for this
method is a 405 carrying the union of allowed methods.

Pure: no I/O, values are opaque (the server stores precomputed route runtimes).

A new config that changes a few routes among thousands need not rebuild the
trie: :meth:`RouteTable.updated` copies only the nodes on the changed routes'
paths (copy-on-write) and shares every other node with the previous table,
which stays as it was for the requests still using it.
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


class _Collision(Exception):
    """A claim another entry holds (or an entry to remove that is not where it was inserted): entry order
    decides then, which only a full build reproduces."""


def _copy(node: _Node[V]) -> _Node[V]:
    """A node this table may change: its own dicts, the same children (shared until copied in turn)."""
    return _Node(dict(node.literals), node.param, None if node.catch_all is None else dict(node.catch_all),
                 None if node.methods is None else dict(node.methods))


def _own(node: _Node[V] | None, owned: set[int] | None, create: bool) -> _Node[V] | None:
    """``node`` as the table being made may change it: with ``owned`` None (a full build) every node is
    its own; in an update a node not in ``owned`` is the previous table's, so a copy of it is made and
    owned. A missing node is made when ``create``, else stays None."""
    if node is None:
        if not create:
            return None
        node = _Node()
    elif owned is None or id(node) in owned:
        return node
    else:
        node = _copy(node)
    if owned is not None:
        owned.add(id(node))
    return node


def _param_name(segment: str) -> str | None:
    """The parameter a ``:id`` or ``{id}`` segment names; None for a literal segment."""
    if segment.startswith(":"):
        return segment[1:]
    if segment.startswith("{") and segment.endswith("}"):
        return segment[1:-1]
    return None


def _empty(node: _Node[V]) -> bool:
    return not node.literals and node.param is None and not node.catch_all and not node.methods


class RouteTable(Generic[V]):
    """Its routes are immutable once built and ``lookup`` is safe to call concurrently; ``memo`` is a
    cache its user fills (the pipeline, on the event loop)."""

    __slots__ = ("_any", "_collided", "_exact", "_has_wildcards", "_wildcard", "memo", "size")

    def __init__(self, entries: Iterable[tuple[Sequence[str], str, Sequence[str], V]]) -> None:
        """entries: (hosts, path pattern, methods, value); first entry wins a duplicate claim."""
        self._exact: dict[str, _Node[V]] = {}
        self._wildcard: dict[str, _Node[V]] = {}  # ".example.com" -> trie
        self._any: _Node[V] | None = None
        self.size = 0
        # what its user derived from a lookup, by the request's (host, method, raw path): the pipeline
        # keeps normalised path + match here (both pure), bounded by MEMO_SIZE; a new table starts empty
        self.memo: dict[tuple[str, str, str], Any] = {}
        self._collided = False  # some claim was made twice: entry order matters (no update(), see there)
        for hosts, pattern, methods, value in entries:
            self.size += 1
            for host in hosts or (None,):
                if self._insert(host, split_pattern(pattern), methods, value):
                    self._collided = True
        self._has_wildcards = bool(self._wildcard)

    @classmethod
    def updated(cls, previous: RouteTable[V], removed: Iterable[tuple[Sequence[str], str, Sequence[str], V]],
                added: Iterable[tuple[Sequence[str], str, Sequence[str], V]]) -> RouteTable[V] | None:
        """``previous`` without the ``removed`` entries and with the ``added`` ones: what a full build of the
        remaining entries gives, copying only the nodes on their paths (``previous`` is not changed). None
        when a claim is or would be held twice (a full build then decides by entry order). ValueError
        as for a full build."""
        if previous._collided:
            return None
        table: RouteTable[V] = cls.__new__(cls)
        table._exact, table._wildcard, table._any = dict(previous._exact), dict(previous._wildcard), previous._any
        table.memo, table._collided, table.size = {}, False, previous.size
        owned: set[int] = set()  # ids of the nodes this table made (and so may change)
        try:
            for hosts, pattern, methods, value in removed:
                table.size -= 1
                for host in dict.fromkeys(hosts or (None,)):
                    table._remove(host, split_pattern(pattern), methods, value, owned)
            for hosts, pattern, methods, value in added:
                table.size += 1
                for host in dict.fromkeys(hosts or (None,)):
                    if table._insert(host, split_pattern(pattern), methods, value, owned):
                        raise _Collision
        except _Collision:
            return None
        table._has_wildcards = bool(table._wildcard)
        return table

    def _slot(self, host: str | None) -> tuple[dict[str, _Node[V]] | None, str]:
        """Where ``host``'s trie root lives: (the exact or wildcard index, its key), or (None, "") for any host."""
        if host is None:
            return None, ""
        host = host.lower().rstrip(".")  # as target.parse_host gives a request's Host
        return (self._wildcard, host[1:]) if host.startswith("*.") else (self._exact, host)

    def _root(self, host: str | None, owned: set[int] | None, create: bool) -> _Node[V] | None:
        """The root for ``host``, this table's own (see _own)."""
        index, key = self._slot(host)
        root = _own(self._any if index is None else index.get(key), owned, create)
        if root is not None:
            if index is None:
                self._any = root
            else:
                index[key] = root
        return root

    def _drop_root(self, host: str | None) -> None:
        index, key = self._slot(host)
        if index is None:
            self._any = None
        else:
            index.pop(key, None)

    @staticmethod
    def _child(node: _Node[V], key: str | None, owned: set[int] | None, create: bool) -> _Node[V] | None:
        """``node``'s literal child ``key`` (its param child for None), this table's own (see _own)."""
        child = _own(node.param if key is None else node.literals.get(key), owned, create)
        if child is not None:
            if key is None:
                node.param = child
            else:
                node.literals[key] = child
        return child

    def _insert(self, host: str | None, segments: list[str], methods: Sequence[str], value: V,
                owned: set[int] | None = None) -> bool:
        """Put the entry's claims in (the first claimant of each keeps it), into owned copies when ``owned``
        is given (an update); True if one was held already by another value."""
        node = self._root(host, owned, True)
        names: list[str] = []
        for i, seg in enumerate(segments):
            if seg.startswith("*"):
                if i != len(segments) - 1:
                    raise ValueError(f"catch-all {seg!r} must be the last segment")
                names.append(seg[1:])
                if node.catch_all is None:
                    node.catch_all = {}
                return _claim(node.catch_all, methods, value, tuple(names))
            name = _param_name(seg)
            if name is not None:
                names.append(name)
            node = self._child(node, None if name is not None else unquote(seg), owned, True)
        if node.methods is None:
            node.methods = {}
        return _claim(node.methods, methods, value, tuple(names))

    def _remove(self, host: str | None, segments: list[str], methods: Sequence[str], value: V,
                owned: set[int]) -> None:
        """Take ``value``'s claims out (owned copies along the path), and the nodes left empty."""
        node = self._root(host, owned, False)
        if node is None:
            raise _Collision
        path: list[tuple[_Node[V], str | None]] = []  # (parent, literal key or None for param)
        for seg in segments:
            if seg.startswith("*"):
                if node.catch_all is None:
                    raise _Collision
                _release(node.catch_all, methods, value)
                node.catch_all = node.catch_all or None
                break
            key = None if _param_name(seg) is not None else unquote(seg)
            child = self._child(node, key, owned, False)
            if child is None:
                raise _Collision
            path.append((node, key))
            node = child
        else:
            if node.methods is None:
                raise _Collision
            _release(node.methods, methods, value)
            node.methods = node.methods or None
        while _empty(node) and path:  # what the full build would not have made
            parent, key = path.pop()
            if key is None:
                parent.param = None
            else:
                del parent.literals[key]
            node = parent
        if not path and _empty(node):
            self._drop_root(host)

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


def _claim(table: dict[str, tuple[V, tuple[str, ...]]], methods: Sequence[str], value: V,
           names: tuple[str, ...]) -> bool:
    """Claim each method for ``value`` where it is free; True if another value held one already."""
    held = False
    for method in methods or (ANY_METHOD,):
        held |= table.setdefault(method, (value, names))[0] is not value
    return held


def _release(table: dict[str, tuple[V, tuple[str, ...]]], methods: Sequence[str], value: V) -> None:
    for method in dict.fromkeys(methods or (ANY_METHOD,)):
        held = table.get(method)
        if held is None or held[0] is not value:
            raise _Collision
        del table[method]


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
