"""The incremental decoder (sources/decode.py) gives exactly what decode_config/decode_secrets/config_hash give,
reuses what did not change, refuses what they refuse; the snapshot build reuses unchanged routes' runtimes."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import pytest
from kubegate.dataplane.ratelimit import build_rate_limiter
from kubegate.dataplane.server import Gateway
from kubegate.dataplane.sources import decode as decode_module
from kubegate.dataplane.sources.decode import IncrementalDecoder
from kubegate.dataplane.sources.file import build

from kubegate.config import (
    CompiledApiKey,
    CompiledAuth,
    CompiledBackend,
    CompiledConfig,
    CompiledRoute,
    ConfigDecodeError,
    SecretBundle,
    config_hash,
    decode_config,
    encode_config,
    encode_secrets,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _examples() -> tuple[CompiledConfig, SecretBundle]:
    result = build([str(EXAMPLES)], "kubegate-system", None)
    assert result.config.routes and result.config.api_keys  # a config with something in it
    return result.config, result.secrets


def _gz(document: object, **dump: object) -> str:
    return base64.b64encode(gzip.compress(json.dumps(document, **dump).encode())).decode()


def _secrets(secrets: SecretBundle) -> bytes:
    return base64.b64decode(encode_secrets(secrets))


def _config(n: int, variant: str = "a") -> CompiledConfig:
    routes = tuple(CompiledRoute(id=f"ns/r{i}", namespace="ns", name=f"r{i}", path=f"/{variant if i == 1 else 'p'}{i}",
                                 backends=(CompiledBackend(url="http://127.0.0.1:9"),),
                                 **({"auth": CompiledAuth(methods=("apiKey",))} if i % 2 else {}))
                   for i in range(n))
    keys = tuple(CompiledApiKey(id=f"k{i}", namespace="ns", name=f"k{i}", hash_ref=f"apikey/k{i}") for i in range(n))
    return CompiledConfig(routes=routes, api_keys=keys, generations={f"GatewayRoute/ns/r{i}": 1 for i in range(n)})


def test_the_translators_output_decodes_to_the_same_config_and_hash():
    config, secrets = _examples()
    got, got_secrets, digest = IncrementalDecoder().decode(encode_config(config), _secrets(secrets))
    assert got == config == decode_config(encode_config(config))
    assert got_secrets == secrets
    assert digest == config_hash(config, secrets)


def test_json_another_writer_formats_differently_hashes_as_its_canonical_form():
    """Whitespace, key order, non-ASCII kept as is: the hash is of the canonical form, as config_hash's."""
    config, secrets = _examples()
    document = config.model_dump(mode="json")
    document["routes"][0]["name"] = "caf\u00e9"
    document["routes"][0]["id"] = document["routes"][0]["namespace"] + "/caf\u00e9"
    reordered = dict(reversed(list(document.items())))
    payload = _gz(reordered, indent=2, ensure_ascii=False)
    got, _, digest = IncrementalDecoder().decode(payload, _secrets(secrets))
    assert got == decode_config(payload)
    assert digest == config_hash(decode_config(payload), secrets)


def test_a_second_decode_reuses_every_unchanged_element_and_parses_the_changed_one():
    decoder = IncrementalDecoder()
    secrets = SecretBundle(values={f"apikey/k{i}": f"{i:064x}" for i in range(50)})
    first, _, _ = decoder.decode(encode_config(_config(50)), _secrets(secrets))
    changed = _config(50, "b")
    second, _, digest = decoder.decode(encode_config(changed), _secrets(secrets))
    assert second == changed and digest == config_hash(changed, secrets)
    assert second.routes[1] is not first.routes[1] and second.routes[1].path == "/b1"
    assert all(a is b for a, b in zip(first.routes[2:], second.routes[2:], strict=True))
    assert all(a is b for a, b in zip(first.api_keys, second.api_keys, strict=True))


def test_api_keys_hash_the_same_in_any_text_order_form_or_repetition_and_keep_their_form_on_reuse():
    """api_keys go straight into the content hash as they are read (not kept as text): wherever they
    stand in the document, however they are formatted, decoded twice, the hash is config_hash's."""
    config, secrets = _config(3), SecretBundle(values={})
    document = config.model_dump(mode="json")
    spaced = {"routes": document["routes"], "api_keys": document["api_keys"],
              **{k: v for k, v in document.items() if k not in ("routes", "api_keys")}}
    decoder = IncrementalDecoder()
    for _ in range(2):  # the second decode reuses every element and its remembered canonical form
        got, _, digest = decoder.decode(_gz(spaced, indent=1), _secrets(secrets))
        assert got == config and digest == config_hash(config, secrets)
    twice = _gz(spaced)
    repeated = base64.b64encode(gzip.compress(gzip.decompress(base64.b64decode(twice)).replace(
        b'"routes":', b'"api_keys":[],"routes":', 1))).decode()
    got, _, digest = IncrementalDecoder().decode(repeated, _secrets(secrets))  # the last one counts
    assert got == decode_config(repeated) and digest == config_hash(got, secrets)


def test_secrets_in_another_form_hash_as_their_canonical_form_and_bad_ones_are_refused():
    config = _config(1)
    for document in ({}, {"values": {"b": "2", "a": "1"}}):
        raw = gzip.compress(json.dumps(document, indent=2).encode())
        _, got, digest = IncrementalDecoder().decode(encode_config(config), raw)
        assert got == SecretBundle.model_validate(document) and digest == config_hash(config, got)
    for document, reason in (([1], "secrets do not match the schema"), ({"values": {"a": 1}}, "do not match")):
        with pytest.raises(ConfigDecodeError, match=reason):
            IncrementalDecoder().decode(encode_config(config), gzip.compress(json.dumps(document).encode()))
    with pytest.raises(ConfigDecodeError, match="secrets is not valid base64 gzip JSON"):
        IncrementalDecoder().decode(encode_config(config), gzip.compress(b"{nope"))


@pytest.mark.parametrize("document", [
    {"routes": [{"id": "ns/r", "namespace": "ns", "name": "r", "path": "/", "backends": "nope"}]},
    {"routes": None},
    {"routes": [], "surprise": 1},
    {"api_keys": [{"id": "k"}]},
    {"schema_version": "one"},
    [1, 2],
])
def test_what_decode_config_refuses_is_refused_with_its_reason(document):
    payload = _gz(document)
    with pytest.raises(ConfigDecodeError) as plain:
        decode_config(payload)
    with pytest.raises(ConfigDecodeError) as incremental:
        IncrementalDecoder().decode(payload, _secrets(SecretBundle()))
    assert str(incremental.value) == str(plain.value)


def test_garbage_is_refused_in_one_line():
    with pytest.raises(ConfigDecodeError, match="not valid base64 gzip JSON"):
        IncrementalDecoder().decode("%%%", _secrets(SecretBundle()))
    truncated = base64.b64encode(gzip.compress(b'{"routes":[{"id":')).decode()
    with pytest.raises(ConfigDecodeError):
        IncrementalDecoder().decode(truncated, _secrets(SecretBundle()))


def test_a_refused_config_does_not_poison_the_next_decode():
    decoder = IncrementalDecoder()
    secrets = SecretBundle(values={f"apikey/k{i}": f"{i:064x}" for i in range(5)})
    decoder.decode(encode_config(_config(5)), _secrets(secrets))
    with pytest.raises(ConfigDecodeError):
        decoder.decode(_gz({"routes": None}), _secrets(secrets))
    again, _, digest = decoder.decode(encode_config(_config(5, "c")), _secrets(secrets))
    assert again == _config(5, "c") and digest == config_hash(again, secrets)


def test_the_build_keeps_the_runtime_of_an_unchanged_route_and_rebuilds_a_changed_one():
    gw = Gateway(host="127.0.0.1", http_port=0, https_port=0, admin_port=None, limiter=build_rate_limiter(None))
    decoder = IncrementalDecoder()
    secrets = SecretBundle(values={f"apikey/k{i}": f"{i:064x}" for i in range(20)})
    before = gw.prepare(*decoder.decode(encode_config(_config(20)), _secrets(secrets)))
    after = gw.prepare(*decoder.decode(encode_config(_config(20, "b")), _secrets(secrets)))

    def runtime(snapshot, path):
        return snapshot.table.lookup("any.test", "GET", [path]).value

    assert runtime(after, "p7") is runtime(before, "p7")
    assert runtime(after, "b1") is not runtime(before, "a1")
    assert runtime(after, "b1").route.path == "/b1" and runtime(after, "b1").needs_admission


def _edited(n: int, edits: dict[int, str] | None = None, dropped: tuple[int, ...] = (), added: int = 0) -> CompiledConfig:
    """``n`` routes with long paths (many BLOCKs of text), some edited, dropped or added."""
    routes = tuple(CompiledRoute(id=f"ns/r{i}", namespace="ns", name=f"r{i}",
                                 path=(edits or {}).get(i, f"/p{i}/" + "x" * 200),
                                 backends=(CompiledBackend(url="http://127.0.0.1:9"),))
                   for i in range(n + added) if i not in dropped)
    return CompiledConfig(routes=routes, generations={f"GatewayRoute/{r.id}": 1 for r in routes})


@pytest.mark.parametrize("change", [
    {"edits": {0: "/first"}},  # at the very start: nothing before it is unchanged
    {"edits": {299: "/last"}},  # at the end: nothing after it
    {"edits": {150: "/" + "y" * 5000}},  # in the middle, the text grows by more than a block
    {"edits": {150: "/"}},  # ... or shrinks
    {"edits": {10: "/a", 290: "/b"}},  # two stretches changed
    {"dropped": (0, 1, 2)},
    {"added": 3},
    {"dropped": (120,), "added": 1},
])
def test_elements_in_unchanged_stretches_are_reused_and_the_rest_decoded_exactly(change, monkeypatch):
    """Unchanged elements before and after an edit are taken from the previous decode without a scan; the
    result and its hash are decode_config's and config_hash's, and changed elements are new models."""
    decoder = IncrementalDecoder()
    secrets = SecretBundle(values={})
    first, _, _ = decoder.decode(encode_config(_edited(300, {})), _secrets(secrets))
    changed = _edited(300, **change)
    payload = encode_config(changed)
    scans = []
    scan = decode_module._SCAN
    monkeypatch.setattr(decode_module, "_SCAN", lambda text, at: scans.append(at) or scan(text, at))
    got, _, digest = decoder.decode(payload, _secrets(secrets))
    monkeypatch.undo()
    # a few top-level keys and values, and the elements from the first change to the last one, with a
    # block (~14 elements) either side: one changed stretch is found, between the unchanged start and end
    changed_at = [*change.get("edits", {}), *change.get("dropped", ()), *((300,) if change.get("added") else ())]
    assert len(scans) < 10 + (max(changed_at) - min(changed_at) + 1) + 2 * 15, len(scans)
    assert got == changed == decode_config(payload) and digest == config_hash(changed, secrets)
    before = {r.id: r for r in first.routes}
    reused = [r for r in got.routes if before.get(r.id) is r]
    assert len(reused) >= len(got.routes) - 2 * len(change.get("edits", {})) - 3
    assert all(before[r.id] == r for r in reused)
    for i in change.get("edits", {}):
        assert next(r for r in got.routes if r.id == f"ns/r{i}") is not before[f"ns/r{i}"]
    # and again from there: the remembered places are the new text's
    again = _edited(300, {5: "/again"})
    got, _, digest = decoder.decode(encode_config(again), _secrets(secrets))
    assert got == again and digest == config_hash(again, secrets)


def test_the_same_text_around_a_different_element_is_not_mistaken_for_it():
    """An edit that keeps the text's length and everything around it: only the changed element differs."""
    decoder = IncrementalDecoder()
    secrets = SecretBundle(values={})
    decoder.decode(encode_config(_edited(100, {50: "/" + "a" * 100})), _secrets(secrets))
    swapped = _edited(100, {50: "/" + "b" * 100})
    got, _, digest = decoder.decode(encode_config(swapped), _secrets(secrets))
    assert got == swapped and got.routes[50].path == "/" + "b" * 100 and digest == config_hash(swapped, secrets)


def test_a_text_in_another_form_after_a_canonical_one_decodes_as_decode_config_does():
    """Whitespace and key order change every offset: nothing is taken by place; values and hash stay exact."""
    decoder = IncrementalDecoder()
    secrets = SecretBundle(values={})
    config = _edited(200, {})
    decoder.decode(encode_config(config), _secrets(secrets))
    document = config.model_dump(mode="json")
    document["routes"][7]["path"] = "/seven"
    spaced = _gz(document, indent=1)
    got, _, digest = decoder.decode(spaced, _secrets(secrets))
    assert got == decode_config(spaced) and digest == config_hash(got, secrets)
    got, _, digest = decoder.decode(encode_config(config), _secrets(secrets))  # and back
    assert got == config and digest == config_hash(config, secrets)


def test_a_reload_that_moves_one_route_updates_the_route_table_and_the_old_snapshot_keeps_its_own():
    gw = Gateway(host="127.0.0.1", http_port=0, https_port=0, admin_port=None, limiter=build_rate_limiter(None))
    decoder = IncrementalDecoder()
    secrets = SecretBundle(values={f"apikey/k{i}": f"{i:064x}" for i in range(200)})
    before = gw.prepare(*decoder.decode(encode_config(_config(200)), _secrets(secrets)))
    after = gw.prepare(*decoder.decode(encode_config(_config(200, "moved")), _secrets(secrets)))

    def found(snapshot, path):
        return snapshot.table.lookup("any.test", "GET", [path])

    assert found(after, "moved1").value.route.path == "/moved1" and found(after, "a1") is None
    assert found(before, "a1").value.route.path == "/a1" and found(before, "moved1") is None
    assert found(after, "p7").value is found(before, "p7").value
    # updated, not rebuilt: the any-host trie's untouched children are the very same nodes
    assert after.table._any is not before.table._any
    assert after.table._any.literals["p7"] is before.table._any.literals["p7"]
    assert after.table.size == before.table.size == 200
