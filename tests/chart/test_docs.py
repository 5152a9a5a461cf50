"""The chart stays in step with its documentation, its schema and the server's settings."""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

import yaml

from conftest import (
    CHART,
    NEWEST_KUBE,
    PRESTOP_SLEEP_KUBE,
    REPO,
    Rendered,
    render,
    validate_manifest,
)

README = (CHART / "README.md").read_text()
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())

# Values holding a Kubernetes object passed through as it is: documented (and typed in the
# schema) as a whole, not field by field.
PASS_THROUGH = {"podSecurityContext", "securityContext", "resources", "strategy"}

ENV_ATTR = re.compile(r'env\s*=\s*"((?:SPILLWAY_)[A-Z0-9_]+)"')


def value_paths(node: Any, prefix: str = "") -> Iterator[tuple[str, bool]]:
    """Every key path in values.yaml, with whether it is a leaf (a setting a user sets)."""
    for key, child in node.items():
        path = f"{prefix}{key}"
        nested = isinstance(child, dict) and child and path not in PASS_THROUGH
        yield path, not nested
        if nested:
            yield from value_paths(child, path + ".")


def schema_paths(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, child in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        yield path
        if "properties" in child:
            yield from schema_paths(child, path + ".")


def test_every_value_is_documented_in_the_chart_readme():
    missing = [p for p, leaf in value_paths(VALUES) if leaf and f"`{p}`" not in README]
    assert missing == [], f"document these values in {CHART / 'README.md'}: {missing}"


def test_readme_documents_no_value_that_does_not_exist():
    paths = {p for p, _ in value_paths(VALUES)}
    # Table rows are "| `path` | ...".
    documented = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", README, re.M))
    assert documented, "no value table found"
    assert sorted(documented - paths) == []


def test_schema_and_values_have_the_same_keys():
    values = {p for p, _ in value_paths(VALUES)}
    schema = set(schema_paths(SCHEMA)) - {"global"}
    assert sorted(values - schema) == [], "values missing from values.schema.json"
    assert sorted(schema - values) == [], "schema properties missing from values.yaml"


def test_schema_is_strict():
    """Every object with declared properties rejects unknown keys."""

    def walk(node: dict[str, Any], path: str) -> Iterator[str]:
        if "properties" in node and node.get("additionalProperties") is not False:
            yield path or "/"
        for key, child in node.get("properties", {}).items():
            yield from walk(child, f"{path}/{key}")
        if isinstance(node.get("items"), dict):
            yield from walk(node["items"], f"{path}[]")

    assert list(walk(SCHEMA, "")) == []


def server_settings() -> set[str]:
    """SPILLWAY_* variables `spillway serve` reads: its settings (src/config.rs and
    src/config/, e.g. the security settings), the way it runs (src/serve.rs) and the storage
    backends' settings."""
    files = [REPO / "src" / "config.rs", REPO / "src" / "serve.rs"]
    files += sorted((REPO / "src" / "config").rglob("*.rs"))
    for backend in ("local", "s3", "gcs"):
        files += sorted((REPO / "storage-backends" / backend / "src").rglob("*.rs"))
    names: set[str] = set()
    for f in files:
        names |= set(ENV_ATTR.findall(f.read_text()))
    return names


def every_env_name_in_the_code() -> set[str]:
    names: set[str] = set()
    for root in (REPO / "src", REPO / "storage-backends"):
        for f in root.rglob("*.rs"):
            text = f.read_text()
            names |= set(ENV_ATTR.findall(text))
            names |= set(re.findall(r'"(SPILLWAY_[A-Z0-9_]+)"', text))
    return names


def renders_of_everything() -> list[Rendered]:
    """One render per storage kind with every setting (and every optional object) set."""
    everything = {
        "server": {
            "prefix": "/p",
            "thresholdBytes": 1,
            "compression": "none",
            "presignTtl": 1,
            "maxRequestBytes": 4096,
            "maxResponseBytes": 1,
            "maxExternalizedResponseBytes": 1,
            "uploadUrlTtl": 1,
            "methodTimeout": 1,
            "streamTokenTtl": 1,
            "demoMaxBlobBytes": 1,
            "reflection": False,
            "accessLog": False,
            "logLevel": "debug",
            "memoryLimit": "1GiB",
            "admissionTimeout": 1,
            "admissionQueue": 1,
            "maxConcurrentCalls": 1,
            "principalShare": 0.5,
            "maxConnections": 1,
            "headerTimeout": 1,
            "minBodyRate": 1,
            "bodyRateGrace": 1,
        },
        "signingSecret": {"existingSecret": "s", "previous": {"key": "p"}},
        "auth": {
            "mode": "bearer,jwt",
            "bearer": {"existingSecret": "t"},
            "jwt": {
                "jwksUrl": "https://issuer.example/jwks",
                "issuer": "https://issuer.example",
                "audience": ["a"],
                "principalClaim": "email",
                "leeway": 5,
                "jwksCAFile": "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
                "jwksTokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token",
            },
        },
        "authz": {"policy": 'default = "allow"'},
        "tls": {"existingSecret": "tls", "clientCA": {"existingSecret": "ca"}},
        "cors": {"origins": ["https://app.example"]},
        "storage": {
            "keyPrefix": "k/",
            "maxUploadBytes": 1,
            "local": {"retention": 1},
            "s3": {
                "endpoint": "http://e",
                "publicEndpoint": "http://p",
                "region": "r",
                "pathStyle": True,
                "sse": "aes256",
                "sseKmsKeyId": "k",
                "storageClass": "STANDARD",
                "multipartThreshold": 1,
                "partSize": 8388608,
                "uploadConcurrency": 2,
                "connectTimeout": 1,
                "requestTimeout": 1,
                "operationTimeout": 1,
                "credentialsRefreshMargin": 1,
                "credentials": {"existingSecret": "a", "sessionTokenKey": "t"},
            },
            "gcs": {
                "project": "p",
                "endpoint": "http://g",
                "publicEndpoint": "http://pg",
                "signingAccount": "a@b",
                "anonymous": True,
                "requestTimeout": 1,
                "operationTimeout": 1,
                "credentials": {"existingSecret": "g"},
            },
        },
    }
    optional = {
        "ingress": {"enabled": True, "tls": [{"hosts": ["spillway.example.com"], "secretName": "t"}]},
        "autoscaling": {"enabled": True},
        "podDisruptionBudget": {"enabled": True},
        "networkPolicy": {"enabled": True, "allowedClients": [{"podSelector": {}}], "egress": {"restrict": True}},
        "serviceMonitor": {"enabled": True},
        "preStopSleepSeconds": 3,
        "extraEnv": [{"name": "X", "value": "y"}],
    }
    renders = []
    for kind in ("local", "s3", "gcs"):
        storage = {**everything["storage"], "kind": kind, "bucket": "b"}
        if kind == "local":
            storage["local"] = {**storage["local"], "existingClaim": "shared"}
        renders.append(render({**everything, **optional, "storage": storage}))
    return renders


def chart_env_names() -> set[str]:
    """Every env name the chart can set."""
    names: set[str] = set()
    for r in renders_of_everything():
        names |= set(r.env())
    return names


def test_everything_at_once_validates():
    for r in renders_of_everything():
        assert r.kinds() == sorted(
            ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Ingress", "NetworkPolicy",
             "Pod", "PodDisruptionBudget", "Service", "ServiceAccount", "ServiceMonitor"]
        )
        for doc in r.docs:
            validate_manifest(doc, PRESTOP_SLEEP_KUBE)
            validate_manifest(doc, NEWEST_KUBE)


def test_chart_can_set_every_server_setting():
    missing = server_settings() - chart_env_names()
    assert sorted(missing) == [], (
        "spillway serve reads these variables but the chart cannot set them; add a value "
        "(templates/deployment.yaml, values.yaml, values.schema.json, README.md)"
    )


def test_chart_sets_only_variables_the_code_knows():
    unknown = {n for n in chart_env_names() if n.startswith("SPILLWAY_")} - every_env_name_in_the_code()
    assert sorted(unknown) == [], "the chart sets variables no code reads (a typo?)"


def test_repository_readme_lists_every_setting():
    """Every SPILLWAY_* variable a command reads (serve, call, storage init, the backends)
    is in a configuration table of the repository README."""
    readme = (REPO / "README.md").read_text()
    names: set[str] = set()
    for root in (REPO / "src", REPO / "storage-backends"):
        for f in root.rglob("*.rs"):
            names |= set(ENV_ATTR.findall(f.read_text()))
    assert len(names) > 50, "no settings found: did the clap attributes change shape?"
    rows = set(re.findall(r"^\| `(SPILLWAY_[A-Z0-9_]+)`", readme, re.M))
    missing = sorted(names - rows)
    assert missing == [], f"add these variables to a table in {REPO / 'README.md'}"
