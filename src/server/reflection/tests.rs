//! Reflection against the reference's pinned tokens, hashes and encodings.
use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, IntervalUnit, Schema, TimeUnit};

use super::encode::schema_ipc;
use super::hash::{
    canonical_description, field_type_token, protocol_hash, type_token, Json, EXTENSION_NAME_KEY,
};
use super::shapes::{reflection_shapes, MethodShape, ShapeKind};
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
