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
from collections.abc import Mapping, Sequence

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
    p.add_argument("--redis-url", default=None, help="Redis URL for shared rate limits (default: in-memory)")
    p.add_argument(
        "--trusted-proxy", dest="trusted_proxies", action="append", default=[], metavar="CIDR",
        help="honour X-Forwarded-For from these peers; may repeat",
    )
    p.add_argument("--access-log", action="store_true",
                   help="one JSON line per request on stdout (never a credential; docs/access-log.md)")
    p.add_argument("--otlp-endpoint", default=None, metavar="URL",
                   help="OpenTelemetry traces over OTLP/HTTP to URL (or OTEL_EXPORTER_OTLP_*; docs/tracing.md)")
    p.add_argument("--trace-sample-ratio", type=float, default=None, metavar="R",
                   help="share of new traces sampled, 0..1 (default OTEL_TRACES_SAMPLER_ARG, else 1)")
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


def _env_default(flag: str, default: str) -> str:
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
    p.add_argument("--redis-url", default=None, metavar="URL",
                   help="the data plane's --redis-url, only to scope its egress NetworkPolicy to that address "
                        "('' = the data plane uses no Redis; default: unknown, a rule naming port 6379 only)")

    p = sub.add_parser("dataplane", help="the in-cluster data plane, reading its config through the API")
    p.add_argument("--namespace", default=DEFAULT_GATEWAY_NAMESPACE, help="gateway namespace")
    _add_listeners(p)
    _add_client_limits(p)

    p = sub.add_parser("dev-cluster", help="a real local control plane (kube-apiserver + etcd) for development")
    p.add_argument("action", choices=["up", "down", "env"], help="start, stop, or print the environment")
    p.add_argument("--node", action="store_true",
                   help="a whole single-node cluster (kubelet, containerd, CNI, kube-proxy, CoreDNS, "
                        "NetworkPolicy enforcement) instead of the API server only; needs root")
    return parser


ENV_PREFIX = "KUBEGATE_"
TRUE, FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def env_name(action: argparse.Action) -> str | None:
    """``--redis-url`` -> ``KUBEGATE_REDIS_URL``; None for --help, --version and positionals."""
    longs = [o for o in action.option_strings if o.startswith("--")]
    if not longs or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
        return None
    return ENV_PREFIX + longs[0][2:].upper().replace("-", "_")


def apply_env_defaults(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Every flag of every command may come from ``KUBEGATE_<FLAG>`` (API.md), so a Deployment can take
    a password from a Secret instead of its args; a flag on the command line still wins. Lists (-f,
    --trusted-proxy) are comma-separated; switches take 1/true/yes/on or 0/false/no/off."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                apply_env_defaults(sub, environ)
            continue
        name = env_name(action)
        if name is None:
            continue
        action.help = f"{action.help or ''} [env {name}]".strip()
        value = environ.get(name)
        if value is None:
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if value.strip().lower() not in TRUE + FALSE:
                raise UserError(f"{name}: expected true or false, not {value!r}")
            on = value.strip().lower() in TRUE
            action.default = on if isinstance(action, argparse._StoreTrueAction) else not on
        elif isinstance(action, argparse._AppendAction):
            items = [item.strip() for item in value.split(",") if item.strip()]
            try:
                items = [action.type(item) if action.type else item for item in items]
            except (TypeError, ValueError):
                raise UserError(f"{name}: invalid value {value!r}") from None
            action.default = [items] if action.nargs == "+" else items
            action.required = False
        else:
            try:
                action.default = action.type(value) if action.type else value
            except (TypeError, ValueError):
                raise UserError(f"{name}: invalid value {value!r}") from None
            if action.choices is not None and action.default not in action.choices:
                raise UserError(f"{name}: must be one of {', '.join(map(str, action.choices))}, not {value!r}")
            action.required = False


def _flatten(args: argparse.Namespace) -> None:
    if getattr(args, "paths", None):
        args.paths = [p for group in args.paths for p in group]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        apply_env_defaults(parser, os.environ)
    except UserError as exc:
        print(f"kubegate: {exc}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
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
