//! The client's HTTP exchanges: the two `reqwest` clients, the capability probe, one RPC
//! POST with its request headers, and the PUT to an upload URL.

use std::sync::Arc;

use bytes::Bytes;

use super::auth::{authorization_value, BearerToken};
use super::config::{Capabilities, ClientConfig, ACCEPT_MAX_RESPONSE_BYTES_HEADER};
use super::response::{
    content_encoding, decode_response_body, read_capped_body, unauthorized_error, RawResponse,
    MAX_UNAUTHORIZED_BODY,
};
use super::Client;
use crate::error::{Error, Result};
use crate::url_policy::{PolicyResolver, UrlPolicy};
use crate::wire::ARROW_STREAM_CONTENT_TYPE;

/// The client for RPC calls to the server the user named: a few redirects (reqwest drops
/// `Authorization` on a redirect to another origin), the configured proxy, CA roots and
/// client certificate.
pub(super) fn rpc_client(config: &ClientConfig) -> Result<reqwest::Client> {
    let mut builder = config
        .ca
        .apply(reqwest::Client::builder())
        .redirect(reqwest::redirect::Policy::limited(5))
        .connect_timeout(config.fetch.connect_timeout);
    builder = config.proxy.apply(builder)?;
    if let Some(identity) = &config.identity {
        builder = builder.identity(identity.reqwest());
    }
    builder
        .build()
        .map_err(|e| Error::Config(format!("http client: {e}")))
}

/// The client for PUTs to server-vended upload URLs: DNS answers checked against `policy`,
/// no redirects (a redirect could lead past the policy), no proxy (it would resolve the host
/// out of the policy's sight), no client certificate and no `Authorization` (the URL's
/// signature is the credential).
pub(super) fn upload_client(config: &ClientConfig, policy: &UrlPolicy) -> Result<reqwest::Client> {
    config
        .fetch
        .ca
        .merged(&config.ca)
        .apply(reqwest::Client::builder())
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(PolicyResolver::new(Arc::new(policy.clone()))))
        .connect_timeout(config.fetch.connect_timeout)
        .no_proxy()
        .build()
        .map_err(|e| Error::Config(format!("http client: {e}")))
}

impl Client {
    /// The bearer token for the next RPC request, when one is configured.
    pub(super) async fn bearer(&self) -> Result<Option<BearerToken>> {
        match &self.inner.config.token {
            None => Ok(None),
            Some(provider) => provider.token().await.map(Some),
        }
    }

    /// An RPC request to the server: `Authorization` added when a token is configured.
    /// Every request to the server's RPC routes starts here; storage URLs never do.
    async fn rpc_request(
        &self,
        method: reqwest::Method,
        url: &str,
    ) -> Result<(reqwest::RequestBuilder, Option<BearerToken>)> {
        let token = self.bearer().await?;
        let mut req = self
            .inner
            .rpc_http
            .request(method, url)
            .timeout(self.inner.config.timeout);
        if let Some(t) = &token {
            req = req.header(reqwest::header::AUTHORIZATION, authorization_value(t)?);
        }
        Ok((req, token))
    }

    /// `OPTIONS {prefix}/health`, read for its capability headers. The route needs no
    /// credential on a vgi-rpc server, but the token goes along for gateways that want one.
    pub(super) async fn probe_capabilities(&self) -> Result<Capabilities> {
        let url = format!("{}{}/health", self.inner.root, self.inner.prefix);
        let (req, token) = self.rpc_request(reqwest::Method::OPTIONS, &url).await?;
        let resp = req.send().await.map_err(Error::from_reqwest)?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            let headers = resp.headers().clone();
            let body = read_capped_body(resp, MAX_UNAUTHORIZED_BODY, MAX_UNAUTHORIZED_BODY)
                .await
                .unwrap_or_default();
            return Err(unauthorized_error(&headers, &body, &url, token.as_ref()));
        }
        if !status.is_success() {
            return Err(Error::HttpStatus {
                status: status.as_u16(),
                url: spillway_storage::redact_url(&url),
            });
        }
        let caps = Capabilities::from_headers(resp.headers());
        tracing::debug!(url = %spillway_storage::redact_url(&url), ?caps, "server capabilities");
        Ok(caps)
    }

    /// One RPC POST of an Arrow body (`zstd`: it is zstd-compressed), its response read within
    /// `max_response_bytes` and decoded.
    pub(super) async fn post_once(
        &self,
        url: &str,
        caps: &Capabilities,
        body: Bytes,
        zstd: bool,
    ) -> Result<RawResponse> {
        let config = &self.inner.config;
        let (req, token) = self.rpc_request(reqwest::Method::POST, url).await?;
        let mut req = req
            .header(reqwest::header::CONTENT_TYPE, ARROW_STREAM_CONTENT_TYPE)
            .header(reqwest::header::ACCEPT_ENCODING, "zstd, gzip");
        if zstd {
            req = req.header(reqwest::header::CONTENT_ENCODING, "zstd");
        }
        if caps.accept_max_response_bytes_support {
            req = req.header(
                ACCEPT_MAX_RESPONSE_BYTES_HEADER,
                config.accept_max_response_bytes.to_string(),
            );
        }
        let resp = req.body(body).send().await.map_err(Error::from_reqwest)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let encoding = content_encoding(&headers);
        let cap = config.max_response_bytes;
        // A compressed body may be a little larger than its decoded size; allow for framing.
        let wire_cap = if encoding.is_some() {
            cap.saturating_add(cap / 64).saturating_add(4096)
        } else {
            cap
        };
        let wire = read_capped_body(resp, wire_cap, cap).await?;
        let body = decode_response_body(wire, encoding, cap).await?;
        Ok(RawResponse {
            status,
            headers,
            body,
            token,
        })
    }

    /// PUTs the original request bytes to a (policy-checked) upload URL.
    pub(super) async fn put_upload(&self, upload_url: &str, raw: Bytes) -> Result<()> {
        let len = raw.len();
        // The upload client, not `rpc_request`: a vended URL gets no `Authorization`.
        let resp = self
            .inner
            .upload_http
            .put(upload_url)
            .header(reqwest::header::CONTENT_TYPE, ARROW_STREAM_CONTENT_TYPE)
            .timeout(self.inner.config.timeout)
            .body(raw)
            .send()
            .await
            .map_err(Error::from_reqwest)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(Error::Http(format!(
                "PUT to upload URL failed: HTTP {} ({})",
                status.as_u16(),
                spillway_storage::redact_url(upload_url)
            )));
        }
        tracing::debug!(
            url = %spillway_storage::redact_url(upload_url),
            bytes = len,
            "uploaded request body"
        );
        Ok(())
    }
}
