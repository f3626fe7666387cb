"""The manifests most ``kubegate run`` tests start from: Service ``echo`` (the test's backend on
``port``) and one GatewayRoute to it; a test appends the objects it is about."""

from __future__ import annotations


def echo_route(port: int, path: str = "/*rest", name: str = "open") -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: shop}}
spec:
  selector: {{app: echo}}
  ports: [{{name: http, port: {port}}}]
---
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: {name}, namespace: shop}}
spec:
  path: "{path}"
  backends: [{{service: echo, port: {port}}}]
"""
