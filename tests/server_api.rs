//! The Rust API for building services: custom protocols, void methods, logs, errors, panics,
//! timeouts and protocol versions, served over real HTTP.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use spillway::client::CallRequest;
use spillway::server::{empty_schema, Protocol, Server, ServerConfig};
use spillway::wire::{keys, RpcError};

use crate::common::*;

fn int_schema(name: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(name, DataType::Int64, false)]))
}

fn int_batch(name: &str, v: i64) -> RecordBatch {
    RecordBatch::try_new(int_schema(name), vec![Arc::new(Int64Array::from(vec![v]))]).unwrap()
}

fn test_protocol() -> Protocol {
    Protocol::new("test.Api.v2")
        .unwrap()
        .with_version("2.1.0")
        .unwrap()
        .unary(
            "double",
            int_schema("value"),
            int_schema("result"),
            |ctx, b| async move {
                ctx.log("INFO", "doubling");
                let v = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .value(0);
                Ok(int_batch("result", v * 2))
            },
        )
        .unary(
            "noop",
            empty_schema(),
            empty_schema(),
            |_ctx, _b| async move { Ok(RecordBatch::new_empty(empty_schema())) },
        )
        .unary(
            "fail",
            empty_schema(),
            int_schema("result"),
            |_ctx, _b| async move { Err(RpcError::new("TypeError", "nope")) },
        )
        .unary(
            "panic",
            empty_schema(),
            int_schema("result"),
            |_ctx, _b| async move {
                if std::hint::black_box(true) {
                    panic!("handler bug");
                }
                Ok(int_batch("result", 0))
            },
        )
        .unary(
            "slow",
            empty_schema(),
            int_schema("result"),
            |_ctx, _b| async move {
                futures::future::pending::<()>().await;
                Ok(int_batch("result", 0))
            },
        )
        .unary(
            "wrong_schema",
            empty_schema(),
            int_schema("result"),
            |_ctx, _b| async move { Ok(int_batch("other", 1)) },
        )
        .unary(
            "two_rows",
            empty_schema(),
            int_schema("result"),
            |_ctx, _b| async move {
                Ok(RecordBatch::try_new(
                    int_schema("result"),
                    vec![Arc::new(Int64Array::from(vec![1, 2]))],
                )
                .unwrap())
            },
        )
}

async fn start() -> TestServer {
    let server = Server::new(ServerConfig {
        method_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    })
    .with_protocol(test_protocol());
    TestServer::start_server(server).await
}

fn req(method: &str, params: RecordBatch) -> CallRequest {
    CallRequest::new("test.Api.v2", method, params).with_protocol_version("2.1.7")
}

#[tokio::test]
async fn custom_protocol_calls_logs_and_void() {
    let s = start().await;
    let c = s.client();
    let out = c
        .call_with(req("double", int_batch("value", 21)))
        .await
        .unwrap();
    assert_eq!(out.batch, int_batch("result", 42));
    assert_eq!(out.logs.len(), 1);
    assert_eq!(out.logs[0].message, "doubling");
    let out = c.call_with(req("noop", no_params())).await.unwrap();
    assert_eq!(out.batch.num_columns(), 0);
    assert_eq!(out.batch.num_rows(), 0);
    // No storage configured: nothing is externalized and none is advertised.
    let caps = c.capabilities().await.unwrap();
    assert!(!caps.externalization_enabled);
    assert!(!caps.upload_url_support);
}

#[tokio::test]
async fn protocol_version_is_enforced_on_major_and_minor() {
    let s = start().await;
    let c = s.client();
    for bad in [None, Some("3.1.0"), Some("2.0.0"), Some("2.1")] {
        let mut r = CallRequest::new("test.Api.v2", "double", int_batch("value", 1));
        r.protocol_version = bad.map(str::to_string);
        match c.call_with(r).await {
            Err(spillway::Error::Rpc(e)) => {
                assert_eq!(
                    e.kind.as_deref(),
                    Some("protocol_version_mismatch"),
                    "{bad:?}"
                );
                assert_eq!(e.code, spillway::wire::ErrorCode::FailedPrecondition);
                // The precondition names the gated protocol and both versions.
                let details: serde_json::Value =
                    serde_json::from_str(e.details().expect("details")).unwrap();
                assert_eq!(
                    details[0]["@type"], "vgi_rpc.PreconditionFailure",
                    "{bad:?}"
                );
                let violation = &details[0]["violations"][0];
                assert_eq!(violation["type"], "protocol_version");
                assert_eq!(violation["subject"], "test.Api.v2");
                let description = violation["description"].as_str().unwrap();
                assert!(
                    description.contains(bad.unwrap_or("<none>"))
                        && description.contains("server requires 2.1.0"),
                    "{description}"
                );
            }
            other => panic!("{bad:?}: expected a version error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn handler_failures_become_rpc_errors_and_the_server_survives() {
    let s = start().await;
    let c = s.client();
    let expect = |name: &'static str, ty: &'static str, text: &'static str| {
        let c = c.clone();
        async move {
            match c.call_with(req(name, no_params())).await {
                Err(spillway::Error::Rpc(e)) => {
                    assert_eq!(e.error_type, ty, "{name}: {e}");
                    assert!(e.message.contains(text), "{name}: {e}");
                }
                other => panic!("{name}: expected an rpc error, got {other:?}"),
            }
        }
    };
    expect("fail", "TypeError", "nope").await;
    expect("panic", "RuntimeError", "panicked").await;
    expect("slow", "TimeoutError", "did not finish").await;
    expect("wrong_schema", "RuntimeError", "returned schema").await;
    expect("two_rows", "RuntimeError", "exactly 1").await;
    // Errors after dispatch ride on the result schema with 200 + X-VGI-RPC-Error.
    let mut md = spillway::wire::Metadata::new();
    md.insert(keys::METHOD.into(), "fail".into());
    md.insert(keys::REQUEST_VERSION.into(), "1".into());
    md.insert(keys::PROTOCOL_VERSION.into(), "2.1.0".into());
    let resp = post_raw(
        &format!("{}/test.Api.v2/fail", s.base),
        request_body(&empty_schema(), no_params(), md),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-vgi-rpc-error"], "true");
    let stream =
        spillway::wire::read_stream(resp.bytes().await.unwrap(), Default::default()).unwrap();
    assert_eq!(stream.schema, int_schema("result"));
    // Still serving.
    let out = c
        .call_with(req("double", int_batch("value", 1)))
        .await
        .unwrap();
    assert_eq!(out.batch, int_batch("result", 2));
}

#[tokio::test]
async fn response_compression_can_be_turned_off() {
    let bin = Arc::new(Schema::new(vec![Field::new(
        "result",
        DataType::Binary,
        false,
    )]));
    for (enabled, advertised) in [(true, "zstd, gzip"), (false, "")] {
        let result = bin.clone();
        let protocol = Protocol::new("test.Big.v1").unwrap().unary(
            "big",
            empty_schema(),
            bin.clone(),
            move |_ctx, _b| {
                let result = result.clone();
                async move {
                    let data = vec![b'z'; 100_000];
                    let col = arrow_array::BinaryArray::from_vec(vec![data.as_slice()]);
                    Ok(RecordBatch::try_new(result, vec![Arc::new(col)]).unwrap())
                }
            },
        );
        let server = Server::new(ServerConfig {
            response_compression: enabled,
            ..ServerConfig::default()
        })
        .with_protocol(protocol);
        let s = TestServer::start_server(server).await;
        let mut md = spillway::wire::Metadata::new();
        md.insert(keys::METHOD.into(), "big".into());
        md.insert(keys::REQUEST_VERSION.into(), "1".into());
        let resp = reqwest::Client::new()
            .post(format!("{}/test.Big.v1/big", s.base))
            .header("content-type", spillway::wire::ARROW_STREAM_CONTENT_TYPE)
            .header("accept-encoding", "zstd, gzip")
            .header("x-vgi-accept-encoding", "zstd, gzip")
            .body(request_body(&empty_schema(), no_params(), md))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        // Present even when empty: "speaks no compression", not a legacy server.
        assert_eq!(resp.headers()["vgi-supported-encodings"], advertised);
        assert_eq!(resp.headers().contains_key("content-encoding"), enabled);
        if !enabled {
            let stream =
                spillway::wire::read_stream(resp.bytes().await.unwrap(), Default::default())
                    .unwrap();
            assert_eq!(stream.batches[0].batch.num_rows(), 1);
        }
    }
}

#[tokio::test]
async fn stream_routes_and_get_answer_like_the_reference() {
    let s = start().await;
    let http = reqwest::Client::new();
    let resp = post_raw(&format!("{}/test.Api.v2/double/init", s.base), vec![]).await;
    assert_eq!(resp.status(), 400);
    assert!(error_of(resp).await.message.contains("is not a stream"));
    let resp = http
        .get(format!("{}/test.Api.v2/double", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let resp = http
        .get(format!("{}/other/double", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = post_raw(&format!("{}/__describe__", s.base), vec![]).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(
        error_of(resp).await.kind.as_deref(),
        Some("method_not_implemented")
    );
    // No storage: the upload route does not exist.
    let resp = post_raw(&format!("{}/__upload_url__/init", s.base), vec![]).await;
    assert_eq!(resp.status(), 404);
}
