"""A compiled config above the API server's 1 MiB object limit, on a real kube-apiserver.

The operator writes it in shards (``kubegate-config-1..N``, ``kubegate-secrets-1..N``)
before the primaries that list them; a real ``kubegate dataplane`` (its own
ServiceAccount, the Role of manifests/) reads them by name and serves the config.
Then the attacks: shards deleted or edited by hand are restored, and a primary
whose shard set is incomplete (missing, another config's hash, other bytes) is
never served: the last good config keeps serving.
"""

from __future__ import annotations

import base64
import json
import secrets as random
import sys
import time
import uuid
from pathlib import Path

import jwt
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import (
    GATEWAY_NS,
    Backends,
    get,
    http,
    ready,
    start_dataplane,
    start_operator,
    wait_until,
)

ROUTES = 4
NOISE = 700_000  # characters of random text per route schema and per HMAC secret: gzip keeps ~75%
SHARD = "kubegate.dev/shard-of"


def noise() -> str:
    return base64.b64encode(random.token_bytes(NOISE * 3 // 4)).decode()


@pytest.fixture(scope="module")
def big(cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shards")
    ns = f"shards-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    backends = Backends(["big"])
    procs = {"operator": start_operator(cluster, tmp, "operator-shards"),
             "dataplane": start_dataplane(cluster, tmp, "dp-shards"), "tmp": tmp, "ns": ns, "hmac": {}}
    docs = []
    for i in range(ROUTES):
        procs["hmac"][i] = noise()
        docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"hmac{i}", "namespace": ns},
                     "stringData": {"s": procs["hmac"][i]}})
        docs.append({"apiVersion": "kubegate.dev/v1alpha1", "kind": "GatewayRoute",
                     "metadata": {"name": f"big{i}", "namespace": ns},
                     "spec": {"path": f"/big{i}", "backends": [{"url": backends.url("big")}],
                              "requestSchema": {"type": "object", "description": noise()},
                              "auth": {"methods": ["jwt"], "jwt": {"algorithms": ["HS256"],
                                                                   "secretRef": {"name": f"hmac{i}", "key": "s"}}}}})
    docs.append({"apiVersion": "kubegate.dev/v1alpha1", "kind": "GatewayRoute",
                 "metadata": {"name": "plain", "namespace": ns},
                 "spec": {"path": "/plain", "backends": [{"url": backends.url("big")}]}})
    for doc in docs:  # `create`: `apply` would copy each object into its last-applied annotation (256 KiB at most)
        cluster.kubectl("create", "-f", "-", input=json.dumps(doc))
    yield procs
    for name in ("operator", "dataplane", "dataplane-2"):
        if name in procs:
            procs[name].stop()
    backends.close()
    cluster.kubectl("delete", "gatewayroutes,secrets", "--all", "-n", ns, "--ignore-not-found", "--wait=false",
                    check=False)


def token(secret: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": "alice", "iat": now, "exp": now + 300}, secret, algorithm="HS256")


def served_hash(dp) -> str | None:
    status, _, body = http(f"http://127.0.0.1:{dp.admin}/config")
    return json.loads(body)["hash"] if status == 200 else None


def shards(cluster, kind: str) -> dict[str, dict]:
    out = cluster.kubectl("get", kind, "-n", GATEWAY_NS, "-l", SHARD, "-o", "json")
    return {o["metadata"]["name"]: o for o in json.loads(out.stdout)["items"]}


def primary_hash(cluster) -> str:
    return get(cluster, "configmap", "kubegate-config")["metadata"]["annotations"]["kubegate.dev/config-hash"]


def serves_everything(dp, big) -> bool:
    return (http(dp.url("/plain"))[0] == 200
            and all(http(dp.url(f"/big{i}"), {"Authorization": f"Bearer {token(big['hmac'][i])}"})[0] == 200
                    for i in range(ROUTES)))


def test_a_config_above_1_mib_is_written_in_shards_and_served(cluster, big):
    for i in [*range(ROUTES), "plain"]:
        name = f"big{i}" if i != "plain" else i
        wait_until(lambda n=name: ready(cluster, "gatewayroute", n, big["ns"]), 90, f"route {name} Ready")
    config_map, secret = get(cluster, "configmap", "kubegate-config"), get(cluster, "secret", "kubegate-secrets")
    config_shards, secret_shards = shards(cluster, "configmaps"), shards(cluster, "secrets")
    listed = [n for n, _ in json.loads(config_map["data"]["shards"])]
    assert listed == sorted(config_shards) and len(listed) >= 2
    assert [n for n, _ in json.loads(base64.b64decode(secret["data"]["shards"]))] == sorted(secret_shards)
    stored = sum(len(base64.b64decode(o["binaryData"]["config.json.gz"])) for o in [config_map, *config_shards.values()])
    assert stored > 1024 * 1024  # more than one object could hold
    dp = big["dataplane"]
    wait_until(lambda: serves_everything(dp, big), 30, "the sharded config to be served")
    assert served_hash(dp) == primary_hash(cluster)
    # The secrets came from the shards: a token signed with another secret is refused.
    assert http(dp.url("/big3"), {"Authorization": f"Bearer {token(noise())}"})[0] == 401


def test_a_deleted_or_edited_shard_is_restored(cluster, big):
    before_secret = shards(cluster, "secrets")["kubegate-secrets-1"]
    before_config = shards(cluster, "configmaps")["kubegate-config-1"]
    cluster.kubectl("delete", "secret", "kubegate-secrets-1", "-n", GATEWAY_NS)
    restored = wait_until(lambda: shards(cluster, "secrets").get("kubegate-secrets-1"), 20, "the shard to come back")
    assert restored["data"] == before_secret["data"]
    assert restored["metadata"]["uid"] != before_secret["metadata"]["uid"]
    cluster.kubectl("patch", "configmap", "kubegate-config-1", "-n", GATEWAY_NS, "--type=merge",
                    "-p", json.dumps({"binaryData": {"config.json.gz": base64.b64encode(b"tampered").decode()}}))
    wait_until(lambda: shards(cluster, "configmaps")["kubegate-config-1"]["binaryData"] == before_config["binaryData"],
               20, "the hand edit to be reverted")
    assert serves_everything(big["dataplane"], big)


def test_a_replica_waits_for_a_missing_shard_and_loads_once_it_is_back(cluster, big):
    good = primary_hash(cluster)
    big["operator"].stop()
    cluster.kubectl("delete", "secret", "kubegate-secrets-2", "-n", GATEWAY_NS, check=False)
    cluster.kubectl("delete", "secret", "kubegate-secrets-1", "-n", GATEWAY_NS)
    dp2 = big["dataplane-2"] = start_dataplane(cluster, big["tmp"], "dp-shards-2")
    wait_until(lambda: "kubegate-secrets-1 is missing" in dp2.log(), 20, "the replica to see the missing shard")
    time.sleep(1.5)
    assert served_hash(dp2) is None and http(dp2.url("/plain"))[0] != 200  # never a part of a config
    assert served_hash(big["dataplane"]) == good and serves_everything(big["dataplane"], big)
    big["operator"] = start_operator(cluster, big["tmp"], "operator-shards")  # restores the shards, not the primary
    wait_until(lambda: served_hash(dp2) == good, 30, "the replica to load the completed set")
    assert serves_everything(dp2, big)


def test_an_incomplete_shard_set_is_never_served(cluster, big):
    dp = big["dataplane"]
    good = primary_hash(cluster)
    big["operator"].stop()  # nothing restores what follows
    forged = "f" * 64
    for kind, name in (("configmap", "kubegate-config"), ("secret", "kubegate-secrets")):
        cluster.kubectl("annotate", "--overwrite", kind, name, "-n", GATEWAY_NS, f"kubegate.dev/config-hash={forged}")
    wait_until(lambda: "kubegate-config-1 belongs to another config" in dp.log(), 20, "the foreign shard to be seen")
    assert served_hash(dp) == good and serves_everything(dp, big)
    # Then one shard gets other bytes than the primary lists, and every shard the forged hash.
    cluster.kubectl("patch", "configmap", "kubegate-config-1", "-n", GATEWAY_NS, "--type=merge",
                    "-p", json.dumps({"binaryData": {"config.json.gz": base64.b64encode(b"\x1f\x8bforged").decode()}}))
    for kind in ("configmaps", "secrets"):
        for name in shards(cluster, kind):
            cluster.kubectl("annotate", "--overwrite", kind, name, "-n", GATEWAY_NS,
                            f"kubegate.dev/config-hash={forged}")
    wait_until(lambda: "kubegate-config-1 is not the one kubegate-config lists" in dp.log(), 30,
               "the edited shard to be refused")
    assert served_hash(dp) == good and serves_everything(dp, big)
    assert served_hash(big["dataplane-2"]) == good
    big["operator"] = start_operator(cluster, big["tmp"], "operator-shards")
    wait_until(lambda: primary_hash(cluster) == good and all(
        o["metadata"]["annotations"]["kubegate.dev/config-hash"] == good
        for o in [*shards(cluster, "configmaps").values(), *shards(cluster, "secrets").values()]), 30,
        "the operator to restore every object")
    assert served_hash(dp) == good and serves_everything(dp, big)
