//! End-to-end: `spillway serve`'s configuration, in-process, over real HTTP on 127.0.0.1.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arrow_array::{Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};

use crate::common::*;
use spillway::client::ClientConfig;
use spillway::demo;
use spillway::wire::{keys, read_stream, MetaBatch};
use spillway_storage::{ObjectKey, PresignMethod, PutOptions, Storage};

const KIB: usize = 1024;

#[tokio::test]
async fn small_result_is_inline() {
    let s = TestServer::start(&[]).await;
    let out = s
        .client()
        .call(demo::PROTOCOL, "blob", size_params(100))
        .await
        .unwrap();
    assert!(out.externalized.is_none());
    assert_eq!(binary_value(&out.batch).len(), 100);
    assert_eq!(s.object_count(), 0);
}

#[tokio::test]
async fn result_at_threshold_comes_back_as_pointer_and_resolves_identically() {
    let s = TestServer::start(&["--threshold-bytes", "65536"]).await;
    // A binary of N bytes has N + 8 bytes of buffers: N = threshold - 8 is exactly at it.
    let data: Vec<u8> = (0..65536 - 8).map(|i| (i * 7 % 251) as u8).collect();
    let out = s
        .client()
        .call(demo::PROTOCOL, "echo", data_params(&data))
        .await
        .unwrap();
    let ext = out.externalized.as_ref().expect("externalized");
    assert_eq!(binary_value(&out.batch), data);
    assert!(!ext.url.contains('?'), "redacted url: {}", ext.url);
    assert!(out.metadata.contains_key(keys::LOCATION_FETCH_MS));
    assert!(out.metadata.contains_key(keys::LOCATION_SOURCE));
    // One below the threshold stays inline.
    let out = s
        .client()
        .call(demo::PROTOCOL, "echo", data_params(&data[1..]))
        .await
        .unwrap();
    assert!(out.externalized.is_none());

    // On the wire: a zero-row pointer on the result schema, location + lowercase sha256 only.
    let body = echo_body(&data);
    let resp = s.post(demo::PROTOCOL, "echo", body).await;
    assert_eq!(resp.status(), 200);
    let stream = read_stream(resp.bytes().await.unwrap(), Default::default()).unwrap();
    assert_eq!(stream.batches.len(), 1);
    let p = &stream.batches[0];
    assert_eq!(p.batch.num_rows(), 0);
    assert_eq!(p.batch.schema(), demo::binary_result());
    let keys_present: Vec<_> = p.metadata.keys().cloned().collect();
    assert_eq!(keys_present, vec![keys::LOCATION, keys::LOCATION_SHA256]);
    let sha = &p.metadata[keys::LOCATION_SHA256];
    assert_eq!(sha.len(), 64);
    assert_eq!(sha, &sha.to_ascii_lowercase());
}

async fn stored_encoding(s: &TestServer) -> (Option<String>, u64, usize) {
    let data = vec![b'a'; 512 * KIB];
    let body = echo_body(&data);
    let resp = s.post(demo::PROTOCOL, "echo", body).await;
    let stream = read_stream(resp.bytes().await.unwrap(), Default::default()).unwrap();
    let url = stream.batches[0].metadata[keys::LOCATION].clone();
    let head = reqwest::Client::new().head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let enc = head
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_string());
    let len: u64 = head.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    echo(&s.client(), &data).await;
    (enc, len, data.len())
}

#[tokio::test]
async fn zstd_objects_are_compressed_and_marked() {
    let s = TestServer::start(&["--threshold-bytes", "4096", "--compression", "zstd:5"]).await;
    let (enc, stored, raw) = stored_encoding(&s).await;
    assert_eq!(enc.as_deref(), Some("zstd"));
    assert!(stored < raw as u64 / 10, "{stored} vs {raw}");
}

#[tokio::test]
async fn uncompressed_objects_have_no_encoding() {
    let s = TestServer::start(&["--threshold-bytes", "4096", "--compression", "none"]).await;
    let (enc, stored, raw) = stored_encoding(&s).await;
    assert_eq!(enc, None);
    assert!(stored > raw as u64);
}

#[tokio::test]
async fn large_request_goes_through_upload_urls() {
    let s = TestServer::start(&["--max-request-bytes", "65536"]).await;
    let data: Vec<u8> = (0..300 * KIB).map(|i| (i % 253) as u8).collect();
    // Raw POST: 413 with the protocol's JSON body.
    let body = echo_body(&data);
    let resp = s.post(demo::PROTOCOL, "echo", body).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["vgi-max-request-bytes"], "65536");
    let json: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert!(json["description"]
        .as_str()
        .unwrap()
        .contains("__upload_url__"));
    // The client falls back to the upload-URL flow, uncompressed so the pre-flight applies.
    let client = s.client_with(ClientConfig {
        request_compression: None,
        ..ClientConfig::default()
    });
    let before = s.object_count();
    echo(&client, &data).await;
    assert!(s.object_count() > before, "the request was uploaded");
}

#[tokio::test]
async fn upload_url_pairs_are_method_bound_and_clamped() {
    let s = TestServer::start(&[]).await;
    let client = s.client();
    // The server clamps the count to 1..=100.
    for (asked, got) in [(500i64, 100usize), (0, 1), (-3, 1), (7, 7)] {
        let batch = int64_batch("count", true, vec![asked]);
        let mut md = spillway::wire::Metadata::new();
        md.insert(keys::METHOD.into(), "__upload_url__".into());
        md.insert(keys::REQUEST_VERSION.into(), "1".into());
        let resp = post_raw(
            &format!("{}/__upload_url__/init", s.base),
            request_body(&batch.schema(), batch, md),
        )
        .await;
        assert_eq!(resp.status(), 200);
        let stream = read_stream(resp.bytes().await.unwrap(), Default::default()).unwrap();
        assert_eq!(
            stream.batches.last().unwrap().batch.num_rows(),
            got,
            "count {asked}"
        );
    }
    let pairs = client.request_upload_urls(1).await.unwrap();
    assert_eq!(pairs.len(), 1);
    let pair = &pairs[0];
    assert_ne!(pair.upload_url, pair.download_url);
    let http = reqwest::Client::new();
    assert_eq!(status_of(http.get(&pair.upload_url)).await, 403);
    assert_eq!(status_of(http.put(&pair.download_url).body("x")).await, 403);
    let put = http
        .put(&pair.upload_url)
        .body("payload")
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let got = http.get(&pair.download_url).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap(), "payload");
}

#[tokio::test]
async fn capabilities_are_on_every_response() {
    let s = TestServer::start(&["--max-externalized-response-bytes", "1000000"]).await;
    let caps = s.client().capabilities().await.unwrap();
    assert!(caps.accept_max_response_bytes_support);
    assert!(caps.externalization_enabled);
    assert!(caps.upload_url_support);
    assert_eq!(caps.max_request_bytes, Some(4 * 1024 * 1024));
    assert_eq!(caps.max_externalized_response_bytes, Some(1_000_000));
    let http = reqwest::Client::new();
    let opt = http
        .request(reqwest::Method::OPTIONS, format!("{}/health", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(opt.headers()["cache-control"], "public, max-age=300");
    assert_eq!(opt.headers()["allow"], "GET, HEAD");
    let health = body_of(http.get(format!("{}/health", s.base))).await;
    let health: serde_json::Value = serde_json::from_slice(&health).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["protocol"], demo::PROTOCOL);
    // Errors carry them too, and a request id is echoed.
    let resp = http
        .post(format!("{}/nope/x", s.base))
        .header("x-request-id", "abc123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.headers()["vgi-accept-max-response-bytes-support"],
        "true"
    );
    assert_eq!(resp.headers()["x-request-id"], "abc123");
}

#[tokio::test]
async fn prefix_mounts_every_route() {
    let s = TestServer::start(&["--prefix", "/vgi", "--threshold-bytes", "4096"]).await;
    assert!(s.base.ends_with("/vgi"));
    let out = s
        .client()
        .call(demo::PROTOCOL, "blob", size_params(10_000))
        .await
        .unwrap();
    assert!(out.externalized.unwrap().url.contains("/vgi/__storage__/"));
    let root = reqwest::get(format!("{}/health", s.origin()))
        .await
        .unwrap();
    assert_eq!(root.status(), 404);
}

#[tokio::test]
async fn externalized_cap_is_enforced() {
    let s = TestServer::start(&[
        "--threshold-bytes",
        "4096",
        "--max-externalized-response-bytes",
        "65536",
    ])
    .await;
    let err = s
        .client()
        .call(demo::PROTOCOL, "blob", size_params(100_000))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("max_externalized_response_bytes"),
        "{err}"
    );
    // Under the cap still externalizes.
    let out = s
        .client()
        .call(demo::PROTOCOL, "blob", size_params(30_000))
        .await
        .unwrap();
    assert!(out.externalized.is_some());
}

#[tokio::test]
async fn client_response_budget_is_parsed_and_honoured() {
    let s = TestServer::start(&["--threshold-bytes", "10000000"]).await;
    let url = format!("{}/{}/blob", s.base, demo::PROTOCOL);
    for bad in ["abc", "0100000", "1000", "-5", "9007199254740992", ""] {
        let resp = reqwest::Client::new()
            .post(&url)
            .header("content-type", spillway::wire::ARROW_STREAM_CONTENT_TYPE)
            .header("vgi-accept-max-response-bytes", bad)
            .body(blob_body(1))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad:?}");
    }
    // A 200 KiB result with a 64 KiB budget: too big inline, so it is externalized.
    let resp = reqwest::Client::new()
        .post(&url)
        .header("content-type", spillway::wire::ARROW_STREAM_CONTENT_TYPE)
        .header("vgi-accept-max-response-bytes", "65536")
        .body(blob_body(200_000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let stream = read_stream(resp.bytes().await.unwrap(), Default::default()).unwrap();
    // The demo logs a line first; the pointer is the last batch.
    assert!(stream
        .batches
        .last()
        .unwrap()
        .metadata
        .contains_key(keys::LOCATION));
}

/// Every bad input gets its status, and the server answers the next request.
#[tokio::test]
async fn bad_inputs_get_their_status_and_the_server_keeps_serving() {
    let s = TestServer::start(&["--max-request-bytes", "65536"]).await;
    let url = format!("{}/{}/blob", s.base, demo::PROTOCOL);
    let good = || blob_body(5);
    let http = reqwest::Client::new();

    let check_alive = || assert_serves(&s, 3);

    // Malformed and truncated IPC.
    let resp = post_raw(&url, b"definitely not arrow".to_vec()).await;
    assert_eq!(resp.status(), 400);
    assert!(error_of(resp).await.message.contains("Malformed request"));
    let mut truncated = good();
    truncated.truncate(truncated.len() / 2);
    assert_eq!(post_raw(&url, truncated).await.status(), 400);
    check_alive().await;

    // Wrong content type (even with a parameter) → 415.
    for ct in [
        "application/json",
        "application/vnd.apache.arrow.stream; charset=x",
    ] {
        let resp = http
            .post(&url)
            .header("content-type", ct)
            .body(good())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 415, "{ct}");
    }

    // Oversized body by Content-Length, and chunked without a length.
    let big = vec![0u8; 70_000];
    let resp = post_raw(&url, big.clone()).await;
    assert_eq!(resp.status(), 413);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(big[..40_000].to_vec()), Ok(big[40_000..].to_vec())];
    let resp = http
        .post(&url)
        .header("content-type", spillway::wire::ARROW_STREAM_CONTENT_TYPE)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    check_alive().await;

    // A zstd bomb: 64 MiB of zeros in a few KiB.
    let bomb = zstd::bulk::compress(&vec![0u8; 64 * 1024 * 1024], 19).unwrap();
    assert!(bomb.len() < 65536);
    let resp = http
        .post(&url)
        .header("content-type", spillway::wire::ARROW_STREAM_CONTENT_TYPE)
        .header("content-encoding", "zstd")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    // A compressed body that is fine is accepted; an unknown encoding is 415.
    let resp = http
        .post(&url)
        .header("content-type", spillway::wire::ARROW_STREAM_CONTENT_TYPE)
        .header("content-encoding", "zstd")
        .body(zstd::bulk::compress(&good(), 1).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = http
        .post(&url)
        .header("content-type", spillway::wire::ARROW_STREAM_CONTENT_TYPE)
        .header("content-encoding", "br")
        .body(good())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);

    // Unknown protocol and method → 404 with Arrow errors.
    let resp = post_raw(&format!("{}/no.such.Proto/blob", s.base), good()).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(
        error_of(resp).await.kind.as_deref(),
        Some("protocol_not_supported")
    );
    let resp = post_raw(&format!("{}/{}/nope", s.base, demo::PROTOCOL), good()).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(
        error_of(resp).await.kind.as_deref(),
        Some("method_not_implemented")
    );
    let resp = post_raw(&format!("{}/spillway%2EDemo.v1/blob", s.base), good()).await;
    assert_eq!(resp.status(), 404);

    // Wrong parameter type, nullability, name; wrong method metadata; row count.
    let as_string = Arc::new(Schema::new(vec![Field::new("size", DataType::Utf8, false)]));
    let b = RecordBatch::try_new(
        as_string.clone(),
        vec![Arc::new(StringArray::from(vec!["5"]))],
    )
    .unwrap();
    let resp = post_raw(&url, request_body(&as_string, b, request_md("blob"))).await;
    assert_eq!(resp.status(), 400);
    assert!(error_of(resp).await.message.contains("expected type Int64"));
    let nullable = Arc::new(Schema::new(vec![Field::new("size", DataType::Int64, true)]));
    let b =
        RecordBatch::try_new(nullable.clone(), vec![Arc::new(Int64Array::from(vec![5]))]).unwrap();
    let resp = post_raw(&url, request_body(&nullable, b, request_md("blob"))).await;
    assert_eq!(resp.status(), 400);
    assert!(error_of(resp)
        .await
        .message
        .contains("expected nullable=False, but the request batch carried nullable=True"));
    let resp = post_raw(
        &url,
        request_body(&demo::blob_params(), size_params(5), request_md("echo")),
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert!(error_of(resp)
        .await
        .message
        .contains("Method name mismatch"));
    let two = RecordBatch::try_new(
        demo::blob_params(),
        vec![Arc::new(Int64Array::from(vec![1, 2]))],
    )
    .unwrap();
    let resp = post_raw(
        &url,
        request_body(&demo::blob_params(), two, request_md("blob")),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let mut md = request_md("blob");
    md.insert(keys::REQUEST_VERSION.into(), "2".into());
    let resp = post_raw(&url, request_body(&demo::blob_params(), size_params(5), md)).await;
    assert_eq!(resp.status(), 400);
    let mut md = request_md("blob");
    md.insert(keys::PROTOCOL.into(), "other.Proto".into());
    let resp = post_raw(&url, request_body(&demo::blob_params(), size_params(5), md)).await;
    assert_eq!(resp.status(), 400);

    // A method error (negative size) is 200 + X-VGI-RPC-Error, never 5xx.
    let resp = post_raw(&url, blob_body(-1)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-vgi-rpc-error"], "true");
    assert_eq!(error_of(resp).await.error_type, "ValueError");
    check_alive().await;
}

#[tokio::test]
async fn request_pointers_are_resolved_only_from_own_storage() {
    let s = TestServer::start(&[]).await;
    let store = s.store.clone().unwrap();
    // A valid uploaded request resolves.
    let data = b"through the store".to_vec();
    let key = put_new(&*store, echo_body(&data)).await;
    let get = presigned(&*store, &key, PresignMethod::Get, 60).await;
    let resp = post_pointer(&s, get.url.as_str(), None).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-vgi-rpc-error").is_none());
    let stream = read_stream(resp.bytes().await.unwrap(), Default::default()).unwrap();
    assert_eq!(binary_value(&stream.batches[0].batch), data);

    let refused = |resp| refused_text(resp, "X-Spillway-Signature=");
    for foreign in [
        "https://example.com/obj?X-Amz-Signature=secret",
        "http://127.0.0.1:1/obj",
        "http://169.254.169.254/latest/meta-data/",
        &format!("{}/__storage__/../../etc/passwd", s.origin()),
        "not a url",
    ] {
        let text = refused(post_pointer(&s, foreign, None).await).await;
        assert!(text.contains("URL rejected"), "{foreign}: {text}");
        assert!(!text.contains("secret"));
    }
    // Wrong checksum.
    let text = refused(post_pointer(&s, get.url.as_str(), Some(&"ab".repeat(32))).await).await;
    assert!(text.contains("checksum"), "{text}");
    // Expired and tampered URLs.
    let expired = store
        .presign_until(
            &key,
            PresignMethod::Get,
            SystemTime::now() - Duration::from_secs(5),
        )
        .unwrap();
    let text = refused(post_pointer(&s, expired.url.as_str(), None).await).await;
    assert!(
        text.contains("URL rejected") && text.contains("expired"),
        "{text}"
    );
    let mut tampered = get.url.to_string();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    let text = refused(post_pointer(&s, &tampered, None).await).await;
    assert!(text.contains("URL rejected"), "{text}");
    // A PUT URL is not a download URL.
    let put = presigned(&*store, &key, PresignMethod::Put, 60).await;
    refused(post_pointer(&s, put.url.as_str(), None).await).await;
    // A missing object.
    let gone = presigned(
        &*store,
        &ObjectKey::parse("spillway/missing").unwrap(),
        PresignMethod::Get,
        60,
    )
    .await;
    refused(post_pointer(&s, gone.url.as_str(), None).await).await;
    // An object that is not a request on the params schema.
    let wrong = store.new_key();
    let other = blob_body(1);
    store
        .put(&wrong, other.into(), PutOptions::default())
        .await
        .unwrap();
    let wrong_url = presigned(&*store, &wrong, PresignMethod::Get, 60).await;
    let text = refused(post_pointer(&s, wrong_url.url.as_str(), None).await).await;
    assert!(text.contains("Schema mismatch"), "{text}");
    // And the server still serves.
    assert_serves(&s, 1).await;
}

#[tokio::test]
async fn storage_urls_refuse_tampering_expiry_and_traversal() {
    let s = TestServer::start(&["--threshold-bytes", "4096"]).await;
    let store = s.store.clone().unwrap();
    let body = blob_body(50_000);
    let resp = s.post(demo::PROTOCOL, "blob", body).await;
    let stream = read_stream(resp.bytes().await.unwrap(), Default::default()).unwrap();
    let url = stream.batches.last().unwrap().metadata[keys::LOCATION].clone();
    let http = reqwest::Client::new();
    assert_eq!(status_of(http.get(&url)).await, 200);
    let tampered = url.replace("X-Spillway-Expires=", "X-Spillway-Expires=9");
    let resp = http.get(&tampered).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(
        resp.bytes().await.unwrap().len() < 200,
        "no object bytes on 403"
    );
    let key = url::Url::parse(&url)
        .unwrap()
        .path()
        .trim_start_matches("/__storage__/")
        .to_string();
    let expired = store
        .presign_until(
            &ObjectKey::parse(&key).unwrap(),
            PresignMethod::Get,
            SystemTime::now() - Duration::from_secs(1),
        )
        .unwrap();
    assert_eq!(status_of(http.get(expired.url.as_str())).await, 403);
    for path in [
        "/__storage__/../../../etc/passwd",
        "/__storage__/%2e%2e/%2e%2e/etc/passwd",
        "/__storage__/spillway%2F..%2F..%2Fetc%2Fpasswd",
    ] {
        let resp = http
            .get(format!("{}{path}", s.origin()))
            .send()
            .await
            .unwrap();
        assert_ne!(resp.status(), 200, "{path}");
        let text = resp.text().await.unwrap();
        assert!(!text.contains("root:"), "{path}");
    }
    // The client surfaces a refused URL as a typed error, with no signature in it.
    let mut pointer = MetaBatch::plain(RecordBatch::new_empty(demo::binary_result()));
    pointer
        .metadata
        .insert(keys::LOCATION.into(), tampered.clone());
    let fetcher = local_fetcher();
    let err = fetcher.resolve(&pointer, None).await.unwrap_err();
    assert!(
        matches!(err, spillway::Error::HttpStatus { status: 403, .. }),
        "{err}"
    );
    assert!(!err.to_string().contains("Signature"), "{err}");
}

#[tokio::test]
async fn demo_blob_stream_externalizes_each_cycle() {
    let s = TestServer::start(&["--threshold-bytes", "4096"]).await;
    let params = RecordBatch::try_new(
        demo::blob_stream_params(),
        vec![
            Arc::new(Int64Array::from(vec![3])),
            Arc::new(Int64Array::from(vec![10_000])),
        ],
    )
    .unwrap();
    let before = s.object_count();
    let mut stream = s
        .client()
        .open_stream(spillway::client::CallRequest::new(
            demo::PROTOCOL,
            "blob_stream",
            params,
        ))
        .await
        .unwrap();
    let mut n = 0u64;
    while let Some(b) = stream.next().await.unwrap() {
        assert!(b.externalized.is_some());
        let data = b.batch.project(&[1]).unwrap();
        let data = data
            .column(0)
            .as_any()
            .downcast_ref::<arrow_array::BinaryArray>()
            .unwrap()
            .value(0)
            .to_vec();
        assert_eq!(data, demo::generate_blob(10_000, n));
        n += 1;
    }
    assert_eq!(n, 3);
    assert_eq!(s.object_count(), before + 3);
}

#[tokio::test]
async fn responses_are_compressed_as_negotiated() {
    let s = TestServer::start(&[]).await;
    let url = format!("{}/{}/echo", s.base, demo::PROTOCOL);
    let data = vec![b'z'; 100_000];
    let body = || echo_body(&data);
    let send = |pairs: Vec<(&'static str, &'static str)>| {
        let mut req = reqwest::Client::new()
            .post(&url)
            .header("content-type", spillway::wire::ARROW_STREAM_CONTENT_TYPE)
            .body(body());
        for (k, v) in pairs {
            req = req.header(k, v);
        }
        req.send()
    };
    let resp = send(vec![("accept-encoding", "zstd, gzip")]).await.unwrap();
    assert_eq!(resp.headers()["vgi-supported-encodings"], "zstd, gzip");
    assert_eq!(resp.headers()["content-encoding"], "zstd");
    let raw = resp.bytes().await.unwrap();
    assert!(raw.len() < 10_000, "compressed: {}", raw.len());
    let decoded = zstd::decode_all(&raw[..]).unwrap();
    let stream = read_stream(decoded.into(), Default::default()).unwrap();
    assert_eq!(binary_value(&stream.batches[0].batch), data);
    // The custom header wins; a codec it alone offers is announced in the custom header.
    let resp = send(vec![
        ("x-vgi-accept-encoding", "gzip"),
        ("accept-encoding", "zstd"),
    ])
    .await
    .unwrap();
    assert_eq!(resp.headers()["x-vgi-content-encoding"], "gzip");
    assert!(resp.headers().get("content-encoding").is_none());
    // identity first, or nothing we produce: plain Arrow.
    for pairs in [
        vec![("accept-encoding", "identity, zstd")],
        vec![("accept-encoding", "br")],
    ] {
        let resp = send(pairs).await.unwrap();
        assert!(resp.headers().get("content-encoding").is_none());
        let stream = read_stream(resp.bytes().await.unwrap(), Default::default()).unwrap();
        assert_eq!(binary_value(&stream.batches[0].batch), data);
    }
}
