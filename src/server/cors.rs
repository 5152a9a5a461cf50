//! CORS for browser clients (the TypeScript vgi-rpc client): preflights answered on every
//! route (RPC and storage), and every header a vgi-rpc client reads exposed.

use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceExt;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer, ExposeHeaders};

use crate::error::{Error, Result};
use crate::wire::http;

/// How long a browser may cache a preflight (the reference's default).
const MAX_AGE: Duration = Duration::from_secs(7200);

/// The response headers a browser client must be able to read: the capability headers, the
/// error and encoding markers, the request id, the 401 reason and challenge, and what a
/// ranged object download answers with.
const EXPOSED: &[&str] = &[
    http::ACCEPT_MAX_RESPONSE_BYTES_SUPPORT,
    http::EXTERNALIZATION_ENABLED,
    http::UPLOAD_URL_SUPPORT,
    http::MAX_REQUEST_BYTES,
    http::MAX_UPLOAD_BYTES,
    http::MAX_RESPONSE_BYTES,
    http::MAX_EXTERNALIZED_RESPONSE_BYTES,
    http::SUPPORTED_ENCODINGS,
    http::RPC_ERROR,
    http::VGI_CONTENT_ENCODING,
    http::REQUEST_ID,
    http::AUTH_REASON,
    "www-authenticate",
    "content-encoding",
    "content-length",
    "content-range",
    "accept-ranges",
    "etag",
    "retry-after",
];

/// Checks `SPILLWAY_CORS_ORIGINS`-style origins: `*`, or `scheme://host[:port]` each.
pub fn validate_origins(origins: &[String]) -> Result<()> {
    for origin in origins {
        if origin == "*" {
            continue;
        }
        let parsed = url::Url::parse(origin)
            .map_err(|e| Error::Config(format!("cors origin {origin:?}: {e}")))?;
        let bare = parsed.path() == "/" && !origin.ends_with('/');
        if !matches!(parsed.scheme(), "http" | "https")
            || parsed.host().is_none()
            || !bare
            || parsed.query().is_some()
            || HeaderValue::from_str(origin).is_err()
        {
            return Err(Error::Config(format!(
                "cors origin {origin:?} must be `*` or scheme://host[:port], without a path"
            )));
        }
    }
    Ok(())
}

/// Wraps `app` in CORS for `origins`. Only browser requests go through the CORS layer: a
/// preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered there,
/// and any other request with an `Origin` gets the allow/expose headers on its response. A
/// plain `OPTIONS {prefix}/health` (capability discovery) reaches the route as before — the
/// CORS layer alone would answer every `OPTIONS` as a preflight.
pub(crate) fn wrap(app: Router, origins: &[String]) -> Router {
    let cors_app = app.clone().layer(layer(origins));
    // The expose list for preflights, joined once (the names are static and valid).
    let exposed =
        HeaderValue::from_str(&EXPOSED.join(", ")).unwrap_or_else(|_| HeaderValue::from_static(""));
    // A service in front of both routers, not a middleware inside one: each router must do
    // its own routing (path parameters) from scratch.
    Router::new().fallback_service(tower::service_fn(move |req: Request| {
        let (plain, cors, exposed) = (app.clone(), cors_app.clone(), exposed.clone());
        async move {
            Ok::<_, std::convert::Infallible>(route_cors(plain, cors, exposed, req).await)
        }
    }))
}

async fn route_cors(
    plain: Router,
    cors_app: Router,
    exposed: HeaderValue,
    req: Request,
) -> Response {
    let has_origin = req.headers().contains_key(header::ORIGIN);
    let preflight = req.method() == Method::OPTIONS
        && has_origin
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if !has_origin || (req.method() == Method::OPTIONS && !preflight) {
        return match plain.oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
    }
    let mut resp = match cors_app.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if preflight {
        // Browsers read the expose list from actual responses; the reference sends it on the
        // preflight too, and clients that probe capabilities read it there.
        resp.headers_mut()
            .insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, exposed);
    }
    resp.headers_mut().insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    resp.into_response()
}

/// The CORS layer for `origins` (`*` allows any). Request headers are mirrored from the
/// preflight, so a browser may send whatever vgi-rpc header it needs (`Authorization`
/// included); cookies are not enabled.
pub(crate) fn layer(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::OPTIONS,
        ])
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers(ExposeHeaders::list(
            EXPOSED.iter().map(|h| HeaderName::from_static(h)),
        ))
        .max_age(MAX_AGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked() {
        let ok =
            |o: &[&str]| validate_origins(&o.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(ok(&["*"]).is_ok());
        assert!(ok(&["https://app.example.com", "http://localhost:5173"]).is_ok());
        for bad in [
            "app.example.com",
            "https://a.example/path",
            "ftp://x",
            "https://a.example/",
        ] {
            assert!(ok(&[bad]).is_err(), "{bad}");
        }
    }
}
