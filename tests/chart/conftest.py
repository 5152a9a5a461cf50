"""Helpers for the Helm chart tests: render charts/spillway offline with the Helm 4 SDK
(helm-python-sdk) and validate what comes out against Kubernetes' schemas
(kubernetes-validate, which ships them: no network, no cluster).

Run through scripts/test.d/50-chart.check.sh, which installs the pinned tools.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "spillway"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
RELEASE = "spillway"
NAMESPACE = "spillway"

# Kubernetes versions manifests are validated against: the oldest the chart supports
# (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
OLDEST_KUBE = "1.25"
NEWEST_KUBE = kubernetes_validate.utils.latest_version()
# The preStop sleep action (preStopSleepSeconds > 0) exists from this version on.
PRESTOP_SLEEP_KUBE = "1.30"

SERVICE_MONITOR_SCHEMA = json.loads(
    (Path(__file__).parent / "servicemonitor.schema.json").read_text()
)
# The part of monitoring.coreos.com/v1 PrometheusRule the chart writes (alerting rules).
PROMETHEUS_RULE_SCHEMA = json.loads(
    (Path(__file__).parent / "prometheusrule.schema.json").read_text()
)


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge (what `helm -f a.yaml -f b.yaml` does for maps)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class Rendered:
    """The manifests of one render, parsed, with lookups by kind."""

    def __init__(self, files: dict[str, str]):
        self.files = files
        self.notes = files.get("spillway/templates/NOTES.txt", "")
        self.docs: list[dict[str, Any]] = []
        for name, text in sorted(files.items()):
            if name.endswith("NOTES.txt"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    self.docs.append(doc)

    def kinds(self) -> list[str]:
        return sorted(d["kind"] for d in self.docs)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)}: {self.kinds()}"
        return found[0]

    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    def pod_spec(self) -> dict[str, Any]:
        return self.deployment()["spec"]["template"]["spec"]

    def container(self) -> dict[str, Any]:
        containers = self.pod_spec()["containers"]
        assert [c["name"] for c in containers] == ["spillway"]
        return containers[0]

    def env(self) -> dict[str, Any]:
        """Container env by name: the plain value, or the valueFrom dict."""
        out: dict[str, Any] = {}
        for e in self.container().get("env", []):
            assert e["name"] not in out, f"{e['name']} is set twice"
            out[e["name"]] = e["value"] if "value" in e else e["valueFrom"]
        return out

    def volumes(self) -> dict[str, dict[str, Any]]:
        return {v["name"]: v for v in self.pod_spec().get("volumes", [])}

    def mounts(self) -> dict[str, dict[str, Any]]:
        return {m["mountPath"]: m for m in self.container().get("volumeMounts", [])}

    def test_pod(self) -> dict[str, Any]:
        pods = [
            d
            for d in self.all("Pod")
            if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"
        ]
        assert len(pods) == 1
        return pods[0]


def render(values: dict[str, Any] | None = None, **opts: Any) -> Rendered:
    opts.setdefault("name", RELEASE)
    opts.setdefault("namespace", NAMESPACE)
    with helm.Chart.load(CHART) as chart:
        return Rendered(chart.render(values or {}, **opts))


def render_error(values: dict[str, Any]) -> str:
    """Renders values the templates must refuse (`fail`); returns the error text."""
    with pytest.raises(helm.HelmRenderError) as info:
        render(values)
    return str(info.value)


def validate_manifest(doc: dict[str, Any], kube_version: str) -> None:
    """Strict schema validation: unknown fields and wrong types fail."""
    if doc["kind"] == "ServiceMonitor":
        jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
        return
    if doc["kind"] == "PrometheusRule":
        jsonschema.validate(doc, PROMETHEUS_RULE_SCHEMA)
        return
    kubernetes_validate.validate(doc, kube_version, strict=True)
