"""``up`` after a node cluster whose processes died (a killed CI run, a lost session): the bridge it left
is reclaimed; a bridge whose node still runs is refused. The host commands are replaced here (one
function's decision); the real reclaim runs whenever ``tests/cluster`` finds a stale bridge."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kubegate import devcluster, gobuild, node_host, nodecluster
from kubegate.errors import UserError


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A fake host: whether the bridge exists, and what was taken down."""
    state = {"bridge": True, "down": [], "leftovers": 0}
    monkeypatch.setattr(gobuild, "cache_root", lambda: tmp_path)
    monkeypatch.setenv("KUBEGATE_DEV_NODE_DIR", str(tmp_path / "dev-node"))
    monkeypatch.setattr(node_host, "bridge_exists", lambda: state["bridge"])

    def down(state_dir, log=print, keep_logs=False):
        state["down"].append(state_dir)
        state["bridge"] = False
        return True

    def remove_leftovers():
        state["leftovers"] += 1
        state["bridge"] = False

    monkeypatch.setattr(nodecluster, "down", down)
    monkeypatch.setattr(node_host, "remove_leftovers", remove_leftovers)
    return state


def write_state(path, pids):
    path.mkdir(parents=True)
    devcluster.DevCluster(path, "https://10.244.0.1:6443", pids).save()


def test_a_bridge_left_by_dead_processes_is_reclaimed_with_its_state(tmp_path, host):
    stale = tmp_path / "test-nodes" / "node-abc"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_state(stale, {"kubelet": dead.pid, "containerd": dead.pid})
    nodecluster.reclaim_bridge(log=lambda *_: None)
    assert host["down"] == [stale.resolve()]
    assert host["bridge"] is False


def test_a_bridge_no_state_recorded_is_removed_with_the_host_wide_leftovers(host):
    nodecluster.reclaim_bridge(log=lambda *_: None)
    assert host["down"] == []
    assert host["leftovers"] == 1 and host["bridge"] is False


def test_a_bridge_whose_node_still_runs_is_refused_and_left_alone(tmp_path, host):
    owner = tmp_path / "elsewhere"
    # A process whose argv[0] is named like a node component, as `runs` checks.
    live = subprocess.Popen(["sleep", "30"])
    try:
        write_state(owner, {"sleep": live.pid})
        nodecluster.owner_file().write_text(f"{owner}\n")
        with pytest.raises(UserError, match="is up"):
            nodecluster.reclaim_bridge(log=lambda *_: None)
        assert host["down"] == [] and host["bridge"] is True
    finally:
        live.kill()
        live.wait()


def test_no_bridge_means_nothing_to_reclaim(host):
    host["bridge"] = False
    nodecluster.reclaim_bridge(log=lambda *_: None)
    assert host["down"] == [] and host["leftovers"] == 0
