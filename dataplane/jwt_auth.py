"""JWT verification with pyjwt, compiled once per config snapshot.

Key confusion is impossible by construction: every allowed algorithm is
mapped to the one key type it may use (HMAC secrets for HS*, RSA keys for
RS*/PS*, the matching EC curve for ES*, Ed25519/Ed448 for EdDSA) when the
config is loaded, and a token whose header names an algorithm outside the
route's allow list is refused before any signature work. ``none`` can never
be allowed.

Verified tokens are cached (bounded LRU keyed by the verifier and the token
string itself, whose hash Python computes in C at a fraction of a sha256's
cost; tokens over RAW_KEY_MAX characters are keyed by their sha256 so the
cache stays small) until they expire, so a repeated token costs a dict
lookup (:meth:`JwtVerifier.lookup`, synchronous); exp and nbf are still
checked against the clock on every hit.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jwt
from kubegate.dataplane.jwks import JwksCache, JwksError

from kubegate.config import CompiledJwt, SecretBundle
from kubegate.jwt_keys import key_fits, load_public_key

MAX_TOKEN_BYTES = 16_384
RAW_KEY_MAX = 2_048  # longer tokens are cached under their sha256: at most ~20 MiB of keys at 10,000 entries
NO_EXP_CACHE_SECONDS = 300.0  # tokens without exp are re-verified this often (key rotation)

SUPPORTED_ALGORITHMS = frozenset(
    {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
     "ES512", "EdDSA"}
)


MAX_TIME_CLAIM = 253_402_300_799  # 9999-12-31T23:59:59Z: NumericDate values beyond it are not times


def time_claims_problem(claims: dict[str, Any]) -> str | None:
    """exp, nbf and iat, when present, must be NumericDates (RFC 7519 §2): JSON numbers of seconds
    between 0 and MAX_TIME_CLAIM. None when they are; otherwise why not (no claim value quoted)."""
    for name in ("exp", "nbf", "iat"):
        if name not in claims:
            continue
        value = claims[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"token {name} claim is not a number"
        if not 0 <= value <= MAX_TIME_CLAIM:  # NaN fails both comparisons
            return f"token {name} claim is out of range"
    return None


class JwtRejected(Exception):
    """A token that does not admit: reason word and HTTP status (401 invalid, 403 not allowed)."""

    def __init__(self, reason: str, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status


@dataclass(slots=True, frozen=True)
class JwtIdentity:
    principal: str  # "jwt:<sub>" for audit lines and the decision, made once per token
    sub: str | None
    exp: float | None
    nbf: float | None
    upstream_headers: dict[str, str]
    forbidden: str | None  # requiredClaims mismatch: the (cached) 403 message
    cache_until: float

    key = None  # not a field: a token is never an API key, so admission uses an identity as the caller as is


_ERRORS: tuple[tuple[type[Exception], str, str], ...] = (
    (jwt.ExpiredSignatureError, "token_expired", "token expired"),
    (jwt.ImmatureSignatureError, "token_not_yet_valid", "token not yet valid"),
    (jwt.InvalidIssuerError, "invalid_issuer", "token issuer not accepted"),
    (jwt.InvalidAudienceError, "invalid_audience", "token audience not accepted"),
)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def claim_text(value: Any) -> str:
    """A claim as a header value: strings verbatim, everything else as compact JSON;
    control characters removed so a claim can never split a header."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)
    return _CONTROL.sub("", text)


def _claim_matches(actual: Any, wanted: str) -> bool:
    if isinstance(actual, list):  # e.g. roles: [...] contains the wanted value
        return any(_claim_matches(item, wanted) for item in actual)
    return actual is not None and claim_text(actual) == wanted


class TokenCache:
    """Bounded LRU of verified tokens, shared by the verifiers of one config snapshot.

    Keys are (verifier, token or its sha256 digest); see JwtVerifier.cache_key."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[int, str | bytes], JwtIdentity] = OrderedDict()

    def get(self, key: tuple[int, str | bytes], now: float) -> JwtIdentity | None:
        identity = self._entries.get(key)
        if identity is None:
            return None
        if now >= identity.cache_until:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return identity

    def put(self, key: tuple[int, str | bytes], identity: JwtIdentity) -> None:
        self._entries[key] = identity
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class JwtVerifier:
    """One route's compiled jwt settings (routes with identical settings share one)."""

    def __init__(self, cfg: CompiledJwt, secrets: SecretBundle, jwks: JwksCache | None, cache: TokenCache,
                 ident: int) -> None:
        algorithms = tuple(a for a in cfg.algorithms if a in SUPPORTED_ALGORITHMS)
        if not algorithms or len(algorithms) != len(cfg.algorithms):
            bad = sorted(set(cfg.algorithms) - SUPPORTED_ALGORITHMS) or ["(none)"]
            raise ValueError(f"jwt algorithms not supported: {', '.join(bad)}")
        self.algorithms = frozenset(algorithms)
        self.cfg = cfg
        self._jwks = jwks
        self._cache = cache
        self._ident = ident
        self._static: dict[str, Any] = {}  # alg -> prepared key, parsed once
        sources = [cfg.jwks_uri is not None, cfg.public_key_pem is not None, cfg.hmac_secret is not None]
        if sum(sources) != 1:
            raise ValueError("jwt needs exactly one key source")
        if cfg.hmac_secret is not None:
            secret = secrets.values.get(cfg.hmac_secret)
            if not secret:
                raise ValueError(f"jwt HMAC secret {cfg.hmac_secret!r} missing from the secret bundle")
            key: Any = secret.encode()
        elif cfg.public_key_pem is not None:
            key = load_public_key(cfg.public_key_pem)
        else:
            key = None
        if key is not None:
            for alg in algorithms:
                if not key_fits(alg, key):
                    raise ValueError(f"jwt key does not fit algorithm {alg}")
                self._static[alg] = key
        elif any(a.startswith("HS") for a in algorithms):
            raise ValueError("HS* algorithms need an HMAC secret, never a JWKS")
        elif jwks is None:
            raise ValueError("jwksUri needs a JWKS cache (none configured)")
        self._leeway = cfg.leeway_seconds
        # exp/nbf/iat are checked here (time_claims_problem, _check), not by pyjwt: it takes "exp": "9999999999"
        # as a string that never expires and calls other malformed values just "invalid".
        self._options = {"verify_aud": bool(cfg.audiences), "require": [], "verify_exp": False,
                         "verify_nbf": False, "verify_iat": False}
        self._audience = list(cfg.audiences) or None

    def cache_key(self, token: str) -> tuple[int, str | bytes]:
        if len(token) <= RAW_KEY_MAX:
            return (self._ident, token)
        if len(token) > MAX_TOKEN_BYTES:
            raise JwtRejected("invalid_token", "token too large")
        return (self._ident, hashlib.sha256(token.encode()).digest())

    def lookup(self, token: str, now: float) -> JwtIdentity | None:
        """A token verified before: its identity (exp, nbf and requiredClaims re-checked, raising
        JwtRejected like verify), or None when it must be verified (await verify).

        Every request with a token comes here: TokenCache.get and _check are inlined (each
        Python call costs about a microsecond on a busy gateway)."""
        key = (self._ident, token) if len(token) <= RAW_KEY_MAX else self.cache_key(token)
        entries = self._cache._entries
        identity = entries.get(key)
        if identity is None:
            return None
        if now >= identity.cache_until:
            del entries[key]
            return None
        entries.move_to_end(key)
        if identity.forbidden is not None or (identity.nbf is not None and now < identity.nbf - self._leeway):
            self._check(identity, now)  # raises; exp is covered by cache_until (at most exp + leeway)
        return identity

    async def verify(self, token: str, now: float | None = None) -> JwtIdentity:
        """Admit or raise JwtRejected; a 403 (requiredClaims) is also a JwtRejected."""
        now = time.time() if now is None else now
        cache_key = self.cache_key(token)
        identity = self._cache.get(cache_key, now)
        if identity is None:
            identity = await self._verify_signature(token, now)
            self._cache.put(cache_key, identity)
        self._check(identity, now)  # on every hit, and against the caller's clock on a miss
        return identity

    def _check(self, identity: JwtIdentity, now: float) -> None:
        leeway = self.cfg.leeway_seconds
        if identity.exp is not None and now > identity.exp + leeway:
            raise JwtRejected("token_expired", "token expired")
        if identity.nbf is not None and now < identity.nbf - leeway:
            raise JwtRejected("token_not_yet_valid", "token not yet valid")
        if identity.forbidden is not None:
            raise JwtRejected("forbidden_claims", identity.forbidden, 403)

    async def _key_for(self, header: dict[str, Any], alg: str) -> Any:
        if self._static:
            return self._static[alg]
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise JwtRejected("invalid_token", "token kid is not a string")
        try:
            jwk = await self._jwks.get_key(self.cfg.jwks_uri, kid)
        except JwksError:
            raise JwtRejected("jwks_unavailable", "signing keys unavailable", 503) from None
        if jwk is None:
            raise JwtRejected("invalid_token", "token signed by an unknown key")
        if (jwk.alg is not None and jwk.alg != alg) or not key_fits(alg, jwk.key):
            raise JwtRejected("invalid_token", "token key does not fit its algorithm")
        return jwk.key

    async def _verify_signature(self, token: str, now: float) -> JwtIdentity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise JwtRejected("invalid_token", "malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise JwtRejected("invalid_token", "token algorithm not allowed")
        key = await self._key_for(header, alg)
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg], audience=self._audience, issuer=self.cfg.issuer,
                leeway=self.cfg.leeway_seconds, options=self._options,
            )
        except jwt.PyJWTError as exc:
            for kind, reason, message in _ERRORS:
                if isinstance(exc, kind):
                    raise JwtRejected(reason, message) from None
            raise JwtRejected("invalid_token", "invalid token") from None
        if not isinstance(claims, dict):
            raise JwtRejected("invalid_token", "token claims are not an object")
        problem = time_claims_problem(claims)
        if problem is not None:
            raise JwtRejected("invalid_time_claim", problem)
        return self._identity(claims, now)

    def _identity(self, claims: dict[str, Any], now: float) -> JwtIdentity:
        exp = claims.get("exp")
        nbf = claims.get("nbf")
        exp = float(exp) if isinstance(exp, (int, float)) else None
        nbf = float(nbf) if isinstance(nbf, (int, float)) else None
        missing = [name for name, wanted in self.cfg.required_claims.items()
                   if not _claim_matches(claims.get(name), wanted)]
        forbidden = f"token lacks required claims: {', '.join(sorted(missing))}" if missing else None
        headers = {
            header: claim_text(claims[claim])
            for claim, header in self.cfg.forward_claims.items()
            if claims.get(claim) is not None
        }
        sub = claims.get("sub")
        until = now + NO_EXP_CACHE_SECONDS
        if exp is not None:
            until = min(until, exp + self.cfg.leeway_seconds)
        sub = claim_text(sub) if sub is not None else None
        return JwtIdentity(
            principal=f"jwt:{sub or '-'}", sub=sub,
            exp=exp, nbf=nbf, upstream_headers=headers, forbidden=forbidden, cache_until=until,
        )
