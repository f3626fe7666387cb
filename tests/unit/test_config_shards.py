"""A compiled config larger than one object: shards written first, assembled only when complete.

The API server stores at most 1 MiB per ConfigMap or Secret. A payload above
config.SHARD_BYTES continues in ``kubegate-config-1..N`` / ``kubegate-secrets-1..N``;
the primary lists them with their digests. These tests build such a config with
the real translator (routes whose requestSchema and HMAC secrets are random text,
which gzip cannot shrink) and attack the assembly the data plane does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets as random

import pytest
from kubegate.dataplane.sources.decode import IncrementalDecoder, halves, shards_listed
from kubegate.operator.apply import Applier, with_content_hash

from kubegate.config import SHARDS_KEY, ConfigDecodeError, ShardsIncomplete
from kubegate.generate import generate_objects
from kubegate.names import CONFIG_MAP_NAME, SECRET_NAME, SHARD_LABEL
from kubegate.translate import translate

API_LIMIT = 1024 * 1024


def noise(size: int) -> str:
    return base64.b64encode(random.token_bytes(size * 3 // 4)).decode()


def big_input(build, routes: int = 4, size: int = 700_000):
    objects, secret_data = [], {}
    for i in range(routes):
        objects.append(build.route(f"r{i}", f"/r{i}", requestSchema={"type": "object", "description": noise(size)},
                                   auth={"methods": ["jwt"], "jwt": {"algorithms": ["HS256"],
                                                                     "secretRef": {"name": f"hmac{i}", "key": "s"}}}))
        secret_data[("shop", f"hmac{i}")] = {"s": noise(size).encode()}
    return build.make_input(*objects, secrets=secret_data)


_BIG: list = []  # translated once per module (the build fixture is per test)


@pytest.fixture
def big(build):
    if not _BIG:
        inp = big_input(build)
        result = translate(inp)
        _BIG.append((result, generate_objects(result, inp)))
    return _BIG[0]


def stored_size(obj) -> int:
    """What the API server counts against its 1 MiB limit: the bytes of every data value."""
    binary = sum(len(base64.b64decode(v)) for v in (obj.get("binaryData") or {}).values())
    if obj["kind"] == "Secret":
        return sum(len(base64.b64decode(v)) for v in obj["data"].values())
    return binary + sum(len(v.encode()) for v in (obj.get("data") or {}).values())


def split(objects):
    primaries = {o["metadata"]["name"]: o for o in objects if o["metadata"]["name"] in (CONFIG_MAP_NAME, SECRET_NAME)}
    shards = {o["metadata"]["name"]: o for o in objects if SHARD_LABEL in o["metadata"]["labels"]}
    return primaries[CONFIG_MAP_NAME], primaries[SECRET_NAME], shards


def test_a_small_config_stays_one_config_map_and_one_secret(build):
    inp = build.make_input(build.route("a", "/a"))
    objects = generate_objects(translate(inp), inp)
    config_map, secret, shards = split(objects)
    assert shards == {} and SHARDS_KEY not in config_map["data"] and SHARDS_KEY not in secret["data"]


def test_a_config_above_1_mib_is_sharded_every_object_fits_and_decodes_to_the_same_hash(big):
    result, objects = big
    config_map, secret, shards = split(objects)
    names = [o["metadata"]["name"] for o in objects[:len(shards) + 2]]
    assert len(result.config_json) > API_LIMIT and len(result.secrets_json) > API_LIMIT
    assert {"kubegate-config-1", "kubegate-secrets-1"} <= set(shards) and names.index(CONFIG_MAP_NAME) > names.index("kubegate-config-1")
    assert names.index(SECRET_NAME) > names.index("kubegate-secrets-1")  # each primary after its shards
    for obj in objects:
        assert stored_size(obj) < API_LIMIT and len(json.dumps(with_content_hash(obj))) < API_LIMIT, \
            obj["metadata"]["name"]
        if obj in shards.values():
            assert obj["metadata"]["annotations"]["kubegate.dev/config-hash"] == result.hash
    assert [n for n, _ in shards_listed(config_map, CONFIG_MAP_NAME, False)] == \
        sorted(n for n in shards if n.startswith("kubegate-config-"))
    config, bundle, digest = IncrementalDecoder().decode(*halves(config_map, secret, shards))
    assert digest == result.hash and config == result.config and bundle == result.secrets


def test_a_missing_shard_is_incomplete(big):
    _, objects = big
    config_map, secret, shards = split(objects)
    del shards["kubegate-secrets-2"]
    with pytest.raises(ShardsIncomplete, match="kubegate-secrets-2 is missing"):
        halves(config_map, secret, shards)


def test_a_shard_of_another_config_is_incomplete(big):
    _, objects = big
    config_map, secret, shards = split(objects)
    other = json.loads(json.dumps(shards["kubegate-config-1"]))
    other["metadata"]["annotations"]["kubegate.dev/config-hash"] = "0" * 64
    with pytest.raises(ShardsIncomplete, match="kubegate-config-1 belongs to another config"):
        halves(config_map, secret, {**shards, "kubegate-config-1": other})


def test_a_shard_edited_under_the_right_hash_is_incomplete(big):
    _, objects = big
    config_map, secret, shards = split(objects)
    edited = json.loads(json.dumps(shards["kubegate-config-2"]))
    edited["binaryData"]["config.json.gz"] = base64.b64encode(b"\x1f\x8b tampered").decode()
    with pytest.raises(ShardsIncomplete, match="kubegate-config-2 is not the one kubegate-config lists"):
        halves(config_map, secret, {**shards, "kubegate-config-2": edited})


def test_a_primary_listing_a_foreign_object_is_refused(big):
    _, objects = big
    config_map, secret, shards = split(objects)
    forged = {**config_map, "data": {**config_map["data"], SHARDS_KEY: json.dumps([["kube-root-ca.crt", "00"]])}}
    with pytest.raises(ConfigDecodeError, match="names 'kube-root-ca.crt' as shard 1"):
        halves(forged, secret, shards)


class RecordingApi:
    """The API server's apply as the Applier sees it: the order of writes, one failure on request."""

    def __init__(self, fail: str | None = None) -> None:
        self.order: list[str] = []
        self.fail = fail

    async def apply(self, obj):
        from kubegate.kubeapi import ApiError

        await asyncio.sleep(0)
        name = obj["metadata"]["name"]
        if name == self.fail:
            raise ApiError(422, "Invalid", "ConfigMap is invalid")
        self.order.append(name)
        return {"metadata": {"resourceVersion": str(len(self.order))}}


def test_the_operator_writes_a_primary_only_after_all_its_shards(big):
    _, objects = big
    desired = [with_content_hash(o) for o in reversed(objects)]  # the order must not matter
    api = RecordingApi()
    asyncio.run(Applier(api).sync(desired, {}))
    for primary in (CONFIG_MAP_NAME, SECRET_NAME):
        shard_positions = [i for i, n in enumerate(api.order) if n.startswith(primary + "-")]
        assert shard_positions and api.order.index(primary) > max(shard_positions)


def test_a_shard_that_cannot_be_written_holds_its_primary_back_and_keeps_the_old_shards(big):
    _, objects = big
    api = RecordingApi(fail="kubegate-config-2")
    applier = Applier(api)
    asyncio.run(applier.sync([with_content_hash(o) for o in objects], {}))
    assert CONFIG_MAP_NAME not in api.order and "kubegate-config-1" in api.order
    stale = [{"metadata": {"name": name, "namespace": "kubegate-system", "labels": {SHARD_LABEL: primary}}}
             for name, primary in (("kubegate-config-9", CONFIG_MAP_NAME), ("kubegate-secrets-9", SECRET_NAME))]
    deleted = []

    async def delete(path):
        deleted.append(path.rsplit("/", 1)[1])
        return True

    api.delete = delete
    asyncio.run(applier.collect(stale[:1], "v1", "ConfigMap"))
    asyncio.run(applier.collect(stale[1:], "v1", "Secret"))
    assert deleted == ["kubegate-secrets-9"]  # the old kubegate-config still lists its shards


def test_the_data_plane_role_names_exactly_the_shards_it_may_read():
    from pathlib import Path

    import yaml

    from kubegate.names import MAX_SHARDS, shard_name

    docs = yaml.safe_load_all((Path(__file__).parents[2] / "manifests/base/rbac-dataplane.yaml").read_text())
    role = next(d for d in docs if d and d["kind"] == "Role")
    readable = {(rule["resources"][0], name): rule["verbs"] for rule in role["rules"]
                for name in rule.get("resourceNames", ())}
    for resource, primary in (("configmaps", CONFIG_MAP_NAME), ("secrets", SECRET_NAME)):
        shards = {name for (kind, name) in readable if kind == resource and name != primary}
        assert shards == {shard_name(primary, i) for i in range(1, MAX_SHARDS + 1)}
        assert all(readable[(resource, name)] == ["get"] for name in shards)


def test_a_payload_beyond_the_shards_the_data_plane_may_read_is_refused_with_a_reason():
    import os

    from kubegate.config import SHARD_BYTES
    from kubegate.generate import ConfigTooLarge, _pieces
    from kubegate.names import MAX_SHARDS

    assert len(_pieces(os.urandom((MAX_SHARDS + 1) * SHARD_BYTES), CONFIG_MAP_NAME)) == MAX_SHARDS + 1
    with pytest.raises(ConfigTooLarge, match=f"kubegate-secrets would need {MAX_SHARDS + 2} objects"):
        _pieces(os.urandom((MAX_SHARDS + 1) * SHARD_BYTES + 1), SECRET_NAME)


def test_render_prints_the_shards_and_redacts_the_secret_ones(big):
    from kubegate.commands.render import REDACTED, render_yaml

    _, objects = big
    text = render_yaml(objects)
    assert "name: kubegate-config-1\n" in text and "name: kubegate-secrets-1\n" in text
    secret_shard = next(o for o in objects if o["metadata"]["name"] == "kubegate-secrets-1")
    assert secret_shard["data"]["secrets.json.gz"] not in text and f"secrets.json.gz: {REDACTED}" in text
