//! `vgi_rpc.Reflection.v1` over real HTTP: `list_protocols` and `describe` through
//! `spillway::client::Client`, decoded and checked field by field, with protocol hashes
//! computed by the Python reference (vgi_rpc 0.52.2) for the same schemas.

use std::sync::Arc;

use arrow_array::{
    Array, BinaryArray, BooleanArray, Int64Array, ListArray, RecordBatch, StringArray, StructArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use spillway::server::{
    empty_schema, Protocol, Server, ServerConfig, StreamMethod, StreamStart, TurnOutput,
};
use spillway::wire::{read_stream, ReadLimits};
use spillway::Error;

use crate::common::*;

/// `sha256("vgi_rpc.protocol_hash.v1|" + canonical JSON)` of [`test_protocol`], from the
/// Python reference's `_protocol_hash` over the same pyarrow schemas.
const TEST_PROTOCOL_HASH: &str = "2d8fb94e4b0acf38780d5c3acc1142227230cbe8af9a689e46bc14c3bf23051a";
/// Reflection's own hash, as the Python reference reports it.
const REFLECTION_HASH: &str = "3c7db4cae8cdfc93dc4a76e73b8b759e18e45e6a5811adba4e520366344b919a";
const REFLECTION: &str = "vgi_rpc.Reflection.v1";

fn schema(fields: Vec<Field>) -> SchemaRef {
    Arc::new(Schema::new(fields))
}

fn test_protocol() -> Protocol {
    let result = schema(vec![Field::new("result", DataType::Int64, false)]);
    let header = schema(vec![Field::new("total", DataType::Int64, false)]);
    let tick = StreamMethod::producer(
        schema(vec![Field::new("count", DataType::Int32, false)]),
        schema(vec![Field::new("i", DataType::Int64, false)]),
        |_ctx, _params| async move { Ok(StreamStart::default()) },
        |_ctx, _turn| async move {
            Ok(TurnOutput {
                finished: true,
                ..Default::default()
            })
        },
    )
    .with_header(header);
    let r = result.clone();
    Protocol::new("test.Reflect.v1")
        .unwrap()
        .with_version("1.2.3")
        .unwrap()
        .unary(
            "add",
            schema(vec![
                Field::new("a", DataType::Int64, false),
                Field::new("b", DataType::Int64, true),
            ]),
            result,
            move |_ctx, _b| {
                let r = r.clone();
                async move {
                    Ok(RecordBatch::try_new(r, vec![Arc::new(Int64Array::from(vec![0]))]).unwrap())
                }
            },
        )
        .unary(
            "noop",
            empty_schema(),
            empty_schema(),
            |_ctx, _b| async move { Ok(RecordBatch::new_empty(empty_schema())) },
        )
        .stream("tick", tick)
}

/// A second protocol registered after the first, whose name sorts before it: the listing
/// must keep registration order.
fn other_protocol() -> Protocol {
    Protocol::new("a.Other.v1").unwrap().unary(
        "noop",
        empty_schema(),
        empty_schema(),
        |_ctx, _b| async move { Ok(RecordBatch::new_empty(empty_schema())) },
    )
}

async fn start(reflection: bool) -> TestServer {
    let server = Server::new(ServerConfig {
        server_id: "refltest".into(),
        ..ServerConfig::default()
    })
    .with_protocol(test_protocol())
    .with_protocol(other_protocol())
    .with_reflection(reflection);
    TestServer::start_server(server).await
}

fn describe_params(protocol: &str) -> RecordBatch {
    RecordBatch::try_new(
        schema(vec![Field::new("protocol", DataType::Utf8, false)]),
        vec![Arc::new(StringArray::from(vec![protocol]))],
    )
    .unwrap()
}

/// The nested one-row IPC stream inside `result: binary`.
fn nested(result: &RecordBatch) -> RecordBatch {
    assert_eq!(result.schema().field(0).name(), "result");
    assert_eq!(result.schema().field(0).data_type(), &DataType::Binary);
    let bytes = binary_value(result);
    let stream = read_stream(Bytes::from(bytes), ReadLimits::default()).unwrap();
    assert_eq!(stream.batches.len(), 1);
    let batch = stream.batches[0].batch.clone();
    assert_eq!(batch.num_rows(), 1);
    batch
}

fn strings(a: &dyn Array) -> Vec<String> {
    let a = a.as_any().downcast_ref::<StringArray>().unwrap();
    a.iter().map(|v| v.unwrap().to_string()).collect()
}

fn bools(a: &dyn Array) -> Vec<bool> {
    let a = a.as_any().downcast_ref::<BooleanArray>().unwrap();
    a.iter().map(|v| v.unwrap()).collect()
}

fn col<'a>(s: &'a StructArray, name: &str) -> &'a dyn Array {
    s.column_by_name(name).unwrap().as_ref()
}

/// The struct rows of the one-row list column `name`.
fn list_rows(batch: &RecordBatch, name: &str) -> StructArray {
    let list = batch
        .column_by_name(name)
        .unwrap()
        .as_any()
        .downcast_ref::<ListArray>()
        .unwrap();
    list.value(0)
        .as_any()
        .downcast_ref::<StructArray>()
        .unwrap()
        .clone()
}

fn decode_schema(ipc: &[u8]) -> Schema {
    let mut stream = ipc.to_vec();
    stream.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    let reader =
        arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(stream), None).unwrap();
    reader.schema().as_ref().clone()
}

#[tokio::test]
async fn list_protocols_names_versions_and_hashes() {
    let s = start(true).await;
    let out = s
        .client()
        .call(REFLECTION, "list_protocols", no_params())
        .await
        .unwrap();
    let list = nested(&out.batch);
    assert_eq!(
        strings(list.column_by_name("server_id").unwrap()),
        ["refltest"]
    );
    assert_eq!(
        strings(list.column_by_name("request_version").unwrap()),
        ["1"]
    );
    let protocols = list_rows(&list, "protocols");
    assert_eq!(
        strings(col(&protocols, "protocol")),
        ["test.Reflect.v1", "a.Other.v1", REFLECTION],
        "registration order, primary first, reflection last"
    );
    assert_eq!(
        strings(col(&protocols, "protocol_version")),
        ["1.2.3", "", ""]
    );
    let hashes = strings(col(&protocols, "protocol_hash"));
    assert_eq!(hashes[0], TEST_PROTOCOL_HASH);
    assert_eq!(hashes[2], REFLECTION_HASH);
    assert_eq!(bools(col(&protocols, "deprecated")), [false; 3]);
    let features = col(&protocols, "features")
        .as_any()
        .downcast_ref::<ListArray>()
        .unwrap();
    assert!((0..3).all(|i| features.value(i).is_empty()));
}

#[tokio::test]
async fn describe_reports_every_method() {
    let s = start(true).await;
    let out = s
        .client()
        .call(REFLECTION, "describe", describe_params("test.Reflect.v1"))
        .await
        .unwrap();
    let d = nested(&out.batch);
    assert_eq!(
        strings(d.column_by_name("protocol").unwrap()),
        ["test.Reflect.v1"]
    );
    assert_eq!(
        strings(d.column_by_name("protocol_version").unwrap()),
        ["1.2.3"]
    );
    assert_eq!(
        strings(d.column_by_name("protocol_hash").unwrap()),
        [TEST_PROTOCOL_HASH]
    );
    let m = list_rows(&d, "methods");
    assert_eq!(strings(col(&m, "name")), ["add", "noop", "tick"]);
    assert_eq!(
        strings(col(&m, "method_type")),
        ["unary", "unary", "stream"]
    );
    assert_eq!(bools(col(&m, "has_return")), [true, false, false]);
    assert_eq!(bools(col(&m, "has_header")), [false, false, true]);
    assert_eq!(strings(col(&m, "stream_kind")), ["", "", "producer"]);
    assert_eq!(strings(col(&m, "idempotency")), ["unknown"; 3]);
    let bin = |name| {
        col(&m, name)
            .as_any()
            .downcast_ref::<BinaryArray>()
            .unwrap()
            .clone()
    };
    let (params, results, headers) = (
        bin("params_schema_ipc"),
        bin("result_schema_ipc"),
        bin("header_schema_ipc"),
    );
    let add_params = decode_schema(params.value(0));
    assert_eq!(add_params.field(1).name(), "b");
    assert!(add_params.field(1).is_nullable());
    assert_eq!(decode_schema(results.value(0)).field(0).name(), "result");
    // Parameterless: the empty schema, not empty bytes; absent results/headers: empty bytes.
    assert!(decode_schema(params.value(1)).fields().is_empty());
    assert!(results.value(1).is_empty() && results.value(2).is_empty());
    assert!(headers.value(0).is_empty());
    assert_eq!(decode_schema(headers.value(2)).field(0).name(), "total");
}

#[tokio::test]
async fn describe_answers_for_reflection_itself() {
    let s = start(true).await;
    let out = s
        .client()
        .call(REFLECTION, "describe", describe_params(REFLECTION))
        .await
        .unwrap();
    let d = nested(&out.batch);
    assert_eq!(
        strings(d.column_by_name("protocol_hash").unwrap()),
        [REFLECTION_HASH]
    );
    let m = list_rows(&d, "methods");
    assert_eq!(strings(col(&m, "name")), ["describe", "list_protocols"]);
}

#[tokio::test]
async fn describe_of_an_unhosted_protocol_is_unimplemented() {
    let s = start(true).await;
    let err = s
        .client()
        .call(REFLECTION, "describe", describe_params("nope.Missing.v1"))
        .await
        .unwrap_err();
    let Error::Rpc(e) = err else {
        panic!("expected an RPC error, got {err:?}")
    };
    assert_eq!(e.error_type, "ProtocolNotSupportedError");
    assert_eq!(e.kind.as_deref(), Some("protocol_not_supported"));
    assert_eq!(e.code.as_str(), "UNIMPLEMENTED");
    assert!(e.message.contains("nope.Missing.v1"), "{}", e.message);
}

#[tokio::test]
async fn reflection_is_off_unless_enabled() {
    let s = start(false).await;
    let err = s
        .client()
        .call(REFLECTION, "list_protocols", no_params())
        .await
        .unwrap_err();
    let Error::Rpc(e) = err else {
        panic!("expected an RPC error, got {err:?}")
    };
    assert_eq!(e.kind.as_deref(), Some("protocol_not_supported"));
}
