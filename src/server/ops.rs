//! Operations endpoints: liveness, readiness and Prometheus metrics.
//!
//! `GET /livez` answers as long as the process serves HTTP (no external calls). `GET /readyz`
//! checks that the storage is reachable (a cheap call, bounded in time and cached for two
//! seconds so probes do not hammer the store, yet a store outage shows within a few seconds). `GET /metrics` renders every counter recorded through the `metrics`
//! facade (requests, externalization, fetches, upload-URL grants) in Prometheus text format.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::state::AppState;

/// How long a storage verdict is reused: any number of probes (kubelets, load balancers) cost
/// one store call per window, and a store that goes down (or comes back) is noticed within
/// this plus [`READY_PROBE_TIMEOUT`].
const READY_CACHE: Duration = Duration::from_secs(2);
/// The longest `/readyz` waits for the store's answer: a probe must not hang on a dead store
/// (backends bound their own check tighter, e.g. S3's one HeadBucket without retries in 2 s).
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once (later calls reuse it). `None` when
/// another recorder was installed first by the embedding application.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0,
                ])
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .as_ref()
}

/// All three endpoints, open (the admin port).
pub(crate) fn routes() -> Router<Arc<AppState>> {
    probes().merge(metrics())
}

/// `/livez` and `/readyz`: open on every port (kubelet probes carry no credential).
pub(crate) fn probes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
}

/// `/metrics` alone, so the main port can put it behind authentication.
pub(crate) fn metrics() -> Router<Arc<AppState>> {
    Router::new().route("/metrics", get(render_metrics))
}

async fn livez() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    // Draining for shutdown: out of the load balancer at once, whatever the store says.
    if st.admission.drain.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    let verdict = storage_ready(&st).await;
    match verdict {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response(),
    }
}

/// Whether the store answers its cheap check ([`Storage::check_ready`]), cached for
/// [`READY_CACHE`] and bounded by [`READY_PROBE_TIMEOUT`]. Concurrent probes wait for the one
/// check in flight instead of sending their own. Sets `spillway_storage_ready` (1 or 0) and
/// logs when the verdict changes, not on every probe.
///
/// [`Storage::check_ready`]: spillway_storage::Storage::check_ready
async fn storage_ready(st: &AppState) -> Result<(), String> {
    let Some(storage) = &st.storage else {
        metrics::gauge!("spillway_storage_ready").set(1.0);
        return Ok(());
    };
    let mut last = st.readiness.last.lock().await;
    if let Some((at, v)) = last.as_ref() {
        if at.elapsed() < READY_CACHE {
            return v.clone();
        }
    }
    let verdict = match tokio::time::timeout(READY_PROBE_TIMEOUT, storage.check_ready()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "storage unavailable: the {} store did not answer its readiness check within {} s",
            storage.kind(),
            READY_PROBE_TIMEOUT.as_secs()
        )),
    };
    let was_ready = last.as_ref().map(|(_, v)| v.is_ok());
    match (&verdict, was_ready) {
        (Err(e), Some(true) | None) => tracing::warn!(error = %e, "storage not ready"),
        (Ok(()), Some(false)) => tracing::info!("storage ready again"),
        _ => {}
    }
    if verdict.is_err() {
        metrics::counter!("spillway_storage_ready_check_failures_total").increment(1);
    }
    metrics::gauge!("spillway_storage_ready").set(if verdict.is_ok() { 1.0 } else { 0.0 });
    *last = Some((Instant::now(), verdict.clone()));
    verdict
}

async fn render_metrics() -> Response {
    match prometheus() {
        Some(h) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "metrics are exported by the embedding application's recorder\n",
        )
            .into_response(),
    }
}
