//! What the load generator counts per call kind, and its report: a Markdown table for people
//! (and for BENCHMARKS.md), or JSON (`--json`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use super::calls::{Failure, Kind, Moved};
use super::rss::RssReport;

/// Distinct error labels kept per kind; further ones are counted under [`OTHER_LABEL`].
const MAX_LABELS: usize = 32;
const OTHER_LABEL: &str = "other";
/// The longest example message kept per error label.
const MAX_EXAMPLE_CHARS: usize = 300;
/// Wrong answers described in the report, per kind.
const MAX_WRONG_EXAMPLES: usize = 5;

/// How one call ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Ok(Moved),
    /// Refused for overload (503, 429): expected under load, counted apart.
    Rejected(spillway::Error),
    /// Failed for any other reason.
    Error(String, String),
    /// Answered, wrongly.
    Wrong(String),
}

impl Outcome {
    pub(crate) fn of(result: Result<Moved, Failure>) -> Outcome {
        match result {
            Ok(m) => Outcome::Ok(m),
            Err(Failure::Wrong(text)) => Outcome::Wrong(text),
            Err(Failure::Call(e)) if is_rejection(&e) => Outcome::Rejected(e),
            Err(Failure::Call(e)) => Outcome::Error(error_label(&e), e.to_string()),
        }
    }

    /// A call that did not end within `--call-timeout`.
    pub(crate) fn timed_out(after: Duration) -> Outcome {
        Outcome::Error(
            "timeout (client)".into(),
            format!("no answer within {} s", after.as_secs_f64()),
        )
    }
}

/// An overload refusal: `503` or `429` without an EXCEPTION body, or an EXCEPTION with code
/// `UNAVAILABLE` of type `ServerOverloadedError` (the client reports an error body instead of
/// the status when there is one).
pub(crate) fn is_rejection(e: &spillway::Error) -> bool {
    match e {
        spillway::Error::HttpStatus { status, .. } => matches!(status, 429 | 503),
        // The server's overload refusal; a store outage (also UNAVAILABLE) is an error.
        spillway::Error::Rpc(r) => {
            r.code == spillway::wire::ErrorCode::Unavailable
                && r.error_type == spillway::server::memory::OVERLOADED_ERROR
        }
        spillway::Error::RetriesExhausted { last, .. } => is_rejection(last),
        _ => false,
    }
}

/// A short label from a bounded set: the error's variant, its HTTP status or RPC code and type.
pub(crate) fn error_label(e: &spillway::Error) -> String {
    use spillway::Error as E;
    match e {
        E::Rpc(r) => format!("rpc {} {}", r.code.as_str(), r.error_type),
        E::HttpStatus { status, .. } => format!("http {status}"),
        E::Unauthorized { reason, .. } => format!("unauthorized {reason}"),
        E::Fetch { kind, .. } => format!("fetch {kind}"),
        E::Http(_) => "http error".into(),
        E::Ipc(_) => "ipc".into(),
        E::Arrow(_) => "arrow".into(),
        E::Protocol(_) => "protocol".into(),
        E::TooLarge { limit_name, .. } => format!("too large ({limit_name})"),
        E::ExternalizedTooLarge { .. } => "externalized too large".into(),
        E::UrlRejected { .. } => "url rejected".into(),
        E::RedirectLimit { .. } => "redirect limit".into(),
        E::Checksum { .. } => "checksum".into(),
        E::Credential(_) => "credential".into(),
        E::Storage(_) => "storage".into(),
        E::Config(_) => "config".into(),
        E::Io(_) => "io".into(),
        E::Internal(_) => "internal".into(),
        E::Admission(a) => format!("admission {}", a.reason()),
        E::RetriesExhausted { last, .. } => format!("retries exhausted: {}", error_label(last)),
    }
}

/// Counts of one error label, with the first message seen.
#[derive(Debug, Clone, Default)]
struct Label {
    count: u64,
    example: String,
}

/// Everything counted for one call kind (per client, merged at the end).
#[derive(Debug, Clone, Default)]
pub(crate) struct KindStats {
    calls: u64,
    ok: u64,
    rejected: u64,
    errors: u64,
    wrong: u64,
    /// Latencies of successful calls, in microseconds (saturating at about 71 minutes).
    latencies_us: Vec<u32>,
    bytes_up: u64,
    bytes_down: u64,
    error_labels: BTreeMap<String, Label>,
    rejection_labels: BTreeMap<String, Label>,
    wrong_examples: Vec<String>,
}

fn count_label(labels: &mut BTreeMap<String, Label>, label: String, message: &str) {
    let key = if labels.len() >= MAX_LABELS && !labels.contains_key(&label) {
        OTHER_LABEL.to_string()
    } else {
        label
    };
    let entry = labels.entry(key).or_default();
    if entry.count == 0 {
        entry.example = message.chars().take(MAX_EXAMPLE_CHARS).collect();
    }
    entry.count += 1;
}

fn merge_labels(into: &mut BTreeMap<String, Label>, from: &BTreeMap<String, Label>) {
    for (label, l) in from {
        let entry = into.entry(label.clone()).or_default();
        if entry.count == 0 {
            entry.example = l.example.clone();
        }
        entry.count += l.count;
    }
}

impl KindStats {
    pub(crate) fn record(&mut self, outcome: Outcome, latency: Duration) {
        self.calls += 1;
        match outcome {
            Outcome::Ok(moved) => {
                self.ok += 1;
                self.bytes_up += moved.up;
                self.bytes_down += moved.down;
                self.latencies_us
                    .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
            }
            Outcome::Rejected(e) => {
                self.rejected += 1;
                count_label(&mut self.rejection_labels, error_label(&e), &e.to_string());
            }
            Outcome::Error(label, message) => {
                self.errors += 1;
                count_label(&mut self.error_labels, label, &message);
            }
            Outcome::Wrong(text) => {
                self.wrong += 1;
                if self.wrong_examples.len() < MAX_WRONG_EXAMPLES {
                    self.wrong_examples.push(text);
                }
            }
        }
    }

    pub(crate) fn merge(&mut self, other: &KindStats) {
        self.calls += other.calls;
        self.ok += other.ok;
        self.rejected += other.rejected;
        self.errors += other.errors;
        self.wrong += other.wrong;
        self.latencies_us.extend_from_slice(&other.latencies_us);
        self.bytes_up += other.bytes_up;
        self.bytes_down += other.bytes_down;
        merge_labels(&mut self.error_labels, &other.error_labels);
        merge_labels(&mut self.rejection_labels, &other.rejection_labels);
        for w in &other.wrong_examples {
            if self.wrong_examples.len() < MAX_WRONG_EXAMPLES {
                self.wrong_examples.push(w.clone());
            }
        }
    }
}

/// Nearest-rank quantile of sorted microseconds, in milliseconds.
fn quantile_ms(sorted: &[u32], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(f64::from(sorted[rank - 1]) / 1000.0)
}

/// The run as a whole: its settings, per-kind counts and the server's memory.
pub(crate) struct Report {
    pub(crate) clients: usize,
    pub(crate) duration: Duration,
    /// From the start until the last call in flight at the deadline ended.
    pub(crate) elapsed: Duration,
    pub(crate) mix: Vec<(Kind, u32)>,
    pub(crate) verify: bool,
    pub(crate) rejections_fail: bool,
    pub(crate) kinds: BTreeMap<Kind, KindStats>,
    pub(crate) server: Option<RssReport>,
    /// The generator's own peak RSS (getrusage), bytes.
    pub(crate) generator_peak_rss: Option<u64>,
}

struct Summary {
    calls: u64,
    ok: u64,
    rejected: u64,
    errors: u64,
    wrong: u64,
    ok_per_sec: f64,
    p50: Option<f64>,
    p95: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
    bytes_up: u64,
    bytes_down: u64,
}

impl Report {
    fn summary(&self, s: &KindStats) -> Summary {
        let mut lat = s.latencies_us.clone();
        lat.sort_unstable();
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        Summary {
            calls: s.calls,
            ok: s.ok,
            rejected: s.rejected,
            errors: s.errors,
            wrong: s.wrong,
            ok_per_sec: s.ok as f64 / secs,
            p50: quantile_ms(&lat, 0.50),
            p95: quantile_ms(&lat, 0.95),
            p99: quantile_ms(&lat, 0.99),
            max: quantile_ms(&lat, 1.0),
            bytes_up: s.bytes_up,
            bytes_down: s.bytes_down,
        }
    }

    fn total(&self) -> KindStats {
        let mut all = KindStats::default();
        for s in self.kinds.values() {
            all.merge(s);
        }
        all
    }

    /// Why the run failed: wrong answers, unexpected errors (and rejections under
    /// `--fail-on-rejections`); empty when it passed.
    pub(crate) fn failures(&self) -> Vec<String> {
        let t = self.total();
        let mut out = Vec::new();
        if t.wrong > 0 {
            out.push(format!("{} wrong answers", t.wrong));
        }
        if t.errors > 0 {
            out.push(format!("{} unexpected errors", t.errors));
        }
        if self.rejections_fail && t.rejected > 0 {
            out.push(format!(
                "{} rejected calls (--fail-on-rejections)",
                t.rejected
            ));
        }
        if let Some(server) = &self.server {
            if server.samples == 0 {
                out.push("the server's RSS could not be read (--server-pid)".into());
            }
        }
        out
    }

    fn mix_text(&self) -> String {
        self.mix
            .iter()
            .map(|(k, w)| format!("{}={w}", k.name()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The human-readable report: a Markdown table, then errors, memory and the verdict.
    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "spillway-bench load: {} clients, {:.1} s ({:.1} s until the last call in flight ended), mix {}, verify {}",
            self.clients,
            self.duration.as_secs_f64(),
            self.elapsed.as_secs_f64(),
            self.mix_text(),
            if self.verify { "on (every byte)" } else { "off (lengths only)" },
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| kind | calls | ok | rejected | errors | wrong | ok/s | p50 ms | p95 ms | p99 ms | max ms | MiB up | MiB down |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let mib = |b: u64| format!("{:.1}", b as f64 / (1u64 << 20) as f64);
        let total = self.total();
        let rows = self
            .kinds
            .iter()
            .map(|(k, s)| (k.name(), s))
            .chain(std::iter::once(("all", &total)));
        for (name, s) in rows {
            let m = self.summary(s);
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {} | {} | {} | {} |",
                m.calls,
                m.ok,
                m.rejected,
                m.errors,
                m.wrong,
                m.ok_per_sec,
                ms(m.p50),
                ms(m.p95),
                ms(m.p99),
                ms(m.max),
                mib(m.bytes_up),
                mib(m.bytes_down),
            );
        }
        for (k, s) in &self.kinds {
            for (what, labels) in [
                ("error", &s.error_labels),
                ("rejected", &s.rejection_labels),
            ] {
                for (label, l) in labels {
                    let _ = writeln!(
                        out,
                        "{what} {}: {} x {label}: {}",
                        k.name(),
                        l.count,
                        l.example
                    );
                }
            }
            for w in &s.wrong_examples {
                let _ = writeln!(out, "wrong {}: {w}", k.name());
            }
        }
        let _ = writeln!(out);
        match &self.server {
            Some(r) => {
                let _ = writeln!(
                    out,
                    "server (pid {}): peak RSS {} (VmRSS sampled every {} ms: {} samples, peak {}; VmHWM {}){}",
                    r.pid,
                    mib_text(r.peak()),
                    r.interval.as_millis(),
                    r.samples,
                    mib_text(r.sampled_peak),
                    r.vm_hwm.map_or("unknown: the process ended".to_string(), mib_text),
                    if r.exited { "; the process ended during the run" } else { "" },
                );
            }
            None => {
                let _ = writeln!(out, "server RSS: not sampled (no --server-pid)");
            }
        }
        if let Some(g) = self.generator_peak_rss {
            let _ = writeln!(out, "generator peak RSS: {}", mib_text(g));
        }
        let failures = self.failures();
        if failures.is_empty() {
            let _ = writeln!(out, "result: PASS");
        } else {
            let _ = writeln!(out, "result: FAIL: {}", failures.join(", "));
        }
        out
    }

    /// The same report as JSON.
    pub(crate) fn json(&self) -> Value {
        let labels = |labels: &BTreeMap<String, Label>| -> Value {
            labels
                .iter()
                .map(|(k, l)| (k.clone(), json!({"count": l.count, "example": l.example})))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let stats = |s: &KindStats| -> Value {
            let m = self.summary(s);
            json!({
                "calls": m.calls,
                "ok": m.ok,
                "rejected": m.rejected,
                "errors": m.errors,
                "wrong": m.wrong,
                "ok_per_sec": m.ok_per_sec,
                "latency_ms": {"p50": m.p50, "p95": m.p95, "p99": m.p99, "max": m.max},
                "bytes_up": m.bytes_up,
                "bytes_down": m.bytes_down,
                "error_kinds": labels(&s.error_labels),
                "rejection_kinds": labels(&s.rejection_labels),
                "wrong_examples": s.wrong_examples,
            })
        };
        let kinds: serde_json::Map<String, Value> = self
            .kinds
            .iter()
            .map(|(k, s)| (k.name().to_string(), stats(s)))
            .collect();
        let failures = self.failures();
        json!({
            "clients": self.clients,
            "duration_secs": self.duration.as_secs_f64(),
            "elapsed_secs": self.elapsed.as_secs_f64(),
            "mix": self.mix.iter().map(|(k, w)| (k.name().to_string(), json!(w))).collect::<serde_json::Map<_, _>>(),
            "verify": self.verify,
            "kinds": kinds,
            "total": stats(&self.total()),
            "server": self.server.as_ref().map(|r| json!({
                "pid": r.pid,
                "peak_rss_bytes": r.peak(),
                "sampled_peak_rss_bytes": r.sampled_peak,
                "vm_hwm_bytes": r.vm_hwm,
                "samples": r.samples,
                "interval_ms": r.interval.as_millis() as u64,
                "exited": r.exited,
            })),
            "generator_peak_rss_bytes": self.generator_peak_rss,
            "passed": failures.is_empty(),
            "failures": failures,
        })
    }
}

fn mib_text(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(quantile_ms(&v, 0.5), Some(50.0));
        assert_eq!(quantile_ms(&v, 0.99), Some(99.0));
        assert_eq!(quantile_ms(&v, 1.0), Some(100.0));
        assert_eq!(quantile_ms(&[7000], 0.95), Some(7.0));
        assert_eq!(quantile_ms(&[], 0.5), None);
    }

    #[test]
    fn overload_is_a_rejection_other_statuses_are_errors() {
        let status = |s| spillway::Error::HttpStatus {
            status: s,
            url: "http://x/".into(),
        };
        assert!(is_rejection(&status(503)));
        assert!(is_rejection(&status(429)));
        assert!(!is_rejection(&status(500)));
        let rpc =
            |code| spillway::Error::from(spillway::wire::RpcError::new("E", "m").with_code(code));
        let overloaded = spillway::Error::from(
            spillway::wire::RpcError::new(spillway::server::memory::OVERLOADED_ERROR, "busy")
                .with_code(spillway::wire::ErrorCode::Unavailable),
        );
        assert!(is_rejection(&overloaded));
        // A store outage is UNAVAILABLE too, but it is an error, not load shedding.
        assert!(!is_rejection(&rpc(spillway::wire::ErrorCode::Unavailable)));
        assert!(!is_rejection(&rpc(
            spillway::wire::ErrorCode::ResourceExhausted
        )));
        assert_eq!(error_label(&status(500)), "http 500");
        assert_eq!(
            error_label(&rpc(spillway::wire::ErrorCode::NotFound)),
            "rpc NOT_FOUND E"
        );
    }

    #[test]
    fn labels_are_bounded_and_merged() {
        let mut a = KindStats::default();
        for i in 0..(MAX_LABELS + 5) {
            a.record(
                Outcome::Error(format!("l{i}"), "msg".into()),
                Duration::ZERO,
            );
        }
        assert_eq!(a.error_labels.len(), MAX_LABELS + 1);
        assert_eq!(a.error_labels[OTHER_LABEL].count, 5);
        let mut b = KindStats::default();
        b.record(
            Outcome::Ok(Moved { up: 3, down: 4 }),
            Duration::from_millis(2),
        );
        b.record(Outcome::Wrong("w".into()), Duration::ZERO);
        b.merge(&a);
        assert_eq!(
            (b.calls, b.ok, b.errors, b.wrong),
            (MAX_LABELS as u64 + 7, 1, MAX_LABELS as u64 + 5, 1)
        );
        assert_eq!((b.bytes_up, b.bytes_down), (3, 4));
        assert_eq!(b.latencies_us, vec![2000]);
    }
}
