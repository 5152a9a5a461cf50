//! The middleware in front of the RPC routes: authenticate, authorize, hand the
//! [`AuthContext`] to the handler; and the standard 401.

use std::sync::Arc;

use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AuthContext, AuthFailure, AuthReason};
use crate::server::authz::Decision;
use crate::server::response::{json_error, ApiError};
use crate::server::state::AppState;
use crate::wire::{http as wire_http, ErrorCode, RpcError};

/// The fixed detail of every 401: what failed is the server's business, not the caller's.
const REJECTED: &str = "authentication rejected";

/// Authenticates every request to an RPC route (a route layer: unmatched paths answer 404
/// without it), then applies the authorization policy to the route's protocol and method.
/// The [`AuthContext`] (anonymous when no authenticator is configured) goes into the
/// request's extensions for the handler.
pub(crate) async fn authenticate(
    State(st): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    // CORS preflights and capability discovery carry no credential.
    if req.method() == Method::OPTIONS {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let auth = match &st.auth {
        None => AuthContext::anonymous(),
        Some(authenticator) => match authenticator.authenticate(&parts).await {
            Ok(Some(ctx)) => ctx,
            Ok(None) => {
                let failure = AuthFailure::rejected(AuthReason::MissingCredential, "no credential");
                return refuse(&parts, authenticator.challenge(), failure);
            }
            Err(failure) => return refuse(&parts, authenticator.challenge(), failure),
        },
    };
    if let Some(policy) = &st.authz {
        let params = RawPathParams::from_request_parts(&mut parts, &())
            .await
            .ok();
        let param = |name: &str| {
            params.as_ref().and_then(|p| {
                p.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_owned())
            })
        };
        let decision = match (param("protocol"), param("method")) {
            (Some(protocol), Some(method)) => policy.decide(&protocol, &method, &auth),
            // The upload-URL route belongs to no protocol: any caller the policy lets call
            // something may stage an input.
            _ => policy.decide_any(&auth),
        };
        if let Decision::Deny { target } = decision {
            metrics::counter!("spillway_authz_denied_total").increment(1);
            tracing::info!(
                principal = auth.principal_or_empty(),
                target = %target,
                "call denied by the authorization policy"
            );
            return ApiError::client(
                StatusCode::FORBIDDEN,
                RpcError::new(
                    "PermissionError",
                    format!("permission denied: not allowed to call {target}"),
                )
                .with_code(ErrorCode::PermissionDenied),
            )
            .into_response();
        }
    }
    parts.extensions.insert(Arc::new(auth));
    next.run(Request::from_parts(parts, body)).await
}

/// Answers a refused request: 401 (or 503 when the authority is unreachable), logged with
/// the authenticator's detail, which never holds the credential.
fn refuse(
    parts: &http::request::Parts,
    challenge: Option<String>,
    failure: AuthFailure,
) -> Response {
    let path = parts.uri.path();
    match failure {
        AuthFailure::Rejected { reason, detail } => {
            metrics::counter!("spillway_auth_failures_total", "reason" => reason.as_str())
                .increment(1);
            tracing::warn!(reason = reason.as_str(), detail = %detail, path, "authentication rejected");
            unauthorized_response(reason, challenge.as_deref(), &parts.headers)
        }
        AuthFailure::Unavailable {
            detail,
            retry_after,
        } => {
            metrics::counter!("spillway_auth_failures_total", "reason" => "unavailable")
                .increment(1);
            tracing::warn!(detail = %detail, path, "authentication unavailable");
            let mut resp = json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "503 Service Unavailable",
                "authentication authority unavailable",
            );
            if let Ok(v) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            resp
        }
    }
}

/// The body of a 401 as the vgi-rpc reference writes it (`docs/unauthorized-spec.md`): the
/// JSON envelope `{"error":"unauthorized","reason":...,"detail":...}`, or a small HTML page for
/// a browser (an `Accept` that names `text/html`).
pub fn unauthorized(reason: AuthReason, wants_html: bool) -> (&'static str, String) {
    if wants_html {
        let page = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>401 Unauthorized</title>\
             </head><body><h1>401 Unauthorized</h1><p>Reason: <code>{}</code></p>\
             <div class=\"detail\">{REJECTED}</div></body></html>",
            reason.as_str()
        );
        ("text/html; charset=utf-8", page)
    } else {
        let body = serde_json::json!({
            "error": "unauthorized",
            "reason": reason.as_str(),
            "detail": REJECTED,
        });
        ("application/json", body.to_string())
    }
}

/// The whole 401 response: the body of [`unauthorized`], `VGI-Auth-Reason`,
/// `Cache-Control: no-store` (a 401 may turn into a 200 on the next try) and the
/// `WWW-Authenticate` challenge when there is one.
pub fn unauthorized_response(
    reason: AuthReason,
    challenge: Option<&str>,
    request_headers: &HeaderMap,
) -> Response {
    let wants_html = request_headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    let (content_type, body) = unauthorized(reason, wants_html);
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response();
    let headers = resp.headers_mut();
    headers.insert(
        wire_http::AUTH_REASON,
        HeaderValue::from_static(reason.as_str()),
    );
    if let Some(c) = challenge.and_then(|c| HeaderValue::from_str(c).ok()) {
        headers.insert(header::WWW_AUTHENTICATE, c);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_is_the_reference_one() {
        let (ct, body) = unauthorized(AuthReason::ExpiredCredential, false);
        assert_eq!(ct, "application/json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "unauthorized");
        assert_eq!(v["reason"], "expired_credential");
        assert_eq!(v["detail"], REJECTED);
        let (ct, page) = unauthorized(AuthReason::MissingCredential, true);
        assert!(ct.starts_with("text/html"));
        assert!(page.contains("missing_credential"));
    }

    #[test]
    fn the_401_carries_reason_cache_control_and_challenge() {
        let resp = unauthorized_response(
            AuthReason::InvalidCredential,
            Some("Bearer"),
            &HeaderMap::new(),
        );
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let h = resp.headers();
        assert_eq!(h[wire_http::AUTH_REASON], "invalid_credential");
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert_eq!(h[header::WWW_AUTHENTICATE], "Bearer");
    }
}
