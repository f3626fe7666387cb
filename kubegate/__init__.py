"""kubegate: a Kubernetes-native API gateway (kopf operator + aiohttp data plane).

The top-level folders ``operator/`` and ``dataplane/`` are the subpackages
``kubegate.operator`` and ``kubegate.dataplane``: pyproject.toml's
``package-dir`` maps them, and a wheel or an editable install lays them out
that way. The folders have no ``__init__.py`` on purpose: as namespace
portions they never shadow the standard library's ``operator`` module.

Imported from a source checkout (``PYTHONPATH=<checkout>``, ``python3 -m``
in the repository root), this package resolves exactly the subpackages that
pyproject.toml maps, to the checkout's folders, so the checkout's code runs
and not that of some other editable install on the machine. Nothing else of
the checkout joins the package: ``kubegate.tests``, ``kubegate.bench`` and
``kubegate.hack`` do not import (tests/test_layout.py).
"""

from __future__ import annotations

import sys
from importlib.machinery import ModuleSpec
from pathlib import Path

__version__ = "0.1.0"


class _MappedFolders:
    """A meta-path finder for pyproject.toml's ``package-dir`` entries below this package."""

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        folder = self.folders.get(fullname)
        if folder is None:
            return None
        spec = ModuleSpec(fullname, None, is_package=True)  # a namespace package, as installed
        spec.submodule_search_locations = [str(folder)]
        return spec


def _map_checkout_folders() -> None:
    checkout = Path(__file__).resolve().parent.parent
    pyproject = checkout / "pyproject.toml"
    if not pyproject.is_file():
        return  # installed from a wheel: the subpackages sit inside this one
    import tomllib

    try:  # a stray pyproject.toml beside an installed package (some wheels ship one) maps nothing
        config = tomllib.loads(pyproject.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return
    if config.get("project", {}).get("name") != __name__:
        return
    package_dir = config.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    folders = {name: checkout / folder for name, folder in package_dir.items()
               if name.startswith(__name__ + ".") and (checkout / folder).is_dir()}
    if folders:
        sys.meta_path.insert(0, _MappedFolders(folders))


_map_checkout_folders()
