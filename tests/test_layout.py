"""The repository layout must never shadow the standard library's `operator` module."""

import os
import shutil
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


def _checkout_imports(cwd: Path, env: dict[str, str]) -> list[str]:
    """Where kubegate's mapped subpackages come from, and which other checkout folders import as kubegate.*."""
    code = ("import importlib, kubegate.operator.runtime as o, kubegate.dataplane.server as d\n"
            "print(o.__file__); print(d.__file__)\n"
            "for name in ('tests', 'bench', 'hack', 'scripts', 'examples'):\n"
            "    try: importlib.import_module('kubegate.' + name); print('imports', name)\n"
            "    except ModuleNotFoundError: pass\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_the_checkout_is_not_part_of_the_package(tmp_path):
    """From the repository root and with the checkout on PYTHONPATH (from elsewhere), kubegate.operator and
    kubegate.dataplane are this checkout's folders, as pyproject.toml maps them, whatever editable install
    the machine has; no other folder of the checkout is a subpackage (no kubegate.tests, kubegate.bench)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    expected = [str(REPO / "operator" / "runtime.py"), str(REPO / "dataplane" / "server.py")]
    assert _checkout_imports(REPO, env) == expected
    assert _checkout_imports(tmp_path, {**env, "PYTHONPATH": str(REPO)}) == expected


def test_an_installed_package_beside_a_stray_pyproject_imports(tmp_path):
    """Installed as the wheel lays it out, in a site-packages that also holds some other project's
    pyproject.toml (a wheel shipped one into the image's site-packages): the package imports from there."""
    site = tmp_path / "site-packages"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "kubegate", site / "kubegate", ignore=ignore)
    for folder in ("operator", "dataplane"):
        shutil.copytree(REPO / folder, site / "kubegate" / folder, ignore=ignore)
    (site / "pyproject.toml").write_text('[project]\nname = "someone-else"\n[tool.poetry]\nname = "x"\n')
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(site)}
    assert _checkout_imports(tmp_path, env) == [str(site / "kubegate" / "operator" / "runtime.py"),
                                                str(site / "kubegate" / "dataplane" / "server.py")]
