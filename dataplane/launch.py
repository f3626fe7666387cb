"""How the data-plane commands (``kubegate run``, ``kubegate dataplane``) start serving: one
:class:`Gateway`, or with ``--workers N`` a :class:`Supervisor` of N worker processes.

Also what ``--workers N`` settles before any worker starts: how many workers (the CPUs this process
may use), the Gateway options they all get (plain, picklable data, from the data-plane flags), the
ports they share (bound once with SO_REUSEPORT) and prometheus_client's multiprocess mode. One
process and N workers read the same flags the same way.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kubegate.errors import UserError

from .webfront import ClientTimeouts

if TYPE_CHECKING:
    from .metrics import Metrics
    from .server import Gateway
    from .supervisor import Supervisor

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def cgroup_cpus(cpu_max: str) -> int | None:
    """CPUs a cgroup v2 ``cpu.max`` line allows ("max 100000": no limit), rounded up (pure)."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        return max(1, math.ceil(int(parts[0]) / int(parts[1])))
    except (ValueError, ZeroDivisionError):
        return None


def default_workers() -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup CPU quota
    (a container limited to 2 CPUs on a 64-CPU node gets 2 workers, not 64)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        with open("/sys/fs/cgroup/cpu.max") as handle:
            quota = cgroup_cpus(handle.read())
    except OSError:
        quota = None
    return min(cpus, quota) if quota else cpus


def gateway_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Gateway keyword arguments the data-plane flags give (one place for both commands and workers)."""
    return {"host": args.host, "http_port": args.http_port, "https_port": args.https_port,
            "trusted_proxies": tuple(args.trusted_proxies),
            "timeouts": ClientTimeouts(args.header_timeout, args.idle_timeout),
            "observe": {"access_log": getattr(args, "access_log", False),
                        "otlp_endpoint": getattr(args, "otlp_endpoint", None),
                        "trace_sample_ratio": getattr(args, "trace_sample_ratio", None)}}


def gateway_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """Gateway keyword arguments from ``gateway_options`` (plain, picklable data a worker receives):
    the access-log / tracing settings become this process's own observer."""
    from .observe import build_observer

    kwargs = dict(options)
    observe = kwargs.pop("observe", None) or {}
    kwargs["observer"] = build_observer(access_log=observe.get("access_log", False),
                                        otlp_endpoint=observe.get("otlp_endpoint"),
                                        sample_ratio=observe.get("trace_sample_ratio"))
    return kwargs


def use_multiprocess_metrics() -> str:
    """Switch this process (and the workers it starts) to prometheus_client's multiprocess mode,
    in a fresh private directory; returns it. Must run before the supervisor's Metrics exist."""
    from prometheus_client import values

    path = tempfile.mkdtemp(prefix="kubegate-metrics-")
    os.environ[MULTIPROC_ENV] = path
    values.ValueClass = values.MultiProcessValue()  # in case prometheus_client was imported already
    return path


def reserve(host: str, port: int) -> socket.socket:
    """Bind (not listen) with SO_REUSEPORT: resolves port 0 to one port for every worker and holds it.
    A socket that does not listen is never handed connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def start_gateway(args: argparse.Namespace, workers: int, metrics: Metrics, metrics_dir: str | None,
                        live_replicas: Callable[[], int] = lambda: 1) -> tuple[Gateway | Supervisor, Any]:
    """The started Gateway (``workers`` 1) or Supervisor the data-plane flags ask for, and the rate
    limiter this process owns (None under a supervisor: each worker builds its own). A bad
    ``--redis-url``, a bad option or a port that cannot be bound is a :class:`UserError`. A
    supervisor's workers listen once they serve the first config (``wait_listening``)."""
    from .ratelimit import build_rate_limiter, check_redis_url
    from .server import Gateway
    from .supervisor import Supervisor

    limiter = None
    try:
        if workers > 1:
            if args.redis_url:
                check_redis_url(args.redis_url)
        else:
            limiter = build_rate_limiter(args.redis_url, metrics=metrics, live_replicas=live_replicas)
    except ValueError as exc:
        raise UserError(f"--redis-url: {exc}") from None
    try:
        if workers > 1:
            assert metrics_dir is not None
            gateway: Gateway | Supervisor = Supervisor(
                workers, gateway_options(args), admin_port=args.admin_port, redis_url=args.redis_url,
                metrics_dir=metrics_dir, metrics=metrics)
        else:
            gateway = Gateway(**gateway_kwargs(gateway_options(args)), admin_port=args.admin_port, limiter=limiter,
                              metrics=metrics)
    except ValueError as exc:
        if limiter is not None:
            await limiter.close()
        raise UserError(str(exc)) from None
    try:
        await gateway.start()
    except OSError as exc:
        if limiter is not None:
            await limiter.close()
        raise UserError(exc.strerror or str(exc)) from None
    return gateway, limiter
