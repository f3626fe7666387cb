"""The pure translator: kubegate CRs + the Secrets and Services they reference -> compiled config.

No I/O and no clock: the same :class:`TranslationInput` always yields a
byte-identical config and the same hash (everything is sorted). One bad
object never stops the others: it gets ``Accepted=False`` or
``ResolvedRefs=False`` in its :class:`ObjectResult` and is left out.

Secret material (HMAC secrets, API-key hashes, TLS keys) goes to the
:class:`SecretBundle` only; an API key itself never leaves this module.

Speed (config-propagation latency): every step is linear in the number of
objects (conflicts and rate-limit precedence are dict lookups, never pairwise
scans), and a :class:`Translator` remembers what each object compiled to in
its previous call, so an unchanged object is neither re-validated nor
recompiled nor re-serialised. The memo is an optimisation only: its answers
are checked against everything the object read (its spec, the Secrets and
Services it looked up, the routes it named), and :func:`translate` returns
byte-identical results with or without it.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from pydantic import BaseModel

from kubegate.apikeys import key_hash, key_id, key_problem
from kubegate.config import (
    CompiledApiKey,
    CompiledAuth,
    CompiledBackend,
    CompiledCircuitBreaker,
    CompiledClientAuth,
    CompiledConfig,
    CompiledHsts,
    CompiledJwt,
    CompiledLimit,
    CompiledRateLimit,
    CompiledRoute,
    CompiledTls,
    SecretBundle,
    canonical_json,
)
from kubegate.durations import parse_duration
from kubegate.jwt_keys import key_fits, load_public_key
from kubegate.resources import (
    Condition,
    ObjectRef,
    ObjectResult,
    ServiceInfo,
    SourceObject,
    TranslationInput,
    TranslationResult,
)
from kubegate.spec import (
    ApiKeySpec,
    CircuitBreaker,
    GatewayRouteSpec,
    RateLimitPolicySpec,
    SecretKeyRef,
    SpecModel,
    TLSPolicySpec,
    parse_spec,
)

# Condition types and reasons (Gateway API vocabulary where it has one).
ACCEPTED, RESOLVED_REFS = "Accepted", "ResolvedRefs"
INVALID_SPEC = "InvalidSpec"
CONFLICTED = "Conflicted"
BACKEND_NOT_FOUND = "BackendNotFound"
SECRET_NOT_FOUND = "SecretNotFound"
ROUTE_NOT_FOUND = "RouteNotFound"
INVALID_KEY = "InvalidKey"
INVALID_CERTIFICATE = "InvalidCertificate"
CERTIFICATE_NOT_READY = "CertificateNotReady"

MAX_NAME = 63
ANY = "*"  # "every host" / "every method" in the conflict index (empty lists in the spec)

Scope = Literal["route", "namespace", "gateway"]


# --- small pure helpers -------------------------------------------------------


def age_key(obj: SourceObject) -> tuple[str, str, str]:
    """Older first: creationTimestamp, then namespace/name (files have no timestamp)."""
    return (obj.creation_timestamp, obj.namespace, obj.name)


_PARAM = re.compile(r"/:[A-Za-z_][A-Za-z0-9_]*")
_BRACED = re.compile(r"/\{[A-Za-z_][A-Za-z0-9_]*\}")
_CATCH_ALL = re.compile(r"/\*[A-Za-z_][A-Za-z0-9_]*")


def normalise_path(path: str) -> str:
    """``/a/:id`` and ``/a/{x}`` claim the same requests; so do ``*rest`` and ``*tail``."""
    path = _PARAM.sub("/{}", path)
    path = _BRACED.sub("/{}", path)
    return _CATCH_ALL.sub("/*", path)


def _overlap(a: tuple[str, ...], b: tuple[str, ...]) -> set[str] | None:
    """Shared values of two lists where empty means "everything"; None = no overlap."""
    if not a and not b:
        return {"*"}
    if not a or not b:
        return set(a or b)
    shared = set(a) & set(b)
    return shared or None


def certificate_name(namespace: str, name: str) -> str:
    """``kubegate-<ns>-<name>``, shortened with a hash suffix to fit 63 characters."""
    full = f"kubegate-{namespace}-{name}"
    if len(full) <= MAX_NAME:
        return full
    suffix = hashlib.sha256(full.encode()).hexdigest()[:8]
    return f"{full[: MAX_NAME - 9].rstrip('-.')}-{suffix}"


def backend_url(service: ServiceInfo, port: int, cluster_domain: str) -> str:
    if service.type == "ExternalName" and service.external_name:
        return f"http://{service.external_name}:{port}"
    return f"http://{service.name}.{service.namespace}.svc.{cluster_domain}:{port}"


# Durations repeat across thousands of objects ("30s", "1m"); parsing is pure.
_seconds = functools.lru_cache(maxsize=4096)(parse_duration)


def _ok(type_: str) -> Condition:
    return Condition(type=type_, status="True", reason=type_, message="")


def _false(type_: str, reason: str, message: str) -> Condition:
    return Condition(type=type_, status="False", reason=reason, message=message)


_ACCEPTED_OK, _RESOLVED_OK = _ok(ACCEPTED), _ok(RESOLVED_REFS)


def _text(value: bytes) -> str | None:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return None


def _ascii(value: bytes) -> str | None:
    """PEM text: ASCII only (OpenSSL's in-memory loaders take nothing else)."""
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None


def _key_kind(public_key: object) -> str:
    """A key's type and size in words, for reasons ("an RSA-1024 key", "an EC secp256r1 key")."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"an RSA-{public_key.key_size} key"
    if isinstance(public_key, dsa.DSAPublicKey):
        return f"a DSA-{public_key.key_size} key"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"an EC {public_key.curve.name} key"
    return f"an {type(public_key).__name__.removeprefix('_').removesuffix('PublicKey')} key"


def _tagged(value: Any) -> str:
    return f"\0{type(value).__name__}:{value!r}"  # YAML dates and the like: never equal to a string


_FINGERPRINT = json.JSONEncoder(separators=(",", ":"), default=_tagged)
# Exactly json.dumps(..., sort_keys=True, separators=(",", ":")), i.e. config.canonical_json, built once.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _fingerprint(spec: Any) -> str | None:
    """The exact raw spec (types and key order included: ``1``, ``1.0`` and ``true`` differ);
    None for a structure JSON cannot hold (a recursive YAML alias), which is never reused."""
    try:
        return _FINGERPRINT.encode(spec)
    except (ValueError, TypeError, RecursionError):
        return None


# --- canonical JSON, assembled from cached pieces ---------------------------------------

_CANONICAL_KEEP = 4  # configs whose canonical bytes stay known (current, previous, ...)
_canonical: OrderedDict[int, tuple[BaseModel, bytes]] = OrderedDict()
_canonical_lock = threading.Lock()


def _remember_canonical(model: BaseModel, payload: bytes) -> None:
    with _canonical_lock:
        _canonical[id(model)] = (model, payload)
        _canonical.move_to_end(id(model))
        while len(_canonical) > _CANONICAL_KEEP:
            _canonical.popitem(last=False)


def canonical_bytes(model: BaseModel) -> bytes:
    """``canonical_json(model)``, without re-serialising a config or bundle translate() just produced."""
    with _canonical_lock:
        known = _canonical.get(id(model))
    if known is not None and known[0] is model:
        return known[1]
    return canonical_json(model)


def _item_json(model: BaseModel) -> bytes:
    return _CANONICAL.encode(model.model_dump(mode="json")).encode()


def _assemble_json(config: CompiledConfig, lists: dict[str, list[bytes]]) -> bytes:
    """``canonical_json(config)`` with the big lists spliced in from their items' cached JSON."""
    top: dict[str, Any] = config.model_dump(mode="json", exclude=set(lists))
    marks = {name: f"\0{name}\0" for name in lists}
    top.update(marks)
    text = _CANONICAL.encode(top).encode()
    for name, items in lists.items():
        mark = json.dumps(marks[name]).encode()
        head, found, tail = text.partition(mark)
        if not found:  # impossible while CompiledConfig has these fields; never guess
            return canonical_json(config)
        text = b"".join((head, b"[", b",".join(items), b"]", tail))
    return text


# --- what one object compiled to (the memo's unit) ------------------------------------

_SECRET, _SERVICE, _ROUTE = "secret", "service", "route"


@dataclass(frozen=True, slots=True)
class _Fragment:
    """One object's compiled part plus every side effect, so a cache hit can replay it."""

    compiled: Any  # CompiledRoute / CompiledApiKey / CompiledTls, or None
    missing: tuple[tuple[str, str], ...]  # (reason, message) for ResolvedRefs
    warnings: tuple[str, ...]
    bundle: tuple[tuple[str, str], ...]  # SecretBundle entries
    key_id: str | None
    certificate: str | None
    reads: tuple[tuple[str, Any, Any], ...]  # (table, key, value seen): what it depends on


class _Scope:
    """Compiling one object: reads the inputs (recording what it saw) and collects side effects."""

    __slots__ = ("bundle", "certificate", "inp", "key_id", "missing", "obj", "reads", "route_names", "warnings")

    def __init__(self, inp: TranslationInput, route_names: set[tuple[str, str]], obj: SourceObject) -> None:
        self.inp, self.route_names, self.obj = inp, route_names, obj
        self.reads: list[tuple[str, Any, Any]] = []
        self.missing: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        self.bundle: list[tuple[str, str]] = []
        self.key_id: str | None = None
        self.certificate: str | None = None

    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        value = self.inp.secrets.get((namespace, name))
        self.reads.append((_SECRET, (namespace, name), value))
        return value

    def service(self, namespace: str, name: str) -> ServiceInfo | None:
        value = self.inp.services.get((namespace, name))
        self.reads.append((_SERVICE, (namespace, name), value))
        return value

    def route_exists(self, namespace: str, name: str) -> bool:
        value = (namespace, name) in self.route_names
        self.reads.append((_ROUTE, (namespace, name), value))
        return value

    def unresolved(self, reason: str, message: str) -> None:
        self.missing.append((reason, message))

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def put(self, key: str, value: str) -> None:
        self.bundle.append((key, value))

    def secret_value(self, namespace: str, ref: SecretKeyRef, what: str) -> bytes | None:
        """The bytes at ref in namespace, or None with SecretNotFound recorded (and a warning)."""
        data = self.secret(namespace, ref.name)
        if data is None:
            self.unresolved(SECRET_NOT_FOUND, f"{what}: Secret {namespace}/{ref.name} not found")
            self.warn(
                f"{self.obj.ref}: Secret {namespace}/{ref.name} is not among the inputs "
                f"(kept elsewhere?); {what} is not served without it"
            )
            return None
        if ref.key not in data:
            self.unresolved(SECRET_NOT_FOUND, f"{what}: Secret {namespace}/{ref.name} has no key {ref.key!r}")
            return None
        return data[ref.key]

    def fragment(self, compiled: Any) -> _Fragment:
        return _Fragment(compiled, tuple(self.missing), tuple(self.warnings), tuple(self.bundle),
                         self.key_id, self.certificate, tuple(self.reads))


def _still_valid(fragment: _Fragment, inp: TranslationInput, route_names: set[tuple[str, str]]) -> bool:
    """Whether everything the fragment read is unchanged (identity first, then equality)."""
    for table, key, seen in fragment.reads:
        if table == _SECRET:
            now = inp.secrets.get(key)
        elif table == _SERVICE:
            now = inp.services.get(key)
        else:
            now = key in route_names
        if now is not seen and now != seen:
            return False
    return True


# --- GatewayRoute -------------------------------------------------------------------


class _ClaimIndex:
    """Accepted routes by (normalised path, host, method); ``*`` stands for an empty list.

    A host claims only itself: ``api.example.com``, ``*.example.com`` and "no hosts"
    (``*``) are three distinct keys that coexist, and the data plane picks among them
    (exact, then longest ``*.`` suffix, then no hosts). Methods do overlap: an empty
    list claims every method. Finding the oldest accepted route that overlaps a new
    one costs a few dict lookups per host x method pair, not a scan over every route
    on the path. Each bucket keeps its oldest claimant; the oldest of those is the
    oldest overlap.
    """

    def __init__(self) -> None:
        self.cells: dict[tuple[str, str, str], int] = {}  # (path, host|*, method|*)
        self.by_host: dict[tuple[str, str], int] = {}  # (path, host|*): any method
        self.claimants: list[tuple[_Verdict, tuple[str, ...], tuple[str, ...]]] = []

    def oldest_overlap(self, path: str, hosts: tuple[str, ...], methods: tuple[str, ...]) -> int | None:
        found: list[int] = []
        for h in hosts or (ANY,):
            if methods:
                for m in methods:
                    for key in ((path, h, m), (path, h, ANY)):
                        if key in self.cells:
                            found.append(self.cells[key])
            elif (path, h) in self.by_host:
                found.append(self.by_host[(path, h)])
        return min(found) if found else None

    def claim(self, path: str, hosts: tuple[str, ...], methods: tuple[str, ...], verdict: _Verdict) -> None:
        index = len(self.claimants)
        self.claimants.append((verdict, hosts, methods))
        for h in hosts or (ANY,):
            self.by_host.setdefault((path, h), index)
            for m in methods or (ANY,):
                self.cells.setdefault((path, h, m), index)


def _claims(routes: list[_Verdict]) -> None:
    """Older routes win same-host+path+method overlaps; losers get Accepted=False Conflicted."""
    index = _ClaimIndex()
    for verdict in routes:  # already oldest first
        path, hosts, methods = verdict.entry.claims()
        winner = index.oldest_overlap(path, hosts, methods)
        if winner is None:
            index.claim(path, hosts, methods, verdict)
            continue
        other, other_hosts, other_methods = index.claimants[winner]
        shared_hosts = ", ".join(sorted(set(hosts) & set(other_hosts))) if hosts else "none"
        shared_methods = _overlap(methods, other_methods) or set()
        verdict.reject(
            CONFLICTED,
            f"path {verdict.entry.model.path} (hosts {shared_hosts}; methods "  # type: ignore[union-attr]
            f"{', '.join(sorted(shared_methods))}) is already claimed by the older "
            f"GatewayRoute {other.obj.namespace}/{other.obj.name}",
        )


def _backends(scope: _Scope, spec: GatewayRouteSpec) -> list[CompiledBackend]:
    ns = scope.obj.namespace
    out = []
    for backend in spec.backends:
        if backend.url is not None:
            out.append(CompiledBackend(url=backend.url, weight=backend.weight))
            continue
        service = scope.service(ns, backend.service)
        if service is None:
            scope.unresolved(BACKEND_NOT_FOUND, f"service {backend.service} not found in namespace {ns}")
            continue
        declared = {p.port for p in service.ports}
        if backend.port not in declared and not (service.type == "ExternalName" and not declared):
            scope.unresolved(BACKEND_NOT_FOUND, f"service {backend.service} has no port {backend.port}")
            continue
        url = backend_url(service, backend.port, scope.inp.cluster_domain)
        out.append(CompiledBackend(url=url, weight=backend.weight))
    return out


def _jwt(scope: _Scope, spec: GatewayRouteSpec) -> tuple[CompiledJwt | None, bool]:
    """(compiled JWT settings, usable); unusable key material fails the route closed."""
    jwt = spec.auth.jwt if spec.auth else None
    if jwt is None:
        return None, True
    obj = scope.obj
    compiled = {
        "issuer": jwt.issuer,
        "audiences": tuple(jwt.audiences),
        "algorithms": tuple(jwt.algorithms),
        "jwks_uri": jwt.jwksUri,
        "required_claims": dict(jwt.requiredClaims),
        "forward_claims": dict(jwt.forwardClaims),
    }
    if jwt.secretRef is not None:
        raw = scope.secret_value(obj.namespace, jwt.secretRef, "auth.jwt.secretRef")
        if raw is None:
            return None, False
        secret = _text(raw)
        if not secret:
            scope.unresolved(INVALID_KEY, f"auth.jwt.secretRef: Secret {obj.namespace}/{jwt.secretRef.name} "
                                          f"key {jwt.secretRef.key!r} is empty or not UTF-8")
            return None, False
        bundle_key = f"jwt.{obj.namespace}.{obj.name}"
        scope.put(bundle_key, secret)
        compiled["hmac_secret"] = bundle_key
    if jwt.publicKeySecretRef is not None:
        ref = jwt.publicKeySecretRef
        raw = scope.secret_value(obj.namespace, ref, "auth.jwt.publicKeySecretRef")
        if raw is None:
            return None, False
        where = f"auth.jwt.publicKeySecretRef: Secret {obj.namespace}/{ref.name} key {ref.key!r}"
        pem = _ascii(raw)
        try:
            public_key = load_public_key(pem) if pem is not None else None
        except (ValueError, TypeError):
            public_key = None
        if public_key is None:
            scope.unresolved(INVALID_KEY, f"{where} is not a PEM public key or certificate")
            return None, False
        unfit = [alg for alg in jwt.algorithms if not key_fits(alg, public_key)]
        if unfit:
            scope.unresolved(INVALID_KEY, f"{where} holds {_key_kind(public_key)}, which cannot verify "
                                          f"{', '.join(unfit)} (algorithms lists what the key must fit)")
            return None, False
        compiled["public_key_pem"] = pem
    return CompiledJwt(**compiled), True


def _route(scope: _Scope, spec: GatewayRouteSpec) -> CompiledRoute | None:
    """The route without its rate limit (precedence is decided across objects, later)."""
    backends = _backends(scope, spec)
    jwt, jwt_ok = _jwt(scope, spec)
    if not backends or not jwt_ok:
        return None
    obj = scope.obj
    auth = None
    if spec.auth is not None:
        auth = CompiledAuth(
            required=spec.auth.required,
            methods=tuple(spec.auth.methods),
            jwt=jwt,
            mtls_subjects=tuple(spec.auth.mtls.allowedSubjects) if spec.auth.mtls else (),
        )
    return CompiledRoute(
        id=f"{obj.namespace}/{obj.name}",
        namespace=obj.namespace,
        name=obj.name,
        hosts=tuple(h.lower() for h in spec.hosts),
        path=spec.path,
        methods=tuple(spec.methods),
        backends=tuple(backends),
        strip_prefix=spec.rewrite.stripPrefix if spec.rewrite else None,
        request_timeout=_seconds(spec.timeouts.request),
        connect_timeout=_seconds(spec.timeouts.connect),
        retries=spec.retries.attempts,
        max_body_bytes=spec.maxBodyBytes,
        request_schema=spec.requestSchema,
        auth=auth,
        ip_allow=tuple(spec.ipFilter.allow) if spec.ipFilter else (),
        ip_deny=tuple(spec.ipFilter.deny) if spec.ipFilter else (),
        circuit_breaker=_circuit_breaker(spec.circuitBreaker),
    )


def _circuit_breaker(spec: CircuitBreaker | None) -> CompiledCircuitBreaker | None:
    if spec is None:
        return None
    return CompiledCircuitBreaker(
        max_requests=spec.maxRequests, max_pending_requests=spec.maxPendingRequests,
        consecutive_errors=spec.consecutiveErrors, ejection_time=_seconds(spec.ejectionTime),
    )


# --- RateLimitPolicy ----------------------------------------------------------------


def compile_policy(obj: SourceObject, spec: RateLimitPolicySpec, scope: str) -> CompiledRateLimit:
    limits = tuple(
        CompiledLimit(
            key=f"{obj.namespace}/{obj.name}#{index}",
            dimension=limit.dimension,
            header=limit.header,
            requests=limit.requests,
            period_seconds=_seconds(limit.period),
            burst=limit.burst or limit.requests,
        )
        for index, limit in enumerate(spec.limits)
    )
    return CompiledRateLimit(
        policy=f"{obj.namespace}/{obj.name}", scope=scope, limits=limits, failure_mode=spec.failureMode
    )


class _PolicyIndex:
    """Rate-limit precedence by lookup: route-targeted > namespace-wide > gateway-wide; ties -> oldest."""

    def __init__(self, policies: list[_Verdict], gateway_namespace: str) -> None:
        self.gateway_namespace = gateway_namespace
        self.targeted: dict[tuple[str, str], _Verdict] = {}
        self.namespace_wide: dict[str, _Verdict] = {}
        for policy in policies:  # oldest first: setdefault keeps the oldest of each tier
            namespace, spec = policy.obj.namespace, policy.entry.model
            for target in spec.targetRefs:  # type: ignore[union-attr]
                self.targeted.setdefault((namespace, target.name), policy)
            if not spec.targetRefs:  # type: ignore[union-attr]
                self.namespace_wide.setdefault(namespace, policy)

    def choose(self, namespace: str, name: str) -> tuple[_Verdict, Scope] | None:
        policy = self.targeted.get((namespace, name))
        if policy is not None:
            return policy, "route"
        policy = self.namespace_wide.get(namespace)
        if policy is not None:
            return policy, "namespace"
        if namespace != self.gateway_namespace:
            policy = self.namespace_wide.get(self.gateway_namespace)
            if policy is not None:
                return policy, "gateway"
        return None


# --- ApiKey -----------------------------------------------------------------------------


def _api_key(scope: _Scope, spec: ApiKeySpec) -> CompiledApiKey | None:
    obj = scope.obj
    raw = scope.secret_value(obj.namespace, spec.secretRef, "secretRef")
    for name in spec.routes:
        if not scope.route_exists(obj.namespace, name):
            scope.unresolved(ROUTE_NOT_FOUND, f"GatewayRoute {obj.namespace}/{name} not found")
    if raw is None:
        return None
    key = _text(raw)
    key = key.strip() if key else key
    if not key:
        scope.unresolved(INVALID_KEY, f"secretRef: Secret {obj.namespace}/{spec.secretRef.name} "
                                      f"key {spec.secretRef.key!r} is empty or not UTF-8")
        return None
    problem = key_problem(key)
    if problem is not None:
        scope.unresolved(INVALID_KEY, f"secretRef: Secret {obj.namespace}/{spec.secretRef.name} "
                                      f"key {spec.secretRef.key!r}: {problem}")
        return None
    hashed = key_hash(key)
    hash_ref = f"apikey.{obj.namespace}.{obj.name}"
    scope.put(hash_ref, hashed)
    scope.key_id = key_id(hashed)
    rate_limit = None
    if spec.rateLimit is not None:
        rate_limit = CompiledLimit(
            key=f"apikey:{obj.namespace}/{obj.name}",
            dimension="apiKey",
            requests=spec.rateLimit.requests,
            period_seconds=_seconds(spec.rateLimit.period),
            burst=spec.rateLimit.requests,
        )
    expires = spec.expiresAt
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return CompiledApiKey(
        id=scope.key_id,
        namespace=obj.namespace,
        name=obj.name,
        hash_ref=hash_ref,
        routes=tuple(sorted({f"{obj.namespace}/{name}" for name in spec.routes})),
        allowed_cidrs=tuple(spec.allowedCIDRs),
        rate_limit=rate_limit,
        expires_at=expires.timestamp() if expires is not None else None,
        disabled=spec.disabled,
    )


# --- TLSPolicy ----------------------------------------------------------------------------


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]


# What the data plane's OpenSSL (security level 2: 112-bit security) refuses to serve, decided here first.
MIN_RSA_BITS, MIN_EC_BITS = 2048, 224
_WEAK_HASHES = (hashes.MD5, hashes.SHA1)


def _serving_key_problem(public_key: object) -> str | None:
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < MIN_RSA_BITS:
        return f"the certificate has {_key_kind(public_key)}; at least RSA-{MIN_RSA_BITS} is required"
    if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.key_size < MIN_EC_BITS:
        return f"the certificate has {_key_kind(public_key)}; EC keys need at least {MIN_EC_BITS} bits"
    if isinstance(public_key, dsa.DSAPublicKey):
        return "the certificate has a DSA key, which no TLS cipher suite of the gateway can use"
    return None


def _pem_problem(cert: bytes, key: bytes) -> str | None:
    """Why a certificate/key pair cannot be served, or None; a bad PEM must not break reloads."""
    if _ascii(cert) is None or _ascii(key) is None:
        return "tls.crt and tls.key must be ASCII PEM text"
    try:
        certs = x509.load_pem_x509_certificates(cert)
    except ValueError:
        return "tls.crt is not a PEM certificate chain"
    try:
        private = load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        return "tls.key is not an unencrypted PEM private key"
    except Exception:  # noqa: BLE001 - cryptography refuses some key types with UnsupportedAlgorithm
        return "tls.key holds a key type that cannot be served"
    if _spki(certs[0].public_key()) != _spki(private.public_key()):
        return "tls.key does not match the certificate in tls.crt"
    problem = _serving_key_problem(certs[0].public_key())
    if problem:
        return problem
    for cert_obj in certs:
        if cert_obj.issuer == cert_obj.subject:
            continue  # a self-signed root's own signature is never checked
        try:
            algorithm = cert_obj.signature_hash_algorithm
        except Exception:  # noqa: BLE001 - UnsupportedAlgorithm for exotic signatures
            algorithm = None
        if isinstance(algorithm, _WEAK_HASHES):
            return (f"{cert_obj.subject.rfc4514_string() or 'a certificate'} in tls.crt is signed with "
                    f"{algorithm.name.upper()}; SHA-256 or better is required")
    return None


def _tls(scope: _Scope, spec: TLSPolicySpec) -> CompiledTls | None:
    obj, inp = scope.obj, scope.inp
    prefix = f"tls.{obj.namespace}.{obj.name}"
    if spec.certificate.issuerRef is not None:
        scope.certificate = certificate_name(obj.namespace, obj.name)
        where = (inp.gateway_namespace, scope.certificate)
        data = scope.secret(*where) or {}
        if not data.get("tls.crt") or not data.get("tls.key"):
            scope.unresolved(
                CERTIFICATE_NOT_READY,
                f"Certificate {inp.gateway_namespace}/{scope.certificate} has not been issued yet "
                f"(Secret {where[0]}/{where[1]} has no tls.crt/tls.key)",
            )
            return None
    else:
        where = (obj.namespace, spec.certificate.secretRef.name)
        data = scope.secret(*where)
        if data is None or not data.get("tls.crt") or not data.get("tls.key"):
            scope.unresolved(
                SECRET_NOT_FOUND,
                f"certificate.secretRef: Secret {where[0]}/{where[1]} "
                + ("not found" if data is None else "has no tls.crt/tls.key"),
            )
            if data is None:
                scope.warn(f"{obj.ref}: Secret {where[0]}/{where[1]} is not among the inputs (kept elsewhere?)")
            return None
    problem = _pem_problem(data["tls.crt"], data["tls.key"])
    if problem:
        scope.unresolved(INVALID_CERTIFICATE, f"Secret {where[0]}/{where[1]}: {problem}")
        return None
    client_auth = None
    if spec.clientAuth is not None:
        ca_ref = None
        if spec.clientAuth.mode != "none" and spec.clientAuth.caSecretRef is not None:
            ca = scope.secret_value(obj.namespace, spec.clientAuth.caSecretRef, "clientAuth.caSecretRef")
            if ca is None:
                return None
            try:
                x509.load_pem_x509_certificates(ca)
                ca_text = ca.decode("ascii")
            except (ValueError, UnicodeDecodeError):
                scope.unresolved(INVALID_CERTIFICATE, "clientAuth.caSecretRef is not an ASCII PEM CA bundle")
                return None
            ca_ref = f"{prefix}.ca"
            scope.put(ca_ref, ca_text)
        client_auth = CompiledClientAuth(
            mode=spec.clientAuth.mode, ca_bundle=ca_ref, allowed_subjects=tuple(spec.clientAuth.allowedSubjects)
        )
    scope.put(f"{prefix}.crt", data["tls.crt"].decode())
    scope.put(f"{prefix}.key", data["tls.key"].decode())
    hsts = spec.hsts
    return CompiledTls(
        id=f"{obj.namespace}/{obj.name}",
        hostnames=tuple(h.lower() for h in spec.hostnames),
        cert_chain=f"{prefix}.crt",
        private_key=f"{prefix}.key",
        min_version=spec.minVersion,
        hsts=CompiledHsts(max_age=hsts.maxAge, include_subdomains=hsts.includeSubDomains, preload=hsts.preload)
        if hsts else None,
        client_auth=client_auth,
    )


def _hostname_claims(policies: list[_Verdict]) -> None:
    """A hostname has one certificate: the older TLSPolicy wins, the other is Conflicted."""
    owner: dict[str, SourceObject] = {}
    for verdict in policies:
        hostnames = verdict.entry.model.hostnames  # type: ignore[union-attr]
        clash = sorted(h for h in {x.lower() for x in hostnames} if h in owner)
        if clash:
            winner = owner[clash[0]]
            verdict.reject(
                CONFLICTED,
                f"hostname {clash[0]} is already served by the older TLSPolicy {winner.namespace}/{winner.name}",
            )
            continue
        for host in hostnames:
            owner[host.lower()] = verdict.obj


# --- per-translation state ----------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    """Everything derived from one object's spec; reused while the raw spec is unchanged."""

    source: SourceObject  # the last object seen with this spec (identity fast path)
    fingerprint: str | None
    model: SpecModel | None
    invalid: str | None  # InvalidSpec message
    fragment: _Fragment | None = None
    policies: dict[str, CompiledRateLimit] = field(default_factory=dict)  # RateLimitPolicy: scope -> compiled
    served: tuple[Any, ...] | None = None  # (fragment, rate limit, final compiled object, its JSON)
    result: tuple[tuple[Any, ...], ObjectResult] | None = None  # (verdict facts, ObjectResult)
    route_claims: tuple[str, tuple[str, ...], tuple[str, ...]] | None = None

    @classmethod
    def parse(cls, obj: SourceObject) -> _Entry:
        model, errors = parse_spec(obj.kind, obj.spec)
        invalid = None if model is not None else "; ".join(f"{e.field}: {e.reason}" for e in errors)
        return cls(obj, _fingerprint(obj.spec), model, invalid)

    def reuse_for(self, obj: SourceObject) -> _Entry | None:
        """This entry if ``obj`` has exactly the same spec (same object, or same fingerprint)."""
        if obj is self.source or obj.spec is self.source.spec:
            return self
        if self.fingerprint is None or _fingerprint(obj.spec) != self.fingerprint:
            return None
        self.source = obj
        return self

    def claims(self) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        """A route's (normalised path, sorted hosts, sorted methods) for the conflict index."""
        if self.route_claims is None:
            spec: GatewayRouteSpec = self.model  # type: ignore[assignment]
            self.route_claims = (normalise_path(spec.path), tuple(sorted(h.lower() for h in spec.hosts)),
                                 tuple(sorted(spec.methods)))
        return self.route_claims

    def serve(self, fragment: _Fragment, rate_limit: CompiledRateLimit | None = None) -> tuple[Any, bytes]:
        """The final compiled object (a route with its winning rate limit) and its canonical JSON."""
        served = self.served
        if served is not None and served[0] is fragment and served[1] is rate_limit:
            return served[2], served[3]
        compiled = fragment.compiled
        if rate_limit is not None:
            compiled = compiled.model_copy(update={"rate_limit": rate_limit})
        payload = _item_json(compiled)
        self.served = (fragment, rate_limit, compiled, payload)
        return compiled, payload


@dataclass(slots=True, eq=False)
class _Verdict:
    """Mutable while translating one object; frozen into an ObjectResult at the end."""

    obj: SourceObject
    ref: ObjectRef
    entry: _Entry
    accepted: Condition = _ACCEPTED_OK
    missing: tuple[tuple[str, str], ...] = ()  # (reason, message)
    key_id: str | None = None
    certificate: str | None = None
    programmable: bool = False

    def reject(self, reason: str, message: str) -> None:
        self.accepted = _false(ACCEPTED, reason, message)

    def unresolved(self, reason: str, message: str) -> None:
        self.missing += ((reason, message),)

    def result(self) -> ObjectResult:
        facts = (self.obj.generation, self.accepted, self.missing, self.key_id, self.certificate, self.programmable)
        cached = self.entry.result
        if cached is not None and cached[0] == facts:
            return cached[1]
        if self.missing:
            reason = self.missing[0][0]
            resolved = _false(RESOLVED_REFS, reason, "; ".join(m for _, m in self.missing))
        else:
            resolved = _RESOLVED_OK
        result = ObjectResult(
            ref=self.ref,
            generation=self.obj.generation,
            accepted=self.accepted,
            resolved_refs=resolved,
            key_id=self.key_id,
            certificate=self.certificate,
            programmable=self.programmable,
        )
        self.entry.result = (facts, result)
        return result


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Translation allocates many long-lived objects and no reference cycles; the cyclic
    collector's repeated full scans of them cost more than the translation itself."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# --- the translator ---------------------------------------------------------------------------


class Translator:
    """:func:`translate` plus a memo of what each object compiled to in the previous call.

    Holds only the entries of the objects in the latest input (bounded by it).
    Thread-safe: each call builds a fresh memo from the previous one and
    publishes it when done; entries are only ever reused after checking them.
    Inputs are values (their models are frozen): an object passed again as the
    very same instance is trusted to carry the same spec; any other object is
    compared by the exact JSON of its spec.
    """

    def __init__(self) -> None:
        self._state: tuple[tuple[str, str], dict[ObjectRef, _Entry]] = (("", ""), {})

    def clear(self) -> None:
        self._state = (("", ""), {})

    def spec_of(self, obj: SourceObject) -> SpecModel | None:
        """The validated spec of ``obj`` (from the memo when unchanged); None if invalid."""
        entry = self._state[1].get(obj.ref)
        if entry is not None and entry.reuse_for(obj) is not None:
            return entry.model
        return parse_spec(obj.kind, obj.spec)[0]

    def translate(self, inp: TranslationInput) -> TranslationResult:
        """Compile every valid, unconflicted, resolvable object; report on all of them."""
        with _collector_paused():
            return self._translate(inp)

    def _translate(self, inp: TranslationInput) -> TranslationResult:
        env = (inp.gateway_namespace, inp.cluster_domain)
        old_env, old = self._state
        if old_env != env:
            old = {}
        memo: dict[ObjectRef, _Entry] = {}
        verdicts: dict[ObjectRef, _Verdict] = {}
        by_kind: dict[str, list[_Verdict]] = {}
        for obj in sorted(inp.objects, key=lambda o: (age_key(o), o.kind)):
            ref = obj.ref
            entry = old.get(ref)
            entry = entry.reuse_for(obj) if entry is not None else None
            if entry is None:
                entry = _Entry.parse(obj)
            memo[ref] = entry
            verdicts[ref] = verdict = _Verdict(obj, ref, entry)
            if entry.model is None:
                verdict.reject(INVALID_SPEC, entry.invalid or "")
            else:
                by_kind.setdefault(obj.kind, []).append(verdict)
        route_names = {(o.namespace, o.name) for o in inp.objects if o.kind == "GatewayRoute"}
        warnings: set[str] = set()
        bundle: dict[str, str] = {}

        def compiled(verdict: _Verdict, build: Any) -> _Fragment:
            """The object's fragment: reused when everything it read is unchanged, else rebuilt."""
            entry = verdict.entry
            fragment = entry.fragment
            if fragment is None or not _still_valid(fragment, inp, route_names):
                scope = _Scope(inp, route_names, verdict.obj)
                fragment = entry.fragment = scope.fragment(build(scope, entry.model))
            verdict.missing += fragment.missing
            verdict.key_id, verdict.certificate = fragment.key_id, fragment.certificate
            if fragment.warnings:
                warnings.update(fragment.warnings)
            if fragment.bundle:
                bundle.update(fragment.bundle)
            return fragment

        routes_in = by_kind.get("GatewayRoute", [])
        _claims(routes_in)
        policies = by_kind.get("RateLimitPolicy", [])
        for verdict in policies:
            namespace = verdict.obj.namespace
            for target in verdict.entry.model.targetRefs:  # type: ignore[union-attr]
                if (namespace, target.name) not in route_names:
                    verdict.unresolved(ROUTE_NOT_FOUND, f"GatewayRoute {namespace}/{target.name} not found")
            verdict.programmable = True
        precedence = _PolicyIndex(policies, inp.gateway_namespace)

        routes: list[tuple[str, CompiledRoute, bytes]] = []
        for verdict in routes_in:
            if verdict.accepted is not _ACCEPTED_OK:
                continue
            fragment = compiled(verdict, _route)
            if fragment.compiled is None:
                continue
            rate_limit = None
            chosen = precedence.choose(verdict.obj.namespace, verdict.obj.name)
            if chosen is not None:
                policy, scope = chosen
                rate_limit = policy.entry.policies.get(scope)
                if rate_limit is None:
                    rate_limit = policy.entry.policies[scope] = compile_policy(policy.obj, policy.entry.model, scope)
            route, payload = verdict.entry.serve(fragment, rate_limit)
            verdict.programmable = True
            routes.append((route.id, route, payload))

        api_keys: list[tuple[tuple[str, str], CompiledApiKey, bytes]] = []
        for verdict in by_kind.get("ApiKey", []):
            fragment = compiled(verdict, _api_key)
            if fragment.compiled is not None:
                verdict.programmable = True
                key, payload = verdict.entry.serve(fragment)
                api_keys.append(((key.namespace, key.name), key, payload))

        tls_policies = by_kind.get("TLSPolicy", [])
        _hostname_claims(tls_policies)
        tls: list[tuple[str, CompiledTls, bytes]] = []
        for verdict in tls_policies:
            if verdict.accepted is not _ACCEPTED_OK:
                continue
            fragment = compiled(verdict, _tls)
            if fragment.compiled is not None:
                verdict.programmable = True
                policy_tls, payload = verdict.entry.serve(fragment)
                tls.append((policy_tls.id, policy_tls, payload))

        routes.sort(key=lambda item: item[0])
        api_keys.sort(key=lambda item: item[0])
        tls.sort(key=lambda item: item[0])
        results = {ref: verdicts[ref].result() for ref in sorted(verdicts)}
        config = CompiledConfig(
            gateway_namespace=inp.gateway_namespace,
            routes=tuple(item[1] for item in routes),
            api_keys=tuple(item[1] for item in api_keys),
            tls=tuple(item[1] for item in tls),
            generations={str(ref): r.generation for ref, r in results.items() if r.programmable},
        )
        secrets = SecretBundle(values=dict(sorted(bundle.items())))
        config_json = _assemble_json(config, {
            "routes": [item[2] for item in routes],
            "api_keys": [item[2] for item in api_keys],
            "tls": [item[2] for item in tls],
        })
        secrets_json = canonical_json(secrets)
        _remember_canonical(config, config_json)
        _remember_canonical(secrets, secrets_json)
        self._state = (env, memo)
        return TranslationResult.model_construct(
            config=config,
            secrets=secrets,
            hash=_hash(config_json, secrets_json),
            results=results,
            warnings=tuple(sorted(warnings)),
        )


def _hash(config_json: bytes, secrets_json: bytes) -> str:
    """``config_hash(config, secrets)`` from the canonical bytes already at hand."""
    digest = hashlib.sha256()
    digest.update(config_json)
    digest.update(b"\0")
    digest.update(secrets_json)
    return digest.hexdigest()


_default = Translator()


def translate(inp: TranslationInput) -> TranslationResult:
    """Compile every valid, unconflicted, resolvable object; report on all of them.

    A pure function of ``inp``; a module-level :class:`Translator` makes repeated
    calls with mostly unchanged objects (the operator's hot path) incremental.
    """
    return _default.translate(inp)


def spec_of(obj: SourceObject) -> SpecModel | None:
    """The validated spec of ``obj`` (None if invalid), from the translator's memo when unchanged."""
    return _default.spec_of(obj)


def clear_memo() -> None:
    """Forget what :func:`translate` remembers (benchmarks of the cold path; tests)."""
    _default.clear()
