"""``kubegate render -f PATH...``: print, as a YAML stream, what the operator would write.

Secret values are replaced by ``<redacted>`` unless ``--show-secrets``; even
then no API key appears, because only hashes of keys exist past the
translator. Invalid input fails like ``kubegate validate`` (exit 1).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from kubegate.commands.validate import check, report
from kubegate.generate import ConfigTooLarge, generate_objects

REDACTED = "<redacted>"


def redact(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of a Secret with every value replaced; other objects unchanged."""
    if obj.get("kind") != "Secret":
        return obj
    out = dict(obj)
    for section in ("data", "stringData"):
        if section in out:
            out[section] = {key: REDACTED for key in out[section]}
    return out


def render_yaml(objects: list[dict[str, Any]], show_secrets: bool = False) -> str:
    shown = objects if show_secrets else [redact(o) for o in objects]
    return yaml.safe_dump_all(shown, sort_keys=False, explicit_start=True, width=1_000_000)


def main(args: argparse.Namespace) -> int:
    checked = check(args.paths, args.namespace)
    if not report(checked):
        print(f"{len(checked.problems)} problem(s) found; nothing rendered", file=sys.stderr)
        return 1
    try:
        objects = generate_objects(checked.result, checked.inp)
    except ConfigTooLarge as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(render_yaml(objects, args.show_secrets))
    return 0
