"""``kubegate validate -f PATH...``: offline checks of manifests, one line per problem.

Errors (exit 1): unreadable YAML, unknown kubegate kinds, specs the CRD
schema/CEL would reject, and semantic problems the operator would report as
``Accepted=False`` (conflicts) or unusable referenced material. Missing
references are warnings only: GitOps repos often keep Secrets elsewhere.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass, field

from kubegate.manifests import LoadedManifests, Problem, load_manifests
from kubegate.resources import (
    DEFAULT_GATEWAY_NAMESPACE,
    ObjectResult,
    TranslationInput,
    TranslationResult,
)
from kubegate.spec import NAME_PATTERN, parse_spec
from kubegate.translate import CONFLICTED, INVALID_CERTIFICATE, INVALID_KEY, INVALID_SPEC, translate

# Referenced material that is present but unusable is an error; absent material a warning.
ERROR_REASONS = frozenset({INVALID_KEY, INVALID_CERTIFICATE})
_CONFLICT_FIELD = {"GatewayRoute": "spec.path", "TLSPolicy": "spec.hostnames"}


@dataclass
class Checked:
    loaded: LoadedManifests
    inp: TranslationInput
    result: TranslationResult
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _problem(loaded: LoadedManifests, verdict: ObjectResult, field_name: str, reason: str) -> Problem:
    ref = verdict.ref
    return Problem(loaded.origins.get(ref, "?"), reason, ref.kind, ref.namespace, ref.name, field_name)


def check(paths: list[str], gateway_namespace: str = DEFAULT_GATEWAY_NAMESPACE) -> Checked:
    """Load, validate and translate; every finding as a Problem (error) or a warning line."""
    loaded = load_manifests(paths)
    problems = list(loaded.problems)
    for obj in loaded.objects:
        file = loaded.origins[obj.ref]
        if len(obj.name) > 253 or not re.fullmatch(NAME_PATTERN, obj.name):
            problems.append(Problem(file, "must be a lowercase RFC 1123 subdomain", obj.kind, obj.namespace,
                                    obj.name, "metadata.name"))
        _, errors = parse_spec(obj.kind, obj.spec)
        problems.extend(Problem(file, e.reason, obj.kind, obj.namespace, obj.name, e.field) for e in errors)
    inp = TranslationInput(
        gateway_namespace=gateway_namespace,
        objects=tuple(loaded.objects),
        secrets=loaded.secrets,
        services=loaded.services,
    )
    result = translate(inp)
    warnings = []
    for verdict in result.results.values():
        if verdict.accepted.status == "False" and verdict.accepted.reason != INVALID_SPEC:
            field_name = _CONFLICT_FIELD.get(verdict.ref.kind, "spec") if verdict.accepted.reason == CONFLICTED else "spec"
            problems.append(_problem(loaded, verdict, field_name, f"{verdict.accepted.reason}: {verdict.accepted.message}"))
        resolved = verdict.resolved_refs
        if resolved.status == "False":
            line = _problem(loaded, verdict, "", f"{resolved.reason}: {resolved.message}")
            if resolved.reason in ERROR_REASONS:
                problems.append(line)
            else:
                warnings.append(f"warning: {line}")
    problems.sort(key=lambda p: (p.file, p.line or 0))
    return Checked(loaded, inp, result, problems, warnings)


def report(checked: Checked) -> bool:
    """Print problems and warnings to stderr; True when there is no error."""
    for problem in checked.problems:
        print(problem, file=sys.stderr)
    for warning in checked.warnings:
        print(warning, file=sys.stderr)
    return not checked.problems


def summary(checked: Checked) -> str:
    counts = Counter(o.kind for o in checked.loaded.objects)
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "no kubegate objects"
    files = len(checked.loaded.files)
    tail = f", {len(checked.warnings)} warning(s)" if checked.warnings else ""
    return f"OK: {kinds} in {files} file(s){tail}"


def main(args: argparse.Namespace) -> int:
    checked = check(args.paths)
    if not report(checked):
        print(f"{len(checked.problems)} problem(s) found", file=sys.stderr)
        return 1
    print(summary(checked))
    return 0
