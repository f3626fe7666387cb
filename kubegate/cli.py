"""The ``kubegate`` command line: argument parsing and dispatch only.

Each command lives in ``kubegate.commands.<name>`` and exposes
``main(args) -> int``; it is imported lazily so ``kubegate validate`` never pays
for aiohttp or kopf. Errors a user can cause are :class:`UserError` and print
as one line; anything else is a bug and still prints one line (plus the
traceback only with ``KUBEGATE_DEBUG=1``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from kubegate import __version__
from kubegate.durations import parse_duration
from kubegate.errors import UserError
from kubegate.resources import DEFAULT_GATEWAY_NAMESPACE


def _add_files(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-f", "--filename", dest="paths", action="append", nargs="+", required=True, metavar="PATH",
        help="manifest files or folders (YAML streams); may repeat",
    )


def _add_listeners(p: argparse.ArgumentParser) -> None:
    p.add_argument("--http-port", type=int, default=8080, help="HTTP listener port (default 8080)")
    p.add_argument("--https-port", type=int, default=8443, help="HTTPS listener port (default 8443)")
    p.add_argument("--admin-port", type=int, default=9090, help="admin port: /metrics /healthz /readyz (default 9090)")
    p.add_argument("--host", default="0.0.0.0", help="address to bind the listeners to (default 0.0.0.0)")
    p.add_argument("--redis-url", default=_env_default("--redis-url", None), metavar="URL",
                   help="Redis URL for shared rate limits (default: in-memory; env KUBEGATE_REDIS_URL)")
    p.add_argument(
        "--trusted-proxy", dest="trusted_proxies", action="append", default=[], metavar="CIDR",
        help="honour X-Forwarded-For from these peers; may repeat",
    )
    p.add_argument("--workers", type=_workers, default=None, metavar="N",
                   help="worker processes sharing the listeners (SO_REUSEPORT) under one supervisor; "
                        "default: the CPUs the process may use")


def _workers(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 1 <= n <= 1024:
        raise argparse.ArgumentTypeError(f"{n}: must be between 1 and 1024")
    return n


def _env_default(flag: str, default: str | None) -> str | None:
    """``--header-timeout`` may also come from ``KUBEGATE_HEADER_TIMEOUT`` (API.md, Command line)."""
    return os.environ.get("KUBEGATE_" + flag.lstrip("-").upper().replace("-", "_"), default)


def _duration(limit: float | None = None):
    def parse(text: str) -> float:
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if seconds <= 0 or (limit is not None and seconds > limit):
            raise argparse.ArgumentTypeError(f"{text!r} must be more than 0s" +
                                             (f" and at most {limit:g}s" if limit is not None else ""))
        return seconds
    return parse


def _add_client_limits(p: argparse.ArgumentParser) -> None:
    """The slow-client limits of the data-plane commands (defaults documented in the README)."""
    p.add_argument("--header-timeout", type=_duration(30.0), default=_env_default("--header-timeout", "10s"),
                   metavar="DURATION",
                   help="close a connection whose request head is not complete this long after its first "
                        "byte (default 10s, at most 30s; env KUBEGATE_HEADER_TIMEOUT)")
    p.add_argument("--idle-timeout", type=_duration(), default=_env_default("--idle-timeout", "60s"),
                   metavar="DURATION",
                   help="close a connection that has no request for this long (keep-alive; default 60s; "
                        "env KUBEGATE_IDLE_TIMEOUT)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubegate", description="A Kubernetes-native API gateway.")
    parser.add_argument("--version", action="version", version=f"kubegate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check manifests offline against the CRD schemas and semantic rules")
    _add_files(p)

    p = sub.add_parser("render", help="print the objects the operator would generate for these manifests")
    _add_files(p)
    p.add_argument("--namespace", default=DEFAULT_GATEWAY_NAMESPACE, help="gateway namespace")
    p.add_argument("--show-secrets", action="store_true", help="print Secret values instead of redacting them")

    p = sub.add_parser("run", help="a complete local gateway from manifests, no cluster needed")
    _add_files(p)
    _add_listeners(p)
    _add_client_limits(p)
    p.add_argument("--namespace", default=DEFAULT_GATEWAY_NAMESPACE, help="gateway namespace")
    p.add_argument("--demo-backends", action="store_true",
                   help="start an echo server on every loopback port the routes proxy to (for trying the examples)")

    p = sub.add_parser("operator", help="the kopf operator (in-cluster or from KUBECONFIG)")
    p.add_argument("--namespace", default=DEFAULT_GATEWAY_NAMESPACE, help="gateway namespace")
    p.add_argument("--metrics-port", type=int, default=8081, help="/metrics, /healthz, /readyz (0: any free port)")
    p.add_argument("--redis-url", default=_env_default("--redis-url", None), metavar="URL",
                   help="the data plane's --redis-url, only to scope its egress NetworkPolicy to that address "
                        "('' = the data plane uses no Redis; default: unknown, a rule naming port 6379 only; "
                        "env KUBEGATE_REDIS_URL)")

    p = sub.add_parser("dataplane", help="the in-cluster data plane, reading its config through the API")
    p.add_argument("--namespace", default=DEFAULT_GATEWAY_NAMESPACE, help="gateway namespace")
    _add_listeners(p)
    _add_client_limits(p)

    p = sub.add_parser("dev-cluster", help="a real local control plane (kube-apiserver + etcd) for development")
    p.add_argument("action", choices=["up", "down", "env"], help="start, stop, or print the environment")
    return parser


def _flatten(args: argparse.Namespace) -> None:
    if getattr(args, "paths", None):
        args.paths = [p for group in args.paths for p in group]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _flatten(args)
    module = importlib.import_module(f"kubegate.commands.{args.command.replace('-', '_')}")
    try:
        return int(module.main(args) or 0)
    except UserError as exc:
        print(f"kubegate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: still one line for the user
        if os.environ.get("KUBEGATE_DEBUG"):
            raise
        print(f"kubegate: internal error: {type(exc).__name__}: {exc} (set KUBEGATE_DEBUG=1 for details)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
