"""Shared by the GitOps health tests: run Argo CD's Lua health and Flux's kstatus on one object."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from kubegate import gobuild

REPO = Path(__file__).resolve().parents[2]
HEALTH_LUA = REPO / "manifests" / "argocd" / "health.lua"


def lua_literal(value) -> str:
    """A Python JSON value as a Lua table constructor (lua5.4 ships no JSON decoder)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        out = []
        for ch in value:
            if ch in '\\"':
                out.append("\\" + ch)
            elif ch == "\n":
                out.append("\\n")
            elif ord(ch) < 32 or ord(ch) > 126:
                out.append(f"\\u{{{ord(ch):X}}}")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    return "{" + ", ".join(f"[{lua_literal(k)}] = {lua_literal(v)}" for k, v in value.items()) + "}"


def argo_health(obj: dict) -> tuple[str, str]:
    """Run health.lua the way Argo CD does: `obj` is a global, the chunk returns {status, message}."""
    script = (f"obj = {lua_literal(obj)}\n"
              f"local hs = assert(loadfile({lua_literal(str(HEALTH_LUA))}))()\n"
              'io.write(hs.status, "\\t", hs.message or "")\n')
    proc = subprocess.run(["lua5.4", "-"], input=script, capture_output=True, text=True, check=True)
    status, _, message = proc.stdout.partition("\t")
    return status, message


def kstatus_binary() -> Path:
    """hack/kstatus built with go build (cached by source hash)."""
    return gobuild.go_tool("kstatus")


def flux_status(kstatus: Path, obj: dict) -> dict:
    proc = subprocess.run([str(kstatus)], input=json.dumps(obj), capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)
