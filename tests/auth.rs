//! Bearer authentication, the authorization policy and CORS on a real `spillway serve`
//! configuration over real sockets: refusals first (missing, wrong, malformed credentials,
//! denied calls, unknown protocols, foreign origins), then what stays open and what works.

use std::path::{Path, PathBuf};

use reqwest::header::{AUTHORIZATION, CACHE_CONTROL, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use spillway::wire::{keys, read_stream, ErrorCode, ARROW_STREAM_CONTENT_TYPE};

use crate::common::{blob_body, echo_body, error_of, request_body, request_md, TestServer};

const ALICE: &str = "alice-token-0123456789abcdef";
const BOB: &str = "bob-token-0123456789abcdef";
const CAROL: &str = "carol-token-0123456789abcdef";

const POLICY: &str = r#"
[[rule]]
protocol = "spillway.Demo.v1"
methods = ["echo", "blob"]
principals = ["alice"]

[[rule]]
protocol = "spillway.Demo.v1"
methods = ["echo"]
principals = ["bob"]

[[rule]]
protocol = "vgi_rpc.Reflection.v1"
principals = ["alice"]
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A server with bearer tokens for alice, bob and carol, the policy above, CORS for one
/// origin, and a small threshold so `blob` externalizes to the local store.
async fn secured(dir: &Path) -> TestServer {
    let tokens = write(
        dir,
        "tokens",
        &format!("# principals\n{ALICE} alice\n{BOB} bob\n{CAROL} carol\n"),
    );
    let policy = write(dir, "policy.toml", POLICY);
    TestServer::start(&[
        "--auth",
        "bearer",
        "--auth-tokens-file",
        tokens.to_str().unwrap(),
        "--authz-file",
        policy.to_str().unwrap(),
        "--cors-origins",
        "https://app.example",
        "--threshold-bytes",
        "1024",
    ])
    .await
}

async fn call(
    s: &TestServer,
    method: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{}/spillway.Demo.v1/{method}", s.base))
        .header("content-type", ARROW_STREAM_CONTENT_TYPE)
        .body(body);
    if let Some(t) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    req.send().await.unwrap()
}

async fn assert_401(resp: reqwest::Response, reason: &str) {
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let h = resp.headers().clone();
    assert_eq!(h["vgi-auth-reason"], reason);
    assert_eq!(h[CACHE_CONTROL], "no-store");
    assert_eq!(h[WWW_AUTHENTICATE], "Bearer");
    assert!(h.contains_key("x-request-id"));
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(body["reason"], reason);
    // The detail is fixed: nothing about why the credential was wrong.
    assert_eq!(body["detail"], "authentication rejected");
}

#[tokio::test]
async fn calls_without_a_valid_token_are_refused_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let s = secured(dir.path()).await;
    assert_401(
        call(&s, "echo", echo_body(b"x"), None).await,
        "missing_credential",
    )
    .await;
    assert_401(
        call(&s, "echo", echo_body(b"x"), Some("not-a-known-token-0000")).await,
        "invalid_credential",
    )
    .await;
    // A malformed header and another scheme.
    let raw = |value: &str| {
        reqwest::Client::new()
            .post(format!("{}/spillway.Demo.v1/echo", s.base))
            .header("content-type", ARROW_STREAM_CONTENT_TYPE)
            .header(AUTHORIZATION, value.to_string())
            .body(echo_body(b"x"))
    };
    assert_401(raw("Bearer ").send().await.unwrap(), "invalid_credential").await;
    assert_401(
        raw("Basic YWxpY2U6cHc=").send().await.unwrap(),
        "missing_credential",
    )
    .await;
    // A browser gets the page, with the same reason.
    let resp = reqwest::Client::new()
        .post(format!("{}/spillway.Demo.v1/echo", s.base))
        .header("accept", "text/html,application/xhtml+xml")
        .body(echo_body(b"x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["vgi-auth-reason"], "missing_credential");
    assert!(resp.text().await.unwrap().contains("missing_credential"));
    // Streams and upload URLs are gated as well.
    for path in [
        "spillway.Demo.v1/blob_stream/init",
        "spillway.Demo.v1/blob_stream/exchange",
        "__upload_url__/init",
    ] {
        let resp = reqwest::Client::new()
            .post(format!("{}/{path}", s.base))
            .body(Vec::new())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // And still serving: the right token works.
    let resp = call(&s, "echo", echo_body(b"hello"), Some(ALICE)).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn health_discovery_operations_and_storage_need_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let s = secured(dir.path()).await;
    let http = reqwest::Client::new();
    let health = http.get(format!("{}/health", s.base)).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let options = http
        .request(reqwest::Method::OPTIONS, format!("{}/health", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(options.status(), StatusCode::OK);
    assert!(options.headers().contains_key("vgi-upload-url-support"));
    for op in ["livez", "readyz"] {
        let r = http
            .get(format!("{}/{op}", s.origin()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{op}");
    }
    // The metrics on the main port need a credential (on the admin port they do not).
    let metrics = |token: Option<&str>| {
        let mut r = http.get(format!("{}/metrics", s.origin()));
        if let Some(t) = token {
            r = r.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        r.send()
    };
    assert_eq!(
        metrics(None).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let scraped = metrics(Some(ALICE)).await.unwrap();
    assert_eq!(scraped.status(), StatusCode::OK);
    assert!(scraped
        .text()
        .await
        .unwrap()
        .contains("spillway_auth_failures_total"));
    // An externalized result: its object URL is signed, and a client that sends its RPC
    // credential (or any other) on every request is served all the same.
    let resp = call(&s, "blob", blob_body(64 * 1024), Some(ALICE)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let stream = read_stream(resp.bytes().await.unwrap(), Default::default()).unwrap();
    let location = stream
        .batches
        .iter()
        .find_map(|b| b.metadata.get(keys::LOCATION).cloned())
        .expect("an externalized result");
    for auth in [
        None,
        Some(format!("Bearer {ALICE}")),
        Some("Bearer junk".to_string()),
    ] {
        let mut req = http.get(&location);
        if let Some(a) = &auth {
            req = req.header(AUTHORIZATION, a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{auth:?}");
        assert!(!r.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn the_policy_allows_by_principal_and_denies_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let s = secured(dir.path()).await;
    assert_eq!(
        call(&s, "blob", blob_body(16), Some(ALICE)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        call(&s, "echo", echo_body(b"b"), Some(BOB)).await.status(),
        StatusCode::OK
    );
    // bob may echo but not blob; carol is authenticated but in no rule.
    for (method, body, token) in [
        ("blob", blob_body(16), BOB),
        ("echo", echo_body(b"c"), CAROL),
    ] {
        let resp = call(&s, method, body, Some(token)).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{method}");
        let e = error_of(resp).await;
        assert_eq!(e.error_type, "PermissionError");
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        assert!(
            e.message
                .contains(&format!("not allowed to call spillway.Demo.v1.{method}")),
            "{}",
            e.message
        );
    }
    // A protocol no rule names is denied (the default), before its existence is revealed.
    let resp = reqwest::Client::new()
        .post(format!("{}/other.Protocol.v1/echo", s.base))
        .header(AUTHORIZATION, format!("Bearer {ALICE}"))
        .body(request_body(
            &spillway::demo::echo_params(),
            crate::common::data_params(b"x"),
            request_md("echo"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // Reflection (on by default) is a protocol like any other: alice may list, bob may not.
    let list = |token: &str| {
        let mut md = spillway::wire::Metadata::new();
        md.insert(keys::METHOD.into(), "list_protocols".into());
        md.insert(keys::REQUEST_VERSION.into(), "1".into());
        reqwest::Client::new()
            .post(format!("{}/vgi_rpc.Reflection.v1/list_protocols", s.base))
            .header("content-type", ARROW_STREAM_CONTENT_TYPE)
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .body(request_body(
                &spillway::server::empty_schema(),
                crate::common::no_params(),
                md,
            ))
            .send()
    };
    assert_eq!(list(ALICE).await.unwrap().status(), StatusCode::OK);
    assert_eq!(list(BOB).await.unwrap().status(), StatusCode::FORBIDDEN);
    // Carol is in no rule, so she may not stage inputs either; alice may.
    let upload = |token: &str| {
        reqwest::Client::new()
            .post(format!("{}/__upload_url__/init", s.base))
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .body(Vec::new())
            .send()
    };
    assert_eq!(upload(CAROL).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_ne!(upload(ALICE).await.unwrap().status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn tokens_rotate_by_editing_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(dir.path(), "tokens", &format!("{ALICE} alice\n"));
    let s = TestServer::start(&[
        "--auth",
        "bearer",
        "--auth-tokens-file",
        tokens.to_str().unwrap(),
    ])
    .await;
    assert_eq!(
        call(&s, "echo", echo_body(b"1"), Some(ALICE))
            .await
            .status(),
        StatusCode::OK
    );
    std::fs::write(&tokens, format!("{BOB} bob\n")).unwrap();
    // The file is re-read within a second of a change: poll with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let bob = call(&s, "echo", echo_body(b"2"), Some(BOB)).await.status();
        if bob == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bob's token never accepted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        call(&s, "echo", echo_body(b"3"), Some(ALICE))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn cors_answers_preflights_for_the_allowed_origin_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = secured(dir.path()).await;
    let http = reqwest::Client::new();
    let preflight = |origin: &str, path: &str| {
        http.request(reqwest::Method::OPTIONS, format!("{}{path}", s.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, authorization",
            )
            .send()
    };
    for path in ["/spillway.Demo.v1/echo", "/__storage__/any/key"] {
        let ok = preflight("https://app.example", path).await.unwrap();
        assert!(ok.status().is_success(), "{path}: {}", ok.status());
        let h = ok.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example");
        let allowed = h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_lowercase();
        assert!(allowed.contains("authorization"), "{allowed}");
        let exposed = h["access-control-expose-headers"].to_str().unwrap();
        for name in [
            "vgi-auth-reason",
            "x-request-id",
            "x-vgi-rpc-error",
            "vgi-max-request-bytes",
        ] {
            assert!(exposed.contains(name), "{name} not in {exposed}");
        }
        let foreign = preflight("https://evil.example", path).await.unwrap();
        assert!(!foreign
            .headers()
            .contains_key("access-control-allow-origin"));
    }
    // The actual call carries the origin too, and a 401 is readable by the page.
    let resp = http
        .post(format!("{}/spillway.Demo.v1/echo", s.base))
        .header("origin", "https://app.example")
        .body(echo_body(b"x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    // Capability discovery without an Origin is not mistaken for a preflight.
    let discovery = http
        .request(reqwest::Method::OPTIONS, format!("{}/health", s.base))
        .send()
        .await
        .unwrap();
    assert!(discovery.headers().contains_key("vgi-max-request-bytes"));
}

#[tokio::test]
async fn security_settings_that_cannot_work_are_refused_at_startup() {
    use clap::Parser;
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "policy.toml", POLICY);
    let bad_tokens = write(dir.path(), "bad", "short alice\n");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--auth", "bearer"], "SPILLWAY_AUTH_TOKENS_FILE"),
        (
            vec!["--auth-tokens-file", bad_tokens.to_str().unwrap()],
            "does not include bearer",
        ),
        (
            vec![
                "--auth",
                "bearer",
                "--auth-tokens-file",
                bad_tokens.to_str().unwrap(),
            ],
            "line 1: the token is shorter",
        ),
        (
            vec!["--authz-file", policy.to_str().unwrap()],
            "SPILLWAY_AUTHZ_FILE needs authentication",
        ),
        (vec!["--cors-origins", "app.example"], "cors origin"),
    ];
    for (flags, want) in cases {
        let mut argv = vec!["spillway", "serve"];
        argv.extend_from_slice(&flags);
        let cli = spillway::cli::Cli::try_parse_from(argv).unwrap();
        let spillway::cli::Command::Serve(args) = cli.command else {
            unreachable!()
        };
        let err = match args.build_server().await {
            Ok(_) => panic!("{flags:?} accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(want), "{flags:?}: {err}");
        assert!(!err.contains("short alice"), "{err}");
    }
}

#[test]
fn the_binary_keeps_the_admin_port_open_and_gates_the_main_ports_metrics() {
    use crate::common::{free_port, status_of, ServedBinary};
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(dir.path(), "tokens", &format!("{ALICE} alice\n"));
    let admin = free_port();
    let admin_listen = format!("127.0.0.1:{admin}");
    let served = ServedBinary::start(&[
        ("SPILLWAY_AUTH", "bearer"),
        ("SPILLWAY_AUTH_TOKENS_FILE", tokens.to_str().unwrap()),
        ("SPILLWAY_ADMIN_LISTEN", &admin_listen),
    ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        for path in ["livez", "readyz", "metrics"] {
            let url = format!("http://{admin_listen}/{path}");
            assert_eq!(status_of(http.get(url)).await, StatusCode::OK, "{path}");
        }
        let main = format!("{}/metrics", served.url);
        assert_eq!(status_of(http.get(&main)).await, StatusCode::UNAUTHORIZED);
        let authed = http
            .get(&main)
            .header(AUTHORIZATION, format!("Bearer {ALICE}"));
        assert_eq!(status_of(authed).await, StatusCode::OK);
    });
}

#[test]
fn an_open_server_on_a_non_loopback_address_warns_at_startup() {
    use crate::common::{free_port, ServedBinary};
    const WARNING: &str = "no authentication configured";
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(dir.path(), "tokens", &format!("{ALICE} alice\n"));
    let listen = format!("0.0.0.0:{}", free_port());
    let (_open, lines) = ServedBinary::start_logged(&[("SPILLWAY_LISTEN", &listen)]);
    assert!(
        lines.lock().unwrap().iter().any(|l| l.contains(WARNING)),
        "{:?}",
        lines.lock().unwrap()
    );
    let listen = format!("0.0.0.0:{}", free_port());
    let (_secured, lines) = ServedBinary::start_logged(&[
        ("SPILLWAY_LISTEN", &listen),
        ("SPILLWAY_AUTH", "bearer"),
        ("SPILLWAY_AUTH_TOKENS_FILE", tokens.to_str().unwrap()),
    ]);
    let lines = lines.lock().unwrap();
    assert!(lines.iter().any(|l| l.contains("spillway serving")));
    assert!(!lines.iter().any(|l| l.contains(WARNING)), "{lines:?}");
    // Loopback (the harness default) stays quiet too.
    let (_local, lines) = ServedBinary::start_logged(&[]);
    assert!(!lines.lock().unwrap().iter().any(|l| l.contains(WARNING)));
}
