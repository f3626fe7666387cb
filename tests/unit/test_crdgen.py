"""The committed CRDs equal the generator's output, are structural, and agree with the spec models."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubegate import crdgen
from kubegate.spec import KINDS, parse_spec

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "tests" / "cases"


def test_committed_crds_do_not_drift():
    expected = crdgen.render_all()
    committed = {p.name: p.read_text() for p in (ROOT / "crds").iterdir() if p.is_file()}
    assert committed == expected, "crds/ is stale: run `python -m kubegate.crdgen`"


def test_kubectl_apply_f_crds_reads_only_crds():
    """``kubectl apply -f crds/`` applies every *.yaml/*.yml/*.json there: each must be a CRD (issue 13).

    The real ``kubectl apply -f crds/``, ``-k crds/`` and ``-k manifests/`` run in
    tests/deploy/test_manifests.py::test_install_commands_succeed_on_the_dev_cluster.
    """
    read_by_apply_f = [p for p in (ROOT / "crds").iterdir() if p.suffix in (".yaml", ".yml", ".json")]
    kinds = {p.name: [d["kind"] for d in yaml.safe_load_all(p.read_text()) if d] for p in read_by_apply_f}
    assert kinds == {crdgen.file_name(kind): ["CustomResourceDefinition"] for kind in KINDS}


def _walk(node, path="schema"):
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_crd_is_structural_and_documented(kind):
    crd = crdgen.crd(kind)
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    text = yaml.safe_dump(crd)
    for banned in ("$ref", "$defs", "definitions", "anyOf", "allOf", "oneOf", "title:", "default:", "const:"):
        assert banned not in text, banned
    for path, node in _walk(schema):
        assert node.get("additionalProperties") is not False, path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields") or node.get(
            "x-kubernetes-int-or-string"
        ), f"{path} has no type"
        if path.startswith("schema.") and path != "schema.metadata" and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{path} has no description"
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["categories"] == ["kubegate"]
    assert crd["spec"]["names"]["shortNames"]
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Ready", "Age"} <= columns
    status = schema["properties"]["status"]["properties"]
    assert set(status["conditions"]["items"]["properties"]) == {
        "type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"
    }


def test_route_columns_and_status_extras():
    route = crdgen.crd("GatewayRoute")["spec"]["versions"][0]
    assert [c["name"] for c in route["additionalPrinterColumns"]][:2] == ["Path", "Hosts"]
    assert "keyId" in crdgen.status_schema("ApiKey")["properties"]
    assert {"certificate", "notAfter"} <= set(crdgen.status_schema("TLSPolicy")["properties"])
    spec = crdgen.spec_schema("GatewayRoute")
    assert spec["properties"]["requestSchema"]["x-kubernetes-preserve-unknown-fields"] is True
    assert spec["properties"]["auth"]["properties"]["jwt"]["properties"]["requiredClaims"][
        "additionalProperties"] == {"type": "string", "maxLength": 1024}


def test_cel_rules_are_carried():
    rules = []
    for kind in KINDS:
        for _, node in _walk(crdgen.spec_schema(kind)):
            rules += [r["rule"] for r in node.get("x-kubernetes-validations", [])]
    joined = "\n".join(rules)
    for fragment in ("has(self.service) != has(self.url)", "filter(x, x).size() == 1", "isCIDR(self)",
                     "self.dimension == 'header'", "has(self.issuerRef) != has(self.secretRef)",
                     "self.mode == 'none' || has(self.caSecretRef)", "stripPrefix"):
        assert fragment in joined, fragment


def test_expires_at_is_a_date_time_string():
    node = crdgen.spec_schema("ApiKey")["properties"]["expiresAt"]
    assert node["type"] == "string" and node["format"] == "date-time"


def _case_docs(path: Path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", sorted((CASES / "valid").glob("*.yaml")), ids=lambda p: p.stem)
def test_valid_cases_parse(path):
    for doc in _case_docs(path):
        model, errors = parse_spec(doc["kind"], doc["spec"])
        assert errors == [] and model is not None


@pytest.mark.parametrize("path", sorted((CASES / "invalid").glob("*.yaml")), ids=lambda p: p.stem)
def test_invalid_cases_are_rejected_with_the_expected_reason(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: ")
    expected = first.removeprefix("# expect: ")
    (doc,) = _case_docs(path)
    model, errors = parse_spec(doc["kind"], doc["spec"])
    assert model is None
    assert any(expected in f"{e.field}: {e.reason}" for e in errors), errors
