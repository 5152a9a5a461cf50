//! The reference's `ProtocolList` / `ServiceDescription` dataclasses as one-row IPC streams.

use std::sync::Arc;

use arrow_array::{
    ArrayRef, BinaryArray, BooleanArray, ListArray, RecordBatch, StringArray, StructArray,
};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Fields, Schema};

use super::shapes::MethodShape;
use crate::wire::{write_stream, MetaBatch, REQUEST_VERSION};

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
pub(super) fn summary_fields() -> Vec<Field> {
    vec![
        utf8("protocol"),
        utf8("protocol_version"),
        utf8("protocol_hash"),
        boolean("deprecated"),
        utf8("deprecation_message"),
        list_of("features", DataType::Utf8),
    ]
}

pub(super) fn method_info_fields() -> Fields {
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

pub(super) type EncodeResult<T> = std::result::Result<T, String>;

pub(super) fn arrow_err(e: impl std::fmt::Display) -> String {
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
pub(super) struct Summary {
    pub(super) protocol: String,
    pub(super) version: String,
    pub(super) hash: String,
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
pub(super) fn schema_ipc(schema: &Schema) -> EncodeResult<Vec<u8>> {
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

pub(super) fn encode_list(server_id: &str, summaries: &[Summary]) -> EncodeResult<Vec<u8>> {
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

pub(super) fn encode_description(
    summary: &Summary,
    shapes: &[MethodShape],
) -> EncodeResult<Vec<u8>> {
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
