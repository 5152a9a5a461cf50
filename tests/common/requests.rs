//! Request and result helpers: demo parameters, raw Arrow POSTs, error and pointer requests.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::{BinaryArray, Int64Array, RecordBatch, RecordBatchOptions};
use arrow_schema::{Schema, SchemaRef};
use spillway::client::{CallOutput, Client};
use spillway::demo;
use spillway::wire::{
    keys, pointer_batch, write_stream, MetaBatch, Metadata, ARROW_STREAM_CONTENT_TYPE,
};
use spillway_storage::{ObjectKey, PresignMethod, PresignedUrl, PutOptions, Storage};

use super::TestServer;

/// The parameters of the demo's `blob(size)`.
pub(crate) fn size_params(size: i64) -> RecordBatch {
    RecordBatch::try_new(
        demo::blob_params(),
        vec![Arc::new(Int64Array::from(vec![size]))],
    )
    .unwrap()
}

/// The parameters of the demo's `echo(data)`.
pub(crate) fn data_params(data: &[u8]) -> RecordBatch {
    RecordBatch::try_new(
        demo::echo_params(),
        vec![Arc::new(BinaryArray::from_vec(vec![data]))],
    )
    .unwrap()
}

/// A batch of no columns and no rows: the parameters of a method that takes none.
pub(crate) fn no_params() -> RecordBatch {
    RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &RecordBatchOptions::new().with_row_count(Some(0)),
    )
    .unwrap()
}

/// The first value of a batch's first (binary) column.
pub(crate) fn binary_value(batch: &RecordBatch) -> Vec<u8> {
    batch
        .column(0)
        .as_any()
        .downcast_ref::<BinaryArray>()
        .unwrap()
        .value(0)
        .to_vec()
}

/// Request metadata for a demo method.
pub(crate) fn request_md(method: &str) -> Metadata {
    let mut md = Metadata::new();
    md.insert(keys::METHOD.into(), method.into());
    md.insert(keys::REQUEST_VERSION.into(), "1".into());
    md.insert(keys::PROTOCOL.into(), demo::PROTOCOL.into());
    md
}

/// An encoded request body.
pub(crate) fn request_body(schema: &SchemaRef, batch: RecordBatch, md: Metadata) -> Vec<u8> {
    write_stream(
        schema,
        &[MetaBatch {
            batch,
            metadata: md,
        }],
    )
    .unwrap()
}

/// The encoded request of the demo's `echo(data)`.
pub(crate) fn echo_body(data: &[u8]) -> Vec<u8> {
    request_body(&demo::echo_params(), data_params(data), request_md("echo"))
}

/// The encoded request of the demo's `blob(size)`.
pub(crate) fn blob_body(size: i64) -> Vec<u8> {
    request_body(&demo::blob_params(), size_params(size), request_md("blob"))
}

/// POSTs raw bytes with the Arrow content type.
pub(crate) async fn post_raw(url: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("content-type", ARROW_STREAM_CONTENT_TYPE)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Sends `request` and returns its status.
pub(crate) async fn status_of(request: reqwest::RequestBuilder) -> reqwest::StatusCode {
    request.send().await.unwrap().status()
}

/// Sends `request` and returns its body, whatever the status.
pub(crate) async fn body_of(request: reqwest::RequestBuilder) -> bytes::Bytes {
    request.send().await.unwrap().bytes().await.unwrap()
}

/// Sends `request` and returns its body as text, whatever the status.
pub(crate) async fn text_of(request: reqwest::RequestBuilder) -> String {
    request.send().await.unwrap().text().await.unwrap()
}

/// Reads the single EXCEPTION of an error response.
pub(crate) async fn error_of(resp: reqwest::Response) -> spillway::wire::RpcError {
    let bytes = resp.bytes().await.unwrap();
    let stream = spillway::wire::read_stream(bytes, Default::default()).unwrap();
    let b = stream
        .batches
        .iter()
        .find(|b| b.metadata.get(keys::LOG_LEVEL).map(String::as_str) == Some("EXCEPTION"))
        .expect("an EXCEPTION batch");
    spillway::wire::RpcError::from_metadata(&b.metadata)
}

/// Sends the demo's `echo` a request pointer naming `location` (with an optional sha256).
pub(crate) async fn post_pointer(
    s: &TestServer,
    location: &str,
    sha: Option<&str>,
) -> reqwest::Response {
    let mut p = pointer_batch(&demo::echo_params(), location, sha);
    p.metadata.extend(request_md("echo"));
    let body = write_stream(&demo::echo_params(), &[p]).unwrap();
    s.post(demo::PROTOCOL, "echo", body).await
}

/// The text of a refused request pointer's answer (200 with `X-VGI-RPC-Error`), checked to
/// leak no `signature_param` (e.g. `X-Goog-Signature=`).
pub(crate) async fn refused_text(resp: reqwest::Response, signature_param: &str) -> String {
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-vgi-rpc-error"], "true");
    let text = String::from_utf8_lossy(&resp.bytes().await.unwrap()).to_string();
    assert!(!text.contains(signature_param), "signature leaked: {text}");
    text
}

/// A presigned URL of `key`, valid for `secs` seconds.
pub(crate) async fn presigned<S: Storage + ?Sized>(
    store: &S,
    key: &ObjectKey,
    method: PresignMethod,
    secs: u64,
) -> PresignedUrl {
    store
        .presign(key, method, Duration::from_secs(secs))
        .await
        .unwrap()
}

/// Calls the demo's `echo(data)` through `client`; the result must be `data`.
pub(crate) async fn echo(client: &Client, data: &[u8]) -> CallOutput {
    let out = client
        .call(demo::PROTOCOL, "echo", data_params(data))
        .await
        .unwrap();
    assert!(binary_value(&out.batch) == data, "echoed bytes differ");
    out
}

/// Calls the demo's `blob(size)` through `client`; the result must have `size` bytes.
pub(crate) async fn blob(client: &Client, size: i64) -> CallOutput {
    let out = client
        .call(demo::PROTOCOL, "blob", size_params(size))
        .await
        .unwrap();
    assert_eq!(binary_value(&out.batch).len() as i64, size);
    out
}

/// The demo's `blob(size)` still answers with `size` bytes: the server kept serving.
pub(crate) async fn assert_serves(s: &TestServer, size: i64) {
    blob(&s.client(), size).await;
}

/// Stores `body` under a new key of `store`.
pub(crate) async fn put_new<S: Storage + ?Sized>(store: &S, body: Vec<u8>) -> ObjectKey {
    let key = store.new_key();
    store
        .put(&key, body.into(), PutOptions::default())
        .await
        .unwrap();
    key
}

/// One `Int64` column `name` of `values`.
pub(crate) fn int64_batch(name: &str, nullable: bool, values: Vec<i64>) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![arrow_schema::Field::new(
        name,
        arrow_schema::DataType::Int64,
        nullable,
    )]));
    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values))]).unwrap()
}

/// The value of the query parameter `name` of `url`.
///
/// # Panics
/// When `url` has no such parameter.
pub(crate) fn query_param(url: &url::Url, name: &str) -> String {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no {name} in the url"))
        .1
        .into_owned()
}

/// A fetcher with default settings that may fetch from 127.0.0.1 (the test servers).
pub(crate) fn local_fetcher() -> spillway::fetch::Fetcher {
    spillway::fetch::Fetcher::new(spillway::fetch::FetchConfig {
        policy: spillway::url_policy::UrlPolicy::local_testing(),
        ..Default::default()
    })
    .unwrap()
}
