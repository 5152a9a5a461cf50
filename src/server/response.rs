//! Building HTTP responses: Arrow bodies, RPC errors with the spec's status mapping, and the
//! JSON bodies of the transport errors (413, 415).

use arrow_schema::SchemaRef;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::access_log;
use super::memory::OVERLOADED_ERROR;
use super::protocol::empty_schema;
use crate::error::Error;
use crate::wire::{http, write_stream, ErrorCode, MetaBatch, RpcError, ARROW_STREAM_CONTENT_TYPE};

/// The header marking a 200 response that carries an EXCEPTION rewritten from a 500 (the
/// shared [`http::RPC_ERROR`]).
pub const RPC_ERROR_HEADER: &str = http::RPC_ERROR;

/// Response extension: bytes externalized by this call (for the access log).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExternalizedBytes(pub(crate) u64);

/// An Arrow IPC response body with status 200.
pub(crate) fn arrow_response(schema: &SchemaRef, batches: &[MetaBatch]) -> Response {
    match write_stream(schema, batches) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, ARROW_STREAM_CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(e) => ApiError::server(RpcError::internal(format!("encoding the response: {e}")))
            .into_response(),
    }
}

/// Encodes one stream step's `batches` on `schema`. An encoding failure is answered as a
/// server error carrying the request id.
pub(crate) fn encode_stream(
    schema: &SchemaRef,
    batches: &[MetaBatch],
    request_id: &str,
) -> Result<Vec<u8>, Response> {
    write_stream(schema, batches).map_err(|e| {
        ApiError::server(RpcError::internal(format!("encoding: {e}")))
            .with_request_id(request_id)
            .into_response()
    })
}

/// A 200 Arrow response of an encoded stream `body`; `error` marks it with
/// `X-VGI-RPC-Error` (the body ends in an EXCEPTION batch), `externalized` is recorded for the
/// access log.
pub(crate) fn body_response(body: Vec<u8>, error: bool, externalized: u64) -> Response {
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, ARROW_STREAM_CONTENT_TYPE)],
        body,
    )
        .into_response();
    if error {
        resp.headers_mut()
            .insert(RPC_ERROR_HEADER, HeaderValue::from_static("true"));
    }
    if externalized > 0 {
        resp.extensions_mut()
            .insert(ExternalizedBytes(externalized));
    }
    resp
}

/// Encodes `batches` on `schema` into a [`body_response`], or answers the encoding failure
/// as a server error carrying the request id.
pub(crate) fn stream_response(
    schema: &SchemaRef,
    batches: &[MetaBatch],
    error: bool,
    externalized: u64,
    request_id: &str,
) -> Response {
    match encode_stream(schema, batches, request_id) {
        Ok(body) => body_response(body, error, externalized),
        Err(resp) => resp,
    }
}

/// An RPC failure on its way to the client as an EXCEPTION batch.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// 400/404/415 for request errors; `None` for server-side failures (sent as 200 +
    /// `X-VGI-RPC-Error: true`, never 5xx).
    pub status: Option<StatusCode>,
    /// The error.
    pub error: RpcError,
    /// The schema the EXCEPTION batch rides on.
    pub schema: SchemaRef,
    /// Echoed into the error metadata.
    pub request_id: Option<String>,
}

impl ApiError {
    /// A request error (4xx) on the empty schema.
    pub fn client(status: StatusCode, error: RpcError) -> Self {
        ApiError {
            status: Some(status),
            error,
            schema: empty_schema(),
            request_id: None,
        }
    }

    /// 400 with a `ValueError`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::client(StatusCode::BAD_REQUEST, RpcError::invalid_argument(message))
    }

    /// A server-side failure: 200 + `X-VGI-RPC-Error: true`.
    pub fn server(error: RpcError) -> Self {
        ApiError {
            status: None,
            error,
            schema: empty_schema(),
            request_id: None,
        }
    }

    /// Puts the error on another schema (the result schema after dispatch).
    pub fn on_schema(mut self, schema: &SchemaRef) -> Self {
        self.schema = schema.clone();
        self
    }

    /// Records the request id.
    pub fn with_request_id(mut self, id: &str) -> Self {
        self.request_id = Some(id.to_string());
        self
    }

    /// 404 for an unknown protocol.
    pub fn unknown_protocol(protocol: &str) -> Self {
        Self::client(
            StatusCode::NOT_FOUND,
            RpcError::new(
                "ProtocolNotSupportedError",
                format!("Unknown protocol '{protocol}'"),
            )
            .with_code(ErrorCode::Unimplemented)
            .with_kind("protocol_not_supported"),
        )
    }

    /// 404 for an unknown method.
    pub fn unknown_method(protocol: &str, method: &str) -> Self {
        Self::client(
            StatusCode::NOT_FOUND,
            RpcError::new(
                "MethodNotImplementedError",
                format!("Unknown method '{method}' on protocol '{protocol}'"),
            )
            .with_code(ErrorCode::Unimplemented)
            .with_kind("method_not_implemented"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let batch = access_log::error_batch(&self.error, &self.schema, self.request_id.as_deref());
        let body = write_stream(&self.schema, &[batch]).unwrap_or_default();
        // A refusal of the memory budget, wherever in the call it happened, is a 503 the
        // client may retry (see `memory`), not a failure of the method.
        let retry_after = (self.error.error_type == OVERLOADED_ERROR
            && self.error.code == ErrorCode::Unavailable)
            .then(|| retry_delay(&self.error));
        let status = match retry_after {
            Some(_) => Some(StatusCode::SERVICE_UNAVAILABLE),
            None => self.status,
        };
        let mut resp = (
            status.unwrap_or(StatusCode::OK),
            [(header::CONTENT_TYPE, ARROW_STREAM_CONTENT_TYPE)],
            body,
        )
            .into_response();
        if status.is_none() {
            resp.headers_mut()
                .insert(RPC_ERROR_HEADER, HeaderValue::from_static("true"));
        }
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// The `retry_delay_seconds` of an error's `vgi_rpc.RetryInfo` detail, at least 1 s.
fn retry_delay(e: &RpcError) -> u64 {
    e.details()
        .and_then(|d| serde_json::from_str::<Vec<serde_json::Value>>(d).ok())
        .and_then(|details| {
            details
                .iter()
                .find(|d| d["@type"] == "vgi_rpc.RetryInfo")
                .and_then(|d| d["retry_delay_seconds"].as_f64())
        })
        .map(|s| s.ceil().max(1.0) as u64)
        .unwrap_or(1)
}

/// A transport-level error with a JSON body, as the reference answers 413 and some 415s.
pub(crate) fn json_error(status: StatusCode, title: &str, description: &str) -> Response {
    let body = serde_json::json!({ "title": title, "description": description });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The 413 for request bodies over the cap.
pub(crate) fn request_too_large(cap: u64) -> Response {
    json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "Request body exceeds max_request_bytes",
        &format!(
            "The request body exceeds max_request_bytes ({cap} bytes). Use the upload-URL flow (__upload_url__/init) to externalize large inputs."
        ),
    )
}

/// Maps a library error to the RPC error a client sees.
pub(crate) fn rpc_error_from(e: &Error) -> RpcError {
    match e {
        Error::Rpc(r) => (**r).clone(),
        Error::Admission(a) => a.to_rpc_error(),
        Error::ExternalizedTooLarge { .. } => {
            RpcError::new("RuntimeError", e.to_string()).with_code(ErrorCode::ResourceExhausted)
        }
        Error::TooLarge { .. } => {
            RpcError::new("RuntimeError", e.to_string()).with_code(ErrorCode::ResourceExhausted)
        }
        Error::UrlRejected { .. } | Error::Checksum { .. } => {
            RpcError::new("ValueError", e.to_string()).with_code(ErrorCode::InvalidArgument)
        }
        Error::Storage(spillway_storage::StorageError::NotFound { .. }) => {
            RpcError::new("RuntimeError", e.to_string()).with_code(ErrorCode::NotFound)
        }
        // The store is down or throttling: the call may succeed later (the message names the
        // cause: "storage unavailable: ..." / "storage throttled: ... SlowDown ...").
        Error::Storage(s) if s.is_transient() => {
            RpcError::new("RuntimeError", e.to_string()).with_code(ErrorCode::Unavailable)
        }
        Error::Storage(spillway_storage::StorageError::Full { .. }) => {
            RpcError::new("RuntimeError", e.to_string()).with_code(ErrorCode::ResourceExhausted)
        }
        _ => RpcError::new("RuntimeError", e.to_string()).with_code(ErrorCode::Internal),
    }
}
