"""`kubegate validate` and `kubegate render`: exit codes, one-line errors, redaction."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubegate.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
INVALID = sorted((ROOT / "tests" / "cases" / "invalid").glob("*.yaml"))


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_examples_ok(capsys):
    code, out, err = run(capsys, "validate", "-f", str(EXAMPLES))
    assert code == 0, err
    assert out.startswith("OK: 2 ApiKey, 4 GatewayRoute, 2 RateLimitPolicy, 1 TLSPolicy")
    assert "Traceback" not in err


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_validate_invalid_case(capsys, path):
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    code, out, err = run(capsys, "validate", "-f", str(path))
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert lines[-1].endswith("problem(s) found")
    assert any(line.startswith(f"{path}: ") and expected in line for line in lines[:-1]), err
    assert "Traceback" not in err


def test_validate_semantic_conflict_and_warning(capsys, tmp_path):
    (tmp_path / "routes.yaml").write_text("""
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {name: first, namespace: shop}
spec: {path: "/a/:id", backends: [{url: "http://a"}]}
---
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {name: second, namespace: shop}
spec: {path: "/a/{x}", backends: [{url: "http://b"}]}
""")
    code, _, err = run(capsys, "validate", "-f", str(tmp_path))
    assert code == 1
    assert (f"{tmp_path / 'routes.yaml'}: GatewayRoute/shop/second: spec.path: Conflicted: path /a/{{x}}"
            in err)
    assert "older GatewayRoute shop/first" in err  # names the winner


def test_validate_accepts_a_route_without_hosts_beside_host_specific_ones(capsys, tmp_path):
    """Issue 13: exact, *. and no hosts on one path coexist; only the same host twice is refused."""
    route = ("apiVersion: kubegate.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {{name: {}, namespace: web}}\n"
             "spec: {{{}path: /r/host, backends: [{{url: 'http://127.0.0.1:9001'}}]}}\n")
    docs = [route.format("host-exact", "hosts: [api.example.com], "),
            route.format("host-wild", "hosts: ['*.example.com'], "), route.format("host-none", "")]
    (tmp_path / "routes.yaml").write_text("---\n".join(docs))
    code, _, err = run(capsys, "validate", "-f", str(tmp_path))
    assert (code, err) == (0, "")
    (tmp_path / "more.yaml").write_text(route.format("host-none-again", ""))
    code, _, err = run(capsys, "validate", "-f", str(tmp_path))
    assert code == 1 and "GatewayRoute/web/host-none-again: spec.path: Conflicted: path /r/host (hosts none;" in err


def test_validate_missing_secret_is_a_warning(capsys, tmp_path):
    (tmp_path / "key.yaml").write_text("""
apiVersion: kubegate.dev/v1alpha1
kind: ApiKey
metadata: {name: acme, namespace: shop}
spec: {secretRef: {name: elsewhere, key: api-key}}
""")
    code, out, err = run(capsys, "validate", "-f", str(tmp_path))
    assert code == 0 and "1 warning" in out
    assert "warning:" in err and "SecretNotFound" in err and "shop/elsewhere" in err


def test_validate_repeated_path_parameter_is_semantic(capsys, tmp_path):
    (tmp_path / "r.yaml").write_text("""
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {name: r}
spec: {path: "/a/:id/b/:id", backends: [{url: "http://a"}]}
""")
    code, _, err = run(capsys, "validate", "-f", str(tmp_path))
    assert code == 1 and "GatewayRoute/default/r: spec.path: path '/a/:id/b/:id' repeats a parameter name" in err


def test_validate_missing_path_and_malformed_yaml(capsys, tmp_path):
    code, _, err = run(capsys, "validate", "-f", str(tmp_path / "missing.yaml"))
    assert code == 1 and err.strip() == f"kubegate: {tmp_path / 'missing.yaml'}: no such file or directory"
    (tmp_path / "bad.yaml").write_text("kind: GatewayRoute\nspec: {path: [\n")
    code, _, err = run(capsys, "validate", "-f", str(tmp_path / "bad.yaml"))
    assert code == 1 and f"{tmp_path / 'bad.yaml'}:3: invalid YAML" in err


def test_render_redacts_secrets_and_never_prints_api_keys(capsys):
    key = next(line.split('"')[1] for line in (EXAMPLES / "40-apikey-acme.yaml").read_text().splitlines()
               if line.strip().startswith("api-key:"))
    code, out, err = run(capsys, "render", "-f", str(EXAMPLES))
    assert code == 0, err
    docs = list(yaml.safe_load_all(out))
    kinds = [d["kind"] for d in docs]
    assert kinds[:3] == ["ConfigMap", "Secret", "Certificate"] and set(kinds[3:]) == {"NetworkPolicy"}
    secret = docs[1]
    assert set(secret["data"].values()) == {"<redacted>"}
    assert key not in out and "example-only-hmac-secret" not in out
    code, shown, _ = run(capsys, "render", "-f", str(EXAMPLES), "--show-secrets")
    assert code == 0
    assert key not in shown  # only its hash exists
    assert list(yaml.safe_load_all(shown))[1]["data"]["secrets.json.gz"] != "<redacted>"


def test_render_namespace_and_invalid_input(capsys, tmp_path):
    code, out, _ = run(capsys, "render", "-f", str(EXAMPLES), "--namespace", "gw")
    assert code == 0 and {d["metadata"]["namespace"] for d in yaml.safe_load_all(out)
                          if d["kind"] != "NetworkPolicy"} == {"gw"}
    code, out, err = run(capsys, "render", "-f", str(INVALID[0]))
    assert code == 1 and out == "" and "nothing rendered" in err


def test_console_entry_point_via_subprocess():
    proc = subprocess.run([sys.executable, "-m", "kubegate.cli", "validate", "-f", str(INVALID[0])],
                          check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and proc.stdout == ""
