//! TLS and client certificates on the real `spillway serve` binary, over real TLS sockets,
//! with certificates the test makes (rcgen): HTTPS and HTTP/2 by ALPN, plain HTTP to the TLS
//! port, certificate reload without a restart, mTLS principals (SPIFFE id, CN) seen by the
//! authorization policy, a certificate from another CA, no certificate (401 on calls, /health
//! open), and https local-store URLs.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::StringArray;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use spillway::demo;
use spillway::wire::{keys, read_stream, Metadata, ARROW_STREAM_CONTENT_TYPE};

use crate::common::{blob_body, echo_body, int64_batch, request_body, Issued, LoggedServe, TestCa};

/// The SPIFFE id of the "loader" workload. Its certificate's CN is [`WORKER_CN`] too, so a
/// server that took the CN over the SPIFFE id would be caught.
const LOADER_ID: &str = "spiffe://spillway.test/ns/jobs/sa/loader";
/// The CN of the "worker" certificate (no SPIFFE id).
const WORKER_CN: &str = "batch-worker";
/// How long a poll for a condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// A CA, the server's certificate files, and a `spillway serve` using them.
struct TlsServer {
    // First: the process stops before its certificate files go.
    served: LoggedServe,
    ca: TestCa,
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    /// `https://127.0.0.1:<port>`.
    base: String,
    port: u16,
}

impl TlsServer {
    /// `spillway serve` with a certificate from a new CA, `client_ca` (when true: that CA
    /// also verifies client certificates) and `env`.
    fn start(client_ca: bool, env: &[(&str, &str)]) -> TlsServer {
        let ca = TestCa::new("Spillway Test CA");
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca.server("server-a").write(dir.path(), "server");
        let ca_path = ca.write(&dir.path().join("ca.pem"));
        let mut vars: Vec<(&str, &str)> = vec![
            ("SPILLWAY_TLS_CERT", cert.to_str().unwrap()),
            ("SPILLWAY_TLS_KEY", key.to_str().unwrap()),
        ];
        if client_ca {
            vars.push(("SPILLWAY_TLS_CLIENT_CA", ca_path.to_str().unwrap()));
        }
        vars.extend_from_slice(env);
        let served = LoggedServe::start(&vars);
        let port: u16 = served.url.rsplit(':').next().unwrap().parse().unwrap();
        TlsServer {
            base: format!("https://127.0.0.1:{port}"),
            ca,
            _dir: dir,
            cert,
            key,
            served,
            port,
        }
    }

    /// A client trusting the server's CA, presenting `identity`.
    fn client(&self, identity: Option<&Issued>) -> reqwest::Client {
        self.ca.https_client(identity)
    }

    /// `POST {base}/spillway.Demo.v1/{method}` of `body`.
    async fn call(
        &self,
        client: &reqwest::Client,
        method: &str,
        body: Vec<u8>,
    ) -> reqwest::Result<reqwest::Response> {
        client
            .post(format!("{}/{}/{method}", self.base, demo::PROTOCOL))
            .header("content-type", ARROW_STREAM_CONTENT_TYPE)
            .body(body)
            .send()
            .await
    }

    /// `GET /health` answers 200 over HTTPS: the server is serving.
    async fn assert_serves(&self) {
        let resp = self
            .client(None)
            .get(format!("{}/health", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
}

impl TlsServer {
    /// Polls the server's log until it contains `needle` (a bounded wait, not a sleep).
    async fn wait_for_log(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let log = self.served.output();
            if log.contains(needle) {
                return log;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "no {needle:?} in the log within {DEADLINE:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A rustls client configuration trusting `ca`, offering `alpn`.
fn tls_client_config(ca: &TestCa, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let der = CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap();
    roots.add(der).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A fresh TLS connection to 127.0.0.1:`port`, verified against `ca`.
async fn tls_connect(
    port: u16,
    ca: &TestCa,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let connector = tokio_rustls::TlsConnector::from(tls_client_config(ca, alpn));
    let name = ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

/// The certificate the server presents on a new connection (DER).
async fn served_certificate(port: u16, ca: &TestCa) -> std::io::Result<Vec<u8>> {
    let tls = tls_connect(port, ca, &[]).await?;
    let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
    Ok(chain.first().map(|c| c.to_vec()).unwrap_or_default())
}

/// Replaces `path` with `contents` in one step (write beside, rename over), as a secret
/// volume or `mv` would.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls until the server presents `expected` on a new connection.
async fn wait_for_certificate(s: &TlsServer, expected: &[u8]) {
    let start = Instant::now();
    loop {
        if let Ok(der) = served_certificate(s.port, &s.ca).await {
            if der == expected {
                return;
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the new certificate was not served within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn https_works_for_a_client_trusting_the_ca() {
    let s = TlsServer::start(false, &[]);
    let client = s.client(None);
    for host in ["127.0.0.1", "localhost"] {
        let resp = client
            .get(format!("https://{host}:{}/health", s.port))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{host}");
    }
    let resp = s
        .call(&client, "echo", echo_body(b"over tls"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-vgi-rpc-error").is_none());
    // A client that does not trust the CA is refused by its own verifier.
    let stranger = TestCa::new("Someone Else's CA").https_client(None);
    assert!(stranger
        .get(format!("{}/health", s.base))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn http2_is_negotiated_by_alpn() {
    let s = TlsServer::start(false, &[]);
    for (offered, negotiated) in [
        (&[b"h2".as_slice(), b"http/1.1"][..], b"h2".as_slice()),
        (&[b"http/1.1".as_slice()][..], b"http/1.1".as_slice()),
    ] {
        let tls = tls_connect(s.port, &s.ca, offered).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(negotiated));
    }
    // A real HTTP/2 exchange on the h2 connection.
    let tls = tls_connect(s.port, &s.ca, &[b"h2"]).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("{}/health", s.base))
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn plain_http_to_the_tls_port_fails_cleanly_and_the_server_keeps_serving() {
    let s = TlsServer::start(false, &[("RUST_LOG", "spillway=debug")]);
    // reqwest over http:// gets no HTTP response.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/health", s.port))
        .send()
        .await;
    assert!(plain.is_err(), "plain http answered: {plain:?}");
    // A raw request: the server answers no HTTP and closes the connection, promptly.
    let port = s.port;
    let raw = tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(DEADLINE)).unwrap();
        tcp.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        // EOF (or a reset) ends the read; a timeout would be an error of another kind.
        match tcp.read_to_end(&mut got) {
            Ok(_) => got,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => got,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    })
    .await
    .unwrap();
    assert!(
        !raw.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    // A client that connects and never says anything does not block others either.
    let _silent = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    s.assert_serves().await;
    // Logged at debug, as one peer's trouble.
    let log = s.wait_for_log("tls handshake failed").await;
    let line = log
        .lines()
        .find(|l| l.contains("tls handshake failed"))
        .unwrap();
    assert!(line.contains("DEBUG"), "{line}");
}

#[tokio::test]
async fn a_replaced_certificate_is_served_on_new_connections() {
    let s = TlsServer::start(false, &[]);
    let first = served_certificate(s.port, &s.ca).await.unwrap();
    // A connection opened before the rotation keeps working after it.
    let kept = s.client(None);
    s.assert_serves().await;
    let b = s.ca.server("server-b");
    assert_ne!(first, b.der);
    replace(&s.key, &b.key_pem);
    replace(&s.cert, &b.cert_pem);
    wait_for_certificate(&s, &b.der).await;
    s.wait_for_log("tls certificate reloaded").await;
    let resp = kept.get(format!("{}/health", s.base)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // Broken files: the server keeps presenting the last good certificate...
    replace(
        &s.cert,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    replace(&s.key, "garbage");
    let log = s.wait_for_log("keeping the previous certificate").await;
    assert!(log.contains("ERROR"), "{log}");
    for _ in 0..5 {
        assert_eq!(served_certificate(s.port, &s.ca).await.unwrap(), b.der);
    }
    // ...and picks up the next good one.
    let c = s.ca.server("server-c");
    replace(&s.key, &c.key_pem);
    replace(&s.cert, &c.cert_pem);
    wait_for_certificate(&s, &c.der).await;
    s.assert_serves().await;
    // No private key ever reaches the log.
    let log = s.served.output();
    for key in [&b.key_pem, &c.key_pem] {
        let body = key.lines().nth(1).unwrap();
        assert!(!log.contains(body), "key material in the log");
    }
}

/// The authorization policy of the mTLS test: `echo` for the loader's SPIFFE id, `blob` for
/// the worker's CN.
fn mtls_policy(dir: &Path) -> PathBuf {
    let path = dir.join("authz.toml");
    std::fs::write(
        &path,
        format!(
            "default = \"deny\"\n\
             [[rule]]\nprotocol = \"{p}\"\nmethods = [\"echo\"]\nprincipals = [\"{LOADER_ID}\"]\n\
             [[rule]]\nprotocol = \"{p}\"\nmethods = [\"blob\"]\nprincipals = [\"{WORKER_CN}\"]\n",
            p = demo::PROTOCOL
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn client_certificates_name_the_caller_by_spiffe_id_or_cn() {
    let policy_dir = tempfile::tempdir().unwrap();
    let policy = mtls_policy(policy_dir.path());
    let s = TlsServer::start(true, &[("SPILLWAY_AUTHZ_FILE", policy.to_str().unwrap())]);
    let loader = s.client(Some(&s.ca.client(WORKER_CN, &[LOADER_ID])));
    let worker = s.client(Some(&s.ca.client(WORKER_CN, &[])));
    let status = |r: reqwest::Result<reqwest::Response>| r.unwrap().status().as_u16();
    // The loader is its SPIFFE id (not its CN): echo yes, blob no.
    assert_eq!(status(s.call(&loader, "echo", echo_body(b"hi")).await), 200);
    assert_eq!(status(s.call(&loader, "blob", blob_body(10)).await), 403);
    // The worker is its CN: blob yes, echo no.
    assert_eq!(status(s.call(&worker, "blob", blob_body(10)).await), 200);
    assert_eq!(status(s.call(&worker, "echo", echo_body(b"hi")).await), 403);
    // The denials name the principal each certificate was taken for.
    let log = s.wait_for_log("call denied").await;
    let denied: Vec<&str> = log.lines().filter(|l| l.contains("call denied")).collect();
    assert!(denied.iter().any(|l| l.contains(LOADER_ID)), "{log}");
    assert!(
        denied
            .iter()
            .any(|l| l.contains(WORKER_CN) && !l.contains("spiffe://")),
        "{log}"
    );
}

#[tokio::test]
async fn without_a_client_certificate_calls_get_401_and_health_stays_open() {
    let s = TlsServer::start(true, &[]);
    let anonymous = s.client(None);
    let resp = s.call(&anonymous, "echo", echo_body(b"hi")).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["vgi-auth-reason"], "missing_credential");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    let health = anonymous
        .get(format!("{}/health", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let options = anonymous
        .request(reqwest::Method::OPTIONS, format!("{}/health", s.base))
        .send()
        .await
        .unwrap();
    assert!(options.status().is_success(), "{}", options.status());
    // With a certificate from the right CA the same call goes through.
    let known = s.client(Some(&s.ca.client(WORKER_CN, &[])));
    let resp = s.call(&known, "echo", echo_body(b"hi")).await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let s = TlsServer::start(true, &[]);
    let other = TestCa::new("Other CA");
    let forged = s.client(Some(&other.client(WORKER_CN, &[LOADER_ID])));
    for path in ["health", &format!("{}/echo", demo::PROTOCOL)] {
        let refused = forged
            .post(format!("{}/{path}", s.base))
            .header("content-type", ARROW_STREAM_CONTENT_TYPE)
            .body(echo_body(b"hi"))
            .send()
            .await;
        assert!(refused.is_err(), "{path}: {refused:?}");
    }
    // The handshake failure ended that connection only.
    s.assert_serves().await;
    let known = s.client(Some(&s.ca.client(WORKER_CN, &[])));
    let resp = s.call(&known, "echo", echo_body(b"hi")).await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn local_store_urls_are_https_and_downloadable() {
    // mTLS on: the storage routes need no certificate (their signature is the credential).
    let s = TlsServer::start(true, &[("SPILLWAY_THRESHOLD_BYTES", "1000")]);
    let worker = s.client(Some(&s.ca.client(WORKER_CN, &[])));
    let anonymous = s.client(None);
    let resp = s.call(&worker, "blob", blob_body(50_000)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let stream = read_stream(resp.bytes().await.unwrap(), Default::default()).unwrap();
    let location = stream
        .batches
        .iter()
        .find_map(|b| b.metadata.get(keys::LOCATION))
        .expect("an externalized result")
        .clone();
    assert!(
        location.starts_with(&format!("{}/__storage__/", s.base)),
        "{location}"
    );
    let object = anonymous.get(&location).send().await.unwrap();
    assert_eq!(object.status(), 200);
    assert!(!object.bytes().await.unwrap().is_empty());
    // Upload URLs are https too, and take a PUT.
    let batch = int64_batch("count", true, vec![1]);
    let mut md = Metadata::new();
    md.insert(keys::METHOD.into(), "__upload_url__".into());
    md.insert(keys::REQUEST_VERSION.into(), "1".into());
    let resp = worker
        .post(format!("{}/__upload_url__/init", s.base))
        .header("content-type", ARROW_STREAM_CONTENT_TYPE)
        .body(request_body(&batch.schema(), batch, md))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let stream = read_stream(resp.bytes().await.unwrap(), Default::default()).unwrap();
    let pair = &stream.batches.last().unwrap().batch;
    let column = |name: &str| {
        pair.column_by_name(name)
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .value(0)
            .to_string()
    };
    let (upload, download) = (column("upload_url"), column("download_url"));
    assert!(upload.starts_with("https://127.0.0.1:"), "{upload}");
    let put = anonymous.put(&upload).body("payload").send().await.unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let got = anonymous.get(&download).send().await.unwrap();
    assert_eq!(got.bytes().await.unwrap(), "payload");
}

/// `spillway serve` arguments as the CLI parses them.
fn serve_args(flags: &[&str]) -> spillway::config::ServeArgs {
    use clap::Parser;
    let argv = ["spillway", "serve", "--listen", "0.0.0.0:8443"];
    let cli = spillway::cli::Cli::try_parse_from(argv.iter().chain(flags)).unwrap();
    match cli.command {
        spillway::cli::Command::Serve(args) => *args,
        _ => unreachable!(),
    }
}

#[test]
fn the_default_public_url_is_https_with_a_certificate() {
    let tls = [
        "--tls-cert",
        "/etc/tls/tls.crt",
        "--tls-key",
        "/etc/tls/tls.key",
    ];
    assert_eq!(
        serve_args(&tls).public_url().unwrap().as_str(),
        "https://127.0.0.1:8443/"
    );
    assert_eq!(
        serve_args(&[]).public_url().unwrap().as_str(),
        "http://127.0.0.1:8443/"
    );
    let mut explicit = tls.to_vec();
    explicit.extend(["--public-url", "https://spillway.example/"]);
    assert_eq!(
        serve_args(&explicit).public_url().unwrap().as_str(),
        "https://spillway.example/"
    );
}

#[tokio::test]
async fn a_client_ca_joins_the_authenticator_chain() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "0123456789abcdef0123 alice\n").unwrap();
    let tls = [
        "--tls-cert",
        "/etc/tls/tls.crt",
        "--tls-key",
        "/etc/tls/tls.key",
        "--tls-client-ca",
        "/etc/tls/ca.crt",
    ];
    let url = url::Url::parse("https://127.0.0.1:8443/").unwrap();
    let alone = serve_args(&tls).security;
    assert!(alone.auth_enabled());
    let auth = alone.authenticator(&url, "").await.unwrap().unwrap();
    assert_eq!(auth.name(), "mtls");
    let mut both = tls.to_vec();
    both.extend([
        "--auth",
        "bearer",
        "--auth-tokens-file",
        tokens.to_str().unwrap(),
    ]);
    let auth = serve_args(&both)
        .security
        .authenticator(&url, "")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(auth.name(), "bearer,mtls");
    assert!(serve_args(&tls[..4])
        .security
        .authenticator(&url, "")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn tls_files_that_do_not_load_stop_the_server_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("CA");
    let (cert, _) = ca.server("s").write(dir.path(), "server");
    let (_, other_key) = ca.server("t").write(dir.path(), "other");
    let args = serve_args(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        other_key.to_str().unwrap(),
    ]);
    let err = args.security.tls().await.unwrap_err().to_string();
    assert!(
        err.contains("server.pem") && err.contains("other.key"),
        "{err}"
    );
    // The binary refuses to start, saying why.
    let out = std::process::Command::new(crate::common::BIN)
        .arg("serve")
        .env_clear()
        .env("SPILLWAY_LISTEN", "127.0.0.1:0")
        .env("SPILLWAY_LOCAL_DIR", dir.path())
        .env("SPILLWAY_TLS_CERT", &cert)
        .env("SPILLWAY_TLS_KEY", dir.path().join("absent.key"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("absent.key"), "{stderr}");
}

#[tokio::test]
async fn the_rust_client_trusts_the_ca_and_presents_its_certificate() {
    use spillway::client::{Client, ClientConfig, ClientIdentity};
    use spillway::fetch::CaBundle;
    let s = TlsServer::start(true, &[("SPILLWAY_THRESHOLD_BYTES", "1000")]);
    let worker = s.ca.client(WORKER_CN, &[]);
    let config = |identity: Option<&Issued>| {
        let mut config = ClientConfig {
            ca: CaBundle::from_pem(s.ca.pem.as_bytes()).unwrap(),
            identity: identity.map(|id| {
                ClientIdentity::from_pem(id.cert_pem.as_bytes(), id.key_pem.as_bytes()).unwrap()
            }),
            ..ClientConfig::default()
        };
        config.fetch.policy = spillway::url_policy::UrlPolicy::local_testing();
        config
    };
    let client = Client::new(&s.base, config(Some(&worker))).unwrap();
    crate::common::echo(&client, b"over mtls").await;
    // Externalized: the pointer is fetched over https from the server's own storage route.
    let out = crate::common::blob(&client, 50_000).await;
    assert!(out.externalized.is_some(), "not externalized");
    let pairs = client.request_upload_urls(1).await.unwrap();
    assert!(
        pairs[0].upload_url.starts_with("https://"),
        "{}",
        pairs[0].upload_url
    );
    // Without its certificate the same client is refused with the typed 401.
    let anonymous = Client::new(&s.base, config(None)).unwrap();
    match anonymous
        .call(demo::PROTOCOL, "echo", crate::common::data_params(b"x"))
        .await
    {
        Err(spillway::Error::Unauthorized { reason, .. }) => {
            assert_eq!(reason, spillway::AuthRejection::MissingCredential)
        }
        other => panic!("not a 401: {:?}", other.map(|o| o.batch.num_rows())),
    }
}

#[test]
fn spillway_call_reaches_an_mtls_server_with_its_ca_and_certificate() {
    let s = TlsServer::start(true, &[("SPILLWAY_THRESHOLD_BYTES", "1000")]);
    let dir = tempfile::tempdir().unwrap();
    let ca = s.ca.write(&dir.path().join("ca.pem"));
    let (cert, key) = s.ca.client(WORKER_CN, &[]).write(dir.path(), "client");
    let env = [
        ("SPILLWAY_CA_CERT", ca.to_str().unwrap()),
        ("SPILLWAY_CLIENT_CERT", cert.to_str().unwrap()),
        ("SPILLWAY_CLIENT_KEY", key.to_str().unwrap()),
    ];
    let blob = format!("{}.blob", demo::PROTOCOL);
    let out = crate::common::call_clean(&s.base, &[&blob, "size=200000"], &env);
    let text = crate::common::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("externalized result"), "{text}");
    let out = crate::common::call_clean(&s.base, &[&blob, "size=10"], &env[..1]);
    let text = crate::common::output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("missing_credential"), "{text}");
}

#[test]
fn spillway_top_scrapes_an_mtls_server_with_its_ca_and_certificate() {
    let s = TlsServer::start(true, &[]);
    let dir = tempfile::tempdir().unwrap();
    let ca = s.ca.write(&dir.path().join("ca.pem"));
    let (cert, key) = s.ca.client(WORKER_CN, &[]).write(dir.path(), "client");
    let top = |env: &[(&str, &Path)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
            .args(["top", "--once", "--interval", "0.2", &s.base])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        crate::common::output_text(&out)
    };
    let with_cert = top(&[
        ("SPILLWAY_CA_CERT", &ca),
        ("SPILLWAY_CLIENT_CERT", &cert),
        ("SPILLWAY_CLIENT_KEY", &key),
    ]);
    assert!(with_cert.contains("1/1 up"), "{with_cert}");
    // Without the certificate the server's metrics need a credential: the replica is down, 401.
    let without = top(&[("SPILLWAY_CA_CERT", &ca)]);
    assert!(
        without.contains("0/1 up") && without.contains("401"),
        "{without}"
    );
}
