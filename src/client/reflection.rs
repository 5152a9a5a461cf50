//! Client side of `vgi_rpc.Reflection.v1`: what a server hosts, and each method's wire surface.
//!
//! The server answers two unary methods (see the reference's `vgi_rpc/rpc/_reflection.py`):
//! `list_protocols()` and `describe(protocol)`, each with `result: binary` holding a complete
//! one-row IPC stream of the reference's `ProtocolList` / `ServiceDescription` dataclasses.
//! [`Client::list_protocols`] and [`Client::describe_protocol`] decode them into
//! [`ProtocolList`] and [`ProtocolDescription`]. The decoder reads columns by name and ignores
//! the ones it does not know, as the reference's does, so a newer server still decodes.
//!
//! Reflection v1 carries no parameter defaults nor docs (the reference dropped them from the
//! wire): a parameter is its Arrow field, name, type and nullability.
//!
//! ```no_run
//! # async fn demo(client: spillway::client::Client) -> spillway::Result<()> {
//! let list = client.list_protocols().await?;
//! for p in &list.protocols {
//!     let d = client.describe_protocol(&p.protocol).await?;
//!     for m in &d.methods {
//!         println!("{}.{} ({})", p.protocol, m.name, m.kind());
//!     }
//! }
//! # Ok(()) }
//! ```

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, BinaryArray, RecordBatch, StructArray};
use arrow_schema::{DataType, Schema, SchemaRef};
use bytes::Bytes;

use super::Client;
use crate::error::{Error, Result};
use crate::wire::{read_stream, ReadLimits};

/// The reflection protocol's wire name.
pub const REFLECTION_PROTOCOL: &str = "vgi_rpc.Reflection.v1";

/// Largest reflection answer decoded (a description of hundreds of methods is far smaller).
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// `list_protocols()`' answer: the server and the protocols it hosts, in the server's order
/// (application protocols with the primary first, then the framework's own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolList {
    /// The server instance's id.
    pub server_id: String,
    /// The server implementation's version.
    pub server_version: String,
    /// The vgi-rpc request version it speaks.
    pub request_version: String,
    /// The hosted protocols.
    pub protocols: Vec<ProtocolSummary>,
}

impl ProtocolList {
    /// The first hosted protocol that is not the reflection protocol: the one a bare method
    /// name refers to.
    pub fn primary(&self) -> Option<&ProtocolSummary> {
        self.protocols
            .iter()
            .find(|p| p.protocol != REFLECTION_PROTOCOL)
    }

    /// The hosted protocols' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.protocols.iter().map(|p| p.protocol.as_str()).collect()
    }
}

/// One hosted protocol, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolSummary {
    /// Its wire name (the routing key), e.g. `spillway.Demo.v1`.
    pub protocol: String,
    /// Its declared semver, or empty when it declares none.
    pub protocol_version: String,
    /// SHA-256 of its canonical description (64 hex characters).
    pub protocol_hash: String,
    /// Whether callers should migrate off it.
    pub deprecated: bool,
    /// Why, when deprecated.
    pub deprecation_message: String,
}

/// `describe(protocol)`'s answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtocolDescription {
    /// The protocol's summary (as it is listed).
    pub summary: ProtocolSummary,
    /// Its methods, sorted by name.
    pub methods: Vec<MethodDescription>,
}

impl ProtocolDescription {
    /// The method called `name`.
    pub fn method(&self, name: &str) -> Option<&MethodDescription> {
        self.methods.iter().find(|m| m.name == name)
    }

    /// The method names, in order.
    pub fn method_names(&self) -> Vec<&str> {
        self.methods.iter().map(|m| m.name.as_str()).collect()
    }
}

/// How a method is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodKind {
    /// One request, one result (`POST /{protocol}/{method}`).
    Unary,
    /// A server-driven stream: `/init`, then `/exchange` steps without input.
    Producer,
    /// A lock-step stream: one input batch per `/exchange` step, one output batch back.
    Exchange,
}

impl MethodKind {
    /// `unary`, `producer` or `exchange`.
    pub fn as_str(self) -> &'static str {
        match self {
            MethodKind::Unary => "unary",
            MethodKind::Producer => "producer",
            MethodKind::Exchange => "exchange",
        }
    }

    /// True for the two stream kinds.
    pub fn is_stream(self) -> bool {
        self != MethodKind::Unary
    }
}

impl std::fmt::Display for MethodKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MethodKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "unary" => Ok(MethodKind::Unary),
            "producer" => Ok(MethodKind::Producer),
            "exchange" => Ok(MethodKind::Exchange),
            other => Err(Error::Config(format!(
                "method kind must be unary, producer or exchange, got {other:?}"
            ))),
        }
    }
}

/// One method's wire surface.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodDescription {
    /// The method's name.
    pub name: String,
    /// `unary` or `stream`, as on the wire.
    pub method_type: String,
    /// For streams: `producer` or `exchange` (empty for unary methods).
    pub stream_kind: String,
    /// True for unary methods that return a value.
    pub has_return: bool,
    /// True for streams that send a header batch first.
    pub has_header: bool,
    /// The request parameters.
    pub params: SchemaRef,
    /// The unary result schema (`None` for void methods and streams: a stream's output
    /// schema is only known once it runs).
    pub result: Option<SchemaRef>,
    /// The stream header schema, for streams that declare one.
    pub header: Option<SchemaRef>,
    /// `idempotent`, `non_idempotent` or `unknown` (the caller must assume the worst).
    pub idempotency: String,
    /// Whether callers should migrate off it.
    pub deprecated: bool,
    /// Why, when deprecated.
    pub deprecation_message: String,
}

impl MethodDescription {
    /// How the method is called. A stream of unknown kind counts as a producer (the
    /// reference's own default).
    pub fn kind(&self) -> MethodKind {
        match (self.method_type.as_str(), self.stream_kind.as_str()) {
            ("unary", _) => MethodKind::Unary,
            (_, "exchange") => MethodKind::Exchange,
            _ => MethodKind::Producer,
        }
    }
}

impl Client {
    /// `vgi_rpc.Reflection.v1.list_protocols()`, decoded.
    ///
    /// A server without reflection answers an [`Error::Rpc`] for which
    /// [`is_reflection_unavailable`] is true.
    pub async fn list_protocols(&self) -> Result<ProtocolList> {
        let params = RecordBatch::try_new_with_options(
            Arc::new(Schema::empty()),
            vec![],
            &arrow_array::RecordBatchOptions::new().with_row_count(Some(0)),
        )?;
        let out = self
            .call(REFLECTION_PROTOCOL, "list_protocols", params)
            .await?;
        decode_list(&answer_bytes(&out.batch)?)
    }

    /// `vgi_rpc.Reflection.v1.describe(protocol)`, decoded. A protocol the server does not
    /// host is an [`Error::Rpc`] `ProtocolNotSupportedError` naming the hosted ones.
    pub async fn describe_protocol(&self, protocol: &str) -> Result<ProtocolDescription> {
        let schema = Arc::new(Schema::new(vec![arrow_schema::Field::new(
            "protocol",
            DataType::Utf8,
            false,
        )]));
        let params = RecordBatch::try_new(
            schema,
            vec![Arc::new(arrow_array::StringArray::from(vec![protocol]))],
        )?;
        let out = self.call(REFLECTION_PROTOCOL, "describe", params).await?;
        decode_description(&answer_bytes(&out.batch)?)
    }
}

/// True when `error` says the server does not host `vgi_rpc.Reflection.v1` (its reflection is
/// off, or it predates it): a `ProtocolNotSupportedError`, or a 404 for the route.
pub fn is_reflection_unavailable(error: &Error) -> bool {
    let error = match error {
        Error::RetriesExhausted { last, .. } => last.as_ref(),
        other => other,
    };
    match error {
        Error::Rpc(e) => {
            e.error_type == "ProtocolNotSupportedError"
                || e.kind.as_deref() == Some("protocol_not_supported")
                || (e.error_type == "NotFound" && e.message.contains(REFLECTION_PROTOCOL))
        }
        Error::HttpStatus { status: 404, .. } => true,
        _ => false,
    }
}

fn bad(what: impl std::fmt::Display) -> Error {
    Error::Protocol(format!("malformed reflection answer: {what}"))
}

/// The `result: binary` cell of a reflection answer.
fn answer_bytes(batch: &RecordBatch) -> Result<Bytes> {
    let col = batch
        .column_by_name("result")
        .and_then(|c| c.as_any().downcast_ref::<BinaryArray>())
        .filter(|c| c.len() == 1 && c.is_valid(0))
        .ok_or_else(|| bad("no one-row binary 'result' column"))?;
    let v = col.value(0);
    if v.len() > MAX_ANSWER_BYTES {
        return Err(bad(format!("{} bytes (limit {MAX_ANSWER_BYTES})", v.len())));
    }
    Ok(Bytes::copy_from_slice(v))
}

/// The one row of a reflection payload stream.
fn one_row(bytes: &Bytes) -> Result<RecordBatch> {
    let stream = read_stream(bytes.clone(), ReadLimits::default())?;
    let mut batches = stream.batches.into_iter();
    match (batches.next(), batches.next()) {
        (Some(b), None) if b.batch.num_rows() == 1 => Ok(b.batch),
        _ => Err(bad("payload is not exactly one row")),
    }
}

/// A by-name view of a struct's (or a batch's) columns at one row.
struct Row<'a> {
    columns: Vec<(&'a str, &'a ArrayRef)>,
    row: usize,
}

impl<'a> Row<'a> {
    fn of_batch(b: &'a RecordBatch, row: usize) -> Row<'a> {
        let schema = b.schema_ref();
        Row {
            columns: schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .zip(b.columns())
                .collect(),
            row,
        }
    }

    fn of_struct(s: &'a StructArray, row: usize) -> Row<'a> {
        Row {
            columns: s.column_names().into_iter().zip(s.columns()).collect(),
            row,
        }
    }

    fn column(&self, name: &str) -> Option<&'a ArrayRef> {
        self.columns
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| *c)
    }

    /// A utf8 cell; absent or null reads as empty (every string field has that default).
    fn text(&self, name: &str) -> Result<String> {
        let Some(c) = self.column(name) else {
            return Ok(String::new());
        };
        let c = c
            .as_string_opt::<i32>()
            .ok_or_else(|| bad(format!("{name} is not utf8")))?;
        Ok(if c.is_valid(self.row) {
            c.value(self.row).to_string()
        } else {
            String::new()
        })
    }

    /// A bool cell; absent or null reads as false.
    fn flag(&self, name: &str) -> Result<bool> {
        let Some(c) = self.column(name) else {
            return Ok(false);
        };
        let c = c
            .as_boolean_opt()
            .ok_or_else(|| bad(format!("{name} is not bool")))?;
        Ok(c.is_valid(self.row) && c.value(self.row))
    }

    /// A binary cell; absent or null reads as empty.
    fn bytes(&self, name: &str) -> Result<&'a [u8]> {
        let Some(c) = self.column(name) else {
            return Ok(&[]);
        };
        let c = c
            .as_binary_opt::<i32>()
            .ok_or_else(|| bad(format!("{name} is not binary")))?;
        Ok(if c.is_valid(self.row) {
            c.value(self.row)
        } else {
            &[]
        })
    }

    /// The structs of a required `list<struct>` cell.
    fn structs(&self, name: &str) -> Result<StructArray> {
        let c = self
            .column(name)
            .ok_or_else(|| bad(format!("no {name} column")))?;
        let list = c
            .as_list_opt::<i32>()
            .ok_or_else(|| bad(format!("{name} is not a list")))?;
        if !list.is_valid(self.row) {
            return Ok(StructArray::new_empty_fields(0, None));
        }
        let values = list.value(self.row);
        values
            .as_struct_opt()
            .cloned()
            .ok_or_else(|| bad(format!("{name} is not a list of structs")))
    }
}

fn summary(row: &Row<'_>) -> Result<ProtocolSummary> {
    Ok(ProtocolSummary {
        protocol: row.text("protocol")?,
        protocol_version: row.text("protocol_version")?,
        protocol_hash: row.text("protocol_hash")?,
        deprecated: row.flag("deprecated")?,
        deprecation_message: row.text("deprecation_message")?,
    })
}

/// A schema serialized as one encapsulated IPC message (pyarrow's `Schema.serialize()`);
/// empty bytes mean no schema.
fn schema_of(bytes: &[u8], what: &str) -> Result<Option<SchemaRef>> {
    if bytes.is_empty() {
        return Ok(None);
    }
    arrow_ipc::convert::try_schema_from_ipc_buffer(bytes)
        .map(|s| Some(Arc::new(s)))
        .map_err(|e| bad(format!("{what}: {e}")))
}

/// Decodes a `ProtocolList` payload (the bytes inside `list_protocols`' result).
pub fn decode_list(bytes: &Bytes) -> Result<ProtocolList> {
    let batch = one_row(bytes)?;
    let row = Row::of_batch(&batch, 0);
    let structs = row.structs("protocols")?;
    let protocols = (0..structs.len())
        .map(|i| summary(&Row::of_struct(&structs, i)))
        .collect::<Result<Vec<_>>>()?;
    Ok(ProtocolList {
        server_id: row.text("server_id")?,
        server_version: row.text("server_version")?,
        request_version: row.text("request_version")?,
        protocols,
    })
}

/// Decodes a `ServiceDescription` payload (the bytes inside `describe`'s result).
pub fn decode_description(bytes: &Bytes) -> Result<ProtocolDescription> {
    let batch = one_row(bytes)?;
    let row = Row::of_batch(&batch, 0);
    let structs = row.structs("methods")?;
    let mut methods = Vec::with_capacity(structs.len());
    for i in 0..structs.len() {
        let m = Row::of_struct(&structs, i);
        let name = m.text("name")?;
        let params = schema_of(m.bytes("params_schema_ipc")?, &name)?
            .unwrap_or_else(|| Arc::new(Schema::empty()));
        let result =
            schema_of(m.bytes("result_schema_ipc")?, &name)?.filter(|s| !s.fields().is_empty());
        let header = schema_of(m.bytes("header_schema_ipc")?, &name)?;
        methods.push(MethodDescription {
            method_type: m.text("method_type")?,
            stream_kind: m.text("stream_kind")?,
            has_return: m.flag("has_return")?,
            has_header: m.flag("has_header")?,
            params,
            result,
            header,
            idempotency: m.text("idempotency")?,
            deprecated: m.flag("deprecated")?,
            deprecation_message: m.text("deprecation_message")?,
            name,
        });
    }
    methods.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(ProtocolDescription {
        summary: summary(&row)?,
        methods,
    })
}
