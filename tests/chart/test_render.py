"""What the chart renders for each scenario: environment, probes, security settings, volumes
and the optional objects."""

from __future__ import annotations

from typing import Any

from conftest import (
    CHART,
    NEWEST_KUBE,
    Rendered,
    load_values,
    merge,
    render,
    validate_manifest,
)

SERVICE_URL = "http://spillway.spillway.svc.cluster.local:8080"
GCS_KEY_DIR = "/var/run/secrets/spillway/gcs"


def ci(name: str) -> Rendered:
    return render(load_values(CHART / "ci" / name))


def secret_ref(name: str, key: str) -> dict[str, Any]:
    return {"secretKeyRef": {"name": name, "key": key}}


def assert_hardened(rendered: Rendered) -> None:
    """Non-root, read-only root filesystem, no capabilities, RuntimeDefault seccomp, and
    writable emptyDir /tmp; for the server and the test pod alike."""
    pod = rendered.pod_spec()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    # Service links would put SPILLWAY_SERVICE_HOST & co. into the server's env namespace.
    assert pod["enableServiceLinks"] is False
    sc = rendered.container()["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert rendered.mounts()["/tmp"]["name"] == "tmp"
    assert "emptyDir" in rendered.volumes()["tmp"]

    test_pod = rendered.test_pod()["spec"]
    assert test_pod["securityContext"]["runAsNonRoot"] is True
    test_sc = test_pod["containers"][0]["securityContext"]
    assert test_sc["readOnlyRootFilesystem"] is True
    assert test_sc["capabilities"] == {"drop": ["ALL"]}


def assert_probes(rendered: Rendered, port: str) -> None:
    c = rendered.container()
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": port}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert c["startupProbe"]["httpGet"] == {"path": "/livez", "port": port}
    assert port in {p["name"] for p in c["ports"]}


def assert_grace(rendered: Rendered) -> None:
    env = rendered.env()
    grace = int(env["SPILLWAY_SHUTDOWN_GRACE"])
    sleep = (
        rendered.container().get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    )
    assert rendered.pod_spec()["terminationGracePeriodSeconds"] > grace + sleep


def test_server_id_is_the_pod_name_unless_set():
    env = render({"server": {"serverId": "edge-1", "accessLog": False}}).env()
    assert env["SPILLWAY_SERVER_ID"] == "edge-1"
    assert env["SPILLWAY_ACCESS_LOG"] == "false"
    assert "SPILLWAY_ACCESS_LOG" not in render().env()


def test_defaults():
    r = render()
    assert r.kinds() == ["Deployment", "Pod", "Service", "ServiceAccount"]
    env = r.env()
    assert env == {
        "SPILLWAY_LISTEN": "0.0.0.0:8080",
        "SPILLWAY_ADMIN_LISTEN": "0.0.0.0:9090",
        "SPILLWAY_PUBLIC_URL": SERVICE_URL,
        "SPILLWAY_SHUTDOWN_GRACE": "25",
        "SPILLWAY_LOG_FORMAT": "json",
        "SPILLWAY_MEMORY_LIMIT": "70%",
        # The budget follows the container's memory limit.
        "SPILLWAY_CONTAINER_MEMORY": {
            "resourceFieldRef": {"containerName": "spillway", "resource": "limits.memory"}
        },
        "SPILLWAY_STORAGE": "local",
        "SPILLWAY_LOCAL_DIR": "/var/lib/spillway/objects",
        # Each replica names itself after its pod.
        "SPILLWAY_SERVER_ID": {"fieldRef": {"fieldPath": "metadata.name"}},
    }
    assert r.container()["resources"]["limits"]["memory"] == "2Gi"
    c = r.container()
    assert c["args"] == ["serve"]
    assert c["image"] == "spillway:0.1.0"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8080, "admin": 9090}
    assert_probes(r, "admin")
    assert_hardened(r)
    assert_grace(r)
    assert r.pod_spec()["terminationGracePeriodSeconds"] == 30
    # The local store lives on an emptyDir at SPILLWAY_LOCAL_DIR.
    assert r.mounts()["/var/lib/spillway/objects"]["name"] == "objects"
    assert r.volumes()["objects"] == {"name": "objects", "emptyDir": {}}
    assert r.deployment()["spec"]["replicas"] == 1

    service = r.one("Service")["spec"]
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["ports"]} == {
        "http": (8080, "http"),
        "admin": (9090, "admin"),
    }
    assert service["selector"] == r.deployment()["spec"]["selector"]["matchLabels"]
    sa = r.one("ServiceAccount")
    assert "annotations" not in sa["metadata"]
    assert r.pod_spec()["serviceAccountName"] == sa["metadata"]["name"] == "spillway"

    test_args = r.test_pod()["spec"]["containers"][0]["args"]
    assert test_args == ["call", "--url", SERVICE_URL, "spillway.Demo.v1.blob", "size=1048577"]

    assert "port-forward service/spillway" in r.notes
    assert "spillway call --url http://127.0.0.1:8080" in r.notes
    assert "helm test spillway" in r.notes
    assert "random secret" in r.notes


def test_local_values_map_every_server_setting():
    r = ci("local-values.yaml")
    env = r.env()
    expected = {
        "SPILLWAY_PREFIX": "/vgi",
        "SPILLWAY_THRESHOLD_BYTES": "2097152",
        "SPILLWAY_COMPRESSION": "zstd:6",
        "SPILLWAY_PRESIGN_TTL": "900",
        "SPILLWAY_MAX_REQUEST_BYTES": "8388608",
        "SPILLWAY_MAX_RESPONSE_BYTES": "16777216",
        # Above 2^32 and printed whole, not as 1.7179869184e+10.
        "SPILLWAY_MAX_EXTERNALIZED_RESPONSE_BYTES": "17179869184",
        "SPILLWAY_UPLOAD_URL_TTL": "1800",
        "SPILLWAY_METHOD_TIMEOUT": "300",
        "SPILLWAY_DEMO_MAX_BLOB_BYTES": "104857600",
        "SPILLWAY_LOG_FORMAT": "text",
        "RUST_LOG": "spillway=debug,info",
        "SPILLWAY_STORAGE": "local",
        "SPILLWAY_KEY_PREFIX": "results/",
        "SPILLWAY_MAX_UPLOAD_BYTES": "1073741824",
        "SPILLWAY_LOCAL_DIR": "/var/lib/spillway/objects",
        "SPILLWAY_LOCAL_RETENTION": "3600",
        "SPILLWAY_SIGNING_SECRET": secret_ref("spillway-signing", "signing-secret"),
        "SPILLWAY_MEMORY_LIMIT": "1GiB",
        # Fractions stay fractions; whole numbers print without ".0".
        "SPILLWAY_ADMISSION_TIMEOUT": "2.5",
        "SPILLWAY_ADMISSION_QUEUE": "256",
        "SPILLWAY_MAX_CONCURRENT_CALLS": "64",
        "SPILLWAY_PRINCIPAL_SHARE": "0.25",
        "SPILLWAY_MAX_CONNECTIONS": "1000",
        "SPILLWAY_HEADER_TIMEOUT": "10",
        "SPILLWAY_MIN_BODY_RATE": "4096",
        "SPILLWAY_BODY_RATE_GRACE": "5",
    }
    for name, value in expected.items():
        assert env[name] == value, name
    assert "SPILLWAY_BUCKET" not in env
    assert not [n for n in env if n.startswith(("SPILLWAY_S3_", "SPILLWAY_GCS_", "AWS_"))]
    assert r.container()["image"] == "registry.example.com/spillway:0.1.0"
    assert r.volumes()["objects"]["emptyDir"] == {"sizeLimit": "20Gi"}
    assert r.volumes()["tmp"]["emptyDir"] == {"sizeLimit": "1Gi"}
    # The test pod calls under the prefix, for one byte more than the threshold.
    args = r.test_pod()["spec"]["containers"][0]["args"]
    assert args[-2:] == ["spillway.Demo.v1.blob", "size=2097153"]
    assert args[args.index("--prefix") + 1] == "/vgi"
    assert f"In-cluster URL: {SERVICE_URL}/vgi" in r.notes
    assert "random secret" not in r.notes
    assert_hardened(r)


def test_s3_irsa():
    r = ci("s3-irsa-values.yaml")
    sa = r.one("ServiceAccount")
    assert sa["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/spillway"
    }
    env = r.env()
    assert env["SPILLWAY_STORAGE"] == "s3"
    assert env["SPILLWAY_BUCKET"] == "my-spillway-results"
    assert env["SPILLWAY_S3_REGION"] == "eu-west-1"
    assert env["SPILLWAY_S3_SSE"] == "aws:kms"
    assert env["SPILLWAY_S3_SSE_KMS_KEY_ID"].startswith("arn:aws:kms:")
    assert env["SPILLWAY_S3_STORAGE_CLASS"] == "INTELLIGENT_TIERING"
    assert env["SPILLWAY_S3_PART_SIZE"] == "16777216"
    assert env["SPILLWAY_S3_UPLOAD_CONCURRENCY"] == "8"
    assert env["SPILLWAY_SIGNING_SECRET"] == secret_ref("spillway-signing", "signing-secret")
    # IRSA: no static credentials, no local store.
    assert not [n for n in env if n.startswith("AWS_")]
    assert "SPILLWAY_LOCAL_DIR" not in env and "objects" not in r.volumes()
    # Behind the TLS ingress, local links and the public URL use its https host.
    assert env["SPILLWAY_PUBLIC_URL"] == "https://spillway.example.com"
    assert r.deployment()["spec"]["replicas"] == 2
    assert r.container()["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert r.pod_spec()["terminationGracePeriodSeconds"] == 35
    assert_grace(r)
    assert_probes(r, "admin")
    assert_hardened(r)

    ingress = r.one("Ingress")["spec"]
    assert ingress["ingressClassName"] == "nginx"
    assert ingress["tls"] == [{"hosts": ["spillway.example.com"], "secretName": "spillway-tls"}]
    backend = ingress["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "spillway", "port": {"name": "http"}}
    assert r.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    monitor = r.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["port"] == "admin"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert "namespaceSelector" not in monitor["spec"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= r.one("Service")["metadata"][
        "labels"
    ].items()


def test_gcs_workload_identity():
    r = ci("gcs-workload-identity-values.yaml")
    assert r.one("ServiceAccount")["metadata"]["annotations"] == {
        "iam.gke.io/gcp-service-account": "spillway@my-project.iam.gserviceaccount.com"
    }
    env = r.env()
    assert env["SPILLWAY_STORAGE"] == "gcs"
    assert env["SPILLWAY_BUCKET"] == "my-spillway-results"
    assert env["SPILLWAY_GCS_PROJECT"] == "my-project"
    assert env["SPILLWAY_GCS_SIGNING_ACCOUNT"] == "spillway@my-project.iam.gserviceaccount.com"
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in env
    assert "SPILLWAY_GCS_CREDENTIALS_FILE" not in env
    assert "SPILLWAY_GCS_ENDPOINT" not in env
    assert set(r.volumes()) == {"tmp"}
    assert r.pod_spec()["nodeSelector"] == {"iam.gke.io/gke-metadata-server-enabled": "true"}
    assert r.container()["image"].startswith("europe-west1-docker.pkg.dev/")
    assert_probes(r, "admin")
    assert_hardened(r)


def test_gcs_key_file_and_admin_on_the_rpc_port():
    r = ci("gcs-key-file-values.yaml")
    env = r.env()
    assert env["SPILLWAY_GCS_CREDENTIALS_FILE"] == f"{GCS_KEY_DIR}/key.json"
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == f"{GCS_KEY_DIR}/key.json"
    mount = r.mounts()[GCS_KEY_DIR]
    assert mount["readOnly"] is True
    assert r.volumes()[mount["name"]]["secret"] == {
        "secretName": "spillway-gcs",
        "items": [{"key": "key.json", "path": "key.json"}],
    }
    # admin.enabled=false: no admin listener or port; probes and metrics on the RPC port.
    assert "SPILLWAY_ADMIN_LISTEN" not in env
    assert [p["name"] for p in r.container()["ports"]] == ["http"]
    assert [p["name"] for p in r.one("Service")["spec"]["ports"]] == ["http"]
    assert_probes(r, "http")
    assert r.one("ServiceMonitor")["spec"]["endpoints"][0]["port"] == "http"
    assert "curl http://127.0.0.1:8080/readyz" in r.notes


def test_minio():
    r = ci("minio-values.yaml")
    env = r.env()
    assert env["SPILLWAY_S3_ENDPOINT"] == "http://minio.minio.svc.cluster.local:9000"
    assert env["SPILLWAY_S3_PUBLIC_ENDPOINT"] == "https://minio.example.com"
    assert env["SPILLWAY_S3_PATH_STYLE"] == "true"
    assert env["SPILLWAY_S3_REGION"] == "us-east-1"
    assert env["AWS_ACCESS_KEY_ID"] == secret_ref("spillway-minio", "AWS_ACCESS_KEY_ID")
    assert env["AWS_SECRET_ACCESS_KEY"] == secret_ref("spillway-minio", "AWS_SECRET_ACCESS_KEY")
    assert "AWS_SESSION_TOKEN" not in env
    assert "annotations" not in r.one("ServiceAccount")["metadata"]
    args = r.test_pod()["spec"]["containers"][0]["args"]
    assert args.index("--allow-http") < args.index("spillway.Demo.v1.blob")
    assert "--allow-private-networks" in args


def test_hpa_pdb_netpol_with_shared_claim():
    r = ci("hpa-pdb-netpol-values.yaml")
    assert "replicas" not in r.deployment()["spec"]
    hpa = r.one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "spillway"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    targets = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in hpa["metrics"]}
    assert targets == {"cpu": 60, "memory": 80}
    assert r.one("PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert "maxUnavailable" not in r.one("PodDisruptionBudget")["spec"]

    # Every replica mounts the same claim and signs with the same secret.
    assert r.volumes()["objects"]["persistentVolumeClaim"] == {"claimName": "spillway-objects"}
    env = r.env()
    assert env["SPILLWAY_SIGNING_SECRET"] == secret_ref("spillway-signing", "secret")
    assert r.pod_spec()["terminationGracePeriodSeconds"] == 40

    policy = r.one("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == r.deployment()["spec"]["selector"]["matchLabels"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    http_rule, admin_rule = policy["ingress"]
    assert http_rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert http_rule["from"] == [
        {"podSelector": {"matchLabels": {"spillway-client": "true"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}},
    ]
    assert admin_rule["ports"] == [{"port": "admin", "protocol": "TCP"}]
    assert admin_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    # Egress restricted: DNS only (the local store needs nothing else).
    assert policy["egress"] == [
        {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
    ]
    # The test pod carries the label the policy lets through.
    assert r.test_pod()["metadata"]["labels"]["spillway-client"] == "true"

    monitor = r.one("ServiceMonitor")
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["spillway"]}
    assert_hardened(r)
    assert_probes(r, "admin")


def test_network_policy_without_peers_admits_everyone():
    r = render({"networkPolicy": {"enabled": True}})
    policy = r.one("NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert [rule.get("from") for rule in policy["ingress"]] == [None, None]
    assert "egress" not in policy


def test_egress_rules_follow_dns():
    rule = {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443, "protocol": "TCP"}]}
    r = render({"networkPolicy": {"enabled": True, "egress": {"restrict": True, "rules": [rule]}}})
    egress = r.one("NetworkPolicy")["spec"]["egress"]
    assert len(egress) == 2 and egress[1] == rule


def test_static_s3_credentials_with_session_token():
    r = render(
        {
            "storage": {
                "kind": "s3",
                "bucket": "b",
                "s3": {
                    "credentials": {
                        "existingSecret": "aws",
                        "accessKeyIdKey": "id",
                        "secretAccessKeyKey": "secret",
                        "sessionTokenKey": "token",
                    }
                },
            }
        }
    )
    env = r.env()
    assert env["AWS_ACCESS_KEY_ID"] == secret_ref("aws", "id")
    assert env["AWS_SECRET_ACCESS_KEY"] == secret_ref("aws", "secret")
    assert env["AWS_SESSION_TOKEN"] == secret_ref("aws", "token")


def test_storage_settings_of_other_kinds_are_not_passed():
    """S3 settings left in values do not leak into a GCS deployment and vice versa."""
    values = {
        "storage": {
            "kind": "gcs",
            "bucket": "b",
            "s3": {"endpoint": "http://minio:9000", "credentials": {"existingSecret": "aws"}},
            "local": {"retention": 5},
        }
    }
    env = render(values).env()
    assert not [n for n in env if n.startswith(("SPILLWAY_S3_", "AWS_", "SPILLWAY_LOCAL_"))]


def test_public_url():
    assert render({"server": {"publicUrl": "https://rpc.example.com"}}).env()[
        "SPILLWAY_PUBLIC_URL"
    ] == "https://rpc.example.com"
    plain_ingress = {"ingress": {"enabled": True, "hosts": [{"host": "rpc.internal", "paths": [{"path": "/", "pathType": "Prefix"}]}]}}
    assert render(plain_ingress).env()["SPILLWAY_PUBLIC_URL"] == "http://rpc.internal"
    # Another release name and namespace give another Service URL.
    r = render({"service": {"port": 80}}, name="rpc", namespace="data")
    assert r.env()["SPILLWAY_PUBLIC_URL"] == "http://rpc-spillway.data.svc.cluster.local:80"
    assert r.deployment()["metadata"]["name"] == "rpc-spillway"


def test_ipv6_bind_address():
    env = render({"server": {"bindAddress": "::", "port": 8081}, "admin": {"port": 9091}}).env()
    assert env["SPILLWAY_LISTEN"] == "[::]:8081"
    assert env["SPILLWAY_ADMIN_LISTEN"] == "[::]:9091"


def test_image_digest_and_pull_secrets():
    digest = "sha256:" + "ab" * 32
    r = render({"image": {"repository": "r.example.com/spillway", "digest": digest}, "imagePullSecrets": [{"name": "regcred"}]})
    assert r.container()["image"] == f"r.example.com/spillway@{digest}"
    assert r.pod_spec()["imagePullSecrets"] == [{"name": "regcred"}]
    assert r.test_pod()["spec"]["containers"][0]["image"] == f"r.example.com/spillway@{digest}"


def test_extra_env_volumes_and_probe_tuning():
    r = render(
        {
            "extraEnv": [{"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"}],
            "extraEnvFrom": [{"configMapRef": {"name": "more"}}],
            "extraVolumes": [{"name": "ca", "configMap": {"name": "ca"}}],
            "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/custom", "readOnly": True}],
            "livenessProbe": {"periodSeconds": 20},
            "startupProbe": {"enabled": False},
            "server": {"shutdownGrace": 50},
        }
    )
    assert r.env()["AWS_STS_REGIONAL_ENDPOINTS"] == "regional"
    assert r.container()["envFrom"] == [{"configMapRef": {"name": "more"}}]
    assert r.mounts()["/etc/ssl/custom"]["name"] == "ca"
    assert "ca" in r.volumes()
    assert r.container()["livenessProbe"]["periodSeconds"] == 20
    assert "startupProbe" not in r.container()
    # The pod's grace follows the server's.
    assert r.env()["SPILLWAY_SHUTDOWN_GRACE"] == "50"
    assert r.pod_spec()["terminationGracePeriodSeconds"] == 55


def test_recreate_strategy_drops_the_default_rolling_update():
    r = render({"strategy": {"type": "Recreate"}, "storage": {"local": {"existingClaim": "rwo"}}})
    assert r.deployment()["spec"]["strategy"] == {"type": "Recreate"}
    validate_manifest(r.deployment(), NEWEST_KUBE)
    assert render().deployment()["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }


def test_values_files_combine():
    """A user's file on top of a ci file, as `helm install -f a -f b` would."""
    values = merge(load_values(CHART / "ci" / "minio-values.yaml"), {"storage": {"s3": {"pathStyle": False}}})
    assert render(values).env()["SPILLWAY_S3_PATH_STYLE"] == "false"


def test_without_a_memory_limit_the_server_reads_its_cgroup():
    r = render({"resources": {"limits": None}})
    env = r.env()
    assert "SPILLWAY_CONTAINER_MEMORY" not in env
    assert env["SPILLWAY_MEMORY_LIMIT"] == "70%"
