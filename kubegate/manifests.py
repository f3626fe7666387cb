"""Load Kubernetes manifests from files and folders into translator inputs.

Used by ``kubegate validate``, ``render`` and ``run``. Every problem a user
can cause (malformed YAML, an unknown kubegate kind, a Secret that is not
base64) becomes a :class:`Problem` with file and line, never a traceback.
Kinds that are not ours (Deployments, Namespaces...) are ignored silently:
a GitOps folder holds all sorts of things.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kubegate.errors import UserError
from kubegate.resources import ObjectRef, ServiceInfo, SourceObject, secret_data
from kubegate.spec import GROUP, KINDS, VERSION

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
# libyaml's parser when PyYAML has it (much faster on thousands of objects); same documents and lines.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
DEFAULT_NAMESPACE = "default"  # what kubectl uses without -n


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, printed as ``FILE: Kind/ns/name: field: reason``."""

    file: str
    reason: str
    kind: str = ""
    namespace: str = ""
    name: str = ""
    field: str = ""
    line: int | None = None

    def __str__(self) -> str:
        parts = [f"{self.file}:{self.line}" if self.line else self.file]
        if self.kind:
            parts.append(f"{self.kind}/{self.namespace or DEFAULT_NAMESPACE}/{self.name or '?'}")
        if self.field:
            parts.append(self.field)
        parts.append(self.reason)
        return _CONTROL.sub(lambda m: repr(m.group())[1:-1], ": ".join(parts))  # one line, whatever a user wrote


@dataclass
class LoadedManifests:
    objects: list[SourceObject] = field(default_factory=list)
    secrets: dict[tuple[str, str], dict[str, bytes]] = field(default_factory=dict)
    services: dict[tuple[str, str], ServiceInfo] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    origins: dict[ObjectRef, str] = field(default_factory=dict)  # kubegate object -> file it came from
    files: list[str] = field(default_factory=list)


def manifest_files(paths: list[str | Path]) -> list[Path]:
    """Files named directly, plus every *.yaml/*.yml/*.json under named folders (sorted)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"{raw}: no such file or directory")
    unique: dict[Path, None] = dict.fromkeys(found)
    return list(unique)


def _documents(text: str, file: str, problems: list[Problem]) -> list[tuple[Any, int | None]]:
    """(document, line) pairs; a YAML error stops that file with one Problem."""
    docs: list[tuple[Any, int | None]] = []
    try:
        loader = _YAML_LOADER(text)
        try:
            while loader.check_node():
                node = loader.get_node()
                line = node.start_mark.line + 1 if node is not None else None
                docs.append((loader.construct_document(node), line))
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        reason = " ".join(str(getattr(exc, "problem", None) or exc).split())
        problems.append(Problem(file, f"invalid YAML: {reason}", line=mark.line + 1 if mark else None))
    except (ValueError, RecursionError) as exc:  # e.g. a 5,000-digit integer; nesting beyond the parser's stack
        reason = "nested too deeply" if isinstance(exc, RecursionError) else " ".join(str(exc).split())[:200]
        problems.append(Problem(file, f"invalid YAML: {reason}"))
    return docs


def _flatten(doc: Any) -> list[Any]:
    if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
        return [item for inner in doc["items"] for item in _flatten(inner)]
    return [doc]


def _add(doc: Any, file: str, line: int | None, out: LoadedManifests) -> None:
    if doc is None:
        return
    if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
        out.problems.append(Problem(file, "not a Kubernetes object (needs apiVersion and kind)", line=line))
        return
    kind, api_version = str(doc["kind"]), str(doc["apiVersion"])
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    namespace, name = str(meta.get("namespace") or DEFAULT_NAMESPACE), str(meta.get("name") or "")

    def problem(reason: str, field_name: str = "") -> None:
        out.problems.append(Problem(file, reason, kind, namespace, name, field_name, line))

    ours = api_version.split("/", 1)[0] == GROUP
    if not ours and not (api_version == "v1" and kind in ("Secret", "Service")):
        return
    if not name:
        problem("Required value: every object needs a name", "metadata.name")
        return
    if ours:
        if kind not in KINDS:
            problem(f"unknown kind {kind!r} in {GROUP} (expected one of {', '.join(sorted(KINDS))})", "kind")
        elif api_version != f"{GROUP}/{VERSION}":
            problem(f"unsupported apiVersion {api_version!r} (expected {GROUP}/{VERSION})", "apiVersion")
        elif not isinstance(doc.get("spec"), dict):
            problem("Required value: spec must be an object", "spec")
        else:
            try:
                obj = SourceObject.from_manifest(doc, DEFAULT_NAMESPACE)
            except ValidationError as exc:
                problem(exc.errors()[0]["msg"], "metadata")
                return
            if obj.ref in out.origins:
                problem(f"defined twice (also in {out.origins[obj.ref]})")
                return
            out.origins[obj.ref] = file
            out.objects.append(obj)
    elif kind == "Secret":
        try:
            out.secrets[(namespace, name)] = secret_data(doc)
        except ValueError as exc:
            problem(str(exc).split(": ", 1)[1], str(exc).split(": ", 1)[0])
    else:
        try:
            out.services[(namespace, name)] = ServiceInfo.from_manifest(doc, DEFAULT_NAMESPACE)
        except (ValidationError, AttributeError, TypeError):
            problem("not a valid Service (ports need a numeric port)", "spec.ports")


def load_manifests(paths: list[str | Path]) -> LoadedManifests:
    """Read every manifest under ``paths``; raises UserError only for a path that does not exist."""
    out = LoadedManifests()
    for path in manifest_files(paths):
        file = str(path)
        out.files.append(file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            out.problems.append(Problem(file, f"cannot read: {exc}"))
            continue
        for doc, line in _documents(text, file, out.problems):
            for item in _flatten(doc):
                _add(item, file, line, out)
    return out
