"""Translate/generate time and generated ConfigMap/Secret sizes for N routes + N API keys.

    python bench/render.py [N ...]      (default: 1000 5000 10000)

Each route has hosts, methods, a Service backend, API-key auth and a
namespace-wide rate limit; each ApiKey has a real random key, route scoping
and a per-key limit. Sizes are the JSON size of the objects the API server
stores (its limit is 1 MiB per object).

Per N it prints the cold figures (a fresh translator memo, like ``kubegate
render`` or an operator start) and the operator's hot path: one route changed
among N, translated and generated again. Times are CPU seconds of this
process (the machine is shared; wall time is printed too). Then, at the
largest N: gzip levels (time and size) and ways to produce canonical JSON.
"""

from __future__ import annotations

import base64
import gzip
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from kubegate.apikeys import generate_api_key
from kubegate.config import COMPRESS_LEVEL, canonical_json
from kubegate.generate import generate_objects
from kubegate.resources import ServiceInfo, ServicePort, SourceObject, TranslationInput
from kubegate.translate import Translator, translate

LIMIT = 1024 * 1024
NAMESPACES = 50
SERVICES = 200


def synthetic_input(n: int) -> TranslationInput:
    objects, secrets, services = [], {}, {}
    for i in range(n):
        ns = f"team-{i % NAMESPACES}"
        objects.append(SourceObject(kind="GatewayRoute", namespace=ns, name=f"route-{i}", spec={
            "hosts": ["api.example.com"], "path": f"/api/v1/service-{i}/:id", "methods": ["GET", "POST"],
            "backends": [{"service": f"svc-{i % SERVICES}", "port": 8080}],
            "auth": {"methods": ["apiKey"]}, "timeouts": {"request": "30s"},
        }))
        objects.append(SourceObject(kind="ApiKey", namespace=ns, name=f"key-{i}", spec={
            "secretRef": {"name": f"key-{i}", "key": "api-key"}, "routes": [f"route-{i}"],
            "rateLimit": {"requests": 100, "period": "1m"},
        }))
        secrets[(ns, f"key-{i}")] = {"api-key": generate_api_key().encode()}
    for k in range(NAMESPACES):
        ns = f"team-{k}"
        objects.append(SourceObject(kind="RateLimitPolicy", namespace=ns, name="default", spec={
            "limits": [{"dimension": "apiKey", "requests": 600, "period": "1m"}]}))
        for j in range(SERVICES):
            services[(ns, f"svc-{j}")] = ServiceInfo(
                namespace=ns, name=f"svc-{j}", ports=(ServicePort(port=8080, target_port=8080),),
                selector={"app": f"svc-{j}"})
    return TranslationInput(objects=tuple(objects), secrets=secrets, services=services)


def one_route_changed(inp: TranslationInput, round_: int) -> TranslationInput:
    """What the operator hands over after one GatewayRoute edit: new input, new copies of the dicts."""
    objects = list(inp.objects)
    first = objects[0]
    objects[0] = first.model_copy(update={
        "generation": first.generation + 1,
        "spec": {**first.spec, "timeouts": {"request": f"{31 + round_}s"}},
    })
    return TranslationInput(objects=tuple(objects), secrets=dict(inp.secrets), services=dict(inp.services))


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, CPU seconds, wall seconds)."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def measure(n: int, rounds: int = 5) -> dict[str, float]:
    inp = synthetic_input(n)
    translator = Translator()  # the operator holds one: its memo makes the hot path incremental
    result, translate_cpu, translate_wall = timed(lambda: translator.translate(inp))
    objects, generate_cpu, generate_wall = timed(lambda: generate_objects(result, inp))
    config_map, secret = objects[0], objects[1]
    hot_translate, hot_generate = [], []
    for round_ in range(rounds):
        changed = one_route_changed(inp, round_)
        hot, cpu, _ = timed(lambda changed=changed: translator.translate(changed))
        hot_translate.append(cpu)
        _, cpu, _ = timed(lambda hot=hot, changed=changed: generate_objects(hot, changed))
        hot_generate.append(cpu)
    return {
        "routes": len(result.config.routes),
        "api_keys": len(result.config.api_keys),
        "translate_cpu": translate_cpu,
        "translate_wall": translate_wall,
        "generate_cpu": generate_cpu,
        "generate_wall": generate_wall,
        "hot_translate_cpu": sorted(hot_translate)[len(hot_translate) // 2],
        "hot_generate_cpu": sorted(hot_generate)[len(hot_generate) // 2],
        "configmap_bytes": len(json.dumps(config_map)),
        "secret_bytes": len(json.dumps(secret)),
    }


def compression_levels(n: int) -> None:
    result = translate(synthetic_input(n))
    print(f"\ngzip levels at {n} routes + {n} keys (CPU ms to compress; base64 size; current level "
          f"{COMPRESS_LEVEL}):")
    for name, raw in (("config", result.config_json), ("secrets", result.secrets_json)):
        cells = []
        for level in (1, 4, 6, 9):
            best = min(timed(lambda level=level, raw=raw: gzip.compress(raw, compresslevel=level, mtime=0))[1]
                       for _ in range(3))
            size = len(base64.b64encode(gzip.compress(raw, compresslevel=level, mtime=0)))
            cells.append(f"L{level} {best * 1000:5.0f} ms {size / 1024:5.0f} KiB")
        print(f"  {name:8} {len(raw) / 1024:6.0f} KiB JSON: " + " | ".join(cells))


def canonical_json_paths(n: int) -> None:
    """Ways to the same canonical bytes: per-item JSON spliced (what translate does) is what makes it incremental."""
    result = translate(synthetic_input(n))
    config = result.config
    encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
    paths = {
        "json.dumps(model_dump(mode=json), sort_keys)": lambda: canonical_json(config),
        "shared JSONEncoder(sort_keys) of model_dump(mode=json)": lambda: encoder.encode(
            config.model_dump(mode="json")).encode(),
        "json.loads(model_dump_json()) re-encoded sorted": lambda: encoder.encode(
            json.loads(config.model_dump_json())).encode(),
    }
    reference = canonical_json(config)
    print(f"\ncanonical JSON of the config at {n} routes + {n} keys (CPU ms; identical bytes?):")
    for label, fn in paths.items():
        out, cpu, _ = timed(fn)
        print(f"  {cpu * 1000:6.0f} ms  {out == reference!s:5}  {label}")
    inp = synthetic_input(n)
    translator = Translator()
    translator.translate(inp)
    changed = one_route_changed(inp, 0)
    _, cpu, _ = timed(lambda: translator.translate(changed))
    print(f"  (translate with the memo re-serialises only the changed objects: whole hot translate {cpu * 1000:.0f} ms)")


def main(sizes: list[int]) -> int:
    print(f"{'routes':>7} {'keys':>7} | {'cold translate':>15} {'generate':>9} | {'1 route changed':>16} "
          f"{'generate':>9} | {'ConfigMap':>10} {'Secret':>10}")
    for n in sizes:
        m = measure(n)
        print(f"{m['routes']:>7} {m['api_keys']:>7} | {m['translate_cpu']:>7.3f}s ({m['translate_wall']:.2f}s) "
              f"{m['generate_cpu']:>8.3f}s | {m['hot_translate_cpu']:>15.3f}s {m['hot_generate_cpu']:>8.3f}s | "
              f"{m['configmap_bytes'] / 1024:>6.0f} KiB {m['secret_bytes'] / 1024:>6.0f} KiB"
              f"   ({max(m['configmap_bytes'], m['secret_bytes']) / LIMIT:.0%} of 1 MiB)")
    compression_levels(max(sizes))
    canonical_json_paths(max(sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main([int(a) for a in sys.argv[1:]] or [1000, 5000, 10000]))
