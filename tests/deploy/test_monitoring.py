"""Observability assets: the PrometheusRule passes `promtool check rules`, its alerts fire (and stay
quiet) on synthetic series under `promtool test rules`, and the dashboard only queries valid PromQL
over metrics the data plane really exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from kubegate.dataplane.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "manifests" / "monitoring"
OPERATOR_METRICS = {"kubegate_objects"}  # exported by the operator (see docs/operations.md)
METRIC_TOKEN = re.compile(r"\b(kubegate_[a-z_]+|auth_failures_total|rate_limit_exceeded_total|tls_errors_total)\b")


def exported_metric_names() -> set[str]:
    """Sample names the data plane's registry can expose (prometheus_client adds the suffixes)."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"],
                "gauge": [""]}
    return {family.name + s for family in Metrics().registry.collect() for s in suffixes[family.type]}


def rule_groups() -> list[dict]:
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    return rule["spec"]["groups"]


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, check=False)


def test_promtool_accepts_the_rules(tmp_path):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}))
    proc = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 8 rules found" in proc.stdout


def test_alerts_cover_the_issue(tmp_path):
    exprs = {r["alert"]: r["expr"] for g in rule_groups() for r in g["rules"]}
    assert "14 * 24 * 3600" in exprs["KubegateCertificateExpiringSoon"]
    assert "auth_failures_total" in exprs["KubegateAuthFailureSpike"]
    assert "rate_limit_exceeded_total" in exprs["KubegateRateLimitSurge"]
    assert 'kubegate_config_reloads_total{result="rejected"}' in exprs["KubegateConfigReloadRejected"]
    assert 'condition="Programmed"' in exprs["KubegateObjectsNotProgrammed"]


def test_rules_and_dashboard_use_only_exported_metrics():
    known = exported_metric_names() | OPERATOR_METRICS
    assert {"auth_failures_total", "rate_limit_exceeded_total", "tls_errors_total"} <= known
    exprs = [r["expr"] for g in rule_groups() for r in g["rules"]] + dashboard_exprs()
    used = {m for e in exprs for m in METRIC_TOKEN.findall(e)}
    assert used and used <= known, used - known


def series(name: str, labels: dict[str, str], values: str) -> dict:
    body = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{body}}}", "values": values}


ADMIN = {"route": "shop/admin", "method": "GET"}
ORDERS = {"route": "shop/orders", "method": "GET"}
CATALOG = {"route": "shop/catalog", "method": "GET"}
POD1 = {"namespace": "kubegate-system", "pod": "dp-1"}
POD2 = {"namespace": "kubegate-system", "pod": "dp-2"}


def alert(name: str, at: str, *expected: dict) -> dict:
    return {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": labels} for labels in expected]}


UNIT_TESTS = [
    {   # certificates: 10 days left warns after 1h, 2 days left is critical, 60 days is quiet
        "interval": "1m",
        "input_series": [
            series("kubegate_certificate_expiry_timestamp_seconds", {"policy": "a"}, "864000+0x120"),
            series("kubegate_certificate_expiry_timestamp_seconds", {"policy": "b"}, "5184000+0x120"),
            series("kubegate_certificate_expiry_timestamp_seconds", {"policy": "c"}, "172800+0x120"),
        ],
        "alert_rule_test": [
            alert("KubegateCertificateExpiringSoon", "30m"),
            alert("KubegateCertificateExpiringSoon", "70m", {"policy": "a", "severity": "warning"},
                  {"policy": "c", "severity": "warning"}),
            alert("KubegateCertificateExpiryCritical", "20m", {"policy": "c", "severity": "critical"}),
        ],
    },
    {   # auth failures: 10/s at 50% of traffic fires; 0.5/s or 1% of a busy route does not
        "interval": "1m",
        "input_series": [
            series("auth_failures_total", {**ADMIN, "reason": "invalid_key"}, "0+600x40"),
            series("kubegate_requests_total", {**ADMIN, "code": "4xx"}, "0+600x40"),
            series("kubegate_requests_total", {**ADMIN, "code": "2xx"}, "0+600x40"),
            series("auth_failures_total", {**ORDERS, "reason": "expired"}, "0+30x40"),
            series("kubegate_requests_total", {**ORDERS, "code": "4xx"}, "0+30x40"),
            series("auth_failures_total", {**CATALOG, "reason": "missing"}, "0+600x40"),
            series("kubegate_requests_total", {**CATALOG, "code": "2xx"}, "0+60000x40"),
        ],
        "alert_rule_test": [
            alert("KubegateAuthFailureSpike", "8m"),
            alert("KubegateAuthFailureSpike", "20m", {"route": "shop/admin", "severity": "warning"}),
        ],
    },
    {   # rate limits: 30% of a route's requests get 429 -> surge; a trickle does not
        "interval": "1m",
        "input_series": [
            series("rate_limit_exceeded_total", {"route": "shop/reports", "dimension": "ip"}, "0+180x40"),
            series("kubegate_requests_total", {"route": "shop/reports", "method": "GET", "code": "2xx"},
                   "0+600x40"),
            series("rate_limit_exceeded_total", {"route": "shop/orders", "dimension": "apiKey"}, "0+6x40"),
            series("kubegate_requests_total", {**ORDERS, "code": "2xx"}, "0+60x40"),
        ],
        "alert_rule_test": [
            alert("KubegateRateLimitSurge", "20m", {"route": "shop/reports", "severity": "warning"}),
        ],
    },
    {   # config: a rejected reload alerts at once; diverging hashes after 15m; unprogrammed objects after 10m
        "interval": "1m",
        "input_series": [
            series("kubegate_config_reloads_total", {**POD1, "result": "rejected"}, "0 0 1 1 1 1 1 1 1 1 1 1 1 1 1"),
            series("kubegate_config_reloads_total", {**POD2, "result": "ok"}, "1+1x30"),
            series("kubegate_config_info", {**POD1, "hash": "aaa", "routes": "3"}, "1+0x30"),
            series("kubegate_config_info", {**POD2, "hash": "bbb", "routes": "4"}, "1+0x30"),
            series("kubegate_objects", {"namespace": "kubegate-system", "kind": "GatewayRoute",
                                        "condition": "Programmed", "status": "False"}, "2+0x30"),
            series("kubegate_objects", {"namespace": "kubegate-system", "kind": "ApiKey",
                                        "condition": "Programmed", "status": "True"}, "5+0x30"),
        ],
        "alert_rule_test": [
            alert("KubegateConfigReloadRejected", "1m"),
            alert("KubegateConfigReloadRejected", "4m", {**POD1, "severity": "warning"}),
            alert("KubegateConfigDiverged", "10m"),
            alert("KubegateConfigDiverged", "20m", {"severity": "warning"}),
            alert("KubegateObjectsNotProgrammed", "5m"),
            alert("KubegateObjectsNotProgrammed", "15m", {"namespace": "kubegate-system", "kind": "GatewayRoute",
                                                           "severity": "warning"}),
        ],
    },
]


def test_alerts_fire_on_synthetic_series(tmp_path):
    groups = rule_groups()
    for group in groups:  # annotations are checked by `check rules`; here only expr, for and labels
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": UNIT_TESTS}))
    proc = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def dashboard() -> dict:
    return json.loads((MONITORING / "dashboard.json").read_text())


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def test_dashboard_covers_the_issue():
    titles = " | ".join(p["title"].lower() for p in dashboard()["panels"])
    for topic in ("requests", "latency", "auth failures", "rate-limited", "reloads", "config version per replica"):
        assert topic in titles


@pytest.mark.parametrize("grafana_var,value", [("$__rate_interval", "5m")])
def test_dashboard_queries_are_valid_promql(tmp_path, grafana_var, value):
    exprs = [e.replace(grafana_var, value).replace("$route", ".*") for e in dashboard_exprs()]
    rules = [{"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]
    (tmp_path / "dashboard-rules.yaml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]}))
    proc = promtool("check", "rules", "dashboard-rules.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_monitoring_kustomization_renders():
    out = subprocess.run(["kubectl", "kustomize", str(MONITORING)], capture_output=True, text=True, check=True)
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
    assert sorted(kinds) == ["ConfigMap", "PodMonitor", "PodMonitor", "PrometheusRule"]
    monitors = {d["metadata"]["name"]: d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "PodMonitor"}
    # both processes are scraped: the data plane's admin port and the operator's metrics port
    assert monitors["kubegate-operator"]["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert monitors["kubegate-dataplane"]["spec"]["podMetricsEndpoints"][0]["port"] == "admin"
