//! Scraping one replica's `GET /metrics`: bounded in time and size, with the same bearer
//! token and TLS settings as `spillway call`. A replica that does not answer, answers an
//! error status or answers something that is not an exposition is down, with the reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use spillway_storage::{redact_text, redact_url};

use super::model::Scrape;
use super::parse;
use crate::client::TokenProvider;

/// The largest metrics body read (a replica's exposition is tens of KiB; a bigger answer is
/// not one, and is not held in memory).
pub(crate) const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// One replica to watch.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Shown in the view: the URL's `host:port` (never its user info or query).
    pub(crate) name: String,
    /// The metrics URL (`/metrics` appended when the URL has no path).
    pub(crate) url: reqwest::Url,
}

impl Target {
    /// Parses a replica's URL: its base (`http://host:port`, `/metrics` is added) or the
    /// metrics URL itself.
    pub(crate) fn parse(raw: &str) -> Result<Target, String> {
        let mut url = reqwest::Url::parse(raw)
            .map_err(|e| format!("invalid replica URL {}: {e}", redact_url(raw)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "replica URL {} must be http or https",
                redact_url(raw)
            ));
        }
        if url.path().is_empty() || url.path() == "/" {
            url.set_path("/metrics");
        }
        let host = url.host_str().unwrap_or("?").to_string();
        let mut name = match url.port_or_known_default() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        if url.path() != "/metrics" {
            name.push_str(url.path());
        }
        Ok(Target { name, url })
    }
}

/// Fetches and parses one exposition, within `timeout` for the whole exchange.
pub(crate) async fn scrape(
    client: &reqwest::Client,
    target: &Target,
    token: Option<&Arc<dyn TokenProvider>>,
    timeout: Duration,
) -> Result<Scrape, String> {
    match tokio::time::timeout(timeout, fetch(client, target, token)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:.1} s", timeout.as_secs_f64())),
    }
}

async fn fetch(
    client: &reqwest::Client,
    target: &Target,
    token: Option<&Arc<dyn TokenProvider>>,
) -> Result<Scrape, String> {
    let mut req = client.get(target.url.clone());
    if let Some(token) = token {
        // The credential's error never holds the token (TokenProvider's contract).
        let t = token.token().await.map_err(|e| e.to_string())?;
        req = req.bearer_auth(t.expose());
    }
    let mut resp = req.send().await.map_err(describe)?;
    let status = resp.status();
    if !status.is_success() {
        return Err(match status.as_u16() {
            401 | 403 => {
                format!("HTTP {status} (a token is needed: --token-file or SPILLWAY_TOKEN)")
            }
            _ => format!("HTTP {status}"),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(describe)? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(format!(
                "the metrics answer exceeds {} MiB",
                MAX_BODY_BYTES / (1024 * 1024)
            ));
        }
        body.extend_from_slice(&chunk);
    }
    let at = Instant::now();
    let text = std::str::from_utf8(&body)
        .map_err(|_| "not a prometheus exposition: the answer is not utf-8".to_string())?;
    let samples = tokio::task::spawn_blocking({
        let text = text.to_string();
        move || parse::parse(&text)
    })
    .await
    .map_err(|e| format!("parser task failed: {e}"))?
    .map_err(|e| e.to_string())?;
    if !samples.iter().any(|s| s.name.starts_with("spillway_")) {
        return Err("no spillway metrics in the answer (not a spillway server?)".into());
    }
    Ok(Scrape { at, samples })
}

/// The innermost cause of a request failure ("connection refused"), without the URL.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(c) = cause {
        msg = c.to_string();
        cause = c.source();
    }
    redact_text(&msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_get_metrics_paths_and_plain_names() {
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(t.url.as_str(), "http://127.0.0.1:8080/metrics");
        assert_eq!(t.name, "127.0.0.1:8080");
        let t = Target::parse("https://user:pw@example.test/x/metrics?sig=1").unwrap();
        assert_eq!(t.url.path(), "/x/metrics");
        assert_eq!(t.name, "example.test:443/x/metrics");
        assert!(Target::parse("ftp://a").is_err());
        assert!(Target::parse("not a url").is_err());
    }
}
