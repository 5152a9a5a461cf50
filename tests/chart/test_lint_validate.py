"""The chart lints strictly and every manifest it renders is valid Kubernetes, for the default
values and every values file in charts/spillway/ci/."""

from __future__ import annotations

import copy
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest

from conftest import (
    CHART,
    CI_VALUES,
    NEWEST_KUBE,
    OLDEST_KUBE,
    PRESTOP_SLEEP_KUBE,
    load_values,
    render,
    validate_manifest,
)

CASES = [None, *CI_VALUES]
IDS = ["defaults", *(p.name for p in CI_VALUES)]


def test_ci_values_files_exist():
    names = {p.name for p in CI_VALUES}
    for expected in (
        "local-values.yaml",
        "s3-irsa-values.yaml",
        "gcs-workload-identity-values.yaml",
        "gcs-key-file-values.yaml",
        "minio-values.yaml",
        "hpa-pdb-netpol-values.yaml",
        "bearer-authz-values.yaml",
        "jwt-serviceaccount-values.yaml",
        "oidc-tls-values.yaml",
    ):
        assert expected in names


@pytest.mark.parametrize("values_file", CASES, ids=IDS)
def test_lint_strict(values_file: Path | None):
    values = load_values(values_file) if values_file else None
    report = helm.lint(CHART, values, strict=True)
    assert report["total_charts_linted"] == 1
    # Severity 1 is informational ("icon is recommended"); warnings and errors fail.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [] and report["errors"] == []


@pytest.mark.parametrize("values_file", CASES, ids=IDS)
def test_every_manifest_validates(values_file: Path | None):
    values = load_values(values_file) if values_file else {}
    rendered = render(values)
    assert rendered.docs, "nothing rendered"
    oldest = PRESTOP_SLEEP_KUBE if values.get("preStopSleepSeconds") else OLDEST_KUBE
    for doc in rendered.docs:
        for version in (oldest, NEWEST_KUBE):
            validate_manifest(doc, version)
    # Every object is namespaced to the release namespace, except a ServiceMonitor that
    # was asked to live elsewhere.
    for doc in rendered.docs:
        if doc["kind"] != "ServiceMonitor":
            assert doc["metadata"]["namespace"] == "spillway"


def test_kubernetes_validate_is_strict_and_offline():
    """The validator really rejects an unknown field and a wrong type (a vacuous validator
    would make every test above pass)."""
    deployment = render().deployment()
    validate_manifest(deployment, NEWEST_KUBE)
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_manifest(typo, NEWEST_KUBE)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_manifest(wrong_type, NEWEST_KUBE)


def test_prestop_sleep_needs_kubernetes_1_30():
    """Why s3-irsa-values.yaml is validated from 1.30 (where the sleep action is on by
    default): 1.28 does not know it."""
    values = load_values(CHART / "ci" / "s3-irsa-values.yaml")
    deployment = render(values).deployment()
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_manifest(deployment, "1.28")
    validate_manifest(deployment, PRESTOP_SLEEP_KUBE)


def test_service_monitor_schema_rejects_typos():
    values = load_values(CHART / "ci" / "hpa-pdb-netpol-values.yaml")
    monitor = render(values).one("ServiceMonitor")
    validate_manifest(monitor, NEWEST_KUBE)
    typo = copy.deepcopy(monitor)
    typo["spec"]["endpoints"][0]["prot"] = "admin"
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(typo, NEWEST_KUBE)
