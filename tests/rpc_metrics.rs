//! The per-RPC metrics: `spillway_rpc_calls_total` and `spillway_rpc_duration_seconds`, one
//! count per unary call and per stream step, labelled with hosted names only.

use std::sync::Arc;

use arrow_array::{Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use spillway::client::CallRequest;
use spillway::server::{Protocol, Server, ServerConfig, StreamMethod, StreamStart, TurnOutput};
use spillway::wire::RpcError;

use crate::common::*;

/// A protocol of this test alone: the counters are process-wide, and other tests of the
/// binary call the demo protocol at the same time.
const PROTOCOL: &str = "test.RpcMetrics.v1";

fn n_schema(name: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(name, DataType::Int64, false)]))
}

fn n_batch(name: &str, v: i64) -> RecordBatch {
    RecordBatch::try_new(n_schema(name), vec![Arc::new(Int64Array::from(vec![v]))]).unwrap()
}

fn first(b: &RecordBatch) -> i64 {
    b.column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

/// `double(n)`: 2n, or a ValueError for a negative n; `count(n)`: a producer of n batches.
fn protocol() -> Protocol {
    let out = n_schema("i");
    Protocol::new(PROTOCOL)
        .unwrap()
        .unary(
            "double",
            n_schema("n"),
            n_schema("result"),
            |_ctx, p| async move {
                let n = first(&p);
                if n < 0 {
                    return Err(RpcError::new("ValueError", "n must be >= 0"));
                }
                Ok(n_batch("result", 2 * n))
            },
        )
        .stream(
            "count",
            StreamMethod::producer(
                n_schema("n"),
                out,
                |_ctx, p| async move {
                    Ok(StreamStart {
                        state: [first(&p).to_le_bytes(), 0i64.to_le_bytes()].concat(),
                        ..Default::default()
                    })
                },
                |_ctx, turn| async move {
                    let n = i64::from_le_bytes(turn.state[..8].try_into().unwrap());
                    let k = i64::from_le_bytes(turn.state[8..16].try_into().unwrap());
                    if k >= n {
                        return Ok(TurnOutput {
                            finished: true,
                            ..Default::default()
                        });
                    }
                    Ok(TurnOutput {
                        state: [n.to_le_bytes(), (k + 1).to_le_bytes()].concat(),
                        output: Some((n_batch("i", k), Default::default())),
                        finished: false,
                    })
                },
            ),
        )
}

/// The value of the first sample line of `text` that starts with `name{` and contains every
/// label of `labels`, or 0.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn calls_and_stream_steps_are_counted_by_hosted_names() {
    let config = ServerConfig {
        prefix: "/vgi".into(),
        ..ServerConfig::default()
    };
    let mut s = TestServer::start_server(Server::new(config).with_protocol(protocol())).await;
    // Under a prefix: the router nests the call routes, and the names are still found.
    s.base.push_str("/vgi");
    let client = s.client();
    let http = reqwest::Client::new();
    let metrics = || async { text_of(http.get(format!("{}/metrics", s.origin()))).await };
    let calls = |text: &str, method: &str, method_type: &str, status: &str| {
        sample(
            text,
            "spillway_rpc_calls_total",
            &[
                ("protocol", PROTOCOL),
                ("method", method),
                ("method_type", method_type),
                ("status", status),
            ],
        )
    };
    let before = metrics().await;

    let doubled = client
        .call(PROTOCOL, "double", n_batch("n", 21))
        .await
        .unwrap();
    assert_eq!(first(&doubled.batch), 42);
    // Refused by the method: an EXCEPTION batch (200 + X-VGI-RPC-Error).
    let refused = client
        .call(PROTOCOL, "double", n_batch("n", -1))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("n must be >= 0"), "{refused}");
    let mut stream = client
        .open_stream(CallRequest::new(PROTOCOL, "count", n_batch("n", 3)))
        .await
        .unwrap();
    let mut batches = 0;
    while stream.next().await.unwrap().is_some() {
        batches += 1;
    }
    assert_eq!(batches, 3);
    // Names the server does not host never become labels.
    let stranger = "evil.Protocol.v9";
    let resp = post_raw(
        &format!("{}/{stranger}/steal_everything", s.base),
        blob_body(1),
    )
    .await;
    assert_eq!(resp.status(), 404);
    let resp = post_raw(&format!("{}/{}/nosuch", s.base, PROTOCOL), blob_body(1)).await;
    assert_eq!(resp.status(), 404);

    let after = metrics().await;
    let grew = |method: &str, method_type: &str, status: &str| {
        calls(&after, method, method_type, status) - calls(&before, method, method_type, status)
    };
    assert_eq!(grew("double", "unary", "ok"), 1.0, "{after}");
    assert_eq!(grew("double", "unary", "error"), 1.0, "{after}");
    // One per HTTP turn: /init (batch 0), /exchange (1), /exchange (2), /exchange (finished).
    assert_eq!(grew("count", "stream", "ok"), 4.0, "{after}");
    assert_eq!(grew("count", "stream", "error"), 0.0, "{after}");
    assert_eq!(grew("unknown", "unary", "error"), 1.0, "{after}");
    let unknown = |t: &str| {
        sample(
            t,
            "spillway_rpc_calls_total",
            &[("protocol", "unknown"), ("method", "unknown")],
        )
    };
    // Other tests of this binary may call unknown protocols too: at least ours.
    assert!(unknown(&after) - unknown(&before) >= 1.0, "{after}");
    assert!(!after.contains(stranger), "{after}");
    assert!(!after.contains("steal_everything"), "{after}");
    assert!(!after.contains("nosuch"), "{after}");
    assert!(
        sample(
            &after,
            "spillway_rpc_duration_seconds_count",
            &[
                ("protocol", PROTOCOL),
                ("method", "double"),
                ("method_type", "unary")
            ],
        ) >= 2.0,
        "{after}"
    );
    assert!(
        after
            .lines()
            .any(|l| l.starts_with("spillway_rpc_duration_seconds_bucket")
                && l.contains("method=\"count\"")
                && l.contains("le=\"0.005\"")),
        "buckets come from the recorder: {after}"
    );
}
