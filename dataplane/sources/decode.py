"""Decoding the operator's ConfigMap + Secret again and again, paying only for what changed.

``kubegate.config.decode_config`` parses and validates the whole config in
single C calls (json.loads, pydantic) and ``config_hash`` dumps it whole
again: at 10,000 routes and 100,000 API keys that is seconds during which no
other thread gets the interpreter, so moving it to a worker thread does not
help the requests waiting on the event loop. :class:`IncrementalDecoder`
instead walks the top-level lists one element at a time
(``JSONDecoder.raw_decode``, microseconds each), reuses the validated model of
every element whose text is the same as in the previous config, and feeds the
content hash piece by piece from the elements' canonical forms. An element
that lies wholly in a stretch of text that is the same as in the previous
config (before a list's first change, counted from the list's start; after
the text's last change, counted from its end; found by comparing digests of
fixed-size blocks) is not even scanned: its place and digest are remembered
from the previous decode. The result is
the same as ``decode_config``/``decode_secrets``/``config_hash`` (the
unit tests compare them); anything it does not expect falls back to them.
"""

from __future__ import annotations

import base64
import bisect
import gzip
import hashlib
import json
import sys
from array import array
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from kubegate.config import (
    CONFIG_KEY,
    HASH_ANNOTATION,
    SECRETS_KEY,
    SHARDS_KEY,
    CompiledApiKey,
    CompiledConfig,
    CompiledRoute,
    CompiledTls,
    ConfigDecodeError,
    SecretBundle,
    ShardsIncomplete,
    adapter,
    decode_config,
    decode_secrets,
    piece_digest,
    plain,
)
from kubegate.names import CONFIG_MAP_NAME, MAX_SHARDS, SECRET_NAME, shard_name

from ..snapshot import settle_heap as settle

_LISTS: dict[str, type] = {"api_keys": CompiledApiKey, "routes": CompiledRoute, "tls": CompiledTls}
_WS = " \t\n\r"
_FIRST = min(CompiledConfig.model_fields)  # the first member of the canonical JSON: api_keys
_EMPTY = hashlib.sha256().digest()
_SCAN = json.JSONDecoder().scan_once
# Elements between two settle_heap()s: without them the hundreds of thousands of new objects trigger
# full collections of all of them (hundreds of ms each, holding the interpreter) while a config decodes.
SETTLE_EVERY = 2000
BLOCK = 4096  # characters per block when comparing a text with the previous one (see _Unchanged)


class _Unexpected(Exception):
    """Not the shape the walk handles (it falls back to the whole-document decode)."""


def canonical(value: Any) -> str:
    """kubegate.config.canonical_json's encoding, for one already-dumped value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at] in _WS:
        at += 1
    return at


def _expect(text: str, at: int, char: str) -> int:
    at = _skip(text, at)
    if text[at:at + 1] != char:
        raise _Unexpected(f"{char!r} expected at {at}")
    return at + 1


def _scan(text: str, at: int) -> tuple[Any, int]:
    try:
        return _SCAN(text, at)
    except (StopIteration, ValueError):
        raise _Unexpected(f"no JSON value at {at}") from None


def _elements(text: str, at: int, found: _List, pause: Callable[[], None]) -> int:
    """Hand (decoded, exact text) of each element of the array at ``at`` to ``found``, one at a time (not
    all decoded at once: that peak stays in the process's memory); returns where the array ends. The
    elements the previous decode saw at the same place in an unchanged stretch are taken without a scan."""
    at = _expect(text, at, "[")
    found.start(text, at - 1)
    at = _skip(text, at)
    if text[at:at + 1] == "]":
        return at + 1
    count = since_pause = 0
    while True:
        begin = _skip(text, at)
        run = found.take_unchanged(text, begin)
        if run is not None:
            at, taken = run
        else:
            value, at = _scan(text, begin)
            found.take(value, text[begin:at], begin)
            taken = 1
        count += taken
        since_pause += taken
        if since_pause >= SETTLE_EVERY:
            since_pause = 0
            pause()
        at = _skip(text, at)
        if text[at:at + 1] == "]":
            return at + 1
        at = _expect(text, at, ",")


Stretch = tuple[int, int, int]  # (start, stop, shift): text[start:stop] == previous text[start - shift:stop - shift]


def _block_digests(text: str, start: int, from_end: bool = False) -> list[bytes]:
    """blake2b-128 of each whole BLOCK of ``text[start:]``, from ``start`` on (or from the end, backwards)."""
    if from_end:
        end = len(text)
        return [hashlib.blake2b(text[end - (i + 1) * BLOCK:end - i * BLOCK].encode(), digest_size=16).digest()
                for i in range((end - start) // BLOCK)]
    return [hashlib.blake2b(text[at:at + BLOCK].encode(), digest_size=16).digest()
            for at in range(start, len(text) - BLOCK + 1, BLOCK)]


def _stretches(blocks: list[bytes], before: list[bytes], place: Callable[[int], int], shift: int) -> list[Stretch]:
    """The stretches where ``blocks`` and ``before`` agree (block i starts at ``place(i)``), merged."""
    out: list[Stretch] = []
    for i, (a, b) in enumerate(zip(blocks, before)):
        if a != b:
            continue
        begin = place(i)
        if out and out[-1][1] == begin:
            out[-1] = (out[-1][0], begin + BLOCK, shift)
        elif out and out[-1][0] == begin + BLOCK:  # counted from the end: blocks come backwards
            out[-1] = (begin, out[-1][1], shift)
        else:
            out.append((begin, begin + BLOCK, shift))
    return out


class _Unchanged:
    """Where a config text ends the same as the previous one: a digest per BLOCK characters counted from
    its end (the previous text is not kept), the same blocks at the same distance from the end making
    stretches shifted by the change in length. Only for ASCII texts (a character is a byte), which is what
    the operator writes; for others nothing counts as unchanged."""

    __slots__ = ("ascii", "backward", "length", "stretches")

    def __init__(self, text: str, previous: _Unchanged | None) -> None:
        self.length = len(text)
        self.ascii = text.isascii()
        self.backward = _block_digests(text, 0, from_end=True) if self.ascii else []
        self.stretches: list[Stretch] = []
        if previous is not None and previous.ascii and self.ascii:
            self.stretches = _stretches(self.backward, previous.backward, lambda i: self.length - (i + 1) * BLOCK,
                                        self.length - previous.length)


class _Spans:
    """Where one list stood in a text: its start, a digest per BLOCK from there on, and the begin and end
    offsets and text digest of each of its elements."""

    __slots__ = ("begins", "blocks", "ends", "keys", "start")

    def __init__(self) -> None:
        self.start = 0
        self.blocks: list[bytes] = []
        self.begins, self.ends = array("q"), array("q")
        self.keys: list[bytes] = []

    def add(self, begin: int, end: int, key: bytes) -> None:
        self.begins.append(begin)
        self.ends.append(end)
        self.keys.append(key)

    def index(self, begin: int) -> int | None:
        """The index of the element that began at ``begin``, if one did."""
        index = bisect.bisect_left(self.begins, begin)
        if index < len(self.begins) and self.begins[index] == begin:
            return index
        return None


class _List:
    """One model list being decoded: its models and the canonical text of each, for the hash. With a
    ``sink`` (the content hash, when this list comes first in it) the texts go straight into it
    instead of being kept: 100,000 API keys' texts are 15 MB."""

    def __init__(self, model: type, known: tuple[dict[bytes, Any], dict[bytes, str]],
                 fresh: tuple[dict[bytes, Any], dict[bytes, str]], sink: Any = None,
                 unchanged: _Unchanged | None = None, previous: _Spans | None = None) -> None:
        self.validate = adapter(model).validate_python
        (self.known, self.known_forms), (self.fresh, self.forms) = known, fresh
        self.items: list[Any] = []
        self.texts: list[str] = []  # the canonical texts, in order (without a sink)
        self.sink = sink
        self.spans = _Spans()  # where this list's elements stand in this text, for the next decode
        self._unchanged, self._previous = unchanged, previous
        self._stretches: list[Stretch] = []

    def start(self, text: str, at: int) -> None:
        """The list begins at ``at``: where it is the same as the previous text's, counted from the start of
        either (the elements before the first change), or from the end of the whole text (those after
        the last change of the whole text)."""
        spans, same, previous = self.spans, self._unchanged, self._previous
        spans.start = at
        if same is None or not same.ascii:
            return
        spans.blocks = _block_digests(text, at)
        if previous is not None and previous.blocks:
            self._stretches = _stretches(spans.blocks, previous.blocks, lambda i: at + i * BLOCK,
                                         at - previous.start)
        self._stretches += same.stretches

    def take_unchanged(self, text: str, begin: int) -> tuple[int, int] | None:
        """Take the run of elements from ``begin`` on that the previous text had at the same place: (where the
        run ends, how many), or None. Same place: an element of this list that began at ``begin - shift`` in
        the previous text, where ``text[begin:end]`` lies in a stretch that is the same there (so it is the
        same element: an element is an object, whose text ends at its closing brace). A run is adjacent
        elements (one comma between them) whose text was canonical: taken without a scan, with their text
        as one piece of the content hash."""
        previous = self._previous
        if previous is None:
            return None
        for start, last, shift in self._stretches:
            if start <= begin < last:
                first = previous.index(begin - shift)
                if first is not None and previous.ends[first] + shift <= last:
                    break
        else:
            return None
        begins, ends, keys = previous.begins, previous.ends, previous.keys
        known, known_forms, fresh, items = self.known, self.known_forms, self.fresh, self.items
        had_items = bool(items)
        index, count = first, len(begins)
        while index < count and ends[index] + shift <= last and (
                index == first or begins[index] == ends[index - 1] + 1):
            key = keys[index]
            item = known.get(key)
            if item is None or key in known_forms:
                break
            fresh[key] = item
            items.append(item)
            index += 1
        if index == first:
            return None
        end = ends[index - 1] + shift
        piece = text[begin:end]
        if self.sink is not None:
            self.sink.update(f"{',' if had_items else ''}{piece}".encode())
        else:
            self.texts.append(piece)
        spans = self.spans
        if shift:
            spans.begins.extend(array("q", (b + shift for b in begins[first:index])))
            spans.ends.extend(array("q", (e + shift for e in ends[first:index])))
        else:
            spans.begins.extend(begins[first:index])
            spans.ends.extend(ends[first:index])
        spans.keys.extend(keys[first:index])
        return end, index - first

    def take(self, value: Any, raw: str, begin: int) -> None:
        """One element: its decoded value and exact text, which starts at ``begin``."""
        key = hashlib.blake2b(raw.encode(), digest_size=16).digest()
        self.spans.add(begin, begin + len(raw), key)
        item = self.fresh.get(key)
        if item is None and (item := self.known.get(key)) is not None and key in self.known_forms:
            self.forms[key] = self.known_forms[key]
        if item is None:
            if isinstance(value, dict) and isinstance(value.get("namespace"), str):
                value["namespace"] = sys.intern(value["namespace"])  # one string per namespace, not per key
            try:
                item = self.validate(value)
            except ValidationError as exc:
                raise ConfigDecodeError(f"config does not match the schema: {exc.errors()[0]['msg']}") from None
            form = canonical(plain(item))
            if form != raw:
                self.forms[key] = form
        self.fresh[key] = item
        text = self.forms.get(key, raw)
        if self.sink is not None:
            self.sink.update(f"{',' if self.items else ''}{text}".encode())
        else:
            self.texts.append(text)
        self.items.append(item)


def _top(text: str, lists: Callable[[str], _List], pause: Callable[[], None]) -> tuple[dict[str, Any], dict[str, _List]]:
    """The top-level object: its plain members decoded, and its model lists element by element
    (never one scan of a whole list: at 10,000 routes that alone holds the interpreter ~100 ms)."""
    top: dict[str, Any] = {}
    found: dict[str, _List] = {}
    at = _skip(text, _expect(text, 0, "{"))
    if text[at:at + 1] != "}":
        while True:
            key, at = _scan(text, _skip(text, at))
            if not isinstance(key, str):
                raise _Unexpected("object key")
            at = _skip(text, _expect(text, at, ":"))
            top.pop(key, None)
            found.pop(key, None)  # a repeated key: the last one counts, as for json.loads
            if key in _LISTS and text[at:at + 1] == "[":
                found[key] = lists(key)
                at = _elements(text, at, found[key], pause)
            else:
                top[key], at = _scan(text, at)
            at = _skip(text, at)
            if text[at:at + 1] == "}":
                break
            at = _expect(text, at, ",")
    if _skip(text, at + 1) != len(text):
        raise _Unexpected("trailing data")
    return top, found


def _gunzip_bytes(data: str | bytes, what: str) -> bytes:
    try:
        raw = base64.b64decode(data, validate=True) if isinstance(data, str) else data
        return gzip.decompress(raw)
    except (ValueError, OSError, EOFError) as exc:
        raise ConfigDecodeError(f"{what} is not valid base64 gzip JSON: {exc}") from None


def _gunzip(data: str | bytes, what: str) -> str:
    raw = _gunzip_bytes(data, what)
    try:
        return raw.decode()
    except ValueError as exc:
        raise ConfigDecodeError(f"{what} is not valid base64 gzip JSON: {exc}") from None


def canonical_digest(config_data: str | bytes, secrets_data: str | bytes) -> str:
    """sha256 of the two payloads' JSON as they are, as ``config_hash`` hashes their canonical forms: the
    content hash when they are in canonical form (as the operator writes them). ConfigDecodeError when
    they are not gzip."""
    digest = hashlib.sha256(_gunzip_bytes(config_data, "config"))
    digest.update(b"\0")
    digest.update(_gunzip_bytes(secrets_data, "secrets"))
    return digest.hexdigest()


def announced_hash(obj: Mapping[str, Any] | None) -> str | None:
    """The config hash an object of the operator's carries (annotation), or None (pure)."""
    return ((obj or {}).get("metadata") or {}).get("annotations", {}).get(HASH_ANNOTATION)


def _piece(obj: Mapping[str, Any], name: str, key: str, secret: bool) -> bytes:
    """The payload bytes one object carries under ``key`` (ConfigDecodeError when absent)."""
    text = (obj.get("data") or {}).get(key) if secret else \
        (obj.get("binaryData") or {}).get(key) or (obj.get("data") or {}).get(key)
    if not text:
        raise ConfigDecodeError(f"{'Secret' if secret else 'ConfigMap'} {name} has no {key}")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ConfigDecodeError(f"{'Secret' if secret else 'ConfigMap'} {name} {key} is not base64") from None


def shards_listed(primary: Mapping[str, Any], name: str, secret: bool) -> list[tuple[str, str]]:
    """The (shard name, sha256 hex) a primary lists, in order; [] for a config in one object (pure).
    Only ``<name>-1..N`` in order are accepted: a primary never points anywhere else."""
    text = (primary.get("data") or {}).get(SHARDS_KEY)
    if not text:
        return []
    try:
        listed = json.loads(base64.b64decode(text, validate=True) if secret else text)
        pairs = [(str(n), str(d)) for n, d in listed]
    except (ValueError, TypeError):
        raise ConfigDecodeError(f"{name} {SHARDS_KEY} is not a list of [name, sha256] pairs") from None
    for index, (shard, _) in enumerate(pairs, 1):
        if index > MAX_SHARDS or shard != shard_name(name, index):
            raise ConfigDecodeError(f"{name} {SHARDS_KEY} names {shard!r} as shard {index}")
    return pairs


def assemble(primary: Mapping[str, Any], shards: Mapping[str, Mapping[str, Any] | None], wanted: str,
             secret: bool) -> bytes:
    """The whole gzip payload: the primary's piece, then each listed shard's, in order (pure).
    ShardsIncomplete when a listed shard is absent, carries another config's hash or not the bytes
    the primary lists: an incomplete set is never served."""
    name, key = (SECRET_NAME, SECRETS_KEY) if secret else (CONFIG_MAP_NAME, CONFIG_KEY)
    pieces = [_piece(primary, name, key, secret)]
    for shard, digest in shards_listed(primary, name, secret):
        obj = shards.get(shard)
        if obj is None:
            raise ShardsIncomplete(f"config {wanted[:12]}: shard {shard} is missing")
        if announced_hash(obj) != wanted:
            raise ShardsIncomplete(f"config {wanted[:12]}: shard {shard} belongs to another config")
        piece = _piece(obj, shard, key, secret)
        if piece_digest(piece) != digest:
            raise ShardsIncomplete(f"config {wanted[:12]}: shard {shard} is not the one {name} lists")
        pieces.append(piece)
    return b"".join(pieces)


def halves(config_map: Mapping[str, Any], secret: Mapping[str, Any],
           shards: Mapping[str, Mapping[str, Any] | None] | None = None) -> tuple[bytes, bytes]:
    """The gzipped config and secrets from the two primaries and the shards they list (by name);
    ConfigDecodeError (ShardsIncomplete) when something is missing (pure)."""
    wanted = announced_hash(config_map) or ""
    return assemble(config_map, shards or {}, wanted, False), assemble(secret, shards or {}, wanted, True)


def decode_pair(config_map: Mapping[str, Any], secret: Mapping[str, Any]) -> tuple[CompiledConfig, SecretBundle]:
    """Both halves decoded whole; ConfigDecodeError with a one-line reason otherwise (pure)."""
    payload, raw = halves(config_map, secret)
    return decode_config(payload), decode_secrets(raw)


class IncrementalDecoder:
    """decode_pair + config_hash for one source, reusing the previous decode's elements.

    Elements are remembered by a digest of their exact JSON text (the operator writes canonical JSON, so
    an unchanged route or key has the same text) with their validated model and, when the text is not
    already canonical, their canonical form. Only the last config's elements are kept.
    """

    def __init__(self) -> None:
        # blake2b-128 of an element's JSON text -> its model; -> its canonical text, when not that text
        self._known: dict[bytes, Any] = {}
        self._forms: dict[bytes, str] = {}
        self._secrets: tuple[bytes, SecretBundle, str | None] | None = None  # (text digest, bundle, canonical)
        # The last config text's unchanged-stretch digests and where each list's elements stood in it.
        self._unchanged: _Unchanged | None = None
        self._spans: dict[str, _Spans] = {}

    def decode(self, config_data: str | bytes, secrets_data: str | bytes,
               pause: Callable[[], None] = settle) -> tuple[CompiledConfig, SecretBundle, str]:
        """(config, secrets, config_hash(config, secrets)); ConfigDecodeError with a one-line reason."""
        config_text = _gunzip(config_data, "config")
        secrets_text = _gunzip(secrets_data, "secrets")
        secrets, secrets_canonical = self._decode_secrets(secrets_text)
        del secrets_data
        digest = hashlib.sha256()
        try:
            unchanged = _Unchanged(config_text, self._unchanged)
            config = self._decode_config(config_text, digest, pause, unchanged)
        except _Unexpected:  # not what the operator writes: the plain decoder says what is wrong
            config = decode_config(config_data)
            self._known, self._forms = {}, {}
            self._unchanged, self._spans = None, {}
            digest = hashlib.sha256(canonical(config.model_dump(mode="json")).encode())
        digest.update(b"\0")
        digest.update(secrets_canonical.encode() if secrets_canonical is not None else secrets_text.encode())
        return config, secrets, digest.hexdigest()

    def _decode_config(self, text: str, digest: Any, pause: Callable[[], None],
                       unchanged: _Unchanged) -> CompiledConfig:
        fresh: tuple[dict[bytes, Any], dict[bytes, str]] = ({}, {})

        def start(key: str) -> _List:
            sink = None
            if key == _FIRST:  # the hash starts with this list whatever the order in the text: stream it
                if digest.digest() != _EMPTY:
                    raise _Unexpected(f"{key} twice")
                digest.update(f'{{{json.dumps(key)}:['.encode())
                sink = digest
            return _List(_LISTS[key], (self._known, self._forms), fresh, sink, unchanged, self._spans.get(key))

        top, lists = _top(text, start, pause)
        try:
            shell = CompiledConfig.model_validate({**top, **{key: () for key in lists}})
        except ValidationError as exc:
            raise ConfigDecodeError(f"config does not match the schema: {exc.errors()[0]['msg']}") from None
        parsed = {key: tuple(found.items) for key, found in lists.items()}
        self._known, self._forms = fresh
        self._unchanged, self._spans = unchanged, {key: found.spans for key, found in lists.items()}
        config = shell.model_copy(update=parsed) if parsed else shell
        dumped = shell.model_dump(mode="json")
        names = sorted(dumped)
        if _FIRST in lists:
            digest.update(b"]")
            names.remove(_FIRST)
        else:
            digest.update(b"{")
        for index, name in enumerate(names):
            digest.update(f'{"," if index or _FIRST in lists else ""}{json.dumps(name)}:'.encode())
            if name in lists:
                digest.update(b"[")
                for at, piece in enumerate(lists[name].texts):
                    digest.update(f"{',' if at else ''}{piece}".encode())
                digest.update(b"]")
            else:
                digest.update(canonical(dumped[name]).encode())
        digest.update(b"}")
        return config

    def _decode_secrets(self, text: str) -> tuple[SecretBundle, str | None]:
        """The bundle, and its canonical text when ``text`` is not it (None: ``text`` is canonical)."""
        key = hashlib.blake2b(text.encode(), digest_size=16).digest()
        if self._secrets is not None and self._secrets[0] == key:
            return self._secrets[1], self._secrets[2]
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise ConfigDecodeError(f"secrets is not valid base64 gzip JSON: {exc}") from None
        try:
            secrets = SecretBundle.model_validate(document)
        except ValidationError as exc:  # decode_secrets' messages
            raise ConfigDecodeError(f"secrets do not match the schema: {exc.errors()[0]['msg']}") from None
        form = canonical({"values": secrets.values})  # SecretBundle's whole dump, without copying it
        self._secrets = (key, secrets, None if form == text else form)
        return secrets, self._secrets[2]

    def decode_pair(self, config_map: Mapping[str, Any], secret: Mapping[str, Any],
                    pause: Callable[[], None] = settle) -> tuple[CompiledConfig, SecretBundle, str]:
        """The ConfigMap and Secret the operator writes, decoded (ConfigDecodeError otherwise)."""
        return self.decode(*halves(config_map, secret), pause)
