//! Byte-level compatibility: captures of the Python reference (vgi-rpc 0.52.2) read by our
//! wire module, and our encodings of the same batches read back identically.

use std::time::Duration;

use arrow_array::{Array, StringArray};
use arrow_schema::{DataType, TimeUnit};
use bytes::Bytes;
use spillway::object::{resolve_object, sha256_hex};
use spillway::wire::{
    classify, keys, read_stream, write_stream, BatchKind, MetaBatch, ReadLimits, RpcError,
};

fn vector(name: &str) -> Bytes {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

fn strings(b: &MetaBatch, col: usize) -> Vec<String> {
    let a = b
        .batch
        .column(col)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    (0..a.len()).map(|i| a.value(i).to_string()).collect()
}

#[test]
fn request_metadata_rides_on_the_batch_message() {
    let s = read_stream(
        vector("01_unary_echo_string.request.arrows"),
        ReadLimits::default(),
    )
    .unwrap();
    assert_eq!(s.schema.fields().len(), 1);
    assert!(!s.schema.field(0).is_nullable());
    let b = &s.batches[0];
    assert_eq!(b.metadata[keys::METHOD], "echo_string");
    assert_eq!(b.metadata[keys::REQUEST_VERSION], "1");
    assert_eq!(b.metadata[keys::PROTOCOL], "ConformanceService");
    assert_eq!(b.metadata[keys::PROTOCOL_VERSION], "2.0.0");
    assert_eq!(strings(b, 0), vec!["hello"]);
    // Our encoding of the same batch and metadata reads back the same.
    let ours = write_stream(&s.schema, &s.batches).unwrap();
    let again = read_stream(Bytes::from(ours), ReadLimits::default()).unwrap();
    assert_eq!(again.batches[0].batch, b.batch);
    assert_eq!(again.batches[0].metadata, b.metadata);
}

#[test]
fn responses_errors_and_void() {
    let s = read_stream(
        vector("01_unary_echo_string.response.arrows"),
        ReadLimits::default(),
    )
    .unwrap();
    assert!(s.batches[0].metadata.is_empty());
    assert_eq!(
        classify(&s.batches[0].batch, &s.batches[0].metadata),
        BatchKind::Data
    );

    let e = read_stream(
        vector("02_unary_error.response.arrows"),
        ReadLimits::default(),
    )
    .unwrap();
    let b = &e.batches[0];
    assert_eq!(classify(&b.batch, &b.metadata), BatchKind::Error);
    let err = RpcError::from_metadata(&b.metadata);
    assert_eq!(err.error_type, "ValueError");
    assert_eq!(err.message, "boom");

    let v = read_stream(
        vector("03_void_noop.response.arrows"),
        ReadLimits::default(),
    )
    .unwrap();
    assert_eq!(v.schema.fields().len(), 0);
    assert_eq!(v.batches[0].batch.num_rows(), 0);
    let r = read_stream(vector("03_void_noop.request.arrows"), ReadLimits::default()).unwrap();
    assert_eq!(r.batches[0].metadata[keys::METHOD], "void_noop");
}

#[test]
fn pointer_and_object_match_by_sha256() {
    let p = read_stream(
        vector("04_pointer_echo_string.response.arrows"),
        ReadLimits::default(),
    )
    .unwrap();
    let pointer = &p.batches[0];
    assert_eq!(
        classify(&pointer.batch, &pointer.metadata),
        BatchKind::Pointer
    );
    let object = vector("04_pointer_echo_string.object.arrows");
    let sha = &pointer.metadata[keys::LOCATION_SHA256];
    assert_eq!(&sha256_hex(&object), sha);
    // The object is byte-identical to the inline response (spec §5.2).
    assert_eq!(object, vector("01_unary_echo_string.response.arrows"));
    let resolved = resolve_object(
        object,
        &p.schema,
        Some(sha),
        &pointer.metadata[keys::LOCATION],
        Duration::from_millis(1),
    )
    .unwrap();
    assert_eq!(strings(&resolved.batch, 0), vec!["hello"]);
}

#[test]
fn upload_flow_captures() {
    let r = read_stream(
        vector("05b_upload_url_init.request.arrows"),
        ReadLimits::default(),
    )
    .unwrap();
    assert_eq!(r.batches[0].metadata[keys::METHOD], "__upload_url__");
    assert!(!r.batches[0].metadata.contains_key(keys::PROTOCOL));
    let resp = read_stream(
        vector("05b_upload_url_init.response.arrows"),
        ReadLimits::default(),
    )
    .unwrap();
    assert_eq!(
        resp.schema.field(2).data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    // Our upload-URL schema is the reference's.
    let ours = spillway::server::upload_url_schema();
    assert!(spillway::wire::schemas_equal(&ours, &resp.schema));
    let ptr = read_stream(
        vector("05d_request_pointer.request.arrows"),
        ReadLimits::default(),
    )
    .unwrap();
    let b = &ptr.batches[0];
    assert_eq!(classify(&b.batch, &b.metadata), BatchKind::Pointer);
    assert!(!b.metadata.contains_key(keys::LOCATION_SHA256));
    let obj = read_stream(
        vector("05c_uploaded_request.object.arrows"),
        ReadLimits::default(),
    )
    .unwrap();
    assert_eq!(obj.batches[0].metadata[keys::METHOD], "echo_string");
}
