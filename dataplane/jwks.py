"""JWKS fetching and caching for JWT verification.

One cache per data plane, living across config reloads. Keys are cached by
``kid`` for ``ttl`` seconds; a stale set keeps serving while it is
refreshed. An unknown ``kid`` (key rotation) triggers a refetch, at most
once per ``min_refetch_interval`` per URI, so a flood of forged kids cannot
turn the gateway into a JWKS hammer. Concurrent lookups share one fetch.
Symmetric (``oct``) keys are never taken from a JWKS.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt

log = logging.getLogger("kubegate.jwks")


class JwksError(Exception):
    """The JWKS could not be fetched or holds no usable key."""


@dataclass(slots=True, frozen=True)
class JwkKey:
    """A verification key (cryptography object) and the ``alg`` the JWK pins, if any."""

    key: Any
    alg: str | None


@dataclass(slots=True)
class _Entry:
    keys: dict[str | None, JwkKey] = field(default_factory=dict)
    fetched_at: float = float("-inf")  # last successful fetch
    attempted_at: float = float("-inf")  # last fetch attempt (success or not)
    inflight: asyncio.Future | None = None


def parse_jwks(document: Any) -> dict[str | None, JwkKey]:
    """Usable signature keys of a JWKS document by kid (None for a key without kid)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("not a JWKS document (no 'keys' list)")
    keys: dict[str | None, JwkKey] = {}
    for data in document["keys"]:
        if not isinstance(data, dict) or data.get("kty") == "oct" or data.get("use", "sig") != "sig":
            continue
        try:
            alg = data.get("alg")
            keys[data.get("kid")] = JwkKey(jwt.PyJWK(data).key, alg if isinstance(alg, str) else None)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue  # an unsupported or malformed key does not spoil the others
    if not keys:
        raise JwksError("JWKS holds no usable signature key")
    return keys


class JwksCache:
    def __init__(
        self,
        *,
        ttl: float = 300.0,
        min_refetch_interval: float = 30.0,
        timeout: float = 5.0,
        session: aiohttp.ClientSession | None = None,
        clock=time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.min_refetch_interval = min_refetch_interval
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._own_session = session is None
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self.fetches = 0  # HTTP fetches made (observability and tests)

    async def get_key(self, uri: str, kid: str | None) -> JwkKey | None:
        """The key for ``kid`` (None when the set has no such key even after a bounded refetch).

        Raises JwksError only when no key set was ever fetched for ``uri``.
        """
        entry = self._entries.setdefault(uri, _Entry())
        now = self._clock()
        key = _pick(entry.keys, kid)
        if key is not None:
            if now - entry.fetched_at > self.ttl and now - entry.attempted_at >= self.min_refetch_interval:
                self._start_fetch(uri, entry)  # stale-while-revalidate
            return key
        if now - entry.attempted_at >= self.min_refetch_interval or entry.inflight is not None:
            await self._fetch(uri, entry)
        elif not entry.keys:
            raise JwksError(f"JWKS {uri} unavailable")
        return _pick(entry.keys, kid)

    def _start_fetch(self, uri: str, entry: _Entry) -> asyncio.Future:
        if entry.inflight is None:
            entry.attempted_at = self._clock()
            entry.inflight = asyncio.ensure_future(self._download(uri, entry))
            # a background refresh may fail with nobody awaiting it; it is logged already
            entry.inflight.add_done_callback(lambda f: f.cancelled() or f.exception())
        return entry.inflight

    async def _fetch(self, uri: str, entry: _Entry) -> None:
        try:
            await asyncio.shield(self._start_fetch(uri, entry))
        except JwksError:
            if not entry.keys:
                raise

    async def _download(self, uri: str, entry: _Entry) -> None:
        try:
            if self._session is None:
                self._session = aiohttp.ClientSession()
            self.fetches += 1
            async with self._session.get(uri, timeout=self._timeout, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise JwksError(f"JWKS {uri} answered HTTP {resp.status}")
                document = await resp.json(content_type=None)
            entry.keys = parse_jwks(document)
            entry.fetched_at = self._clock()
        except JwksError as exc:
            log.warning("%s", exc)
            raise
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            log.warning("JWKS %s fetch failed: %s", uri, type(exc).__name__)
            raise JwksError(f"JWKS {uri} fetch failed") from None
        finally:
            entry.inflight = None

    async def close(self) -> None:
        for entry in self._entries.values():
            if entry.inflight is not None:
                entry.inflight.cancel()
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None


def _pick(keys: dict[str | None, JwkKey], kid: str | None) -> JwkKey | None:
    if kid is not None:
        return keys.get(kid)
    if len(keys) == 1:  # a token without kid is accepted only when the set is unambiguous
        return next(iter(keys.values()))
    return None
