//! The small routes: `/health`, and the 404/405 answers for everything that is not a call.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::response::{json_error, ApiError};
use super::state::AppState;
use crate::wire::{ErrorCode, RpcError};

/// `GET|HEAD {prefix}/health`.
pub(crate) async fn health(State(st): State<Arc<AppState>>, method: Method) -> Response {
    let body = serde_json::json!({
        "status": "ok",
        "server_id": st.config.server_id,
        "protocol": st.primary_protocol,
    })
    .to_string();
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if method == Method::HEAD {
        *resp.body_mut() = axum::body::Body::empty();
    }
    resp
}

/// `OPTIONS {prefix}/health`.
pub(crate) async fn health_options() -> Response {
    (
        StatusCode::OK,
        [
            (header::ALLOW, "GET, HEAD"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
    )
        .into_response()
}

/// `GET {prefix}/{protocol}/{method}`: 405 for a hosted protocol, 404 otherwise.
pub(crate) async fn rpc_get(
    State(st): State<Arc<AppState>>,
    Path((protocol, _method)): Path<(String, String)>,
) -> Response {
    if st.protocols.contains_key(&protocol) {
        not_allowed().await
    } else {
        not_found().await
    }
}

/// Any other method on a call path: 405.
pub(crate) async fn not_allowed() -> Response {
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "405 Method Not Allowed",
        "RPC methods are called with POST",
    )
}

/// `POST {prefix}/{name}`: no such route (the retired `__describe__` says where to go).
pub(crate) async fn flat_route(Path(name): Path<String>) -> Response {
    let error = if name == "__describe__" {
        RpcError::new(
            "MethodNotImplementedError",
            "__describe__ is retired; use vgi_rpc.Reflection.v1",
        )
        .with_kind("method_not_implemented")
    } else {
        RpcError::new("NotFound", format!("No route for '{name}'"))
    }
    .with_code(ErrorCode::Unimplemented);
    ApiError::client(StatusCode::NOT_FOUND, error).into_response()
}

/// The fallback: 404.
pub(crate) async fn not_found() -> Response {
    ApiError::client(
        StatusCode::NOT_FOUND,
        RpcError::new("NotFound", "No such route").with_code(ErrorCode::NotFound),
    )
    .into_response()
}
