//! Authentication: who is calling. A pluggable async [`Authenticator`] turns a request's
//! credentials into an [`AuthContext`], which every handler sees through
//! [`CallContext::auth`](super::CallContext::auth).
//!
//! The built-ins are [`BearerTokens`] (a token file), [`jwt`] (OIDC / Kubernetes service
//! account tokens against a JWKS) and [`mtls`] (client certificates); [`AuthChain`] tries
//! several in order. A refusal answers 401 with the vgi-rpc envelope (see [`unauthorized`]):
//! a coarse reason code, never the verifier's diagnosis.
//!
//! Exempt from authentication, as in the reference: every `OPTIONS` request, `{prefix}/health`,
//! `/.well-known/*`, `/livez` and `/readyz`, `/metrics` on the admin port (on the main port it
//! needs a credential), and the storage routes (their signature is the credential).
//!
//! ```
//! use spillway::server::auth::{AuthContext, AuthFailure, AuthReason, Authenticator};
//!
//! /// Accepts one API key from the `x-api-key` header.
//! struct ApiKey(String);
//!
//! #[async_trait::async_trait]
//! impl Authenticator for ApiKey {
//!     fn name(&self) -> &str {
//!         "api-key"
//!     }
//!     async fn authenticate(
//!         &self,
//!         request: &http::request::Parts,
//!     ) -> Result<Option<AuthContext>, AuthFailure> {
//!         match request.headers.get("x-api-key") {
//!             None => Ok(None),
//!             Some(v) if v.as_bytes() == self.0.as_bytes() => {
//!                 Ok(Some(AuthContext::new("api-key", "service-a")))
//!             }
//!             Some(_) => Err(AuthFailure::rejected(AuthReason::InvalidCredential, "unknown key")),
//!         }
//!     }
//! }
//! ```

mod bearer;
mod gate;
pub mod jwt;
pub mod mtls;
mod oauth;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};

pub use bearer::{BearerTokens, MIN_TOKEN_LEN};
pub(crate) use gate::authenticate;
pub use gate::unauthorized;
pub use gate::unauthorized_response;
pub use jwt::{JwtAuthenticator, JwtConfig};
pub use mtls::ClientCertificates;
pub(crate) use oauth::routes as oauth_routes;
pub use oauth::OAuthResourceMetadata;

/// Who is calling: the scheme that vouched for them, their identity and their claims.
///
/// Mirrors the reference's `AuthContext`. Its `Debug` shows the claim names, not their values.
#[derive(Clone, PartialEq)]
pub struct AuthContext {
    /// The scheme that authenticated the caller (`bearer`, `jwt`, `mtls`, ...), `None` when
    /// anonymous.
    pub domain: Option<String>,
    /// Whether the caller was authenticated.
    pub authenticated: bool,
    /// The caller's identity (a user, a service account, a SPIFFE id).
    pub principal: Option<String>,
    /// The credential's claims (a JWT's payload; empty for bearer tokens).
    pub claims: Map<String, Value>,
}

impl AuthContext {
    /// The context of an unauthenticated caller (no authentication configured, or an exempt
    /// route).
    pub fn anonymous() -> Self {
        AuthContext {
            domain: None,
            authenticated: false,
            principal: None,
            claims: Map::new(),
        }
    }

    /// An authenticated caller.
    pub fn new(domain: impl Into<String>, principal: impl Into<String>) -> Self {
        AuthContext {
            domain: Some(domain.into()),
            authenticated: true,
            principal: Some(principal.into()),
            claims: Map::new(),
        }
    }

    /// The same caller with these claims.
    pub fn with_claims(mut self, claims: Map<String, Value>) -> Self {
        self.claims = claims;
        self
    }

    /// The principal, or `""` when anonymous (what stream tokens are bound to).
    pub fn principal_or_empty(&self) -> &str {
        self.principal.as_deref().unwrap_or("")
    }

    /// The string values of claim `name`: a string (split on spaces for `scope` and `scp`,
    /// as OAuth writes scopes), or an array of strings. Anything else gives no values.
    pub fn claim_values(&self, name: &str) -> Vec<&str> {
        match self.claims.get(name) {
            Some(Value::String(s)) if name == "scope" || name == "scp" => {
                s.split_ascii_whitespace().collect()
            }
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
}

impl Default for AuthContext {
    fn default() -> Self {
        Self::anonymous()
    }
}

// By hand: claim values may be personal data, and contexts get logged.
impl fmt::Debug for AuthContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthContext")
            .field("domain", &self.domain)
            .field("authenticated", &self.authenticated)
            .field("principal", &self.principal)
            .field("claims", &self.claims.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The closed set of reasons a 401 carries (`VGI-Auth-Reason`). Coarse on purpose: it names
/// the stage that refused, never why a signature was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthReason {
    /// No credential was presented.
    MissingCredential,
    /// A credential was presented and rejected.
    InvalidCredential,
    /// A well-formed credential outside its validity window.
    ExpiredCredential,
    /// The caller was identified but is not permitted.
    InsufficientScope,
    /// Refused, unclassified (the fallback for custom authenticators).
    Unauthorized,
}

impl AuthReason {
    /// The wire code.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthReason::MissingCredential => "missing_credential",
            AuthReason::InvalidCredential => "invalid_credential",
            AuthReason::ExpiredCredential => "expired_credential",
            AuthReason::InsufficientScope => "insufficient_scope",
            AuthReason::Unauthorized => "unauthorized",
        }
    }
}

impl fmt::Display for AuthReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an [`Authenticator`] did not vouch for a request.
///
/// The detail goes to the server's log only (the client sees the reason code and a fixed
/// text); it must never contain the credential itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthFailure {
    /// The credential was refused: 401.
    #[error("authentication rejected ({reason}): {detail}")]
    Rejected {
        /// The code sent to the client.
        reason: AuthReason,
        /// For the server's log.
        detail: String,
    },
    /// The authority that checks credentials could not be reached (e.g. the JWKS endpoint is
    /// down): 503 with `Retry-After`, not a 401 that would make every client re-authenticate.
    #[error("authentication unavailable: {detail}")]
    Unavailable {
        /// For the server's log.
        detail: String,
        /// Sent as `Retry-After`.
        retry_after: Duration,
    },
}

impl AuthFailure {
    /// A refused credential.
    pub fn rejected(reason: AuthReason, detail: impl Into<String>) -> Self {
        AuthFailure::Rejected {
            reason,
            detail: detail.into(),
        }
    }

    /// An unreachable authority.
    pub fn unavailable(detail: impl Into<String>, retry_after: Duration) -> Self {
        AuthFailure::Unavailable {
            detail: detail.into(),
            retry_after,
        }
    }

    fn reason(&self) -> Option<AuthReason> {
        match self {
            AuthFailure::Rejected { reason, .. } => Some(*reason),
            AuthFailure::Unavailable { .. } => None,
        }
    }
}

/// Checks a request's credentials.
///
/// Return `Ok(None)` when the request carries no credential of this authenticator's kind
/// (so an [`AuthChain`] tries the next one), `Ok(Some(context))` when it vouches for the
/// caller, and an [`AuthFailure`] when it refuses.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// A short name for logs and metrics (`bearer`, `jwt`, `mtls`).
    fn name(&self) -> &str;

    /// Checks the request's head (headers, and extensions such as the TLS client
    /// certificate). Must not block: file or network work is async.
    async fn authenticate(
        &self,
        request: &http::request::Parts,
    ) -> Result<Option<AuthContext>, AuthFailure>;

    /// The `WWW-Authenticate` challenge sent with a 401, if any.
    fn challenge(&self) -> Option<String> {
        None
    }
}

/// Several authenticators tried in order: the first that vouches wins.
///
/// When none does, the most telling refusal is answered: an expired or otherwise classified
/// refusal before an unreachable authority, that before a plain invalid credential, and
/// `missing_credential` when no authenticator found a credential at all.
pub struct AuthChain {
    members: Vec<Arc<dyn Authenticator>>,
    name: String,
}

impl AuthChain {
    /// A chain of `members`, tried in this order.
    pub fn new(members: Vec<Arc<dyn Authenticator>>) -> Self {
        let name = members
            .iter()
            .map(|m| m.name().to_string())
            .collect::<Vec<_>>()
            .join(",");
        AuthChain { members, name }
    }
}

#[async_trait]
impl Authenticator for AuthChain {
    fn name(&self) -> &str {
        &self.name
    }

    async fn authenticate(
        &self,
        request: &http::request::Parts,
    ) -> Result<Option<AuthContext>, AuthFailure> {
        let mut failures = Vec::new();
        for member in &self.members {
            match member.authenticate(request).await {
                Ok(Some(ctx)) => return Ok(Some(ctx)),
                Ok(None) => {}
                Err(f) => failures.push(f),
            }
        }
        let rank = |f: &AuthFailure| match f.reason() {
            Some(AuthReason::InvalidCredential) => 2,
            Some(_) => 0,
            None => 1,
        };
        match failures.into_iter().min_by_key(rank) {
            Some(f) => Err(f),
            None => Ok(None),
        }
    }

    fn challenge(&self) -> Option<String> {
        // The first challenge: a client can answer only one scheme per retry anyway.
        self.members.iter().find_map(|m| m.challenge())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(&'static str, Result<Option<AuthContext>, AuthFailure>);

    #[async_trait]
    impl Authenticator for Fixed {
        fn name(&self) -> &str {
            self.0
        }
        async fn authenticate(
            &self,
            _: &http::request::Parts,
        ) -> Result<Option<AuthContext>, AuthFailure> {
            self.1.clone()
        }
    }

    fn parts() -> http::request::Parts {
        http::Request::new(()).into_parts().0
    }

    fn chain(members: Vec<Fixed>) -> AuthChain {
        AuthChain::new(
            members
                .into_iter()
                .map(|m| Arc::new(m) as Arc<dyn Authenticator>)
                .collect(),
        )
    }

    #[tokio::test]
    async fn a_chain_takes_the_first_that_vouches() {
        let c = chain(vec![
            Fixed(
                "a",
                Err(AuthFailure::rejected(AuthReason::InvalidCredential, "x")),
            ),
            Fixed("b", Ok(Some(AuthContext::new("b", "bob")))),
        ]);
        assert_eq!(c.name(), "a,b");
        let ctx = c.authenticate(&parts()).await.unwrap().unwrap();
        assert_eq!(ctx.principal.as_deref(), Some("bob"));
    }

    #[tokio::test]
    async fn a_chain_answers_the_most_telling_refusal() {
        let invalid = || Err(AuthFailure::rejected(AuthReason::InvalidCredential, "x"));
        let c = chain(vec![
            Fixed("a", invalid()),
            Fixed(
                "b",
                Err(AuthFailure::rejected(AuthReason::ExpiredCredential, "y")),
            ),
        ]);
        let f = c.authenticate(&parts()).await.unwrap_err();
        assert_eq!(f.reason(), Some(AuthReason::ExpiredCredential));
        let c = chain(vec![
            Fixed("a", invalid()),
            Fixed(
                "b",
                Err(AuthFailure::unavailable("down", Duration::from_secs(5))),
            ),
        ]);
        assert!(matches!(
            c.authenticate(&parts()).await,
            Err(AuthFailure::Unavailable { .. })
        ));
        let c = chain(vec![Fixed("a", Ok(None)), Fixed("b", invalid())]);
        let f = c.authenticate(&parts()).await.unwrap_err();
        assert_eq!(f.reason(), Some(AuthReason::InvalidCredential));
        let c = chain(vec![Fixed("a", Ok(None))]);
        assert!(c.authenticate(&parts()).await.unwrap().is_none());
    }

    #[test]
    fn claim_values_read_strings_arrays_and_scopes() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"groups":["eng","ops",3],"scope":"read write","team":"data","n":1}"#,
        )
        .unwrap();
        let ctx = AuthContext::new("jwt", "alice").with_claims(claims);
        assert_eq!(ctx.claim_values("groups"), vec!["eng", "ops"]);
        assert_eq!(ctx.claim_values("scope"), vec!["read", "write"]);
        assert_eq!(ctx.claim_values("team"), vec!["data"]);
        assert!(ctx.claim_values("n").is_empty());
        assert!(ctx.claim_values("absent").is_empty());
        let shown = format!("{ctx:?}");
        assert!(
            shown.contains("groups") && !shown.contains("ops"),
            "{shown}"
        );
    }
}
