//! The issuer's JWKS: fetched over HTTP(S) within a size cap and a timeout, parsed into
//! verification keys (asymmetric only), and cached with bounded, coalesced, rate-limited
//! refreshes.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use url::Url;

/// The RSA signature algorithms a `kty: RSA` key may verify.
const RSA_ALGS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
/// The shortest RSA modulus accepted (2048 bits): shorter keys are factorable.
const MIN_RSA_MODULUS_BYTES: usize = 256;
/// The longest RSA modulus accepted (16384 bits): bounds the work of one verification.
const MAX_RSA_MODULUS_BYTES: usize = 2048;

/// The bounds of the cache and of one fetch (see [`super::JwtConfig`]).
#[derive(Debug, Clone)]
pub(super) struct JwksBounds {
    pub(super) fetch_timeout: Duration,
    pub(super) max_bytes: u64,
    pub(super) max_keys: usize,
    pub(super) default_ttl: Duration,
    pub(super) min_ttl: Duration,
    pub(super) max_ttl: Duration,
    pub(super) min_refresh_interval: Duration,
    /// A bearer token for the JWKS request, re-read at each fetch.
    pub(super) token_file: Option<std::path::PathBuf>,
}

/// The largest JWKS bearer token file read.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// The JWKS request's bearer token from `path` (the error names the file, never its content).
async fn read_token(path: &std::path::Path) -> Result<String, String> {
    let shown = path.display();
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| format!("jwks token file {shown}: {e}"))?;
    if meta.len() > MAX_TOKEN_FILE_BYTES {
        return Err(format!(
            "jwks token file {shown} is larger than {MAX_TOKEN_FILE_BYTES} bytes"
        ));
    }
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("jwks token file {shown}: {e}"))?;
    let token = text.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "jwks token file {shown} is empty or holds characters a header cannot carry"
        ));
    }
    Ok(token.to_string())
}

/// One verification key of the set.
pub(super) struct VerifyKey {
    kid: Option<String>,
    /// The header algorithms this key may verify: its `kty`/`crv`, narrowed to its `alg`.
    algs: Vec<Algorithm>,
    key: DecodingKey,
}

/// The usable keys of one JWKS document.
#[derive(Default)]
pub(super) struct KeySet {
    keys: Vec<VerifyKey>,
}

/// What [`KeySet::select`] found for a token's `kid` and `alg`.
pub(super) enum Selection<'a> {
    /// The key that must verify the token.
    Found(&'a DecodingKey),
    /// No key has this `kid` (perhaps the issuer rotated: refresh and look again).
    UnknownKid,
    /// The key of this `kid` cannot verify this `alg` (its type or its own `alg` differs).
    AlgMismatch,
    /// The token names no `kid` and not exactly one key fits its `alg`.
    Ambiguous,
}

/// A JWK as far as verification needs it; everything else is ignored.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

/// The header algorithms Spillway ever verifies: asymmetric signatures only, so a public key
/// can never be used as an HMAC secret (algorithm confusion), and never `none`.
pub(super) fn is_allowed_alg(alg: Algorithm) -> bool {
    RSA_ALGS.contains(&alg) || matches!(alg, Algorithm::ES256 | Algorithm::ES384 | Algorithm::EdDSA)
}

fn alg_from_name(name: &str) -> Option<Algorithm> {
    let alg: Algorithm = name.parse().ok()?;
    is_allowed_alg(alg).then_some(alg)
}

fn decoded_len(b64: &str) -> Option<usize> {
    URL_SAFE_NO_PAD
        .decode(b64.trim_end_matches('='))
        .ok()
        .map(|v| v.len())
}

impl KeySet {
    /// Parses a JWKS document. Keys that cannot verify signatures here (symmetric keys,
    /// encryption keys, unknown types or curves, short RSA moduli, malformed parameters) are
    /// skipped, not fatal: issuers publish such keys next to the signing ones.
    pub(super) fn parse(body: &[u8], max_keys: usize) -> Result<KeySet, String> {
        let raw: RawJwks = serde_json::from_slice(body)
            .map_err(|_| "the jwks is not a json key set".to_string())?;
        if raw.keys.len() > max_keys {
            return Err(format!(
                "the jwks holds {} keys, more than the limit of {max_keys}",
                raw.keys.len()
            ));
        }
        let mut keys = Vec::new();
        for value in raw.keys {
            let Ok(jwk) = serde_json::from_value::<RawJwk>(value) else {
                tracing::debug!("jwks: skipping an entry that is not a jwk");
                continue;
            };
            let kid = jwk.kid.clone();
            match verify_key(jwk) {
                Ok(key) => keys.push(key),
                Err(why) => tracing::debug!(kid = ?kid, why, "jwks: skipping a key"),
            }
        }
        Ok(KeySet { keys })
    }

    /// How many usable keys the set holds.
    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key for a token with header `kid` and `alg`.
    pub(super) fn select(&self, kid: Option<&str>, alg: Algorithm) -> Selection<'_> {
        match kid {
            Some(kid) => {
                let mut named = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .peekable();
                if named.peek().is_none() {
                    return Selection::UnknownKid;
                }
                match named.find(|k| k.algs.contains(&alg)) {
                    Some(k) => Selection::Found(&k.key),
                    None => Selection::AlgMismatch,
                }
            }
            // Without a kid, only an unambiguous key is tried: trying every key would let one
            // request cost as many verifications as the set has keys.
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.algs.contains(&alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Selection::Found(&k.key),
                    _ => Selection::Ambiguous,
                }
            }
        }
    }
}

/// Turns one JWK into a verification key, or says why not (the reason names no key material).
fn verify_key(jwk: RawJwk) -> Result<VerifyKey, &'static str> {
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return Err("not a signing key (use)");
    }
    if jwk
        .key_ops
        .as_ref()
        .is_some_and(|ops| !ops.iter().any(|o| o == "verify"))
    {
        return Err("not a verification key (key_ops)");
    }
    let (family_algs, key): (Vec<Algorithm>, DecodingKey) = match jwk.kty.as_str() {
        "RSA" => {
            let (Some(n), Some(e)) = (jwk.n.as_deref(), jwk.e.as_deref()) else {
                return Err("rsa key without n or e");
            };
            let modulus = decoded_len(n).ok_or("rsa modulus is not base64url")?;
            // A leading zero byte does not count towards the key size.
            if modulus < MIN_RSA_MODULUS_BYTES {
                return Err("rsa modulus shorter than 2048 bits");
            }
            if modulus > MAX_RSA_MODULUS_BYTES + 1 {
                return Err("rsa modulus longer than 16384 bits");
            }
            let key = DecodingKey::from_rsa_components(n, e).map_err(|_| "malformed rsa key")?;
            (RSA_ALGS.to_vec(), key)
        }
        "EC" => {
            let (alg, coord) = match jwk.crv.as_deref() {
                Some("P-256") => (Algorithm::ES256, 32),
                Some("P-384") => (Algorithm::ES384, 48),
                _ => return Err("unsupported ec curve"),
            };
            let (Some(x), Some(y)) = (jwk.x.as_deref(), jwk.y.as_deref()) else {
                return Err("ec key without x or y");
            };
            if decoded_len(x) != Some(coord) || decoded_len(y) != Some(coord) {
                return Err("ec coordinates of the wrong length for the curve");
            }
            let key = DecodingKey::from_ec_components(x, y).map_err(|_| "malformed ec key")?;
            (vec![alg], key)
        }
        "OKP" => {
            if jwk.crv.as_deref() != Some("Ed25519") {
                return Err("unsupported okp curve");
            }
            let x = jwk.x.as_deref().ok_or("okp key without x")?;
            if decoded_len(x) != Some(32) {
                return Err("ed25519 key of the wrong length");
            }
            let key = DecodingKey::from_ed_components(x).map_err(|_| "malformed ed25519 key")?;
            (vec![Algorithm::EdDSA], key)
        }
        "oct" => return Err("symmetric keys are never used"),
        _ => return Err("unsupported key type"),
    };
    let algs = match jwk.alg.as_deref() {
        None => family_algs,
        Some(name) => match alg_from_name(name) {
            Some(alg) if family_algs.contains(&alg) => vec![alg],
            _ => return Err("the key's alg does not fit its type or is not allowed"),
        },
    };
    Ok(VerifyKey {
        kid: jwk.kid,
        algs,
        key,
    })
}

/// How long a fetched set is fresh: the response's `Cache-Control: max-age`, clamped to
/// `[min_ttl, max_ttl]` (`no-store`/`no-cache` count as 0, so as `min_ttl`), else the default.
pub(super) fn cache_ttl(headers: &http::HeaderMap, bounds: &JwksBounds) -> Duration {
    let mut max_age = None;
    for value in headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let directive = directive.trim();
            if directive.eq_ignore_ascii_case("no-store")
                || directive.eq_ignore_ascii_case("no-cache")
            {
                max_age = Some(0);
            } else if let Some((name, secs)) = directive.split_once('=') {
                if name.trim().eq_ignore_ascii_case("max-age") {
                    if let Ok(secs) = secs.trim().trim_matches('"').parse::<u64>() {
                        max_age = Some(max_age.map_or(secs, |m: u64| m.min(secs)));
                    }
                }
            }
        }
    }
    match max_age {
        None => bounds.default_ttl,
        Some(secs) => Duration::from_secs(secs).clamp(bounds.min_ttl, bounds.max_ttl),
    }
}

/// The cache's state: the last good set and when the endpoint was last asked.
#[derive(Default)]
pub(super) struct CacheState {
    keys: Option<Arc<KeySet>>,
    /// Bumped by every finished fetch: a waiter that sees it moved knows another request
    /// refreshed while it waited, and does not fetch again.
    generation: u64,
    fresh_until: Option<Instant>,
    last_attempt: Option<Instant>,
    last_failed: bool,
}

/// What a request does with the cache.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Plan {
    /// Use the cached keys.
    Cached,
    /// Fetch the set (coalesced with concurrent fetches).
    Fetch,
    /// No keys and the endpoint was just tried and failed: answer unavailable for this long.
    Wait(Duration),
}

impl CacheState {
    /// Decides, without I/O, whether a request fetches. A fetch is due when there are no
    /// keys, when the set is stale, or when a token names an unknown `kid`; but never twice
    /// within `min_refresh_interval`, so a flood of random `kid`s or a down endpoint costs
    /// the issuer one request per interval, not one per token.
    pub(super) fn plan(&self, now: Instant, unknown_kid: bool, bounds: &JwksBounds) -> Plan {
        let recently = |interval: Duration| {
            self.last_attempt
                .is_some_and(|at| now.saturating_duration_since(at) < interval)
        };
        let throttled = recently(bounds.min_refresh_interval);
        match &self.keys {
            None if self.last_failed && throttled => {
                let since = self
                    .last_attempt
                    .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
                Plan::Wait(bounds.min_refresh_interval.saturating_sub(since))
            }
            None => Plan::Fetch,
            Some(_) => {
                let stale = self.fresh_until.is_none_or(|until| now >= until);
                if (stale || unknown_kid) && !throttled {
                    Plan::Fetch
                } else {
                    Plan::Cached
                }
            }
        }
    }

    fn record(&mut self, now: Instant, outcome: Option<(KeySet, Duration)>) {
        self.generation = self.generation.wrapping_add(1);
        self.last_attempt = Some(now);
        match outcome {
            Some((keys, ttl)) => {
                self.keys = Some(Arc::new(keys));
                self.fresh_until = Some(now + ttl);
                self.last_failed = false;
            }
            None => self.last_failed = true,
        }
    }
}

/// Why no key set could be had.
pub(super) struct Unreachable {
    pub(super) detail: String,
    pub(super) retry_after: Duration,
}

/// The cached JWKS of one issuer.
pub(super) struct Jwks {
    url: Url,
    client: reqwest::Client,
    bounds: JwksBounds,
    state: RwLock<CacheState>,
    /// Held while fetching: concurrent refreshes wait for the one in flight.
    fetching: tokio::sync::Mutex<()>,
}

impl Jwks {
    pub(super) fn new(url: Url, client: reqwest::Client, bounds: JwksBounds) -> Jwks {
        Jwks {
            url,
            client,
            bounds,
            state: RwLock::new(CacheState::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn snapshot<T>(&self, f: impl FnOnce(&CacheState) -> T) -> T {
        // A poisoned lock only means a panic elsewhere mid-update of plain data: keep going.
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        f(&state)
    }

    /// The key set to verify with. `unknown_kid`: the cached set lacks the token's `kid`, so
    /// refresh if the rate limit allows. A failed refresh keeps the last good set.
    pub(super) async fn keys(&self, unknown_kid: bool) -> Result<Arc<KeySet>, Unreachable> {
        let now = Instant::now();
        let (generation, plan, cached) = self.snapshot(|s| {
            (
                s.generation,
                s.plan(now, unknown_kid, &self.bounds),
                s.keys.clone(),
            )
        });
        match (plan, cached) {
            (Plan::Cached, Some(keys)) => return Ok(keys),
            (Plan::Wait(retry_after), _) => {
                return Err(Unreachable {
                    detail: "the jwks endpoint failed recently and no key is cached".into(),
                    retry_after: retry_after.max(Duration::from_secs(1)),
                })
            }
            _ => {}
        }
        let _fetching = self.fetching.lock().await;
        let moved = self.snapshot(|s| (s.generation != generation).then(|| s.keys.clone()));
        if let Some(keys) = moved {
            // Another request refreshed while this one waited: use its outcome.
            return keys.ok_or_else(|| self.unreachable("the jwks endpoint is unreachable"));
        }
        // A failed refresh still leaves the last good keys, if any, to verify with.
        let _ = self.refresh_locked().await;
        self.snapshot(|s| s.keys.clone())
            .ok_or_else(|| self.unreachable("the jwks endpoint is unreachable"))
    }

    /// Fetches now, whatever the cache and the rate limit say (an operator's request): the
    /// new set, or why the fetch failed (the keys loaded before then stay in use).
    pub(super) async fn force_refresh(&self) -> Result<Arc<KeySet>, String> {
        let _fetching = self.fetching.lock().await;
        self.refresh_locked().await
    }

    /// Fetches and records the outcome; the caller holds `fetching`.
    async fn refresh_locked(&self) -> Result<Arc<KeySet>, String> {
        let outcome = self.fetch().await;
        let now = Instant::now();
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok((keys, ttl)) => {
                tracing::info!(
                    jwks = %spillway_storage::redact_url(self.url.as_str()),
                    keys = keys.len(),
                    ttl_secs = ttl.as_secs(),
                    "jwks refreshed"
                );
                state.record(now, Some((keys, ttl)));
                state
                    .keys
                    .clone()
                    .ok_or_else(|| "the jwks was not recorded".to_string())
            }
            Err(detail) => {
                state.record(now, None);
                if state.keys.is_some() {
                    tracing::warn!(
                        jwks = %spillway_storage::redact_url(self.url.as_str()),
                        error = %detail,
                        "jwks refresh failed; keeping the last good keys"
                    );
                } else {
                    tracing::error!(
                        jwks = %spillway_storage::redact_url(self.url.as_str()),
                        error = %detail,
                        "jwks fetch failed and no key is cached: jwt callers get 503"
                    );
                }
                Err(detail)
            }
        }
    }

    fn unreachable(&self, detail: &str) -> Unreachable {
        Unreachable {
            detail: detail.to_string(),
            retry_after: self.bounds.min_refresh_interval.max(Duration::from_secs(1)),
        }
    }

    /// One GET of the JWKS: a usable, non-empty set and how long it is fresh.
    async fn fetch(&self) -> Result<(KeySet, Duration), String> {
        let shown = spillway_storage::redact_url(self.url.as_str());
        let mut req = self
            .client
            .get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .timeout(self.bounds.fetch_timeout);
        if let Some(path) = &self.bounds.token_file {
            req = req.bearer_auth(read_token(path).await?);
        }
        let resp = req.send().await.map_err(|e| {
            format!(
                "jwks request to {shown} failed: {}",
                spillway_storage::redact_text(&e.to_string())
            )
        })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("jwks endpoint {shown} answered {status}"));
        }
        let ttl = cache_ttl(resp.headers(), &self.bounds);
        let declared = resp.content_length();
        let body =
            spillway_storage::collect_capped(resp.bytes_stream(), declared, self.bounds.max_bytes)
                .await
                .map_err(|e| match e {
                    spillway_storage::CappedError::TooLarge { cap, .. } => {
                        format!("jwks from {shown} is larger than {cap} bytes")
                    }
                    spillway_storage::CappedError::Stream(e) => format!(
                        "jwks from {shown}: reading the body failed: {}",
                        spillway_storage::redact_text(&e.to_string())
                    ),
                })?;
        let keys = KeySet::parse(&body, self.bounds.max_keys)
            .map_err(|e| format!("jwks from {shown}: {e}"))?;
        if keys.len() == 0 {
            return Err(format!("jwks from {shown} holds no usable signing key"));
        }
        Ok((keys, ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> JwksBounds {
        JwksBounds {
            fetch_timeout: Duration::from_secs(5),
            max_bytes: 1 << 16,
            max_keys: 8,
            default_ttl: Duration::from_secs(300),
            min_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(3600),
            min_refresh_interval: Duration::from_secs(10),
            token_file: None,
        }
    }

    // A P-256 public point (any valid one; from RFC 7517 appendix A.1).
    const EC_X: &str = "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4";
    const EC_Y: &str = "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM";
    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    fn rsa_n(bytes: usize) -> String {
        let mut n = vec![0xc5u8; bytes];
        n[bytes - 1] = 0x01;
        URL_SAFE_NO_PAD.encode(n)
    }

    fn set(keys: serde_json::Value) -> KeySet {
        KeySet::parse(
            serde_json::json!({ "keys": keys }).to_string().as_bytes(),
            16,
        )
        .unwrap()
    }

    #[test]
    fn only_asymmetric_algorithms_are_allowed() {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            assert!(!is_allowed_alg(alg), "{alg:?}");
        }
        for alg in [
            Algorithm::RS256,
            Algorithm::PS512,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ] {
            assert!(is_allowed_alg(alg), "{alg:?}");
        }
        assert_eq!(alg_from_name("HS256"), None);
        assert_eq!(alg_from_name("none"), None);
        assert_eq!(alg_from_name("ES256"), Some(Algorithm::ES256));
    }

    #[test]
    fn keys_are_matched_by_kid_and_type() {
        let ks = set(serde_json::json!([
            {"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "kid": "ec", "use": "sig"},
            {"kty": "OKP", "crv": "Ed25519", "x": ED_X, "kid": "ed"},
            {"kty": "RSA", "n": rsa_n(256), "e": "AQAB", "kid": "rsa", "alg": "PS256"},
        ]));
        assert_eq!(ks.len(), 3);
        assert!(matches!(
            ks.select(Some("ec"), Algorithm::ES256),
            Selection::Found(_)
        ));
        // The header alg must fit the key: an EC key never verifies RS256 or ES384.
        assert!(matches!(
            ks.select(Some("ec"), Algorithm::RS256),
            Selection::AlgMismatch
        ));
        assert!(matches!(
            ks.select(Some("ec"), Algorithm::ES384),
            Selection::AlgMismatch
        ));
        assert!(matches!(
            ks.select(Some("ed"), Algorithm::EdDSA),
            Selection::Found(_)
        ));
        // The key's own alg narrows its type's algorithms.
        assert!(matches!(
            ks.select(Some("rsa"), Algorithm::PS256),
            Selection::Found(_)
        ));
        assert!(matches!(
            ks.select(Some("rsa"), Algorithm::RS256),
            Selection::AlgMismatch
        ));
        assert!(matches!(
            ks.select(Some("nope"), Algorithm::ES256),
            Selection::UnknownKid
        ));
        // Without a kid: only an unambiguous key.
        assert!(matches!(
            ks.select(None, Algorithm::ES256),
            Selection::Found(_)
        ));
        let two = set(serde_json::json!([
            {"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "kid": "a"},
            {"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "kid": "b"},
        ]));
        assert!(matches!(
            two.select(None, Algorithm::ES256),
            Selection::Ambiguous
        ));
    }

    #[test]
    fn unusable_keys_are_skipped_not_fatal() {
        let ks = set(serde_json::json!([
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "kid": "enc", "use": "enc"},
            {"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "kid": "ops", "key_ops": ["sign"]},
            {"kty": "EC", "crv": "P-521", "x": EC_X, "y": EC_Y, "kid": "p521"},
            {"kty": "EC", "crv": "P-384", "x": EC_X, "y": EC_Y, "kid": "short"},
            {"kty": "RSA", "n": rsa_n(128), "e": "AQAB", "kid": "rsa1024"},
            {"kty": "RSA", "n": rsa_n(256), "e": "AQAB", "kid": "hs", "alg": "HS256"},
            {"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "kid": "ecrs", "alg": "RS256"},
            {"kty": "XYZ", "kid": "other"},
            "not an object",
            {"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "kid": "good"},
        ]));
        assert_eq!(ks.len(), 1);
        assert!(matches!(
            ks.select(Some("good"), Algorithm::ES256),
            Selection::Found(_)
        ));
        assert!(matches!(
            ks.select(Some("hmac"), Algorithm::ES256),
            Selection::UnknownKid
        ));
        assert!(KeySet::parse(b"[]", 8).is_err());
        let many = serde_json::json!({ "keys": vec![serde_json::json!({"kty": "oct"}); 9] });
        let e = KeySet::parse(many.to_string().as_bytes(), 8).err().unwrap();
        assert!(e.contains("limit of 8"), "{e}");
    }

    #[test]
    fn cache_control_is_honoured_within_bounds() {
        let b = bounds();
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(http::header::CACHE_CONTROL, v.parse().unwrap());
            m
        };
        assert_eq!(cache_ttl(&http::HeaderMap::new(), &b), b.default_ttl);
        assert_eq!(
            cache_ttl(&h("public, max-age=600"), &b),
            Duration::from_secs(600)
        );
        assert_eq!(cache_ttl(&h("max-age=1"), &b), b.min_ttl);
        assert_eq!(cache_ttl(&h("no-store"), &b), b.min_ttl);
        assert_eq!(cache_ttl(&h("max-age=99999999"), &b), b.max_ttl);
        assert_eq!(cache_ttl(&h("max-age=abc"), &b), b.default_ttl);
    }

    #[test]
    fn refreshes_are_rate_limited() {
        let b = bounds();
        let t0 = Instant::now();
        let mut s = CacheState::default();
        // Nothing cached: fetch.
        assert_eq!(s.plan(t0, false, &b), Plan::Fetch);
        // A failed first fetch: no second attempt within the interval.
        s.record(t0, None);
        assert_eq!(
            s.plan(t0 + Duration::from_secs(3), false, &b),
            Plan::Wait(Duration::from_secs(7))
        );
        assert_eq!(
            s.plan(t0 + Duration::from_secs(3), true, &b),
            Plan::Wait(Duration::from_secs(7))
        );
        assert_eq!(s.plan(t0 + b.min_refresh_interval, false, &b), Plan::Fetch);
        // A good fetch: cached while fresh.
        let t1 = t0 + Duration::from_secs(20);
        s.record(t1, Some((KeySet::default(), Duration::from_secs(60))));
        assert_eq!(s.plan(t1 + Duration::from_secs(1), false, &b), Plan::Cached);
        // An unknown kid right after a fetch: no refetch (a flood of random kids costs the
        // issuer nothing); after the interval, one refetch.
        assert_eq!(s.plan(t1 + Duration::from_secs(1), true, &b), Plan::Cached);
        assert_eq!(s.plan(t1 + b.min_refresh_interval, true, &b), Plan::Fetch);
        // Stale: refetch; if that fails, the stale keys are used and not retried at once.
        let t2 = t1 + Duration::from_secs(61);
        assert_eq!(s.plan(t2, false, &b), Plan::Fetch);
        s.record(t2, None);
        assert!(s.keys.is_some());
        assert_eq!(s.plan(t2 + Duration::from_secs(1), false, &b), Plan::Cached);
        assert_eq!(s.plan(t2 + b.min_refresh_interval, false, &b), Plan::Fetch);
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_without_keys_is_unavailable() {
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = Url::parse(&format!("http://127.0.0.1:{port}/jwks")).unwrap();
        let jwks = Jwks::new(url, reqwest::Client::new(), bounds());
        let e = jwks.keys(false).await.err().unwrap();
        assert!(e.retry_after >= Duration::from_secs(1));
        // The second call does not try again within the interval.
        let e = jwks.keys(false).await.err().unwrap();
        assert!(e.detail.contains("failed recently"), "{}", e.detail);
    }
}
