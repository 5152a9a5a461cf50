//! JWT authentication against a real JWKS endpoint served by the test (keys generated here),
//! with a real `spillway serve` configuration and real HTTP calls: every refusal of the issue
//! (expired, not yet valid, wrong issuer, wrong audience, bad signature, `alg: none`, HS256
//! signed with the public key, unknown `kid`, oversized) answers 401 with its reason and the
//! server keeps serving; key rotation; the JWKS down; `bearer,jwt`; the OAuth metadata; and no
//! token in the log.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use spillway::server::auth::{JwtAuthenticator, JwtConfig};
use spillway::server::{Server, ServerConfig};
use spillway::wire::ARROW_STREAM_CONTENT_TYPE;

use crate::common::{echo_body, free_port, ServedBinary, TestServer};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const AUDIENCE: &str = "spillway";
const DEMO: &str = spillway::demo::PROTOCOL;

/// A signing key made for the test, and its public JWK.
struct TestKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
    /// The raw public key (for the algorithm-confusion token).
    public_raw: Vec<u8>,
}

impl TestKey {
    fn es256(kid: &str) -> TestKey {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw().to_vec();
        assert_eq!((raw.len(), raw[0]), (65, 4), "an uncompressed P-256 point");
        TestKey {
            kid: kid.to_string(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&kp.serialize_der()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
            }),
            public_raw: raw,
        }
    }

    fn ed25519(kid: &str) -> TestKey {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let raw = kp.public_key_raw().to_vec();
        assert_eq!(raw.len(), 32);
        TestKey {
            kid: kid.to_string(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(&kp.serialize_der()),
            jwk: json!({
                "kty": "OKP", "crv": "Ed25519", "kid": kid, "x": URL_SAFE_NO_PAD.encode(&raw),
            }),
            public_raw: raw,
        }
    }

    /// A token of `claims` signed by this key, its kid in the header.
    fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(kid.to_string());
        jsonwebtoken::encode(&h, claims, &self.encoding).unwrap()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims that pass every check, for `sub`.
fn claims(sub: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": [AUDIENCE, "other"],
        "sub": sub,
        "exp": now() + 600,
        "iat": now(),
        "kubernetes.io": {"namespace": "jobs"},
    })
}

fn with(mut c: Value, key: &str, v: Value) -> Value {
    c[key] = v;
    c
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// What the test's issuer serves at `/jwks`.
struct IssuerState {
    keys: Vec<Value>,
    status: StatusCode,
    hits: usize,
    /// The bearer token the endpoint wants, if any (as the Kubernetes API server does).
    required_token: Option<String>,
}

/// A JWKS endpoint on 127.0.0.1, stopped when dropped.
struct Jwks {
    url: String,
    state: Arc<Mutex<IssuerState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Jwks {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_jwks(
    State(st): State<Arc<Mutex<IssuerState>>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let mut st = st.lock().unwrap();
    st.hits += 1;
    if let Some(token) = &st.required_token {
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if sent != Some(format!("Bearer {token}").as_str()) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
    }
    (
        st.status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        json!({ "keys": st.keys }).to_string(),
    )
        .into_response()
}

impl Jwks {
    fn state(keys: &[&TestKey]) -> Arc<Mutex<IssuerState>> {
        Arc::new(Mutex::new(IssuerState {
            keys: keys.iter().map(|k| k.jwk.clone()).collect(),
            status: StatusCode::OK,
            hits: 0,
            required_token: None,
        }))
    }

    fn app(state: &Arc<Mutex<IssuerState>>) -> axum::Router {
        axum::Router::new()
            .route("/jwks", axum::routing::get(serve_jwks))
            .with_state(state.clone())
    }

    /// Over HTTPS with a certificate of a CA made here (returned as PEM), wanting `token`.
    async fn start_tls(keys: &[&TestKey], token: &str) -> (Jwks, String) {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let state = Self::state(keys);
        state.lock().unwrap().required_token = Some(token.to_string());
        let app = Self::app(&state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/jwks", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(stream),
                        hyper_util::service::TowerToHyperService::new(app),
                    )
                    .await;
                });
            }
        });
        (Jwks { url, state, task }, ca.pem())
    }

    async fn start(keys: &[&TestKey]) -> Jwks {
        let state = Self::state(keys);
        let app = Self::app(&state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Jwks { url, state, task }
    }

    fn publish(&self, keys: &[&TestKey]) {
        self.state.lock().unwrap().keys = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    fn set_status(&self, status: StatusCode) {
        self.state.lock().unwrap().status = status;
    }

    fn hits(&self) -> usize {
        self.state.lock().unwrap().hits
    }
}

/// `POST {base}/{DEMO}/echo` with `token` (if any) as a bearer credential.
async fn call(base: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/{DEMO}/echo"))
        .header("content-type", ARROW_STREAM_CONTENT_TYPE)
        .body(echo_body(b"hello"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

/// Asserts a 401 with `reason`, and returns the challenge.
async fn assert_refused(base: &str, token: &str, reason: &str, case: &str) -> String {
    let resp = call(base, Some(token)).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{case}");
    let h = resp.headers();
    assert_eq!(h["vgi-auth-reason"], reason, "{case}");
    let challenge = h[header::WWW_AUTHENTICATE].to_str().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized", "{case}");
    assert_eq!(body["reason"], reason, "{case}");
    assert!(
        !body.to_string().contains(token),
        "{case}: the token is echoed"
    );
    challenge
}

/// `--auth jwt` against the JWKS at `url`, for ISSUER and AUDIENCE.
fn jwt_flags_for(url: &str) -> Vec<String> {
    [
        "--auth",
        "jwt",
        "--auth-jwks-url",
        url,
        "--auth-issuer",
        ISSUER,
        "--auth-audience",
        AUDIENCE,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn jwt_flags(jwks: &Jwks) -> Vec<String> {
    [
        "--auth",
        "jwt",
        "--auth-jwks-url",
        &jwks.url,
        "--auth-issuer",
        ISSUER,
        "--auth-audience",
        "spillway,spillway-alt",
        "--prefix",
        "/vgi",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Every refusal, each with its reason; a valid token works before, between and after them.
#[tokio::test]
async fn bad_tokens_are_refused_and_the_server_keeps_serving() {
    let key = TestKey::es256("key-1");
    let jwks = Jwks::start(&[&key]).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("authz.toml");
    std::fs::write(
        &policy,
        format!("[[rule]]\nprotocol = \"{DEMO}\"\nprincipals = [\"alice\"]\n"),
    )
    .unwrap();
    let s = TestServer::start_with(
        jwt_flags(&jwks),
        &["--authz-file", policy.to_str().unwrap()],
    )
    .await;
    let good = key.sign(&claims("alice"));
    assert_eq!(call(&s.base, Some(&good)).await.status(), StatusCode::OK);
    // The principal is the `sub`: the policy admits alice only.
    let mallory = key.sign(&claims("mallory"));
    assert_eq!(
        call(&s.base, Some(&mallory)).await.status(),
        StatusCode::FORBIDDEN
    );
    // A token for the second configured audience only.
    let alt = key.sign(&with(claims("alice"), "aud", json!("spillway-alt")));
    assert_eq!(call(&s.base, Some(&alt)).await.status(), StatusCode::OK);

    let forger = TestKey::es256("key-1");
    let ghost = TestKey::es256("ghost");
    let hs256_with_public_key = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(key.kid.clone());
        let secret = EncodingKey::from_secret(&key.public_raw).unwrap();
        let jwk_secret = EncodingKey::from_secret(key.jwk.to_string().as_bytes()).unwrap();
        let a = jsonwebtoken::encode(&h, &claims("alice"), &secret).unwrap();
        let b = jsonwebtoken::encode(&h, &claims("alice"), &jwk_secret).unwrap();
        [a, b]
    };
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": key.kid})),
        b64(&claims("alice"))
    );
    let mut spliced = good.rsplit_once('.').unwrap().0.to_string();
    let other_sig = key.sign(&claims("bob"));
    spliced.push('.');
    spliced.push_str(other_sig.rsplit('.').next().unwrap());
    let oversized = key.sign(&with(claims("alice"), "pad", json!("x".repeat(9000))));
    let es384_header = {
        // The key is P-256: a header claiming ES384 under its kid must not be tried.
        let header = b64(&json!({"alg": "ES384", "kid": key.kid}));
        let rest = good.split_once('.').unwrap().1;
        format!("{header}.{rest}")
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            key.sign(&with(claims("alice"), "exp", json!(now() - 3600))),
            "expired_credential",
        ),
        (
            "not yet valid",
            key.sign(&with(claims("alice"), "nbf", json!(now() + 3600))),
            "expired_credential",
        ),
        (
            "wrong issuer",
            key.sign(&with(claims("alice"), "iss", json!("https://evil.example"))),
            "invalid_credential",
        ),
        (
            "wrong audience",
            key.sign(&with(claims("alice"), "aud", json!("someone-else"))),
            "invalid_credential",
        ),
        (
            "no exp",
            key.sign(&{
                let mut c = claims("alice");
                c.as_object_mut().unwrap().remove("exp");
                c
            }),
            "invalid_credential",
        ),
        (
            "sub not a string",
            key.sign(&with(claims("alice"), "sub", json!(42))),
            "invalid_credential",
        ),
        (
            "bad signature (another key, same kid)",
            forger.sign(&claims("alice")),
            "invalid_credential",
        ),
        ("bad signature (spliced)", spliced, "invalid_credential"),
        ("alg none", alg_none, "invalid_credential"),
        (
            "HS256 with the public key bytes",
            hs256_with_public_key[0].clone(),
            "invalid_credential",
        ),
        (
            "HS256 with the JWK as secret",
            hs256_with_public_key[1].clone(),
            "invalid_credential",
        ),
        (
            "alg of another key type",
            es384_header,
            "invalid_credential",
        ),
        (
            "unknown kid",
            ghost.sign(&claims("alice")),
            "invalid_credential",
        ),
        ("oversized", oversized, "invalid_credential"),
        (
            "not a jwt",
            "opaque-token-0123456789".into(),
            "invalid_credential",
        ),
    ];
    let metadata = format!(
        "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource/vgi\"",
        s.origin()
    );
    for (case, token, reason) in &cases {
        let challenge = assert_refused(&s.base, token, reason, case).await;
        assert_eq!(challenge, metadata, "{case}");
        // Still serving.
        assert_eq!(
            call(&s.base, Some(&good)).await.status(),
            StatusCode::OK,
            "after {case}"
        );
    }
    // No credential: missing_credential, with the same challenge.
    let resp = call(&s.base, None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["vgi-auth-reason"], "missing_credential");
    assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], metadata.as_str());
    // Health stays open.
    let health = reqwest::get(format!("{}/health", s.base)).await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

/// The protected-resource metadata is served without authentication, where the challenge
/// says, with the prefix and without it; it names the issuer.
#[tokio::test]
async fn the_oauth_metadata_is_served_without_auth() {
    let key = TestKey::es256("key-1");
    let jwks = Jwks::start(&[&key]).await;
    let s = TestServer::start_with(jwt_flags(&jwks), &[]).await;
    let challenge = assert_refused(&s.base, "garbage", "invalid_credential", "garbage").await;
    let url = challenge
        .strip_prefix("Bearer resource_metadata=\"")
        .and_then(|c| c.strip_suffix('"'))
        .unwrap()
        .to_string();
    let bare = format!("{}/.well-known/oauth-protected-resource", s.origin());
    assert_eq!(url, format!("{bare}/vgi"));
    for u in [url.as_str(), bare.as_str()] {
        let resp = reqwest::get(u).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{u}");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let doc: Value = resp.json().await.unwrap();
        assert_eq!(doc["resource"], format!("{}/vgi", s.origin()), "{u}");
        assert_eq!(doc["authorization_servers"], json!([ISSUER]), "{u}");
    }
    // Not under the prefix: there it is a call path like any other, behind the gate.
    let under = reqwest::get(format!("{}/.well-known/oauth-protected-resource", s.base))
        .await
        .unwrap();
    assert_eq!(under.status(), StatusCode::UNAUTHORIZED);
    // Without JWT there is no metadata.
    let open = TestServer::start(&["--prefix", "/vgi"]).await;
    let resp = reqwest::get(format!(
        "{}/.well-known/oauth-protected-resource/vgi",
        open.origin()
    ))
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

/// Rotation: a new key (new kid) is picked up on the first token that names it; the old
/// key's tokens keep working while it is cached and stop once a refresh drops it; a failed
/// refresh keeps the last good keys. Driven by `JwtAuthenticator::refresh`, not by time.
#[tokio::test]
async fn keys_rotate_through_the_jwks() {
    let old = TestKey::es256("old");
    let new = TestKey::ed25519("new");
    let jwks = Jwks::start(&[&old]).await;
    let mut config = JwtConfig::new(
        jwks.url.parse().unwrap(),
        ISSUER,
        vec![AUDIENCE.to_string()],
    );
    // Every unknown kid may refresh: the rotation is driven by the tokens.
    config.min_refresh_interval = Duration::ZERO;
    let auth = Arc::new(JwtAuthenticator::new(config).unwrap());
    let server = Server::new(ServerConfig::default())
        .with_protocol(spillway::demo::protocol().unwrap())
        .with_authenticator(auth.clone());
    let s = TestServer::start_server(server).await;
    let old_token = old.sign(&claims("alice"));
    let new_token = new.sign(&claims("bob"));
    assert_eq!(
        call(&s.base, Some(&old_token)).await.status(),
        StatusCode::OK
    );
    assert_eq!(jwks.hits(), 1);
    // Not published yet: refused (the unknown kid refreshes, and it is still unknown).
    assert_refused(&s.base, &new_token, "invalid_credential", "unpublished").await;
    assert_eq!(jwks.hits(), 2);
    // The issuer publishes the new key next to the old one.
    jwks.publish(&[&old, &new]);
    assert_eq!(
        call(&s.base, Some(&new_token)).await.status(),
        StatusCode::OK
    );
    assert_eq!(jwks.hits(), 3);
    // The old key is removed; cached, its tokens still verify (no fetch per token).
    jwks.publish(&[&new]);
    assert_eq!(
        call(&s.base, Some(&old_token)).await.status(),
        StatusCode::OK
    );
    assert_eq!(jwks.hits(), 3);
    // The next refresh drops it.
    assert_eq!(auth.refresh().await.unwrap(), 1);
    assert_refused(&s.base, &old_token, "invalid_credential", "removed key").await;
    assert_eq!(
        call(&s.base, Some(&new_token)).await.status(),
        StatusCode::OK
    );
    // The issuer fails: the last good keys stay in use.
    jwks.set_status(StatusCode::INTERNAL_SERVER_ERROR);
    let e = auth.refresh().await.unwrap_err().to_string();
    assert!(e.contains("500"), "{e}");
    assert_eq!(
        call(&s.base, Some(&new_token)).await.status(),
        StatusCode::OK
    );
}

/// No JWKS and no cached key: 503 with Retry-After (not a 401), and the JWKS is not asked
/// again on every token.
#[tokio::test]
async fn an_unreachable_jwks_answers_503() {
    let key = TestKey::es256("key-1");
    let url = format!("http://127.0.0.1:{}/jwks", free_port());
    let s = TestServer::start_with(jwt_flags_for(&url), &[]).await;
    let token = key.sign(&claims("alice"));
    for _ in 0..3 {
        let resp = call(&s.base, Some(&token)).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let retry: u64 = resp.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=10).contains(&retry), "{retry}");
    }
    // A down issuer that answers 500 is the same.
    let jwks = Jwks::start(&[&key]).await;
    jwks.set_status(StatusCode::INTERNAL_SERVER_ERROR);
    let s = TestServer::start_with(jwt_flags_for(&jwks.url), &[]).await;
    // Without a prefix the metadata path would match `/{protocol}/{method}`: it is still
    // the open metadata, even with the issuer down.
    let doc: Value = reqwest::get(format!(
        "{}/.well-known/oauth-protected-resource",
        s.origin()
    ))
    .await
    .unwrap()
    .error_for_status()
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(doc["authorization_servers"], json!([ISSUER]));
    for _ in 0..5 {
        let resp = call(&s.base, Some(&token)).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    // One request per refresh interval, not one per token.
    assert_eq!(jwks.hits(), 1);
}

/// A flood of tokens with random kids costs the issuer at most one extra fetch per interval.
#[tokio::test]
async fn random_kids_do_not_hammer_the_issuer() {
    let key = TestKey::es256("key-1");
    let jwks = Jwks::start(&[&key]).await;
    let s = TestServer::start_with(jwt_flags(&jwks), &[]).await;
    assert_eq!(
        call(&s.base, Some(&key.sign(&claims("alice"))))
            .await
            .status(),
        StatusCode::OK
    );
    let mut tasks = Vec::new();
    for i in 0..40 {
        let token = key.sign_as(&format!("random-{i}"), &claims("alice"));
        let base = s.base.clone();
        tasks.push(tokio::spawn(async move {
            call(&base, Some(&token)).await.status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    // The first fetch, and at most one more if the interval (10 s) passed meanwhile.
    assert!(jwks.hits() <= 2, "{} fetches", jwks.hits());
}

/// `bearer,jwt`: a static token and a JWT both authenticate; an expired JWT is still told
/// apart from a wrong token.
#[tokio::test]
async fn bearer_and_jwt_together() {
    let key = TestKey::es256("key-1");
    let jwks = Jwks::start(&[&key]).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "static-token-0123456789abcdef ci-bot\n").unwrap();
    let mut flags = jwt_flags(&jwks);
    flags[1] = "bearer,jwt".into();
    let s = TestServer::start_with(flags, &["--auth-tokens-file", tokens.to_str().unwrap()]).await;
    assert_eq!(
        call(&s.base, Some("static-token-0123456789abcdef"))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        call(&s.base, Some(&key.sign(&claims("alice"))))
            .await
            .status(),
        StatusCode::OK
    );
    assert_refused(
        &s.base,
        "unknown-token-0123456789",
        "invalid_credential",
        "bad",
    )
    .await;
    let expired = key.sign(&with(claims("alice"), "exp", json!(now() - 3600)));
    assert_refused(&s.base, &expired, "expired_credential", "expired").await;
    let resp = call(&s.base, None).await;
    assert_eq!(resp.headers()["vgi-auth-reason"], "missing_credential");
}

/// Settings: each missing JWT variable is named; JWT settings without `jwt` are refused.
#[tokio::test]
async fn jwt_settings_are_checked() {
    use clap::Parser;
    use spillway::cli::{Cli, Command};
    let build = |flags: &[&str]| {
        let mut argv = vec!["spillway", "serve"];
        argv.extend_from_slice(flags);
        let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!()
        };
        args
    };
    let url = "http://127.0.0.1:9/jwks";
    for (flags, want) in [
        (
            vec![
                "--auth",
                "jwt",
                "--auth-issuer",
                ISSUER,
                "--auth-audience",
                AUDIENCE,
            ],
            "SPILLWAY_AUTH_JWKS_URL",
        ),
        (
            vec![
                "--auth",
                "jwt",
                "--auth-jwks-url",
                url,
                "--auth-audience",
                AUDIENCE,
            ],
            "SPILLWAY_AUTH_ISSUER",
        ),
        (
            vec![
                "--auth",
                "jwt",
                "--auth-jwks-url",
                url,
                "--auth-issuer",
                ISSUER,
            ],
            "SPILLWAY_AUTH_AUDIENCE",
        ),
        (
            vec!["--auth-jwks-url", url],
            "SPILLWAY_AUTH_JWKS_URL is set but SPILLWAY_AUTH does not include jwt",
        ),
        (
            vec![
                "--auth",
                "jwt",
                "--auth-jwks-url",
                url,
                "--auth-issuer",
                ISSUER,
                "--auth-audience",
                AUDIENCE,
                "--auth-leeway",
                "100000",
            ],
            "SPILLWAY_AUTH_LEEWAY",
        ),
    ] {
        let e = build(&flags)
            .build_server()
            .await
            .err()
            .unwrap_or_else(|| panic!("{flags:?} accepted"))
            .to_string();
        assert!(e.contains(want), "{flags:?}: {e}");
    }
}

/// The log of an auth run (the built binary, `RUST_LOG=debug`) never holds a token, a
/// signature or the key: the refusals are logged with their reason only.
#[tokio::test]
async fn tokens_never_reach_the_log() {
    let key = TestKey::es256("key-1");
    let jwks = Jwks::start(&[&key]).await;
    let (served, log) = ServedBinary::start_logged(&[
        ("RUST_LOG", "debug"),
        ("SPILLWAY_AUTH", "jwt"),
        ("SPILLWAY_AUTH_JWKS_URL", &jwks.url),
        ("SPILLWAY_AUTH_ISSUER", ISSUER),
        ("SPILLWAY_AUTH_AUDIENCE", AUDIENCE),
    ]);
    let good = key.sign(&claims("alice"));
    let tokens = [
        good.clone(),
        key.sign(&with(claims("alice"), "exp", json!(now() - 3600))),
        TestKey::es256("key-1").sign(&claims("alice")),
        key.sign(&with(claims("alice"), "aud", json!("someone-else"))),
        "opaque-secret-token-0123456789".to_string(),
    ];
    assert_eq!(
        call(&served.url, Some(&good)).await.status(),
        StatusCode::OK
    );
    for t in &tokens[1..] {
        assert_eq!(
            call(&served.url, Some(t)).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // Wait (with a deadline) until the four refusals are logged.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let lines = log.lock().unwrap().clone();
        if lines
            .iter()
            .filter(|l| l.contains("authentication rejected"))
            .count()
            >= 4
        {
            break lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "refusals not logged: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let all = lines.join("\n");
    assert!(all.contains("token expired"), "{all}");
    assert!(all.contains("bad signature"), "{all}");
    assert!(all.contains("audience mismatch"), "{all}");
    for t in &tokens {
        // The whole token, and its signature part alone.
        assert!(!all.contains(t.as_str()), "a token reached the log");
        let sig = t.rsplit('.').next().unwrap();
        assert!(
            sig.len() < 16 || !all.contains(sig),
            "a signature reached the log"
        );
    }
    for coord in ["x", "y"] {
        let v = key.jwk[coord].as_str().unwrap();
        assert!(!all.contains(v), "key material reached the log");
    }
}

/// Kubernetes in-cluster: the JWKS over HTTPS with the cluster's CA, wanting the pod's own
/// token. With both the JWT works; without the token (the JWKS answers 401) or without the
/// CA (TLS refuses), no key can be had: 503.
#[tokio::test]
async fn the_jwks_is_fetched_over_https_with_a_ca_and_a_token() {
    let key = TestKey::es256("k8s-key");
    let reader = "jwks-reader-token-0123456789";
    let (jwks, ca_pem) = Jwks::start_tls(&[&key], reader).await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, token_file) = (dir.path().join("ca.crt"), dir.path().join("token"));
    std::fs::write(&ca, ca_pem).unwrap();
    std::fs::write(&token_file, format!("{reader}\n")).unwrap();
    let (ca, token_file) = (ca.to_str().unwrap(), token_file.to_str().unwrap());
    let token = key.sign(&claims("system:serviceaccount:jobs:loader"));
    let start = |extra: &[&str]| {
        let mut flags = jwt_flags_for(&jwks.url);
        flags.extend(extra.iter().map(|s| s.to_string()));
        TestServer::start_with(flags, &[])
    };
    let s = start(&["--auth-jwks-ca", ca, "--auth-jwks-token-file", token_file]).await;
    assert_eq!(call(&s.base, Some(&token)).await.status(), StatusCode::OK);
    let hits = jwks.hits();
    let s = start(&["--auth-jwks-ca", ca]).await;
    assert_eq!(
        call(&s.base, Some(&token)).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(jwks.hits(), hits + 1, "asked without the token");
    let s = start(&["--auth-jwks-token-file", token_file]).await;
    assert_eq!(
        call(&s.base, Some(&token)).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(jwks.hits(), hits + 1, "TLS must fail before any request");
}
