//! Stream method definitions (spec §4): what a stream's `init` and `turn` receive and
//! return. The HTTP framing of streams (tokens, cycles, caps) is in `server::stream`.

use std::fmt;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use futures::future::BoxFuture;
use futures::FutureExt;

use super::context::CallContext;
use crate::wire::{Metadata, RpcError};

/// The metadata key that cancels a stream (the shared [`keys::CANCEL`](crate::wire::keys::CANCEL)).
pub const CANCEL_KEY: &str = crate::wire::keys::CANCEL;

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
