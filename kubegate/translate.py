"""The pure translator: kubegate CRs + the Secrets and Services they reference -> compiled config.

No I/O and no clock: the same :class:`TranslationInput` always yields a
byte-identical config and the same hash (everything is sorted). One bad
object never stops the others: it gets ``Accepted=False`` or
``ResolvedRefs=False`` in its :class:`ObjectResult` and is left out.

Secret material (HMAC secrets, API-key hashes, TLS keys) goes to the
:class:`SecretBundle` only; an API key itself never leaves this module.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from kubegate.apikeys import key_hash, key_id
from kubegate.config import (
    CompiledApiKey,
    CompiledAuth,
    CompiledBackend,
    CompiledClientAuth,
    CompiledConfig,
    CompiledHsts,
    CompiledJwt,
    CompiledLimit,
    CompiledRateLimit,
    CompiledRoute,
    CompiledTls,
    SecretBundle,
    config_hash,
)
from kubegate.durations import parse_duration
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


# --- small pure helpers -------------------------------------------------------


def age_key(obj: SourceObject) -> tuple[str, str, str]:
    """Older first: creationTimestamp, then namespace/name (files have no timestamp)."""
    return (obj.creation_timestamp, obj.namespace, obj.name)


def normalise_path(path: str) -> str:
    """``/a/:id`` and ``/a/{x}`` claim the same requests; so do ``*rest`` and ``*tail``."""
    path = re.sub(r"/:[A-Za-z_][A-Za-z0-9_]*", "/{}", path)
    path = re.sub(r"/\{[A-Za-z_][A-Za-z0-9_]*\}", "/{}", path)
    return re.sub(r"/\*[A-Za-z_][A-Za-z0-9_]*", "/*", path)


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


def _ok(type_: str) -> Condition:
    return Condition(type=type_, status="True", reason=type_, message="")


def _false(type_: str, reason: str, message: str) -> Condition:
    return Condition(type=type_, status="False", reason=reason, message=message)


# --- per-translation state ----------------------------------------------------------


@dataclass
class _Verdict:
    """Mutable while translating one object; frozen into an ObjectResult at the end."""

    obj: SourceObject
    accepted: Condition = field(default_factory=lambda: _ok(ACCEPTED))
    missing: list[tuple[str, str]] = field(default_factory=list)  # (reason, message)
    key_id: str | None = None
    certificate: str | None = None
    programmable: bool = False

    def reject(self, reason: str, message: str) -> None:
        self.accepted = _false(ACCEPTED, reason, message)

    def unresolved(self, reason: str, message: str) -> None:
        self.missing.append((reason, message))

    def result(self) -> ObjectResult:
        if self.missing:
            reason = self.missing[0][0]
            resolved = _false(RESOLVED_REFS, reason, "; ".join(m for _, m in self.missing))
        else:
            resolved = _ok(RESOLVED_REFS)
        return ObjectResult(
            ref=self.obj.ref,
            generation=self.obj.generation,
            accepted=self.accepted,
            resolved_refs=resolved,
            key_id=self.key_id,
            certificate=self.certificate,
            programmable=self.programmable,
        )


@dataclass
class _Context:
    inp: TranslationInput
    bundle: dict[str, str] = field(default_factory=dict)
    warnings: set[str] = field(default_factory=set)

    def secret_value(
        self, verdict: _Verdict, namespace: str, ref: SecretKeyRef, what: str
    ) -> bytes | None:
        """The bytes at ref in namespace, or None with SecretNotFound recorded (and a warning)."""
        data = self.inp.secrets.get((namespace, ref.name))
        if data is None:
            verdict.unresolved(SECRET_NOT_FOUND, f"{what}: Secret {namespace}/{ref.name} not found")
            self.warnings.add(
                f"{verdict.obj.ref}: Secret {namespace}/{ref.name} is not among the inputs "
                f"(kept elsewhere?); {what} is not served without it"
            )
            return None
        if ref.key not in data:
            verdict.unresolved(SECRET_NOT_FOUND, f"{what}: Secret {namespace}/{ref.name} has no key {ref.key!r}")
            return None
        return data[ref.key]


def _text(value: bytes) -> str | None:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return None


# --- GatewayRoute -------------------------------------------------------------------


def _claims(routes: list[tuple[SourceObject, GatewayRouteSpec]], verdicts: dict[ObjectRef, _Verdict]) -> None:
    """Older routes win host+path+method overlaps; losers get Accepted=False Conflicted."""
    winners: dict[str, list[tuple[SourceObject, GatewayRouteSpec]]] = {}
    for obj, spec in routes:  # already oldest first
        key = normalise_path(spec.path)
        hosts = tuple(sorted(h.lower() for h in spec.hosts))
        methods = tuple(sorted(spec.methods))
        for other, other_spec in winners.get(key, []):
            shared_hosts = _overlap(hosts, tuple(sorted(h.lower() for h in other_spec.hosts)))
            shared_methods = _overlap(methods, tuple(sorted(other_spec.methods)))
            if shared_hosts is not None and shared_methods is not None:
                verdicts[obj.ref].reject(
                    CONFLICTED,
                    f"path {spec.path} (hosts {', '.join(sorted(shared_hosts))}; methods "
                    f"{', '.join(sorted(shared_methods))}) is already claimed by the older "
                    f"GatewayRoute {other.namespace}/{other.name}",
                )
                break
        else:
            winners.setdefault(key, []).append((obj, spec))


def _backends(
    ctx: _Context, verdict: _Verdict, spec: GatewayRouteSpec
) -> list[CompiledBackend]:
    ns = verdict.obj.namespace
    out = []
    for backend in spec.backends:
        if backend.url is not None:
            out.append(CompiledBackend(url=backend.url, weight=backend.weight))
            continue
        service = ctx.inp.services.get((ns, backend.service))
        if service is None:
            verdict.unresolved(BACKEND_NOT_FOUND, f"service {backend.service} not found in namespace {ns}")
            continue
        declared = {p.port for p in service.ports}
        if backend.port not in declared and not (service.type == "ExternalName" and not declared):
            verdict.unresolved(BACKEND_NOT_FOUND, f"service {backend.service} has no port {backend.port}")
            continue
        url = backend_url(service, backend.port, ctx.inp.cluster_domain)
        out.append(CompiledBackend(url=url, weight=backend.weight))
    return out


def _jwt(ctx: _Context, verdict: _Verdict, spec: GatewayRouteSpec) -> tuple[CompiledJwt | None, bool]:
    """(compiled JWT settings, usable); unusable key material fails the route closed."""
    jwt = spec.auth.jwt if spec.auth else None
    if jwt is None:
        return None, True
    obj = verdict.obj
    compiled = {
        "issuer": jwt.issuer,
        "audiences": tuple(jwt.audiences),
        "algorithms": tuple(jwt.algorithms),
        "jwks_uri": jwt.jwksUri,
        "required_claims": dict(jwt.requiredClaims),
        "forward_claims": dict(jwt.forwardClaims),
    }
    if jwt.secretRef is not None:
        raw = ctx.secret_value(verdict, obj.namespace, jwt.secretRef, "auth.jwt.secretRef")
        if raw is None:
            return None, False
        secret = _text(raw)
        if not secret:
            verdict.unresolved(INVALID_KEY, f"auth.jwt.secretRef: Secret {obj.namespace}/{jwt.secretRef.name} "
                                            f"key {jwt.secretRef.key!r} is empty or not UTF-8")
            return None, False
        bundle_key = f"jwt.{obj.namespace}.{obj.name}"
        ctx.bundle[bundle_key] = secret
        compiled["hmac_secret"] = bundle_key
    if jwt.publicKeySecretRef is not None:
        ref = jwt.publicKeySecretRef
        raw = ctx.secret_value(verdict, obj.namespace, ref, "auth.jwt.publicKeySecretRef")
        if raw is None:
            return None, False
        try:
            load_pem_public_key(raw)
        except (ValueError, TypeError):
            verdict.unresolved(INVALID_KEY, f"auth.jwt.publicKeySecretRef: Secret {obj.namespace}/{ref.name} "
                                            f"key {ref.key!r} is not a PEM public key")
            return None, False
        compiled["public_key_pem"] = raw.decode()
    return CompiledJwt(**compiled), True


def _route(
    ctx: _Context, verdict: _Verdict, spec: GatewayRouteSpec
) -> CompiledRoute | None:
    backends = _backends(ctx, verdict, spec)
    jwt, jwt_ok = _jwt(ctx, verdict, spec)
    if not backends or not jwt_ok:
        return None
    obj = verdict.obj
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
        request_timeout=parse_duration(spec.timeouts.request),
        connect_timeout=parse_duration(spec.timeouts.connect),
        retries=spec.retries.attempts,
        max_body_bytes=spec.maxBodyBytes,
        request_schema=spec.requestSchema or None,
        auth=auth,
        ip_allow=tuple(spec.ipFilter.allow) if spec.ipFilter else (),
        ip_deny=tuple(spec.ipFilter.deny) if spec.ipFilter else (),
    )


# --- RateLimitPolicy ----------------------------------------------------------------


def compile_policy(obj: SourceObject, spec: RateLimitPolicySpec, scope: str) -> CompiledRateLimit:
    limits = tuple(
        CompiledLimit(
            key=f"{obj.namespace}/{obj.name}#{index}",
            dimension=limit.dimension,
            header=limit.header,
            requests=limit.requests,
            period_seconds=parse_duration(limit.period),
            burst=limit.burst or limit.requests,
        )
        for index, limit in enumerate(spec.limits)
    )
    return CompiledRateLimit(
        policy=f"{obj.namespace}/{obj.name}", scope=scope, limits=limits, failure_mode=spec.failureMode
    )


def choose_policy(
    route: CompiledRoute,
    policies: list[tuple[SourceObject, RateLimitPolicySpec]],
    gateway_namespace: str,
) -> tuple[SourceObject, RateLimitPolicySpec, Literal["route", "namespace", "gateway"]] | None:
    """The one policy for a route: route-targeted > namespace-wide > gateway-wide; ties -> oldest."""
    targeted = namespace_wide = gateway_wide = None
    for obj, spec in policies:  # oldest first, so the first match of each tier wins
        names = {t.name for t in spec.targetRefs}
        if obj.namespace == route.namespace and route.name in names:
            targeted = targeted or (obj, spec, "route")
        elif obj.namespace == route.namespace and not names:
            namespace_wide = namespace_wide or (obj, spec, "namespace")
        elif obj.namespace == gateway_namespace and not names:
            gateway_wide = gateway_wide or (obj, spec, "gateway")
    return targeted or namespace_wide or gateway_wide


# --- ApiKey -----------------------------------------------------------------------------


def _api_key(
    ctx: _Context, verdict: _Verdict, spec: ApiKeySpec, route_names: set[tuple[str, str]]
) -> CompiledApiKey | None:
    obj = verdict.obj
    raw = ctx.secret_value(verdict, obj.namespace, spec.secretRef, "secretRef")
    for name in spec.routes:
        if (obj.namespace, name) not in route_names:
            verdict.unresolved(ROUTE_NOT_FOUND, f"GatewayRoute {obj.namespace}/{name} not found")
    if raw is None:
        return None
    key = _text(raw)
    key = key.strip() if key else key
    if not key:
        verdict.unresolved(INVALID_KEY, f"secretRef: Secret {obj.namespace}/{spec.secretRef.name} "
                                        f"key {spec.secretRef.key!r} is empty or not UTF-8")
        return None
    hashed = key_hash(key)
    hash_ref = f"apikey.{obj.namespace}.{obj.name}"
    ctx.bundle[hash_ref] = hashed
    verdict.key_id = key_id(hashed)
    rate_limit = None
    if spec.rateLimit is not None:
        rate_limit = CompiledLimit(
            key=f"apikey:{obj.namespace}/{obj.name}",
            dimension="apiKey",
            requests=spec.rateLimit.requests,
            period_seconds=parse_duration(spec.rateLimit.period),
            burst=spec.rateLimit.requests,
        )
    expires = spec.expiresAt
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return CompiledApiKey(
        id=verdict.key_id,
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


def _pem_problem(cert: bytes, key: bytes) -> str | None:
    """Why a certificate/key pair cannot be served, or None; a bad PEM must not break reloads."""
    try:
        certs = x509.load_pem_x509_certificates(cert)
    except ValueError:
        return "tls.crt is not a PEM certificate chain"
    try:
        private = load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        return "tls.key is not an unencrypted PEM private key"
    if _spki(certs[0].public_key()) != _spki(private.public_key()):
        return "tls.key does not match the certificate in tls.crt"
    return None


def _tls(ctx: _Context, verdict: _Verdict, spec: TLSPolicySpec) -> CompiledTls | None:
    obj, inp = verdict.obj, ctx.inp
    prefix = f"tls.{obj.namespace}.{obj.name}"
    if spec.certificate.issuerRef is not None:
        verdict.certificate = certificate_name(obj.namespace, obj.name)
        where = (inp.gateway_namespace, verdict.certificate)
        data = inp.secrets.get(where) or {}
        if not data.get("tls.crt") or not data.get("tls.key"):
            verdict.unresolved(
                CERTIFICATE_NOT_READY,
                f"Certificate {inp.gateway_namespace}/{verdict.certificate} has not been issued yet "
                f"(Secret {where[0]}/{where[1]} has no tls.crt/tls.key)",
            )
            return None
    else:
        where = (obj.namespace, spec.certificate.secretRef.name)
        data = inp.secrets.get(where)
        if data is None or not data.get("tls.crt") or not data.get("tls.key"):
            verdict.unresolved(
                SECRET_NOT_FOUND,
                f"certificate.secretRef: Secret {where[0]}/{where[1]} "
                + ("not found" if data is None else "has no tls.crt/tls.key"),
            )
            if data is None:
                ctx.warnings.add(f"{obj.ref}: Secret {where[0]}/{where[1]} is not among the inputs (kept elsewhere?)")
            return None
    problem = _pem_problem(data["tls.crt"], data["tls.key"])
    if problem:
        verdict.unresolved(INVALID_CERTIFICATE, f"Secret {where[0]}/{where[1]}: {problem}")
        return None
    client_auth = None
    if spec.clientAuth is not None:
        ca_ref = None
        if spec.clientAuth.mode != "none" and spec.clientAuth.caSecretRef is not None:
            ca = ctx.secret_value(verdict, obj.namespace, spec.clientAuth.caSecretRef, "clientAuth.caSecretRef")
            if ca is None:
                return None
            try:
                x509.load_pem_x509_certificates(ca)
            except ValueError:
                verdict.unresolved(INVALID_CERTIFICATE, "clientAuth.caSecretRef is not a PEM CA bundle")
                return None
            ca_ref = f"{prefix}.ca"
            ctx.bundle[ca_ref] = ca.decode()
        client_auth = CompiledClientAuth(
            mode=spec.clientAuth.mode, ca_bundle=ca_ref, allowed_subjects=tuple(spec.clientAuth.allowedSubjects)
        )
    ctx.bundle[f"{prefix}.crt"] = data["tls.crt"].decode()
    ctx.bundle[f"{prefix}.key"] = data["tls.key"].decode()
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


def _hostname_claims(
    policies: list[tuple[SourceObject, TLSPolicySpec]], verdicts: dict[ObjectRef, _Verdict]
) -> None:
    """A hostname has one certificate: the older TLSPolicy wins, the other is Conflicted."""
    owner: dict[str, SourceObject] = {}
    for obj, spec in policies:
        clash = sorted(h for h in {x.lower() for x in spec.hostnames} if h in owner)
        if clash:
            winner = owner[clash[0]]
            verdicts[obj.ref].reject(
                CONFLICTED,
                f"hostname {clash[0]} is already served by the older TLSPolicy {winner.namespace}/{winner.name}",
            )
            continue
        for host in spec.hostnames:
            owner[host.lower()] = obj


# --- the translator ---------------------------------------------------------------------------


def translate(inp: TranslationInput) -> TranslationResult:
    """Compile every valid, unconflicted, resolvable object; report on all of them."""
    ctx = _Context(inp)
    objects = sorted(inp.objects, key=lambda o: (age_key(o), o.kind))
    verdicts = {o.ref: _Verdict(o) for o in objects}
    parsed: dict[str, list[tuple[SourceObject, SpecModel]]] = {}
    for obj in objects:
        model, errors = parse_spec(obj.kind, obj.spec)
        if model is None:
            verdicts[obj.ref].reject(INVALID_SPEC, "; ".join(f"{e.field}: {e.reason}" for e in errors))
        else:
            parsed.setdefault(obj.kind, []).append((obj, model))

    routes_in = parsed.get("GatewayRoute", [])
    route_names = {(o.namespace, o.name) for o in objects if o.kind == "GatewayRoute"}
    _claims(routes_in, verdicts)
    policies = parsed.get("RateLimitPolicy", [])
    for obj, spec in policies:
        for target in spec.targetRefs:
            if (obj.namespace, target.name) not in route_names:
                verdicts[obj.ref].unresolved(ROUTE_NOT_FOUND, f"GatewayRoute {obj.namespace}/{target.name} not found")
        verdicts[obj.ref].programmable = True

    by_namespace: dict[str, list[tuple[SourceObject, RateLimitPolicySpec]]] = {}
    for obj, spec in policies:
        by_namespace.setdefault(obj.namespace, []).append((obj, spec))
    compiled_policies: dict[tuple[ObjectRef, str], CompiledRateLimit] = {}

    routes: list[CompiledRoute] = []
    for obj, spec in routes_in:
        verdict = verdicts[obj.ref]
        if verdict.accepted.status != "True":
            continue
        route = _route(ctx, verdict, spec)
        if route is None:
            continue
        candidates = by_namespace.get(obj.namespace, [])
        if obj.namespace != inp.gateway_namespace:
            candidates = candidates + by_namespace.get(inp.gateway_namespace, [])
        chosen = choose_policy(route, candidates, inp.gateway_namespace)
        if chosen is not None:
            cache_key = (chosen[0].ref, chosen[2])
            if cache_key not in compiled_policies:
                compiled_policies[cache_key] = compile_policy(*chosen)
            route = route.model_copy(update={"rate_limit": compiled_policies[cache_key]})
        verdict.programmable = True
        routes.append(route)

    api_keys = []
    for obj, spec in parsed.get("ApiKey", []):
        compiled = _api_key(ctx, verdicts[obj.ref], spec, route_names)
        if compiled is not None:
            verdicts[obj.ref].programmable = True
            api_keys.append(compiled)

    tls_policies = parsed.get("TLSPolicy", [])
    _hostname_claims(tls_policies, verdicts)
    tls = []
    for obj, spec in tls_policies:
        verdict = verdicts[obj.ref]
        if verdict.accepted.status != "True":
            continue
        compiled_tls = _tls(ctx, verdict, spec)
        if compiled_tls is not None:
            verdict.programmable = True
            tls.append(compiled_tls)

    results = {ref: v.result() for ref, v in sorted(verdicts.items())}
    config = CompiledConfig(
        gateway_namespace=inp.gateway_namespace,
        routes=tuple(sorted(routes, key=lambda r: r.id)),
        api_keys=tuple(sorted(api_keys, key=lambda k: (k.namespace, k.name))),
        tls=tuple(sorted(tls, key=lambda t: t.id)),
        generations={str(ref): r.generation for ref, r in results.items() if r.programmable},
    )
    secrets = SecretBundle(values=dict(sorted(ctx.bundle.items())))
    return TranslationResult(
        config=config,
        secrets=secrets,
        hash=config_hash(config, secrets),
        results=results,
        warnings=tuple(sorted(ctx.warnings)),
    )
