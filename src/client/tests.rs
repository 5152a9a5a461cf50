//! Tests of the client as a whole (names, construction, the one request path against a small
//! in-process server) and the fixtures the module tests share.

use std::sync::Arc;

use arrow_array::{BinaryArray, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use url::Url;

use super::request::{
    client_prefix as normalize_prefix, validate_method_name, validate_protocol_name,
};
use super::{Client, ClientConfig};
use crate::wire::{write_stream, LogMessage, MetaBatch};

pub(super) fn int_params(name: &str, v: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Int64, false)]));
    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![v]))]).unwrap()
}

pub(super) fn result_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "result",
        DataType::Binary,
        false,
    )]))
}

pub(super) fn result_batch(v: &[u8]) -> MetaBatch {
    MetaBatch::plain(
        RecordBatch::try_new(
            result_schema(),
            vec![Arc::new(BinaryArray::from_vec(vec![v]))],
        )
        .unwrap(),
    )
}

pub(super) fn log(level: &str, msg: &str) -> LogMessage {
    LogMessage {
        level: level.into(),
        message: msg.into(),
        extra: None,
    }
}

pub(super) fn body(batches: &[MetaBatch]) -> Bytes {
    Bytes::from(write_stream(&result_schema(), batches).unwrap())
}

#[test]
fn names_prefixes_and_config_are_validated() {
    assert_eq!(normalize_prefix("").unwrap(), "");
    assert_eq!(normalize_prefix("/").unwrap(), "");
    assert_eq!(normalize_prefix("vgi").unwrap(), "/vgi");
    assert_eq!(normalize_prefix("/vgi/").unwrap(), "/vgi");
    assert!(normalize_prefix("/vgi?x=1").is_err());
    validate_protocol_name("conformance.Secondary.v1").unwrap();
    validate_protocol_name("_P").unwrap();
    for bad in ["", "1P", "a/b", "a%2e", "a b"] {
        assert!(validate_protocol_name(bad).is_err(), "{bad}");
    }
    for good in ["large_response", "9m", "a.b", "my-method"] {
        validate_method_name(good).unwrap();
    }
    for bad in ["", ".", "..", "../x", "m?x", "a/b", "a%2f", "a b"] {
        assert!(validate_method_name(bad).is_err(), "{bad}");
    }
    assert!(Client::new("ftp://h/", ClientConfig::default()).is_err());
    assert!(Client::new("http://h/?x=1", ClientConfig::default()).is_err());
    assert!(Client::new("not a url", ClientConfig::default()).is_err());
    let small = ClientConfig {
        accept_max_response_bytes: 1000,
        ..Default::default()
    };
    assert!(Client::new("http://h", small).is_err());
    let c = Client::new(
        "http://127.0.0.1:8080/",
        ClientConfig {
            prefix: "vgi/".into(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(c.inner.root, "http://127.0.0.1:8080");
    assert_eq!(c.inner.prefix, "/vgi");
    // The server's own origin is trusted even under the strict default policy.
    c.inner
        .policy
        .check(&Url::parse("http://127.0.0.1:8080/storage/k").unwrap())
        .unwrap();
    assert!(c
        .inner
        .policy
        .check(&Url::parse("http://127.0.0.1:9999/storage/k").unwrap())
        .is_err());
}

/// A server that answers each route with one scripted response, for the status and flag
/// rules of the one request path (which unary calls and stream steps share).
mod scripted {
    use axum::http::{StatusCode, Uri};
    use axum::response::{IntoResponse, Response};
    use axum::routing::options;
    use axum::Router;

    use super::*;
    use crate::wire::{keys, Metadata, RpcError, ARROW_STREAM_CONTENT_TYPE};

    fn exception(message: &str) -> Vec<u8> {
        let schema = Arc::new(Schema::empty());
        let batch = RpcError::new("AuthenticationError", message).to_batch(&schema, None);
        write_stream(&schema, &[batch]).unwrap()
    }

    /// An output stream holding only the state tokens: the stream stays open.
    fn tokens_only() -> Vec<u8> {
        let schema = Arc::new(Schema::empty());
        let mut metadata = Metadata::new();
        metadata.insert(keys::STREAM_STATE.into(), "c1".into());
        metadata.insert(keys::CALL_STATE.into(), "k1".into());
        let batch = MetaBatch {
            batch: RecordBatch::new_empty(schema.clone()),
            metadata,
        };
        write_stream(&schema, &[batch]).unwrap()
    }

    fn answer(status: StatusCode, flagged: bool, body: Vec<u8>) -> Response {
        let mut resp =
            (status, [("content-type", ARROW_STREAM_CONTENT_TYPE)], body).into_response();
        if flagged {
            resp.headers_mut()
                .insert(crate::wire::http::RPC_ERROR, "true".parse().unwrap());
        }
        resp
    }

    async fn route(uri: Uri) -> Response {
        let empty = || write_stream(&Arc::new(Schema::empty()), &[]).unwrap();
        match uri.path() {
            "/P/unauthorized" | "/P/stream_unauthorized/init" => {
                answer(StatusCode::UNAUTHORIZED, false, exception("token expired"))
            }
            "/P/stream_flagged_html/init" => answer(StatusCode::OK, true, b"<html>".to_vec()),
            "/P/stream_flagged_step/init" => answer(StatusCode::OK, false, tokens_only()),
            "/P/stream_flagged_step/exchange" => answer(StatusCode::OK, true, empty()),
            "/P/stream_failing/init" => (StatusCode::BAD_GATEWAY, "upstream down").into_response(),
            _ => StatusCode::NOT_FOUND.into_response(),
        }
    }

    /// Serves the script on a random port; the task ends with the test's runtime.
    pub(super) async fn client() -> Client {
        let app = Router::new()
            .route("/health", options(|| async { StatusCode::OK }))
            .fallback(route);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Client::new(&base, ClientConfig::default()).unwrap()
    }
}

fn no_params() -> RecordBatch {
    RecordBatch::new_empty(Arc::new(Schema::empty()))
}

/// The bug the unification fixed: a unary call read a 401's Arrow EXCEPTION as a bare status.
/// Every 401 is now [`crate::Error::Unauthorized`]; an EXCEPTION body's message is its detail.
#[tokio::test]
async fn a_401_with_an_arrow_error_body_is_the_parsed_error_on_unary_calls_too() {
    let client = scripted::client().await;
    match client.call("P", "unauthorized", no_params()).await {
        Err(crate::Error::Unauthorized { reason, detail, .. }) => {
            assert_eq!(reason, crate::AuthRejection::Unauthorized);
            assert_eq!(detail, "token expired");
        }
        other => panic!("expected the unauthorized error, got {other:?}"),
    }
    let open = client
        .open_stream(super::CallRequest::new(
            "P",
            "stream_unauthorized",
            no_params(),
        ))
        .await;
    match open {
        Err(crate::Error::Unauthorized { detail, .. }) => assert_eq!(detail, "token expired"),
        other => panic!("expected the unauthorized error, got {other:?}"),
    }
}

#[tokio::test]
async fn stream_replies_follow_the_unary_flag_and_status_rules() {
    let client = scripted::client().await;
    let open = |method: &str| client.open_stream(super::CallRequest::new("P", method, no_params()));

    // Flagged, but not Arrow: named as such (as on unary calls), not a bare IPC error.
    let err = open("stream_flagged_html").await.unwrap_err();
    assert!(
        matches!(err, crate::Error::Protocol(ref m) if m.contains("its body is not arrow")),
        "{err:?}"
    );

    // A flagged step without an EXCEPTION fails instead of ending the stream quietly.
    let mut stream = open("stream_flagged_step").await.unwrap();
    let err = stream.next().await.unwrap_err();
    assert!(
        matches!(err, crate::Error::Protocol(ref m) if m.contains("sent no exception batch")),
        "{err:?}"
    );

    // A non-Arrow error status names the URL that was posted.
    match open("stream_failing").await {
        Err(crate::Error::HttpStatus { status, url }) => {
            assert_eq!(status, 502);
            assert!(url.ends_with("/P/stream_failing/init"), "{url}");
        }
        other => panic!("expected an http status error, got {other:?}"),
    }
}
