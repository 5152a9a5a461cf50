//! The security settings of `spillway serve`: authentication, authorization, TLS, CORS and
//! the previous signing secret. Every one is in the README's configuration table.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use url::Url;

use crate::error::{Error, Result};
use crate::server::auth::{
    AuthChain, Authenticator, BearerTokens, ClientCertificates, JwtAuthenticator, JwtConfig,
    OAuthResourceMetadata,
};
use crate::server::authz::AuthzPolicy;
use crate::server::tls::{ServerTls, TlsConfig};

/// An authentication scheme `SPILLWAY_AUTH` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Static tokens from `SPILLWAY_AUTH_TOKENS_FILE`.
    Bearer,
    /// JWTs checked against `SPILLWAY_AUTH_JWKS_URL`.
    Jwt,
}

/// Authentication, authorization, TLS and CORS (`spillway serve`). Its `Debug` shows paths
/// and URLs without credentials, never a secret.
#[derive(Clone, Args)]
pub struct SecurityArgs {
    /// Authentication schemes, comma-separated (`bearer`, `jwt`, `bearer,jwt`); unset: every
    /// caller is anonymous (a client certificate CA adds `mtls` on its own).
    #[arg(long, env = "SPILLWAY_AUTH", value_enum, value_delimiter = ',')]
    pub auth: Vec<AuthMode>,
    /// File of `TOKEN PRINCIPAL` lines for `SPILLWAY_AUTH=bearer`; re-read when it changes.
    #[arg(long, env = "SPILLWAY_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,
    /// JWKS endpoint of the token issuer (`SPILLWAY_AUTH=jwt`), e.g.
    /// `https://issuer.example/.well-known/jwks.json`.
    #[arg(long, env = "SPILLWAY_AUTH_JWKS_URL")]
    pub auth_jwks_url: Option<Url>,
    /// PEM CA bundle trusted, alone, for fetching the JWKS (in Kubernetes:
    /// `/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`).
    #[arg(long, env = "SPILLWAY_AUTH_JWKS_CA")]
    pub auth_jwks_ca: Option<PathBuf>,
    /// File holding a bearer token sent when fetching the JWKS, re-read at each fetch (in
    /// Kubernetes: the pod's service-account token, for the API server's `/openid/v1/jwks`).
    #[arg(long, env = "SPILLWAY_AUTH_JWKS_TOKEN_FILE")]
    pub auth_jwks_token_file: Option<PathBuf>,
    /// Required `iss` of JWTs.
    #[arg(long, env = "SPILLWAY_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,
    /// Required `aud` of JWTs (comma-separated: any of them).
    #[arg(long, env = "SPILLWAY_AUTH_AUDIENCE", value_delimiter = ',')]
    pub auth_audience: Vec<String>,
    /// The JWT claim that names the principal.
    #[arg(long, env = "SPILLWAY_AUTH_PRINCIPAL_CLAIM", default_value = "sub")]
    pub auth_principal_claim: String,
    /// Clock leeway, in seconds, for JWT `exp` and `nbf`.
    #[arg(long, env = "SPILLWAY_AUTH_LEEWAY", default_value_t = 60)]
    pub auth_leeway: u64,
    /// TOML authorization policy: which principals or claims may call which methods.
    #[arg(long, env = "SPILLWAY_AUTHZ_FILE")]
    pub authz_file: Option<PathBuf>,
    /// The signing secret before the current one: still accepted when verifying stream tokens
    /// and local-store URLs (new ones use `SPILLWAY_SIGNING_SECRET`), so a rotation drops
    /// nothing.
    #[arg(long, env = "SPILLWAY_SIGNING_SECRET_PREVIOUS", hide_env_values = true)]
    pub signing_secret_previous: Option<String>,
    /// PEM certificate chain: serve HTTPS (reloaded when the file changes).
    #[arg(long, env = "SPILLWAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `SPILLWAY_TLS_CERT`.
    #[arg(long, env = "SPILLWAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: ask for client certificates signed by it, and authenticate callers by
    /// their certificate (principal: its SPIFFE URI SAN, else its CN).
    #[arg(long, env = "SPILLWAY_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Origins allowed to call from a browser, comma-separated (`*`: any).
    #[arg(long, env = "SPILLWAY_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
}

// By hand: destructured, so a new field cannot be added without deciding how it is shown.
impl fmt::Debug for SecurityArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let SecurityArgs {
            auth,
            auth_tokens_file,
            auth_jwks_url,
            auth_jwks_ca,
            auth_jwks_token_file,
            auth_issuer,
            auth_audience,
            auth_principal_claim,
            auth_leeway,
            authz_file,
            signing_secret_previous,
            tls_cert,
            tls_key,
            tls_client_ca,
            cors_origins,
        } = self;
        f.debug_struct("SecurityArgs")
            .field("auth", auth)
            .field("auth_tokens_file", auth_tokens_file)
            .field(
                "auth_jwks_url",
                &auth_jwks_url
                    .as_ref()
                    .map(|u| spillway_storage::redact_url(u.as_str())),
            )
            .field("auth_jwks_ca", auth_jwks_ca)
            .field("auth_jwks_token_file", auth_jwks_token_file)
            .field("auth_issuer", auth_issuer)
            .field("auth_audience", auth_audience)
            .field("auth_principal_claim", auth_principal_claim)
            .field("auth_leeway", auth_leeway)
            .field("authz_file", authz_file)
            .field(
                "signing_secret_previous",
                &signing_secret_previous.as_ref().map(|_| "<redacted>"),
            )
            .field("tls_cert", tls_cert)
            .field("tls_key", tls_key)
            .field("tls_client_ca", tls_client_ca)
            .field("cors_origins", cors_origins)
            .finish()
    }
}

impl SecurityArgs {
    /// Whether any authenticator is configured.
    pub fn auth_enabled(&self) -> bool {
        !self.auth.is_empty() || self.tls_client_ca.is_some()
    }

    /// The authenticator these settings describe (`None`: anonymous access), checking that
    /// each scheme has what it needs. `public_url` and `prefix` locate the server for the JWT
    /// challenge (`resource_metadata`).
    pub async fn authenticator(
        &self,
        public_url: &Url,
        prefix: &str,
    ) -> Result<Option<Arc<dyn Authenticator>>> {
        let mut members: Vec<Arc<dyn Authenticator>> = Vec::new();
        let mut seen = Vec::new();
        for mode in &self.auth {
            if seen.contains(mode) {
                continue;
            }
            seen.push(*mode);
            match mode {
                AuthMode::Bearer => {
                    let path = self.auth_tokens_file.as_ref().ok_or_else(|| {
                        Error::Config("SPILLWAY_AUTH=bearer needs SPILLWAY_AUTH_TOKENS_FILE".into())
                    })?;
                    members.push(Arc::new(BearerTokens::from_file(path).await?));
                }
                AuthMode::Jwt => {
                    let mut config = self.jwt_config()?;
                    if let Some(path) = &self.auth_jwks_ca {
                        config.jwks_ca_pem = Some(tokio::fs::read(path).await.map_err(|e| {
                            Error::Config(format!("SPILLWAY_AUTH_JWKS_CA {}: {e}", path.display()))
                        })?);
                    }
                    config.jwks_token_file = self.auth_jwks_token_file.clone();
                    config.resource_metadata_url = self
                        .oauth_resource_metadata(public_url, prefix)?
                        .map(|m| m.well_known_url(prefix));
                    members.push(Arc::new(JwtAuthenticator::new(config)?));
                }
            }
        }
        if !seen.contains(&AuthMode::Jwt) {
            for (set, name) in [
                (self.auth_jwks_url.is_some(), "SPILLWAY_AUTH_JWKS_URL"),
                (self.auth_issuer.is_some(), "SPILLWAY_AUTH_ISSUER"),
                (!self.auth_audience.is_empty(), "SPILLWAY_AUTH_AUDIENCE"),
                (self.auth_jwks_ca.is_some(), "SPILLWAY_AUTH_JWKS_CA"),
                (
                    self.auth_jwks_token_file.is_some(),
                    "SPILLWAY_AUTH_JWKS_TOKEN_FILE",
                ),
            ] {
                if set {
                    return Err(Error::Config(format!(
                        "{name} is set but SPILLWAY_AUTH does not include jwt"
                    )));
                }
            }
        }
        // Last: a credential the request carries explicitly is looked at first.
        if self.tls_client_ca.is_some() {
            members.push(Arc::new(ClientCertificates::new()));
        }
        if !seen.contains(&AuthMode::Bearer) && self.auth_tokens_file.is_some() {
            return Err(Error::Config(
                "SPILLWAY_AUTH_TOKENS_FILE is set but SPILLWAY_AUTH does not include bearer".into(),
            ));
        }
        Ok(match members.len() {
            0 => None,
            1 => members.pop(),
            _ => Some(Arc::new(AuthChain::new(members))),
        })
    }

    /// The JWT settings (`SPILLWAY_AUTH=jwt`), each required one checked.
    pub fn jwt_config(&self) -> Result<JwtConfig> {
        let need = |name: &str| Error::Config(format!("SPILLWAY_AUTH=jwt needs {name}"));
        let jwks_url = self
            .auth_jwks_url
            .clone()
            .ok_or_else(|| need("SPILLWAY_AUTH_JWKS_URL"))?;
        let issuer = self
            .auth_issuer
            .as_deref()
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .ok_or_else(|| need("SPILLWAY_AUTH_ISSUER"))?;
        let audiences: Vec<String> = self
            .auth_audience
            .iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if audiences.is_empty() {
            return Err(need("SPILLWAY_AUTH_AUDIENCE"));
        }
        let claim = self.auth_principal_claim.trim();
        if claim.is_empty() {
            return Err(Error::Config(
                "SPILLWAY_AUTH_PRINCIPAL_CLAIM must not be empty".into(),
            ));
        }
        let leeway = std::time::Duration::from_secs(self.auth_leeway);
        if leeway > crate::server::auth::jwt::MAX_LEEWAY {
            return Err(Error::Config(format!(
                "SPILLWAY_AUTH_LEEWAY must be at most {} seconds",
                crate::server::auth::jwt::MAX_LEEWAY.as_secs()
            )));
        }
        let mut config = JwtConfig::new(jwks_url, issuer, audiences);
        config.principal_claim = claim.to_string();
        config.leeway = leeway;
        Ok(config)
    }

    /// The protected-resource metadata to serve when JWT authentication is on: the resource
    /// is the server's public URL with its prefix, the authorization server the issuer.
    pub fn oauth_resource_metadata(
        &self,
        public_url: &Url,
        prefix: &str,
    ) -> Result<Option<OAuthResourceMetadata>> {
        if !self.auth.contains(&AuthMode::Jwt) {
            return Ok(None);
        }
        let issuer = self.jwt_config()?.issuer;
        OAuthResourceMetadata::new(
            OAuthResourceMetadata::resource_url(public_url, prefix),
            vec![issuer],
        )
        .map(Some)
    }

    /// The TLS setup of the main listener (`None`: plain HTTP), loaded and checked.
    pub async fn tls(&self) -> Result<Option<ServerTls>> {
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) if self.tls_client_ca.is_none() => return Ok(None),
            _ => {
                return Err(Error::Config(
                    "TLS needs both SPILLWAY_TLS_CERT and SPILLWAY_TLS_KEY (and SPILLWAY_TLS_CLIENT_CA needs them)"
                        .into(),
                ))
            }
        };
        let mut config = TlsConfig::new(cert, key);
        config.client_ca = self.tls_client_ca.clone();
        ServerTls::load(config).await.map(Some)
    }

    /// The authorization policy, if one is configured.
    pub fn authorization(&self) -> Result<Option<AuthzPolicy>> {
        let Some(path) = &self.authz_file else {
            return Ok(None);
        };
        if !self.auth_enabled() {
            return Err(Error::Config(
                "SPILLWAY_AUTHZ_FILE needs authentication (SPILLWAY_AUTH or SPILLWAY_TLS_CLIENT_CA): \
                 every caller would be anonymous"
                    .into(),
            ));
        }
        AuthzPolicy::from_file(path).map(Some)
    }

    /// The previous signing secret, checked like the current one.
    pub fn previous_secret(&self) -> Result<Option<Vec<u8>>> {
        match &self.signing_secret_previous {
            None => Ok(None),
            Some(s) if s.len() >= 32 => Ok(Some(s.as_bytes().to_vec())),
            Some(_) => Err(Error::Config(
                "SPILLWAY_SIGNING_SECRET_PREVIOUS must be at least 32 bytes".into(),
            )),
        }
    }

    /// The CORS origins, checked.
    pub fn cors(&self) -> Result<Vec<String>> {
        let origins: Vec<String> = self
            .cors_origins
            .iter()
            .map(|o| o.trim().to_string())
            .filter(|o| !o.is_empty())
            .collect();
        crate::server::cors::validate_origins(&origins)?;
        Ok(origins)
    }
}
