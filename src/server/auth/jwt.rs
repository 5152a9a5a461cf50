//! JWT bearer tokens checked against an issuer's JWKS (`SPILLWAY_AUTH=jwt`): OIDC providers
//! and Kubernetes service-account tokens.
//!
//! A token is accepted when it is a compact JWS signed with an asymmetric algorithm (RS*,
//! PS*, ES256, ES384, EdDSA) by a key of the issuer's JWKS whose type (and `alg`, when the key
//! names one) fits the token's `alg`; its `iss` is the configured issuer; its `aud` holds one
//! of the configured audiences; `exp` is present and not past and `nbf`, when present, is
//! reached (both with the configured leeway). `alg: none` and the HMAC algorithms are refused
//! before any key is looked at, so a public key can never be used as an HMAC secret. The
//! header's `jku`, `x5u` and `jwk` are ignored: keys come from the configured JWKS only.
//!
//! The JWKS is cached (`Cache-Control: max-age` honoured within bounds), refreshed when a
//! token names an unknown `kid` (at most once per [`JwtConfig::min_refresh_interval`], and
//! concurrent refreshes share one request), and the last good keys are kept when a refresh
//! fails. With no key at all because the JWKS cannot be fetched, callers get 503 with
//! `Retry-After` ([`AuthFailure::Unavailable`]), not a 401.

mod jwks;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};
use url::Url;

use super::bearer::bearer_token;
use super::{AuthContext, AuthFailure, AuthReason, Authenticator};
use crate::error::{Error, Result};
use jwks::{Jwks, JwksBounds, Selection};

/// The domain of contexts this authenticator vouches for.
pub const JWT_DOMAIN: &str = "jwt";
/// The largest clock leeway accepted: more would keep expired tokens alive for long.
pub const MAX_LEEWAY: Duration = Duration::from_secs(600);
/// The longest principal accepted from a claim.
const MAX_PRINCIPAL_LEN: usize = 1024;

/// The settings of a [`JwtAuthenticator`]. Build it with [`JwtConfig::new`] and adjust the
/// bounds if needed; the defaults suit OIDC providers and Kubernetes.
#[derive(Clone)]
pub struct JwtConfig {
    /// The issuer's JWKS (`https://...`; `http://` only for tests or an in-cluster sidecar:
    /// whoever can tamper with it can mint tokens).
    pub jwks_url: Url,
    /// The required `iss`.
    pub issuer: String,
    /// The accepted `aud` values: a token is accepted when its `aud` holds any of them.
    pub audiences: Vec<String>,
    /// The claim that names the principal (a non-empty string claim; default `sub`).
    pub principal_claim: String,
    /// Clock leeway for `exp` and `nbf` (default 60 s, at most [`MAX_LEEWAY`]).
    pub leeway: Duration,
    /// Where the protected-resource metadata is served, for the `WWW-Authenticate`
    /// challenge (`Bearer resource_metadata="..."`); `None`: a bare `Bearer`. See
    /// [`OAuthResourceMetadata::well_known_url`](super::OAuthResourceMetadata::well_known_url).
    pub resource_metadata_url: Option<Url>,
    /// Longest token accepted, in bytes (default 8 KiB); larger ones are refused unparsed.
    pub max_token_bytes: usize,
    /// Timeout of one JWKS request (default 5 s).
    pub fetch_timeout: Duration,
    /// Largest JWKS document accepted (default 256 KiB).
    pub max_jwks_bytes: u64,
    /// Most keys in one JWKS document (default 100).
    pub max_jwks_keys: usize,
    /// How long a fetched JWKS is fresh when its response says nothing (default 5 min).
    pub default_cache_ttl: Duration,
    /// Bounds on the response's `Cache-Control: max-age` (default 30 s to 1 h): the upper
    /// bound is how long a key the issuer removed can still verify tokens.
    pub min_cache_ttl: Duration,
    /// See [`JwtConfig::min_cache_ttl`].
    pub max_cache_ttl: Duration,
    /// Least time between two JWKS requests caused by unknown `kid`s or by failures (default
    /// 10 s): a flood of tokens with random `kid`s costs the issuer one request per interval.
    pub min_refresh_interval: Duration,
    /// PEM CA bundle that alone is trusted for the JWKS fetch (e.g. the Kubernetes API
    /// server's `ca.crt`); `None`: the system's roots.
    pub jwks_ca_pem: Option<Vec<u8>>,
    /// A file holding a bearer token sent with each JWKS request (re-read every time, as
    /// projected Kubernetes tokens rotate): the API server's `/openid/v1/jwks` wants one.
    pub jwks_token_file: Option<PathBuf>,
}

impl JwtConfig {
    /// The settings for tokens of `issuer`, for one of `audiences`, checked against the JWKS
    /// at `jwks_url`, with the default bounds.
    pub fn new(jwks_url: Url, issuer: impl Into<String>, audiences: Vec<String>) -> Self {
        JwtConfig {
            jwks_url,
            issuer: issuer.into(),
            audiences,
            principal_claim: "sub".to_string(),
            leeway: Duration::from_secs(60),
            resource_metadata_url: None,
            max_token_bytes: 8 * 1024,
            fetch_timeout: Duration::from_secs(5),
            max_jwks_bytes: 256 * 1024,
            max_jwks_keys: 100,
            default_cache_ttl: Duration::from_secs(300),
            min_cache_ttl: Duration::from_secs(30),
            max_cache_ttl: Duration::from_secs(3600),
            min_refresh_interval: Duration::from_secs(10),
            jwks_ca_pem: None,
            jwks_token_file: None,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        if !matches!(self.jwks_url.scheme(), "http" | "https") || self.jwks_url.host().is_none() {
            return bad(format!(
                "jwt: the jwks url must be http(s) with a host, got {}",
                spillway_storage::redact_url(self.jwks_url.as_str())
            ));
        }
        if self.issuer.trim().is_empty() {
            return bad("jwt: the issuer must not be empty".into());
        }
        if self.audiences.iter().all(|a| a.trim().is_empty()) {
            return bad("jwt: at least one audience is required".into());
        }
        if self.principal_claim.trim().is_empty() {
            return bad("jwt: the principal claim must not be empty".into());
        }
        if self.leeway > MAX_LEEWAY {
            return bad(format!(
                "jwt: a leeway of {} s exceeds the limit of {} s",
                self.leeway.as_secs(),
                MAX_LEEWAY.as_secs()
            ));
        }
        if self.max_token_bytes == 0 || self.max_jwks_bytes == 0 || self.max_jwks_keys == 0 {
            return bad("jwt: the token and jwks size limits must be at least 1".into());
        }
        if self.min_cache_ttl > self.max_cache_ttl {
            return bad("jwt: min_cache_ttl exceeds max_cache_ttl".into());
        }
        Ok(())
    }
}

// By hand: the JWKS URL may carry a credential in its query.
impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field(
                "jwks_url",
                &spillway_storage::redact_url(self.jwks_url.as_str()),
            )
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("principal_claim", &self.principal_claim)
            .field("leeway", &self.leeway)
            .field(
                "resource_metadata_url",
                &self.resource_metadata_url.as_ref().map(|u| u.as_str()),
            )
            .field("max_token_bytes", &self.max_token_bytes)
            .field("min_refresh_interval", &self.min_refresh_interval)
            .field("jwks_ca_pem", &self.jwks_ca_pem.as_ref().map(Vec::len))
            .field("jwks_token_file", &self.jwks_token_file)
            .finish_non_exhaustive()
    }
}

/// Authenticates `Authorization: Bearer <jwt>` against an issuer's JWKS (see the [module
/// docs](self) for what is checked). The principal is [`JwtConfig::principal_claim`]; every
/// claim goes into [`AuthContext::claims`]; the domain is `jwt`.
///
/// Refusals are `expired_credential` for a token outside its validity window and
/// `invalid_credential` for everything else; the log detail names the check that failed,
/// never the token, its signature or a key.
///
/// ```no_run
/// # fn f() -> spillway::Result<()> {
/// use std::sync::Arc;
/// use spillway::server::auth::{JwtAuthenticator, JwtConfig};
/// let config = JwtConfig::new(
///     "https://kubernetes.default.svc/openid/v1/jwks".parse().unwrap(),
///     "https://kubernetes.default.svc.cluster.local",
///     vec!["spillway".to_string()],
/// );
/// let jwt = Arc::new(JwtAuthenticator::new(config)?);
/// # Ok(()) }
/// ```
pub struct JwtAuthenticator {
    config: JwtConfig,
    jwks: Jwks,
    challenge: String,
}

impl fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why a token was refused, for the log: the failed check, never token content.
fn reject(reason: AuthReason, detail: impl Into<String>) -> AuthFailure {
    AuthFailure::rejected(reason, format!("jwt: {}", detail.into()))
}

fn invalid(detail: impl Into<String>) -> AuthFailure {
    reject(AuthReason::InvalidCredential, detail)
}

impl JwtAuthenticator {
    /// Checks `config` and builds the authenticator. The JWKS is fetched on the first token
    /// (or by [`JwtAuthenticator::refresh`]), so a briefly unreachable issuer does not stop
    /// the server from starting.
    pub fn new(config: JwtConfig) -> Result<Self> {
        config.validate()?;
        if config.jwks_url.scheme() == "http" {
            let loopback = match config.jwks_url.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            };
            if !loopback {
                tracing::warn!(
                    jwks = %spillway_storage::redact_url(config.jwks_url.as_str()),
                    "the jwks is fetched over plain http: whoever can alter it on the way can mint accepted tokens"
                );
            }
        }
        let mut client = reqwest::Client::builder()
            .connect_timeout(config.fetch_timeout)
            .timeout(config.fetch_timeout)
            // A redirect could lead from https to http; the JWKS URL is configured exactly.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &config.jwks_ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    Error::Config("jwt: the jwks ca bundle holds no pem certificate".into())
                })?;
            client = client.tls_certs_only(certs);
        }
        let client = client
            .build()
            .map_err(|e| Error::Config(format!("jwt: cannot build the jwks http client: {e}")))?;
        let bounds = JwksBounds {
            fetch_timeout: config.fetch_timeout,
            max_bytes: config.max_jwks_bytes,
            max_keys: config.max_jwks_keys,
            default_ttl: config.default_cache_ttl,
            min_ttl: config.min_cache_ttl,
            max_ttl: config.max_cache_ttl,
            min_refresh_interval: config.min_refresh_interval,
            token_file: config.jwks_token_file.clone(),
        };
        let challenge = match &config.resource_metadata_url {
            Some(url) => format!("Bearer resource_metadata=\"{url}\""),
            None => "Bearer".to_string(),
        };
        Ok(JwtAuthenticator {
            jwks: Jwks::new(config.jwks_url.clone(), client, bounds),
            config,
            challenge,
        })
    }

    /// The settings.
    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    /// Fetches the JWKS now, whatever the cache and the rate limit say (e.g. at startup, or
    /// on an operator's signal after the issuer removed a key). Returns how many usable keys
    /// it holds; on failure the keys loaded before stay in use.
    pub async fn refresh(&self) -> Result<usize> {
        self.jwks
            .force_refresh()
            .await
            .map(|k| k.len())
            .map_err(|detail| Error::Http(format!("jwt: {detail}")))
    }

    /// Verifies one token and builds the caller's context.
    async fn verify(&self, token: &str) -> std::result::Result<AuthContext, AuthFailure> {
        // Bounded before anything is decoded.
        if token.len() > self.config.max_token_bytes {
            return Err(invalid(format!(
                "token of {} bytes exceeds the limit of {} bytes",
                token.len(),
                self.config.max_token_bytes
            )));
        }
        if token.split('.').count() != 3 {
            return Err(invalid("not a compact jws (three dot-separated parts)"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            invalid(match header_alg_name(token) {
                Some(alg) => format!("algorithm {alg} is not supported"),
                None => "malformed token header".to_string(),
            })
        })?;
        let alg = header.alg;
        if !jwks::is_allowed_alg(alg) {
            return Err(invalid(format!(
                "algorithm {alg:?} refused: only asymmetric signatures are accepted"
            )));
        }
        let kid = header.kid.as_deref();
        let unavailable = |u: jwks::Unreachable| AuthFailure::unavailable(u.detail, u.retry_after);
        let mut keys = self.jwks.keys(false).await.map_err(unavailable)?;
        if matches!(keys.select(kid, alg), Selection::UnknownKid) {
            // Perhaps the issuer rotated its keys since the last fetch.
            keys = self.jwks.keys(true).await.map_err(unavailable)?;
        }
        let key = match keys.select(kid, alg) {
            Selection::Found(key) => key,
            Selection::UnknownKid => return Err(invalid("no key of the jwks has the token's kid")),
            Selection::AlgMismatch => {
                return Err(invalid(format!(
                    "the key of the token's kid does not verify {alg:?}"
                )))
            }
            Selection::Ambiguous => {
                return Err(invalid(
                    "the token names no kid and the jwks has no single key for its algorithm",
                ))
            }
        };
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation(alg))
            .map_err(|e| refusal(e.kind()))?;
        let claims = data.claims;
        let principal = principal_of(&claims, &self.config.principal_claim)?;
        Ok(AuthContext::new(JWT_DOMAIN, principal).with_claims(claims))
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.set_issuer(&[self.config.issuer.as_str()]);
        v.set_audience(&self.config.audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = true;
        v.leeway = self.config.leeway.as_secs();
        v
    }
}

/// The refusal for a failed decode: the check that failed, in words of our own (the
/// library's messages may quote token content).
fn refusal(kind: &ErrorKind) -> AuthFailure {
    match kind {
        ErrorKind::ExpiredSignature => reject(AuthReason::ExpiredCredential, "token expired"),
        ErrorKind::ImmatureSignature => {
            reject(AuthReason::ExpiredCredential, "token not yet valid (nbf)")
        }
        ErrorKind::InvalidIssuer => invalid("issuer mismatch"),
        ErrorKind::InvalidAudience => invalid("audience mismatch"),
        ErrorKind::InvalidSignature => invalid("bad signature"),
        ErrorKind::InvalidAlgorithm => invalid("algorithm mismatch"),
        ErrorKind::MissingRequiredClaim(claim) => {
            let claim = match claim.as_str() {
                "exp" | "iss" | "aud" => claim.as_str(),
                _ => "a registered claim",
            };
            invalid(format!("required claim {claim} missing"))
        }
        ErrorKind::InvalidClaimFormat(_) => invalid("a registered claim has the wrong type"),
        _ => invalid("malformed token"),
    }
}

/// The principal: claim `name`, a non-empty string of bounded length.
fn principal_of(
    claims: &Map<String, Value>,
    name: &str,
) -> std::result::Result<String, AuthFailure> {
    match claims.get(name) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_PRINCIPAL_LEN => Ok(s.clone()),
        _ => Err(invalid(format!(
            "the principal claim {name} is missing, not a string, empty or longer than {MAX_PRINCIPAL_LEN} bytes"
        ))),
    }
}

/// The `alg` of an unparseable header, for the log, when it is a short plain word (`none`,
/// `HS256`, `ES512`): anything else is not echoed.
fn header_alg_name(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = URL_SAFE_NO_PAD.decode(header).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    let alg = value.get("alg")?.as_str()?;
    (!alg.is_empty() && alg.len() <= 16 && alg.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| alg.to_string())
}

#[async_trait]
impl Authenticator for JwtAuthenticator {
    fn name(&self) -> &str {
        JWT_DOMAIN
    }

    async fn authenticate(
        &self,
        request: &http::request::Parts,
    ) -> std::result::Result<Option<AuthContext>, AuthFailure> {
        match bearer_token(&request.headers) {
            None => Ok(None),
            Some(Err(())) => Err(invalid("malformed or oversized authorization header")),
            Some(Ok(token)) => self.verify(token).await.map(Some),
        }
    }

    fn challenge(&self) -> Option<String> {
        Some(self.challenge.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> JwtConfig {
        JwtConfig::new(
            "https://issuer.example/jwks".parse().unwrap(),
            "https://issuer.example",
            vec!["spillway".into()],
        )
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn the_principal_comes_from_the_configured_claim() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"sub":"system:serviceaccount:jobs:loader","email":"a@b.c","n":3,"e":""}"#,
        )
        .unwrap();
        assert_eq!(
            principal_of(&claims, "sub").unwrap(),
            "system:serviceaccount:jobs:loader"
        );
        assert_eq!(principal_of(&claims, "email").unwrap(), "a@b.c");
        for name in ["n", "e", "absent"] {
            let f = principal_of(&claims, name).unwrap_err();
            assert!(matches!(
                f,
                AuthFailure::Rejected {
                    reason: AuthReason::InvalidCredential,
                    ..
                }
            ));
        }
        let long: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"sub": "x".repeat(MAX_PRINCIPAL_LEN + 1)}))
                .unwrap();
        assert!(principal_of(&long, "sub").is_err());
    }

    #[test]
    fn expiry_is_its_own_reason_and_details_are_ours() {
        let reason = |k: ErrorKind| match refusal(&k) {
            AuthFailure::Rejected { reason, .. } => reason,
            AuthFailure::Unavailable { .. } => unreachable!(),
        };
        assert_eq!(
            reason(ErrorKind::ExpiredSignature),
            AuthReason::ExpiredCredential
        );
        assert_eq!(
            reason(ErrorKind::ImmatureSignature),
            AuthReason::ExpiredCredential
        );
        for k in [
            ErrorKind::InvalidIssuer,
            ErrorKind::InvalidAudience,
            ErrorKind::InvalidSignature,
            ErrorKind::InvalidToken,
            ErrorKind::MissingRequiredClaim("exp".into()),
        ] {
            assert_eq!(reason(k), AuthReason::InvalidCredential);
        }
        let f = refusal(&ErrorKind::MissingRequiredClaim("secret-ish".into()));
        assert!(!f.to_string().contains("secret-ish"), "{f}");
    }

    #[test]
    fn the_header_alg_is_echoed_only_when_plain() {
        let token = |h: Value| format!("{}.e30.sig", b64(&h));
        assert_eq!(
            header_alg_name(&token(serde_json::json!({"alg": "none"}))).as_deref(),
            Some("none")
        );
        assert_eq!(
            header_alg_name(&token(serde_json::json!({"alg": "a\"b"}))),
            None
        );
        assert_eq!(header_alg_name(&token(serde_json::json!({"alg": 3}))), None);
        assert_eq!(header_alg_name("garbage"), None);
    }

    #[tokio::test]
    async fn refused_tokens_are_refused_before_any_key_lookup() {
        // The JWKS URL is never reached: every one of these fails on its own.
        let auth = JwtAuthenticator::new(config()).unwrap();
        let hs = format!(
            "{}.{}.c2ln",
            b64(&serde_json::json!({"alg": "HS256", "typ": "JWT"})),
            b64(&serde_json::json!({"sub": "x"}))
        );
        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none"})),
            b64(&serde_json::json!({"sub": "x"}))
        );
        let big = format!("{}.{}.sig", "a".repeat(5000), "b".repeat(5000));
        for (token, want) in [
            (hs.as_str(), "HS256 refused"),
            (none.as_str(), "algorithm none is not supported"),
            (big.as_str(), "exceeds the limit of 8192 bytes"),
            ("a.b", "not a compact jws"),
            ("a.b.c.d.e", "not a compact jws"),
            ("!!.??.sig", "malformed token header"),
        ] {
            let f = auth.verify(token).await.unwrap_err();
            let shown = f.to_string();
            assert!(shown.contains(want), "{shown}");
            assert!(!shown.contains(token), "{shown}");
        }
    }

    #[test]
    fn config_errors_are_clear() {
        let check = |f: fn(&mut JwtConfig), want: &str| {
            let mut c = config();
            f(&mut c);
            let e = JwtAuthenticator::new(c).err().unwrap().to_string();
            assert!(e.contains(want), "{e}");
        };
        check(|c| c.issuer = " ".into(), "issuer");
        check(|c| c.audiences = vec![], "audience");
        check(|c| c.principal_claim = String::new(), "principal claim");
        check(|c| c.leeway = Duration::from_secs(3600), "leeway");
        check(|c| c.jwks_url = "ftp://x/jwks".parse().unwrap(), "http(s)");
    }

    #[test]
    fn debug_hides_url_credentials() {
        let mut c = config();
        c.jwks_url = "https://issuer.example/jwks?token=sekret-value"
            .parse()
            .unwrap();
        let auth = JwtAuthenticator::new(c).unwrap();
        for shown in [format!("{auth:?}"), format!("{auth:#?}")] {
            assert!(!shown.contains("sekret-value"), "{shown}");
            assert!(shown.contains("issuer.example"), "{shown}");
        }
    }

    #[test]
    fn the_challenge_points_at_the_metadata() {
        let mut c = config();
        assert_eq!(
            JwtAuthenticator::new(c.clone())
                .unwrap()
                .challenge()
                .unwrap(),
            "Bearer"
        );
        c.resource_metadata_url = Some(
            "https://api.example/.well-known/oauth-protected-resource/vgi"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            JwtAuthenticator::new(c).unwrap().challenge().unwrap(),
            "Bearer resource_metadata=\"https://api.example/.well-known/oauth-protected-resource/vgi\""
        );
    }
}
