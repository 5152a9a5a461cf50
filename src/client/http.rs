//! The client's HTTP exchanges: the two `reqwest` clients, the capability probe, one RPC
//! POST with its request headers, and the PUT to an upload URL.

use std::sync::Arc;

use bytes::Bytes;

use super::config::{Capabilities, ClientConfig, ACCEPT_MAX_RESPONSE_BYTES_HEADER};
use super::response::{content_encoding, decode_response_body, read_capped_body, RawResponse};
use super::Client;
use crate::error::{Error, Result};
use crate::url_policy::{PolicyResolver, UrlPolicy};
use crate::wire::ARROW_STREAM_CONTENT_TYPE;

/// The client for RPC calls to the server the user named: a few redirects, no proxy.
pub(super) fn rpc_client(config: &ClientConfig) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(5))
        .connect_timeout(config.fetch.connect_timeout)
        .no_proxy()
        .build()
        .map_err(|e| Error::Config(format!("http client: {e}")))
}

/// The client for PUTs to server-vended upload URLs: DNS answers checked against `policy`,
/// no redirects (a redirect could lead past the policy), no proxy.
pub(super) fn upload_client(config: &ClientConfig, policy: &UrlPolicy) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(PolicyResolver::new(Arc::new(policy.clone()))))
        .connect_timeout(config.fetch.connect_timeout)
        .no_proxy()
        .build()
        .map_err(|e| Error::Config(format!("http client: {e}")))
}

impl Client {
    /// `OPTIONS {prefix}/health`, read for its capability headers.
    pub(super) async fn probe_capabilities(&self) -> Result<Capabilities> {
        let url = format!("{}{}/health", self.inner.root, self.inner.prefix);
        let resp = self
            .inner
            .rpc_http
            .request(reqwest::Method::OPTIONS, &url)
            .timeout(self.inner.config.timeout)
            .send()
            .await
            .map_err(Error::from_reqwest)?;
        let status = resp.status();
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
        let mut req = self
            .inner
            .rpc_http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, ARROW_STREAM_CONTENT_TYPE)
            .header(reqwest::header::ACCEPT_ENCODING, "zstd, gzip")
            .timeout(config.timeout);
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
        })
    }

    /// PUTs the original request bytes to a (policy-checked) upload URL.
    pub(super) async fn put_upload(&self, upload_url: &str, raw: Bytes) -> Result<()> {
        let len = raw.len();
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
