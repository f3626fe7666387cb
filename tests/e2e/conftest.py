"""The real control plane for the end-to-end tests: one private dev cluster per pytest session.

``cluster`` is a :class:`kubegate.devcluster.DevCluster` (the same code as
``kubegate dev-cluster up``) started in a temporary folder, with the kubegate
CRDs, the cert-manager Certificate CRD *test fixture* and everything in
``manifests/`` (namespace kubegate-system, ServiceAccounts, RBAC, ...)
installed. Useful members:

- ``cluster.kubeconfig`` / ``cluster.server`` / ``cluster.ca_path``
- ``cluster.kubectl(*args, input=None, check=True, as_token=None)``: the real kubectl
- ``cluster.token_for(namespace, serviceaccount)``: a TokenRequest token
- ``cluster.kubeconfig_for_token(token)``: a kubeconfig that authenticates only with it
- ``cluster.env()``: ``{"KUBECONFIG": ...}`` for subprocesses

There is no controller-manager: Deployments create no pods, deleted namespaces
stay Terminating and the ``default`` ServiceAccount is not created. Use the
``namespace`` fixture for a fresh namespace per test instead of deleting.

tests/deploy/conftest.py re-exports these fixtures; the cluster is kept on
``pytest.Config`` so both folders share one cluster in one session.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from kubegate import devcluster

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "tests" / "fixtures"
CERT_MANAGER_CRD = FIXTURES / "cert-manager-certificate-crd.yaml"
MANIFESTS = REPO_ROOT / "manifests"
_CONFIG_ATTR = "_kubegate_dev_cluster"


def start_test_cluster(state_dir: Path) -> devcluster.DevCluster:
    """Start a dev cluster and install what every e2e test expects."""
    cluster = devcluster.up(state_dir, install_crds=False, log=lambda m: print(f"[dev-cluster] {m}"))
    try:
        cluster.install_crds(CERT_MANAGER_CRD)
        # The whole base: namespace, CRDs again (no-op), RBAC, Services, NetworkPolicies and
        # the Deployments (harmless: no controller-manager turns them into pods).
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(MANIFESTS))
    except BaseException:
        devcluster.down(state_dir, log=lambda *_: None, keep_logs=True)
        raise
    return cluster


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> devcluster.DevCluster:
    shared = getattr(request.config, _CONFIG_ATTR, None)
    if shared is None:
        state_dir = tmp_path_factory.mktemp("dev-cluster")
        shared = start_test_cluster(state_dir)
        setattr(request.config, _CONFIG_ATTR, shared)
        keep = bool(os.environ.get("KUBEGATE_KEEP_DEV_CLUSTER"))
        request.config.add_cleanup(lambda: None if keep else devcluster.down(state_dir, log=lambda *_: None))
    return shared


@pytest.fixture
def namespace(cluster: devcluster.DevCluster) -> str:
    """A fresh namespace for one test (never deleted: no namespace controller runs)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    return name
