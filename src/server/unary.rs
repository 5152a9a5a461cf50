//! Unary calls: `POST {prefix}/{protocol}/{method}`, in the processing order of the spec (§3.1).

use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchOptions};
use arrow_schema::{Schema, SchemaRef};
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::FutureExt;

use super::body::{check_content_type, read_body};
use super::pointers::resolve_request_pointer;
use super::response::{arrow_response, ApiError};
use super::service::{parse_semver, CallContext, Protocol, UnaryMethod};
use super::{AppState, RequestId};
use crate::error::Error;
use crate::wire::{
    batch_buffer_size, is_pointer, keys, read_stream, write_stream, ErrorCode, MetaBatch, Metadata,
    ReadLimits, RpcError, REQUEST_VERSION,
};

/// Response extension: bytes externalized by this call (for the access log).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExternalizedBytes(pub u64);

/// The smallest `VGI-Accept-Max-Response-Bytes` the protocol allows.
const MIN_ACCEPT_MAX_RESPONSE: u64 = 65536;

/// Parses `VGI-Accept-Max-Response-Bytes`: one canonical positive decimal in [65536, 2^53-1].
pub(crate) fn parse_accept_max(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(raw) = headers.get("vgi-accept-max-response-bytes") else {
        return Ok(None);
    };
    let text = raw.to_str().unwrap_or("");
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && !(text.len() > 1 && text.starts_with('0'));
    let value = text.parse::<u64>().ok().filter(|_| canonical);
    match value {
        Some(v) if v < MIN_ACCEPT_MAX_RESPONSE => Err(ApiError::bad_request(format!(
            "VGI-Accept-Max-Response-Bytes must be at least {MIN_ACCEPT_MAX_RESPONSE}"
        ))),
        Some(v) if v > (1u64 << 53) - 1 => Err(ApiError::bad_request(
            "VGI-Accept-Max-Response-Bytes must be at most 2^53-1",
        )),
        Some(v) => Ok(Some(v)),
        None => Err(ApiError::bad_request(format!(
            "VGI-Accept-Max-Response-Bytes must be a positive decimal integer, got {text:?}"
        ))),
    }
}

/// Streams are not served yet: say so the way the reference does for a unary method.
pub(crate) async fn stream_route(
    State(st): State<Arc<AppState>>,
    Path((protocol, method)): Path<(String, String)>,
    Extension(rid): Extension<RequestId>,
) -> Response {
    let Some(p) = st.protocols.get(&protocol) else {
        return ApiError::unknown_protocol(&protocol)
            .with_request_id(&rid.0)
            .into_response();
    };
    if p.method(&method).is_none() {
        return ApiError::unknown_method(&protocol, &method)
            .with_request_id(&rid.0)
            .into_response();
    }
    ApiError::bad_request(format!("Method '{method}' is not a stream"))
        .with_request_id(&rid.0)
        .into_response()
}

/// `POST {prefix}/{protocol}/{method}`.
pub(crate) async fn unary(
    State(st): State<Arc<AppState>>,
    Path((protocol, method)): Path<(String, String)>,
    Extension(rid): Extension<RequestId>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match unary_inner(&st, &protocol, &method, &rid.0, &uri, &headers, body).await {
        Ok(resp) => resp,
        Err(Failure::Api(e)) => e.with_request_id(&rid.0).into_response(),
        Err(Failure::Raw(resp)) => resp,
    }
}

enum Failure {
    Api(ApiError),
    Raw(Response),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Api(e)
    }
}

async fn unary_inner(
    st: &AppState,
    protocol_name: &str,
    method_name: &str,
    request_id: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Failure> {
    // 1. The client's response budget.
    let client_max = parse_accept_max(headers)?;
    // 2. Route. A percent sign in the path is never decoded into a protocol name.
    if uri.path().contains('%') {
        return Err(ApiError::unknown_protocol(protocol_name).into());
    }
    let protocol = st
        .protocols
        .get(protocol_name)
        .ok_or_else(|| ApiError::unknown_protocol(protocol_name))?;
    let method = protocol
        .method(method_name)
        .ok_or_else(|| ApiError::unknown_method(protocol_name, method_name))?;
    // 3. Content type, then 4. the body within the cap.
    check_content_type(headers).map_err(Failure::Raw)?;
    let raw = read_body(headers, body, st.config.max_request_bytes)
        .await
        .map_err(Failure::Raw)?;
    let request = read_stream(raw, ReadLimits::default())
        .map_err(|e| ApiError::bad_request(format!("Malformed request: {e}")))?;
    if request.batches.len() != 1 {
        return Err(ApiError::bad_request(format!(
            "Expected exactly one batch in the request stream, got {}",
            request.batches.len()
        ))
        .into());
    }
    let MetaBatch {
        batch: outer,
        metadata,
    } = request.batches.into_iter().next().ok_or_else(|| {
        ApiError::bad_request("Expected exactly one batch in the request stream, got 0")
    })?;
    check_dispatch(&metadata, protocol_name, method_name)?;
    check_params_schema(method_name, method, outer.schema_ref())?;
    check_protocol_version(protocol, &metadata)?;
    let params = if is_pointer(&outer, &metadata) {
        let resolved = resolve_request_pointer(st, &outer, &metadata, &method.params, request_id)
            .await
            .map_err(|e| ApiError::server(rpc_error_from(&e)))?;
        resolved.batch.batch
    } else {
        outer
    };
    if !method.params.fields().is_empty() && params.num_rows() != 1 {
        return Err(ApiError::bad_request(format!(
            "Expected 1 row in request batch, got {}",
            params.num_rows()
        ))
        .into());
    }
    invoke(
        st,
        protocol_name,
        method_name,
        method,
        metadata,
        params,
        request_id,
        client_max,
    )
    .await
}

fn check_dispatch(md: &Metadata, protocol: &str, method: &str) -> Result<(), ApiError> {
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

fn check_params_schema(method: &str, m: &UnaryMethod, got: &Schema) -> Result<(), ApiError> {
    let want = &m.params;
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

fn check_protocol_version(protocol: &Protocol, md: &Metadata) -> Result<(), ApiError> {
    let Some((major, minor, patch)) = protocol.version() else {
        return Ok(());
    };
    let declared = format!("{major}.{minor}.{patch}");
    let mismatch = |msg: String| {
        ApiError::client(
            StatusCode::BAD_REQUEST,
            RpcError::new("ProtocolVersionError", msg)
                .with_code(ErrorCode::FailedPrecondition)
                .with_kind("protocol_version_mismatch"),
        )
    };
    match md.get(keys::PROTOCOL_VERSION) {
        None => Err(mismatch(format!(
            "Protocol '{}' requires vgi_rpc.protocol_version (server has {declared})",
            protocol.name()
        ))),
        Some(v) => match parse_semver(v) {
            Some((ma, mi, _)) if ma == major && mi == minor => Ok(()),
            _ => Err(mismatch(format!(
                "Protocol '{}' version mismatch: client sent {v:?}, server has {declared}",
                protocol.name()
            ))),
        },
    }
}

/// Maps a library error to the RPC error a client sees.
pub(crate) fn rpc_error_from(e: &Error) -> RpcError {
    match e {
        Error::Rpc(r) => r.clone(),
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
        _ => RpcError::new("RuntimeError", e.to_string()).with_code(ErrorCode::Internal),
    }
}

fn void_batch() -> Result<RecordBatch, ApiError> {
    RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &RecordBatchOptions::new().with_row_count(Some(0)),
    )
    .map_err(|e| ApiError::server(RpcError::internal(e.to_string())))
}

#[allow(clippy::too_many_arguments)]
async fn invoke(
    st: &AppState,
    protocol: &str,
    method_name: &str,
    method: &UnaryMethod,
    metadata: Metadata,
    params: RecordBatch,
    request_id: &str,
    client_max: Option<u64>,
) -> Result<Response, Failure> {
    let ctx = CallContext::new(protocol, method_name, metadata, request_id);
    let fut = (method.handler)(ctx.clone(), params);
    let outcome = tokio::time::timeout(
        st.config.method_timeout,
        std::panic::AssertUnwindSafe(fut).catch_unwind(),
    )
    .await;
    let result_schema: &SchemaRef = &method.result;
    let fail = |e: RpcError| ApiError::server(e).on_schema(result_schema);
    let batch = match outcome {
        Err(_) => {
            return Err(fail(
                RpcError::new(
                    "TimeoutError",
                    format!(
                        "method '{method_name}' did not finish within {} s",
                        st.config.method_timeout.as_secs()
                    ),
                )
                .with_code(ErrorCode::DeadlineExceeded),
            )
            .into())
        }
        Ok(Err(_panic)) => {
            tracing::error!(protocol, method = method_name, "method panicked");
            return Err(fail(RpcError::internal(format!(
                "method '{method_name}' panicked"
            )))
            .into());
        }
        Ok(Ok(Err(e))) => return Err(fail(e).into()),
        Ok(Ok(Ok(batch))) => batch,
    };
    let log_batches: Vec<MetaBatch> = ctx
        .take_logs()
        .iter()
        .map(|l| l.to_batch(result_schema))
        .collect();
    if let Some((url, sha)) = ctx.take_pointer() {
        let mut batches = log_batches;
        batches.push(crate::wire::pointer_batch(
            result_schema,
            &url,
            sha.as_deref(),
        ));
        return Ok(arrow_response(result_schema, &batches));
    }
    let void = result_schema.fields().is_empty();
    let batch = if void {
        void_batch()?
    } else {
        if !crate::wire::schemas_equal(batch.schema_ref(), result_schema) {
            return Err(fail(RpcError::internal(format!(
                "method '{method_name}' returned schema {}, declared {}",
                batch.schema(),
                result_schema
            )))
            .into());
        }
        if batch.num_rows() != 1 {
            return Err(fail(RpcError::internal(format!(
                "method '{method_name}' returned {} rows; a unary result has exactly 1",
                batch.num_rows()
            )))
            .into());
        }
        // The schema declared by the method wins (field metadata from the handler is dropped).
        batch
            .with_schema(result_schema.clone())
            .map_err(|e| fail(RpcError::internal(e.to_string())))?
    };
    let limit = match (st.config.max_response_bytes, client_max) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let size = batch_buffer_size(&batch);
    let externalizer = st.externalizer.as_ref().filter(|_| batch.num_rows() > 0);
    let externalize = externalizer
        .map(|x| size >= x.config().threshold_bytes)
        .unwrap_or(false);
    let mut inline_body = None;
    if !externalize {
        let mut batches = log_batches.clone();
        batches.push(MetaBatch::plain(batch.clone()));
        let body = write_stream(result_schema, &batches)
            .map_err(|e| fail(RpcError::internal(format!("encoding the result: {e}"))))?;
        match limit {
            // Too big to send inline for this client: externalize instead when we can.
            Some(l) if body.len() as u64 > l && externalizer.is_some() => {}
            Some(l) if body.len() as u64 > l => {
                return Err(fail(
                    RpcError::new(
                        "ResponseTooLargeError",
                        format!(
                            "HTTP body exceeds max_response_bytes ({} > {l}) for method '{method_name}'",
                            body.len()
                        ),
                    )
                    .with_code(ErrorCode::ResourceExhausted),
                )
                .into())
            }
            _ => inline_body = Some(body),
        }
    }
    if let Some(body) = inline_body {
        return Ok(arrow_bytes_response(body));
    }
    let Some(externalizer) = externalizer else {
        return Err(fail(RpcError::internal("externalization is not configured")).into());
    };
    let ext = externalizer
        .externalize(
            result_schema,
            vec![MetaBatch::plain(batch)],
            size,
            method_name,
        )
        .await
        .map_err(|e| fail(rpc_error_from(&e)))?;
    tracing::debug!(
        protocol,
        method = method_name,
        raw_bytes = ext.raw_bytes,
        stored_bytes = ext.stored_bytes,
        elapsed_ms = ext.elapsed.as_secs_f64() * 1000.0,
        encode_ms = ext.timings.encode.as_secs_f64() * 1000.0,
        hash_ms = ext.timings.hash.as_secs_f64() * 1000.0,
        compress_ms = ext.timings.compress.as_secs_f64() * 1000.0,
        upload_ms = ext.timings.upload.as_secs_f64() * 1000.0,
        url = %spillway_storage::redact_url(ext.url.url.as_str()),
        "result externalized"
    );
    let mut batches = log_batches;
    batches.push(ext.pointer);
    let mut resp = arrow_response(result_schema, &batches);
    resp.extensions_mut()
        .insert(ExternalizedBytes(ext.stored_bytes));
    Ok(resp)
}

fn arrow_bytes_response(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            crate::wire::ARROW_STREAM_CONTENT_TYPE,
        )],
        body,
    )
        .into_response()
}
