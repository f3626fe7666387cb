"""``kubegate dev-cluster up|down|env [--node]``: the real local control plane (or node) for development."""

from __future__ import annotations

import argparse
import sys

from kubegate import devcluster


def main(args: argparse.Namespace) -> int:
    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.node:
        from kubegate import nodecluster

        if args.action == "up":
            node = nodecluster.up(log=log)
            print(f"export KUBECONFIG={node.cluster.kubeconfig}")
        elif args.action == "down":
            nodecluster.down(log=log)
        else:
            print(devcluster.env_lines(nodecluster.default_node_dir()), end="")
        return 0
    if args.action == "up":
        cluster = devcluster.up(log=log)
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        return 0
    if args.action == "down":
        devcluster.down(log=log)
        return 0
    print(devcluster.env_lines(), end="")
    return 0
