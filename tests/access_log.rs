//! The `vgi_rpc.access` log of the real `spillway serve`, checked by the reference's own
//! validator (`python -m vgi_rpc.access_log_conformance`, vgi-rpc 0.52.2 with `jsonschema`)
//! and for the calls made: unary ok and error, an externalized result, a producer stream
//! (its `/init` and `/exchange` turns) and a cancel, with the server id set.

use std::process::Command;
use std::time::{Duration, Instant};

use spillway::client::{CallRequest, Client, ClientConfig};
use spillway::demo;
use spillway::url_policy::UrlPolicy;

use crate::common::{blob_body, post_raw, size_params, vgi_python, LoggedServe};

const SERVER_ID: &str = "spillway-test-pod-7";

/// The `vgi_rpc.access` records in `log`, parsed.
fn records(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["logger"] == "vgi_rpc.access")
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn access_records_of_a_real_server_pass_the_reference_validator() {
    let Some(python) = vgi_python() else {
        return;
    };
    for format in ["text", "json"] {
        let served = LoggedServe::start(&[
            ("SPILLWAY_SERVER_ID", SERVER_ID),
            ("SPILLWAY_ACCESS_LOG", "on"),
            ("SPILLWAY_LOG_FORMAT", format),
            ("SPILLWAY_THRESHOLD_BYTES", "4096"),
        ]);
        let mut config = ClientConfig::default();
        config.fetch.policy = UrlPolicy::local_testing();
        let client = Client::new(&served.url, config).unwrap();

        let ok = client
            .call(demo::PROTOCOL, "blob", size_params(100))
            .await
            .unwrap();
        assert!(ok.externalized.is_none());
        let big = client
            .call(demo::PROTOCOL, "blob", size_params(50_000))
            .await
            .unwrap();
        assert!(
            big.externalized.is_some(),
            "the local store externalizes it"
        );
        let refused = client
            .call(demo::PROTOCOL, "blob", size_params(-1))
            .await
            .unwrap_err();
        assert!(
            refused.to_string().contains("size must be >= 0"),
            "{refused}"
        );
        let params = |count: &str| {
            spillway::cli::parse_params(&[format!("count={count}"), "size=10".into()]).unwrap()
        };
        let mut stream = client
            .open_stream(CallRequest::new(demo::PROTOCOL, "blob_stream", params("2")))
            .await
            .unwrap();
        let mut batches = 0;
        while stream.next().await.unwrap().is_some() {
            batches += 1;
        }
        assert_eq!(batches, 2);
        let mut cancelled = client
            .open_stream(CallRequest::new(
                demo::PROTOCOL,
                "blob_stream",
                params("100"),
            ))
            .await
            .unwrap();
        cancelled.cancel().await.unwrap();
        // Not hosted: no record (and no label), whatever the path says.
        let resp = post_raw(&format!("{}/evil.Protocol.v1/x", served.url), blob_body(1)).await;
        assert_eq!(resp.status(), 404);

        // The writer thread is asynchronous: wait for the last record.
        let deadline = Instant::now() + Duration::from_secs(10);
        let log = loop {
            let log = served.output();
            let cancels = records(&log)
                .iter()
                .filter(|r| r["cancelled"] == true)
                .count();
            if cancels == 1 || Instant::now() >= deadline {
                break log;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let validated = Command::new(&python)
            .args(["-m", "vgi_rpc.access_log_conformance"])
            .arg(&served.log)
            .output()
            .unwrap();
        assert!(
            validated.status.success(),
            "{format}: the reference validator refused the log:\n{}{}\n--- log ---\n{log}",
            String::from_utf8_lossy(&validated.stdout),
            String::from_utf8_lossy(&validated.stderr)
        );

        let recs = records(&log);
        for r in &recs {
            assert_eq!(r["server_id"], SERVER_ID, "{r}");
            assert_eq!(r["protocol"], demo::PROTOCOL, "{r}");
            for forbidden in ["request_data", "request_state", "response_state"] {
                assert!(r.get(forbidden).is_none(), "{r}");
            }
        }
        let unary: Vec<_> = recs.iter().filter(|r| r["method"] == "blob").collect();
        assert_eq!(unary.len(), 3, "{log}");
        assert!(unary.iter().all(|r| r["method_type"] == "unary"));
        let (oks, errors): (Vec<&serde_json::Value>, Vec<&serde_json::Value>) =
            unary.iter().copied().partition(|r| r["status"] == "ok");
        assert_eq!(oks.len(), 2, "{log}");
        assert!(
            oks.iter()
                .any(|r| r["externalized_bytes"].as_u64() > Some(50_000)),
            "{log}"
        );
        let e = errors[0];
        assert_eq!(e["status"], "error");
        assert_eq!(e["error_type"], "ValueError");
        assert_eq!(e["error_code"], "INVALID_ARGUMENT");
        assert!(e["error_message"].as_str().unwrap().contains(">= 0"), "{e}");
        assert_eq!(e["request_fields"][0]["name"], "size");

        let steps: Vec<_> = recs
            .iter()
            .filter(|r| r["method"] == "blob_stream")
            .collect();
        // The finished stream: /init (batch 0), /exchange (batch 1), /exchange (done); the
        // cancelled one: /init and the cancelling /exchange.
        assert_eq!(steps.len(), 5, "{log}");
        assert!(steps.iter().all(|r| r["method_type"] == "stream"
            && r["status"] == "ok"
            && r["stream_id"].as_str().is_some_and(|s| s.len() == 32)));
        let mut ids: Vec<&str> = steps
            .iter()
            .map(|r| r["stream_id"].as_str().unwrap())
            .collect();
        ids.dedup();
        assert_eq!(
            ids.len(),
            2,
            "one id per stream, shared by its turns: {log}"
        );
        // The init turn returns tokens; continuations send and return them; never the tokens.
        assert!(steps[0]["response_state_bytes"].as_u64() > Some(0), "{log}");
        assert!(steps[1]["request_state_bytes"].as_u64() > Some(0), "{log}");
        assert!(steps[0]["request_fields"].is_array());
        assert!(steps[1].get("request_fields").is_none());
        assert!(!log.contains("evil.Protocol"), "{log}");

        // Every other log line carries the server id too.
        let startup = log
            .lines()
            .find(|l| l.contains("spillway serving"))
            .unwrap();
        if format == "json" {
            let v: serde_json::Value = serde_json::from_str(startup).unwrap();
            assert_eq!(v["server_id"], SERVER_ID, "{startup}");
        } else {
            assert!(
                startup.contains(&format!("server_id={SERVER_ID}")),
                "{startup}"
            );
        }
        // And /health.
        let health: serde_json::Value = reqwest::get(format!("{}/health", served.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["server_id"], SERVER_ID);
    }
}

#[test]
fn access_log_off_writes_no_records_and_a_bad_server_id_is_refused() {
    let served = LoggedServe::start(&[("SPILLWAY_ACCESS_LOG", "off")]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let resp = post_raw(
            &format!("{}/{}/blob", served.url, demo::PROTOCOL),
            blob_body(10),
        )
        .await;
        assert_eq!(resp.status(), 200);
    });
    // The call's answer came back after the point where a record would be queued; the
    // startup line proves the log is being written.
    let log = served.output();
    assert!(log.contains("spillway serving"), "{log}");
    assert!(records(&log).is_empty(), "{log}");

    let out = Command::new(crate::common::BIN)
        .arg("serve")
        .env_clear()
        .env("SPILLWAY_SERVER_ID", "bad id\"with quotes")
        .env("SPILLWAY_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("SPILLWAY_SERVER_ID must be"), "{text}");
}
