//! Dataclasses on the wire: a top-level dataclass argument or result is a `binary` value holding
//! a complete one-row Arrow IPC stream on the dataclass's schema (nested dataclasses inside it
//! are structs). Also the methods that look inside one: `inspect_point` and
//! `pack_nested_containers`.

use std::collections::HashSet;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int16Type;
use arrow_array::{
    new_null_array, Array, ArrayRef, BinaryArray, DictionaryArray, Int64Array, ListArray,
    RecordBatch, StringArray,
};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use spillway::wire::{read_stream, schemas_equal, write_stream, MetaBatch, ReadLimits, RpcError};

use super::call::{conform, type_error, value_error};
use super::values::{check_statuses, status_names};
use super::{Registrar, Worker};
use crate::error::Result;
use crate::pyrepr::float_repr;

/// Most batches a nested dataclass stream may hold (it must hold exactly one).
const NESTED_LIMITS: ReadLimits = ReadLimits {
    max_batches: 4,
    max_message_header_bytes: 1024 * 1024,
};

/// Reads a dataclass value: one IPC stream, one batch of one row, on `schema`.
pub(crate) fn decode_dataclass(
    bytes: &[u8],
    schema: &SchemaRef,
    name: &str,
) -> Result<RecordBatch, RpcError> {
    let bad = |why: String| value_error(format!("cannot deserialize {name}: {why}"));
    let stream = read_stream(Bytes::copy_from_slice(bytes), NESTED_LIMITS)
        .map_err(|e| bad(e.to_string()))?;
    if !schemas_equal(&stream.schema, schema) {
        return Err(bad(format!("schema {} is not {}", stream.schema, schema)));
    }
    match <[MetaBatch; 1]>::try_from(stream.batches) {
        Ok([only]) if only.batch.num_rows() == 1 => Ok(only.batch),
        Ok([only]) => Err(bad(format!("{} rows, expected 1", only.batch.num_rows()))),
        Err(batches) => Err(bad(format!("{} batches, expected 1", batches.len()))),
    }
}

/// Writes a one-row batch as a dataclass value.
pub(crate) fn encode_dataclass(batch: &RecordBatch) -> Result<Vec<u8>, RpcError> {
    write_stream(batch.schema_ref(), &[MetaBatch::plain(batch.clone())])
        .map_err(|e| RpcError::internal(format!("serializing a dataclass: {e}")))
}

pub(super) fn register(r: Registrar, worker: &Arc<Worker>) -> Result<Registrar> {
    let point = worker.catalog.dataclass("Point")?;
    let nested = worker.catalog.dataclass("NestedContainers")?;
    r.sync("inspect_point", move |call| {
        let batch = decode_dataclass(call.bytes("point")?, &point, "Point")?;
        let coord = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_primitive_opt::<arrow_array::types::Float64Type>())
                .filter(|c| c.is_valid(0))
                .map(|c| c.value(0))
                .ok_or_else(|| type_error(format!("Point.{name} must be a float")))
        };
        let text = format!(
            "Point({}, {})",
            float_repr(coord("x")?),
            float_repr(coord("y")?)
        );
        call.reply(Arc::new(StringArray::from(vec![text])))
    })?
    .sync("pack_nested_containers", move |call| {
        let batch = pack_nested_containers(
            call.arg("statuses")?,
            call.arg("points")?,
            call.arg("status_by_name")?,
            &nested,
        )?;
        let bytes = encode_dataclass(&batch)?;
        call.reply(Arc::new(BinaryArray::from_vec(vec![bytes.as_slice()])))
    })
}

/// The reference's `pack_nested_containers`: the three containers as given, plus the distinct
/// statuses, the first status and point (or None), and a small embedded batch.
fn pack_nested_containers(
    statuses: &ArrayRef,
    points: &ArrayRef,
    status_by_name: &ArrayRef,
    schema: &SchemaRef,
) -> Result<RecordBatch, RpcError> {
    check_statuses(
        statuses,
        "statuses were not reconstructed as Status members",
    )?;
    check_statuses(
        status_by_name,
        "status_by_name values were not reconstructed as Status members",
    )?;
    let status_items = first_row_items(statuses, "statuses")?;
    let point_items = first_row_items(points, "points")?;
    if point_items.null_count() > 0 {
        return Err(type_error(
            "points were not reconstructed as Point instances",
        ));
    }
    let field_type = |name: &str| -> Result<DataType, RpcError> {
        schema
            .field_with_name(name)
            .map(|f| f.data_type().clone())
            .map_err(|e| RpcError::internal(e.to_string()))
    };
    let first_or_null = |items: &ArrayRef, name: &str| -> Result<ArrayRef, RpcError> {
        if items.is_empty() {
            Ok(new_null_array(&field_type(name)?, 1))
        } else {
            conform(items.slice(0, 1), &field_type(name)?)
        }
    };
    let frozen = distinct_statuses(&status_items, &field_type("frozen_statuses")?)?;
    let columns: Vec<ArrayRef> = vec![
        conform(statuses.clone(), &field_type("statuses")?)?,
        conform(points.clone(), &field_type("points")?)?,
        conform(status_by_name.clone(), &field_type("status_by_name")?)?,
        frozen,
        first_or_null(&status_items, "tagged_status")?,
        first_or_null(&point_items, "tagged_point")?,
        Arc::new(BinaryArray::from_vec(vec![tagged_batch()?.as_slice()])),
    ];
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| RpcError::internal(format!("building NestedContainers: {e}")))
}

/// The elements of the first (only) row of a list column.
fn first_row_items(list: &ArrayRef, name: &str) -> Result<ArrayRef, RpcError> {
    let list = list
        .as_list_opt::<i32>()
        .ok_or_else(|| type_error(format!("parameter '{name}' must be a list")))?;
    Ok(list.value(0))
}

/// `frozenset(statuses)` as a one-row `list<dictionary(int16, utf8)>` (first occurrences, in
/// order: a frozenset has no order the client could check).
fn distinct_statuses(items: &ArrayRef, list_type: &DataType) -> Result<ArrayRef, RpcError> {
    let DataType::List(item_field) = list_type else {
        return Err(RpcError::internal("frozen_statuses is not a list"));
    };
    let mut seen = HashSet::new();
    let names: Vec<String> = status_names(items)?
        .into_iter()
        .filter(|n| seen.insert(n.clone()))
        .collect();
    let dict: DictionaryArray<Int16Type> = names.iter().map(String::as_str).collect();
    let values = conform(Arc::new(dict), item_field.data_type())?;
    let list = ListArray::try_new(
        item_field.clone(),
        OffsetBuffer::from_lengths([names.len()]),
        values,
        None,
    )
    .map_err(|e| RpcError::internal(e.to_string()))?;
    Ok(Arc::new(list))
}

/// The reference's `pa.RecordBatch.from_pydict({"value": [1, 2]})`, as IPC bytes.
fn tagged_batch() -> Result<Vec<u8>, RpcError> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "value",
        DataType::Int64,
        true,
    )]));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2]))])
        .map_err(|e| RpcError::internal(e.to_string()))?;
    encode_dataclass(&batch)
}

#[cfg(test)]
mod tests {
    use arrow_array::{Float64Array, MapArray, StructArray};

    use super::*;
    use crate::catalog::Catalog;

    fn point_bytes(x: f64, y: f64) -> (SchemaRef, Vec<u8>) {
        let schema = Catalog::load().unwrap().dataclass("Point").unwrap();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Float64Array::from(vec![x])),
                Arc::new(Float64Array::from(vec![y])),
            ],
        )
        .unwrap();
        (schema, encode_dataclass(&batch).unwrap())
    }

    #[test]
    fn dataclass_values_round_trip_and_garbage_is_refused() {
        let (schema, bytes) = point_bytes(1.5, -2.0);
        let batch = decode_dataclass(&bytes, &schema, "Point").unwrap();
        assert_eq!(batch.num_rows(), 1);
        let e = decode_dataclass(b"not arrow", &schema, "Point").unwrap_err();
        assert_eq!(e.error_type, "ValueError");
        assert!(
            e.message.contains("cannot deserialize Point"),
            "{}",
            e.message
        );
        let other = Catalog::load().unwrap().dataclass("BoundingBox").unwrap();
        let e = decode_dataclass(&bytes, &other, "BoundingBox").unwrap_err();
        assert!(e.message.contains("schema"), "{}", e.message);
    }

    #[test]
    fn packs_nested_containers_like_the_reference() {
        let catalog = Catalog::load().unwrap();
        let schema = catalog.dataclass("NestedContainers").unwrap();
        let params = catalog
            .protocol("ConformanceService")
            .unwrap()
            .unary("pack_nested_containers")
            .unwrap()
            .0;
        let item = |name: &str| match params.field_with_name(name).unwrap().data_type() {
            DataType::List(f) => f.clone(),
            other => panic!("{other}"),
        };
        let statuses: DictionaryArray<Int16Type> =
            ["ACTIVE", "CLOSED", "ACTIVE"].into_iter().collect();
        let statuses: ArrayRef = Arc::new(
            ListArray::try_new(
                item("statuses"),
                OffsetBuffer::from_lengths([3]),
                Arc::new(statuses),
                None,
            )
            .unwrap(),
        );
        let DataType::Struct(point_fields) = item("points").data_type().clone() else {
            panic!()
        };
        let points = StructArray::new(
            point_fields,
            vec![
                Arc::new(Float64Array::from(vec![1.0, 3.0])),
                Arc::new(Float64Array::from(vec![2.0, 4.0])),
            ],
            None,
        );
        let points: ArrayRef = Arc::new(
            ListArray::try_new(
                item("points"),
                OffsetBuffer::from_lengths([2]),
                Arc::new(points),
                None,
            )
            .unwrap(),
        );
        let DataType::Map(entries, ordered) = params
            .field_with_name("status_by_name")
            .unwrap()
            .data_type()
            .clone()
        else {
            panic!()
        };
        let DataType::Struct(kv) = entries.data_type().clone() else {
            panic!()
        };
        let empty = StructArray::new(
            kv.clone(),
            kv.iter()
                .map(|f| arrow_array::new_empty_array(f.data_type()))
                .collect(),
            None,
        );
        let by_name: ArrayRef = Arc::new(
            MapArray::try_new(
                entries,
                OffsetBuffer::from_lengths([0]),
                empty,
                None,
                ordered,
            )
            .unwrap(),
        );
        let packed = pack_nested_containers(&statuses, &points, &by_name, &schema).unwrap();
        assert_eq!(packed.num_rows(), 1);
        let frozen = packed.column_by_name("frozen_statuses").unwrap();
        let frozen = first_row_items(frozen, "f").unwrap();
        assert_eq!(status_names(&frozen).unwrap(), ["ACTIVE", "CLOSED"]);
        let tagged = packed.column_by_name("tagged_status").unwrap();
        assert_eq!(status_names(tagged).unwrap(), ["ACTIVE"]);
        let tagged_point = packed.column_by_name("tagged_point").unwrap();
        assert!(tagged_point.is_valid(0));
        // The embedded batch is {value: int64 nullable} = [1, 2].
        let embedded = packed
            .column_by_name("tagged_batch")
            .unwrap()
            .as_binary::<i32>()
            .value(0)
            .to_vec();
        let stream = read_stream(Bytes::from(embedded), ReadLimits::default()).unwrap();
        assert_eq!(stream.batches[0].batch.num_rows(), 2);
        // The packed value itself round-trips as a dataclass.
        let bytes = encode_dataclass(&packed).unwrap();
        decode_dataclass(&bytes, &schema, "NestedContainers").unwrap();

        // A stranger among the statuses is the reference's TypeError.
        let bad: DictionaryArray<Int16Type> = ["ACTIVE", "BOGUS"].into_iter().collect();
        let bad: ArrayRef = Arc::new(
            ListArray::try_new(
                item("statuses"),
                OffsetBuffer::from_lengths([2]),
                Arc::new(bad),
                None,
            )
            .unwrap(),
        );
        let e = pack_nested_containers(&bad, &points, &by_name, &schema).unwrap_err();
        assert_eq!(e.error_type, "TypeError");
    }
}
