//! RFC 9728 OAuth 2.0 protected-resource metadata, as the vgi-rpc reference serves it
//! (`vgi_rpc/http/_oauth.py`): `GET /.well-known/oauth-protected-resource{prefix}` (and
//! without the prefix), so clients that log in through OAuth discover the issuer from the
//! `resource_metadata` of a 401's `WWW-Authenticate`.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use url::Url;

use crate::error::{Error, Result};
use crate::wire::http::OAUTH_PROTECTED_RESOURCE;

/// The metadata document: the protected resource and the authorization servers (token
/// issuers) that vouch for its callers. Fields left empty are omitted, as the reference does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthResourceMetadata {
    /// The resource's canonical URL (the server's public URL with its prefix).
    pub resource: Url,
    /// Issuer URLs of the authorization servers (at least one).
    pub authorization_servers: Vec<String>,
    /// OAuth scopes the resource understands.
    pub scopes_supported: Vec<String>,
    /// A human-readable name of the resource.
    pub resource_name: Option<String>,
    /// Where its developer documentation is.
    pub resource_documentation: Option<String>,
}

impl OAuthResourceMetadata {
    /// The metadata of `resource`, whose callers' tokens come from `authorization_servers`.
    pub fn new(resource: Url, authorization_servers: Vec<String>) -> Result<Self> {
        if authorization_servers.iter().all(|s| s.trim().is_empty()) {
            return Err(Error::Config(
                "oauth resource metadata needs at least one authorization server".into(),
            ));
        }
        Ok(OAuthResourceMetadata {
            resource,
            authorization_servers,
            scopes_supported: Vec::new(),
            resource_name: None,
            resource_documentation: None,
        })
    }

    /// The resource URL of a server published at `public_url` under `prefix`
    /// (`https://api.example/` and `/vgi`: `https://api.example/vgi`).
    pub fn resource_url(public_url: &Url, prefix: &str) -> Url {
        let mut url = public_url.clone();
        let path = format!("{}{prefix}", url.path().trim_end_matches('/'));
        url.set_path(if path.is_empty() { "/" } else { &path });
        url.set_query(None);
        url.set_fragment(None);
        url
    }

    /// Where the document is found for a server whose RPC routes are under `prefix`:
    /// `{origin of the resource}/.well-known/oauth-protected-resource{prefix}`, the URL the
    /// reference's challenge names (`_build_www_authenticate`).
    pub fn well_known_url(&self, prefix: &str) -> Url {
        let mut url = self.resource.clone();
        let suffix = if prefix == "/" { "" } else { prefix };
        url.set_path(&format!("{OAUTH_PROTECTED_RESOURCE}{suffix}"));
        url.set_query(None);
        url.set_fragment(None);
        url
    }

    /// The JSON document.
    pub fn to_json(&self) -> serde_json::Value {
        let mut doc = serde_json::Map::new();
        doc.insert("resource".into(), self.resource.as_str().into());
        doc.insert(
            "authorization_servers".into(),
            self.authorization_servers.clone().into(),
        );
        if !self.scopes_supported.is_empty() {
            doc.insert(
                "scopes_supported".into(),
                self.scopes_supported.clone().into(),
            );
        }
        if let Some(name) = &self.resource_name {
            doc.insert("resource_name".into(), name.clone().into());
        }
        if let Some(docs) = &self.resource_documentation {
            doc.insert("resource_documentation".into(), docs.clone().into());
        }
        serde_json::Value::Object(doc)
    }
}

/// The routes serving `metadata`, at the root (not under the prefix): the well-known path
/// with the prefix appended, and without it, as the reference registers both. No
/// authentication: a client reads it before it has a token.
pub(crate) fn routes(metadata: &OAuthResourceMetadata, prefix: &str) -> Router {
    let body = Bytes::from(metadata.to_json().to_string());
    let serve = move || {
        let body = body.clone();
        async move {
            (
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::CACHE_CONTROL, "public, max-age=60"),
                ],
                body,
            )
                .into_response()
        }
    };
    let mut router = Router::new().route(OAUTH_PROTECTED_RESOURCE, get(serve.clone()));
    if !prefix.is_empty() && prefix != "/" {
        router = router.route(&format!("{OAUTH_PROTECTED_RESOURCE}{prefix}"), get(serve));
    }
    router
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_reference() {
        let public: Url = "https://api.example:8443/".parse().unwrap();
        let resource = OAuthResourceMetadata::resource_url(&public, "/vgi");
        assert_eq!(resource.as_str(), "https://api.example:8443/vgi");
        let m =
            OAuthResourceMetadata::new(resource, vec!["https://issuer.example".into()]).unwrap();
        assert_eq!(
            m.well_known_url("/vgi").as_str(),
            "https://api.example:8443/.well-known/oauth-protected-resource/vgi"
        );
        assert_eq!(
            m.well_known_url("").as_str(),
            "https://api.example:8443/.well-known/oauth-protected-resource"
        );
        let root = OAuthResourceMetadata::resource_url(&public, "");
        assert_eq!(root.as_str(), "https://api.example:8443/");
    }

    #[test]
    fn the_document_omits_empty_fields() {
        let mut m = OAuthResourceMetadata::new(
            "https://api.example/vgi".parse().unwrap(),
            vec!["https://issuer.example".into()],
        )
        .unwrap();
        assert_eq!(
            m.to_json(),
            serde_json::json!({
                "resource": "https://api.example/vgi",
                "authorization_servers": ["https://issuer.example"],
            })
        );
        m.scopes_supported = vec!["spillway.call".into()];
        assert_eq!(m.to_json()["scopes_supported"][0], "spillway.call");
        assert!(OAuthResourceMetadata::new(m.resource.clone(), vec![]).is_err());
    }
}
