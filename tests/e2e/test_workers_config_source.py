"""``kubegate dataplane --workers 2`` reading the operator's ConfigMap/Secret on a real kube-apiserver.

The supervisor does not decode a config whose payloads are the canonical JSON of
the hash they announce (the operator's, checked with a gunzip and a sha256): its
workers decode it themselves and tell it the counts /config reports. The
attacks, with the operator stopped so nothing restores them: a pair that
announces the right hash of an invalid config is refused by the workers (the
last good config keeps serving), and a valid config written in another JSON
form (not canonical) is decoded by the supervisor as before and served under
its content hash.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import GATEWAY_NS, Backends, get, http, start_dataplane, start_operator, wait_until

from kubegate.config import CONFIG_KEY, SECRETS_KEY
from kubegate.config import HASH_ANNOTATION as ANNOTATION


@pytest.fixture(scope="module")
def setup(cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workers-source")
    ns = f"workers-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    backends = Backends(["w"])
    procs = {"operator": start_operator(cluster, tmp, "operator-workers"),
             "dataplane": start_dataplane(cluster, tmp, "dp-workers", "--workers", "2"), "tmp": tmp, "ns": ns}
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "kubegate.dev/v1alpha1", "kind": "GatewayRoute", "metadata": {"name": "w", "namespace": ns},
        "spec": {"path": "/workers-source", "backends": [{"url": backends.url("w")}]}}))
    yield procs
    for name in ("operator", "dataplane"):
        procs[name].stop()
    backends.close()
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def config_of(dp) -> dict:
    status, _, body = http(f"http://127.0.0.1:{dp.admin}/config")
    return json.loads(body) if status == 200 else {}


def payloads(cluster) -> tuple[bytes, bytes]:
    """The JSON the operator wrote: the config and the secret bundle."""
    config_map, secret = get(cluster, "configmap", "kubegate-config"), get(cluster, "secret", "kubegate-secrets")
    return (gzip.decompress(base64.b64decode(config_map["binaryData"][CONFIG_KEY])),
            gzip.decompress(base64.b64decode(secret["data"][SECRETS_KEY])))


def write(cluster, config_json: bytes, announced: str) -> None:
    """Replace the config (the ConfigMap, then the Secret's hash annotation), as a hand edit would."""
    cluster.kubectl("patch", "configmap", "kubegate-config", "-n", GATEWAY_NS, "--type=merge", "-p", json.dumps({
        "metadata": {"annotations": {ANNOTATION: announced}},
        "binaryData": {CONFIG_KEY: base64.b64encode(gzip.compress(config_json)).decode()}}))
    cluster.kubectl("annotate", "--overwrite", "secret", "kubegate-secrets", "-n", GATEWAY_NS,
                    f"{ANNOTATION}={announced}")


def content_hash(config_json: bytes, secrets_json: bytes) -> str:
    return hashlib.sha256(config_json + b"\0" + secrets_json).hexdigest()


def test_the_workers_decode_the_operators_config_and_report_its_counts(cluster, setup):
    dp, ns = setup["dataplane"], setup["ns"]
    wait_until(lambda: http(dp.url("/workers-source"))[0] == 200, 30, "the route to be served by the workers")
    config_json, secrets_json = setup["good"] = payloads(cluster)
    served = wait_until(lambda: (c := config_of(dp)).get("hash") == content_hash(config_json, secrets_json) and c,
                        20, "the operator's config to be announced")
    document = json.loads(config_json)
    assert served["routes"] == len(document["routes"]) >= 1
    assert served["generations"] == document["generations"] and f"GatewayRoute/{ns}/w" in served["generations"]
    assert "served by every listening worker (2 of 2)" in dp.log()


def test_the_right_hash_of_an_invalid_config_is_refused_by_the_workers(cluster, setup):
    dp = setup["dataplane"]
    setup["operator"].stop()  # nothing restores what follows
    good = config_of(dp)["hash"]
    _, secrets_json = payloads(cluster)
    invalid = json.dumps({"routes": [{"id": "x/y", "backends": "nope"}]}, sort_keys=True,
                         separators=(",", ":")).encode()
    refusals = dp.log().count("config rejected, keeping")
    write(cluster, invalid, content_hash(invalid, secrets_json))
    wait_until(lambda: dp.log().count("config rejected, keeping") > refusals, 20, "the workers to refuse the config")
    assert "config does not match the schema" in dp.log()
    assert config_of(dp)["hash"] == good
    assert http(dp.url("/workers-source"))[0] == 200


def test_a_valid_config_in_another_form_is_decoded_by_the_supervisor_and_served(cluster, setup):
    dp = setup["dataplane"]
    setup["operator"].stop()
    config_json, secrets_json = setup["good"]
    document = json.loads(config_json)
    for route in document["routes"]:
        if route["path"] == "/workers-source":
            route["path"] = "/workers-source-moved"
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    pretty = json.dumps(dict(reversed(list(document.items()))), indent=2).encode()
    announced = content_hash(canonical, secrets_json)
    write(cluster, pretty, announced)
    wait_until(lambda: config_of(dp).get("hash") == announced, 30, "the reformatted config to be served")
    assert http(dp.url("/workers-source-moved"))[0] == 200
    assert config_of(dp)["generations"] == document["generations"]
    setup["operator"] = start_operator(cluster, setup["tmp"], "operator-workers")
    wait_until(lambda: http(dp.url("/workers-source"))[0] == 200, 30, "the operator to restore its config")
