//! Client side of producer and exchange streams (spec §4): `/init`, then one POST to
//! `/exchange` per step, echoing the two state tokens; externalized cycles resolved on the way.

use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchOptions};
use arrow_schema::{Schema, SchemaRef};
use bytes::Bytes;

use super::request::CallRequest;
use super::response::{emit_log, ExternalizedInfo, Reply};
use super::{trace, Client};
use crate::error::{Error, Result};
use crate::wire::{
    classify, keys, read_streams, write_stream, BatchKind, IpcStream, LogMessage, MetaBatch,
    Metadata, ReadLimits, RpcError,
};
use tracing::Instrument;

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
    protocol: String,
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
        let span = trace::call_span(
            &self.inner.root,
            &request.protocol,
            &request.method,
            Some("init"),
        );
        let result = self.open_in_span(request).instrument(span.clone()).await;
        trace::record_outcome(&span, &result);
        result
    }

    async fn open_in_span(&self, request: CallRequest) -> Result<ClientStream> {
        let call = self.prepare(&request)?;
        let reply = self
            .post_call(
                &format!("{}/init", call.url),
                &request.method,
                &call.schema,
                &call.metadata,
                call.body,
                &self.deadline(),
            )
            .await?;
        let mut stream = ClientStream {
            client: self.clone(),
            url: call.url,
            protocol: request.protocol.clone(),
            method: request.method.clone(),
            header: None,
            init_logs: Vec::new(),
            output_schema: None,
            cursor: None,
            call: None,
            buffered: None,
            finished: false,
        };
        stream.read_init(reply).await?;
        Ok(stream)
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
        let resolved = self.client.resolve_pointer(&self.method, &b).await?;
        reply.logs.extend(resolved.logs);
        let mut md = resolved.batch.metadata;
        let (inner_cursor, _) = strip_tokens(&mut md);
        if let Some(c) = inner_cursor.or(outer_cursor) {
            reply.cursor = Some(c);
        }
        Ok(StreamBatch {
            batch: resolved.batch.batch,
            metadata: md,
            logs: Vec::new(),
            externalized: Some(resolved.externalized),
        })
    }

    async fn read_init(&mut self, reply: Reply) -> Result<()> {
        let mut streams = reply.parse(|body| read_streams(body, ReadLimits::default()))?;
        if streams.len() > 2 {
            return Err(Error::Protocol(format!(
                "stream init response holds {} ipc streams, expected 1 or 2",
                streams.len()
            )));
        }
        if streams.len() == 2 {
            let header = streams.remove(0);
            let step = self.read_output(header.schema, header.batches).await?;
            let mut header_batch = step.data.ok_or_else(|| {
                Error::Protocol("stream header stream holds no header batch".into())
            })?;
            header_batch.logs = step.logs;
            self.header = Some(header_batch);
        }
        let output = streams
            .pop()
            .ok_or_else(|| Error::Protocol("empty stream init response".into()))?;
        let step = self.read_output(output.schema, output.batches).await?;
        reply.check_flag()?;
        self.output_schema = Some(step.schema.clone());
        self.call = step.call;
        self.cursor = step.cursor;
        self.finished = self.cursor.is_none();
        match step.data {
            Some(mut d) => {
                d.logs = step.logs;
                self.buffered = Some(d);
            }
            None => self.init_logs = step.logs,
        }
        Ok(())
    }

    /// `extra` plus the stream's two state tokens, for the next `/exchange` POST.
    fn step_metadata(&self, extra: Metadata) -> Result<Metadata> {
        let (Some(cursor), Some(call)) = (&self.cursor, &self.call) else {
            return Err(Error::Protocol("the stream has finished".into()));
        };
        let mut md = extra;
        md.insert(keys::STREAM_STATE.into(), cursor.clone());
        md.insert(keys::CALL_STATE.into(), call.clone());
        Ok(md)
    }

    /// POSTs one step (`batch` with `md`) to `/exchange` through the client's request path.
    async fn post_step(
        &self,
        schema: &SchemaRef,
        batch: RecordBatch,
        md: Metadata,
    ) -> Result<Reply> {
        let body = write_stream(
            schema,
            &[MetaBatch {
                batch,
                metadata: md.clone(),
            }],
        )?;
        self.client
            .post_call(
                &format!("{}/exchange", self.url),
                &self.method,
                schema,
                &md,
                Bytes::from(body),
                &self.client.deadline(),
            )
            .await
    }

    /// One step: POST, then its output stream read (pointers resolved, tokens collected).
    async fn step(
        &self,
        schema: &SchemaRef,
        batch: RecordBatch,
        md: Metadata,
    ) -> Result<StepReply> {
        let span = trace::call_span(
            &self.client.inner.root,
            &self.protocol,
            &self.method,
            Some("exchange"),
        );
        let result = self
            .step_in_span(schema, batch, md)
            .instrument(span.clone())
            .await;
        trace::record_outcome(&span, &result);
        result
    }

    async fn step_in_span(
        &self,
        schema: &SchemaRef,
        batch: RecordBatch,
        md: Metadata,
    ) -> Result<StepReply> {
        let reply = self.post_step(schema, batch, md).await?;
        let streams: Vec<IpcStream> =
            reply.parse(|body| read_streams(body, ReadLimits::default()))?;
        let Some(output) = streams.into_iter().next() else {
            return Err(Error::Protocol("empty stream response".into()));
        };
        let step = self.read_output(output.schema, output.batches).await?;
        reply.check_flag()?;
        Ok(step)
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
            let md = self.step_metadata(tick.clone())?;
            let step = self
                .step(&Arc::new(Schema::empty()), empty_batch()?, md)
                .await?;
            carried_logs.extend(step.logs);
            self.cursor = step.cursor;
            self.finished = self.cursor.is_none();
            if let Some(mut d) = step.data {
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
        let md = self.step_metadata(metadata)?;
        let step = self.step(&input.schema(), input, md).await?;
        let mut data = step
            .data
            .ok_or_else(|| Error::Protocol("exchange response holds no data batch".into()))?;
        if let Some(c) = step.cursor {
            self.cursor = Some(c);
        }
        data.logs = step.logs;
        Ok(data)
    }

    /// Cancels the stream (the server runs its cancel hook and answers an empty stream).
    pub async fn cancel(&mut self) -> Result<()> {
        if self.finished && self.cursor.is_none() {
            return Ok(());
        }
        let mut md = self.step_metadata(Metadata::new())?;
        md.insert(keys::CANCEL.into(), "1".into());
        let schema = Arc::new(Schema::empty());
        self.post_step(&schema, empty_batch()?, md).await?;
        self.finished = true;
        self.cursor = None;
        Ok(())
    }
}
