"""What the chart renders for each security mode: authentication (bearer tokens, JWT), the
authorization policy, TLS and client certificates, CORS and the previous signing secret."""

from __future__ import annotations

import hashlib
import tomllib
from typing import Any

from conftest import (
    CHART,
    NEWEST_KUBE,
    Rendered,
    load_values,
    render,
    validate_manifest,
)

AUTH_DIR = "/var/run/secrets/spillway/auth"
TLS_DIR = "/var/run/secrets/spillway/tls"
CLIENT_CA_DIR = "/var/run/secrets/spillway/client-ca"
AUTHZ_DIR = "/etc/spillway/authz"
SECURITY_ENV = (
    "SPILLWAY_AUTH",
    "SPILLWAY_AUTHZ_FILE",
    "SPILLWAY_TLS_",
    "SPILLWAY_CORS_ORIGINS",
    "SPILLWAY_SIGNING_SECRET_PREVIOUS",
)
BEARER = {"auth": {"mode": "bearer", "bearer": {"existingSecret": "tokens"}}}
JWT = {
    "mode": "jwt",
    "jwt": {
        "jwksUrl": "https://issuer.example/jwks",
        "issuer": "https://issuer.example",
        "audience": ["spillway"],
    },
}


def ci(name: str) -> Rendered:
    return render(load_values(CHART / "ci" / name))


def secret_ref(name: str, key: str) -> dict[str, Any]:
    return {"secretKeyRef": {"name": name, "key": key}}


def probes(rendered: Rendered) -> dict[str, dict[str, Any]]:
    c = rendered.container()
    return {p: c[p]["httpGet"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}


def call_env(rendered: Rendered) -> dict[str, Any]:
    container = rendered.test_pod()["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def assert_mounted_as_directory(rendered: Rendered, path: str, volume: dict[str, Any]) -> None:
    """The file at `path` comes from a read-only mount of its directory (never subPath:
    Kubernetes does not update subPath mounts, so rotated tokens and renewed certificates
    would never reach the pod)."""
    directory, name = path.rsplit("/", 1)
    mount = rendered.mounts()[directory]
    assert mount["readOnly"] is True
    assert "subPath" not in mount
    assert rendered.volumes()[mount["name"]] == {"name": mount["name"], **volume}
    # The file name in the volume is the one the variable points at.
    source = volume.get("secret") or volume.get("configMap")
    assert [i["path"] for i in source["items"]].count(name) == 1


def test_no_security_settings_by_default():
    r = render()
    assert not [n for n in r.env() if n.startswith(SECURITY_ENV)]
    assert "ConfigMap" not in r.kinds()
    assert set(r.volumes()) == {"tmp", "objects"}
    for get in probes(r).values():
        assert "scheme" not in get
    assert r.env()["SPILLWAY_PUBLIC_URL"].startswith("http://")
    assert "env" not in r.test_pod()["spec"]["containers"][0]
    assert "auth.mode=none: anyone who reaches the Service" in r.notes


def test_bearer_tokens_authz_cors_and_rotation():
    r = ci("bearer-authz-values.yaml")
    env = r.env()
    assert env["SPILLWAY_AUTH"] == "bearer"
    assert env["SPILLWAY_AUTH_TOKENS_FILE"] == f"{AUTH_DIR}/tokens"
    assert_mounted_as_directory(
        r,
        env["SPILLWAY_AUTH_TOKENS_FILE"],
        {"secret": {"secretName": "spillway-tokens", "items": [{"key": "tokens", "path": "tokens"}]}},
    )
    assert not [n for n in env if n.startswith(("SPILLWAY_AUTH_JWKS", "SPILLWAY_AUTH_ISSUER", "SPILLWAY_TLS_"))]
    # Both signing secrets come from the Secret, never as plain values in the pod spec.
    assert env["SPILLWAY_SIGNING_SECRET"] == secret_ref("spillway-signing", "signing-secret")
    assert env["SPILLWAY_SIGNING_SECRET_PREVIOUS"] == secret_ref(
        "spillway-signing", "signing-secret-previous"
    )
    assert env["SPILLWAY_CORS_ORIGINS"] == "https://app.example.com,https://staging.app.example.com"

    # The policy: a ConfigMap holding exactly the values' text, mounted, and valid TOML.
    policy = load_values(CHART / "ci" / "bearer-authz-values.yaml")["authz"]["policy"]
    assert env["SPILLWAY_AUTHZ_FILE"] == f"{AUTHZ_DIR}/policy.toml"
    config_map = r.one("ConfigMap")
    assert config_map["metadata"]["name"] == "spillway-authz"
    assert config_map["data"] == {"policy.toml": policy}
    parsed = tomllib.loads(config_map["data"]["policy.toml"])
    assert parsed["default"] == "deny" and len(parsed["rule"]) == 2
    assert_mounted_as_directory(
        r,
        env["SPILLWAY_AUTHZ_FILE"],
        {"configMap": {"name": "spillway-authz", "items": [{"key": "policy.toml", "path": "policy.toml"}]}},
    )
    annotations = r.deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/authz"] == hashlib.sha256(policy.encode()).hexdigest()

    # The test call sends a token from its Secret.
    assert call_env(r) == {"SPILLWAY_TOKEN": secret_ref("spillway-test-token", "token")}
    assert "Authentication: bearer; authorization policy from ConfigMap spillway-authz." in r.notes
    assert "--token-file" in r.notes


def test_a_changed_policy_rolls_the_pods():
    def checksum(policy: str) -> str:
        r = render({**BEARER, "authz": {"policy": policy}})
        return r.deployment()["spec"]["template"]["metadata"]["annotations"]["checksum/authz"]

    assert checksum('default = "deny"') != checksum('default = "allow"')
    # Other pod annotations stay.
    r = render({**BEARER, "authz": {"policy": "x = 1"}, "podAnnotations": {"a": "b"}})
    annotations = r.deployment()["spec"]["template"]["metadata"]["annotations"]
    assert set(annotations) == {"checksum/authz", "a"}


def test_policy_from_an_existing_config_map():
    r = render({**BEARER, "authz": {"existingConfigMap": "my-policy", "key": "rules.toml"}})
    assert "ConfigMap" not in r.kinds()
    assert r.env()["SPILLWAY_AUTHZ_FILE"] == f"{AUTHZ_DIR}/rules.toml"
    assert_mounted_as_directory(
        r,
        r.env()["SPILLWAY_AUTHZ_FILE"],
        {"configMap": {"name": "my-policy", "items": [{"key": "rules.toml", "path": "rules.toml"}]}},
    )
    assert "annotations" not in r.deployment()["spec"]["template"]["metadata"]


def test_kubernetes_service_account_tokens():
    r = ci("jwt-serviceaccount-values.yaml")
    env = r.env()
    assert env["SPILLWAY_AUTH"] == "jwt"
    assert env["SPILLWAY_AUTH_JWKS_URL"] == "https://kubernetes.default.svc.cluster.local/openid/v1/jwks"
    assert env["SPILLWAY_AUTH_ISSUER"] == "https://kubernetes.default.svc.cluster.local"
    assert env["SPILLWAY_AUTH_AUDIENCE"] == "spillway"
    assert env["SPILLWAY_AUTH_PRINCIPAL_CLAIM"] == "sub"
    assert env["SPILLWAY_AUTH_LEEWAY"] == "30"
    assert "SPILLWAY_AUTH_TOKENS_FILE" not in env
    assert env["SPILLWAY_AUTHZ_FILE"] == f"{AUTHZ_DIR}/policy.toml"
    assert r.volumes()["authz"]["configMap"]["name"] == "spillway-policy"
    # The API server's JWKS is fetched with the cluster CA and the server pod's own token,
    # which is why this example automounts it.
    assert env["SPILLWAY_AUTH_JWKS_CA"] == "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    assert env["SPILLWAY_AUTH_JWKS_TOKEN_FILE"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert r.pod_spec()["automountServiceAccountToken"] is True

    # The test pod sends a projected token for the audience, re-read from its file.
    pod = r.test_pod()["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert call_env(r) == {"SPILLWAY_TOKEN_FILE": "/var/run/secrets/spillway/token/token"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["token"]["projected"]["sources"] == [
        {"serviceAccountToken": {"audience": "spillway", "expirationSeconds": 3600, "path": "token"}}
    ]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/var/run/secrets/spillway/token"] == {
        "name": "token",
        "mountPath": "/var/run/secrets/spillway/token",
        "readOnly": True,
    }


def test_jwt_defaults_are_left_to_the_server():
    env = render({"auth": JWT}).env()
    assert env["SPILLWAY_AUTH"] == "jwt"
    assert "SPILLWAY_AUTH_PRINCIPAL_CLAIM" not in env
    assert "SPILLWAY_AUTH_LEEWAY" not in env
    # leeway 0 is a setting, not "unset".
    assert render({"auth": {**JWT, "jwt": {**JWT["jwt"], "leeway": 0}}}).env()[
        "SPILLWAY_AUTH_LEEWAY"
    ] == "0"


def test_settings_of_modes_not_selected_are_not_passed():
    """Leftover JWT values do not reach a bearer-only server (it would refuse to start with
    settings it does not use), nor bearer values a JWT-only one."""
    env = render({"auth": {**BEARER["auth"], "jwt": JWT["jwt"]}}).env()
    assert not [n for n in env if n.startswith(("SPILLWAY_AUTH_JWKS", "SPILLWAY_AUTH_ISSUER", "SPILLWAY_AUTH_AUDIENCE"))]
    r = render({"auth": {**JWT, "bearer": {"existingSecret": "tokens"}}})
    assert "SPILLWAY_AUTH_TOKENS_FILE" not in r.env()
    assert "auth-tokens" not in r.volumes()


def test_oidc_bearer_tls_and_client_certificates():
    r = ci("oidc-tls-values.yaml")
    env = r.env()
    assert env["SPILLWAY_AUTH"] == "bearer,jwt"
    assert env["SPILLWAY_AUTH_TOKENS_FILE"] == f"{AUTH_DIR}/tokens"
    assert env["SPILLWAY_AUTH_JWKS_URL"] == "https://login.example.com/.well-known/jwks.json"
    assert env["SPILLWAY_AUTH_ISSUER"] == "https://login.example.com/"
    assert env["SPILLWAY_AUTH_AUDIENCE"] == "api://spillway,spillway-cli"
    assert env["SPILLWAY_AUTH_PRINCIPAL_CLAIM"] == "email"

    assert env["SPILLWAY_TLS_CERT"] == f"{TLS_DIR}/tls.crt"
    assert env["SPILLWAY_TLS_KEY"] == f"{TLS_DIR}/tls.key"
    tls_volume = {
        "secret": {
            "secretName": "spillway-tls",
            "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}],
        }
    }
    assert_mounted_as_directory(r, env["SPILLWAY_TLS_CERT"], tls_volume)
    assert_mounted_as_directory(r, env["SPILLWAY_TLS_KEY"], tls_volume)
    assert env["SPILLWAY_TLS_CLIENT_CA"] == f"{CLIENT_CA_DIR}/ca.crt"
    assert_mounted_as_directory(
        r,
        env["SPILLWAY_TLS_CLIENT_CA"],
        {"configMap": {"name": "spillway-client-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    )

    # HTTPS everywhere: probes and the scrape (on the RPC port: admin.enabled=false), the
    # URLs handed out, the test call.
    for name, get in probes(r).items():
        assert get["scheme"] == "HTTPS", name
        assert get["port"] == "http"
    assert env["SPILLWAY_PUBLIC_URL"] == "https://spillway.spillway.svc.cluster.local:8080"
    args = r.test_pod()["spec"]["containers"][0]["args"]
    assert args[args.index("--url") + 1] == "https://spillway.spillway.svc.cluster.local:8080"
    endpoint = r.one("ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {
        "ca": {"secret": {"name": "spillway-tls", "key": "ca.crt"}},
        "serverName": "spillway.spillway.svc",
    }
    assert call_env(r) == {"SPILLWAY_TOKEN": secret_ref("spillway-test-token", "token")}
    assert "curl --insecure https://127.0.0.1:8080/readyz" in r.notes
    assert "Authentication: bearer,jwt, client certificates;" in r.notes


def test_tls_leaves_the_admin_port_plain():
    """TLS covers the RPC listener: the admin listener (probes, metrics) stays plain HTTP, so
    the probes and the scrape there keep the http scheme."""
    r = render({"tls": {"existingSecret": "t"}, "serviceMonitor": {"enabled": True}})
    for get in probes(r).values():
        assert get == {"path": get["path"], "port": "admin"}
    assert r.one("ServiceMonitor")["spec"]["endpoints"][0]["scheme"] == "http"
    assert r.env()["SPILLWAY_PUBLIC_URL"].startswith("https://")
    assert "curl http://127.0.0.1:9090/readyz" in r.notes
    assert "SPILLWAY_TLS_CLIENT_CA" not in r.env()
    assert "client-ca" not in r.volumes()
    # TLS alone authenticates no one.
    assert "SPILLWAY_AUTH" not in r.env()
    validate_manifest(r.deployment(), NEWEST_KUBE)


def test_client_certificates_alone_authenticate_and_admit_a_policy():
    values = {
        "tls": {"existingSecret": "t", "clientCA": {"existingSecret": "ca", "key": "bundle.pem"}},
        "authz": {"policy": 'default = "deny"'},
    }
    r = render(values)
    env = r.env()
    assert "SPILLWAY_AUTH" not in env
    assert env["SPILLWAY_TLS_CLIENT_CA"] == f"{CLIENT_CA_DIR}/bundle.pem"
    assert_mounted_as_directory(
        r,
        env["SPILLWAY_TLS_CLIENT_CA"],
        {"secret": {"secretName": "ca", "items": [{"key": "bundle.pem", "path": "bundle.pem"}]}},
    )
    assert env["SPILLWAY_AUTHZ_FILE"] == f"{AUTHZ_DIR}/policy.toml"
    assert "client certificates signed by the CA in tls.clientCA" in r.notes


def test_previous_signing_secret_from_another_secret():
    r = render(
        {"signingSecret": {"existingSecret": "new", "previous": {"existingSecret": "old", "key": "s"}}}
    )
    env = r.env()
    assert env["SPILLWAY_SIGNING_SECRET"] == secret_ref("new", "signing-secret")
    assert env["SPILLWAY_SIGNING_SECRET_PREVIOUS"] == secret_ref("old", "s")
    # Without a previous key there is no previous secret.
    assert "SPILLWAY_SIGNING_SECRET_PREVIOUS" not in render(
        {"signingSecret": {"existingSecret": "new", "previous": {"existingSecret": "old"}}}
    ).env()


def test_no_secret_is_ever_an_inline_value():
    """Secrets reach the pod only by reference: no env value holds a token, a key or a
    signing secret, whatever the mode."""
    for values in (
        load_values(CHART / "ci" / "bearer-authz-values.yaml"),
        load_values(CHART / "ci" / "oidc-tls-values.yaml"),
        load_values(CHART / "ci" / "jwt-serviceaccount-values.yaml"),
    ):
        r = render(values)
        for name, value in r.env().items():
            if name.startswith("SPILLWAY_SIGNING_SECRET") or name == "SPILLWAY_TOKEN":
                assert "secretKeyRef" in value, name
        assert "Secret" not in r.kinds()
