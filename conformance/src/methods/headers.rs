//! Stream headers: `ConformanceHeader` and the reference's `build_rich_header(seed)`, as
//! one-row batches on the header schemas of the catalog. Every column is built on the
//! catalog's own field types (list items, map entries, struct children), so the header
//! matches the declared schema exactly.

use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, DictionaryArray, Float32Array, Float64Array,
    Int16Array, Int32Array, Int64Array, ListArray, MapArray, RecordBatch, StringArray, StructArray,
};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{DataType, SchemaRef};
use spillway::wire::RpcError;

use super::call::value_error;
use super::streams::batch_on;
use super::values::STATUS_MEMBERS;

/// `ConformanceHeader(total_expected, description)`.
pub(crate) fn conformance_header(
    schema: &SchemaRef,
    total_expected: i64,
    description: &str,
) -> Result<RecordBatch, RpcError> {
    batch_on(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![total_expected])),
            Arc::new(StringArray::from(vec![description])),
        ],
    )
}

fn field_type<'a>(schema: &'a SchemaRef, name: &str) -> Result<&'a DataType, RpcError> {
    schema
        .field_with_name(name)
        .map(|f| f.data_type())
        .map_err(|e| RpcError::internal(format!("RichHeader schema: {e}")))
}

fn internal(e: impl std::fmt::Display) -> RpcError {
    RpcError::internal(format!("building RichHeader: {e}"))
}

/// A one-row list column of type `list_type` holding all of `values`.
fn one_list(list_type: &DataType, values: ArrayRef) -> Result<ArrayRef, RpcError> {
    let DataType::List(item) = list_type else {
        return Err(internal(format!("{list_type} is not a list")));
    };
    let values = super::call::conform(values, item.data_type())?;
    let offsets = OffsetBuffer::from_lengths([values.len()]);
    Ok(Arc::new(
        ListArray::try_new(item.clone(), offsets, values, None).map_err(internal)?,
    ))
}

/// A struct column of type `struct_type` from its children, with optional row validity.
fn structs(
    struct_type: &DataType,
    children: Vec<ArrayRef>,
    valid: Option<Vec<bool>>,
) -> Result<ArrayRef, RpcError> {
    let DataType::Struct(fields) = struct_type else {
        return Err(internal(format!("{struct_type} is not a struct")));
    };
    Ok(Arc::new(
        StructArray::try_new(fields.clone(), children, valid.map(NullBuffer::from))
            .map_err(internal)?,
    ))
}

/// `Point(x, y)` rows on `point_type`.
fn points(
    point_type: &DataType,
    xy: &[(f64, f64)],
    valid: Option<Vec<bool>>,
) -> Result<ArrayRef, RpcError> {
    let xs: Float64Array = xy.iter().map(|p| Some(p.0)).collect();
    let ys: Float64Array = xy.iter().map(|p| Some(p.1)).collect();
    structs(point_type, vec![Arc::new(xs), Arc::new(ys)], valid)
}

/// A one-row map column of type `map_type` with these entries.
fn one_map(map_type: &DataType, keys: Vec<&str>, values: ArrayRef) -> Result<ArrayRef, RpcError> {
    let DataType::Map(entries, sorted) = map_type else {
        return Err(internal(format!("{map_type} is not a map")));
    };
    let offsets = OffsetBuffer::from_lengths([keys.len()]);
    let entry_struct = structs(
        entries.data_type(),
        vec![Arc::new(StringArray::from(keys)), values],
        None,
    )?;
    let entry_struct = entry_struct
        .as_any()
        .downcast_ref::<StructArray>()
        .cloned()
        .ok_or_else(|| internal("map entries are not a struct"))?;
    Ok(Arc::new(
        MapArray::try_new(entries.clone(), offsets, entry_struct, None, *sorted)
            .map_err(internal)?,
    ))
}

/// Python's `a * b` on ints, refused where int64 cannot hold it (the reference would fail to
/// serialize the header).
fn mul(a: i64, b: i64) -> Result<i64, RpcError> {
    a.checked_mul(b)
        .ok_or_else(|| value_error(format!("seed {a} is out of range for RichHeader")))
}

fn add(a: i64, b: i64) -> Result<i64, RpcError> {
    a.checked_add(b)
        .ok_or_else(|| value_error(format!("seed {a} is out of range for RichHeader")))
}

/// The reference's `build_rich_header(seed)`, field by field (Python's `%` is floored, hence
/// `rem_euclid`).
pub(crate) fn rich_header(schema: &SchemaRef, seed: i64) -> Result<RecordBatch, RpcError> {
    let t = |name: &str| field_type(schema, name);
    let s = seed as f64;
    let byte = |k: i64| -> Result<u8, RpcError> {
        u8::try_from(add(seed, k)?.rem_euclid(256)).map_err(internal)
    };
    let even = seed.rem_euclid(2) == 0;
    let status = STATUS_MEMBERS[usize::try_from(seed.rem_euclid(3)).map_err(internal)?];
    let enum_field: ArrayRef = {
        let dict = DictionaryArray::try_new(
            Int16Array::from(vec![0i16]),
            Arc::new(StringArray::from(vec![status])),
        )
        .map_err(internal)?;
        super::call::conform(Arc::new(dict), t("enum_field")?)?
    };
    let optional_nested = points(
        t("optional_nested")?,
        &[(s, 0.0)],
        Some(vec![seed.rem_euclid(3) == 0]),
    )?;
    let nested_list_type = t("nested_list")?;
    let DataType::List(inner) = nested_list_type else {
        return Err(internal("nested_list is not a list"));
    };
    let inner_lists = {
        let DataType::List(item) = inner.data_type() else {
            return Err(internal("nested_list items are not lists"));
        };
        let values = Int64Array::from(vec![seed, add(seed, 1)?, add(seed, 2)?]);
        let values = super::call::conform(Arc::new(values), item.data_type())?;
        Arc::new(
            ListArray::try_new(
                item.clone(),
                OffsetBuffer::from_lengths([2, 1]),
                values,
                None,
            )
            .map_err(internal)?,
        ) as ArrayRef
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![format!("seed-{seed}")])),
        Arc::new(BinaryArray::from_vec(vec![&[byte(0)?, byte(1)?, byte(2)?]])),
        Arc::new(Int64Array::from(vec![mul(seed, 7)?])),
        Arc::new(Float64Array::from(vec![s * 1.5])),
        Arc::new(BooleanArray::from(vec![even])),
        one_list(
            t("list_of_int")?,
            Arc::new(Int64Array::from(vec![seed, add(seed, 1)?, add(seed, 2)?])),
        )?,
        one_list(
            t("list_of_str")?,
            Arc::new(StringArray::from(vec![
                format!("item-{seed}"),
                format!("item-{}", add(seed, 1)?),
            ])),
        )?,
        one_map(
            t("dict_field")?,
            vec!["a", "b"],
            Arc::new(Int64Array::from(vec![seed, add(seed, 1)?])),
        )?,
        enum_field,
        points(t("nested_point")?, &[(s, (mul(seed, 2)?) as f64)], None)?,
        Arc::new(StringArray::from(vec![even.then(|| format!("opt-{seed}"))])),
        Arc::new(Int64Array::from(vec![if even {
            None
        } else {
            Some(mul(seed, 3)?)
        }])),
        optional_nested,
        one_list(
            t("list_of_nested")?,
            points(
                match t("list_of_nested")? {
                    DataType::List(item) => item.data_type(),
                    other => return Err(internal(format!("list_of_nested is {other}"))),
                },
                &[(s, add(seed, 1)? as f64)],
                None,
            )?,
        )?,
        one_list(nested_list_type, inner_lists)?,
        Arc::new(Int32Array::from(vec![
            i32::try_from(seed.rem_euclid(1000)).map_err(internal)?
        ])),
        Arc::new(Float32Array::from(vec![(s / 3.0) as f32])),
        one_map(
            t("dict_str_str")?,
            vec!["key"],
            Arc::new(StringArray::from(vec![format!("val-{seed}")])),
        )?,
    ];
    batch_on(schema, columns)
}

#[cfg(test)]
mod tests {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, Int32Type, Int64Type};

    use super::*;
    use crate::catalog::{Catalog, PRIMARY};

    fn rich_schema() -> SchemaRef {
        let c = Catalog::load().unwrap();
        let m = c
            .protocol(PRIMARY)
            .unwrap()
            .method("produce_with_rich_header")
            .unwrap();
        m.header.as_ref().unwrap().1.clone()
    }

    #[test]
    fn rich_header_follows_the_reference_formulas() {
        let schema = rich_schema();
        let b = rich_header(&schema, 7).unwrap();
        assert_eq!(b.schema(), schema);
        assert_eq!(b.num_rows(), 1);
        let col = |n: &str| b.column_by_name(n).unwrap().clone();
        assert_eq!(col("str_field").as_string::<i32>().value(0), "seed-7");
        assert_eq!(col("bytes_field").as_binary::<i32>().value(0), &[7, 8, 9]);
        assert_eq!(col("int_field").as_primitive::<Int64Type>().value(0), 49);
        assert!(!col("bool_field").as_boolean().value(0));
        assert!(col("optional_str").is_null(0));
        assert_eq!(col("optional_int").as_primitive::<Int64Type>().value(0), 21);
        assert!(col("optional_nested").is_null(0));
        assert_eq!(
            col("annotated_int32").as_primitive::<Int32Type>().value(0),
            7
        );
        assert_eq!(
            col("annotated_float32")
                .as_primitive::<Float32Type>()
                .value(0),
            (7.0f64 / 3.0) as f32
        );
        let nested = col("nested_list");
        let outer = nested.as_list::<i32>();
        assert_eq!(outer.value_length(0), 2);
        // Seed 0: even, the optional string and nested point present, int absent; PENDING.
        let b = rich_header(&schema, 0).unwrap();
        assert!(b.column_by_name("optional_int").unwrap().is_null(0));
        assert!(b.column_by_name("optional_nested").unwrap().is_valid(0));
        // Python's floored modulo for negative seeds.
        let b = rich_header(&schema, -1).unwrap();
        let bytes = b.column_by_name("bytes_field").unwrap().clone();
        assert_eq!(bytes.as_binary::<i32>().value(0), &[255, 0, 1]);
        assert!(rich_header(&schema, i64::MAX).is_err());
    }

    #[test]
    fn conformance_header_has_the_two_fields() {
        let c = Catalog::load().unwrap();
        let m = c
            .protocol(PRIMARY)
            .unwrap()
            .method("produce_with_header")
            .unwrap();
        let schema = m.header.as_ref().unwrap().1.clone();
        let b = conformance_header(&schema, 3, "producing 3 batches").unwrap();
        assert_eq!(b.num_rows(), 1);
        assert_eq!(
            b.column(1).as_string::<i32>().value(0),
            "producing 3 batches"
        );
    }
}
