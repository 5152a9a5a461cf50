//! The reference's stream model on Spillway's [`StreamMethod`]: a typed state (the reference's
//! `ProducerState` / `ExchangeState` dataclasses) that survives between turns as JSON inside
//! the server's signed cursor, and an [`Out`] collector (the reference's `OutputCollector`)
//! through which a turn emits at most one batch, finishes, or logs.
//!
//! Methods are written as plain synchronous functions of `(&mut state, input, &mut Out)`;
//! [`producer`] and [`exchange`] turn them into stream methods on the catalog's schemas.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow_schema::{Schema, SchemaRef};
use serde::de::DeserializeOwned;
use serde::Serialize;
use spillway::server::{CallContext, StreamMethod, StreamStart, StreamTurn, TurnOutput};
use spillway::wire::{Metadata, RpcError};

use super::call::Call;
use crate::catalog::MethodSchemas;
use crate::error::{Error, Result};

/// Largest serialized state accepted back from a cursor (the worker's states are a few dozen
/// bytes; the cursor is signed, so this only bounds a server bug).
const MAX_STATE_BYTES: usize = 64 * 1024;

/// What a stream's `init` decides: the first state, the header (for methods that declare one)
/// and, for dynamic schemas, the output schema of this call.
#[derive(Debug, Clone)]
pub struct Start<S> {
    /// The state the first turn sees.
    pub state: S,
    /// The 1-row header batch, when the method declares a header.
    pub header: Option<RecordBatch>,
    /// This call's output schema, when it differs from the declared one.
    pub output_schema: Option<SchemaRef>,
}

impl<S> Start<S> {
    /// A start with `state` only.
    pub fn new(state: S) -> Self {
        Start {
            state,
            header: None,
            output_schema: None,
        }
    }

    /// Adds the header batch.
    pub fn with_header(mut self, header: RecordBatch) -> Self {
        self.header = Some(header);
        self
    }

    /// Sets this call's output schema.
    pub fn with_output_schema(mut self, schema: SchemaRef) -> Self {
        self.output_schema = Some(schema);
        self
    }
}

/// The input of one exchange turn.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The input batch, already on the declared input schema.
    pub batch: &'a RecordBatch,
    /// The input's application metadata (transport keys removed).
    pub metadata: &'a Metadata,
}

/// Collects what one turn produces: at most one batch, the end of the stream, logs.
#[derive(Debug)]
pub struct Out {
    output: SchemaRef,
    logs: Vec<(String, String)>,
    emitted: Option<(RecordBatch, Metadata)>,
    finished: bool,
}

impl Out {
    /// A collector for a turn whose output schema is `output`.
    pub fn new(output: SchemaRef) -> Self {
        Out {
            output,
            logs: Vec::new(),
            emitted: None,
            finished: false,
        }
    }

    /// The call's output schema (the declared one; dynamic methods know their own).
    pub fn schema(&self) -> &SchemaRef {
        &self.output
    }

    /// Emits `columns` as one batch on the output schema (`emit_arrays` / `emit_pydict`).
    pub fn emit(&mut self, columns: Vec<ArrayRef>) -> Result<(), RpcError> {
        self.emit_with_metadata(columns, Metadata::new())
    }

    /// Emits `columns` with per-batch custom metadata.
    pub fn emit_with_metadata(
        &mut self,
        columns: Vec<ArrayRef>,
        metadata: Metadata,
    ) -> Result<(), RpcError> {
        let batch = batch_on(&self.output, columns)?;
        self.emit_batch(batch, metadata)
    }

    /// Emits a ready batch (`emit`).
    pub fn emit_batch(&mut self, batch: RecordBatch, metadata: Metadata) -> Result<(), RpcError> {
        if self.emitted.is_some() {
            return Err(RpcError::new(
                "RuntimeError",
                "Only one emit() call is allowed per turn",
            ));
        }
        self.emitted = Some((batch, metadata));
        Ok(())
    }

    /// Ends the stream after this turn (producers).
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Logs to the client, ahead of this turn's batch (or error).
    pub fn log(&mut self, level: &str, message: impl Into<String>) {
        self.logs.push((level.to_string(), message.into()));
    }

    /// The batch emitted so far, with its metadata.
    pub fn emitted(&self) -> Option<&(RecordBatch, Metadata)> {
        self.emitted.as_ref()
    }

    /// Whether the turn finished the stream.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The logs so far, as (level, message).
    pub fn logs(&self) -> &[(String, String)] {
        &self.logs
    }

    /// Hands the logs to the server (they go out whether the turn succeeded or failed).
    fn send_logs(&mut self, ctx: &CallContext) {
        for (level, message) in self.logs.drain(..) {
            ctx.log(&level, message);
        }
    }

    fn into_turn_output(self, state: Vec<u8>) -> TurnOutput {
        TurnOutput {
            state,
            output: self.emitted,
            finished: self.finished,
        }
    }
}

/// A batch of `columns` on `schema`; the columns are cast where they differ only in spelling
/// (nested field names, nullability), and a zero-column batch gets zero rows.
pub fn batch_on(schema: &SchemaRef, columns: Vec<ArrayRef>) -> Result<RecordBatch, RpcError> {
    if columns.len() != schema.fields().len() {
        return Err(RpcError::internal(format!(
            "{} columns for an output schema of {}",
            columns.len(),
            schema.fields().len()
        )));
    }
    let columns = columns
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| super::call::conform(c, f.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    let rows = columns.first().map_or(0, |c| c.len());
    RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(|e| RpcError::internal(format!("building an output batch: {e}")))
}

fn encode_state<S: Serialize>(state: &S) -> Result<Vec<u8>, RpcError> {
    serde_json::to_vec(state).map_err(|e| RpcError::internal(format!("encoding stream state: {e}")))
}

fn decode_state<S: DeserializeOwned>(bytes: &[u8]) -> Result<S, RpcError> {
    if bytes.len() > MAX_STATE_BYTES {
        return Err(RpcError::internal("stream state too large"));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| RpcError::internal(format!("decoding stream state: {e}")))
}

/// The output schema a method declares: its first variant's (the empty schema for methods
/// that fail on init by design, whose reference never builds a stream).
pub fn declared_output(m: &MethodSchemas) -> SchemaRef {
    m.variants
        .first()
        .and_then(|v| v.output.clone())
        .unwrap_or_else(|| Arc::new(Schema::empty()))
}

/// The declared input schema of an exchange.
pub fn declared_input(m: &MethodSchemas) -> SchemaRef {
    m.variants
        .first()
        .and_then(|v| v.input.clone())
        .unwrap_or_else(|| Arc::new(Schema::empty()))
}

/// The header schema a method declares.
pub fn declared_header(m: &MethodSchemas) -> Result<SchemaRef> {
    m.header
        .as_ref()
        .map(|(_, s)| s.clone())
        .ok_or_else(|| Error::Catalog("the method declares no header".into()))
}

type InitFn<S> = dyn Fn(&Call) -> Result<Start<S>, RpcError> + Send + Sync;

fn run_init<S: Serialize>(
    init: &InitFn<S>,
    ctx: CallContext,
    params: RecordBatch,
) -> Result<StreamStart, RpcError> {
    let call = Call {
        ctx,
        params,
        result: Arc::new(Schema::empty()),
    };
    let start = init(&call)?;
    Ok(StreamStart {
        state: encode_state(&start.state)?,
        header: start.header,
        output_schema: start.output_schema,
    })
}

/// A producer on `m`'s schemas: `init` builds the state from the parameters, `produce` runs
/// once per tick with the tick's metadata and emits a batch, finishes, or both.
pub fn producer<S, I, P>(m: &MethodSchemas, init: I, produce: P) -> StreamMethod
where
    S: Serialize + DeserializeOwned + Send + 'static,
    I: Fn(&Call) -> Result<Start<S>, RpcError> + Send + Sync + 'static,
    P: Fn(&mut S, &Metadata, &mut Out) -> Result<(), RpcError> + Send + Sync + 'static,
{
    let output = declared_output(m);
    let turn_output = output.clone();
    let init: Arc<InitFn<S>> = Arc::new(init);
    let produce = Arc::new(produce);
    let method = StreamMethod::producer(
        m.params.clone(),
        output,
        move |ctx, params| std::future::ready(run_init(init.as_ref(), ctx, params)),
        move |ctx, turn: StreamTurn| {
            let result = (|| {
                let mut state: S = decode_state(&turn.state)?;
                let mut out = Out::new(turn_output.clone());
                let produced = produce(&mut state, &turn.metadata, &mut out);
                out.send_logs(&ctx);
                produced?;
                Ok(out.into_turn_output(encode_state(&state)?))
            })();
            std::future::ready(result)
        },
    );
    match &m.header {
        Some((_, schema)) => method.with_header(schema.clone()),
        None => method,
    }
}

/// An exchange on `m`'s schemas: `init` builds the state from the parameters, `exchange` runs
/// once per input batch and emits exactly one batch.
pub fn exchange<S, I, X>(m: &MethodSchemas, init: I, exchange: X) -> StreamMethod
where
    S: Serialize + DeserializeOwned + Send + 'static,
    I: Fn(&Call) -> Result<Start<S>, RpcError> + Send + Sync + 'static,
    X: Fn(&mut S, Input<'_>, &mut Out) -> Result<(), RpcError> + Send + Sync + 'static,
{
    let output = declared_output(m);
    let turn_output = output.clone();
    let init: Arc<InitFn<S>> = Arc::new(init);
    let exchange = Arc::new(exchange);
    let method = StreamMethod::exchange(
        m.params.clone(),
        declared_input(m),
        output,
        move |ctx, params| std::future::ready(run_init(init.as_ref(), ctx, params)),
        move |ctx, turn: StreamTurn| {
            let result = (|| {
                let mut state: S = decode_state(&turn.state)?;
                let batch = turn
                    .input
                    .as_ref()
                    .ok_or_else(|| RpcError::internal("exchange turn without an input"))?;
                let mut out = Out::new(turn_output.clone());
                let input = Input {
                    batch,
                    metadata: &turn.metadata,
                };
                let exchanged = exchange(&mut state, input, &mut out);
                out.send_logs(&ctx);
                exchanged?;
                Ok(out.into_turn_output(encode_state(&state)?))
            })();
            std::future::ready(result)
        },
    );
    match &m.header {
        Some((_, schema)) => method.with_header(schema.clone()),
        None => method,
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::Int64Array;
    use arrow_schema::{DataType, Field};

    use super::*;

    #[test]
    fn batches_are_cast_to_the_output_schema_and_zero_columns_have_zero_rows() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let b = batch_on(&schema, vec![Arc::new(Int64Array::from(vec![1, 2]))]).unwrap();
        assert_eq!(b.num_rows(), 2);
        assert!(batch_on(&schema, vec![]).is_err());
        let empty = Arc::new(Schema::empty());
        assert_eq!(batch_on(&empty, vec![]).unwrap().num_rows(), 0);
    }

    #[test]
    fn state_round_trips_and_garbage_is_an_error() {
        let bytes = encode_state(&(3u32, "x")).unwrap();
        let back: (u32, String) = decode_state(&bytes).unwrap();
        assert_eq!(back, (3, "x".to_string()));
        assert!(decode_state::<(u32, String)>(b"not json").is_err());
        assert!(decode_state::<u32>(&vec![b'1'; MAX_STATE_BYTES + 1]).is_err());
    }
}
