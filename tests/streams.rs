//! Producer and exchange streams over real HTTP: the Rust client against Spillway's server,
//! with externalized cycles through the embedded store, tokens, cancel and errors.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use spillway::client::{CallRequest, Client, ClientStream};
use spillway::server::{Protocol, Server, ServerConfig, StreamMethod, StreamStart, TurnOutput};
use spillway::wire::{keys, Metadata, RpcError};
use spillway_storage::Storage;

use crate::common::*;

/// A schema of non-nullable fields (also used by `cli_streams`).
pub(crate) fn schema(fields: &[(&str, DataType)]) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .iter()
            .map(|(n, t)| Field::new(*n, t.clone(), false))
            .collect::<Vec<_>>(),
    ))
}

fn i64_state(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn read_state(s: &[u8]) -> Vec<i64> {
    s.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn int_col(b: &RecordBatch, i: usize) -> Vec<i64> {
    b.column(i).as_primitive::<Int64Type>().values().to_vec()
}

/// `count(n, rows)`: n batches of `rows` rows `{i, payload}`; batch k fails when k == fail_at.
fn counter() -> StreamMethod {
    let out = schema(&[("i", DataType::Int64), ("payload", DataType::Int64)]);
    let out2 = out.clone();
    StreamMethod::producer(
        schema(&[
            ("n", DataType::Int64),
            ("rows", DataType::Int64),
            ("fail_at", DataType::Int64),
        ]),
        out,
        |ctx, p| async move {
            ctx.log("INFO", "starting");
            let v: Vec<i64> = (0..3).map(|c| int_col(&p, c)[0]).collect();
            Ok(StreamStart {
                state: i64_state(&[v[0], v[1], v[2], 0]),
                ..Default::default()
            })
        },
        move |ctx, turn| {
            let out = out2.clone();
            async move {
                let s = read_state(&turn.state);
                let (n, rows, fail_at, k) = (s[0], s[1], s[2], s[3]);
                if k == fail_at {
                    return Err(RpcError::new("ValueError", format!("failed at {k}")));
                }
                if k >= n {
                    return Ok(TurnOutput {
                        finished: true,
                        ..Default::default()
                    });
                }
                ctx.log("INFO", format!("batch {k}"));
                let mut md = Metadata::new();
                if let Some(t) = turn.metadata.get("tick") {
                    md.insert("seen_tick".into(), t.clone());
                }
                let batch = RecordBatch::try_new(
                    out,
                    vec![
                        Arc::new(Int64Array::from(vec![k; rows as usize])),
                        Arc::new(Int64Array::from((0..rows).collect::<Vec<_>>())),
                    ],
                )
                .unwrap();
                Ok(TurnOutput {
                    state: i64_state(&[n, rows, fail_at, k + 1]),
                    output: Some((batch, md)),
                    finished: false,
                })
            }
        },
    )
}

/// `scale(factor: float64)`: an exchange of `value: float64` rows, each multiplied by the
/// factor, with a header `description: "x{factor}"`; negative input fails the step; each
/// output carries the input's metadata keys as `input_keys`. Also used by `cli_streams`.
pub(crate) fn scaler() -> StreamMethod {
    let io = schema(&[("value", DataType::Float64)]);
    let header = schema(&[("description", DataType::Utf8)]);
    let header2 = header.clone();
    let out = io.clone();
    StreamMethod::exchange(
        schema(&[("factor", DataType::Float64)]),
        io.clone(),
        io,
        move |_ctx, p| {
            let header = header2.clone();
            async move {
                let f = p.column(0).as_primitive::<Float64Type>().value(0);
                let h = RecordBatch::try_new(
                    header,
                    vec![Arc::new(StringArray::from(vec![format!("x{f}")]))],
                )
                .map_err(|e| RpcError::internal(e.to_string()))?;
                Ok(StreamStart {
                    state: f.to_le_bytes().to_vec(),
                    header: Some(h),
                    output_schema: None,
                })
            }
        },
        move |_ctx, turn| {
            let out = out.clone();
            async move {
                let f = f64::from_le_bytes(turn.state[..8].try_into().unwrap());
                let input = turn
                    .input
                    .ok_or_else(|| RpcError::invalid_argument("no input"))?;
                let col = input
                    .column_by_name("value")
                    .and_then(|c| c.as_primitive_opt::<Float64Type>())
                    .ok_or_else(|| RpcError::invalid_argument("value must be float64"))?;
                if col.values().iter().any(|v| *v < 0.0) {
                    return Err(RpcError::new("ValueError", "negative input"));
                }
                let scaled: Float64Array = col.values().iter().map(|v| v * f).collect();
                let mut md = Metadata::new();
                md.insert(
                    "input_keys".into(),
                    turn.metadata.keys().cloned().collect::<Vec<_>>().join(","),
                );
                Ok(TurnOutput {
                    state: turn.state,
                    output: Some((
                        RecordBatch::try_new(out, vec![Arc::new(scaled)]).unwrap(),
                        md,
                    )),
                    finished: false,
                })
            }
        },
    )
    .with_header(header)
}

async fn start(threshold: u64, max_request: u64) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path(), &format!("http://127.0.0.1:{port}"), "t/", 3);
    let mut config = ServerConfig {
        max_request_bytes: max_request,
        ..ServerConfig::default()
    };
    config.externalize.threshold_bytes = threshold;
    let protocol = Protocol::new("test.Streams.v1")
        .unwrap()
        .stream("count", counter())
        .stream("scale", scaler());
    let storage: Arc<dyn Storage> = store.clone();
    let server = Server::new(config)
        .with_protocol(protocol)
        .with_storage(storage)
        .with_storage_routes("/__storage__", store.clone().router());
    TestServer::serve(
        listener,
        server,
        format!("http://127.0.0.1:{port}"),
        dir,
        Some(store),
    )
}

fn count_params(n: i64, rows: i64, fail_at: i64) -> RecordBatch {
    RecordBatch::try_new(
        schema(&[
            ("n", DataType::Int64),
            ("rows", DataType::Int64),
            ("fail_at", DataType::Int64),
        ]),
        vec![
            Arc::new(Int64Array::from(vec![n])),
            Arc::new(Int64Array::from(vec![rows])),
            Arc::new(Int64Array::from(vec![fail_at])),
        ],
    )
    .unwrap()
}

/// Opens `scale(factor)`.
async fn open_scale(c: &Client, factor: f64) -> ClientStream {
    let factor = RecordBatch::try_new(
        schema(&[("factor", DataType::Float64)]),
        vec![Arc::new(Float64Array::from(vec![factor]))],
    )
    .unwrap();
    c.open_stream(CallRequest::new("test.Streams.v1", "scale", factor))
        .await
        .unwrap()
}

/// Opens `count(n, rows, fail_at)`.
async fn open_count(c: &Client, n: i64, rows: i64, fail_at: i64) -> ClientStream {
    c.open_stream(CallRequest::new(
        "test.Streams.v1",
        "count",
        count_params(n, rows, fail_at),
    ))
    .await
    .unwrap()
}

fn values(v: &[f64]) -> RecordBatch {
    RecordBatch::try_new(
        schema(&[("value", DataType::Float64)]),
        vec![Arc::new(Float64Array::from(v.to_vec()))],
    )
    .unwrap()
}

#[tokio::test]
async fn producer_streams_every_batch_then_finishes() {
    let s = start(1 << 30, 1 << 20).await;
    let c = s.client();
    let mut st = open_count(&c, 4, 3, -1).await;
    let mut seen = Vec::new();
    let mut first = true;
    while let Some(b) = st.next().await.unwrap() {
        assert!(b.externalized.is_none());
        assert!(!b.metadata.contains_key(keys::STREAM_STATE));
        if first {
            // The init log and the first step's log come with the first batch.
            assert_eq!(b.logs.len(), 2, "{:?}", b.logs);
            first = false;
        }
        seen.push(int_col(&b.batch, 0)[0]);
    }
    assert_eq!(seen, vec![0, 1, 2, 3]);
    assert!(st.is_finished());
    // An empty producer finishes inside /init.
    let mut st = open_count(&c, 0, 1, -1).await;
    assert!(st.next().await.unwrap().is_none());
}

#[tokio::test]
async fn producer_cycles_are_externalized_with_their_logs() {
    let s = start(4096, 1 << 20).await;
    let c = s.client();
    let before = s.object_count();
    let mut st = open_count(&c, 3, 10_000, -1).await;
    let mut n = 0;
    while let Some(b) = st.next().await.unwrap() {
        assert!(b.externalized.is_some());
        assert_eq!(b.batch.num_rows(), 10_000);
        assert_eq!(int_col(&b.batch, 0)[0], n);
        // The step's log travelled inside the object.
        assert!(
            b.logs.iter().any(|l| l.message == format!("batch {n}")),
            "{:?}",
            b.logs
        );
        n += 1;
    }
    assert_eq!(n, 3);
    assert_eq!(s.object_count(), before + 3);
}

#[tokio::test]
async fn producer_tick_metadata_and_mid_stream_error() {
    let s = start(1 << 30, 1 << 20).await;
    let c = s.client();
    let mut st = open_count(&c, 5, 1, 2).await;
    st.next().await.unwrap().unwrap();
    let mut tick = Metadata::new();
    tick.insert("tick".into(), "t1".into());
    let b = st.next_with(tick).await.unwrap().unwrap();
    assert_eq!(b.metadata.get("seen_tick").map(String::as_str), Some("t1"));
    match st.next().await {
        Err(spillway::Error::Rpc(e)) => assert_eq!(e.message, "failed at 2"),
        other => panic!("expected the producer's error, got {other:?}"),
    }
}

#[tokio::test]
async fn exchange_with_header_scales_and_keeps_its_cursor_after_errors() {
    let s = start(1 << 30, 1 << 20).await;
    let c = s.client();
    let mut st = open_scale(&c, 2.0).await;
    let header = st.header().expect("header");
    let d = header.batch.column(0).as_string::<i32>();
    assert_eq!(d.value(0), "x2");
    let mut md = Metadata::new();
    md.insert("app".into(), "1".into());
    let out = st.exchange(values(&[1.0, 2.5]), md).await.unwrap();
    let v = out.batch.column(0).as_primitive::<Float64Type>();
    assert_eq!(v.values().to_vec(), vec![2.0, 5.0]);
    // The method saw the application key and no tokens.
    assert_eq!(
        out.metadata.get("input_keys").map(String::as_str),
        Some("app")
    );
    match st.exchange(values(&[-1.0]), Metadata::new()).await {
        Err(spillway::Error::Rpc(e)) => assert_eq!(e.message, "negative input"),
        other => panic!("expected an rpc error, got {other:?}"),
    }
    let out = st.exchange(values(&[3.0]), Metadata::new()).await.unwrap();
    let v = out.batch.column(0).as_primitive::<Float64Type>();
    assert_eq!(v.value(0), 6.0);
    st.cancel().await.unwrap();
}

#[tokio::test]
async fn exchange_cycles_and_inputs_travel_through_storage() {
    // Threshold 4 KiB: outputs are externalized; request cap 4 KiB: inputs are uploaded.
    let s = start(4096, 4096).await;
    let c = s.client();
    let mut st = open_scale(&c, 0.5).await;
    for round in 0..3 {
        let input: Vec<f64> = (0..2000).map(|i| (i + round) as f64).collect();
        let mut md = Metadata::new();
        md.insert("round".into(), round.to_string());
        let out = st.exchange(values(&input), md).await.unwrap();
        assert!(out.externalized.is_some());
        let v = out.batch.column(0).as_primitive::<Float64Type>();
        assert_eq!(v.value(10), (10 + round) as f64 * 0.5);
        // The input went through a pointer: the method saw its payload's metadata plus the
        // location stamps, never the tokens.
        let keys_seen = out.metadata.get("input_keys").unwrap();
        assert!(keys_seen.contains("round"), "{keys_seen}");
        assert!(keys_seen.contains(keys::LOCATION_SOURCE), "{keys_seen}");
        assert!(!keys_seen.contains("stream_state"), "{keys_seen}");
    }
}

#[tokio::test]
async fn tokens_are_required_signed_and_bound() {
    let s = start(1 << 30, 1 << 20).await;
    let url = format!("{}/test.Streams.v1/count/exchange", s.base);
    let empty = no_params;
    // No tokens.
    let resp = post_raw(
        &url,
        request_body(&Arc::new(Schema::empty()), empty(), Metadata::new()),
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert!(error_of(resp).await.message.contains("Missing state token"));
    // Forged tokens.
    let mut md = Metadata::new();
    md.insert(keys::STREAM_STATE.into(), "AAAA".into());
    md.insert(keys::CALL_STATE.into(), "AAAA".into());
    let resp = post_raw(&url, request_body(&Arc::new(Schema::empty()), empty(), md)).await;
    assert_eq!(resp.status(), 400);
    assert!(error_of(resp)
        .await
        .message
        .contains("signature verification failed"));
    // Real tokens of one method are refused by another.
    let init = post_raw(
        &format!("{}/test.Streams.v1/count/init", s.base),
        request_body(&count_params(3, 1, -1).schema(), count_params(3, 1, -1), {
            let mut m = Metadata::new();
            m.insert(keys::METHOD.into(), "count".into());
            m.insert(keys::REQUEST_VERSION.into(), "1".into());
            m
        }),
    )
    .await;
    assert_eq!(init.status(), 200);
    let stream =
        spillway::wire::read_stream(init.bytes().await.unwrap(), Default::default()).unwrap();
    let sentinel = stream.batches.last().unwrap();
    assert!(sentinel.metadata.contains_key(keys::CALL_STATE));
    let mut md = Metadata::new();
    md.insert(
        keys::STREAM_STATE.into(),
        sentinel.metadata[keys::STREAM_STATE].clone(),
    );
    md.insert(
        keys::CALL_STATE.into(),
        sentinel.metadata[keys::CALL_STATE].clone(),
    );
    let resp = post_raw(
        &format!("{}/test.Streams.v1/scale/exchange", s.base),
        request_body(&Arc::new(Schema::empty()), empty(), md.clone()),
    )
    .await;
    assert_eq!(resp.status(), 400);
    // And accepted by their own: continuation responses carry only the cursor.
    let resp = post_raw(&url, request_body(&Arc::new(Schema::empty()), empty(), md)).await;
    assert_eq!(resp.status(), 200);
    let stream =
        spillway::wire::read_stream(resp.bytes().await.unwrap(), Default::default()).unwrap();
    let sentinel = stream.batches.last().unwrap();
    assert!(sentinel.metadata.contains_key(keys::STREAM_STATE));
    assert!(!sentinel.metadata.contains_key(keys::CALL_STATE));
    // A unary route refuses stream methods and vice versa.
    let resp = post_raw(&format!("{}/test.Streams.v1/count", s.base), vec![]).await;
    assert_eq!(resp.status(), 400);
}
