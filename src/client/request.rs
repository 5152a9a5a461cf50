//! The one request path of unary calls and stream steps: the request body, the upload
//! decision (pre-flight over `max_request_bytes`, else POST and fall back on 413), compression
//! with its 415 retry, and the status check of [`RawResponse::into_reply`].

use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchOptions};
use arrow_schema::{Field, Schema, SchemaRef};
use bytes::Bytes;

use super::config::Capabilities;
use super::response::{parse_error_body, RawResponse, Reply};
use super::retry::{Deadline, Replay};
use super::Client;
use crate::error::{Error, Result};
use crate::wire::http::{is_valid_method_segment, is_valid_protocol_name, normalize_prefix};
use crate::wire::{keys, write_stream, MetaBatch, Metadata, REQUEST_VERSION};

/// Bodies above this size are compressed on a blocking thread.
const INLINE_COMPRESS_LIMIT: usize = 256 * 1024;

/// One unary call: where it goes and what it carries.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// The protocol's wire name, e.g. `ConformanceService`.
    pub protocol: String,
    /// The method name.
    pub method: String,
    /// The parameters: one row on the method's params schema, or a batch without columns for
    /// a method without parameters.
    pub params: RecordBatch,
    /// Sent as `vgi_rpc.protocol_version` when the protocol declares a version.
    pub protocol_version: Option<String>,
    /// Extra request metadata (e.g. `traceparent`). The dispatch keys (`vgi_rpc.method`,
    /// `vgi_rpc.request_version`, `vgi_rpc.protocol`, `vgi_rpc.protocol_version`) always
    /// take the values above.
    pub metadata: Metadata,
}

impl CallRequest {
    /// A call without protocol version or extra metadata.
    pub fn new(
        protocol: impl Into<String>,
        method: impl Into<String>,
        params: RecordBatch,
    ) -> Self {
        CallRequest {
            protocol: protocol.into(),
            method: method.into(),
            params,
            protocol_version: None,
            metadata: Metadata::new(),
        }
    }

    /// Sets `vgi_rpc.protocol_version`.
    pub fn with_protocol_version(mut self, version: impl Into<String>) -> Self {
        self.protocol_version = Some(version.into());
        self
    }

    /// Adds one extra metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// The client's mount prefix, normalized by the shared rule (`""` or `/a/b`).
pub(super) fn client_prefix(prefix: &str) -> Result<String> {
    normalize_prefix(prefix).map_err(|e| Error::Config(e.to_string()))
}

/// A protocol wire name, per [`is_valid_protocol_name`].
pub(super) fn validate_protocol_name(name: &str) -> Result<()> {
    if is_valid_protocol_name(name) {
        Ok(())
    } else {
        Err(Error::Protocol(format!("invalid protocol name {name:?}")))
    }
}

/// A method name that can be a URL path segment, per [`is_valid_method_segment`].
pub(super) fn validate_method_name(name: &str) -> Result<()> {
    if is_valid_method_segment(name) {
        Ok(())
    } else {
        Err(Error::Protocol(format!("invalid method name {name:?}")))
    }
}

/// A validated request, ready to POST: the method's URL (without `/init` or `/exchange`)
/// and the request stream's schema, metadata and uncompressed bytes.
pub(super) struct Prepared {
    pub(super) url: String,
    pub(super) schema: SchemaRef,
    pub(super) metadata: Metadata,
    pub(super) body: Bytes,
}

impl Client {
    /// Validates the names of `request` and builds its body.
    pub(super) fn prepare(&self, request: &CallRequest) -> Result<Prepared> {
        validate_protocol_name(&request.protocol)?;
        validate_method_name(&request.method)?;
        let (schema, metadata, body) = build_request_body(request)?;
        Ok(Prepared {
            url: format!(
                "{}{}/{}/{}",
                self.inner.root, self.inner.prefix, request.protocol, request.method
            ),
            schema,
            metadata,
            body: Bytes::from(body),
        })
    }

    /// The one request path: POSTs `body` (the stream of `schema` and `metadata`) to `url`,
    /// through the upload-URL flow when it is above the server's `max_request_bytes` or the
    /// server answers 413, and applies the status rule of [`RawResponse::into_reply`].
    pub(super) async fn post_call(
        &self,
        url: &str,
        method: &str,
        schema: &SchemaRef,
        metadata: &Metadata,
        body: Bytes,
        deadline: &Deadline,
    ) -> Result<Reply> {
        let caps = self.capabilities_within(deadline).await?;
        let upload_allowed = self.inner.config.upload_large_requests && caps.upload_url_support;
        let too_big = caps
            .max_request_bytes
            .is_some_and(|cap| body.len() as u64 > cap);
        let resp = if upload_allowed && too_big {
            tracing::debug!(
                method,
                bytes = body.len(),
                "request above max_request_bytes; using an upload url"
            );
            self.post_via_upload(url, &caps, schema, metadata, body.clone(), deadline)
                .await?
        } else {
            let resp = self
                .post_rpc(url, &caps, body.clone(), Replay::Dispatch, deadline)
                .await?;
            if resp.status == 413 && upload_allowed {
                tracing::debug!(
                    method,
                    bytes = body.len(),
                    "request refused with 413; using an upload url"
                );
                self.post_via_upload(url, &caps, schema, metadata, body.clone(), deadline)
                    .await?
            } else {
                resp
            }
        };
        if resp.status == 413 {
            return Err(self.request_too_large(&caps, body.len()));
        }
        resp.into_reply(url)
    }

    /// The error for a request the server refused with 413 that cannot be uploaded instead.
    pub(super) fn request_too_large(&self, caps: &Capabilities, len: usize) -> Error {
        let what = if len > 0 {
            format!("request body of {len} bytes")
        } else {
            "request body".to_string()
        };
        let why = if !caps.upload_url_support {
            "the server does not support upload urls"
        } else if !self.inner.config.upload_large_requests {
            "the upload flow is disabled (upload_large_requests)"
        } else {
            "even the upload pointer was refused"
        };
        match caps.max_request_bytes {
            Some(limit) => Error::TooLarge {
                what: format!("{what} (server answered 413; {why})"),
                limit_name: "max_request_bytes",
                limit,
            },
            None => Error::Protocol(format!(
                "server answered 413: {what} exceeds its max_request_bytes; {why}"
            )),
        }
    }

    /// POSTs an Arrow body (compressed per the config), reads and decodes the answer, retried
    /// per the policy (`replay`: see [`Replay`]). A 415 with a non-Arrow body after a
    /// compressed POST (the server refuses the codec) is retried once uncompressed.
    pub(super) async fn post_rpc(
        &self,
        url: &str,
        caps: &Capabilities,
        raw: Bytes,
        replay: Replay,
        deadline: &Deadline,
    ) -> Result<RawResponse> {
        if let Some(level) = self.inner.config.request_compression {
            let compressed = compress_zstd(raw.clone(), level).await?;
            let resp = self
                .post_once(url, caps, compressed, true, replay, deadline)
                .await?;
            if resp.status == 415 && parse_error_body(&resp.body).is_none() {
                tracing::debug!(
                    url = %spillway_storage::redact_url(url),
                    "server refused the zstd request body; retrying uncompressed"
                );
            } else {
                return Ok(resp);
            }
        }
        self.post_once(url, caps, raw, false, replay, deadline)
            .await
    }
}

/// Builds the request body (spec §1.2): one stream on the params schema with one batch (1 row,
/// or 0 rows and 0 columns) carrying the dispatch metadata. Returns the schema, the batch
/// metadata and the uncompressed bytes.
pub(super) fn build_request_body(request: &CallRequest) -> Result<(SchemaRef, Metadata, Vec<u8>)> {
    let params = &request.params;
    let batch = if params.num_columns() == 0 {
        let schema = Arc::new(Schema::empty());
        RecordBatch::try_new_with_options(
            schema,
            vec![],
            &RecordBatchOptions::new().with_row_count(Some(0)),
        )?
    } else if params.num_rows() == 1 {
        // Schema and field metadata are not part of the protocol; send the bare fields.
        let fields: Vec<Field> = params
            .schema()
            .fields()
            .iter()
            .map(|f| {
                f.as_ref()
                    .clone()
                    .with_metadata(arrow_schema::Metadata::default())
            })
            .collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), params.columns().to_vec())?
    } else {
        return Err(Error::Protocol(format!(
            "params for {} must have exactly 1 row, got {}",
            request.method,
            params.num_rows()
        )));
    };
    let mut metadata = request.metadata.clone();
    // As the reference client: the call's trace context rides in the request batch too.
    crate::telemetry::inject_metadata(&mut metadata);
    metadata.insert(keys::METHOD.into(), request.method.clone());
    metadata.insert(keys::REQUEST_VERSION.into(), REQUEST_VERSION.into());
    metadata.insert(keys::PROTOCOL.into(), request.protocol.clone());
    match &request.protocol_version {
        Some(v) => {
            metadata.insert(keys::PROTOCOL_VERSION.into(), v.clone());
        }
        None => {
            metadata.remove(keys::PROTOCOL_VERSION);
        }
    }
    let schema = batch.schema();
    let body = write_stream(
        &schema,
        &[MetaBatch {
            batch,
            metadata: metadata.clone(),
        }],
    )?;
    Ok((schema, metadata, body))
}

/// zstd-compresses a request body (on a blocking thread when it is large).
pub(super) async fn compress_zstd(raw: Bytes, level: i32) -> Result<Bytes> {
    let small = raw.len() <= INLINE_COMPRESS_LIMIT;
    let compress = move || {
        zstd::bulk::compress(&raw, level)
            .map(Bytes::from)
            .map_err(|e| Error::Internal(format!("zstd compression failed: {e}")))
    };
    if small {
        return compress();
    }
    tokio::task::spawn_blocking(compress)
        .await
        .map_err(|e| Error::Internal(format!("compression task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tests::int_params;
    use crate::wire::{read_stream, ReadLimits};
    use arrow_array::Int64Array;
    use arrow_schema::DataType;

    #[test]
    fn request_body_carries_dispatch_metadata() {
        let req = CallRequest::new("ConformanceService", "echo_int", int_params("value", 7))
            .with_protocol_version("2.0.0")
            .with_metadata("traceparent", "00-abc-def-01")
            .with_metadata(keys::METHOD, "spoofed");
        let (schema, md, bytes) = build_request_body(&req).unwrap();
        assert_eq!(schema.field(0).name(), "value");
        assert!(!schema.field(0).is_nullable());
        let s = read_stream(Bytes::from(bytes), ReadLimits::default()).unwrap();
        assert_eq!(s.batches.len(), 1);
        let b = &s.batches[0];
        assert_eq!(b.batch.num_rows(), 1);
        assert_eq!(b.metadata, md);
        assert_eq!(b.metadata[keys::METHOD], "echo_int");
        assert_eq!(b.metadata[keys::REQUEST_VERSION], "1");
        assert_eq!(b.metadata[keys::PROTOCOL], "ConformanceService");
        assert_eq!(b.metadata[keys::PROTOCOL_VERSION], "2.0.0");
        assert_eq!(b.metadata["traceparent"], "00-abc-def-01");

        // Schema and field metadata are dropped.
        let tagged = int_params("v", 1);
        let field = tagged.schema().field(0).clone().with_metadata([("f", "1")]);
        let schema = Schema::new(vec![field]).with_metadata([("s", "1")]);
        let tagged = tagged.with_schema(Arc::new(schema)).unwrap();
        let (schema, _, _) = build_request_body(&CallRequest::new("P", "m", tagged)).unwrap();
        assert!(schema.metadata().is_empty());
        assert!(schema.field(0).metadata().is_empty());

        // Without a protocol version the key is absent, even if smuggled in as extra metadata.
        let req = CallRequest::new("P", "m", int_params("v", 1))
            .with_metadata(keys::PROTOCOL_VERSION, "9.9.9");
        let (_, md, _) = build_request_body(&req).unwrap();
        assert!(!md.contains_key(keys::PROTOCOL_VERSION));
    }

    #[test]
    fn zero_column_params_become_an_empty_batch() {
        // A batch with no columns but a row count of 1 (or 0) is sent as 0 rows on `[]`.
        let one_row = RecordBatch::try_new_with_options(
            Arc::new(Schema::empty()),
            vec![],
            &RecordBatchOptions::new().with_row_count(Some(1)),
        )
        .unwrap();
        for params in [one_row, RecordBatch::new_empty(Arc::new(Schema::empty()))] {
            let (schema, _, bytes) =
                build_request_body(&CallRequest::new("P", "void_noop", params)).unwrap();
            assert!(schema.fields().is_empty());
            let s = read_stream(Bytes::from(bytes), ReadLimits::default()).unwrap();
            assert_eq!(s.batches.len(), 1);
            assert_eq!(s.batches[0].batch.num_rows(), 0);
            assert_eq!(s.batches[0].batch.num_columns(), 0);
            assert_eq!(s.batches[0].metadata[keys::METHOD], "void_noop");
        }
    }

    #[test]
    fn params_must_have_one_row() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let two =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2]))])
                .unwrap();
        let err = build_request_body(&CallRequest::new("P", "m", two)).unwrap_err();
        assert!(err.to_string().contains("exactly 1 row"), "{err}");
        let zero = RecordBatch::new_empty(schema);
        assert!(build_request_body(&CallRequest::new("P", "m", zero)).is_err());
    }
}
