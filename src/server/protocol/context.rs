//! What a handler knows about its call, and how it talks back besides its result (logs, a
//! pre-published pointer).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::server::auth::AuthContext;
use crate::server::memory::CallMemory;
use crate::wire::RpcError;
use crate::wire::{LogMessage, Metadata};

/// A pre-published pointer: URL and optional sha256.
type PrePublished = (String, Option<String>);

/// What a handler knows about its call, and how it logs to the client.
#[derive(Clone, Debug)]
pub struct CallContext {
    protocol: Arc<str>,
    method: Arc<str>,
    metadata: Arc<Metadata>,
    request_id: Arc<str>,
    auth: Arc<AuthContext>,
    logs: Arc<Mutex<Vec<LogMessage>>>,
    pointer: Arc<Mutex<Option<PrePublished>>>,
    memory: CallMemory,
    /// Bytes the handler reserved through [`CallContext::reserve`].
    reserved: Arc<AtomicU64>,
}

impl CallContext {
    pub(crate) fn new(
        protocol: &str,
        method: &str,
        metadata: Metadata,
        request_id: &str,
        auth: Arc<AuthContext>,
        memory: CallMemory,
    ) -> Self {
        CallContext {
            protocol: protocol.into(),
            method: method.into(),
            metadata: Arc::new(metadata),
            request_id: request_id.into(),
            auth,
            logs: Arc::default(),
            pointer: Arc::default(),
            memory,
            reserved: Arc::default(),
        }
    }

    /// Reserves `bytes` of the server's memory budget for this call, until its response has
    /// been sent: call it before allocating large buffers, so that a burst of calls waits for
    /// memory instead of exhausting it. Waits for room up to the admission timeout; the error
    /// (return it as is) answers the call with 503 and `Retry-After`, which clients retry, so
    /// reserve before any side effect.
    ///
    /// The request's own bytes are already counted; so is the encoding of the result, except
    /// for what [`CallContext::reserve_result`] covers.
    pub async fn reserve(&self, bytes: u64) -> Result<(), RpcError> {
        self.memory
            .reserve(bytes)
            .await
            .map_err(|e| e.to_rpc_error())?;
        self.reserved.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Reserves what returning a result of `bytes` buffer bytes costs: the result itself and
    /// its encoding (inline, or the object written to storage), so nothing waits later. The
    /// demo protocol's generators call this with the size they are asked for.
    pub async fn reserve_result(&self, bytes: u64) -> Result<(), RpcError> {
        self.reserve(self.memory.emit_cost(bytes)).await
    }

    /// Bytes the handler reserved.
    pub(crate) fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Relaxed)
    }

    /// The call's memory.
    pub(crate) fn memory(&self) -> &CallMemory {
        &self.memory
    }

    /// Answers this call with a pointer to an object published beforehand (an "external
    /// reference"), instead of the returned batch: no threshold or cap applies. The handler
    /// still returns a batch on the result schema (its value is not sent).
    pub fn respond_with_pointer(&self, url: impl Into<String>, sha256_hex: Option<String>) {
        if let Ok(mut p) = self.pointer.lock() {
            *p = Some((url.into(), sha256_hex));
        }
    }

    pub(crate) fn take_pointer(&self) -> Option<(String, Option<String>)> {
        self.pointer.lock().ok().and_then(|mut p| p.take())
    }

    /// The protocol's wire name.
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// The method's name.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The request batch's metadata (dispatch keys included).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Who is calling ([`AuthContext::anonymous`] when no authentication is configured).
    pub fn auth(&self) -> &AuthContext {
        &self.auth
    }

    /// The request id (from `X-Request-ID` or generated).
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Sends a log message to the client, ahead of the result. `level` is one of `ERROR`,
    /// `WARN`, `INFO`, `DEBUG`, `TRACE`.
    pub fn log(&self, level: &str, message: impl Into<String>) {
        let msg = LogMessage {
            level: level.to_ascii_uppercase(),
            message: message.into(),
            extra: None,
        };
        if let Ok(mut logs) = self.logs.lock() {
            logs.push(msg);
        }
    }

    /// Like [`Self::log`], with extra key/values sent as `vgi_rpc.log_extra` (a JSON object;
    /// omitted when empty).
    pub fn log_with_extra(
        &self,
        level: &str,
        message: impl Into<String>,
        extra: serde_json::Map<String, serde_json::Value>,
    ) {
        let msg = LogMessage {
            level: level.to_ascii_uppercase(),
            message: message.into(),
            extra: (!extra.is_empty()).then(|| serde_json::Value::Object(extra).to_string()),
        };
        if let Ok(mut logs) = self.logs.lock() {
            logs.push(msg);
        }
    }

    pub(crate) fn take_logs(&self) -> Vec<LogMessage> {
        self.logs
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }
}

impl CallContext {
    /// A context for a stream turn (continuation requests carry no dispatch metadata).
    pub(crate) fn for_turn(
        protocol: &str,
        method: &str,
        metadata: Metadata,
        request_id: &str,
        auth: Arc<AuthContext>,
        memory: CallMemory,
    ) -> Self {
        Self::new(protocol, method, metadata, request_id, auth, memory)
    }
}
