"""Generate the four CRDs in ``crds/`` from the pydantic spec models.

The pydantic models in :mod:`kubegate.spec` are the one source of truth: this
module turns their JSON Schema into Kubernetes *structural* OpenAPI v3 (every
``$ref`` inlined, ``anyOf``-with-null collapsed to an optional field, no
titles, defaults or ``additionalProperties: false``) and keeps the CEL rules
they carry. ``python -m kubegate.crdgen`` rewrites ``crds/``; a unit test fails
when the committed files drift from this output.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from kubegate.names import KUBEGATE_LABELS
from kubegate.resources import READY
from kubegate.spec import GROUP, KINDS, PLURALS, SHORT_NAMES, VERSION

CRD_DIR = Path(__file__).resolve().parent.parent / "crds"
CATEGORY = "kubegate"

# Keys pydantic emits that a structural schema must not carry (or that would
# make the API server default fields the operator already defaults).
_DROPPED = {"title", "default", "$defs", "examples"}

_READY = f'.status.conditions[?(@.type=="{READY}")].status'
_REASON = f'.status.conditions[?(@.type=="{READY}")].reason'


def _merge(outer: dict[str, Any], inner: dict[str, Any]) -> dict[str, Any]:
    """Inner schema with the outer node's annotations (description, CEL) on top."""
    merged = dict(inner)
    for key, value in outer.items():
        if key == "x-kubernetes-validations" and key in merged:
            merged[key] = list(merged[key]) + list(value)
        else:
            merged[key] = value
    return merged


def structural(node: Any, defs: dict[str, Any]) -> Any:
    """Rewrite one pydantic JSON Schema node into Kubernetes structural form."""
    if not isinstance(node, dict):
        return node
    node = {k: v for k, v in node.items() if k not in _DROPPED}
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = _merge(node, {k: v for k, v in target.items() if k not in _DROPPED})
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b != {"type": "null"}]
        if len(branches) != 1:
            raise ValueError(f"cannot express anyOf {branches!r} structurally")
        node = _merge(node, structural(branches[0], defs))
        return structural(node, defs)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    extra = node.get("additionalProperties")
    if extra is False:
        del node["additionalProperties"]
    elif extra is True or (node.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" in node):
        node.pop("additionalProperties")
        node["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(extra, dict):
        node["additionalProperties"] = structural(extra, defs)
    if "properties" in node:
        node["properties"] = {k: structural(v, defs) for k, v in node["properties"].items()}
    if "items" in node:
        node["items"] = structural(node["items"], defs)
    return node


_FIRST = ("description", "type")


def ordered(node: Any) -> Any:
    """description and type first, then the rest sorted: stable, readable YAML."""
    if isinstance(node, list):
        return [ordered(v) for v in node]
    if not isinstance(node, dict):
        return node
    keys = [k for k in _FIRST if k in node] + sorted(k for k in node if k not in _FIRST)
    return {k: (node[k] if k in ("enum", "required") else
                {p: ordered(v) for p, v in node[k].items()} if k == "properties" else ordered(node[k]))
            for k in keys}


def spec_schema(kind: str) -> dict[str, Any]:
    raw = KINDS[kind].model_json_schema()
    return ordered(structural(raw, raw.get("$defs", {})))


def _condition_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "One aspect of the object's state (Gateway API / metav1.Condition conventions).",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string", "maxLength": 316,
                     "description": "Accepted, ResolvedRefs, Programmed or Ready."},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"],
                       "description": "True, False or Unknown."},
            "reason": {"type": "string", "maxLength": 1024,
                       "description": "CamelCase reason for the last transition."},
            "message": {"type": "string", "maxLength": 32768, "description": "Human-readable details."},
            "lastTransitionTime": {"type": "string", "format": "date-time",
                                   "description": "When the status last changed."},
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0,
                                   "description": "metadata.generation this condition was computed for."},
        },
    }


_STATUS_EXTRAS: dict[str, dict[str, Any]] = {
    "ApiKey": {
        "keyId": {"type": "string", "description": "Short, non-secret id of the key (derived from its hash)."},
    },
    "TLSPolicy": {
        "certificate": {"type": "string",
                        "description": "Name of the generated cert-manager Certificate (issuerRef only)."},
        "notAfter": {"type": "string", "format": "date-time",
                     "description": "Expiry of the certificate currently served."},
    },
}


def status_schema(kind: str) -> dict[str, Any]:
    props: dict[str, Any] = {
        "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0,
                               "description": "metadata.generation the operator last processed."},
        "conditions": {
            "type": "array",
            "description": "Accepted, ResolvedRefs, Programmed and Ready.",
            "maxItems": 8,
            "items": _condition_schema(),
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    }
    props.update(copy.deepcopy(_STATUS_EXTRAS.get(kind, {})))
    return {"type": "object", "description": f"Observed state of the {kind}, written by the operator.",
            "properties": props}


def _column(name: str, path: str, type_: str = "string", priority: int = 0, description: str = "") -> dict:
    col = {"name": name, "type": type_, "jsonPath": path}
    if description:
        col["description"] = description
    if priority:
        col["priority"] = priority
    return col


def printer_columns(kind: str) -> list[dict[str, Any]]:
    ready = _column(READY, _READY, description="All conditions are True")
    reason = _column("Reason", _REASON, priority=1, description="Why the object is not Ready")
    age = _column("Age", ".metadata.creationTimestamp", "date")
    specific = {
        "GatewayRoute": [
            _column("Path", ".spec.path"),
            _column("Hosts", ".spec.hosts"),
            _column("Methods", ".spec.methods", priority=1),
        ],
        "RateLimitPolicy": [
            _column("Targets", ".spec.targetRefs[*].name"),
            _column("Failure Mode", ".spec.failureMode", priority=1),
        ],
        "ApiKey": [
            _column("Key ID", ".status.keyId"),
            _column("Disabled", ".spec.disabled", "boolean"),
            _column("Expires", ".spec.expiresAt", priority=1),
        ],
        "TLSPolicy": [
            _column("Hostnames", ".spec.hostnames"),
            _column("Not After", ".status.notAfter"),
            _column("Certificate", ".status.certificate", priority=1),
        ],
    }[kind]
    return [*specific, ready, reason, age]


def crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition for one kind, as a plain dict."""
    plural = PLURALS[kind]
    spec = spec_schema(kind)
    spec["description"] = spec.get("description") or f"Desired state of the {kind}."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": dict(KUBEGATE_LABELS),
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [SHORT_NAMES[kind]],
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": printer_columns(kind),
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": spec["description"],
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "kubegate.dev/v1alpha1"},
                                "kind": {"type": "string", "description": kind},
                                "metadata": {"type": "object"},  # the API server allows nothing more here
                                "spec": spec,
                                "status": status_schema(kind),
                            },
                        }
                    },
                }
            ],
        },
    }


class _Dumper(yaml.SafeDumper):
    """Block-style YAML with long strings kept on one line (stable diffs)."""


def render_crd(kind: str) -> str:
    header = "# Generated by `python -m kubegate.crdgen` from kubegate/spec.py. Do not edit.\n"
    return header + yaml.dump(crd(kind), Dumper=_Dumper, sort_keys=False, width=1_000_000, allow_unicode=True)


def file_name(kind: str) -> str:
    return f"{GROUP}_{PLURALS[kind]}.yaml"


# kustomize also reads a file named ``Kustomization``; ``kubectl apply -f crds/`` (and Argo CD
# or Flux pointed at a plain folder) reads only *.yaml/*.yml/*.json, so with this name the
# folder holds nothing but CRDs for ``-f`` and is still a kustomization for ``-k``.
KUSTOMIZATION = "Kustomization"


def render_all() -> dict[str, str]:
    """File name -> content for everything in ``crds/``, kustomization included."""
    files = {file_name(kind): render_crd(kind) for kind in KINDS}
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": sorted(files),
    }
    files[KUSTOMIZATION] = (
        "# Generated by `python -m kubegate.crdgen`. Named Kustomization, not kustomization.yaml,\n"
        "# so that `kubectl apply -f crds/` reads only the CRDs; `kubectl apply -k crds/` reads it.\n"
        + yaml.dump(kustomization, Dumper=_Dumper, sort_keys=False)
    )
    return files


def main(out_dir: Path = CRD_DIR) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, content in render_all().items():
        (out_dir / name).write_text(content)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else CRD_DIR))
