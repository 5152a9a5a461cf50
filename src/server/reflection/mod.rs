//! `vgi_rpc.Reflection.v1`: the hosted protocols describe themselves.
//!
//! Two unary methods, as in the reference (`vgi_rpc/rpc/_reflection.py`):
//! `list_protocols()` and `describe(protocol: utf8)`, each answering `result: binary` holding a
//! complete one-row IPC stream of the reference's `ProtocolList` / `ServiceDescription`
//! dataclasses. The protocol hash is the reference's `compute_protocol_hash`:
//! `sha256("vgi_rpc.protocol_hash.v1|" + RFC 8785 JSON of the decoded description)`, with
//! the canonical type tokens of `_type_tokens.py`, so every port hashes a protocol alike.
//!
//! Descriptions never change for a server's life, so every answer is encoded once, when the
//! router is built, and each call only copies bytes.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, ListArray, RecordBatch, StringArray, StructArray,
};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Fields, IntervalUnit, Schema, SchemaRef, TimeUnit};
use sha2::{Digest, Sha256};

use super::service::{empty_schema, HandlerResult, Method, Protocol};
use crate::wire::{write_stream, ErrorCode, MetaBatch, RpcError, REQUEST_VERSION};

/// The reflection protocol's wire name.
pub const REFLECTION_PROTOCOL: &str = "vgi_rpc.Reflection.v1";

/// Domain separator of the protocol hash (moves only when the hash definition does).
const HASH_DOMAIN: &[u8] = b"vgi_rpc.protocol_hash.v1|";

/// The extension-type marker in Arrow field metadata.
const EXTENSION_NAME_KEY: &str = "ARROW:extension:name";

/// One method's wire surface, as the description and the hash see it.
struct MethodShape {
    name: String,
    params: SchemaRef,
    kind: ShapeKind,
}

enum ShapeKind {
    /// `result` is `None` for a void method (empty result schema).
    Unary { result: Option<SchemaRef> },
    Stream {
        header: Option<SchemaRef>,
        exchange: bool,
    },
}

impl MethodShape {
    fn method_type(&self) -> &'static str {
        match self.kind {
            ShapeKind::Unary { .. } => "unary",
            ShapeKind::Stream { .. } => "stream",
        }
    }

    fn result(&self) -> Option<&SchemaRef> {
        match &self.kind {
            ShapeKind::Unary { result } => result.as_ref(),
            ShapeKind::Stream { .. } => None,
        }
    }

    fn header(&self) -> Option<&SchemaRef> {
        match &self.kind {
            ShapeKind::Unary { .. } => None,
            ShapeKind::Stream { header, .. } => header.as_ref(),
        }
    }

    fn stream_kind(&self) -> &'static str {
        match self.kind {
            ShapeKind::Unary { .. } => "",
            ShapeKind::Stream { exchange: true, .. } => "exchange",
            ShapeKind::Stream {
                exchange: false, ..
            } => "producer",
        }
    }
}

/// A protocol's shapes, sorted by method name (the reference sorts; `Protocol` is a BTreeMap).
fn shapes_of(protocol: &Protocol) -> Vec<MethodShape> {
    protocol
        .methods()
        .map(|(name, method)| MethodShape {
            name: name.to_string(),
            params: method.params().clone(),
            kind: match method {
                Method::Unary(m) => ShapeKind::Unary {
                    result: (!m.result.fields().is_empty()).then(|| m.result.clone()),
                },
                Method::Stream(m) => ShapeKind::Stream {
                    header: m.header.clone(),
                    exchange: m.is_exchange(),
                },
            },
        })
        .collect()
}

fn describe_params() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "protocol",
        DataType::Utf8,
        false,
    )]))
}

fn binary_result() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "result",
        DataType::Binary,
        false,
    )]))
}

/// Reflection's own shapes: it is listed and described like any other protocol.
fn reflection_shapes() -> Vec<MethodShape> {
    vec![
        MethodShape {
            name: "describe".to_string(),
            params: describe_params(),
            kind: ShapeKind::Unary {
                result: Some(binary_result()),
            },
        },
        MethodShape {
            name: "list_protocols".to_string(),
            params: empty_schema(),
            kind: ShapeKind::Unary {
                result: Some(binary_result()),
            },
        },
    ]
}

// ---------------------------------------------------------------------------
// Canonical type tokens and the protocol hash
// ---------------------------------------------------------------------------

/// A type with no canonical token: hashing it one-sidedly would make this port disagree with
/// every other, so the protocol gets no hash instead.
#[derive(Debug)]
struct UnsupportedType(String);

fn unit(u: &TimeUnit) -> &'static str {
    match u {
        TimeUnit::Second => "s",
        TimeUnit::Millisecond => "ms",
        TimeUnit::Microsecond => "us",
        TimeUnit::Nanosecond => "ns",
    }
}

/// A child spelled `name:token` / `name?:token` (`name` normalised for list and map children,
/// whose names Arrow's type equality ignores).
fn child_token(field: &Field, name: &str) -> Result<String, UnsupportedType> {
    let q = if field.is_nullable() { "?" } else { "" };
    Ok(format!("{name}{q}:{}", field_type_token(field)?))
}

/// The token of a field's type, including what Arrow-rs keeps on the field rather than in
/// the type: extension types and dictionary ordering.
fn field_type_token(field: &Field) -> Result<String, UnsupportedType> {
    let storage = match field.data_type() {
        DataType::Dictionary(index, value) => {
            let ordered = if field.dict_is_ordered() == Some(true) {
                ",ordered"
            } else {
                ""
            };
            format!(
                "dictionary<index:{},value:{}>{ordered}",
                type_token(index)?,
                type_token(value)?
            )
        }
        dt => type_token(dt)?,
    };
    Ok(match field.metadata().get(EXTENSION_NAME_KEY) {
        Some(ext) => format!("extension({ext})<{storage}>"),
        None => storage,
    })
}

/// The canonical token of `dt` (the reference's `type_token`).
fn type_token(dt: &DataType) -> Result<String, UnsupportedType> {
    use DataType as D;
    Ok(match dt {
        D::Null => "null".into(),
        D::Boolean => "bool".into(),
        D::Int8 => "int8".into(),
        D::Int16 => "int16".into(),
        D::Int32 => "int32".into(),
        D::Int64 => "int64".into(),
        D::UInt8 => "uint8".into(),
        D::UInt16 => "uint16".into(),
        D::UInt32 => "uint32".into(),
        D::UInt64 => "uint64".into(),
        D::Float16 => "float16".into(),
        D::Float32 => "float32".into(),
        D::Float64 => "float64".into(),
        D::Utf8 => "utf8".into(),
        D::LargeUtf8 => "large_utf8".into(),
        D::Utf8View => "utf8_view".into(),
        D::Binary => "binary".into(),
        D::LargeBinary => "large_binary".into(),
        D::BinaryView => "binary_view".into(),
        D::Date32 => "date32".into(),
        D::Date64 => "date64".into(),
        D::FixedSizeBinary(w) => format!("fixed_size_binary({w})"),
        D::Decimal128(p, s) => format!("decimal128({p},{s})"),
        D::Decimal256(p, s) => format!("decimal256({p},{s})"),
        D::Time32(u) => format!("time32({})", unit(u)),
        D::Time64(u) => format!("time64({})", unit(u)),
        // The zone is verbatim: "UTC" and "+00:00" are distinct Arrow types.
        D::Timestamp(u, None) => format!("timestamp({})", unit(u)),
        D::Timestamp(u, Some(tz)) => format!("timestamp({},tz={tz})", unit(u)),
        D::Duration(u) => format!("duration({})", unit(u)),
        D::Interval(IntervalUnit::YearMonth) => "interval_months".into(),
        D::Interval(IntervalUnit::DayTime) => "interval_day_time".into(),
        D::Interval(IntervalUnit::MonthDayNano) => "interval_month_day_nano".into(),
        D::FixedSizeList(f, n) => format!("fixed_size_list({n})<{}>", child_token(f, "item")?),
        D::LargeList(f) => format!("large_list<{}>", child_token(f, "item")?),
        D::List(f) => format!("list<{}>", child_token(f, "item")?),
        D::LargeListView(f) => format!("large_list_view<{}>", child_token(f, "item")?),
        D::ListView(f) => format!("list_view<{}>", child_token(f, "item")?),
        D::Map(entries, sorted) => {
            let (key, value) = match entries.data_type() {
                DataType::Struct(kv) if kv.len() == 2 => (&kv[0], &kv[1]),
                other => return Err(UnsupportedType(format!("map entries of type {other}"))),
            };
            format!(
                "map<{},{}>{}",
                child_token(key, "key")?,
                child_token(value, "value")?,
                if *sorted { ",keys_sorted" } else { "" }
            )
        }
        D::Struct(fields) => format!(
            "struct<{}>",
            fields
                .iter()
                .map(|f| child_token(f, f.name()))
                .collect::<Result<Vec<_>, _>>()?
                .join(",")
        ),
        D::Union(fields, mode) => {
            let kind = match mode {
                arrow_schema::UnionMode::Sparse => "sparse_union",
                arrow_schema::UnionMode::Dense => "dense_union",
            };
            let parts = fields
                .iter()
                .map(|(code, f)| Ok(format!("{code}={}", child_token(f, f.name())?)))
                .collect::<Result<Vec<_>, UnsupportedType>>()?;
            format!("{kind}<{}>", parts.join(","))
        }
        // Ordering lives on the field in arrow-rs; field_type_token adds it where known.
        D::Dictionary(index, value) => format!(
            "dictionary<index:{},value:{}>",
            type_token(index)?,
            type_token(value)?
        ),
        D::RunEndEncoded(run_ends, values) => format!(
            "run_end_encoded<run_ends:{},values:{}>",
            type_token(run_ends.data_type())?,
            type_token(values.data_type())?
        ),
        other @ (D::Decimal32(..) | D::Decimal64(..)) => {
            return Err(UnsupportedType(format!("{other}")))
        }
    })
}

/// A JSON value restricted to what the hash preimage may hold: no numbers, so RFC 8785's
/// number rules never apply.
enum Json {
    Bool(bool),
    Str(String),
    Array(Vec<Json>),
    /// Keys are sorted when written (ASCII keys: code-point order = UTF-16 order).
    Object(Vec<(&'static str, Json)>),
}

impl Json {
    fn write_canonical(&self, out: &mut String) {
        match self {
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            // serde_json escapes exactly as JCS does: `"`, `\`, the short forms for \b \f \n
            // \r \t and lowercase \u00xx for the other controls; everything else verbatim.
            Json::Str(s) => {
                out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\"")))
            }
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_canonical(out);
                }
                out.push(']');
            }
            Json::Object(entries) => {
                let mut sorted: Vec<&(&str, Json)> = entries.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(b.0));
                out.push('{');
                for (i, (k, v)) in sorted.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    Json::Str((*k).to_string()).write_canonical(out);
                    out.push(':');
                    v.write_canonical(out);
                }
                out.push('}');
            }
        }
    }
}

fn schema_tokens(schema: &Schema) -> Result<Json, UnsupportedType> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| {
            Ok(Json::Object(vec![
                ("name", Json::Str(f.name().clone())),
                ("nullable", Json::Bool(f.is_nullable())),
                ("type", Json::Str(field_type_token(f)?)),
            ]))
        })
        .collect::<Result<Vec<_>, UnsupportedType>>()?;
    Ok(Json::Array(fields))
}

/// The canonical preimage JSON (without the domain separator).
fn canonical_description(
    protocol: &str,
    shapes: &[MethodShape],
) -> Result<String, UnsupportedType> {
    let methods = shapes
        .iter()
        .map(|m| {
            let mut entry = vec![
                ("name", Json::Str(m.name.clone())),
                ("type", Json::Str(m.method_type().into())),
                ("has_return", Json::Bool(m.result().is_some())),
                ("has_header", Json::Bool(m.header().is_some())),
                ("params", schema_tokens(&m.params)?),
            ];
            // Absent and empty differ: a void method is not one returning an empty struct.
            if let Some(r) = m.result() {
                entry.push(("result", schema_tokens(r)?));
            }
            if let Some(h) = m.header() {
                entry.push(("header", schema_tokens(h)?));
            }
            Ok(Json::Object(entry))
        })
        .collect::<Result<Vec<_>, UnsupportedType>>()?;
    let mut out = String::new();
    Json::Object(vec![
        ("protocol", Json::Str(protocol.to_string())),
        ("methods", Json::Array(methods)),
    ])
    .write_canonical(&mut out);
    Ok(out)
}

fn protocol_hash(protocol: &str, shapes: &[MethodShape]) -> Result<String, UnsupportedType> {
    let preimage = canonical_description(protocol, shapes)?;
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    h.update(preimage.as_bytes());
    Ok(hex::encode(h.finalize()))
}

// ---------------------------------------------------------------------------
// The dataclass encodings
// ---------------------------------------------------------------------------

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

fn boolean(name: &str) -> Field {
    Field::new(name, DataType::Boolean, false)
}

fn binary(name: &str) -> Field {
    Field::new(name, DataType::Binary, false)
}

fn list_of(name: &str, item: DataType) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("item", item, true))),
        false,
    )
}

/// `ProtocolSummary`'s fields (a prefix of `ServiceDescription`'s).
fn summary_fields() -> Vec<Field> {
    vec![
        utf8("protocol"),
        utf8("protocol_version"),
        utf8("protocol_hash"),
        boolean("deprecated"),
        utf8("deprecation_message"),
        list_of("features", DataType::Utf8),
    ]
}

fn method_info_fields() -> Fields {
    Fields::from(vec![
        utf8("name"),
        utf8("method_type"),
        boolean("has_return"),
        boolean("has_header"),
        utf8("stream_kind"),
        binary("params_schema_ipc"),
        binary("result_schema_ipc"),
        binary("header_schema_ipc"),
        utf8("idempotency"),
        boolean("deprecated"),
        utf8("deprecation_message"),
    ])
}

type EncodeResult<T> = std::result::Result<T, String>;

fn arrow_err(e: impl std::fmt::Display) -> String {
    format!("reflection encoding failed: {e}")
}

/// A non-null list column over `values`, with `offsets` (one list per row).
fn list_column(item: DataType, offsets: Vec<i32>, values: ArrayRef) -> EncodeResult<ArrayRef> {
    let field = Arc::new(Field::new("item", item, true));
    let offsets = OffsetBuffer::new(offsets.into());
    Ok(Arc::new(
        ListArray::try_new(field, offsets, values, None).map_err(arrow_err)?,
    ))
}

/// One row of `features: list<utf8>` per entry, all empty (the field is reserved: every
/// protocol emits `[]`).
fn empty_features(rows: usize) -> EncodeResult<ArrayRef> {
    list_column(
        DataType::Utf8,
        vec![0; rows + 1],
        Arc::new(StringArray::from(Vec::<&str>::new())),
    )
}

/// One summary per protocol, as the columns of `summary_fields`.
struct Summary {
    protocol: String,
    version: String,
    hash: String,
}

fn summary_columns(rows: &[&Summary]) -> EncodeResult<Vec<ArrayRef>> {
    let n = rows.len();
    Ok(vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|s| s.protocol.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|s| s.version.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|s| s.hash.as_str()),
        )),
        Arc::new(BooleanArray::from(vec![false; n])),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n("", n))),
        empty_features(n)?,
    ])
}

/// A complete one-row IPC stream of `columns` on `schema`.
fn one_row_stream(schema: Schema, columns: Vec<ArrayRef>) -> EncodeResult<Vec<u8>> {
    let schema = Arc::new(schema);
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(arrow_err)?;
    write_stream(&schema, &[MetaBatch::plain(batch)]).map_err(arrow_err)
}

/// A schema as one encapsulated IPC message (pyarrow's `Schema.serialize()`), no EOS.
fn schema_ipc(schema: &Schema) -> EncodeResult<Vec<u8>> {
    use arrow_ipc::writer::{write_message, DictionaryTracker, IpcDataGenerator, IpcWriteOptions};
    let opts = IpcWriteOptions::default();
    let mut tracker = DictionaryTracker::new(false);
    let encoded = IpcDataGenerator::default().schema_to_bytes_with_dictionary_tracker(
        schema,
        &mut tracker,
        &opts,
    );
    let mut out = Vec::new();
    write_message(&mut out, encoded, &opts).map_err(arrow_err)?;
    Ok(out)
}

fn encode_list(server_id: &str, summaries: &[Summary]) -> EncodeResult<Vec<u8>> {
    let item = DataType::Struct(Fields::from(summary_fields()));
    let rows: Vec<&Summary> = summaries.iter().collect();
    let structs = StructArray::try_new(
        Fields::from(summary_fields()),
        summary_columns(&rows)?,
        None,
    )
    .map_err(arrow_err)?;
    let protocols = list_column(
        item.clone(),
        vec![0, summaries.len() as i32],
        Arc::new(structs),
    )?;
    let schema = Schema::new(vec![
        utf8("server_id"),
        utf8("server_version"),
        utf8("request_version"),
        list_of("protocols", item),
    ]);
    one_row_stream(
        schema,
        vec![
            Arc::new(StringArray::from(vec![server_id])),
            Arc::new(StringArray::from(vec![env!("CARGO_PKG_VERSION")])),
            Arc::new(StringArray::from(vec![REQUEST_VERSION])),
            protocols,
        ],
    )
}

fn encode_description(summary: &Summary, shapes: &[MethodShape]) -> EncodeResult<Vec<u8>> {
    let n = shapes.len();
    let mut params = Vec::with_capacity(n);
    let mut results = Vec::with_capacity(n);
    let mut headers = Vec::with_capacity(n);
    for m in shapes {
        params.push(schema_ipc(&m.params)?);
        // Empty rather than null when absent, as the reference does.
        results.push(match m.result() {
            Some(r) => schema_ipc(r)?,
            None => Vec::new(),
        });
        headers.push(match m.header() {
            Some(h) => schema_ipc(h)?,
            None => Vec::new(),
        });
    }
    let bin = |v: &[Vec<u8>]| -> ArrayRef {
        Arc::new(BinaryArray::from_iter_values(v.iter().map(Vec::as_slice)))
    };
    let methods = StructArray::try_new(
        method_info_fields(),
        vec![
            Arc::new(StringArray::from_iter_values(
                shapes.iter().map(|m| m.name.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                shapes.iter().map(MethodShape::method_type),
            )),
            Arc::new(BooleanArray::from_iter(
                shapes.iter().map(|m| Some(m.result().is_some())),
            )),
            Arc::new(BooleanArray::from_iter(
                shapes.iter().map(|m| Some(m.header().is_some())),
            )),
            Arc::new(StringArray::from_iter_values(
                shapes.iter().map(MethodShape::stream_kind),
            )),
            bin(&params),
            bin(&results),
            bin(&headers),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                "unknown", n,
            ))),
            Arc::new(BooleanArray::from(vec![false; n])),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n("", n))),
        ],
        None,
    )
    .map_err(arrow_err)?;
    let method_item = DataType::Struct(method_info_fields());
    let mut fields = summary_fields();
    fields.push(list_of("methods", method_item.clone()));
    let mut columns = summary_columns(&[summary])?;
    columns.push(list_column(
        method_item,
        vec![0, n as i32],
        Arc::new(methods),
    )?);
    one_row_stream(Schema::new(fields), columns)
}

// ---------------------------------------------------------------------------
// The protocol
// ---------------------------------------------------------------------------

/// Every answer, encoded once.
struct Catalog {
    /// `list_protocols`' answer, or why it cannot be given.
    list: EncodeResult<Vec<u8>>,
    /// `describe`'s answers by protocol name.
    descriptions: HashMap<String, EncodeResult<Vec<u8>>>,
    /// Hosted names, in listing order (for the not-hosted error).
    hosted: Vec<String>,
}

fn version_string(p: &Protocol) -> String {
    p.version()
        .map(|(a, b, c)| format!("{a}.{b}.{c}"))
        .unwrap_or_default()
}

fn build_catalog(server_id: &str, primary: &str, hosted: &[Arc<Protocol>]) -> Catalog {
    // Registration order, primary first, one entry per name (the last registration wins, as
    // in dispatch), reflection itself last.
    let mut ordered: Vec<(String, String, Vec<MethodShape>)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut unique: Vec<&Arc<Protocol>> = hosted
        .iter()
        .rev()
        .filter(|p| p.name() != REFLECTION_PROTOCOL && seen.insert(p.name().to_string()))
        .collect();
    unique.reverse();
    unique.sort_by_key(|p| p.name() != primary);
    for p in unique {
        ordered.push((p.name().to_string(), version_string(p), shapes_of(p)));
    }
    ordered.push((
        REFLECTION_PROTOCOL.to_string(),
        String::new(),
        reflection_shapes(),
    ));

    let mut summaries = Vec::with_capacity(ordered.len());
    let mut descriptions = HashMap::new();
    let mut list_error = None;
    for (name, version, shapes) in &ordered {
        match protocol_hash(name, shapes) {
            Ok(hash) => {
                let summary = Summary {
                    protocol: name.clone(),
                    version: version.clone(),
                    hash,
                };
                descriptions.insert(name.clone(), encode_description(&summary, shapes));
                summaries.push(summary);
            }
            Err(UnsupportedType(t)) => {
                let msg = format!(
                    "protocol {name:?} has no protocol hash: arrow type {t} has no canonical token"
                );
                tracing::warn!("{msg}");
                list_error.get_or_insert_with(|| msg.clone());
                descriptions.insert(name.clone(), Err(msg));
            }
        }
    }
    let list = match list_error {
        Some(e) => Err(e),
        None => encode_list(server_id, &summaries),
    };
    Catalog {
        list,
        descriptions,
        hosted: ordered.into_iter().map(|(n, _, _)| n).collect(),
    }
}

fn answer(bytes: &EncodeResult<Vec<u8>>) -> HandlerResult {
    let bytes = bytes.as_ref().map_err(|e| RpcError::internal(e.clone()))?;
    RecordBatch::try_new(
        binary_result(),
        vec![Arc::new(BinaryArray::from_iter_values([bytes.as_slice()]))],
    )
    .map_err(|e| RpcError::internal(arrow_err(e)))
}

fn describe(catalog: &Catalog, params: &RecordBatch) -> HandlerResult {
    let name = params
        .column_by_name("protocol")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .filter(|c| c.len() == 1 && c.is_valid(0))
        .map(|c| c.value(0))
        .ok_or_else(|| RpcError::invalid_argument("describe needs one non-null 'protocol'"))?;
    match catalog.descriptions.get(name) {
        Some(bytes) => answer(bytes),
        None => Err(RpcError::new(
            "ProtocolNotSupportedError",
            format!(
                "This server does not host protocol '{name}'. Hosted: {:?}.",
                catalog.hosted
            ),
        )
        .with_code(ErrorCode::Unimplemented)
        .with_kind("protocol_not_supported")),
    }
}

/// The reflection protocol over `hosted` (in registration order; `primary` first in
/// listings, reflection itself last). `server_id` is reported by `list_protocols`.
pub(crate) fn protocol(server_id: &str, primary: &str, hosted: &[Arc<Protocol>]) -> Protocol {
    let catalog = Arc::new(build_catalog(server_id, primary, hosted));
    let for_list = catalog.clone();
    Protocol::new_reserved(REFLECTION_PROTOCOL)
        .unary(
            "list_protocols",
            empty_schema(),
            binary_result(),
            move |_ctx, _params| {
                let out = answer(&for_list.list);
                async move { out }
            },
        )
        .unary(
            "describe",
            describe_params(),
            binary_result(),
            move |_ctx, params| {
                let out = describe(&catalog, &params);
                async move { out }
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{FieldRef, UnionFields};
    use std::collections::HashMap as Map;

    fn f(name: &str, dt: DataType, nullable: bool) -> Field {
        Field::new(name, dt, nullable)
    }

    fn item(dt: DataType, nullable: bool) -> FieldRef {
        Arc::new(f("item", dt, nullable))
    }

    /// Tokens and hashes below were computed by the Python reference
    /// (vgi_rpc 0.52.2, `_type_tokens.schema_tokens` and `_protocol_hash`).
    fn all_types() -> Vec<(Field, &'static str)> {
        let map = |sorted| {
            DataType::Map(
                Arc::new(f(
                    "entries",
                    DataType::Struct(Fields::from(vec![
                        f("key", DataType::Utf8, false),
                        f("value", DataType::Int64, true),
                    ])),
                    false,
                )),
                sorted,
            )
        };
        let union_fields = |codes: [i8; 2]| {
            UnionFields::try_new(
                codes,
                vec![f("i", DataType::Int32, true), f("s", DataType::Utf8, true)],
            )
            .unwrap()
        };
        let dict = |i: DataType| DataType::Dictionary(Box::new(i), Box::new(DataType::Utf8));
        let ts = |u, tz: Option<&str>| DataType::Timestamp(u, tz.map(Arc::from));
        use DataType as D;
        let types: Vec<(&str, DataType, &str)> = vec![
            ("a", D::Null, "null"),
            ("b", D::Boolean, "bool"),
            ("c", D::Int8, "int8"),
            ("d", D::UInt64, "uint64"),
            ("e", D::Float16, "float16"),
            ("f", D::Float32, "float32"),
            ("g", D::LargeUtf8, "large_utf8"),
            ("h", D::LargeBinary, "large_binary"),
            ("i", D::Date32, "date32"),
            ("j", D::Date64, "date64"),
            (
                "k",
                D::Interval(IntervalUnit::MonthDayNano),
                "interval_month_day_nano",
            ),
            ("l", D::Utf8View, "utf8_view"),
            ("m", D::BinaryView, "binary_view"),
            ("n", D::FixedSizeBinary(16), "fixed_size_binary(16)"),
            ("o", D::Decimal128(38, 9), "decimal128(38,9)"),
            ("p", D::Decimal256(76, 2), "decimal256(76,2)"),
            ("q", D::Time32(TimeUnit::Millisecond), "time32(ms)"),
            ("r", D::Time64(TimeUnit::Nanosecond), "time64(ns)"),
            ("s", ts(TimeUnit::Microsecond, None), "timestamp(us)"),
            (
                "t",
                ts(TimeUnit::Nanosecond, Some("UTC")),
                "timestamp(ns,tz=UTC)",
            ),
            ("u", D::Duration(TimeUnit::Second), "duration(s)"),
            ("v", D::List(item(D::Int32, true)), "list<item?:int32>"),
            (
                "w",
                D::List(Arc::new(f("element", D::Utf8, false))),
                "list<item:utf8>",
            ),
            (
                "x",
                D::LargeList(item(D::Float64, true)),
                "large_list<item?:float64>",
            ),
            (
                "y",
                D::FixedSizeList(item(D::Int16, true), 3),
                "fixed_size_list(3)<item?:int16>",
            ),
            ("z", map(false), "map<key:utf8,value?:int64>"),
            ("aa", map(true), "map<key:utf8,value?:int64>,keys_sorted"),
            (
                "bb",
                D::Struct(Fields::from(vec![
                    f("x", D::Int32, false),
                    f("y", D::Utf8, true),
                ])),
                "struct<x:int32,y?:utf8>",
            ),
            ("cc", dict(D::Int32), "dictionary<index:int32,value:utf8>"),
            (
                "dd",
                dict(D::Int8),
                "dictionary<index:int8,value:utf8>,ordered",
            ),
            (
                "ee",
                D::Union(union_fields([3, 7]), arrow_schema::UnionMode::Sparse),
                "sparse_union<3=i?:int32,7=s?:utf8>",
            ),
            (
                "ff",
                D::Union(union_fields([0, 1]), arrow_schema::UnionMode::Dense),
                "dense_union<0=i?:int32,1=s?:utf8>",
            ),
            (
                "gg",
                D::RunEndEncoded(
                    Arc::new(f("run_ends", D::Int32, false)),
                    Arc::new(f("values", D::Utf8, true)),
                ),
                "run_end_encoded<run_ends:int32,values:utf8>",
            ),
            (
                "hh",
                D::ListView(item(D::Int32, true)),
                "list_view<item?:int32>",
            ),
            (
                "ii",
                D::LargeListView(item(D::Int32, true)),
                "large_list_view<item?:int32>",
            ),
            (
                "jj",
                D::List(item(
                    D::Struct(Fields::from(vec![f(
                        "k",
                        D::List(item(D::Int64, false)),
                        true,
                    )])),
                    true,
                )),
                "list<item?:struct<k?:list<item:int64>>>",
            ),
        ];
        types
            .into_iter()
            .enumerate()
            .map(|(i, (name, dt, token))| {
                let mut field = f(name, dt, i % 2 == 0);
                if name == "dd" {
                    field = field.with_dict_is_ordered(true);
                }
                (field, token)
            })
            .collect()
    }

    #[test]
    fn type_tokens_match_the_reference() {
        for (field, token) in all_types() {
            assert_eq!(field_type_token(&field).unwrap(), token, "{field:?}");
        }
    }

    #[test]
    fn extension_and_unsupported_types() {
        let uuid = f("id", DataType::FixedSizeBinary(16), false).with_metadata(Map::from([(
            EXTENSION_NAME_KEY.to_string(),
            "arrow.uuid".to_string(),
        )]));
        assert_eq!(
            field_type_token(&uuid).unwrap(),
            "extension(arrow.uuid)<fixed_size_binary(16)>"
        );
        assert!(type_token(&DataType::Decimal32(9, 2)).is_err());
        let bad = Protocol::new_reserved("t.Bad.v1").unary(
            "m",
            Arc::new(Schema::new(vec![f("x", DataType::Decimal64(9, 2), false)])),
            empty_schema(),
            |_c, b| async move { Ok(b) },
        );
        let catalog = build_catalog("id", "t.Bad.v1", &[Arc::new(bad)]);
        assert!(catalog.list.as_ref().unwrap_err().contains("Decimal64"));
        assert!(catalog.descriptions["t.Bad.v1"].is_err());
        // The other protocols still describe.
        assert!(catalog.descriptions[REFLECTION_PROTOCOL].is_ok());
    }

    fn unary(name: &str, params: Vec<Field>, result: Option<Vec<Field>>) -> MethodShape {
        MethodShape {
            name: name.into(),
            params: Arc::new(Schema::new(params)),
            kind: ShapeKind::Unary {
                result: result.map(|r| Arc::new(Schema::new(r))),
            },
        }
    }

    #[test]
    fn hashes_match_the_reference() {
        // The conformance secondary protocol's pinned hash (SECONDARY_PROTOCOL_HASH).
        let secondary = vec![
            unary(
                "echo_string",
                vec![f("value", DataType::Utf8, false)],
                Some(vec![f("result", DataType::Utf8, false)]),
            ),
            unary(
                "fail",
                vec![
                    f("code", DataType::Utf8, false),
                    f("kind", DataType::Utf8, false),
                    f("retry_delay_seconds", DataType::Float64, false),
                ],
                None,
            ),
            unary("fail_oversized", vec![], None),
        ];
        assert_eq!(
            protocol_hash("conformance.Secondary.v1", &secondary).unwrap(),
            "58557cf1611546ad22d1c379bc3ce1b04166082f78375e9fc959f0086347eab6"
        );
        assert_eq!(
            protocol_hash(REFLECTION_PROTOCOL, &reflection_shapes()).unwrap(),
            "3c7db4cae8cdfc93dc4a76e73b8b759e18e45e6a5811adba4e520366344b919a"
        );
        // A stream with a header, a nullable parameter, a void method.
        let mixed = vec![
            unary(
                "add",
                vec![
                    f("a", DataType::Int64, false),
                    f("b", DataType::Int64, true),
                ],
                Some(vec![f("result", DataType::Int64, false)]),
            ),
            unary("noop", vec![], None),
            MethodShape {
                name: "tick".into(),
                params: Arc::new(Schema::new(vec![f("count", DataType::Int32, false)])),
                kind: ShapeKind::Stream {
                    header: Some(Arc::new(Schema::new(vec![f(
                        "total",
                        DataType::Int64,
                        false,
                    )]))),
                    exchange: false,
                },
            },
        ];
        assert_eq!(
            canonical_description("test.Reflect.v1", &mixed).unwrap(),
            r#"{"methods":[{"has_header":false,"has_return":true,"name":"add","params":[{"name":"a","nullable":false,"type":"int64"},{"name":"b","nullable":true,"type":"int64"}],"result":[{"name":"result","nullable":false,"type":"int64"}],"type":"unary"},{"has_header":false,"has_return":false,"name":"noop","params":[],"type":"unary"},{"has_header":true,"has_return":false,"header":[{"name":"total","nullable":false,"type":"int64"}],"name":"tick","params":[{"name":"count","nullable":false,"type":"int32"}],"type":"stream"}],"protocol":"test.Reflect.v1"}"#
        );
        assert_eq!(
            protocol_hash("test.Reflect.v1", &mixed).unwrap(),
            "2d8fb94e4b0acf38780d5c3acc1142227230cbe8af9a689e46bc14c3bf23051a"
        );
        // Every type token at once.
        let all = vec![unary(
            "m",
            all_types().into_iter().map(|(field, _)| field).collect(),
            Some(vec![f("result", DataType::Utf8, true)]),
        )];
        assert_eq!(
            protocol_hash("all.Types.v1", &all).unwrap(),
            "78935a05e138b73ef82eb2a879e2c8b691821248f8547e6846b5780e3fb6f106"
        );
    }

    #[test]
    fn canonical_strings_escape_like_jcs() {
        let mut out = String::new();
        Json::Str("a\"b\\c\n\u{1}é\u{2028}".into()).write_canonical(&mut out);
        assert_eq!(out, "\"a\\\"b\\\\c\\n\\u0001é\u{2028}\"");
    }

    #[test]
    fn schema_ipc_is_one_message_without_eos() {
        // pyarrow's `Schema.serialize()`: one encapsulated message, no end-of-stream marker.
        // Byte parity with pyarrow is not expected (the hash is over decoded types).
        let schema = Schema::new(vec![
            f("code", DataType::Utf8, false),
            f("retry_delay_seconds", DataType::Float64, true),
        ]);
        let bytes = schema_ipc(&schema).unwrap();
        assert_eq!(&bytes[..4], &[0xff; 4]);
        let len = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
        assert_eq!(bytes.len(), 8 + len, "exactly one message");
        let mut stream = bytes.clone();
        stream.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        let reader =
            arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(stream), None).unwrap();
        assert_eq!(reader.schema().as_ref(), &schema);
    }
}
