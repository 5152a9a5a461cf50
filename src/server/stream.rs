//! Producer and exchange streams over stateless HTTP (spec §4): the `/init` and `/exchange`
//! handlers.
//!
//! Every request performs exactly one step; the method's state travels in the sealed cursor
//! token (see [`super::tokens`]). A method provides an `init` (params → initial state, optional
//! header) and a `turn` (state + input → at most one output batch + next state); the server
//! does the framing, the tokens, the per-cycle externalization and the caps.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};

use super::access_log;
use super::admission::Admitted;
use super::emit::{emit_cycle, response_limit, response_too_large};
use super::invoke::{conform_result, run_handler};
use super::pointers::resolve_request_pointer;
use super::protocol::{CallContext, Method, StreamMethod, StreamTurn};
use super::request::{parse_accept_max, read_call, read_single_batch, route};
use super::response::{body_response, encode_stream, rpc_error_from, stream_response, ApiError};
use super::state::{AppState, RequestId};
use super::tokens::{TokenError, TokenScope, TokenTooLarge};
use crate::wire::{
    is_pointer, keys, read_stream, schemas_equal, MetaBatch, Metadata, ReadLimits, RpcError,
};

/// Encodes `batches` on `schema` after what `body` holds (a header stream, say).
fn append_stream(
    body: &mut Vec<u8>,
    schema: &SchemaRef,
    batches: &[MetaBatch],
    request_id: &str,
) -> Result<(), Response> {
    body.extend(encode_stream(schema, batches, request_id)?);
    Ok(())
}

/// A step that failed: its `logs`, then the EXCEPTION batch, on the stream's `schema`.
fn error_response(
    schema: &SchemaRef,
    mut logs: Vec<MetaBatch>,
    error: RpcError,
    request_id: &str,
) -> Response {
    logs.push(access_log::error_batch(&error, schema, Some(request_id)));
    stream_response(schema, &logs, true, 0, request_id)
}

/// A continuation step's answer: `batches` on `schema`, or a ResponseTooLargeError when their
/// body exceeds the call's response budget.
fn step_response(
    schema: &SchemaRef,
    batches: &[MetaBatch],
    externalized: u64,
    limit: Option<u64>,
    method: &str,
    request_id: &str,
) -> Response {
    let body = match encode_stream(schema, batches, request_id) {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    match limit {
        Some(limit) if body.len() as u64 > limit => error_response(
            schema,
            Vec::new(),
            response_too_large(body.len() as u64, limit, method),
            request_id,
        ),
        _ => body_response(body, false, externalized),
    }
}

fn not_a_stream(method: &str, request_id: &str) -> Response {
    ApiError::bad_request(format!("Method '{method}' is not a stream"))
        .with_request_id(request_id)
        .into_response()
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

fn schema_to_bytes(schema: &SchemaRef, request_id: &str) -> Result<Vec<u8>, Response> {
    encode_stream(schema, &[], request_id)
}

fn schema_from_bytes(bytes: &[u8]) -> Option<SchemaRef> {
    read_stream(bytes.to_vec().into(), ReadLimits::default())
        .ok()
        .map(|s| s.schema)
}

/// A state too large for a token: the stream cannot continue, so the step fails.
fn too_large(e: TokenTooLarge) -> RpcError {
    RpcError::internal(e.to_string())
}

fn logs_on(ctx: &CallContext, schema: &SchemaRef) -> Vec<MetaBatch> {
    ctx.take_logs().iter().map(|l| l.to_batch(schema)).collect()
}

/// `POST {prefix}/{protocol}/{method}/init`.
pub(crate) async fn init_route(
    State(st): State<Arc<AppState>>,
    Path((protocol, method)): Path<(String, String)>,
    Extension(RequestId(rid)): Extension<RequestId>,
    Extension(Admitted { auth, memory }): Extension<Admitted>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let rid = rid.as_str();
    if let Ok((_, Method::Unary(_))) = route(&st, &uri, &protocol, &method) {
        return not_a_stream(&method, rid);
    }
    let call = match read_call(&st, &protocol, &method, rid, &uri, &headers, body, &memory).await {
        Ok(c) => c,
        Err(f) => return f.into_response(rid),
    };
    let Method::Stream(sm) = &call.method else {
        return not_a_stream(&method, rid);
    };
    let sm = sm.clone();
    let ctx = CallContext::new(
        call.protocol.name(),
        &method,
        call.metadata,
        rid,
        auth.clone(),
        memory,
    );
    let started = run_handler(&st, &method, (sm.init)(ctx.clone(), call.params)).await;
    let start = match started {
        Ok(s) => s,
        // Errors while creating the stream ride on the empty schema.
        Err(e) => return ApiError::server(e).with_request_id(rid).into_response(),
    };
    let limit = response_limit(&st, call.client_max);
    let output = start.output_schema.clone().unwrap_or(sm.output.clone());
    let dynamic = match &start.output_schema {
        Some(s)
            if !schemas_equal(s, &sm.output) || s.fields().len() != sm.output.fields().len() =>
        {
            match schema_to_bytes(s, rid) {
                Ok(b) => Some(b),
                Err(resp) => return resp,
            }
        }
        _ => None,
    };
    // Tokens are bound to this caller and this route (see `tokens`).
    let scope = TokenScope {
        caller: &auth,
        protocol: call.protocol.name(),
        method: &method,
    };
    let (call_token, sealed_call) = match st.tokens.issue_call(&scope, limit, dynamic) {
        Ok(t) => {
            access_log::note_stream(&t.1.id);
            t
        }
        Err(e) => {
            return ApiError::server(too_large(e))
                .with_request_id(rid)
                .into_response()
        }
    };
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
                    &ctx,
                )
                .await
            }
            Err(e) => Err(e),
        };
        let emitted = match emitted {
            Ok(e) => e,
            Err(e) => return ApiError::server(e).with_request_id(rid).into_response(),
        };
        externalized += emitted.externalized_bytes;
        if let Err(resp) = append_stream(&mut body, header_schema, &emitted.batches, rid) {
            return resp;
        }
    } else {
        pending_logs = logs_on(&ctx, &output);
    }
    if sm.is_exchange() {
        // Exchange: no data at init, just the tokens.
        let cursor = match st
            .tokens
            .issue_cursor(&scope, &sealed_call, &start.state, 0)
        {
            Ok(c) => c,
            Err(e) => {
                return ApiError::server(too_large(e))
                    .with_request_id(rid)
                    .into_response()
            }
        };
        let mut batches = pending_logs;
        access_log::note_state(None, Some(cursor.len() + call_token.len()));
        batches.push(sentinel(&output, cursor, Some(call_token)));
        if let Err(resp) = append_stream(&mut body, &output, &batches, rid) {
            return resp;
        }
        return body_response(body, false, externalized);
    }
    // Producer: the first turn runs inside /init.
    let turn = StreamTurn {
        state: start.state,
        input: None,
        metadata: Metadata::new(),
    };
    let step = match produce_step(&st, &method, &sm, &ctx, &output, turn, limit, pending_logs).await
    {
        Ok(s) => s,
        Err(batches) => {
            if let Err(resp) = append_stream(&mut body, &output, &batches, rid) {
                return resp;
            }
            return body_response(body, true, externalized);
        }
    };
    externalized += step.externalized_bytes;
    let mut batches = step.batches;
    if !step.finished {
        match st.tokens.issue_cursor(&scope, &sealed_call, &step.state, 1) {
            Ok(cursor) => {
                access_log::note_state(None, Some(cursor.len() + call_token.len()));
                batches.push(sentinel(&output, cursor, Some(call_token)))
            }
            Err(e) => {
                return ApiError::server(too_large(e))
                    .with_request_id(rid)
                    .into_response()
            }
        }
    }
    if let Err(resp) = append_stream(&mut body, &output, &batches, rid) {
        return resp;
    }
    if let Some(limit) = limit {
        if body.len() as u64 > limit {
            return ApiError::server(response_too_large(body.len() as u64, limit, &method))
                .with_request_id(rid)
                .into_response();
        }
    }
    body_response(body, false, externalized)
}

/// One producer turn that went through: the cycle's batches (without the sentinel), the next
/// state, whether the stream finished, and the bytes externalized.
struct Step {
    batches: Vec<MetaBatch>,
    state: Vec<u8>,
    finished: bool,
    externalized_bytes: u64,
}

/// A [`Step`], or (`Err`) a complete error cycle: the turn's logs, then the EXCEPTION batch.
type StepResult = Result<Step, Vec<MetaBatch>>;

/// Runs one producer turn.
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
        logs.push(access_log::error_batch(&e, output, Some(ctx.request_id())));
        logs
    };
    let out = match result {
        Ok(o) => o,
        Err(e) => return Err(error_cycle(logs, e)),
    };
    let Some((batch, md)) = out.output else {
        return Ok(Step {
            batches: logs,
            state: out.state,
            finished: out.finished,
            externalized_bytes: 0,
        });
    };
    let batch = match conform_result(method, batch, output, None) {
        Ok(b) => b,
        Err(e) => return Err(error_cycle(logs, e)),
    };
    let data = MetaBatch {
        batch,
        metadata: md,
    };
    match emit_cycle(st, output, logs, data, true, limit, ctx).await {
        Ok(e) => Ok(Step {
            batches: e.batches,
            state: out.state,
            finished: out.finished,
            externalized_bytes: e.externalized_bytes,
        }),
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
    Extension(RequestId(rid)): Extension<RequestId>,
    Extension(Admitted { auth, memory }): Extension<Admitted>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let rid = rid.as_str();
    let client_max = match parse_accept_max(&headers) {
        Ok(v) => v,
        Err(e) => return e.with_request_id(rid).into_response(),
    };
    let (proto, m) = match route(&st, &uri, &protocol, &method) {
        Ok(r) => r,
        Err(e) => return e.with_request_id(rid).into_response(),
    };
    let Method::Stream(sm) = m else {
        return not_a_stream(&method, rid);
    };
    let request = match read_single_batch(&st, &headers, body, &memory).await {
        Ok(b) => b,
        Err(f) => return f.into_response(rid),
    };
    let md = &request.metadata;
    let (Some(cursor), Some(call_token)) = (md.get(keys::STREAM_STATE), md.get(keys::CALL_STATE))
    else {
        return token_error(TokenError::Missing, rid);
    };
    // Opened with this caller's identity: another caller's tokens fail the tag check.
    let scope = TokenScope {
        caller: &auth,
        protocol: proto.name(),
        method: &method,
    };
    access_log::note_state(Some(cursor.len() + call_token.len()), None);
    let call = match st.tokens.open_call(&scope, call_token) {
        Ok(c) => {
            access_log::note_stream(&c.id);
            c
        }
        Err(e) => return token_error(e, rid),
    };
    let (state, seq) = match st.tokens.open_cursor(&scope, cursor, &call) {
        Ok(s) => s,
        Err(e) => return token_error(e, rid),
    };
    let output = match &call.os {
        Some(b) => match schema_from_bytes(b) {
            Some(s) => s,
            None => return token_error(TokenError::BadSignature, rid),
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
    let ctx = CallContext::for_turn(
        proto.name(),
        &method,
        app_md.clone(),
        rid,
        auth.clone(),
        memory.clone(),
    );
    if md.contains_key(keys::CANCEL) {
        access_log::note_cancel();
        if let Some(cancel) = &sm.cancel {
            cancel(ctx.clone(), state).await;
        }
        return stream_response(&output, &[], false, 0, rid);
    }
    let fail = |logs: Vec<MetaBatch>, e: RpcError| error_response(&output, logs, e, rid);
    let Some(input_schema) = sm.input.clone() else {
        // Producer continuation.
        let mut tick = app_md;
        tick.remove(keys::CANCEL);
        let turn = StreamTurn {
            state,
            input: None,
            metadata: tick,
        };
        return match produce_step(&st, &method, &sm, &ctx, &output, turn, limit, Vec::new()).await {
            Err(batches) => stream_response(&output, &batches, true, 0, rid),
            Ok(step) => {
                let mut batches = step.batches;
                if !step.finished {
                    match st.tokens.issue_cursor(&scope, &call, &step.state, seq + 1) {
                        Ok(cursor) => {
                            access_log::note_state(None, Some(cursor.len()));
                            batches.push(sentinel(&output, cursor, None))
                        }
                        Err(e) => return fail(Vec::new(), too_large(e)),
                    }
                }
                step_response(
                    &output,
                    &batches,
                    step.externalized_bytes,
                    limit,
                    &method,
                    rid,
                )
            }
        };
    };
    // Exchange turn: the input, resolved when it is a pointer (tokens came from the outer batch).
    let (input, input_md) = if is_pointer(&request.batch, &request.metadata) {
        let pointer_schema = request.batch.schema();
        match resolve_request_pointer(&st, md, &pointer_schema, rid, &memory).await {
            Ok(resolved) => {
                let mut inner = resolved.batch.metadata;
                inner.remove(keys::STREAM_STATE);
                inner.remove(keys::CALL_STATE);
                (resolved.batch.batch, inner)
            }
            Err(e) => return fail(Vec::new(), rpc_error_from(&e)),
        }
    } else {
        (request.batch, app_md)
    };
    let input = match coerce_input(input, &input_schema) {
        Ok(i) => i,
        Err(e) => return fail(Vec::new(), e),
    };
    let ctx = CallContext::for_turn(
        proto.name(),
        &method,
        input_md.clone(),
        rid,
        auth.clone(),
        memory,
    );
    let turn = StreamTurn {
        state,
        input: Some(input),
        metadata: input_md,
    };
    let result = run_handler(&st, &method, (sm.turn)(ctx.clone(), turn)).await;
    let logs = logs_on(&ctx, &output);
    let out = match result {
        Ok(o) => o,
        Err(e) => return fail(logs, e),
    };
    let Some((batch, mut out_md)) = out.output else {
        return fail(
            logs,
            RpcError::internal(format!(
                "exchange method '{method}' produced no output batch"
            )),
        );
    };
    let batch = match conform_result(&method, batch, &output, None) {
        Ok(b) => b,
        Err(e) => return fail(logs, e),
    };
    // The refreshed cursor rides on the data batch (inside the object when externalized).
    let cursor = match st.tokens.issue_cursor(&scope, &call, &out.state, seq + 1) {
        Ok(c) => c,
        Err(e) => return fail(logs, too_large(e)),
    };
    access_log::note_state(None, Some(cursor.len()));
    out_md.insert(keys::STREAM_STATE.into(), cursor);
    let data = MetaBatch {
        batch,
        metadata: out_md,
    };
    match emit_cycle(&st, &output, logs, data, true, limit, &ctx).await {
        Ok(e) => step_response(
            &output,
            &e.batches,
            e.externalized_bytes,
            limit,
            &method,
            rid,
        ),
        Err(e) => fail(Vec::new(), e),
    }
}
