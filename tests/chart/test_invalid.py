"""Values the chart must refuse, with a message that says what to change: combinations (the
templates' `fail`) and schema violations (values.schema.json)."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from conftest import CHART, render, render_error

SIGNING = {"signingSecret": {"existingSecret": "spillway-signing"}}
JWT_OK = {"jwksUrl": "https://issuer.example/jwks", "issuer": "https://issuer.example", "audience": ["spillway"]}


def test_local_store_with_two_replicas_needs_a_shared_claim():
    message = render_error({"replicaCount": 2, **SIGNING})
    assert "storage.kind=local" in message and "storage.local.existingClaim" in message
    # With a shared claim the same values render.
    r = render({"replicaCount": 2, **SIGNING, "storage": {"local": {"existingClaim": "shared"}}})
    assert r.deployment()["spec"]["replicas"] == 2


def test_local_store_with_autoscaling_needs_a_shared_claim():
    message = render_error({"autoscaling": {"enabled": True}, **SIGNING})
    assert "storage.local.existingClaim" in message


def test_replicas_need_a_shared_signing_secret():
    # Cloud storage too: stream state tokens must validate on every replica.
    message = render_error({"replicaCount": 3, "storage": {"kind": "s3", "bucket": "b"}})
    assert "signingSecret.existingSecret" in message
    message = render_error(
        {"autoscaling": {"enabled": True}, "storage": {"kind": "gcs", "bucket": "b"}}
    )
    assert "signingSecret.existingSecret" in message


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_cloud_storage_needs_a_bucket(kind: str):
    assert f"storage.bucket is required when storage.kind is {kind}" in render_error(
        {"storage": {"kind": kind}}
    )


def test_termination_grace_must_exceed_shutdown_grace():
    message = render_error({"terminationGracePeriodSeconds": 25})
    assert "terminationGracePeriodSeconds (25) must exceed" in message
    message = render_error({"terminationGracePeriodSeconds": 30, "preStopSleepSeconds": 5})
    assert "(30)" in message
    assert render({"terminationGracePeriodSeconds": 26}).pod_spec()[
        "terminationGracePeriodSeconds"
    ] == 26


def test_authenticated_metrics_are_scraped_from_the_admin_port():
    values = {
        "auth": {"mode": "bearer", "bearer": {"existingSecret": "tokens"}},
        "serviceMonitor": {"enabled": True},
    }
    message = render_error({**values, "admin": {"enabled": False}})
    assert "needs serviceMonitor.authorization" in message
    render(values)  # the admin port (the default) serves them without a credential
    token = {"type": "Bearer", "credentials": {"name": "scrape-token", "key": "token"}}
    r = render({**values, "admin": {"enabled": False},
                "serviceMonitor": {"enabled": True, "authorization": token}})
    assert r.one("ServiceMonitor")["spec"]["endpoints"][0]["authorization"] == token


def test_other_combinations():
    assert "admin.port must differ" in render_error({"admin": {"port": 8080}})
    assert "minReplicas must not exceed" in render_error(
        {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}, **SIGNING,
         "storage": {"kind": "s3", "bucket": "b"}}
    )
    assert "targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" in render_error(
        {"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}, **SIGNING,
         "storage": {"kind": "s3", "bucket": "b"}}
    )
    assert "set minAvailable or maxUnavailable" in render_error(
        {"podDisruptionBudget": {"enabled": True, "maxUnavailable": None}}
    )


SCHEMA_VIOLATIONS: list[tuple[dict[str, Any], str]] = [
    ({"replicas": 2}, "replicas"),  # unknown top-level key (replicaCount is meant)
    ({"storage": {"s3": {"endpont": "http://minio:9000"}}}, "endpont"),  # typo
    ({"storage": {"kind": "azure"}}, "/storage/kind"),
    ({"server": {"compression": "gzip"}}, "/server/compression"),
    ({"server": {"compression": "zstd:23"}}, "/server/compression"),
    ({"server": {"logFormat": "xml"}}, "/server/logFormat"),
    ({"server": {"thresholdBytes": "1MiB"}}, "/server/thresholdBytes"),
    ({"server": {"maxRequestBytes": 1024}}, "/server/maxRequestBytes"),
    ({"server": {"port": 70000}}, "/server/port"),
    ({"server": {"publicUrl": "rpc.example.com"}}, "/server/publicUrl"),
    ({"replicaCount": -1}, "/replicaCount"),
    ({"storage": {"local": {"dir": "relative/dir"}}}, "/storage/local/dir"),
    ({"storage": {"s3": {"pathStyle": "yes"}}}, "/storage/s3/pathStyle"),
    ({"storage": {"s3": {"sse": "AES-256"}}}, "/storage/s3/sse"),
    ({"storage": {"s3": {"uploadConcurrency": 65}}}, "/storage/s3/uploadConcurrency"),
    ({"storage": {"s3": {"partSize": 1048576}}}, "/storage/s3/partSize"),
    ({"serviceAccount": {"awsRoleArn": "spillway-role"}}, "/serviceAccount/awsRoleArn"),
    ({"podDisruptionBudget": {"minAvailable": "half"}}, "/podDisruptionBudget/minAvailable"),
    ({"serviceMonitor": {"interval": "30 seconds"}}, "/serviceMonitor/interval"),
    ({"image": {"digest": "latest"}}, "/image/digest"),
    # Security modes: each needs what it names, and only known modes exist.
    ({"auth": {"mode": "basic"}}, "/auth/mode"),
    ({"auth": {"mode": "bearer"}}, "/auth/bearer/existingSecret"),
    ({"auth": {"mode": "bearer,jwt", "jwt": JWT_OK}}, "/auth/bearer/existingSecret"),
    ({"auth": {"mode": "jwt"}}, "/auth/jwt/jwksUrl"),
    ({"auth": {"mode": "jwt", "jwt": {**JWT_OK, "issuer": ""}}}, "/auth/jwt/issuer"),
    ({"auth": {"mode": "jwt", "jwt": {**JWT_OK, "audience": []}}}, "/auth/jwt/audience"),
    ({"auth": {"mode": "jwt", "jwt": {**JWT_OK, "audience": ["a,b"]}}}, "/auth/jwt/audience/0"),
    ({"auth": {"mode": "jwt", "jwt": {**JWT_OK, "jwksUrl": "issuer.example/jwks"}}}, "/auth/jwt/jwksUrl"),
    ({"auth": {"mode": "jwt", "jwt": {**JWT_OK, "leeway": -1}}}, "/auth/jwt/leeway"),
    ({"auth": {"mode": "jwt", "jwt": {**JWT_OK, "leeway": 601}}}, "/auth/jwt/leeway"),
    ({"auth": {"bearer": {"existingSecret": "t", "key": "../tokens"}}}, "/auth/bearer/key"),
    ({"tls": {"clientCA": {"existingSecret": "ca"}}}, "/tls/existingSecret"),
    ({"tls": {"clientCA": {"existingConfigMap": "ca"}}}, "/tls/existingSecret"),
    (
        {"tls": {"existingSecret": "t", "clientCA": {"existingSecret": "a", "existingConfigMap": "b"}}},
        "/tls/clientCA/existingConfigMap",
    ),
    ({"authz": {"policy": 'default = "deny"'}}, "/auth/mode"),  # nobody to authorize
    ({"authz": {"existingConfigMap": "policy"}}, "/tls/clientCA"),
    (
        {"authz": {"policy": "x", "existingConfigMap": "y"}, "auth": {"mode": "bearer", "bearer": {"existingSecret": "t"}}},
        "/authz/existingConfigMap",
    ),
    ({"signingSecret": {"previous": {"key": "old"}}}, "/signingSecret/existingSecret"),
    ({"cors": {"origins": ["app.example.com"]}}, "/cors/origins/0"),
    ({"cors": {"origins": ["https://app.example.com/"]}}, "/cors/origins/0"),
    ({"cors": {"origins": "https://app.example.com"}}, "/cors/origins"),
    ({"tests": {"token": {"existingSecret": "a"}, "serviceAccountTokenAudience": "b"}}, "/tests/serviceAccountTokenAudience"),
]


@pytest.mark.parametrize(
    "values,where", SCHEMA_VIOLATIONS, ids=[w for _, w in SCHEMA_VIOLATIONS]
)
def test_schema_violations_are_refused(values: dict[str, Any], where: str):
    with pytest.raises(helm.HelmValuesError) as info:
        render(values)
    assert where in str(info.value)
    # `helm lint` reports the same violation as an error.
    report = helm.lint(CHART, values, strict=True)
    assert any(where in e for e in report["errors"]), report


@pytest.mark.parametrize("compression", ["zstd", "none", "zstd:1", "zstd:22"])
def test_every_compression_setting_is_accepted(compression: str):
    env = render({"server": {"compression": compression}}).env()
    assert env["SPILLWAY_COMPRESSION"] == compression
