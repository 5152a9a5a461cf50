//! Operations endpoints: liveness, readiness and Prometheus metrics.
//!
//! `GET /livez` answers as long as the process serves HTTP (no external calls). `GET /readyz`
//! checks that the storage is reachable (a cheap call, cached for a few seconds so probes do
//! not hammer the store). `GET /metrics` renders every counter recorded through the `metrics`
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

/// How long a readiness verdict is reused.
const READY_CACHE: Duration = Duration::from_secs(5);

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
    let mut last = st.readiness.last.lock().await;
    let verdict = match last.as_ref() {
        Some((at, v)) if at.elapsed() < READY_CACHE => v.clone(),
        _ => {
            let v = match &st.storage {
                None => Ok(()),
                Some(s) => {
                    match tokio::time::timeout(Duration::from_secs(5), s.check_ready()).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("storage check timed out".to_string()),
                    }
                }
            };
            *last = Some((Instant::now(), v.clone()));
            v
        }
    };
    match verdict {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response()
        }
    }
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
