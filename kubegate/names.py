"""The names and labels kubegate's objects carry, defined once (pure constants).

The operator generates the ConfigMap and Secret the data plane reads, the data
plane writes Leases the operator reads, and both label what they create; each side
and the dev clusters name these the same way by importing them from here. The
values are part of the user contract (shared/spec/API.md): the manifests and the
chart select on them.
"""

from __future__ import annotations

# Generated in the gateway namespace by the operator, read by the data plane.
CONFIG_MAP_NAME = "kubegate-config"  # the compiled config (no secret material)
SECRET_NAME = "kubegate-secrets"  # the secret material the config refers to
# A payload larger than one object (the API server's 1 MiB limit) continues in shards
# <name>-1 .. <name>-MAX_SHARDS, listed by the primary; the data plane's Role names each of them.
MAX_SHARDS = 15
SHARD_LABEL = "kubegate.dev/shard-of"  # on a shard: the name of its primary object
EGRESS_POLICY_NAME = "kubegate-dataplane-egress"
BACKEND_POLICY_PREFIX = "kubegate-backend-"
# Leases: one per data-plane replica (heartbeat), one for the operator's leader.
DATAPLANE_LEASE_PREFIX = "kubegate-dataplane-"
OPERATOR_LEASE_NAME = "kubegate-operator"

# Kubernetes' recommended labels (app.kubernetes.io/*), as kubegate sets them.
NAME_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
PART_OF_LABEL = "app.kubernetes.io/part-of"
DATAPLANE_COMPONENT = "dataplane"

KUBEGATE_LABELS = {NAME_LABEL: "kubegate", PART_OF_LABEL: "kubegate"}  # the CRDs
MANAGED_LABELS = {MANAGED_BY_LABEL: "kubegate", PART_OF_LABEL: "kubegate"}  # what the operator generates
DATAPLANE_LABELS = {NAME_LABEL: "kubegate", COMPONENT_LABEL: DATAPLANE_COMPONENT}  # the data-plane pods
LEASE_LABELS = {**DATAPLANE_LABELS, MANAGED_BY_LABEL: "kubegate"}  # a data-plane replica's heartbeat Lease
DATAPLANE_SELECTOR = f"{COMPONENT_LABEL}={DATAPLANE_COMPONENT}"
MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}=kubegate"  # everything the operator generates


def shard_name(primary: str, index: int) -> str:
    """The name of shard ``index`` (1..MAX_SHARDS) of ``primary`` (CONFIG_MAP_NAME or SECRET_NAME)."""
    if not 1 <= index <= MAX_SHARDS:
        raise ValueError(f"shard index {index} is outside 1..{MAX_SHARDS}")
    return f"{primary}-{index}"
