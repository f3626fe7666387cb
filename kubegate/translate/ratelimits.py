"""RateLimitPolicy: target checks and precedence (route > namespace > gateway; ties -> oldest).

A policy is not an item of the config by itself: it is compiled into the
routes it wins for (``routes._serve`` asks :meth:`PolicyIndex.limit_for`),
once per (policy, scope) and memoised on the policy's entry.
"""

from __future__ import annotations

from typing import Literal

from kubegate.config import CompiledLimit, CompiledRateLimit
from kubegate.resources import SourceObject
from kubegate.spec import RateLimitPolicySpec

from .common import ROUTE_NOT_FOUND, seconds
from .memo import Verdict
from .run import Processor, Run

KIND = "RateLimitPolicy"
Scope = Literal["route", "namespace", "gateway"]


def compile_policy(obj: SourceObject, spec: RateLimitPolicySpec, scope: str) -> CompiledRateLimit:
    limits = tuple(
        CompiledLimit(
            key=f"{obj.namespace}/{obj.name}#{index}",
            dimension=limit.dimension,
            header=limit.header,
            requests=limit.requests,
            period_seconds=seconds(limit.period),
            burst=limit.burst or limit.requests,
        )
        for index, limit in enumerate(spec.limits)
    )
    return CompiledRateLimit(
        policy=f"{obj.namespace}/{obj.name}", scope=scope, limits=limits, failure_mode=spec.failureMode
    )


class PolicyIndex:
    """Rate-limit precedence by lookup: route-targeted > namespace-wide > gateway-wide; ties -> oldest."""

    def __init__(self, policies: list[Verdict], gateway_namespace: str) -> None:
        self.gateway_namespace = gateway_namespace
        self.targeted: dict[tuple[str, str], Verdict] = {}
        self.namespace_wide: dict[str, Verdict] = {}
        for policy in policies:  # oldest first: setdefault keeps the oldest of each tier
            namespace, spec = policy.obj.namespace, policy.entry.model
            for target in spec.targetRefs:  # type: ignore[union-attr]
                self.targeted.setdefault((namespace, target.name), policy)
            if not spec.targetRefs:  # type: ignore[union-attr]
                self.namespace_wide.setdefault(namespace, policy)

    def choose(self, namespace: str, name: str) -> tuple[Verdict, Scope] | None:
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

    def limit_for(self, namespace: str, name: str) -> CompiledRateLimit | None:
        """The compiled limit of the policy that wins for route namespace/name, or None."""
        chosen = self.choose(namespace, name)
        if chosen is None:
            return None
        policy, scope = chosen
        rate_limit = policy.entry.policies.get(scope)
        if rate_limit is None:
            rate_limit = policy.entry.policies[scope] = compile_policy(policy.obj, policy.entry.model, scope)
        return rate_limit


def _prepare(run: Run) -> None:
    """Every targeted route must exist; a policy is programmable (it only shapes routes' limits)."""
    policies = run.of(KIND)
    for verdict in policies:
        namespace = verdict.obj.namespace
        for target in verdict.entry.model.targetRefs:  # type: ignore[union-attr]
            if (namespace, target.name) not in run.route_names:
                verdict.unresolved(ROUTE_NOT_FOUND, f"GatewayRoute {namespace}/{target.name} not found")
        verdict.programmable = True
    run.precedence = PolicyIndex(policies, run.inp.gateway_namespace)


PROCESSOR = Processor(kind=KIND, output=None, prepare=_prepare)
