//! Reading a call request: the processing order of the spec (§3.1) up to dispatch, shared by
//! unary calls and stream `/init`.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::access_log;
use super::body::{check_content_type, read_body};
use super::memory::CallMemory;
use super::pointers::resolve_request_pointer;
use super::protocol::{parse_semver, Method, Protocol};
use super::response::{rpc_error_from, ApiError};
use super::state::AppState;
use crate::wire::http::{
    ACCEPT_MAX_RESPONSE_BYTES, MAX_SIZE_HEADER_VALUE, MIN_ACCEPT_MAX_RESPONSE_BYTES,
};
use crate::wire::{
    is_pointer, keys, read_stream, ErrorCode, MetaBatch, Metadata, ReadLimits, RpcError,
    REQUEST_VERSION,
};

/// Why a request did not reach its method: an RPC error, or a ready-made transport response
/// (413, 415 JSON).
pub(crate) enum Failure {
    Api(ApiError),
    Raw(Response),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Api(e)
    }
}

impl Failure {
    pub(crate) fn into_response(self, request_id: &str) -> Response {
        match self {
            Failure::Api(e) => e.with_request_id(request_id).into_response(),
            Failure::Raw(r) => r,
        }
    }
}

/// A request that passed every check, ready for dispatch.
pub(crate) struct CallRequest {
    pub(crate) protocol: Arc<Protocol>,
    pub(crate) method: Method,
    /// Dispatch metadata (of the outer batch when the request was a pointer).
    pub(crate) metadata: Metadata,
    pub(crate) params: RecordBatch,
    /// The client's `VGI-Accept-Max-Response-Bytes`.
    pub(crate) client_max: Option<u64>,
}

/// Finds the protocol and method of a path, 404 otherwise.
pub(crate) fn route(
    st: &AppState,
    uri: &Uri,
    protocol_name: &str,
    method_name: &str,
) -> Result<(Arc<Protocol>, Method), ApiError> {
    // A percent sign in the path is never decoded into a protocol name.
    if uri.path().contains('%') {
        return Err(ApiError::unknown_protocol(protocol_name));
    }
    let protocol = st
        .protocols
        .get(protocol_name)
        .ok_or_else(|| ApiError::unknown_protocol(protocol_name))?;
    let method = protocol
        .method(method_name)
        .ok_or_else(|| ApiError::unknown_method(protocol_name, method_name))?
        .clone();
    Ok((protocol.clone(), method))
}

/// Reads the body of a call: content type, size caps, decoding, exactly one batch.
pub(crate) async fn read_single_batch(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
    memory: &CallMemory,
) -> Result<MetaBatch, Failure> {
    check_content_type(headers).map_err(Failure::Raw)?;
    let raw = read_body(headers, body, st.config.max_request_bytes, memory)
        .await
        .map_err(Failure::Raw)?;
    let request = read_stream(raw, ReadLimits::default())
        .map_err(|e| ApiError::bad_request(format!("Malformed request: {e}")))?;
    let n = request.batches.len();
    match request.batches.into_iter().next() {
        Some(b) if n == 1 => {
            super::trace::continue_from_metadata(&b.metadata);
            Ok(b)
        }
        _ => Err(ApiError::bad_request(format!(
            "Expected exactly one batch in the request stream, got {n}"
        ))
        .into()),
    }
}

/// Steps 1-5 of the spec's processing order for a unary call or a stream `/init`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn read_call(
    st: &AppState,
    protocol_name: &str,
    method_name: &str,
    request_id: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    memory: &CallMemory,
) -> Result<CallRequest, Failure> {
    let client_max = parse_accept_max(headers)?;
    let (protocol, method) = route(st, uri, protocol_name, method_name)?;
    let MetaBatch {
        batch: outer,
        metadata,
    } = read_single_batch(st, headers, body, memory).await?;
    check_dispatch(&metadata, protocol_name, method_name)?;
    let params_schema = method.params().clone();
    check_params_schema(method_name, &params_schema, outer.schema_ref())?;
    check_protocol_version(&protocol, &metadata)?;
    let params = if is_pointer(&outer, &metadata) {
        let resolved = resolve_request_pointer(st, &metadata, &params_schema, request_id, memory)
            .await
            .map_err(|e| ApiError::server(rpc_error_from(&e)))?;
        resolved.batch.batch
    } else {
        outer
    };
    access_log::note_request(&params);
    if !params_schema.fields().is_empty() && params.num_rows() != 1 {
        return Err(ApiError::bad_request(format!(
            "Expected 1 row in request batch, got {}",
            params.num_rows()
        ))
        .into());
    }
    Ok(CallRequest {
        protocol,
        method,
        metadata,
        params,
        client_max,
    })
}

/// Parses `VGI-Accept-Max-Response-Bytes`: one canonical positive decimal in [65536, 2^53-1].
pub(crate) fn parse_accept_max(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(raw) = headers.get(ACCEPT_MAX_RESPONSE_BYTES) else {
        return Ok(None);
    };
    let text = raw.to_str().unwrap_or("");
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && !(text.len() > 1 && text.starts_with('0'));
    let value = text.parse::<u64>().ok().filter(|_| canonical);
    match value {
        Some(v) if v < MIN_ACCEPT_MAX_RESPONSE_BYTES => Err(ApiError::bad_request(format!(
            "VGI-Accept-Max-Response-Bytes must be at least {MIN_ACCEPT_MAX_RESPONSE_BYTES}"
        ))),
        Some(v) if v > MAX_SIZE_HEADER_VALUE => Err(ApiError::bad_request(
            "VGI-Accept-Max-Response-Bytes must be at most 2^53-1",
        )),
        Some(v) => Ok(Some(v)),
        None => Err(ApiError::bad_request(format!(
            "VGI-Accept-Max-Response-Bytes must be a positive decimal integer, got {text:?}"
        ))),
    }
}

pub(crate) fn check_dispatch(md: &Metadata, protocol: &str, method: &str) -> Result<(), ApiError> {
    match md.get(keys::METHOD) {
        None => {
            return Err(ApiError::bad_request(
                "Missing vgi_rpc.method in request metadata",
            ))
        }
        Some(m) if m != method => {
            return Err(ApiError::bad_request(format!(
                "Method name mismatch: URL path has '{method}' but request metadata has '{m}'"
            )))
        }
        Some(_) => {}
    }
    match md.get(keys::REQUEST_VERSION).map(String::as_str) {
        Some(REQUEST_VERSION) => {}
        other => {
            return Err(ApiError::client(
                StatusCode::BAD_REQUEST,
                RpcError::new(
                    "VersionError",
                    format!(
                        "Unsupported request version {:?}; this server speaks {REQUEST_VERSION}",
                        other.unwrap_or("<missing>")
                    ),
                )
                .with_code(ErrorCode::InvalidArgument),
            ))
        }
    }
    if let Some(p) = md.get(keys::PROTOCOL) {
        if p != protocol {
            return Err(ApiError::client(
                StatusCode::BAD_REQUEST,
                RpcError::new(
                    "ProtocolNotSupportedError",
                    format!("Protocol mismatch: URL path has '{protocol}' but request metadata has '{p}'"),
                )
                .with_code(ErrorCode::InvalidArgument)
                .with_kind("protocol_not_supported"),
            ));
        }
    }
    Ok(())
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

pub(crate) fn check_params_schema(
    method: &str,
    want: &SchemaRef,
    got: &Schema,
) -> Result<(), ApiError> {
    let names = |s: &Schema| {
        s.fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if want.fields().len() != got.fields().len() {
        return Err(ApiError::bad_request(format!(
            "{method}() expected {} parameter(s) [{}], but the request batch carried {} [{}]",
            want.fields().len(),
            names(want),
            got.fields().len(),
            names(got)
        )));
    }
    for (w, g) in want.fields().iter().zip(got.fields().iter()) {
        if w.name() != g.name() {
            return Err(ApiError::bad_request(format!(
                "{method}() expected parameter '{}', but the request batch carried '{}'",
                w.name(),
                g.name()
            )));
        }
        if !w.data_type().equals_datatype(g.data_type()) {
            return Err(ApiError::bad_request(format!(
                "{method}() parameter '{}' expected type {}, but the request batch carried {}",
                w.name(),
                w.data_type(),
                g.data_type()
            )));
        }
        if w.is_nullable() != g.is_nullable() {
            return Err(ApiError::bad_request(format!(
                "{method}() parameter '{}' expected nullable={}, but the request batch carried nullable={}",
                w.name(),
                py_bool(w.is_nullable()),
                py_bool(g.is_nullable())
            )));
        }
    }
    Ok(())
}

pub(crate) fn check_protocol_version(protocol: &Protocol, md: &Metadata) -> Result<(), ApiError> {
    let Some((major, minor, patch)) = protocol.version() else {
        return Ok(());
    };
    let declared = format!("{major}.{minor}.{patch}");
    // The PreconditionFailure names the gated protocol: with several protocols hosted, the
    // version alone does not say which one refused the call.
    let mismatch = |msg: String, client: Option<&str>| {
        let violation = serde_json::json!({
            "type": "protocol_version",
            "subject": protocol.name(),
            "description": format!(
                "client declares {}, server requires {declared}; major and minor must match",
                client.unwrap_or("<none>")
            ),
        });
        ApiError::client(
            StatusCode::BAD_REQUEST,
            RpcError::new("ProtocolVersionError", msg)
                .with_code(ErrorCode::FailedPrecondition)
                .with_kind("protocol_version_mismatch")
                .with_details(vec![serde_json::json!({
                    "@type": "vgi_rpc.PreconditionFailure",
                    "violations": [violation],
                })]),
        )
    };
    match md.get(keys::PROTOCOL_VERSION) {
        None => Err(mismatch(
            format!(
                "Protocol '{}' requires vgi_rpc.protocol_version (server has {declared})",
                protocol.name()
            ),
            None,
        )),
        Some(v) => match parse_semver(v) {
            Some((ma, mi, _)) if ma == major && mi == minor => Ok(()),
            _ => Err(mismatch(
                format!(
                    "Protocol '{}' version mismatch: client sent {v:?}, server has {declared}",
                    protocol.name()
                ),
                Some(v),
            )),
        },
    }
}
