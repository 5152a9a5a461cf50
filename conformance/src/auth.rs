//! The conformance rig's reject-all authenticator (`--reject-all-auth`): the worker behind the
//! suite's `conformance_http_auth_port` and `conformance_http_auth_reason_port` fixtures.

use async_trait::async_trait;
use spillway::server::auth::{AuthContext, AuthFailure, AuthReason, Authenticator};

/// The header through which the suite asks for a particular refusal reason.
pub const REASON_HEADER: &str = "x-conformance-auth-reason";

/// Refuses every request. The reason is the one the request asks for in
/// `X-Conformance-Auth-Reason` when it is one a request may choose, else `unauthorized` (the
/// unclassified fallback; `proxy_required` cannot be summoned by a request).
#[derive(Debug, Default)]
pub struct RejectAll;

fn requested_reason(request: &http::request::Parts) -> AuthReason {
    match request
        .headers
        .get(REASON_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        Some("missing_credential") => AuthReason::MissingCredential,
        Some("invalid_credential") => AuthReason::InvalidCredential,
        Some("expired_credential") => AuthReason::ExpiredCredential,
        Some("insufficient_scope") => AuthReason::InsufficientScope,
        _ => AuthReason::Unauthorized,
    }
}

#[async_trait]
impl Authenticator for RejectAll {
    fn name(&self) -> &str {
        "reject-all"
    }

    async fn authenticate(
        &self,
        request: &http::request::Parts,
    ) -> Result<Option<AuthContext>, AuthFailure> {
        Err(AuthFailure::rejected(
            requested_reason(request),
            "the conformance auth worker refuses every request",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(reason: Option<&str>) -> http::request::Parts {
        let mut b = http::Request::builder();
        if let Some(r) = reason {
            b = b.header(REASON_HEADER, r);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[tokio::test]
    async fn refuses_with_the_requested_reason_or_the_fallback() {
        for (asked, want) in [
            (Some("expired_credential"), AuthReason::ExpiredCredential),
            (Some("insufficient_scope"), AuthReason::InsufficientScope),
            (Some("proxy_required"), AuthReason::Unauthorized),
            (None, AuthReason::Unauthorized),
        ] {
            match RejectAll.authenticate(&parts(asked)).await {
                Err(AuthFailure::Rejected { reason, .. }) => assert_eq!(reason, want, "{asked:?}"),
                other => panic!("{asked:?}: {other:?}"),
            }
        }
    }
}
