"""Re-export the e2e cluster fixtures: the deploy tests run against the same dev cluster."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "kubegate_e2e_cluster_fixtures", Path(__file__).resolve().parents[1] / "e2e" / "conftest.py")
_e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_e2e)

cluster = _e2e.cluster
namespace = _e2e.namespace
REPO_ROOT = _e2e.REPO_ROOT
MANIFESTS = _e2e.MANIFESTS
