"""Control-plane and data-plane scale (issue 10 item 9): prints each figure against its target.

    python bench/scale.py [--routes 10000] [--keys 100000] [--changes 30] [--no-cluster]

1. The compiled config at --routes routes + --keys API keys (bench/dataplane.py's
   big_config, the shape the translator writes): the ConfigMap and Secret
   payload sizes, and the objects they are written in (kubegate/generate.py
   shards a payload above config.SHARD_BYTES): the largest against the 1 MiB
   object limit.
2. A data-plane process holding that config, loaded the way ``kubegate
   dataplane`` loads it (sources/decode.py's IncrementalDecoder on the encoded
   ConfigMap/Secret payloads, then the snapshot build): its RSS against 250 MiB.
3. On a private dev cluster (``kubegate dev-cluster``, no node; the operator and
   one data plane with the Kubernetes source as processes: bench/operator.py):
   --routes GatewayRoutes created at once -> all Ready (< 30 s), apply -> first
   successful request p99 with them present (< 1 s), operator RSS (< 400 MiB).
   ``--no-cluster`` skips this part.

Everything shares this machine's cores with whatever else runs; bench/operator.py
prints the CPU seconds each process spent per phase, the steadier measure.
"""

from __future__ import annotations

import argparse
import base64
import gc
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OBJECT_LIMIT = 1024 * 1024  # what the API server stores in one ConfigMap/Secret (etcd's request limit is 1.5 MiB)
DATAPLANE_RSS_TARGET = 250  # MiB


def _load(name: str):  # a sibling bench script as a module
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def payloads(routes: int, keys: int) -> tuple[str, str]:
    """The ConfigMap's and the Secret's payloads, as the operator encodes them."""
    from kubegate.config import encode_config, encode_secrets

    config, secrets = _load("dataplane").big_config("http://127.0.0.1:9", routes=routes, keys=keys)
    return encode_config(config), encode_secrets(secrets)


def hold(routes: int, keys: int) -> None:
    """--hold mode: this process is the data plane; prints its RSS as JSON."""
    from kubegate.dataplane.ratelimit import build_rate_limiter
    from kubegate.dataplane.server import Gateway
    from kubegate.dataplane.sources.decode import IncrementalDecoder

    config_payload, secrets_payload = payloads(routes, keys)
    gc.collect()
    before = _rss(os.getpid())
    gateway = Gateway(host="127.0.0.1", http_port=0, https_port=0, admin_port=None, limiter=build_rate_limiter(None))
    gateway.commit(gateway.prepare(*IncrementalDecoder().decode(config_payload, base64.b64decode(secrets_payload))))
    gc.collect()
    print(json.dumps({"rss": _rss(os.getpid()), "payloads": before, "hash": gateway.loaded_hash}), flush=True)


def _rss(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=30, help="single-route changes timed with --routes present")
    parser.add_argument("--no-cluster", action="store_true", help="only the size and data-plane RSS figures")
    parser.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold:
        hold(args.routes, args.keys)
        return 0

    from kubegate.config import SHARD_BYTES, split_payload
    from kubegate.names import MAX_SHARDS

    config_payload, secrets_payload = payloads(args.routes, args.keys)
    for what, payload in (("ConfigMap kubegate-config", config_payload), ("Secret kubegate-secrets", secrets_payload)):
        raw = base64.b64decode(payload)
        pieces = split_payload(raw)
        largest = max(len(base64.b64encode(piece)) for piece in pieces)  # as base64: what a JSON body carries
        print(f"{what} at {args.routes} routes + {args.keys} keys: {len(payload) / 2**20:.2f} MiB as base64 "
              f"({len(raw) / 2**20:.2f} MiB gzip) in {len(pieces)} object(s) of <= {SHARD_BYTES // 1024} KiB; "
              f"largest {largest / 2**20:.2f} MiB as base64 = {largest / OBJECT_LIMIT:.2f}x the 1 MiB object limit "
              f"({len(pieces) - 1} of {MAX_SHARDS} shards): "
              f"{verdict(largest < OBJECT_LIMIT and len(pieces) <= MAX_SHARDS + 1)}", flush=True)
    del config_payload, secrets_payload

    done = subprocess.run([sys.executable, __file__, "--hold", "--routes", str(args.routes), "--keys", str(args.keys)],
                          capture_output=True, text=True, check=True, timeout=1800)
    held = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"data plane holding {args.routes} routes + {args.keys} keys: RSS {held['rss']:.0f} MiB "
          f"({held['payloads']:.0f} MiB before the load, with the payloads; target <= {DATAPLANE_RSS_TARGET}): "
          f"{verdict(held['rss'] <= DATAPLANE_RSS_TARGET)}", flush=True)

    if not args.no_cluster:
        operator_bench = _load("operator")
        cluster_args = argparse.Namespace(routes=args.routes, changes=args.changes, rss_routes=args.routes,
                                          profile=False, floor=True, ready_target=30.0, p99_target=1.0, rss_target=400.0)
        operator_bench.run(cluster_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
