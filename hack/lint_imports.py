"""Run import-linter (.importlinter) on kubegate as a wheel lays it out; exit status as lint-imports'.

pyproject.toml maps the top-level ``operator/`` and ``dataplane/`` folders into the package
(``package-dir``); import-linter reads files, so it would not see them in the checkout. This stages a copy
of the three folders as ``kubegate/``, ``kubegate/operator/``, ``kubegate/dataplane/`` (what
pyproject.toml installs) and lints that. Usage: ``python3 hack/lint_imports.py [lint-imports args]``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def stage(root: Path) -> Path:
    """Copy the package into ``root`` as installed; returns ``root/kubegate``."""
    staged = root / "kubegate"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "kubegate", staged, ignore=ignore)
    for sub in ("operator", "dataplane"):
        shutil.copytree(REPO / sub, staged / sub, ignore=ignore)
        (staged / sub / "__init__.py").touch()  # grimp finds regular packages only
    return staged


def lint(root: Path, argv: list[str], **run: object) -> subprocess.CompletedProcess:
    """lint-imports with the repository's contracts on the package staged under ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [shutil.which("lint-imports") or "lint-imports", str(REPO / ".importlinter"), "--no-cache", *argv]
    return subprocess.run(cmd, check=False, cwd=root, env=env, **run)  # type: ignore[call-overload]


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="kubegate-lint-imports-") as tmp:
        stage(Path(tmp))
        return lint(Path(tmp), argv).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
