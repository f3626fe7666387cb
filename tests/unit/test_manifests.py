"""Loading manifests: folders, streams, Lists, Secrets, Services, and one-line problems."""

from __future__ import annotations

import json

import pytest

from kubegate.errors import UserError
from kubegate.manifests import Problem, load_manifests
from kubegate.resources import ObjectRef

ROUTE = """apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {name: r, namespace: shop, generation: 3, creationTimestamp: "2024-01-01T00:00:00Z"}
spec: {path: /x, backends: [{service: web, port: 80}]}
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_folder_recursive_streams_lists_secrets_services(tmp_path):
    write(tmp_path, "a/route.yaml", ROUTE + "---\n# just a comment\n---\napiVersion: apps/v1\nkind: Deployment\n"
                                           "metadata: {name: ignored}\n")
    write(tmp_path, "b/list.yml", """apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Secret
  metadata: {name: s, namespace: shop}
  data: {a: aGVsbG8=}
  stringData: {b: world}
- apiVersion: v1
  kind: Service
  metadata: {name: web}
  spec:
    type: ExternalName
    externalName: 127.0.0.1
    selector: {app: web}
    ports: [{port: 80, targetPort: http, name: web}]
""")
    write(tmp_path, "c/key.json", json.dumps({"apiVersion": "kubegate.dev/v1alpha1", "kind": "ApiKey",
                                               "metadata": {"name": "k"}, "spec": {"secretRef": {"name": "x",
                                                                                                 "key": "y"}}}))
    write(tmp_path, "notes.txt", "ignored: [")
    loaded = load_manifests([tmp_path])
    assert loaded.problems == []
    refs = {o.ref: o for o in loaded.objects}
    route = refs[ObjectRef("GatewayRoute", "shop", "r")]
    assert (route.generation, route.creation_timestamp, route.spec["path"]) == (3, "2024-01-01T00:00:00Z", "/x")
    assert ObjectRef("ApiKey", "default", "k") in refs  # namespace defaults like kubectl
    assert loaded.secrets[("shop", "s")] == {"a": b"hello", "b": b"world"}
    web = loaded.services[("default", "web")]
    assert (web.type, web.external_name, web.ports[0].target_port, web.selector) == (
        "ExternalName", "127.0.0.1", "http", {"app": "web"})
    assert loaded.origins[route.ref].endswith("route.yaml")


def test_malformed_yaml_is_one_problem_with_a_line(tmp_path):
    path = write(tmp_path, "bad.yaml", ROUTE + "---\nkind: [unclosed\n")
    loaded = load_manifests([path])
    (problem,) = loaded.problems
    assert problem.line is not None and problem.line >= 6
    assert str(problem).startswith(f"{path}:{problem.line}: invalid YAML")
    assert len(loaded.objects) == 1  # documents before the error still load


@pytest.mark.parametrize(("text", "field", "reason"), [
    ("apiVersion: kubegate.dev/v1alpha1\nkind: Gateway\nmetadata: {name: g}\nspec: {}\n", "kind", "unknown kind"),
    ("apiVersion: kubegate.dev/v1\nkind: ApiKey\nmetadata: {name: g}\nspec: {}\n", "apiVersion", "unsupported"),
    ("apiVersion: kubegate.dev/v1alpha1\nkind: ApiKey\nmetadata: {}\nspec: {}\n", "metadata.name", "Required"),
    ("apiVersion: kubegate.dev/v1alpha1\nkind: ApiKey\nmetadata: {name: k}\nspec: [1]\n", "spec", "Required"),
    ("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {k: '%%%'}\n", "data.k", "base64"),
    ("just a string\n", "", "not a Kubernetes object"),
])
def test_problems(tmp_path, text, field, reason):
    path = write(tmp_path, "x.yaml", text)
    (problem,) = load_manifests([path]).problems
    assert problem.field == field and reason in problem.reason
    assert "\n" not in str(problem)


def test_duplicate_object(tmp_path):
    write(tmp_path, "a.yaml", ROUTE)
    write(tmp_path, "b.yaml", ROUTE)
    (problem,) = load_manifests([tmp_path]).problems
    assert "defined twice" in problem.reason and "a.yaml" in problem.reason


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_manifests([tmp_path / "nope"])


def test_problem_format():
    p = Problem("f.yaml", "bad", "GatewayRoute", "shop", "r", "spec.path")
    assert str(p) == "f.yaml: GatewayRoute/shop/r: spec.path: bad"


def test_self_referencing_yaml_alias_is_one_clear_problem_not_a_traceback(tmp_path, capsys):
    from kubegate.cli import main

    bad = tmp_path / "cycle.yaml"
    bad.write_text("apiVersion: kubegate.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: cyc, namespace: shop}\n"
                   "spec:\n  path: &p [*p]\n  backends: [{url: 'http://x'}]\n")
    assert main(["validate", "-f", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "GatewayRoute/shop/cyc: spec.path: Invalid value" in err and "Traceback" not in err
