//! What `spillway top` shows, computed from two scrapes of a replica one refresh window apart:
//! counter increases turned into rates, histogram bucket increases into p50/p99 (the same
//! linear interpolation as PromQL's `histogram_quantile`), gauges as they are now. Replicas
//! add up into the totals (rates summed, histograms merged before the quantile is taken).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use super::parse::Sample;

/// Per-RPC metrics (one series per protocol, method, type and status).
pub(crate) const RPC_CALLS: &str = "spillway_rpc_calls_total";
/// Per-RPC latency histogram.
pub(crate) const RPC_DURATION: &str = "spillway_rpc_duration_seconds";
/// Per-route HTTP requests: the fallback for a server without per-RPC metrics.
pub(crate) const HTTP_REQUESTS: &str = "spillway_http_requests_total";
/// Per-route HTTP latency histogram.
pub(crate) const HTTP_DURATION: &str = "spillway_http_request_duration_seconds";
const IN_FLIGHT: &str = "spillway_calls_in_flight";
const EXTERNALIZED_BYTES: &str = "spillway_externalized_bytes_total";
const FETCH_BYTES: &str = "spillway_fetch_bytes_total";
const FETCH_FAILURES: &str = "spillway_fetch_failures_total";
const HEDGES_LAUNCHED: &str = "spillway_fetch_hedges_launched_total";
const HEDGES_WON: &str = "spillway_fetch_hedges_won_total";
const MEMORY_IN_USE: &str = "spillway_memory_in_use_bytes";
const MEMORY_BUDGET: &str = "spillway_memory_budget_bytes";
const MEMORY_WAITERS: &str = "spillway_memory_waiters";
const REJECTIONS: &str = "spillway_admission_rejections_total";
const STORAGE_READY: &str = "spillway_storage_ready";
const UPSTREAM_HEALTHY: &str = "spillway_upstream_healthy";
const UPSTREAM_BREAKER: &str = "spillway_upstream_breaker_state";
const UPSTREAM_REQUESTS: &str = "spillway_upstream_requests_total";

/// Every metric name `spillway top` reads (the chart tests check the same names exist).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const METRICS_READ: &[&str] = &[
    RPC_CALLS,
    RPC_DURATION,
    HTTP_REQUESTS,
    HTTP_DURATION,
    IN_FLIGHT,
    EXTERNALIZED_BYTES,
    FETCH_BYTES,
    FETCH_FAILURES,
    HEDGES_LAUNCHED,
    HEDGES_WON,
    MEMORY_IN_USE,
    MEMORY_BUDGET,
    MEMORY_WAITERS,
    REJECTIONS,
    STORAGE_READY,
    UPSTREAM_HEALTHY,
    UPSTREAM_BREAKER,
    UPSTREAM_REQUESTS,
];

/// One successful scrape.
#[derive(Debug, Clone)]
pub(crate) struct Scrape {
    /// When its answer arrived.
    pub(crate) at: Instant,
    /// Its samples.
    pub(crate) samples: Vec<Sample>,
}

/// Cumulative histogram buckets: (upper bound, observations at or below it), by bound.
pub(crate) type Buckets = Vec<(f64, f64)>;

/// The `q` quantile (0..=1) of cumulative `buckets`, interpolated linearly inside the bucket
/// it falls in, as PromQL's `histogram_quantile`; `None` without observations. A quantile in
/// the `+Inf` bucket is the highest finite bound.
pub(crate) fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total.is_nan() || total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, cum) in buckets {
        if cum >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = cum - lower.1;
            if in_bucket <= 0.0 {
                return Some(bound);
            }
            let start = if lower.0 > bound { 0.0 } else { lower.0 };
            return Some(start + (bound - start) * (rank - lower.1) / in_bucket);
        }
        lower = (bound, cum);
    }
    Some(lower.0)
}

/// Adds `b` into `a` bound by bound (a bound missing from one side is inserted).
fn merge_buckets(a: &mut Buckets, b: &[(f64, f64)]) {
    for &(bound, n) in b {
        match a.iter_mut().find(|(x, _)| *x == bound) {
            Some(slot) => slot.1 += n,
            None => a.push((bound, n)),
        }
    }
    a.sort_by(|x, y| x.0.total_cmp(&y.0));
}

/// One method (or, on a server without per-RPC metrics, one HTTP route) over the window.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct MethodStats {
    /// `protocol.method`, or `METHOD route`.
    pub(crate) name: String,
    /// The vgi-rpc method type (`unary`, `stream`...), or `http`.
    pub(crate) kind: String,
    /// The replica it was seen on; `None` in the totals.
    pub(crate) replica: Option<String>,
    /// Calls per second.
    pub(crate) calls: f64,
    /// Failed calls per second.
    pub(crate) errors: f64,
    /// Latency bucket increases over the window.
    pub(crate) buckets: Buckets,
}

impl MethodStats {
    /// Failed calls as a share of calls (0..=1), 0 without calls.
    pub(crate) fn error_ratio(&self) -> f64 {
        if self.calls > 0.0 {
            self.errors / self.calls
        } else {
            0.0
        }
    }
    /// Median latency in seconds.
    pub(crate) fn p50(&self) -> Option<f64> {
        quantile(0.5, &self.buckets)
    }
    /// 99th percentile latency in seconds.
    pub(crate) fn p99(&self) -> Option<f64> {
        quantile(0.99, &self.buckets)
    }
    fn add(&mut self, other: &MethodStats) {
        self.calls += other.calls;
        self.errors += other.errors;
        merge_buckets(&mut self.buckets, &other.buckets);
    }
}

/// A gateway's upstream, as one replica sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct UpstreamStats {
    /// The replica reporting it.
    pub(crate) replica: String,
    /// The upstream's label.
    pub(crate) upstream: String,
    /// `spillway_upstream_healthy` (0/1).
    pub(crate) healthy: Option<bool>,
    /// `spillway_upstream_breaker_state` (0 closed, 1 half-open, 2 open).
    pub(crate) breaker: Option<f64>,
    /// Requests per second to it.
    pub(crate) requests: f64,
    /// Requests per second whose outcome was not `ok`.
    pub(crate) failures: f64,
}

impl UpstreamStats {
    /// The breaker state as a word.
    pub(crate) fn breaker_word(&self) -> &'static str {
        match self.breaker {
            Some(b) if b < 0.5 => "closed",
            Some(b) if b < 1.5 => "half-open",
            Some(_) => "open",
            None => "-",
        }
    }
}

/// One replica (or the total of all) over the window.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Stats {
    /// Whether the rates are known (a second scrape arrived).
    pub(crate) rates: bool,
    /// Whether the methods come from per-RPC metrics (else from HTTP routes).
    pub(crate) per_rpc: bool,
    /// All methods together.
    pub(crate) all: MethodStats,
    /// Each method.
    pub(crate) methods: Vec<MethodStats>,
    /// Calls in flight now.
    pub(crate) in_flight: f64,
    /// Externalized bytes per second.
    pub(crate) externalized: f64,
    /// Fetched bytes per second.
    pub(crate) fetched: f64,
    /// Failed fetches per second.
    pub(crate) fetch_failures: f64,
    /// Hedged range requests launched per second.
    pub(crate) hedges_launched: f64,
    /// Hedges that beat the original per second.
    pub(crate) hedges_won: f64,
    /// Memory budget in use now (bytes); `None` when the replica does not report it.
    pub(crate) memory_in_use: Option<f64>,
    /// Memory budget (bytes).
    pub(crate) memory_budget: Option<f64>,
    /// Calls waiting for memory now.
    pub(crate) memory_waiters: Option<f64>,
    /// Admission rejections per second.
    pub(crate) rejections: f64,
    /// Replicas whose storage is ready / replicas reporting it.
    pub(crate) storage_ready: Option<(u32, u32)>,
    /// Upstreams (a gateway's); empty when the metrics do not exist.
    pub(crate) upstreams: Vec<UpstreamStats>,
}

fn add_opt(a: &mut Option<f64>, b: Option<f64>) {
    if let Some(b) = b {
        *a = Some(a.unwrap_or(0.0) + b);
    }
}

impl Stats {
    /// Adds a replica into a total.
    pub(crate) fn add(&mut self, o: &Stats) {
        self.rates |= o.rates;
        self.per_rpc |= o.per_rpc;
        self.all.add(&o.all);
        for m in &o.methods {
            match self
                .methods
                .iter_mut()
                .find(|x| x.name == m.name && x.kind == m.kind)
            {
                Some(x) => x.add(m),
                None => {
                    let mut m = m.clone();
                    m.replica = None;
                    self.methods.push(m);
                }
            }
        }
        self.in_flight += o.in_flight;
        self.externalized += o.externalized;
        self.fetched += o.fetched;
        self.fetch_failures += o.fetch_failures;
        self.hedges_launched += o.hedges_launched;
        self.hedges_won += o.hedges_won;
        add_opt(&mut self.memory_in_use, o.memory_in_use);
        add_opt(&mut self.memory_budget, o.memory_budget);
        add_opt(&mut self.memory_waiters, o.memory_waiters);
        self.rejections += o.rejections;
        if let Some((r, n)) = o.storage_ready {
            let (sr, sn) = self.storage_ready.unwrap_or((0, 0));
            self.storage_ready = Some((sr + r, sn + n));
        }
        self.upstreams.extend(o.upstreams.iter().cloned());
    }
}

/// A series' identity: its name and its labels, sorted.
type SeriesKey = (String, Vec<(String, String)>);

fn key_of(s: &Sample) -> SeriesKey {
    let mut labels = s.labels.clone();
    labels.sort();
    (s.name.clone(), labels)
}

/// Two scrapes' samples matched up: each counter series' increase over the window.
struct Window<'a> {
    cur: &'a [Sample],
    prev: Option<HashMap<SeriesKey, f64>>,
    seconds: f64,
}

impl<'a> Window<'a> {
    fn new(prev: Option<&Scrape>, cur: &'a Scrape) -> Self {
        let prev = prev.and_then(|p| {
            let secs = cur.at.saturating_duration_since(p.at).as_secs_f64();
            (secs > 0.0).then_some((p, secs))
        });
        Window {
            cur: &cur.samples,
            seconds: prev.map(|(_, s)| s).unwrap_or(0.0),
            prev: prev.map(|(p, _)| p.samples.iter().map(|s| (key_of(s), s.value)).collect()),
        }
    }

    fn rates(&self) -> bool {
        self.prev.is_some()
    }

    /// Each series of `name` with its increase (a counter that went down was reset: its whole
    /// value is the increase, as PromQL's `increase`); none before the second scrape.
    fn increases(&self, name: &'a str) -> impl Iterator<Item = (&'a Sample, f64)> + '_ {
        self.cur
            .iter()
            .filter(move |s| s.name == name)
            .filter_map(|s| {
                let prev = self.prev.as_ref()?;
                let before = prev.get(&key_of(s)).copied().unwrap_or(0.0);
                let d = s.value - before;
                Some((s, if d < 0.0 { s.value } else { d }))
            })
    }

    /// The rate per second of the sum of `name`'s series.
    fn rate(&self, name: &'a str) -> f64 {
        if self.seconds <= 0.0 {
            return 0.0;
        }
        // An empty sum of f64 is -0.0, which would print as "-0.00".
        0.0 + self.increases(name).map(|(_, d)| d).sum::<f64>() / self.seconds
    }

    /// The sum of gauge `name`'s series now, `None` when it has none.
    fn gauge(&self, name: &str) -> Option<f64> {
        let mut it = self.cur.iter().filter(|s| s.name == name).peekable();
        it.peek()?;
        Some(it.map(|s| s.value).sum())
    }
}

/// How the method rows are keyed: per-RPC series, or HTTP routes as a fallback.
struct MethodSource {
    calls: &'static str,
    duration: &'static str,
    name: fn(&Sample) -> String,
    kind: fn(&Sample) -> String,
    failed: fn(&Sample) -> bool,
}

fn rpc_name(s: &Sample) -> String {
    format!(
        "{}.{}",
        s.label("protocol").unwrap_or("?"),
        s.label("method").unwrap_or("?")
    )
}
fn rpc_kind(s: &Sample) -> String {
    s.label("method_type").unwrap_or("-").to_string()
}
fn rpc_failed(s: &Sample) -> bool {
    s.label("status").is_some_and(|v| v != "ok")
}
fn http_name(s: &Sample) -> String {
    format!(
        "{} {}",
        s.label("method").unwrap_or("?"),
        s.label("route").unwrap_or("?")
    )
}
fn http_kind(_: &Sample) -> String {
    "http".into()
}
fn http_failed(s: &Sample) -> bool {
    s.label("status")
        .and_then(|v| v.parse::<u16>().ok())
        .is_some_and(|c| c >= 500)
}

const RPC_SOURCE: MethodSource = MethodSource {
    calls: RPC_CALLS,
    duration: RPC_DURATION,
    name: rpc_name,
    kind: rpc_kind,
    failed: rpc_failed,
};
const HTTP_SOURCE: MethodSource = MethodSource {
    calls: HTTP_REQUESTS,
    duration: HTTP_DURATION,
    name: http_name,
    kind: http_kind,
    failed: http_failed,
};

/// A replica's stats over the window from `prev` (none on the first scrape) to `cur`.
pub(crate) fn replica_stats(replica: &str, prev: Option<&Scrape>, cur: &Scrape) -> Stats {
    let w = Window::new(prev, cur);
    let per_rpc = cur.samples.iter().any(|s| s.name == RPC_CALLS);
    let src = if per_rpc { &RPC_SOURCE } else { &HTTP_SOURCE };
    let mut methods: BTreeMap<(String, String), MethodStats> = BTreeMap::new();
    let entry = |methods: &mut BTreeMap<(String, String), MethodStats>, s: &Sample| {
        let key = ((src.name)(s), (src.kind)(s));
        methods.entry(key.clone()).or_insert_with(|| MethodStats {
            name: key.0.clone(),
            kind: key.1.clone(),
            replica: Some(replica.to_string()),
            ..MethodStats::default()
        });
        key
    };
    // Every method seen, with or without calls in the window.
    for s in cur.samples.iter().filter(|s| s.name == src.calls) {
        entry(&mut methods, s);
    }
    if w.seconds > 0.0 {
        for (s, d) in w.increases(src.calls) {
            let key = entry(&mut methods, s);
            if let Some(m) = methods.get_mut(&key) {
                m.calls += d / w.seconds;
                if (src.failed)(s) {
                    m.errors += d / w.seconds;
                }
            }
        }
        let bucket = format!("{}_bucket", src.duration);
        let bucket: &str = &bucket;
        // `increases` borrows the name for the window's lifetime: match by hand instead.
        let prev = w.prev.as_ref();
        for s in cur.samples.iter().filter(|s| s.name == bucket) {
            let Some(le) = s.label("le").and_then(super::parse::parse_le) else {
                continue;
            };
            let before = prev.and_then(|p| p.get(&key_of(s)).copied()).unwrap_or(0.0);
            let d = if s.value < before {
                s.value
            } else {
                s.value - before
            };
            let key = ((src.name)(s), (src.kind)(s));
            // A latency series without a call series (a route never counted) is skipped.
            if let Some(m) = methods.get_mut(&key) {
                merge_buckets(&mut m.buckets, &[(le, d)]);
            }
        }
    }
    let mut all = MethodStats {
        name: "all".into(),
        kind: String::new(),
        replica: Some(replica.to_string()),
        ..MethodStats::default()
    };
    for m in methods.values() {
        all.add(m);
    }
    let ready = w.gauge(STORAGE_READY);
    Stats {
        rates: w.rates(),
        per_rpc,
        all,
        methods: methods.into_values().collect(),
        in_flight: w.gauge(IN_FLIGHT).unwrap_or(0.0),
        externalized: w.rate(EXTERNALIZED_BYTES),
        fetched: w.rate(FETCH_BYTES),
        fetch_failures: w.rate(FETCH_FAILURES),
        hedges_launched: w.rate(HEDGES_LAUNCHED),
        hedges_won: w.rate(HEDGES_WON),
        memory_in_use: w.gauge(MEMORY_IN_USE),
        memory_budget: w.gauge(MEMORY_BUDGET),
        memory_waiters: w.gauge(MEMORY_WAITERS),
        rejections: w.rate(REJECTIONS),
        storage_ready: ready.map(|r| (u32::from(r >= 1.0), 1)),
        upstreams: upstreams(replica, &w),
    }
}

fn upstreams(replica: &str, w: &Window<'_>) -> Vec<UpstreamStats> {
    let mut ups: BTreeMap<String, UpstreamStats> = BTreeMap::new();
    for s in w.cur.iter() {
        if !matches!(
            s.name.as_str(),
            UPSTREAM_HEALTHY | UPSTREAM_BREAKER | UPSTREAM_REQUESTS
        ) {
            continue;
        }
        let name = s.label("upstream").unwrap_or("?").to_string();
        let u = ups.entry(name.clone()).or_insert_with(|| UpstreamStats {
            replica: replica.to_string(),
            upstream: name,
            ..UpstreamStats::default()
        });
        match s.name.as_str() {
            UPSTREAM_HEALTHY => u.healthy = Some(s.value >= 1.0),
            UPSTREAM_BREAKER => u.breaker = Some(s.value),
            _ => {}
        }
    }
    if w.seconds > 0.0 {
        for (s, d) in w.increases(UPSTREAM_REQUESTS) {
            let name = s.label("upstream").unwrap_or("?");
            if let Some(u) = ups.get_mut(name) {
                u.requests += d / w.seconds;
                if s.label("outcome").is_some_and(|o| o != "ok") {
                    u.failures += d / w.seconds;
                }
            }
        }
    }
    ups.into_values().collect()
}
