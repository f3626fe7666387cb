"""kubegate as pods on a real node, with real clients (kubectl, raw HTTP through kube-proxy, TLS).

One node cluster per session (conftest.py). The tests share it and run in file
order: install, traffic through the Service with every auth kind, NetworkPolicy
enforcement, zero-downtime operations under counted load, Programmed following
the real pods, leader failover in overlays/ha.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import jwt
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from conftest import NS, REPO, log, node_kubectl_json, pods_ready, wait_for
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HMAC = "example-only-hmac-secret-change-me-0123456789abcdef"
ACME_KEY = "kg_GaskNRmsqHu2d7zQskzRVCGofweaqcedI0L876y8gFO_3e24kE"
ECHO = """
import json, os
from aiohttp import web
async def echo(request):
    body = await request.read()
    return web.json_response({"pod": os.environ["POD_NAME"], "path": request.path_qs, "method": request.method,
                              "headers": {k: v for k, v in request.headers.items()}, "body_bytes": len(body)})
app = web.Application()
app.router.add_route("*", "/{tail:.*}", echo)
web.run_app(app, port=int(os.environ["PORT"]), print=None, shutdown_timeout=1)
"""


def echo_deployment(name: str, namespace: str, labels: dict[str, str], port: int, replicas: int = 1) -> dict:
    """An echo backend as pods from the kubegate image (its Python and aiohttp), restricted-compliant."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"automountServiceAccountToken": False, "enableServiceLinks": False,
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{
                         "name": "echo", "image": "localhost/kubegate:dev", "imagePullPolicy": "Never",
                         "command": ["python", "-c", ECHO],
                         "env": [{"name": "PORT", "value": str(port)},
                                 {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                         "ports": [{"containerPort": port}],
                         "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1},
                         "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                             "capabilities": {"drop": ["ALL"]}}}]}}}}


def apply(node, docs: list[dict] | str) -> None:
    text = docs if isinstance(docs, str) else yaml.safe_dump_all(docs)
    node.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=text)


def service_ip(node, name: str, namespace: str) -> str:
    return node_kubectl_json(node, "get", "service", name, "-n", namespace)["spec"]["clusterIP"]


HOST = "api.example.com"  # examples/: a TLSPolicy covers it, so plain HTTP only redirects (API.md)
_TRUST: list[ssl.SSLContext] = []  # the node's CA, set by the `shop` fixture


class _HttpsTo(http.client.HTTPSConnection):
    """HTTPS to a Service IP with SNI = the Host header, as a client of api.example.com would."""

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=HOST)


def request(ip: str, path: str, headers: dict[str, str] | None = None, port: int = 443, method: str = "GET",
            body: bytes | None = None, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One request through the data plane's Service: HTTPS on 443 (SNI and Host api.example.com),
    or plain HTTP with ``port=80``."""
    conn = (_HttpsTo(ip, port, timeout=timeout, context=_TRUST[0]) if port == 443
            else http.client.HTTPConnection(ip, port, timeout=timeout))
    try:
        conn.request(method, path, body=body, headers={"Host": HOST, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def route_ready(node, name: str, namespace: str) -> bool:
    obj = node_kubectl_json(node, "get", "gatewayroute", name, "-n", namespace)
    conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or ()}
    ready = conds.get("Ready")
    return bool(ready and ready["status"] == "True"
                and ready.get("observedGeneration", obj["metadata"]["generation"]) == obj["metadata"]["generation"])


def dataplane_pod(node) -> str:
    pods = node_kubectl_json(node, "get", "pods", "-n", NS, "-l", "app.kubernetes.io/component=dataplane")["items"]
    return next(p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp"))


def exec_python(node, pod: str, namespace: str, code: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return node.kubectl("exec", "-n", namespace, pod, "--", "python", "-c", code, check=False, timeout=timeout)


CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close(); print("connected")
except OSError as exc:
    print("blocked", type(exc).__name__)
"""


def can_connect(node, pod: str, namespace: str, host: str, port: int) -> str:
    out = node.kubectl("exec", "-n", namespace, pod, "--", "python", "-c", CONNECT, host, str(port),
                       check=False, timeout=30)
    return out.stdout.strip() or out.stderr.strip()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def shop(node):
    """examples/ applied, with echo pods behind its four Services, plus a `load` route for the load tests
    (own high rate limit) and a `limited` one (5 per minute, shared by both replicas through Redis)."""
    node.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "examples"))
    apply(node, [
        echo_deployment("admin", "shop", {"app": "admin"}, 3000),
        echo_deployment("orders", "shop", {"app": "orders"}, 8080),
        echo_deployment("catalog", "shop", {"app": "catalog"}, 8080, replicas=2),
        echo_deployment("reports", "shop", {"app": "reports"}, 8080),
    ])
    apply(node, """
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {name: load, namespace: shop}
spec:
  path: "/load/*rest"
  backends: [{service: catalog, port: 3002}]
---
apiVersion: kubegate.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: load, namespace: shop}
spec:
  targetRefs: [{kind: GatewayRoute, name: load}]
  limits: [{dimension: global, requests: 1000000, period: 1m}]
---
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {name: limited, namespace: shop}
spec:
  path: "/limited/*rest"
  backends: [{service: catalog, port: 3002}]
---
apiVersion: kubegate.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: limited, namespace: shop}
spec:
  targetRefs: [{kind: GatewayRoute, name: limited}]
  limits: [{dimension: global, requests: 5, period: 1m}]
  failureMode: closed
""")
    issue_certificate(node)
    _TRUST[:] = [ssl.create_default_context(cadata=node.ca_pem.decode())]
    for deployment in ("admin", "orders", "catalog", "reports"):
        node.kubectl("rollout", "status", "-n", "shop", f"deployment/{deployment}", "--timeout=180s", timeout=190)
    for route in ("admin", "orders", "catalog", "reports", "load", "limited"):
        wait_for(lambda r=route: route_ready(node, r, "shop"), 120, f"route {route} Ready")
    ip = service_ip(node, "kubegate", NS)
    wait_for(lambda: request(ip, "/load/ping")[0] == 200, 60, "traffic through the data plane Service")
    return ip


def issue_certificate(node) -> None:
    """Stand in for cert-manager: sign the generated Certificate's Secret with a throwaway CA."""
    cert = wait_for(lambda: node_kubectl_json(node, "get", "certificates.cert-manager.io", "-n", NS)["items"], 120,
                    "the generated Certificate")[0]
    key = ec.generate_private_key(ec.SECP256R1())
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node-test-ca")])
    now = datetime.datetime.now(datetime.UTC)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in cert["spec"]["dnsNames"]]),
                           critical=False).sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    node.ca_pem = ca.public_bytes(pem)
    apply(node, [{"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                  "metadata": {"name": cert["spec"]["secretName"], "namespace": NS},
                  "data": {"tls.crt": base64.b64encode(leaf.public_bytes(pem)).decode(),
                           "tls.key": base64.b64encode(key.private_bytes(
                               pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())).decode(),
                           "ca.crt": base64.b64encode(node.ca_pem).decode()}}])


class Load:
    """Constant load through the data plane's Service, every request counted (a new connection each
    time, so kube-proxy spreads them over the current endpoints)."""

    def __init__(self, ip: str, path: str = "/load/x", workers: int = 4) -> None:
        self.ip, self.path = ip, path
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, _, _ = request(self.ip, self.path, timeout=10)
                outcome = None if status == 200 else f"status {status}"
            except OSError as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            with self._lock:
                if outcome is None:
                    self.ok += 1
                else:
                    self.failed.append(outcome)

    def __enter__(self) -> Load:  # noqa: PYI034
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


# --------------------------------------------------------------------------- install


def test_overlay_rolls_out_in_the_restricted_namespace_and_nothing_restarts(node):
    ns = node_kubectl_json(node, "get", "namespace", NS)
    assert ns["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "restricted"
    pods = node_kubectl_json(node, "get", "pods", "-n", NS)["items"]
    components = sorted(p["metadata"]["labels"].get("app.kubernetes.io/component") for p in pods)
    assert components.count("dataplane") == 2 and components.count("operator") == 1, components
    for pod in pods:
        for status in pod["status"]["containerStatuses"]:
            assert status["ready"] and status["restartCount"] == 0, (pod["metadata"]["name"], status)
            assert status["image"].endswith("localhost/kubegate:dev") or "redis" in status["image"]
    log(f"apply -k -> all pods Ready in {node.figures['apply_to_ready_s']:.1f}s; "
        f"image {node.figures['image_size_mb']:.0f} MB")


# --------------------------------------------------------------------------- traffic


def first_success(ip: str, path: str, headers: dict[str, str], what: str) -> tuple[int, bytes]:
    """The first 200 for ``path``. The first request to a route's backend pods may come before the
    NetworkPolicy enforcer synced them (a refused connect is a 502): bounded, and every answer but 200
    or that 502 fails at once."""
    answers: list[tuple[int, bytes]] = []

    def answered() -> bool:
        status, _, body = request(ip, path, headers)
        answers.append((status, body))
        assert status == 200 or (status, json.loads(body)["reason"]) == (502, "upstream_unreachable"), body
        return status == 200

    try:
        wait_for(answered, 60, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last answers: {answers[-3:]}") from None
    return answers[-1]


def test_requests_through_the_service_reach_backend_pods_with_every_auth_kind(node, shop):
    ip = shop
    # A hostname a TLSPolicy covers is never proxied in plaintext: 308 to https.
    status, headers, _ = request(ip, "/api/catalog/items", port=80)
    assert (status, headers["location"]) == (308, "https://api.example.com/api/catalog/items")
    status, _, body = request(ip, "/api/catalog/items")
    assert status == 200, body
    echoed = json.loads(body)
    assert echoed["pod"].startswith("catalog-") and echoed["path"] == "/api/catalog/items"
    # API key: required on orders; a wrong key is refused; the key never reaches the backend
    assert request(ip, "/api/orders/42")[0] == 401
    assert request(ip, "/api/orders/42", {"X-API-Key": ACME_KEY + "x"})[0] == 401
    status, body = first_success(ip, "/api/orders/42", {"X-API-Key": ACME_KEY}, "orders with a valid API key")
    assert json.loads(body)["pod"].startswith("orders-")
    assert "x-api-key" not in {k.lower() for k in json.loads(body)["headers"]}
    # JWT (HS256 from the Secret) on the admin route
    token = jwt.encode({"iss": "https://auth.example.com", "aud": "https://api.example.com", "scope": "admin",
                        "sub": "alice", "exp": int(time.time()) + 600}, HMAC, algorithm="HS256")
    assert request(ip, "/api/admin/users")[0] == 401
    bad = jwt.encode({"iss": "https://auth.example.com", "aud": "https://api.example.com", "scope": "admin",
                      "exp": int(time.time()) + 600}, "wrong-secret-0123456789abcdef0123456789", algorithm="HS256")
    assert request(ip, "/api/admin/users", {"Authorization": f"Bearer {bad}"})[0] == 401
    status, body = first_success(ip, "/api/admin/users", {"Authorization": f"Bearer {token}"}, "admin with a valid JWT")
    assert json.loads(body)["pod"].startswith("admin-")


def test_rate_limit_is_shared_by_both_replicas_through_the_redis_pod(node, shop):
    statuses = [request(shop, "/limited/x")[0] for _ in range(12)]
    assert statuses.count(200) == 5 and statuses.count(429) == 7, statuses


def test_tls_through_the_service_with_the_issued_certificate(node, shop):
    ctx = ssl.create_default_context(cadata=node.ca_pem.decode())
    with socket.create_connection((shop, 443), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="api.example.com") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        tls.sendall(b"GET /api/catalog/items HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode().lower()
    assert head.startswith("http/1.1 200"), head
    assert "strict-transport-security: max-age=31536000; includesubdomains" in head
    ctx12 = ssl.create_default_context(cadata=node.ca_pem.decode())
    ctx12.minimum_version = ctx12.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError), socket.create_connection((shop, 443), timeout=10) as raw:
        ctx12.wrap_socket(raw, server_hostname="api.example.com")


# --------------------------------------------------------------------------- NetworkPolicies


def test_network_policies_are_enforced(node, shop):
    catalog = node_kubectl_json(node, "get", "pods", "-n", "shop", "-l", "app=catalog")["items"][0]
    catalog_ip = catalog["status"]["podIP"]
    # An undeclared Service (no route names it), and a client pod in another namespace.
    node.kubectl("create", "namespace", "intruder", check=False)
    node.kubectl("label", "namespace", "intruder", "pod-security.kubernetes.io/enforce=restricted", "--overwrite")
    apply(node, [echo_deployment("secret", "shop", {"app": "secret"}, 8080),
                 {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "secret", "namespace": "shop"},
                  "spec": {"selector": {"app": "secret"}, "ports": [{"port": 8080}]}},
                 echo_deployment("client", "intruder", {"app": "client"}, 8080)])
    for ns, name in (("shop", "secret"), ("intruder", "client")):
        node.kubectl("rollout", "status", "-n", ns, f"deployment/{name}", "--timeout=120s", timeout=130)
    client = node_kubectl_json(node, "get", "pods", "-n", "intruder", "-l", "app=client")["items"][0]["metadata"]["name"]
    secret_ip = service_ip(node, "secret", "shop")
    dp = dataplane_pod(node)
    # the policy is enforced: a pod in another namespace cannot reach a backend kubegate protects ...
    assert can_connect(node, client, "intruder", catalog_ip, 8080).startswith("blocked")
    # ... though it reaches the unprotected one (the block is the policy, not the network)
    assert can_connect(node, client, "intruder", secret_ip, 8080) == "connected"
    # the data plane reaches its declared backend, not a Service no route declares
    assert can_connect(node, dp, NS, catalog_ip, 8080) == "connected"
    assert can_connect(node, dp, NS, secret_ip, 8080).startswith("blocked")
    # DNS, the API server and Redis egress still work from the data plane
    out = exec_python(node, dp, NS, "import socket; print(socket.gethostbyname('kubernetes.default.svc.cluster.local'),"
                                    "socket.gethostbyname('kubegate-redis.kubegate-system.svc.cluster.local'))")
    assert out.returncode == 0, out.stderr
    api_ip, redis_ip = out.stdout.split()
    assert api_ip == "10.96.0.1"
    assert can_connect(node, dp, NS, api_ip, 443) == "connected"
    assert can_connect(node, dp, NS, redis_ip, 6379) == "connected"
    # and the intruder cannot reach Redis
    assert can_connect(node, client, "intruder", redis_ip, 6379).startswith("blocked")


# --------------------------------------------------------------------------- zero downtime


def test_rollout_restart_of_the_data_plane_under_load_fails_no_request(node, shop):
    with Load(shop) as load:
        time.sleep(2)
        t = time.monotonic()
        node.kubectl("rollout", "restart", "-n", NS, "deployment/kubegate-dataplane")
        node.kubectl("rollout", "status", "-n", NS, "deployment/kubegate-dataplane", "--timeout=240s", timeout=250)
        took = time.monotonic() - t
        time.sleep(2)
    log(f"rollout restart under load: {load.ok} ok, {len(load.failed)} failed in {took:.0f}s")
    node.figures["rollout_requests_ok"] = load.ok
    node.figures["rollout_requests_failed"] = len(load.failed)
    assert load.ok > 50 and load.failed == [], load.failed[:5]


def test_config_change_under_load_fails_no_request(node, shop):
    with Load(shop) as load:
        time.sleep(1)
        apply(node, """
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {name: load, namespace: shop}
spec:
  path: "/load/*rest"
  backends: [{service: catalog, port: 3002}]
  timeouts: {request: 20s}
""")
        wait_for(lambda: route_ready(node, "load", "shop"), 60, "the changed route Ready")
        time.sleep(3)
    log(f"config change under load: {load.ok} ok, {len(load.failed)} failed")
    assert load.ok > 20 and load.failed == [], load.failed[:5]


def test_programmed_follows_the_real_data_plane_pods(node, shop):
    node.kubectl("scale", "-n", NS, "deployment/kubegate-dataplane", "--replicas=0")
    wait_for(lambda: not route_ready(node, "catalog", "shop"), 120, "routes to stop being Ready with 0 data planes")
    node.kubectl("scale", "-n", NS, "deployment/kubegate-dataplane", "--replicas=2")
    node.kubectl("rollout", "status", "-n", NS, "deployment/kubegate-dataplane", "--timeout=180s", timeout=190)
    wait_for(lambda: route_ready(node, "catalog", "shop"), 120, "routes Ready again with 2 data planes")
    wait_for(lambda: request(shop, "/load/ping")[0] == 200, 60, "traffic again")


def test_leader_failover_in_the_ha_overlay(node, shop):
    """overlays/ha with the local image: delete the leader pod; another replica takes the Lease and the
    statuses stay true throughout."""
    # kustomize refuses an absolute base outside its root: render the overlay, point it at the local image
    docs = [d for d in yaml.safe_load_all(node.kubectl("kustomize", str(REPO / "manifests" / "overlays" / "ha")).stdout)
            if d]
    for doc in docs:
        if doc["kind"] == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                c["image"], c["imagePullPolicy"] = "localhost/kubegate:dev", "Never"
    apply(node, docs)
    node.kubectl("rollout", "status", "-n", NS, "deployment/kubegate-operator", "--timeout=240s", timeout=250)
    node.kubectl("rollout", "status", "-n", NS, "deployment/kubegate-dataplane", "--timeout=240s", timeout=250)
    wait_for(lambda: pods_ready(node, NS, "app.kubernetes.io/component=operator"), 120, "both operators Ready")

    def holder() -> str:
        return node_kubectl_json(node, "get", "lease", "kubegate-operator", "-n", NS)["spec"].get("holderIdentity") or ""

    leader = wait_for(holder, 60, "a leader")
    operators = [p["metadata"]["name"] for p in node_kubectl_json(
        node, "get", "pods", "-n", NS, "-l", "app.kubernetes.io/component=operator")["items"]]
    assert leader in operators, (leader, operators)
    t = time.monotonic()
    node.kubectl("delete", "pod", "-n", NS, leader, "--wait=false")
    new_leader = wait_for(lambda: (h := holder()) and h != leader and h, 120, "a new leader")
    failover = time.monotonic() - t
    node.figures["leader_failover_s"] = failover
    log(f"leader failover {leader} -> {new_leader} in {failover:.1f}s")
    # The Lease goes to a live operator replica: the survivor, or the pod the ReplicaSet made to
    # replace the deleted one, whichever acquires first.
    current = [p["metadata"]["name"] for p in node_kubectl_json(
        node, "get", "pods", "-n", NS, "-l", "app.kubernetes.io/component=operator")["items"]]
    assert new_leader in current and new_leader != leader, (new_leader, current)
    # statuses stay true, and the new leader acts: a new route becomes Ready
    for route in ("admin", "orders", "catalog", "reports"):
        assert route_ready(node, route, "shop")
    apply(node, """
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {name: after-failover, namespace: shop}
spec:
  path: "/after/*rest"
  backends: [{service: catalog, port: 3002}]
""")
    wait_for(lambda: route_ready(node, "after-failover", "shop"), 120, "a route Ready under the new leader")
    log("figures: " + ", ".join(f"{k}={v:.1f}" for k, v in node.figures.items()))
