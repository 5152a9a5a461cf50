//! Producer and exchange streams over stateless HTTP (spec §4).
//!
//! Every request performs exactly one step; the method's state travels in the signed cursor
//! token (see [`super::tokens`]). A method provides an `init` (params → initial state, optional
//! header) and a `turn` (state + input → at most one output batch + next state); the server
//! does the framing, the tokens, the per-cycle externalization and the caps.

use std::fmt;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use futures::future::BoxFuture;
use futures::FutureExt;

use super::emit::{emit_cycle, response_limit, response_too_large};
use super::pointers::resolve_request_pointer;
use super::request::{parse_accept_max, read_call, read_single_batch, route};
use super::response::{ApiError, RPC_ERROR_HEADER};
use super::service::{CallContext, Method};
use super::tokens::TokenError;
use super::unary::{conform_result, run_handler, ExternalizedBytes};
use super::{AppState, RequestId};
use crate::wire::{
    is_pointer, keys, read_stream, schemas_equal, write_stream, MetaBatch, Metadata, ReadLimits,
    RpcError, ARROW_STREAM_CONTENT_TYPE,
};

/// The metadata key that cancels a stream.
pub const CANCEL_KEY: &str = "vgi_rpc.cancel";

/// What a stream's `init` returns.
#[derive(Debug, Clone, Default)]
pub struct StreamStart {
    /// The method's state, carried by the client between turns (keep it small: it travels
    /// in every request).
    pub state: Vec<u8>,
    /// The 1-row header batch, for methods that declare a header schema.
    pub header: Option<RecordBatch>,
    /// Replaces the declared output schema for this call (dynamic schemas).
    pub output_schema: Option<SchemaRef>,
}

/// One step's input.
#[derive(Debug, Clone)]
pub struct StreamTurn {
    /// The state from the previous step.
    pub state: Vec<u8>,
    /// Exchange: the input batch, coerced to the declared input schema. Producer: `None`.
    pub input: Option<RecordBatch>,
    /// The request's metadata without the token and cancel keys (producer tick metadata,
    /// or the exchange input's metadata, resolved metadata for pointers).
    pub metadata: Metadata,
}

/// One step's output.
#[derive(Debug, Clone, Default)]
pub struct TurnOutput {
    /// The next state.
    pub state: Vec<u8>,
    /// At most one data batch on the output schema, with its metadata. Exchange turns must
    /// produce one.
    pub output: Option<(RecordBatch, Metadata)>,
    /// Producer: the stream ends with this step.
    pub finished: bool,
}

type InitFn = dyn Fn(CallContext, RecordBatch) -> BoxFuture<'static, Result<StreamStart, RpcError>>
    + Send
    + Sync;
type TurnFn = dyn Fn(CallContext, StreamTurn) -> BoxFuture<'static, Result<TurnOutput, RpcError>>
    + Send
    + Sync;
type CancelFn = dyn Fn(CallContext, Vec<u8>) -> BoxFuture<'static, ()> + Send + Sync;

/// A producer or exchange stream method.
///
/// ```
/// use std::sync::Arc;
/// use arrow_array::{Int64Array, RecordBatch};
/// use arrow_schema::{DataType, Field, Schema};
/// use spillway::server::{Protocol, StreamMethod, StreamStart, TurnOutput};
///
/// let params = Arc::new(Schema::new(vec![Field::new("count", DataType::Int64, false)]));
/// let output = Arc::new(Schema::new(vec![Field::new("i", DataType::Int64, false)]));
/// let out = output.clone();
/// let counter = StreamMethod::producer(
///     params,
///     output,
///     |_ctx, params| async move {
///         let n = params.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0);
///         Ok(StreamStart { state: [n.to_le_bytes(), 0i64.to_le_bytes()].concat(), ..Default::default() })
///     },
///     move |_ctx, turn| {
///         let out = out.clone();
///         async move {
///             let n = i64::from_le_bytes(turn.state[..8].try_into().unwrap());
///             let i = i64::from_le_bytes(turn.state[8..].try_into().unwrap());
///             if i >= n {
///                 return Ok(TurnOutput { finished: true, ..Default::default() });
///             }
///             let batch = RecordBatch::try_new(out, vec![Arc::new(Int64Array::from(vec![i]))]).unwrap();
///             Ok(TurnOutput {
///                 state: [n.to_le_bytes(), (i + 1).to_le_bytes()].concat(),
///                 output: Some((batch, Default::default())),
///                 finished: false,
///             })
///         }
///     },
/// );
/// let protocol = Protocol::new("example.Count.v1").unwrap().stream("count", counter);
/// assert!(protocol.method("count").is_some());
/// ```
#[derive(Clone)]
pub struct StreamMethod {
    pub(crate) params: SchemaRef,
    pub(crate) output: SchemaRef,
    pub(crate) input: Option<SchemaRef>,
    pub(crate) header: Option<SchemaRef>,
    pub(crate) init: Arc<InitFn>,
    pub(crate) turn: Arc<TurnFn>,
    pub(crate) cancel: Option<Arc<CancelFn>>,
}

impl fmt::Debug for StreamMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamMethod")
            .field("params", &self.params)
            .field("output", &self.output)
            .field("input", &self.input)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl StreamMethod {
    fn new<I, IF, T, TF>(
        params: SchemaRef,
        input: Option<SchemaRef>,
        output: SchemaRef,
        init: I,
        turn: T,
    ) -> Self
    where
        I: Fn(CallContext, RecordBatch) -> IF + Send + Sync + 'static,
        IF: std::future::Future<Output = Result<StreamStart, RpcError>> + Send + 'static,
        T: Fn(CallContext, StreamTurn) -> TF + Send + Sync + 'static,
        TF: std::future::Future<Output = Result<TurnOutput, RpcError>> + Send + 'static,
    {
        StreamMethod {
            params,
            output,
            input,
            header: None,
            init: Arc::new(move |ctx, p| init(ctx, p).boxed()),
            turn: Arc::new(move |ctx, t| turn(ctx, t).boxed()),
            cancel: None,
        }
    }

    /// A producer: no input; each turn emits at most one batch or finishes. The first turn
    /// runs inside `/init`.
    pub fn producer<I, IF, T, TF>(params: SchemaRef, output: SchemaRef, init: I, turn: T) -> Self
    where
        I: Fn(CallContext, RecordBatch) -> IF + Send + Sync + 'static,
        IF: std::future::Future<Output = Result<StreamStart, RpcError>> + Send + 'static,
        T: Fn(CallContext, StreamTurn) -> TF + Send + Sync + 'static,
        TF: std::future::Future<Output = Result<TurnOutput, RpcError>> + Send + 'static,
    {
        Self::new(params, None, output, init, turn)
    }

    /// An exchange: each turn takes one input batch and emits exactly one output batch.
    pub fn exchange<I, IF, T, TF>(
        params: SchemaRef,
        input: SchemaRef,
        output: SchemaRef,
        init: I,
        turn: T,
    ) -> Self
    where
        I: Fn(CallContext, RecordBatch) -> IF + Send + Sync + 'static,
        IF: std::future::Future<Output = Result<StreamStart, RpcError>> + Send + 'static,
        T: Fn(CallContext, StreamTurn) -> TF + Send + Sync + 'static,
        TF: std::future::Future<Output = Result<TurnOutput, RpcError>> + Send + 'static,
    {
        Self::new(params, Some(input), output, init, turn)
    }

    /// Declares a header: `init` must return a 1-row batch on `schema`.
    pub fn with_header(mut self, schema: SchemaRef) -> Self {
        self.header = Some(schema);
        self
    }

    /// Called (instead of a turn) when the client cancels the stream.
    pub fn on_cancel<C, CF>(mut self, cancel: C) -> Self
    where
        C: Fn(CallContext, Vec<u8>) -> CF + Send + Sync + 'static,
        CF: std::future::Future<Output = ()> + Send + 'static,
    {
        self.cancel = Some(Arc::new(move |ctx, s| cancel(ctx, s).boxed()));
        self
    }

    /// True for an exchange.
    pub fn is_exchange(&self) -> bool {
        self.input.is_some()
    }

    /// The declared output schema.
    pub fn output(&self) -> &SchemaRef {
        &self.output
    }
}

fn stream_bytes(schema: &SchemaRef, batches: &[MetaBatch]) -> Result<Vec<u8>, RpcError> {
    write_stream(schema, batches).map_err(|e| RpcError::internal(format!("encoding: {e}")))
}

fn body_response(body: Vec<u8>, error: bool, externalized: u64) -> Response {
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, ARROW_STREAM_CONTENT_TYPE)],
        body,
    )
        .into_response();
    if error {
        resp.headers_mut().insert(
            RPC_ERROR_HEADER,
            axum::http::HeaderValue::from_static("true"),
        );
    }
    if externalized > 0 {
        resp.extensions_mut()
            .insert(ExternalizedBytes(externalized));
    }
    resp
}

fn sentinel(schema: &SchemaRef, cursor: String, call: Option<String>) -> MetaBatch {
    let mut metadata = Metadata::new();
    metadata.insert(keys::STREAM_STATE.into(), cursor);
    if let Some(call) = call {
        metadata.insert(keys::CALL_STATE.into(), call);
    }
    MetaBatch {
        batch: RecordBatch::new_empty(schema.clone()),
        metadata,
    }
}

fn schema_to_b64(schema: &SchemaRef) -> Result<String, RpcError> {
    Ok(B64.encode(stream_bytes(schema, &[])?))
}

fn schema_from_b64(text: &str) -> Option<SchemaRef> {
    let bytes = B64.decode(text).ok()?;
    read_stream(bytes.into(), ReadLimits::default())
        .ok()
        .map(|s| s.schema)
}

fn logs_on(ctx: &CallContext, schema: &SchemaRef) -> Vec<MetaBatch> {
    ctx.take_logs().iter().map(|l| l.to_batch(schema)).collect()
}

/// `POST {prefix}/{protocol}/{method}/init`.
pub(crate) async fn init_route(
    State(st): State<Arc<AppState>>,
    Path((protocol, method)): Path<(String, String)>,
    Extension(rid): Extension<RequestId>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Ok((_, Method::Unary(_))) = route(&st, &uri, &protocol, &method) {
        return ApiError::bad_request(format!("Method '{method}' is not a stream"))
            .with_request_id(&rid.0)
            .into_response();
    }
    let call = match read_call(&st, &protocol, &method, &rid.0, &uri, &headers, body).await {
        Ok(c) => c,
        Err(f) => return f.into_response(&rid.0),
    };
    let Method::Stream(sm) = &call.method else {
        return ApiError::bad_request(format!("Method '{method}' is not a stream"))
            .with_request_id(&rid.0)
            .into_response();
    };
    let sm = sm.clone();
    let ctx = CallContext::new(call.protocol.name(), &method, call.metadata, &rid.0);
    let started = run_handler(&st, &method, (sm.init)(ctx.clone(), call.params)).await;
    let start = match started {
        Ok(s) => s,
        // Errors while creating the stream ride on the empty schema.
        Err(e) => return ApiError::server(e).with_request_id(&rid.0).into_response(),
    };
    let limit = response_limit(&st, call.client_max);
    let output = start.output_schema.clone().unwrap_or(sm.output.clone());
    let dynamic = match &start.output_schema {
        Some(s)
            if !schemas_equal(s, &sm.output) || s.fields().len() != sm.output.fields().len() =>
        {
            match schema_to_b64(s) {
                Ok(b) => Some(b),
                Err(e) => return ApiError::server(e).into_response(),
            }
        }
        _ => None,
    };
    let call_token = st
        .tokens
        .issue_call(call.protocol.name(), &method, limit, dynamic);
    let mut body = Vec::new();
    let mut externalized = 0u64;
    // The header stream, when declared: init logs, then the (possibly externalized) header.
    let mut pending_logs = Vec::new();
    if let Some(header_schema) = &sm.header {
        let logs = logs_on(&ctx, header_schema);
        let header = match start.header.clone() {
            Some(h) => conform_result(&method, h, header_schema, Some(1)),
            None => Err(RpcError::internal(format!(
                "method '{method}' declares a header but returned none"
            ))),
        };
        let emitted = match header {
            Ok(h) => {
                emit_cycle(
                    &st,
                    header_schema,
                    logs,
                    MetaBatch::plain(h),
                    false,
                    limit,
                    &method,
                )
                .await
            }
            Err(e) => Err(e),
        };
        match emitted.and_then(|e| {
            externalized += e.externalized_bytes;
            stream_bytes(header_schema, &e.batches)
        }) {
            Ok(b) => body.extend(b),
            Err(e) => return ApiError::server(e).with_request_id(&rid.0).into_response(),
        }
    } else {
        pending_logs = logs_on(&ctx, &output);
    }
    if sm.is_exchange() {
        // Exchange: no data at init, just the tokens.
        let cursor = st.tokens.issue_cursor(&call_token, &start.state, 0);
        let mut batches = pending_logs;
        batches.push(sentinel(&output, cursor, Some(call_token)));
        return match stream_bytes(&output, &batches) {
            Ok(b) => {
                body.extend(b);
                body_response(body, false, externalized)
            }
            Err(e) => ApiError::server(e).into_response(),
        };
    }
    // Producer: the first turn runs inside /init.
    let turn = StreamTurn {
        state: start.state,
        input: None,
        metadata: Metadata::new(),
    };
    let step = produce_step(&st, &method, &sm, &ctx, &output, turn, limit, pending_logs).await;
    let (mut batches, state, finished, ext, error) = match step {
        Ok(s) => s,
        Err(batches) => {
            return match stream_bytes(&output, &batches) {
                Ok(b) => {
                    body.extend(b);
                    body_response(body, true, externalized)
                }
                Err(e) => ApiError::server(e).into_response(),
            }
        }
    };
    externalized += ext;
    if !finished && !error {
        let cursor = st.tokens.issue_cursor(&call_token, &state, 1);
        batches.push(sentinel(&output, cursor, Some(call_token)));
    }
    match stream_bytes(&output, &batches) {
        Ok(b) => {
            body.extend(b);
            if let Some(limit) = limit {
                if body.len() as u64 > limit {
                    return ApiError::server(response_too_large(body.len() as u64, limit, &method))
                        .with_request_id(&rid.0)
                        .into_response();
                }
            }
            body_response(body, error, externalized)
        }
        Err(e) => ApiError::server(e).into_response(),
    }
}

type StepResult = Result<(Vec<MetaBatch>, Vec<u8>, bool, u64, bool), Vec<MetaBatch>>;

/// Runs one producer turn: returns the cycle's batches (without the sentinel), the next
/// state, whether the stream finished, externalized bytes, and whether the batches end in an
/// error; `Err` holds a complete error cycle.
#[allow(clippy::too_many_arguments)]
async fn produce_step(
    st: &AppState,
    method: &str,
    sm: &StreamMethod,
    ctx: &CallContext,
    output: &SchemaRef,
    turn: StreamTurn,
    limit: Option<u64>,
    mut logs: Vec<MetaBatch>,
) -> StepResult {
    let result = run_handler(st, method, (sm.turn)(ctx.clone(), turn)).await;
    logs.extend(logs_on(ctx, output));
    let error_cycle = |mut logs: Vec<MetaBatch>, e: RpcError| {
        logs.push(e.to_batch(output, Some(ctx.request_id())));
        logs
    };
    let out = match result {
        Ok(o) => o,
        Err(e) => return Err(error_cycle(logs, e)),
    };
    let Some((batch, md)) = out.output else {
        return Ok((logs, out.state, out.finished, 0, false));
    };
    let batch = match conform_result(method, batch, output, None) {
        Ok(b) => b,
        Err(e) => return Err(error_cycle(logs, e)),
    };
    let data = MetaBatch {
        batch,
        metadata: md,
    };
    match emit_cycle(st, output, logs, data, true, limit, method).await {
        Ok(e) => Ok((
            e.batches,
            out.state,
            out.finished,
            e.externalized_bytes,
            false,
        )),
        Err(e) => Err(error_cycle(Vec::new(), e)),
    }
}

fn token_error(e: TokenError, rid: &str) -> Response {
    ApiError::bad_request(e.message())
        .with_request_id(rid)
        .into_response()
}

/// Coerces an exchange input to the declared input schema: the same field names (order may
/// differ), compatible types cast.
fn coerce_input(batch: RecordBatch, input: &SchemaRef) -> Result<RecordBatch, RpcError> {
    let mismatch = |why: String| {
        RpcError::new(
            "TypeError",
            format!(
                "Input schema mismatch: expected {input}, got {}: {why}",
                batch.schema()
            ),
        )
    };
    if batch.num_columns() != input.fields().len() {
        return Err(mismatch("different number of fields".into()));
    }
    let mut columns = Vec::with_capacity(input.fields().len());
    for field in input.fields() {
        let col = batch
            .column_by_name(field.name())
            .ok_or_else(|| mismatch(format!("missing field '{}'", field.name())))?;
        let col = if col.data_type().equals_datatype(field.data_type()) {
            col.clone()
        } else if arrow_cast::can_cast_types(col.data_type(), field.data_type()) {
            arrow_cast::cast(col, field.data_type()).map_err(|e| mismatch(e.to_string()))?
        } else {
            return Err(mismatch(format!("cannot cast field '{}'", field.name())));
        };
        if !field.is_nullable() && col.null_count() > 0 {
            return Err(mismatch(format!(
                "nulls in non-nullable field '{}'",
                field.name()
            )));
        }
        columns.push(col);
    }
    let options = arrow_array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(input.clone(), columns, &options)
        .map_err(|e| mismatch(e.to_string()))
}

/// `POST {prefix}/{protocol}/{method}/exchange`: a producer continuation, an exchange turn, or
/// a cancel.
pub(crate) async fn exchange_route(
    State(st): State<Arc<AppState>>,
    Path((protocol, method)): Path<(String, String)>,
    Extension(rid): Extension<RequestId>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let client_max = match parse_accept_max(&headers) {
        Ok(v) => v,
        Err(e) => return e.with_request_id(&rid.0).into_response(),
    };
    let (proto, m) = match route(&st, &uri, &protocol, &method) {
        Ok(r) => r,
        Err(e) => return e.with_request_id(&rid.0).into_response(),
    };
    let Method::Stream(sm) = m else {
        return ApiError::bad_request(format!("Method '{method}' is not a stream"))
            .with_request_id(&rid.0)
            .into_response();
    };
    let request = match read_single_batch(&st, &headers, body).await {
        Ok(b) => b,
        Err(f) => return f.into_response(&rid.0),
    };
    let md = &request.metadata;
    let (Some(cursor), Some(call_token)) = (md.get(keys::STREAM_STATE), md.get(keys::CALL_STATE))
    else {
        return token_error(TokenError::Missing, &rid.0);
    };
    let call = match st.tokens.open_call(call_token, proto.name(), &method) {
        Ok(c) => c,
        Err(e) => return token_error(e, &rid.0),
    };
    let (state, seq) = match st.tokens.open_cursor(cursor, call_token) {
        Ok(s) => s,
        Err(e) => return token_error(e, &rid.0),
    };
    let call_token = call_token.clone();
    let output = match &call.os {
        Some(b) => match schema_from_b64(b) {
            Some(s) => s,
            None => return token_error(TokenError::BadSignature, &rid.0),
        },
        None => sm.output.clone(),
    };
    let limit = match (call.lim, response_limit(&st, client_max)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut app_md = md.clone();
    app_md.remove(keys::STREAM_STATE);
    app_md.remove(keys::CALL_STATE);
    let ctx = CallContext::for_turn(proto.name(), &method, app_md.clone(), &rid.0);
    if md.contains_key(CANCEL_KEY) {
        if let Some(cancel) = &sm.cancel {
            cancel(ctx.clone(), state).await;
        }
        return match stream_bytes(&output, &[]) {
            Ok(b) => body_response(b, false, 0),
            Err(e) => ApiError::server(e).into_response(),
        };
    }
    let fail_on_output = |logs: Vec<MetaBatch>, e: RpcError| {
        let mut batches = logs;
        batches.push(e.to_batch(&output, Some(&rid.0)));
        match stream_bytes(&output, &batches) {
            Ok(b) => body_response(b, true, 0),
            Err(e) => ApiError::server(e).into_response(),
        }
    };
    let Some(input_schema) = sm.input.clone() else {
        // Producer continuation.
        let mut tick = app_md;
        tick.remove(CANCEL_KEY);
        let turn = StreamTurn {
            state,
            input: None,
            metadata: tick,
        };
        return match produce_step(&st, &method, &sm, &ctx, &output, turn, limit, Vec::new()).await {
            Err(batches) => match stream_bytes(&output, &batches) {
                Ok(b) => body_response(b, true, 0),
                Err(e) => ApiError::server(e).into_response(),
            },
            Ok((mut batches, next, finished, ext, _)) => {
                if !finished {
                    let cursor = st.tokens.issue_cursor(&call_token, &next, seq + 1);
                    batches.push(sentinel(&output, cursor, None));
                }
                match stream_bytes(&output, &batches) {
                    Ok(b) if limit.is_some_and(|l| b.len() as u64 > l) => fail_on_output(
                        Vec::new(),
                        response_too_large(b.len() as u64, limit.unwrap_or(0), &method),
                    ),
                    Ok(b) => body_response(b, false, ext),
                    Err(e) => ApiError::server(e).into_response(),
                }
            }
        };
    };
    // Exchange turn: the input, resolved when it is a pointer (tokens came from the outer batch).
    let (input, input_md) = if is_pointer(&request.batch, &request.metadata) {
        let pointer_schema = request.batch.schema();
        match resolve_request_pointer(&st, &request.batch, md, &pointer_schema, &rid.0).await {
            Ok(resolved) => {
                let mut inner = resolved.batch.metadata;
                inner.remove(keys::STREAM_STATE);
                inner.remove(keys::CALL_STATE);
                (resolved.batch.batch, inner)
            }
            Err(e) => return fail_on_output(Vec::new(), super::request::rpc_error_from(&e)),
        }
    } else {
        (request.batch, app_md)
    };
    let input = match coerce_input(input, &input_schema) {
        Ok(i) => i,
        Err(e) => return fail_on_output(Vec::new(), e),
    };
    let ctx = CallContext::for_turn(proto.name(), &method, input_md.clone(), &rid.0);
    let turn = StreamTurn {
        state,
        input: Some(input),
        metadata: input_md,
    };
    let result = run_handler(&st, &method, (sm.turn)(ctx.clone(), turn)).await;
    let logs = logs_on(&ctx, &output);
    let out = match result {
        Ok(o) => o,
        Err(e) => return fail_on_output(logs, e),
    };
    let Some((batch, mut out_md)) = out.output else {
        return fail_on_output(
            logs,
            RpcError::internal(format!(
                "exchange method '{method}' produced no output batch"
            )),
        );
    };
    let batch = match conform_result(&method, batch, &output, None) {
        Ok(b) => b,
        Err(e) => return fail_on_output(logs, e),
    };
    // The refreshed cursor rides on the data batch (inside the object when externalized).
    let cursor = st.tokens.issue_cursor(&call_token, &out.state, seq + 1);
    out_md.insert(keys::STREAM_STATE.into(), cursor);
    let data = MetaBatch {
        batch,
        metadata: out_md,
    };
    match emit_cycle(&st, &output, logs, data, true, limit, &method).await {
        Ok(e) => match stream_bytes(&output, &e.batches) {
            Ok(b) if limit.is_some_and(|l| b.len() as u64 > l) => fail_on_output(
                Vec::new(),
                response_too_large(b.len() as u64, limit.unwrap_or(0), &method),
            ),
            Ok(b) => body_response(b, false, e.externalized_bytes),
            Err(err) => ApiError::server(err).into_response(),
        },
        Err(e) => fail_on_output(Vec::new(), e),
    }
}
