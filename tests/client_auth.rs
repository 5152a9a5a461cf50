//! The client side of authentication against a real `spillway serve` with bearer auth: the
//! Rust client and `spillway call` with a token (fixed, from the environment, from a file
//! rotated between calls), the typed 401 with its reason, the 403 of the authorization policy,
//! the storage routes never seeing `Authorization` (the server records what it receives), and
//! no token in any log line of either process.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use spillway::client::{BearerToken, CallRequest, Client, ClientConfig, FileToken};
use spillway::{demo, AuthRejection, Error};

use crate::common::{
    blob, call_clean as call, echo, output_text as text, size_params, LoggedServe, Recorded,
    SeenRequest, TestServer,
};

const ALICE: &str = "alice-token-0123456789abcdef";
const BOB: &str = "bob-token-ghijklmnopqrstuv";
/// Presented, but in no token file.
const STRANGER: &str = "stranger-token-wxyz987654321";

/// A token file of `TOKEN PRINCIPAL` lines for the server.
fn server_tokens(dir: &Path) -> PathBuf {
    let path = dir.join("server-tokens");
    std::fs::write(&path, format!("{ALICE} alice\n{BOB} bob\n")).unwrap();
    path
}

/// Bearer auth, small threshold and request cap (so results externalize and large requests
/// take the upload flow), every request recorded.
async fn bearer_server(dir: &Path, extra: &[&str]) -> (TestServer, Recorded) {
    let tokens = server_tokens(dir);
    let mut flags = vec![
        "--auth",
        "bearer",
        "--auth-tokens-file",
        tokens.to_str().unwrap(),
        "--threshold-bytes",
        "65536",
        "--max-request-bytes",
        "65536",
    ];
    flags.extend_from_slice(extra);
    TestServer::start_recording(&flags).await
}

fn is_storage(r: &SeenRequest) -> bool {
    r.path.contains("/__storage__/")
}

/// Writes `token` to `path` the way the kubelet rotates a projected token: a new file renamed
/// over the old one.
fn rotate(path: &Path, token: &str) {
    let next = path.with_extension("new");
    std::fs::write(&next, format!("{token}\n")).unwrap();
    std::fs::rename(&next, path).unwrap();
}

#[tokio::test]
async fn the_token_goes_to_every_rpc_request_and_never_to_storage() {
    let dir = tempfile::tempdir().unwrap();
    let (s, recorded) = bearer_server(dir.path(), &[]).await;
    let client =
        s.client_with(ClientConfig::default().with_token(BearerToken::new(ALICE).unwrap()));

    let caps = client.capabilities().await.unwrap();
    assert!(caps.upload_url_support && caps.externalization_enabled);
    assert!(blob(&client, 100).await.externalized.is_none());
    assert!(blob(&client, 200_000).await.externalized.is_some());
    // Above the request cap: vended URL, PUT, pointer.
    let big = spillway_test_support::generated_bytes(150_000, 7);
    echo(&client, &big).await;
    let urls = client.request_upload_urls(2).await.unwrap();
    assert_eq!(urls.len(), 2);
    let mut stream = client
        .open_stream(CallRequest::new(
            demo::PROTOCOL,
            "blob_stream",
            spillway::cli::parse_params(&["count=3".into(), "size=100000".into()]).unwrap(),
        ))
        .await
        .unwrap();
    let mut batches = 0;
    while let Some(b) = stream.next().await.unwrap() {
        assert_eq!(b.batch.num_rows(), 1);
        batches += 1;
    }
    assert_eq!(batches, 3);

    let seen = recorded.take();
    let (storage, rpc): (Vec<_>, Vec<_>) = seen.iter().partition(|r| is_storage(r));
    let expected = format!("Bearer {ALICE}");
    for r in &rpc {
        assert_eq!(r.authorization.as_deref(), Some(expected.as_str()), "{r:?}");
    }
    for r in &storage {
        assert_eq!(r.authorization, None, "a storage URL got the token: {r:?}");
    }
    // The assertions above covered every kind of request.
    let has = |method: &str, part: &str, list: &[&SeenRequest]| {
        list.iter()
            .any(|r| r.method == method && r.path.contains(part))
    };
    assert!(has("OPTIONS", "/health", &rpc), "{rpc:?}");
    assert!(has("POST", "/__upload_url__/init", &rpc), "{rpc:?}");
    assert!(has("POST", "/blob_stream/init", &rpc), "{rpc:?}");
    assert!(has("POST", "/blob_stream/exchange", &rpc), "{rpc:?}");
    assert!(has("GET", "/__storage__/", &storage), "{storage:?}");
    assert!(has("PUT", "/__storage__/", &storage), "{storage:?}");
}

fn unauthorized(e: Error) -> AuthRejection {
    match e {
        Error::Unauthorized { reason, detail, .. } => {
            assert_eq!(detail, "authentication rejected");
            reason
        }
        other => panic!("expected unauthorized, got {other:?}"),
    }
}

#[tokio::test]
async fn missing_and_wrong_tokens_are_typed_401s_and_a_denied_call_is_a_permission_error() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("authz.toml");
    std::fs::write(
        &policy,
        "default = \"deny\"\n[[rule]]\nprotocol = \"spillway.Demo.v1\"\nmethods = [\"blob\"]\nprincipals = [\"alice\"]\n",
    )
    .unwrap();
    let (s, _) = bearer_server(dir.path(), &["--authz-file", policy.to_str().unwrap()]).await;

    // Capability discovery needs no credential (as in the reference); calls do.
    let anonymous = s.client();
    anonymous.capabilities().await.unwrap();
    let e = anonymous
        .call(demo::PROTOCOL, "blob", size_params(10))
        .await
        .unwrap_err();
    assert_eq!(unauthorized(e), AuthRejection::MissingCredential);
    let e = anonymous.request_upload_urls(1).await.unwrap_err();
    assert_eq!(unauthorized(e), AuthRejection::MissingCredential);

    let stranger =
        s.client_with(ClientConfig::default().with_token(BearerToken::new(STRANGER).unwrap()));
    let e = stranger
        .call(demo::PROTOCOL, "blob", size_params(10))
        .await
        .unwrap_err();
    let text = format!("{e} {e:?}");
    assert!(!text.contains(STRANGER), "{text}");
    assert!(text.contains("invalid_credential"), "{text}");
    assert_eq!(unauthorized(e), AuthRejection::InvalidCredential);
    let e = stranger
        .open_stream(CallRequest::new(
            demo::PROTOCOL,
            "blob_stream",
            size_params(1),
        ))
        .await
        .unwrap_err();
    assert_eq!(unauthorized(e), AuthRejection::InvalidCredential);

    // Authenticated but not allowed: the policy's 403, an RPC error.
    let alice = s.client_with(ClientConfig::default().with_token(BearerToken::new(ALICE).unwrap()));
    blob(&alice, 10).await;
    match alice
        .call(demo::PROTOCOL, "echo", crate::common::data_params(b"x"))
        .await
    {
        Err(Error::Rpc(e)) => assert_eq!(e.error_type, "PermissionError", "{e:?}"),
        other => panic!("expected a permission error, got {other:?}"),
    }
    let bob = s.client_with(ClientConfig::default().with_token(BearerToken::new(BOB).unwrap()));
    match bob.call(demo::PROTOCOL, "blob", size_params(10)).await {
        Err(Error::Rpc(e)) => assert_eq!(e.error_type, "PermissionError", "{e:?}"),
        other => panic!("expected a permission error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_token_file_is_reread_when_it_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let (s, recorded) = bearer_server(dir.path(), &[]).await;
    let file = dir.path().join("client-token");
    rotate(&file, ALICE);
    let client =
        s.client_with(ClientConfig::default().with_token_provider(Arc::new(FileToken::new(&file))));
    let last_token = |r: &Recorded| {
        r.take()
            .into_iter()
            .rev()
            .find(|r| r.method == "POST")
            .and_then(|r| r.authorization)
    };

    blob(&client, 10).await;
    assert_eq!(last_token(&recorded), Some(format!("Bearer {ALICE}")));
    rotate(&file, BOB);
    blob(&client, 10).await;
    assert_eq!(last_token(&recorded), Some(format!("Bearer {BOB}")));
    rotate(&file, STRANGER);
    let e = client
        .call(demo::PROTOCOL, "blob", size_params(10))
        .await
        .unwrap_err();
    assert_eq!(unauthorized(e), AuthRejection::InvalidCredential);
    std::fs::remove_file(&file).unwrap();
    match client.call(demo::PROTOCOL, "blob", size_params(10)).await {
        Err(Error::Credential(m)) => assert!(m.contains("client-token"), "{m}"),
        other => panic!("expected a credential error, got {other:?}"),
    }
    rotate(&file, ALICE);
    blob(&client, 10).await;
}

fn bearer_binary(dir: &Path, rust_log: &str) -> LoggedServe {
    let tokens = server_tokens(dir);
    LoggedServe::start(&[
        ("SPILLWAY_AUTH", "bearer"),
        ("SPILLWAY_AUTH_TOKENS_FILE", tokens.to_str().unwrap()),
        ("SPILLWAY_THRESHOLD_BYTES", "65536"),
        ("RUST_LOG", rust_log),
    ])
}

const BLOB: &str = "spillway.Demo.v1.blob";

#[test]
fn spillway_call_sends_the_token_from_the_flag_the_environment_or_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = bearer_binary(dir.path(), "info");
    let url = server.url.as_str();
    let ok = |out: Output| {
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("result"),
            "{}",
            text(&out)
        );
    };
    let refused = |out: Output, reason: &str| {
        assert!(!out.status.success(), "{}", text(&out));
        let t = text(&out);
        assert!(t.contains(&format!("unauthorized ({reason})")), "{t}");
        for secret in [ALICE, BOB, STRANGER] {
            assert!(!t.contains(secret), "{t}");
        }
    };

    ok(call(url, &[BLOB, "size=10", "--token", ALICE], &[]));
    ok(call(url, &[BLOB, "size=10"], &[("SPILLWAY_TOKEN", BOB)]));
    // Externalized: the pointer is fetched from the server's own storage route.
    let out = call(url, &[BLOB, "size=200000"], &[("SPILLWAY_TOKEN", ALICE)]);
    assert!(text(&out).contains("externalized result"), "{}", text(&out));
    ok(out);
    refused(call(url, &[BLOB, "size=10"], &[]), "missing_credential");
    refused(
        call(url, &[BLOB, "size=10", "--token", STRANGER], &[]),
        "invalid_credential",
    );

    let file = dir.path().join("token");
    let file_env = [("SPILLWAY_TOKEN_FILE", file.to_str().unwrap())];
    rotate(&file, ALICE);
    ok(call(url, &[BLOB, "size=10"], &file_env));
    rotate(&file, STRANGER);
    refused(
        call(url, &[BLOB, "size=10"], &file_env),
        "invalid_credential",
    );
    rotate(&file, BOB);
    ok(call(url, &[BLOB, "size=10"], &file_env));
    std::fs::remove_file(&file).unwrap();
    let out = call(url, &[BLOB, "size=10"], &file_env);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("credential unavailable"),
        "{}",
        text(&out)
    );

    // A malformed token is refused without being echoed (clap never sees it as invalid).
    let bad = "has space-in-the-token";
    let out = call(url, &[BLOB, "size=10", "--token", bad], &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--token"), "{}", text(&out));
    assert!(!text(&out).contains(bad), "{}", text(&out));
    // Both sources at once: refused, naming the flags only.
    let out = call(url, &[BLOB, "--token", ALICE], &file_env);
    assert!(!out.status.success());
    assert!(!text(&out).contains(ALICE), "{}", text(&out));
}

#[test]
fn help_never_shows_the_token_from_the_environment() {
    let out = call(
        "http://127.0.0.1:9",
        &["--help"],
        &[
            ("SPILLWAY_TOKEN", ALICE),
            ("SPILLWAY_TOKEN_FILE", "/run/secrets/token"),
        ],
    );
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("SPILLWAY_TOKEN"), "{help}");
    assert!(help.contains("--token-file"), "{help}");
    assert!(!help.contains(ALICE), "{help}");
}

#[tokio::test]
async fn no_token_reaches_the_logs_of_server_or_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = bearer_binary(dir.path(), "debug");
    let url = server.url.as_str();
    let debug = [("RUST_LOG", "debug")];
    let mut outputs = Vec::new();
    for (args, env) in [
        (vec![BLOB, "size=10", "--token", ALICE], vec![debug[0]]),
        (
            vec![BLOB, "size=200000"],
            vec![debug[0], ("SPILLWAY_TOKEN", BOB)],
        ),
        (vec![BLOB, "size=10", "--token", STRANGER], vec![debug[0]]),
        (
            vec![BLOB, "size=10"],
            vec![debug[0], ("SPILLWAY_TOKEN", "short-wrong")],
        ),
    ] {
        let out = call(url, &args, &env);
        outputs.push(text(&out));
    }
    // The Rust client's errors, in-process.
    for token in [STRANGER, "short-wrong"] {
        let mut config = ClientConfig::default().with_token(BearerToken::new(token).unwrap());
        config.fetch.policy = spillway::url_policy::UrlPolicy::local_testing();
        let client = Client::new(url, config).unwrap();
        let e = client
            .call(demo::PROTOCOL, "blob", size_params(10))
            .await
            .unwrap_err();
        outputs.push(format!("{e} {e:?}"));
    }
    let log = server.output();
    // The logs are there, at debug level, and saw the refusals.
    assert!(log.contains("DEBUG"), "{log}");
    assert!(log.contains("authentication rejected"), "{log}");
    assert!(outputs[0].contains("DEBUG"), "{}", outputs[0]);
    assert!(outputs[2].contains("invalid_credential"), "{}", outputs[2]);
    for secret in [ALICE, BOB, STRANGER, "short-wrong"] {
        assert!(!log.contains(secret), "server log holds a token:\n{log}");
        for o in &outputs {
            assert!(!o.contains(secret), "client output holds a token:\n{o}");
        }
    }
}
