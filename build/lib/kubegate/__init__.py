"""kubegate: a Kubernetes-native API gateway (kopf operator + aiohttp data plane).

The top-level folders ``operator/`` and ``dataplane/`` are the subpackages
``kubegate.operator`` and ``kubegate.dataplane``. A wheel installs them there
(see pyproject.toml). In a source checkout (an editable install, or the repo
root on sys.path) the checkout itself joins this package's search path. The
folders have no ``__init__.py`` on purpose: as namespace portions they never
shadow the standard library's ``operator`` module.
"""

from pathlib import Path

_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "operator").is_dir():
    __path__.append(str(_checkout))

__version__ = "0.1.0"
