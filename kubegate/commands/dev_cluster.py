"""``kubegate dev-cluster up|down|env``: the real local control plane for development and tests."""

from __future__ import annotations

import argparse
import sys

from kubegate import devcluster


def main(args: argparse.Namespace) -> int:
    if args.action == "up":
        cluster = devcluster.up(log=lambda m: print(m, file=sys.stderr, flush=True))
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        return 0
    if args.action == "down":
        devcluster.down(log=lambda m: print(m, file=sys.stderr))
        return 0
    print(devcluster.env_lines(), end="")
    return 0
