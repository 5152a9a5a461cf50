//! OTLP export, configured by the standard OpenTelemetry environment variables.

use std::sync::Mutex;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The service name when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names one.
const DEFAULT_SERVICE_NAME: &str = "spillway";
/// How long [`shutdown`] waits for the last spans to be exported, so that an unreachable
/// collector cannot hold up a process that is exiting.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// The instrumentation scope of Spillway's spans.
const SCOPE: &str = "spillway";

/// The provider [`init`] installed, kept for [`shutdown`].
static PROVIDER: Mutex<Option<SdkTracerProvider>> = Mutex::new(None);

fn set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

fn is(name: &str, value: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
}

/// Whether the environment asks for trace export: `OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, and neither `OTEL_SDK_DISABLED=true` nor
/// `OTEL_TRACES_EXPORTER=none` turns it off.
pub fn enabled_by_env() -> bool {
    (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        && !is("OTEL_SDK_DISABLED", "true")
        && !is("OTEL_TRACES_EXPORTER", "none")
}

/// The OpenTelemetry layer for a `tracing_subscriber::registry()`, exporting Spillway's spans
/// over OTLP (HTTP/protobuf) in batches from a background thread, so a call never waits for
/// the collector. `None` (nothing to install, nothing running) unless [`enabled_by_env`].
///
/// Read from the environment by the OpenTelemetry SDK: `OTEL_EXPORTER_OTLP_ENDPOINT` (the
/// base URL, `/v1/traces` appended) or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is),
/// `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`; other values are refused here),
/// `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_SERVICE_NAME` (default
/// `spillway`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
/// `OTEL_TRACES_SAMPLER_ARG`, and the batch processor's `OTEL_BSP_*`. A configuration the
/// exporter refuses is reported on stderr and export stays off. Call [`shutdown`] before the
/// process exits.
pub fn init<S>() -> Option<Box<dyn Layer<S> + Send + Sync>>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    if !enabled_by_env() {
        return None;
    }
    for var in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Ok(p) = std::env::var(var) {
            if !p.is_empty() && p.trim() != "http/protobuf" {
                // Before any subscriber exists: stderr is the only place to say it.
                eprintln!(
                    "warning: {var}={p:?} is not supported (only http/protobuf); traces are not exported"
                );
                return None;
            }
            break;
        }
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!(
                "warning: the OTLP trace exporter cannot be built ({}); traces are not exported",
                spillway_storage::redact_text(&e.to_string())
            );
            return None;
        }
    };
    let mut resource = Resource::builder();
    let named = Resource::builder()
        .build()
        .get(&opentelemetry::Key::new("service.name"))
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    if !named {
        resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
    }
    let provider = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer(SCOPE);
    if let Ok(mut slot) = PROVIDER.lock() {
        if let Some(old) = slot.replace(provider) {
            let _ = old.shutdown_with_timeout(FLUSH_TIMEOUT);
        }
    }
    // Context activation off: a call span is entered before the request batch (and the
    // traceparent in its metadata) has been read, and must not start until then; children
    // find their parent through the `tracing` span stack.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(Targets::new().with_target("spillway", tracing::Level::DEBUG));
    Some(Box::new(layer))
}

/// Exports the spans still buffered and stops the exporter, waiting at most 5 s. Idempotent;
/// nothing to do when [`init`] installed nothing.
pub fn shutdown() {
    let provider = PROVIDER.lock().ok().and_then(|mut p| p.take());
    if let Some(provider) = provider {
        if let Err(e) = provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
            tracing::warn!(error = %spillway_storage::redact_text(&e.to_string()), "exporting the last spans failed");
        }
    }
}
