"""The import layers of .importlinter hold (CI runs this), and the check would see a break."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _tool():
    spec = importlib.util.spec_from_file_location("lint_imports", REPO / "hack" / "lint_imports.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tool():
    if shutil.which("lint-imports") is None:
        pytest.fail("lint-imports is not installed: pip install -e '.[test]' (scripts/install.sh does)")
    return _tool()


def test_import_layers_are_kept(tool, tmp_path):
    tool.stage(tmp_path)
    done = tool.lint(tmp_path, [], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("translate/routes.py", "import kubegate.kubeapi", "does no I/O"),
    ("translate/memo.py", "import aiohttp", "does no I/O"),
    ("generate.py", "import kubegate.operator.apply", "commands > {operator | dataplane}"),
    ("operator/apply.py", "import kubegate.dataplane.server", "commands > {operator | dataplane}"),
    ("dataplane/heartbeat.py", "import kubegate.operator.status", "commands > {operator | dataplane}"),
    ("dataplane/snapshot.py", "import kubegate.dataplane.server", "sources/{file | kubernetes} > server"),
    ("dataplane/sources/file.py", "import kubegate.dataplane.sources.kubernetes", "sources/{file | kubernetes}"),
])
def test_a_forbidden_import_breaks_a_contract(tool, tmp_path, module, line, contract):
    """Guards the guard: the staged graph includes operator/ and dataplane/, so breaks are seen."""
    staged = tool.stage(tmp_path)
    target = staged / module
    target.write_text(f"{line}  # injected by the test\n" + target.read_text())
    done = tool.lint(tmp_path, [], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    broken = [chunk for chunk in done.stdout.split("\n\n") if "BROKEN" in chunk]
    assert any(contract in chunk for chunk in broken), done.stdout
