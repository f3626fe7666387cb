"""API-key authentication: checksum pre-check (generated-format keys), then one sha256 and a dict lookup.

The table maps sha256(key) -> key record and is built once per config
snapshot from the compiled ApiKeys and the hashes in the SecretBundle; the
data plane never sees a key itself. Garbage and typos of generated keys are
refused by the CRC checksum; keys users bring are looked up. The outcome of
that check and lookup (a record or none) is remembered per presented key, a
few thousand at most, so a client's repeated key costs one dict lookup (its
string hash, computed in C) instead of the checksum and a sha256, as bearer
tokens are remembered by the token string (jwt_auth.TokenCache). The memory
belongs to the table, so to one config snapshot: a reload that deletes,
disables or re-keys an ApiKey refuses the key on the next request. A lookup
compares a presented key's bytes with a remembered one only when their keyed
string hashes (SipHash, per-process secret) agree, so its timing says nothing
about a key that was not presented; the per-request rules (disabled, expiry,
scope, CIDRs) are checked on every request.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

from kubegate.dataplane.ipfilter import CidrSet, parse_ip

from kubegate.apikeys import worth_a_lookup
from kubegate.config import CompiledApiKey, CompiledLimit, CompiledRoute, SecretBundle

_HEX = frozenset("0123456789abcdef")
_UNSEEN = object()
_EVERY_ROUTE: frozenset[str] = frozenset()  # one object for every key without routes (216 B each otherwise)


@dataclass(slots=True, frozen=True)
class KeyRecord:
    id: str
    namespace: str
    routes: frozenset[str]  # route ids; empty = every route in the namespace
    cidrs: CidrSet | None
    rate_limit: CompiledLimit | None
    expires_at: float | None
    disabled: bool


@dataclass(slots=True)
class KeyOutcome:  # not frozen: a frozen dataclass's __init__ is dearer, on every request
    """ok -> admitted; otherwise reason is invalid_api_key / api_key_expired (401) or forbidden_* (403)."""

    ok: bool
    reason: str = ""
    status: int = 401
    record: KeyRecord | None = None


_INVALID = KeyOutcome(False, "invalid_api_key")


def extract_api_key(x_api_key: str | None, authorization: str | None) -> str | None:
    """The key from ``X-API-Key`` or ``Authorization: ApiKey <key>``; None when absent."""
    if x_api_key:
        return x_api_key.strip()
    if authorization and authorization[:7].lower() == "apikey ":
        return authorization[7:].strip()
    return None


class ApiKeyTable:
    SEEN_KEPT = 4096  # digests of presented keys whose lookup is remembered (then the memory starts afresh)

    def __init__(self, keys: Iterable[CompiledApiKey], secrets: SecretBundle,
                 dropped: dict[str, str] | None = None) -> None:
        """Unusable keys raise ValueError, or with ``dropped`` are left out and named there."""
        self._by_hash: dict[bytes, KeyRecord] = {}  # sha256 digest -> record
        self._seen: dict[str, KeyRecord | None] = {}  # a presented key -> its lookup (this snapshot's)
        self._admitted: dict[int, KeyOutcome] = {}  # id(record) -> its admitting outcome, made once (read-only)
        for key in keys:
            hashed = secrets.values.get(key.hash_ref, "").strip().lower()
            if len(hashed) != 64 or not set(hashed) <= _HEX:
                reason = f"ApiKey {key.namespace}/{key.name}: hash {key.hash_ref!r} is missing or not sha256 hex"
                if dropped is None:
                    raise ValueError(reason)
                dropped[f"ApiKey/{key.namespace}/{key.name}"] = reason
                continue
            self._by_hash[bytes.fromhex(hashed)] = KeyRecord(
                id=key.id,
                namespace=key.namespace,
                routes=frozenset(key.routes) if key.routes else _EVERY_ROUTE,
                cidrs=CidrSet(key.allowed_cidrs) if key.allowed_cidrs else None,
                rate_limit=key.rate_limit,
                expires_at=key.expires_at,
                disabled=key.disabled,
            )

    def __len__(self) -> int:
        return len(self._by_hash)

    def _record(self, key: str) -> KeyRecord | None:
        record = self._seen.get(key, _UNSEEN)
        if record is _UNSEEN:
            # a header's undecodable bytes are surrogates here: hashed as the bytes sent (never a key's)
            digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
            record = self._by_hash.get(digest) if worth_a_lookup(key) else None
            if len(self._seen) >= self.SEEN_KEPT:
                self._seen.clear()
            self._seen[key] = record
        return record  # type: ignore[return-value]

    def check(self, key: str, route: CompiledRoute, client_ip: str, now: float | None = None) -> KeyOutcome:
        record = self._record(key)
        if record is None:
            return _INVALID
        if record.disabled:
            return KeyOutcome(False, "api_key_disabled", 401, record)
        if record.expires_at is not None and (now or time.time()) >= record.expires_at:
            return KeyOutcome(False, "api_key_expired", 401, record)
        if record.routes:
            in_scope = route.id in record.routes
        else:
            in_scope = route.namespace == record.namespace
        if not in_scope:
            return KeyOutcome(False, "forbidden_scope", 403, record)
        if record.cidrs is not None:
            ip = parse_ip(client_ip)
            if ip is None or ip not in record.cidrs:
                return KeyOutcome(False, "forbidden_cidr", 403, record)
        admitted = self._admitted.get(id(record))  # records live as long as the table: their ids are theirs
        if admitted is None:
            admitted = self._admitted[id(record)] = KeyOutcome(True, record=record)
        return admitted

