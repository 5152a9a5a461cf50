//! The client's HTTP exchanges: the two `reqwest` clients, the capability probe, one RPC
//! POST with its request headers, and the PUT to an upload URL.

use std::sync::Arc;

use bytes::Bytes;

use super::auth::{authorization_value, BearerToken};
use super::config::{Capabilities, ClientConfig, ACCEPT_MAX_RESPONSE_BYTES_HEADER};
use super::response::{
    content_encoding, decode_response_body, parse_error_body, read_capped_body, unauthorized_error,
    RawResponse, MAX_UNAUTHORIZED_BODY,
};
use super::retry::{self, verdict, Answer, Attempt, Deadline, Peer, Replay, Request};
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

    /// An RPC request to the server: `Authorization` added when a token is configured, the
    /// timeout cut to the operation's deadline. Every request to the server's RPC routes
    /// starts here; storage URLs never do.
    async fn rpc_request(
        &self,
        method: reqwest::Method,
        url: &str,
        deadline: &Deadline,
    ) -> Result<(reqwest::RequestBuilder, Option<BearerToken>)> {
        let token = self.bearer().await?;
        let mut req = self
            .inner
            .rpc_http
            .request(method, url)
            .timeout(deadline.attempt_timeout(self.inner.config.timeout));
        if let Some(t) = &token {
            req = req.header(reqwest::header::AUTHORIZATION, authorization_value(t)?);
        }
        let mut trace = reqwest::header::HeaderMap::new();
        crate::telemetry::inject_headers(&mut trace);
        if !trace.is_empty() {
            req = req.headers(trace);
        }
        Ok((req, token))
    }

    /// `OPTIONS {prefix}/health`, read for its capability headers. The route needs no
    /// credential on a vgi-rpc server, but the token goes along for gateways that want one.
    /// Replay-safe: retried after overload and transient failures alike.
    pub(super) async fn probe_capabilities(&self, deadline: &Deadline) -> Result<Capabilities> {
        let url = format!("{}{}/health", self.inner.root, self.inner.prefix);
        let url_ref = url.as_str();
        let redacted = spillway_storage::redact_url(&url);
        let http_status = |resp: reqwest::Response| Error::HttpStatus {
            status: resp.status().as_u16(),
            url: redacted.clone(),
        };
        let (resp, token) = retry::run(
            &self.inner.config.retry,
            deadline,
            Request {
                what: "probe",
                url: &redacted,
                replay: Replay::Safe,
            },
            || async {
                let (req, token) = match self
                    .rpc_request(reqwest::Method::OPTIONS, url_ref, deadline)
                    .await
                {
                    Ok(r) => r,
                    Err(e) => return Attempt::Failed(e),
                };
                match req.send().await {
                    Ok(resp) => {
                        let v = verdict(Peer::Rpc, resp.status().as_u16(), resp.headers(), None);
                        Attempt::Answered(Probed(resp, token), v)
                    }
                    Err(e) => Attempt::send_failed(e),
                }
            },
            |Probed(resp, _)| http_status(resp),
        )
        .await
        .map(|Probed(resp, token)| (resp, token))?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            let headers = resp.headers().clone();
            let body = read_capped_body(resp, MAX_UNAUTHORIZED_BODY, MAX_UNAUTHORIZED_BODY)
                .await
                .unwrap_or_default();
            return Err(unauthorized_error(&headers, &body, &url, token.as_ref()));
        }
        if !status.is_success() {
            return Err(http_status(resp));
        }
        let caps = Capabilities::from_headers(resp.headers());
        tracing::debug!(url = %redacted, ?caps, "server capabilities");
        Ok(caps)
    }

    /// One RPC POST of an Arrow body (`zstd`: it is zstd-compressed), its response read within
    /// `max_response_bytes` and decoded; retried per the policy (`replay`: whether the request
    /// may be sent again when its outcome is unknown). The body is `Bytes`: every attempt
    /// sends the same bytes.
    pub(super) async fn post_once(
        &self,
        url: &str,
        caps: &Capabilities,
        body: Bytes,
        zstd: bool,
        replay: Replay,
        deadline: &Deadline,
    ) -> Result<RawResponse> {
        let redacted = spillway_storage::redact_url(url);
        retry::run(
            &self.inner.config.retry,
            deadline,
            Request {
                what: if replay == Replay::Safe {
                    "control"
                } else {
                    "call"
                },
                url: &redacted,
                replay,
            },
            || self.post_attempt(url, caps, body.clone(), zstd, deadline),
            |resp| match resp.into_reply(url) {
                Err(e) => e,
                // Unreachable: only non-2xx answers are retried.
                Ok(_) => Error::Protocol("retried a successful answer".into()),
            },
        )
        .await
    }

    /// One attempt of [`Client::post_once`].
    async fn post_attempt(
        &self,
        url: &str,
        caps: &Capabilities,
        body: Bytes,
        zstd: bool,
        deadline: &Deadline,
    ) -> Attempt<RawResponse> {
        let config = &self.inner.config;
        let (req, token) = match self.rpc_request(reqwest::Method::POST, url, deadline).await {
            Ok(r) => r,
            Err(e) => return Attempt::Failed(e),
        };
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
        let resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => return Attempt::send_failed(e),
        };
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
        let wire = match read_capped_body(resp, wire_cap, cap).await {
            Ok(w) => w,
            Err(e) => return Attempt::read_failed(e),
        };
        let body = match decode_response_body(wire, encoding, cap).await {
            Ok(b) => b,
            Err(e) => return Attempt::Failed(e),
        };
        let error = (!(200..300).contains(&status))
            .then(|| parse_error_body(&body))
            .flatten();
        let v = verdict(Peer::Rpc, status, &headers, error.as_ref());
        Attempt::Answered(
            RawResponse {
                status,
                headers,
                body,
                token,
            },
            v,
        )
    }

    /// PUTs the original request bytes to a (policy-checked) upload URL. Replay-safe (the
    /// whole object, the same bytes): retried after overload and transient failures alike.
    pub(super) async fn put_upload(
        &self,
        upload_url: &str,
        raw: Bytes,
        deadline: &Deadline,
    ) -> Result<()> {
        let len = raw.len();
        let redacted = spillway_storage::redact_url(upload_url);
        let failed = |status: u16| {
            Error::Http(format!(
                "PUT to upload URL failed: HTTP {status} ({redacted})"
            ))
        };
        let status = retry::run(
            &self.inner.config.retry,
            deadline,
            Request {
                what: "upload",
                url: &redacted,
                replay: Replay::Safe,
            },
            || async {
                let raw = raw.clone();
                // The upload client, not `rpc_request`: a vended URL gets no `Authorization`.
                let sent = self
                    .inner
                    .upload_http
                    .put(upload_url)
                    .header(reqwest::header::CONTENT_TYPE, ARROW_STREAM_CONTENT_TYPE)
                    .timeout(deadline.attempt_timeout(self.inner.config.timeout))
                    .body(raw)
                    .send()
                    .await;
                match sent {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        Attempt::Answered(
                            status,
                            verdict(Peer::Storage, status, resp.headers(), None),
                        )
                    }
                    Err(e) => Attempt::send_failed(e),
                }
            },
            failed,
        )
        .await?;
        if !(200..300).contains(&status) {
            return Err(failed(status));
        }
        tracing::debug!(url = %redacted, bytes = len, "uploaded request body");
        Ok(())
    }
}

impl Answer for RawResponse {
    fn status(&self) -> u16 {
        self.status
    }
}

/// A capability probe's answer with the token it carried (to scrub it from a 401).
struct Probed(reqwest::Response, Option<BearerToken>);

impl Answer for Probed {
    fn status(&self) -> u16 {
        self.0.status().as_u16()
    }
}
