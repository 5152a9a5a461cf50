//! The vgi-rpc access log: one `vgi_rpc.access` JSON record per RPC turn (a unary call, a
//! stream's `/init`, each `/exchange`), with the fields of the reference's
//! `access_log.schema.json` (vgi-rpc 0.52.2, `_emit_access_log` in `rpc/_server.py`).
//!
//! How a record is put together: the middleware in [`super::stamp`] runs each call inside
//! [`scope`], a task-local set of [`CallNotes`] that the handlers fill as they learn things
//! (who calls, the request's shape, the stream id, the state token sizes, the error). When the
//! response is ready the middleware adds what only it knows (duration, HTTP status, body
//! sizes) and [`AccessRecord::to_json`] writes the line.
//!
//! Never in a record: payload values and state tokens (the schema forbids `request_data`,
//! `request_state`, `response_state`; a token is replayable and holds whatever the call was
//! given), nor the caller's claims (they may be personal data; the schema makes them
//! optional).
//!
//! Where records go: whole lines on stderr, next to the logs, whatever `SPILLWAY_LOG_FORMAT`
//! says (the reference's validator skips the lines that are not JSON). They are written by one
//! thread from a bounded queue, so a slow stderr never blocks an async worker: when the queue
//! is full the record is dropped, counted in `spillway_access_log_dropped_total`, and the next
//! record that gets through says how many were lost (`dropped_records`).

use std::future::Future;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use arrow_array::RecordBatch;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::auth::AuthContext;
use super::rpc_call::MethodType;
use crate::wire::{keys, ErrorCode, MetaBatch, RpcError};

/// Records waiting for the writer thread; past this, records are dropped (and counted).
const QUEUE_RECORDS: usize = 4096;

/// What the handlers learn about a call, for its access record.
#[derive(Debug, Default, Clone)]
pub(crate) struct CallNotes {
    /// This server's id, for the error batches (`vgi_rpc.server_id`).
    pub(crate) server_id: Option<Arc<str>>,
    /// Who calls, once admitted.
    pub(crate) auth: Option<Arc<AuthContext>>,
    /// The request batch's shape: field names and Arrow types, and its row count.
    pub(crate) request_shape: Option<(Vec<(String, String)>, usize)>,
    /// The stream's correlation id (32 hex characters).
    pub(crate) stream_id: Option<String>,
    /// Bytes of the state tokens the client sent on this turn.
    pub(crate) request_state_bytes: Option<usize>,
    /// Bytes of the state tokens returned on this turn.
    pub(crate) response_state_bytes: Option<usize>,
    /// The first error answered.
    pub(crate) error: Option<NotedError>,
    /// The turn was a cancel.
    pub(crate) cancelled: bool,
}

/// An error, as much of it as the access log says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotedError {
    pub(crate) error_type: String,
    pub(crate) message: String,
    pub(crate) code: ErrorCode,
}

tokio::task_local! {
    static NOTES: Arc<Mutex<CallNotes>>;
}

/// Runs `fut` (one request) with `notes` as its task-local notes, which the caller reads
/// afterwards.
pub(crate) async fn run<F: Future>(notes: Arc<Mutex<CallNotes>>, fut: F) -> F::Output {
    NOTES.scope(notes, fut).await
}

/// Applies `f` to the current request's notes; nothing outside [`run`] (a router without
/// the middleware, a spawned task).
fn note(f: impl FnOnce(&mut CallNotes)) {
    let _ = NOTES.try_with(|notes| {
        if let Ok(mut n) = notes.lock() {
            f(&mut n);
        }
    });
}

/// Records who calls.
pub(crate) fn note_auth(auth: &Arc<AuthContext>) {
    note(|n| n.auth = Some(auth.clone()));
}

/// Records the request batch's shape (names, types, rows), never its values.
pub(crate) fn note_request(params: &RecordBatch) {
    let fields = params
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().to_string()))
        .collect();
    let rows = params.num_rows();
    note(|n| n.request_shape = Some((fields, rows)));
}

/// Records the stream's id, derived from its random call id (carried in every cursor of the
/// call, so every turn of a stream logs the same id). Hashed, so the log does not show bytes
/// of a sealed token's plaintext.
pub(crate) fn note_stream(call_id: &[u8]) {
    let mut h = Sha256::new();
    h.update(b"spillway.stream_id|");
    h.update(call_id);
    let id = hex::encode(&h.finalize()[..16]);
    note(|n| n.stream_id = Some(id));
}

/// Records the sizes of the state tokens received and returned on this turn.
pub(crate) fn note_state(received: Option<usize>, returned: Option<usize>) {
    note(|n| {
        if received.is_some() {
            n.request_state_bytes = received;
        }
        if returned.is_some() {
            n.response_state_bytes = returned;
        }
    });
}

/// Records that this turn cancelled the stream.
pub(crate) fn note_cancel() {
    note(|n| n.cancelled = true);
}

/// Records the error answered (the first one: later ones follow from it).
pub(crate) fn note_error(e: &RpcError) {
    note(|n| {
        n.error.get_or_insert_with(|| NotedError {
            error_type: e.error_type.clone(),
            message: e.message.clone(),
            code: e.code,
        });
    });
}

/// `e` as an EXCEPTION batch on `schema`, with this server's id (`vgi_rpc.server_id`, as the
/// reference's error batches carry it), recorded for the access log.
pub(crate) fn error_batch(
    e: &RpcError,
    schema: &arrow_schema::SchemaRef,
    request_id: Option<&str>,
) -> MetaBatch {
    note_error(e);
    let mut batch = e.to_batch(schema, request_id);
    let mut server_id = None;
    note(|n| server_id = n.server_id.clone());
    if let Some(id) = server_id {
        batch
            .metadata
            .insert(keys::SERVER_ID.into(), id.to_string());
    }
    batch
}

/// One access record: the notes plus what the middleware knows.
#[derive(Debug, Clone)]
pub(crate) struct AccessRecord<'a> {
    pub(crate) at: SystemTime,
    pub(crate) server_id: &'a str,
    pub(crate) server_version: &'a str,
    pub(crate) protocol: &'a str,
    /// The protocol's hash (see `reflection`): 64 hex characters.
    pub(crate) protocol_hash: &'a str,
    pub(crate) method: &'a str,
    pub(crate) method_type: MethodType,
    /// `ip:port` of the peer, or empty when the listener does not say.
    pub(crate) remote_addr: String,
    pub(crate) duration: Duration,
    pub(crate) http_status: u16,
    /// Whether the response was marked `X-VGI-RPC-Error`.
    pub(crate) rpc_error: bool,
    pub(crate) request_id: &'a str,
    pub(crate) request_bytes: Option<u64>,
    pub(crate) response_bytes: Option<u64>,
    pub(crate) externalized_bytes: u64,
    pub(crate) notes: &'a CallNotes,
    /// W3C trace and span ids of the call (32 and 16 lowercase hex characters), when the
    /// call ran inside a trace (OpenTelemetry export on), from [`super::trace::CallTrace`].
    pub(crate) trace: Option<(String, String)>,
    /// Records lost since the last one written.
    pub(crate) dropped: u64,
}

/// The canonical code of a failure answered without an EXCEPTION batch (413, 415 JSON
/// bodies), from its HTTP status.
fn code_of_status(status: u16) -> ErrorCode {
    match status {
        400 | 415 => ErrorCode::InvalidArgument,
        401 => ErrorCode::Unauthenticated,
        403 => ErrorCode::PermissionDenied,
        404 => ErrorCode::NotFound,
        405 => ErrorCode::Unimplemented,
        408 => ErrorCode::DeadlineExceeded,
        413 | 429 => ErrorCode::ResourceExhausted,
        503 => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

impl AccessRecord<'_> {
    /// Whether the call failed: an error was answered, or the status says so.
    fn failed(&self) -> bool {
        self.notes.error.is_some() || self.rpc_error || !(200..300).contains(&self.http_status)
    }

    /// The record as one JSON object (no newline).
    pub(crate) fn to_json(&self) -> String {
        let mut r = Map::new();
        let mut put = |k: &str, v: Value| {
            r.insert(k.to_string(), v);
        };
        put(
            "timestamp",
            json!(humantime::format_rfc3339_millis(self.at).to_string()),
        );
        put("level", json!("INFO"));
        put("logger", json!("vgi_rpc.access"));
        let failed = self.failed();
        let status = if failed { "error" } else { "ok" };
        put(
            "message",
            json!(format!("{}.{} {status}", self.protocol, self.method)),
        );
        put("server_id", json!(self.server_id));
        put("protocol", json!(self.protocol));
        put("protocol_hash", json!(self.protocol_hash));
        put("method", json!(self.method));
        put("method_type", json!(self.method_type.as_str()));
        let anonymous = AuthContext::anonymous();
        let auth = self.notes.auth.as_deref().unwrap_or(&anonymous);
        put("principal", json!(auth.principal_or_empty()));
        put("auth_domain", json!(auth.domain.as_deref().unwrap_or("")));
        put("authenticated", json!(auth.authenticated));
        put("remote_addr", json!(self.remote_addr));
        // Two decimals, as the reference rounds.
        let ms = (self.duration.as_secs_f64() * 100_000.0).round() / 100.0;
        put("duration_ms", json!(ms));
        put("status", json!(status));
        if failed {
            let e = self.notes.error.clone().unwrap_or_else(|| NotedError {
                error_type: "HTTPError".into(),
                message: format!("HTTP status {}", self.http_status),
                code: code_of_status(self.http_status),
            });
            put("error_type", json!(e.error_type));
            // The schema requires a message on every error record.
            let message = if e.message.is_empty() {
                e.error_type.clone()
            } else {
                e.message
            };
            put("error_message", json!(message));
            put("error_code", json!(e.code.as_str()));
        } else {
            put("error_type", json!(""));
        }
        if self.notes.cancelled {
            put("cancelled", json!(true));
        }
        put("server_version", json!(self.server_version));
        put("request_id", json!(self.request_id));
        if let Some((trace_id, span_id)) = &self.trace {
            put("trace_id", json!(trace_id));
            put("span_id", json!(span_id));
        }
        put("http_status", json!(self.http_status));
        if let Some((fields, rows)) = &self.notes.request_shape {
            let fields: Vec<Value> = fields
                .iter()
                .map(|(name, ty)| json!({ "name": name, "type": ty }))
                .collect();
            put("request_fields", Value::Array(fields));
            put("request_rows", json!(rows));
        }
        if let Some(id) = &self.notes.stream_id {
            put("stream_id", json!(id));
        }
        if let Some(n) = self.notes.request_state_bytes {
            put("request_state_bytes", json!(n));
        }
        if let Some(n) = self.notes.response_state_bytes {
            put("response_state_bytes", json!(n));
        }
        if let Some(n) = self.request_bytes {
            put("request_bytes", json!(n));
        }
        if let Some(n) = self.response_bytes {
            put("response_bytes", json!(n));
        }
        if self.externalized_bytes > 0 {
            put("externalized_bytes", json!(self.externalized_bytes));
        }
        if self.dropped > 0 {
            put("dropped_records", json!(self.dropped));
        }
        Value::Object(r).to_string()
    }
}

/// Records lost to a full queue since the last one queued.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The writer thread's queue, started with the first record.
static QUEUE: OnceLock<Option<SyncSender<String>>> = OnceLock::new();

fn queue() -> Option<&'static SyncSender<String>> {
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = sync_channel::<String>(QUEUE_RECORDS);
            std::thread::Builder::new()
                .name("spillway-access-log".into())
                .spawn(move || {
                    for mut line in rx {
                        line.push('\n');
                        // One write per record, so lines from other writers never split it.
                        let _ = std::io::stderr().lock().write_all(line.as_bytes());
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Writes `record` without waiting: queued for the writer thread, or dropped and counted.
pub(crate) fn submit(mut record: AccessRecord<'_>) {
    record.dropped = DROPPED.swap(0, Ordering::Relaxed);
    let lost = record.dropped;
    let line = record.to_json();
    let sent = match queue() {
        Some(tx) => match tx.try_send(line) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        },
        None => false,
    };
    if !sent {
        DROPPED.fetch_add(lost + 1, Ordering::Relaxed);
        metrics::counter!("spillway_access_log_dropped_total").increment(1);
    }
}

#[cfg(test)]
mod tests;
