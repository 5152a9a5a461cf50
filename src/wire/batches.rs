//! The protocol's special batches: pointers, logs and errors, and how a reader tells them apart.

use std::fmt;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use serde_json::json;

use super::ipc::{MetaBatch, Metadata};

/// Metadata keys of the vgi-rpc 0.52 wire protocol.
pub mod keys {
    /// Method name on requests.
    pub const METHOD: &str = "vgi_rpc.method";
    /// Request format version (`1`).
    pub const REQUEST_VERSION: &str = "vgi_rpc.request_version";
    /// Protocol wire name on requests.
    pub const PROTOCOL: &str = "vgi_rpc.protocol";
    /// Protocol semver on requests.
    pub const PROTOCOL_VERSION: &str = "vgi_rpc.protocol_version";
    /// Pointer URL.
    pub const LOCATION: &str = "vgi_rpc.location";
    /// Lowercase hex sha256 of the raw IPC bytes of the object.
    pub const LOCATION_SHA256: &str = "vgi_rpc.location.sha256";
    /// Stamped on resolved batches: fetch time in ms, `%.1f`.
    pub const LOCATION_FETCH_MS: &str = "vgi_rpc.location.fetch_ms";
    /// Stamped on resolved batches: the original (unredacted) URL.
    pub const LOCATION_SOURCE: &str = "vgi_rpc.location.source";
    /// Log level (and EXCEPTION for errors).
    pub const LOG_LEVEL: &str = "vgi_rpc.log_level";
    /// Log or error text.
    pub const LOG_MESSAGE: &str = "vgi_rpc.log_message";
    /// JSON object with extra fields.
    pub const LOG_EXTRA: &str = "vgi_rpc.log_extra";
    /// gRPC code name of an error.
    pub const ERROR_CODE: &str = "vgi_rpc.error_code";
    /// Open-enum error kind token.
    pub const ERROR_KIND: &str = "vgi_rpc.error_kind";
    /// JSON array of structured error details.
    pub const ERROR_DETAILS: &str = "vgi_rpc.error_details";
    /// Server id on logs and errors.
    pub const SERVER_ID: &str = "vgi_rpc.server_id";
    /// Request id on logs and errors.
    pub const REQUEST_ID: &str = "vgi_rpc.request_id";
    /// Stream cursor token.
    pub const STREAM_STATE: &str = "vgi_rpc.stream_state#b64";
    /// Stream call token.
    pub const CALL_STATE: &str = "vgi_rpc.call_state#b64";
    /// On an exchange input batch: the client ends the stream.
    pub const CANCEL: &str = "vgi_rpc.cancel";
}

/// The value of `vgi_rpc.request_version` this implementation speaks.
pub const REQUEST_VERSION: &str = "1";

/// What a batch read from a response (or an object) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    /// A log message (not an error).
    Log,
    /// An EXCEPTION: the call failed.
    Error,
    /// A stream token sentinel.
    Sentinel,
    /// A pointer to an externalized object.
    Pointer,
    /// Data.
    Data,
}

/// Classifies a batch by the rules of the wire spec §1.3, in their order.
pub fn classify(batch: &RecordBatch, md: &Metadata) -> BatchKind {
    if batch.num_rows() == 0 {
        if md.contains_key(keys::LOG_LEVEL) && md.contains_key(keys::LOG_MESSAGE) {
            return if md.get(keys::LOG_LEVEL).map(String::as_str) == Some("EXCEPTION") {
                BatchKind::Error
            } else {
                BatchKind::Log
            };
        }
        if md.contains_key(keys::STREAM_STATE) {
            return BatchKind::Sentinel;
        }
        if md.contains_key(keys::LOCATION) && !md.contains_key(keys::LOG_LEVEL) {
            return BatchKind::Pointer;
        }
    }
    BatchKind::Data
}

/// True when the batch is a pointer (spec §1.3 step 3). Stream tokens next to the location
/// do not matter: a client's exchange request pointer carries both.
pub fn is_pointer(batch: &RecordBatch, md: &Metadata) -> bool {
    batch.num_rows() == 0 && md.contains_key(keys::LOCATION) && !md.contains_key(keys::LOG_LEVEL)
}

/// A pointer batch: zero rows on `schema`, naming `url`, with the object's sha256 if known.
pub fn pointer_batch(schema: &SchemaRef, url: &str, sha256_hex: Option<&str>) -> MetaBatch {
    let mut metadata = Metadata::new();
    metadata.insert(keys::LOCATION.into(), url.into());
    if let Some(h) = sha256_hex {
        metadata.insert(keys::LOCATION_SHA256.into(), h.to_ascii_lowercase());
    }
    MetaBatch {
        batch: RecordBatch::new_empty(schema.clone()),
        metadata,
    }
}

/// gRPC status code names used in `vgi_rpc.error_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ErrorCode {
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl ErrorCode {
    /// The wire name, e.g. `INVALID_ARGUMENT`.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            Cancelled => "CANCELLED",
            Unknown => "UNKNOWN",
            InvalidArgument => "INVALID_ARGUMENT",
            DeadlineExceeded => "DEADLINE_EXCEEDED",
            NotFound => "NOT_FOUND",
            AlreadyExists => "ALREADY_EXISTS",
            PermissionDenied => "PERMISSION_DENIED",
            ResourceExhausted => "RESOURCE_EXHAUSTED",
            FailedPrecondition => "FAILED_PRECONDITION",
            Aborted => "ABORTED",
            OutOfRange => "OUT_OF_RANGE",
            Unimplemented => "UNIMPLEMENTED",
            Internal => "INTERNAL",
            Unavailable => "UNAVAILABLE",
            DataLoss => "DATA_LOSS",
            Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// Parses a wire name; unknown names map to `Unknown`.
    pub fn parse(s: &str) -> Self {
        use ErrorCode::*;
        match s {
            "CANCELLED" => Cancelled,
            "INVALID_ARGUMENT" => InvalidArgument,
            "DEADLINE_EXCEEDED" => DeadlineExceeded,
            "NOT_FOUND" => NotFound,
            "ALREADY_EXISTS" => AlreadyExists,
            "PERMISSION_DENIED" => PermissionDenied,
            "RESOURCE_EXHAUSTED" => ResourceExhausted,
            "FAILED_PRECONDITION" => FailedPrecondition,
            "ABORTED" => Aborted,
            "OUT_OF_RANGE" => OutOfRange,
            "UNIMPLEMENTED" => Unimplemented,
            "INTERNAL" => Internal,
            "UNAVAILABLE" => Unavailable,
            "DATA_LOSS" => DataLoss,
            "UNAUTHENTICATED" => Unauthenticated,
            _ => Unknown,
        }
    }
}

/// An RPC error as carried by an EXCEPTION batch: what a method raises on the server and what
/// a client receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// The exception type name, e.g. `ValueError`, `RuntimeError`, `ResponseTooLargeError`.
    pub error_type: String,
    /// The message (without the type prefix).
    pub message: String,
    /// The gRPC code.
    pub code: ErrorCode,
    /// An optional machine-readable kind, e.g. `method_not_implemented`.
    pub kind: Option<String>,
    /// Details and traceback, boxed: handler results carry `RpcError` by value, and most
    /// errors have neither.
    extras: Option<Box<ErrorExtras>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct ErrorExtras {
    /// A compact JSON array of `{"@type": ...}` objects, at most [`MAX_ERROR_DETAILS_BYTES`].
    details: Option<String>,
    traceback: Option<String>,
}

/// The largest `vgi_rpc.error_details` sent: larger details are dropped whole, never cut.
pub const MAX_ERROR_DETAILS_BYTES: usize = 4096;

/// The longest traceback sent.
const MAX_TRACEBACK_CHARS: usize = 16_000;

impl RpcError {
    /// An error of the given type and message, code `UNKNOWN`.
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        RpcError {
            error_type: error_type.into(),
            message: message.into(),
            code: ErrorCode::Unknown,
            kind: None,
            extras: None,
        }
    }

    fn extras_mut(&mut self) -> &mut ErrorExtras {
        self.extras.get_or_insert_with(Box::default)
    }

    /// Attaches structured details (e.g. `{"@type": "vgi_rpc.RetryInfo", ...}` objects).
    /// Details whose JSON exceeds [`MAX_ERROR_DETAILS_BYTES`] are dropped entirely.
    pub fn with_details(mut self, details: Vec<serde_json::Value>) -> Self {
        let text = serde_json::Value::Array(details).to_string();
        self.extras_mut().details = (text.len() <= MAX_ERROR_DETAILS_BYTES).then_some(text);
        self
    }

    /// Attaches a traceback (cut to 16 000 characters); without one, the EXCEPTION batch
    /// carries one made from the type and message.
    pub fn with_traceback(mut self, traceback: impl Into<String>) -> Self {
        self.extras_mut().traceback =
            Some(traceback.into().chars().take(MAX_TRACEBACK_CHARS).collect());
        self
    }

    /// The structured details, as a JSON array text.
    pub fn details(&self) -> Option<&str> {
        self.extras.as_ref()?.details.as_deref()
    }

    /// The traceback, if one was attached or received.
    pub fn traceback(&self) -> Option<&str> {
        self.extras.as_ref()?.traceback.as_deref()
    }

    /// Sets the gRPC code.
    pub fn with_code(mut self, code: ErrorCode) -> Self {
        self.code = code;
        self
    }

    /// Sets the error kind token.
    pub fn with_kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    /// A `ValueError` with code `INVALID_ARGUMENT`: the caller sent something wrong.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        RpcError::new("ValueError", message).with_code(ErrorCode::InvalidArgument)
    }

    /// A `RuntimeError` with code `INTERNAL`.
    pub fn internal(message: impl Into<String>) -> Self {
        RpcError::new("RuntimeError", message).with_code(ErrorCode::Internal)
    }

    /// The EXCEPTION batch (zero rows on `schema`) carrying this error.
    pub fn to_batch(&self, schema: &SchemaRef, request_id: Option<&str>) -> MetaBatch {
        let mut extra = json!({
            "exception_type": self.error_type,
            "exception_message": self.message,
            "error_code": self.code.as_str(),
        });
        let traceback = self.traceback().map(str::to_string).unwrap_or_else(|| {
            format!(
                "Traceback (most recent call last):\n  raised by the server\n{}: {}",
                self.error_type, self.message
            )
        });
        let details: Option<serde_json::Value> =
            self.details().and_then(|d| serde_json::from_str(d).ok());
        if let Some(obj) = extra.as_object_mut() {
            if let Some(kind) = &self.kind {
                obj.insert("error_kind".into(), json!(kind));
            }
            if let Some(d) = &details {
                obj.insert("error_details".into(), d.clone());
            }
            obj.insert("traceback".into(), json!(traceback));
        }
        let mut metadata = Metadata::new();
        metadata.insert(keys::LOG_LEVEL.into(), "EXCEPTION".into());
        metadata.insert(
            keys::LOG_MESSAGE.into(),
            format!("{}: {}", self.error_type, self.message),
        );
        metadata.insert(keys::LOG_EXTRA.into(), extra.to_string());
        metadata.insert(keys::ERROR_CODE.into(), self.code.as_str().into());
        if let Some(kind) = &self.kind {
            metadata.insert(keys::ERROR_KIND.into(), kind.clone());
        }
        if let Some(d) = self.details() {
            metadata.insert(keys::ERROR_DETAILS.into(), d.to_string());
        }
        if let Some(id) = request_id {
            metadata.insert(keys::REQUEST_ID.into(), id.into());
        }
        MetaBatch {
            batch: RecordBatch::new_empty(schema.clone()),
            metadata,
        }
    }

    /// Reads the error out of an EXCEPTION batch's metadata: top-level keys first, then the
    /// copies inside `log_extra` (as the Python client does).
    pub fn from_metadata(md: &Metadata) -> Self {
        let extra: serde_json::Value = md
            .get(keys::LOG_EXTRA)
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(serde_json::Value::Null);
        let extra_str = |k: &str| extra.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let log_message = md.get(keys::LOG_MESSAGE).cloned().unwrap_or_default();
        let error_type = extra_str("exception_type")
            .or_else(|| log_message.split_once(": ").map(|(t, _)| t.to_string()))
            .unwrap_or_else(|| "RpcError".into());
        let message = extra_str("exception_message").unwrap_or_else(|| {
            log_message
                .strip_prefix(&format!("{error_type}: "))
                .unwrap_or(&log_message)
                .to_string()
        });
        let code = md
            .get(keys::ERROR_CODE)
            .cloned()
            .or_else(|| extra_str("error_code"))
            .map(|c| ErrorCode::parse(&c))
            .unwrap_or(ErrorCode::Unknown);
        let kind = md
            .get(keys::ERROR_KIND)
            .cloned()
            .or_else(|| extra_str("error_kind"));
        let details = md
            .get(keys::ERROR_DETAILS)
            .cloned()
            .or_else(|| extra.get("error_details").map(|d| d.to_string()));
        let traceback = extra_str("traceback");
        let extras = (details.is_some() || traceback.is_some())
            .then(|| Box::new(ErrorExtras { details, traceback }));
        RpcError {
            error_type,
            message,
            code,
            kind,
            extras,
        }
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

impl std::error::Error for RpcError {}

/// A log message carried by a log batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogMessage {
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: String,
    /// The text.
    pub message: String,
    /// Extra key/values (JSON object text), if any.
    pub extra: Option<String>,
}

impl LogMessage {
    /// Reads a log batch's metadata.
    pub fn from_metadata(md: &Metadata) -> Self {
        LogMessage {
            level: md.get(keys::LOG_LEVEL).cloned().unwrap_or_default(),
            message: md.get(keys::LOG_MESSAGE).cloned().unwrap_or_default(),
            extra: md.get(keys::LOG_EXTRA).cloned(),
        }
    }

    /// The log batch (zero rows on `schema`) carrying this message.
    pub fn to_batch(&self, schema: &SchemaRef) -> MetaBatch {
        let mut metadata = Metadata::new();
        metadata.insert(keys::LOG_LEVEL.into(), self.level.clone());
        metadata.insert(keys::LOG_MESSAGE.into(), self.message.clone());
        if let Some(extra) = &self.extra {
            metadata.insert(keys::LOG_EXTRA.into(), extra.clone());
        }
        MetaBatch {
            batch: RecordBatch::new_empty(schema.clone()),
            metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn classification_follows_spec_order() {
        let schema = Arc::new(Schema::new(vec![Field::new("r", DataType::Utf8, false)]));
        let p = pointer_batch(&schema, "https://x/y", Some("ABC"));
        assert_eq!(classify(&p.batch, &p.metadata), BatchKind::Pointer);
        assert_eq!(p.metadata[keys::LOCATION_SHA256], "abc");
        // A location next to a log level is never a pointer.
        let mut md = p.metadata.clone();
        md.insert(keys::LOG_LEVEL.into(), "INFO".into());
        assert_eq!(classify(&p.batch, &md), BatchKind::Data);
        md.insert(keys::LOG_MESSAGE.into(), "m".into());
        assert_eq!(classify(&p.batch, &md), BatchKind::Log);
        let e = RpcError::invalid_argument("bad").to_batch(&schema, Some("rid"));
        assert_eq!(classify(&e.batch, &e.metadata), BatchKind::Error);
        let back = RpcError::from_metadata(&e.metadata);
        assert_eq!(back.error_type, "ValueError");
        assert_eq!(back.message, "bad");
        assert_eq!(back.code, ErrorCode::InvalidArgument);
        assert!(back.traceback().unwrap().ends_with("ValueError: bad"));
        let big = RpcError::new("X", "y")
            .with_details(vec![json!({"@type": "t", "pad": "a".repeat(5000)})]);
        assert_eq!(
            big.details(),
            None,
            "oversized details are dropped, not cut"
        );
        let d = RpcError::new("X", "y").with_details(vec![
            json!({"@type": "vgi_rpc.RetryInfo", "retry_delay_seconds": 7}),
        ]);
        let b = d.to_batch(&schema, None);
        assert_eq!(
            b.metadata[keys::ERROR_DETAILS],
            r#"[{"@type":"vgi_rpc.RetryInfo","retry_delay_seconds":7}]"#
        );
        assert_eq!(RpcError::from_metadata(&b.metadata).details(), d.details());
        assert_eq!(
            classify(&RecordBatch::new_empty(schema), &Metadata::new()),
            BatchKind::Data
        );
    }

    #[test]
    fn errors_fall_back_to_log_extra_and_message() {
        let mut md = Metadata::new();
        md.insert(keys::LOG_LEVEL.into(), "EXCEPTION".into());
        md.insert(keys::LOG_MESSAGE.into(), "TypeError: nope".into());
        let e = RpcError::from_metadata(&md);
        assert_eq!(e.error_type, "TypeError");
        assert_eq!(e.message, "nope");
        assert_eq!(e.code, ErrorCode::Unknown);
    }
}
