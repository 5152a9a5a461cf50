"""The Grafana dashboard and the PrometheusRule alerts (values monitoring.*): off by default,
valid JSON and YAML when on, and every metric they query is one the code records (a rename in
the code breaks these tests)."""

from __future__ import annotations

import json
import re

import yaml

from conftest import CHART, REPO, render, validate_manifest, NEWEST_KUBE

METRIC = re.compile(r"\bspillway_[a-z0-9_]+")
# Histogram series carry these suffixes; the code records the base name.
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# A gateway's metrics (issue 14: the gateway is not built yet); the panel shows nothing until
# it records them.
GATEWAY_METRICS = {
    "spillway_upstream_healthy",
    "spillway_upstream_breaker_state",
    "spillway_upstream_requests_total",
}
ON = {"monitoring": {"dashboards": {"enabled": True}, "rules": {"enabled": True}}}


def recorded_metrics() -> set[str]:
    """Names passed to counter!/gauge!/histogram! anywhere in the Rust code."""
    names: set[str] = set()
    pattern = re.compile(r'(?:counter|gauge|histogram)!\(\s*"(spillway_[a-z0-9_]+)"')
    for root in (REPO / "src", REPO / "storage-backends"):
        for f in root.rglob("*.rs"):
            names |= set(pattern.findall(f.read_text()))
    return names


def base_name(series: str, recorded: set[str]) -> str:
    if series in recorded:
        return series
    for suffix in HISTOGRAM_SUFFIXES:
        if series.endswith(suffix) and series[: -len(suffix)] in recorded:
            return series[: -len(suffix)]
    return series


def unknown_metrics(exprs: list[str]) -> list[str]:
    recorded = recorded_metrics()
    assert "spillway_memory_budget_bytes" in recorded, "the metric scan finds nothing"
    used = {base_name(m, recorded) for e in exprs for m in METRIC.findall(e)}
    return sorted(used - recorded - GATEWAY_METRICS)


def dashboard_exprs(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [
        v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
        for v in dashboard["templating"]["list"]
    ]
    return exprs


def test_off_by_default():
    kinds = render().kinds()
    assert "PrometheusRule" not in kinds
    assert "ConfigMap" not in kinds


def test_dashboard_configmap_is_valid_json_with_the_sidecar_label():
    r = render(ON)
    [cm] = [d for d in r.all("ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    validate_manifest(cm, NEWEST_KUBE)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["spillway.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "spillway.json").read_text())
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("calls/s", "error rate", "p50 / p99", "in flight", "bytes/s", "hedges",
                  "memory budget", "rejections", "storage ready", "upstreams"):
        assert topic in titles, f"no panel for {topic}: {titles}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    custom = render({"monitoring": {"dashboards": {
        "enabled": True, "sidecarLabel": "my_dash", "sidecarLabelValue": "yes",
        "namespace": "grafana"}}})
    [cm] = custom.all("ConfigMap")
    assert cm["metadata"]["labels"]["my_dash"] == "yes"
    assert cm["metadata"]["namespace"] == "grafana"


def test_dashboard_queries_only_metrics_the_code_records():
    dashboard = json.loads((CHART / "dashboards" / "spillway.json").read_text())
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) > 10
    assert unknown_metrics(exprs) == []
    # Latency from the histogram, per method.
    assert any("histogram_quantile(0.99" in e and "spillway_rpc_duration_seconds_bucket" in e
               for e in exprs)


def test_rules_render_as_valid_yaml_with_the_expected_alerts():
    r = render(ON)
    rule = r.one("PrometheusRule")
    validate_manifest(rule, NEWEST_KUBE)
    # Round trip: what Prometheus' operator reads is plain YAML.
    assert yaml.safe_load(yaml.safe_dump(rule)) == rule
    alerts = {a["alert"]: a for g in rule["spec"]["groups"] for a in g["rules"]}
    assert sorted(alerts) == sorted([
        "SpillwayHighErrorRate", "SpillwayStorageNotReady", "SpillwayNoReadyReplicas",
        "SpillwayMemoryBudgetSaturated", "SpillwayAdmissionRejections", "SpillwayFetchFailures",
    ])
    assert unknown_metrics([a["expr"] for a in alerts.values()]) == []
    err = alerts["SpillwayHighErrorRate"]
    assert 'status="error"' in err["expr"] and err["expr"].rstrip().endswith("> 0.05")
    assert err["for"] == "10m" and err["labels"]["severity"] == "warning"
    # The release's own series: the job the ServiceMonitor gives them.
    assert 'job="spillway", namespace="spillway"' in err["expr"]
    assert "spillway_memory_in_use_bytes" in alerts["SpillwayMemoryBudgetSaturated"]["expr"]
    assert alerts["SpillwayNoReadyReplicas"]["labels"]["severity"] == "critical"
    # Braces balance in every expression (a template slip would break the PromQL).
    for a in alerts.values():
        assert a["expr"].count("{") == a["expr"].count("}"), a["expr"]
        assert a["expr"].count("(") == a["expr"].count(")"), a["expr"]


def test_rule_thresholds_durations_and_selector_are_values():
    r = render({"monitoring": {"rules": {
        "enabled": True,
        "selector": 'service="edge"',
        "errorRate": {"threshold": 0.2, "window": "1m", "for": "2m", "severity": "page"},
        "budgetSaturation": {"threshold": 0.75, "for": "30m", "severity": "warning"},
        "fetchFailures": None,
    }}})
    rule = r.one("PrometheusRule")
    alerts = {a["alert"]: a for g in rule["spec"]["groups"] for a in g["rules"]}
    assert "SpillwayFetchFailures" not in alerts
    err = alerts["SpillwayHighErrorRate"]
    assert "[1m]" in err["expr"] and err["expr"].rstrip().endswith("> 0.2")
    assert err["for"] == "2m" and err["labels"]["severity"] == "page"
    assert 'service="edge"' in err["expr"] and "job=" not in err["expr"]
    assert alerts["SpillwayMemoryBudgetSaturated"]["expr"].rstrip().endswith("> 0.75")
    assert alerts["SpillwayMemoryBudgetSaturated"]["for"] == "30m"
