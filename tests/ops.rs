//! Operations: liveness, readiness, Prometheus metrics (main and admin port), and graceful
//! shutdown of the real binary on SIGTERM.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use spillway::demo;

#[tokio::test]
async fn probes_and_metrics_over_http() {
    let s = TestServer::start(&["--threshold-bytes", "4096", "--prefix", "/vgi"]).await;
    let http = reqwest::Client::new();
    assert_eq!(
        status_of(http.get(format!("{}/livez", s.origin()))).await,
        200
    );
    assert_eq!(
        status_of(http.get(format!("{}/readyz", s.origin()))).await,
        200
    );
    // Make traffic: an externalized result and an upload-URL grant.
    s.client()
        .call(demo::PROTOCOL, "blob", size_params(50_000))
        .await
        .unwrap();
    s.client().request_upload_urls(3).await.unwrap();
    let text = text_of(http.get(format!("{}/metrics", s.origin()))).await;
    // Route templates, not raw paths, label the request counters.
    assert!(
        text.lines()
            .any(|l| l.starts_with("spillway_http_requests_total")
                && l.contains("route=\"/vgi/{protocol}/{method}\"")
                && l.contains("status=\"200\"")),
        "{text}"
    );
    // Only the per-RPC metrics name (hosted) protocols; the HTTP ones know route templates.
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("spillway_http_") && l.contains("spillway.Demo.v1")),
        "protocol names must not be HTTP labels: {text}"
    );
    assert!(text.contains("spillway_http_request_duration_seconds_bucket"));
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with(&format!("{name}_")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    // Counters are process-wide (other tests in this binary add to them): at least ours.
    assert!(
        value("spillway_externalized_objects_total") >= 1.0,
        "{text}"
    );
    assert!(
        value("spillway_externalized_bytes_total") >= 50_000.0,
        "{text}"
    );
    assert!(value("spillway_upload_url_grants_total") >= 3.0, "{text}");
}

#[test]
fn admin_port_and_graceful_shutdown() {
    let port = free_port();
    let admin = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_and_wait(
        Command::new(BIN)
            .arg("serve")
            .env("SPILLWAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("SPILLWAY_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
            .env("SPILLWAY_LOCAL_DIR", dir.path())
            .env("SPILLWAY_SHUTDOWN_GRACE", "60")
            .env("SPILLWAY_THRESHOLD_BYTES", "1000000000")
            .env("SPILLWAY_DEMO_MAX_BLOB_BYTES", "2000000000"),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let admin_url = format!("http://127.0.0.1:{admin}");
        assert_eq!(status_of(http.get(format!("{admin_url}/livez"))).await, 200);
        assert_eq!(
            status_of(http.get(format!("{admin_url}/readyz"))).await,
            200
        );
        // The admin port serves only operations, not RPC.
        let rpc = http
            .post(format!("{admin_url}/{}/blob", demo::PROTOCOL))
            .send()
            .await
            .unwrap();
        assert_eq!(rpc.status(), 404);
        // A slow call (a large inline blob) is in flight when SIGTERM arrives...
        let client = spillway::client::Client::new(
            &format!("http://127.0.0.1:{port}"),
            spillway::client::ClientConfig {
                max_response_bytes: 1 << 30,
                accept_max_response_bytes: 1 << 30,
                ..Default::default()
            },
        )
        .unwrap();
        let call = tokio::spawn(async move {
            client
                .call(demo::PROTOCOL, "blob", size_params(30_000_000))
                .await
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let m = text_of(http.get(format!("{admin_url}/metrics"))).await;
            let in_flight = m
                .lines()
                .find(|l| l.starts_with("spillway_http_requests_in_flight"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            if in_flight >= 1.0 {
                break;
            }
            assert!(Instant::now() < deadline, "the call never became in flight");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let pid = child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        // ...and still completes.
        let out = call
            .await
            .unwrap()
            .expect("in-flight call finished during shutdown");
        assert_eq!(binary_value(&out.batch).len(), 30_000_000);
    });
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}
