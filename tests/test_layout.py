"""The repository layout must never shadow the standard library's `operator` module."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STDLIB_DIR = Path(subprocess.check_output([sys.executable, "-c", "import os; print(os.path.dirname(os.__file__))"],
                                          text=True).strip())


def _operator_file(code: str, *flags: str) -> str:
    """Run python in the repo root (so '' / the root is first on sys.path) and report operator.__file__."""
    out = subprocess.run([sys.executable, *flags, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_import_operator_from_repo_root_is_stdlib():
    path = _operator_file("import operator; print(operator.__file__)")
    assert Path(path).parent == STDLIB_DIR


def test_import_operator_without_site_preloading_is_stdlib():
    # -S -I: no site, no preloaded modules, and we put the repo root first on sys.path ourselves.
    code = "import sys; sys.path.insert(0, ''); import operator; print(operator.__file__)"
    assert Path(_operator_file(code, "-S")).parent == STDLIB_DIR


def test_import_operator_after_kubegate_subpackages_is_stdlib():
    code = ("import kubegate, kubegate.operator, kubegate.dataplane, operator; "
            "print(operator.__file__); print(operator.itemgetter(1)([0, 42]))")
    lines = _operator_file(code).splitlines()
    assert Path(lines[0]).parent == STDLIB_DIR
    assert lines[1] == "42"


def test_subpackages_map_to_top_level_folders():
    import kubegate.dataplane
    import kubegate.operator

    assert Path(next(iter(kubegate.operator.__path__))) == REPO / "operator"
    assert Path(next(iter(kubegate.dataplane.__path__))) == REPO / "dataplane"
    assert not (REPO / "operator" / "__init__.py").exists()
    assert kubegate.__version__
