//! Client side of producer and exchange streams (spec §4): `/init`, then one POST to
//! `/exchange` per step, echoing the two state tokens; externalized cycles resolved on the way.

use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchOptions};
use arrow_schema::{Schema, SchemaRef};
use bytes::Bytes;

use super::{
    build_request_body, emit_log, parse_error_body, CallRequest, Client, ExternalizedInfo,
    RawResponse, RPC_ERROR_HEADER,
};
use crate::error::{Error, Result};
use crate::wire::{
    classify, keys, read_streams, write_stream, BatchKind, LogMessage, MetaBatch, Metadata,
    ReadLimits, RpcError,
};

/// The key that cancels a stream.
const CANCEL_KEY: &str = "vgi_rpc.cancel";

/// Most consecutive producer steps without data before the client gives up (a producer that
/// only logs forever would otherwise spin).
const MAX_EMPTY_STEPS: usize = 10_000;

/// One batch received from a stream.
#[derive(Debug, Clone)]
pub struct StreamBatch {
    /// The data batch.
    pub batch: RecordBatch,
    /// Its metadata, state tokens removed (resolved pointers add the location stamps).
    pub metadata: Metadata,
    /// Log messages of the step that produced it, in order.
    pub logs: Vec<LogMessage>,
    /// Set when the batch arrived through a pointer.
    pub externalized: Option<ExternalizedInfo>,
}

/// An open stream. Producers are read with [`ClientStream::next`]; exchanges are driven with
/// [`ClientStream::exchange`].
///
/// ```no_run
/// # async fn demo(client: spillway::client::Client, params: arrow_array::RecordBatch) -> spillway::Result<()> {
/// use spillway::client::CallRequest;
/// let mut stream = client.open_stream(CallRequest::new("ConformanceService", "produce_n", params)).await?;
/// while let Some(b) = stream.next().await? {
///     println!("{} rows", b.batch.num_rows());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ClientStream {
    client: Client,
    url: String,
    method: String,
    header: Option<StreamBatch>,
    init_logs: Vec<LogMessage>,
    output_schema: Option<SchemaRef>,
    cursor: Option<String>,
    call: Option<String>,
    buffered: Option<StreamBatch>,
    finished: bool,
}

/// A parsed stream response: logs, at most one data batch (resolved), and the tokens seen.
struct StepReply {
    logs: Vec<LogMessage>,
    data: Option<StreamBatch>,
    cursor: Option<String>,
    call: Option<String>,
    schema: SchemaRef,
}

fn strip_tokens(md: &mut Metadata) -> (Option<String>, Option<String>) {
    (md.remove(keys::STREAM_STATE), md.remove(keys::CALL_STATE))
}

fn empty_batch() -> Result<RecordBatch> {
    Ok(RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &RecordBatchOptions::new().with_row_count(Some(0)),
    )?)
}

impl Client {
    /// Opens a producer or exchange stream: `POST {prefix}/{protocol}/{method}/init`. For a
    /// producer the first step runs inside `/init`, and its batch (if any) is returned by the
    /// first [`ClientStream::next`].
    pub async fn open_stream(&self, request: CallRequest) -> Result<ClientStream> {
        super::validate_protocol_name(&request.protocol)?;
        super::validate_method_name(&request.method)?;
        let url = format!(
            "{}{}/{}/{}",
            self.inner.root, self.inner.prefix, request.protocol, request.method
        );
        let (schema, metadata, body) = build_request_body(&request)?;
        let resp = self
            .post_maybe_uploading(
                &format!("{url}/init"),
                &schema,
                &metadata,
                Bytes::from(body),
            )
            .await?;
        let mut stream = ClientStream {
            client: self.clone(),
            url,
            method: request.method.clone(),
            header: None,
            init_logs: Vec::new(),
            output_schema: None,
            cursor: None,
            call: None,
            buffered: None,
            finished: false,
        };
        stream.read_init(resp).await?;
        Ok(stream)
    }

    /// POSTs a body, falling back to the upload-URL flow when it is too large.
    async fn post_maybe_uploading(
        &self,
        url: &str,
        schema: &SchemaRef,
        metadata: &Metadata,
        body: Bytes,
    ) -> Result<RawResponse> {
        let caps = self.capabilities().await?;
        let upload_allowed = self.inner.config.upload_large_requests && caps.upload_url_support;
        let too_big = caps
            .max_request_bytes
            .is_some_and(|cap| body.len() as u64 > cap);
        let resp = if upload_allowed && too_big {
            self.post_via_upload(url, &caps, schema, metadata, body.clone())
                .await?
        } else {
            let resp = self.post_rpc(url, &caps, body.clone()).await?;
            if resp.status == 413 && upload_allowed {
                self.post_via_upload(url, &caps, schema, metadata, body.clone())
                    .await?
            } else {
                resp
            }
        };
        if resp.status == 413 {
            return Err(self.request_too_large(&caps, body.len()));
        }
        Ok(resp)
    }
}

impl ClientStream {
    /// The header batch, for methods that declare one.
    pub fn header(&self) -> Option<&StreamBatch> {
        self.header.as_ref()
    }

    /// Logs sent by `/init` before the first step (when there is no header stream).
    pub fn init_logs(&self) -> &[LogMessage] {
        &self.init_logs
    }

    /// The output schema, once the server has sent it.
    pub fn output_schema(&self) -> Option<&SchemaRef> {
        self.output_schema.as_ref()
    }

    /// True once a producer has finished.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    fn check_status(&self, resp: &RawResponse) -> Result<()> {
        if !(200..300).contains(&resp.status) {
            if let Some(e) = parse_error_body(&resp.body) {
                return Err(e.into());
            }
            return Err(Error::HttpStatus {
                status: resp.status,
                url: spillway_storage::redact_url(&self.url),
            });
        }
        Ok(())
    }

    /// Parses a response stream: sentinels first, then logs, errors, pointers and data.
    async fn read_output(&self, schema: SchemaRef, batches: Vec<MetaBatch>) -> Result<StepReply> {
        let mut reply = StepReply {
            logs: Vec::new(),
            data: None,
            cursor: None,
            call: None,
            schema,
        };
        for mut b in batches {
            if b.batch.num_rows() == 0 && b.metadata.contains_key(keys::STREAM_STATE) {
                let (cursor, call) = strip_tokens(&mut b.metadata);
                reply.cursor = cursor;
                reply.call = call.or(reply.call.take());
                continue;
            }
            match classify(&b.batch, &b.metadata) {
                BatchKind::Log => {
                    let log = LogMessage::from_metadata(&b.metadata);
                    emit_log(&self.method, &log);
                    reply.logs.push(log);
                }
                BatchKind::Error => return Err(RpcError::from_metadata(&b.metadata).into()),
                BatchKind::Sentinel => {}
                BatchKind::Pointer | BatchKind::Data => {
                    if reply.data.is_some() {
                        return Err(Error::Protocol(
                            "lock-step violation: more than one data batch in one response".into(),
                        ));
                    }
                    reply.data = Some(self.resolve(b, &mut reply).await?);
                }
            }
        }
        Ok(reply)
    }

    /// A data batch as delivered: pointers resolved (their logs join the step's logs, and an
    /// exchange cursor inside the object wins over one on the pointer).
    async fn resolve(&self, mut b: MetaBatch, reply: &mut StepReply) -> Result<StreamBatch> {
        if classify(&b.batch, &b.metadata) != BatchKind::Pointer {
            let (cursor, _) = strip_tokens(&mut b.metadata);
            if cursor.is_some() {
                reply.cursor = cursor;
            }
            return Ok(StreamBatch {
                batch: b.batch,
                metadata: b.metadata,
                logs: Vec::new(),
                externalized: None,
            });
        }
        let (outer_cursor, _) = strip_tokens(&mut b.metadata);
        let location = b
            .metadata
            .get(keys::LOCATION)
            .map(|u| spillway_storage::redact_url(u))
            .unwrap_or_default();
        let (resolved, stats) = self
            .client
            .inner
            .fetcher
            .resolve(&b, self.client.inner.config.progress.as_ref())
            .await?;
        for log in &resolved.logs {
            emit_log(&self.method, log);
        }
        reply.logs.extend(resolved.logs.iter().cloned());
        let mut md = resolved.batch.metadata;
        let (inner_cursor, _) = strip_tokens(&mut md);
        if let Some(c) = inner_cursor.or(outer_cursor) {
            reply.cursor = Some(c);
        }
        Ok(StreamBatch {
            batch: resolved.batch.batch,
            metadata: md,
            logs: Vec::new(),
            externalized: Some(ExternalizedInfo {
                url: location,
                stats,
            }),
        })
    }

    fn flagged(resp: &RawResponse) -> bool {
        resp.headers
            .get(RPC_ERROR_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    async fn read_init(&mut self, resp: RawResponse) -> Result<()> {
        self.check_status(&resp)?;
        let flagged = Self::flagged(&resp);
        let mut streams = read_streams(resp.body, ReadLimits::default())?;
        if streams.len() > 2 {
            return Err(Error::Protocol(format!(
                "stream init response holds {} ipc streams, expected 1 or 2",
                streams.len()
            )));
        }
        if streams.len() == 2 {
            let header = streams.remove(0);
            let reply = self.read_output(header.schema, header.batches).await?;
            let mut header_batch = reply.data.ok_or_else(|| {
                Error::Protocol("stream header stream holds no header batch".into())
            })?;
            header_batch.logs = reply.logs;
            self.header = Some(header_batch);
        }
        let output = streams
            .pop()
            .ok_or_else(|| Error::Protocol("empty stream init response".into()))?;
        let reply = self.read_output(output.schema, output.batches).await?;
        if flagged {
            return Err(Error::Protocol(format!(
                "server flagged an error ({RPC_ERROR_HEADER}) but sent no exception batch"
            )));
        }
        self.output_schema = Some(reply.schema.clone());
        self.call = reply.call;
        self.cursor = reply.cursor;
        self.finished = self.cursor.is_none();
        match reply.data {
            Some(mut d) => {
                d.logs = reply.logs;
                self.buffered = Some(d);
            }
            None => self.init_logs = reply.logs,
        }
        Ok(())
    }

    fn tokens(&self) -> Result<(String, String)> {
        match (&self.cursor, &self.call) {
            (Some(c), Some(k)) => Ok((c.clone(), k.clone())),
            _ => Err(Error::Protocol("the stream has finished".into())),
        }
    }

    async fn post_step(
        &self,
        schema: &SchemaRef,
        batch: RecordBatch,
        md: Metadata,
    ) -> Result<RawResponse> {
        let body = write_stream(
            schema,
            &[MetaBatch {
                batch,
                metadata: md.clone(),
            }],
        )?;
        self.client
            .post_maybe_uploading(
                &format!("{}/exchange", self.url),
                schema,
                &md,
                Bytes::from(body),
            )
            .await
    }

    /// Producer: the next batch, or `None` once the stream has finished.
    pub async fn next(&mut self) -> Result<Option<StreamBatch>> {
        self.next_with(Metadata::new()).await
    }

    /// Producer: the next batch, sending `tick` as the step's application metadata.
    pub async fn next_with(&mut self, tick: Metadata) -> Result<Option<StreamBatch>> {
        if let Some(b) = self.buffered.take() {
            return Ok(Some(b));
        }
        let mut carried_logs = std::mem::take(&mut self.init_logs);
        for _ in 0..MAX_EMPTY_STEPS {
            if self.finished {
                return Ok(None);
            }
            let (cursor, call) = self.tokens()?;
            let mut md = tick.clone();
            md.insert(keys::STREAM_STATE.into(), cursor);
            md.insert(keys::CALL_STATE.into(), call);
            let schema = Arc::new(Schema::empty());
            let resp = self.post_step(&schema, empty_batch()?, md).await?;
            self.check_status(&resp)?;
            let streams = read_streams(resp.body, ReadLimits::default())?;
            let Some(output) = streams.into_iter().next() else {
                return Err(Error::Protocol("empty stream response".into()));
            };
            let reply = self.read_output(output.schema, output.batches).await?;
            carried_logs.extend(reply.logs);
            self.cursor = reply.cursor;
            self.finished = self.cursor.is_none();
            if let Some(mut d) = reply.data {
                d.logs = carried_logs;
                return Ok(Some(d));
            }
        }
        Err(Error::Protocol(format!(
            "producer sent {MAX_EMPTY_STEPS} steps without data"
        )))
    }

    /// Exchange: sends one input batch (with application metadata) and returns the output.
    /// On an error the stream keeps its previous cursor and stays usable.
    pub async fn exchange(
        &mut self,
        input: RecordBatch,
        metadata: Metadata,
    ) -> Result<StreamBatch> {
        let (cursor, call) = self.tokens()?;
        let mut md = metadata;
        md.insert(keys::STREAM_STATE.into(), cursor);
        md.insert(keys::CALL_STATE.into(), call);
        let schema = input.schema();
        let resp = self.post_step(&schema, input, md).await?;
        self.check_status(&resp)?;
        let streams = read_streams(resp.body, ReadLimits::default())?;
        let Some(output) = streams.into_iter().next() else {
            return Err(Error::Protocol("empty stream response".into()));
        };
        let reply = self.read_output(output.schema, output.batches).await?;
        let mut data = reply
            .data
            .ok_or_else(|| Error::Protocol("exchange response holds no data batch".into()))?;
        if let Some(c) = reply.cursor {
            self.cursor = Some(c);
        }
        data.logs = reply.logs;
        Ok(data)
    }

    /// Cancels the stream (the server runs its cancel hook and answers an empty stream).
    pub async fn cancel(&mut self) -> Result<()> {
        if self.finished && self.cursor.is_none() {
            return Ok(());
        }
        let (cursor, call) = self.tokens()?;
        let mut md = Metadata::new();
        md.insert(keys::STREAM_STATE.into(), cursor);
        md.insert(keys::CALL_STATE.into(), call);
        md.insert(CANCEL_KEY.into(), "1".into());
        let schema = Arc::new(Schema::empty());
        let resp = self.post_step(&schema, empty_batch()?, md).await?;
        self.check_status(&resp)?;
        self.finished = true;
        self.cursor = None;
        Ok(())
    }
}
