"""Render time and generated ConfigMap/Secret sizes for N routes + N API keys.

    python bench/render.py [N ...]      (default: 1000 10000)

Each route has hosts, methods, a Service backend, API-key auth and a
namespace-wide rate limit; each ApiKey has a real random key, route scoping
and a per-key limit. Sizes are the JSON size of the objects the API server
stores (its limit is 1 MiB per object).
"""

from __future__ import annotations

import json
import sys
import time

from kubegate.apikeys import generate_api_key
from kubegate.generate import generate_objects
from kubegate.resources import ServiceInfo, ServicePort, SourceObject, TranslationInput
from kubegate.translate import translate

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


def measure(n: int) -> dict[str, float]:
    inp = synthetic_input(n)
    start = time.perf_counter()
    result = translate(inp)
    translated = time.perf_counter()
    objects = generate_objects(result, inp)
    done = time.perf_counter()
    config_map, secret = objects[0], objects[1]
    return {
        "routes": len(result.config.routes),
        "api_keys": len(result.config.api_keys),
        "translate_s": translated - start,
        "render_s": done - start,
        "configmap_bytes": len(json.dumps(config_map)),
        "secret_bytes": len(json.dumps(secret)),
    }


def main(sizes: list[int]) -> int:
    print(f"{'routes':>7} {'keys':>7} {'translate':>10} {'render':>8} {'ConfigMap':>12} {'Secret':>12}")
    for n in sizes:
        m = measure(n)
        print(f"{m['routes']:>7} {m['api_keys']:>7} {m['translate_s']:>9.2f}s {m['render_s']:>7.2f}s "
              f"{m['configmap_bytes'] / 1024:>8.0f} KiB {m['secret_bytes'] / 1024:>8.0f} KiB"
              f"   ({max(m['configmap_bytes'], m['secret_bytes']) / LIMIT:.0%} of 1 MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main([int(a) for a in sys.argv[1:]] or [1000, 10000]))
