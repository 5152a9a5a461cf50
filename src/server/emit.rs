//! Putting one output cycle on the wire: inline, or externalized behind a pointer.

use arrow_schema::SchemaRef;

use super::protocol::CallContext;
use super::response::rpc_error_from;
use super::state::AppState;
use crate::wire::{batch_buffer_size, write_stream, ErrorCode, MetaBatch, RpcError};

/// The batches of one cycle as they go on the wire.
pub(crate) struct Emitted {
    /// Logs and data inline, or (logs and) a pointer.
    pub(crate) batches: Vec<MetaBatch>,
    /// Stored bytes of the object, when the cycle was externalized.
    pub(crate) externalized_bytes: u64,
}

/// The response budget: the server's cap and the client's `VGI-Accept-Max-Response-Bytes`.
pub(crate) fn response_limit(st: &AppState, client_max: Option<u64>) -> Option<u64> {
    match (st.config.max_response_bytes, client_max) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The error for an inline body over the response budget.
pub(crate) fn response_too_large(actual: u64, limit: u64, method: &str) -> RpcError {
    RpcError::new(
        "ResponseTooLargeError",
        format!("HTTP body exceeds max_response_bytes ({actual} > {limit}) for method '{method}'"),
    )
    .with_code(ErrorCode::ResourceExhausted)
}

/// Emits `data` (with the cycle's `logs`) on `schema`. A non-empty batch at or above the
/// threshold, or one whose inline body would not fit the response budget, is externalized
/// when a storage is configured. `logs_in_object`: stream cycles carry their logs inside the
/// object; unary results and headers leave them inline before the pointer.
pub(crate) async fn emit_cycle(
    st: &AppState,
    schema: &SchemaRef,
    logs: Vec<MetaBatch>,
    data: MetaBatch,
    logs_in_object: bool,
    limit: Option<u64>,
    ctx: &CallContext,
) -> Result<Emitted, RpcError> {
    let method = ctx.method();
    let externalizer = st
        .externalizer
        .as_ref()
        .filter(|_| data.batch.num_rows() > 0);
    let size = batch_buffer_size(&data.batch);
    let mut externalize = externalizer
        .map(|x| size >= x.config().threshold_bytes)
        .unwrap_or(false);
    reserve_emit(ctx, size).await?;
    if !externalize {
        // Encoding to measure is only worth it near the budget.
        if let Some(limit) = limit.filter(|l| size.saturating_add(1 << 20) >= *l) {
            let mut batches = logs.clone();
            batches.push(data.clone());
            let body = write_stream(schema, &batches)
                .map_err(|e| RpcError::internal(format!("encoding the result: {e}")))?;
            if body.len() as u64 > limit {
                if externalizer.is_none() {
                    return Err(response_too_large(body.len() as u64, limit, method));
                }
                externalize = true;
            }
        }
    }
    let Some(externalizer) = externalizer.filter(|_| externalize) else {
        let mut batches = logs;
        batches.push(data);
        return Ok(Emitted {
            batches,
            externalized_bytes: 0,
        });
    };
    let (object, mut wire) = if logs_in_object {
        let mut object = logs;
        object.push(data);
        (object, Vec::new())
    } else {
        (vec![data], logs)
    };
    let ext = externalizer
        .externalize(schema, object, size, method)
        .await
        .map_err(|e| rpc_error_from(&e))?;
    tracing::debug!(
        method,
        raw_bytes = ext.raw_bytes,
        stored_bytes = ext.stored_bytes,
        elapsed_ms = ext.elapsed.as_secs_f64() * 1000.0,
        encode_ms = ext.timings.encode.as_secs_f64() * 1000.0,
        hash_ms = ext.timings.hash.as_secs_f64() * 1000.0,
        compress_ms = ext.timings.compress.as_secs_f64() * 1000.0,
        upload_ms = ext.timings.upload.as_secs_f64() * 1000.0,
        url = %spillway_storage::redact_url(ext.url.url.as_str()),
        "cycle externalized"
    );
    metrics::counter!("spillway_externalized_objects_total").increment(1);
    metrics::counter!("spillway_externalized_bytes_total").increment(ext.stored_bytes);
    wire.push(ext.pointer);
    Ok(Emitted {
        batches: wire,
        externalized_bytes: ext.stored_bytes,
    })
}

/// Reserves what emitting a result of `size` bytes costs beyond what the call holds for it
/// already: the result's own bytes are the handler's (reserved, or part of the request it
/// echoes), and [`CallContext::reserve_result`] may have covered the encoding too.
async fn reserve_emit(ctx: &CallContext, size: u64) -> Result<(), RpcError> {
    let cost = ctx.memory().emit_cost(size);
    let covered = size.max(ctx.reserved());
    // A top-up: the call holds its result already and must not wait behind new calls.
    ctx.memory()
        .top_up(cost.saturating_sub(covered))
        .await
        .map_err(|e| e.to_rpc_error())
}
