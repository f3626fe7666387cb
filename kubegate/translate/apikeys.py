"""ApiKey: the key from its Secret, hashed (the key itself never leaves this module), its routes and limits."""

from __future__ import annotations

from datetime import UTC

from kubegate.apikeys import key_hash, key_id, key_problem
from kubegate.config import CompiledApiKey, CompiledLimit
from kubegate.spec import ApiKeySpec

from .common import INVALID_KEY, ROUTE_NOT_FOUND, seconds, text
from .memo import Fragment, Scope, Verdict
from .run import Processor, Run

KIND = "ApiKey"


def _api_key(scope: Scope, spec: ApiKeySpec) -> CompiledApiKey | None:
    obj = scope.obj
    raw = scope.secret_value(obj.namespace, spec.secretRef, "secretRef")
    for name in spec.routes:
        if not scope.route_exists(obj.namespace, name):
            scope.unresolved(ROUTE_NOT_FOUND, f"GatewayRoute {obj.namespace}/{name} not found")
    if raw is None:
        return None
    key = text(raw)
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
            period_seconds=seconds(spec.rateLimit.period),
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


def _serve(verdict: Verdict, fragment: Fragment, run: Run) -> tuple[tuple[str, str], CompiledApiKey, bytes]:
    key, payload = verdict.entry.serve(fragment)
    return (key.namespace, key.name), key, payload


PROCESSOR = Processor(kind=KIND, output="api_keys", build=_api_key, serve=_serve)
