//! The rows of `spillway top`'s tables, as text cells: shared by the terminal view and the
//! one-shot snapshot, so both show the same numbers.

use std::cmp::Ordering;

use super::model::{MethodStats, Stats};

/// One refresh: every replica's stats and their total.
#[derive(Debug, Clone, Default)]
pub(crate) struct Frame {
    /// The replicas, in the order given on the command line.
    pub(crate) replicas: Vec<ReplicaView>,
    /// All replicas together (the down ones count for nothing).
    pub(crate) total: Stats,
    /// How many scrape rounds went into it (1: gauges only, no rates yet).
    pub(crate) round: u64,
}

/// One replica in a frame.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReplicaView {
    /// `host:port`.
    pub(crate) name: String,
    /// Why it is down, when it is.
    pub(crate) down: Option<String>,
    /// Its stats (default when down).
    pub(crate) stats: Stats,
}

/// What the tables are sorted by (largest first, names A to Z).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum SortKey {
    /// Calls per second.
    #[default]
    Calls,
    /// Failed calls per second.
    Errors,
    /// 99th percentile latency.
    P99,
    /// Name.
    Name,
}

impl SortKey {
    /// The next key (the `s` key cycles through them).
    pub(crate) fn next(self) -> SortKey {
        match self {
            SortKey::Calls => SortKey::Errors,
            SortKey::Errors => SortKey::P99,
            SortKey::P99 => SortKey::Name,
            SortKey::Name => SortKey::Calls,
        }
    }
    /// Its column's title.
    pub(crate) fn title(self) -> &'static str {
        match self {
            SortKey::Calls => "calls/s",
            SortKey::Errors => "errors",
            SortKey::P99 => "p99",
            SortKey::Name => "name",
        }
    }
    fn cmp(self, a: (&str, &MethodStats), b: (&str, &MethodStats)) -> Ordering {
        let desc = |x: f64, y: f64| y.total_cmp(&x);
        let by = match self {
            SortKey::Calls => desc(a.1.calls, b.1.calls),
            SortKey::Errors => desc(a.1.errors, b.1.errors),
            SortKey::P99 => desc(a.1.p99().unwrap_or(-1.0), b.1.p99().unwrap_or(-1.0)),
            SortKey::Name => Ordering::Equal,
        };
        by.then_with(|| a.0.cmp(b.0))
    }
}

/// A table: its column titles and its rows of cells.
#[derive(Debug, Clone, Default)]
pub(crate) struct Table {
    /// Column titles.
    pub(crate) header: Vec<&'static str>,
    /// Rows; `down` marks the rows of replicas that are down.
    pub(crate) rows: Vec<Row>,
}

/// One row of a [`Table`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Row {
    /// Its cells.
    pub(crate) cells: Vec<String>,
    /// A replica that is down.
    pub(crate) down: bool,
    /// The totals row.
    pub(crate) total: bool,
}

/// Requests or events per second.
pub(crate) fn per_sec(v: f64, rates: bool) -> String {
    if !rates {
        "-".into()
    } else if v == 0.0 {
        "0".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

/// Bytes per second as MiB/s.
pub(crate) fn mib_per_sec(v: f64, rates: bool) -> String {
    if !rates {
        "-".into()
    } else {
        format!("{:.2}", v / (1024.0 * 1024.0))
    }
}

/// A ratio as a percentage.
pub(crate) fn percent(v: f64, rates: bool) -> String {
    if rates {
        format!("{:.1}%", v * 100.0)
    } else {
        "-".into()
    }
}

/// A latency in seconds, in the unit that reads best.
pub(crate) fn latency(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1000.0),
        Some(s) => format!("{s:.2}s"),
    }
}

/// A byte count in MiB or GiB.
pub(crate) fn size(v: f64) -> String {
    let mib = v / (1024.0 * 1024.0);
    if mib >= 1024.0 {
        format!("{:.1}G", mib / 1024.0)
    } else {
        format!("{mib:.0}M")
    }
}

fn memory(s: &Stats) -> String {
    match (s.memory_in_use, s.memory_budget) {
        (Some(u), Some(b)) if b > 0.0 => {
            format!("{}/{} {:.0}%", size(u), size(b), 100.0 * u / b)
        }
        (Some(u), _) => size(u),
        _ => "-".into(),
    }
}

fn storage(s: &Stats) -> String {
    match s.storage_ready {
        Some((r, 1)) => if r == 1 { "ready" } else { "NOT READY" }.into(),
        Some((r, n)) => format!("{r}/{n} ready"),
        None => "-".into(),
    }
}

fn stats_cells(name: &str, state: &str, s: &Stats, note: &str) -> Vec<String> {
    let r = s.rates;
    vec![
        name.to_string(),
        state.to_string(),
        per_sec(s.all.calls, r),
        percent(s.all.error_ratio(), r),
        latency(s.all.p50()),
        latency(s.all.p99()),
        format!("{:.0}", s.in_flight),
        mib_per_sec(s.externalized, r),
        mib_per_sec(s.fetched, r),
        if r {
            format!(
                "{}/{}",
                per_sec(s.hedges_launched, r),
                per_sec(s.hedges_won, r)
            )
        } else {
            "-".into()
        },
        memory(s),
        s.memory_waiters
            .map(|w| format!("{w:.0}"))
            .unwrap_or_else(|| "-".into()),
        per_sec(s.rejections, r),
        storage(s),
        note.to_string(),
    ]
}

/// The replicas table, sorted, with the total last.
pub(crate) fn replicas(frame: &Frame, sort: SortKey) -> Table {
    let mut reps: Vec<&ReplicaView> = frame.replicas.iter().collect();
    reps.sort_by(|a, b| sort.cmp((&a.name, &a.stats.all), (&b.name, &b.stats.all)));
    let mut rows: Vec<Row> = reps
        .iter()
        .map(|r| Row {
            cells: stats_cells(
                &r.name,
                if r.down.is_some() { "DOWN" } else { "up" },
                &r.stats,
                r.down.as_deref().unwrap_or(""),
            ),
            down: r.down.is_some(),
            total: false,
        })
        .collect();
    let up = frame.replicas.iter().filter(|r| r.down.is_none()).count();
    rows.push(Row {
        cells: stats_cells(
            "TOTAL",
            &format!("{up}/{} up", frame.replicas.len()),
            &frame.total,
            "",
        ),
        down: false,
        total: true,
    });
    Table {
        header: vec![
            "REPLICA",
            "STATE",
            "CALLS/S",
            "ERR%",
            "P50",
            "P99",
            "INFLIGHT",
            "EXT MiB/s",
            "FETCH MiB/s",
            "HEDGES L/W",
            "MEMORY",
            "WAIT",
            "REJ/S",
            "STORAGE",
            "NOTE",
        ],
        rows,
    }
}

/// The methods table: all replicas together, or one row per replica and method.
pub(crate) fn methods(frame: &Frame, sort: SortKey, per_replica: bool) -> Table {
    let rates = frame.total.rates;
    let mut ms: Vec<(String, &MethodStats)> = if per_replica {
        frame
            .replicas
            .iter()
            .flat_map(|r| r.stats.methods.iter().map(|m| (m.name.clone(), m)))
            .collect()
    } else {
        frame
            .total
            .methods
            .iter()
            .map(|m| (m.name.clone(), m))
            .collect()
    };
    ms.sort_by(|a, b| {
        sort.cmp((&a.0, a.1), (&b.0, b.1)).then_with(|| {
            a.1.replica
                .as_deref()
                .unwrap_or("")
                .cmp(b.1.replica.as_deref().unwrap_or(""))
        })
    });
    let rows = ms
        .into_iter()
        .map(|(name, m)| {
            let mut cells = vec![name, m.kind.clone()];
            if per_replica {
                cells.push(m.replica.clone().unwrap_or_default());
            }
            cells.extend([
                per_sec(m.calls, rates),
                per_sec(m.errors, rates),
                percent(m.error_ratio(), rates),
                latency(m.p50()),
                latency(m.p99()),
            ]);
            Row {
                cells,
                ..Row::default()
            }
        })
        .collect();
    let mut header = vec!["METHOD", "TYPE"];
    if per_replica {
        header.push("REPLICA");
    }
    header.extend(["CALLS/S", "ERR/S", "ERR%", "P50", "P99"]);
    Table { header, rows }
}

/// The upstreams table (a gateway's); `None` when no replica reports upstreams.
pub(crate) fn upstreams(frame: &Frame) -> Option<Table> {
    if frame.total.upstreams.is_empty() {
        return None;
    }
    let rates = frame.total.rates;
    let mut ups = frame.total.upstreams.clone();
    ups.sort_by(|a, b| (&a.upstream, &a.replica).cmp(&(&b.upstream, &b.replica)));
    let rows = ups
        .iter()
        .map(|u| Row {
            cells: vec![
                u.upstream.clone(),
                u.replica.clone(),
                match u.healthy {
                    Some(true) => "healthy".into(),
                    Some(false) => "UNHEALTHY".into(),
                    None => "-".into(),
                },
                u.breaker_word().into(),
                per_sec(u.requests, rates),
                per_sec(u.failures, rates),
            ],
            down: u.healthy == Some(false),
            total: false,
        })
        .collect();
    Some(Table {
        header: vec![
            "UPSTREAM", "REPLICA", "HEALTH", "BREAKER", "REQ/S", "FAIL/S",
        ],
        rows,
    })
}

/// A table as aligned plain text (the snapshot).
pub(crate) fn render_text(t: &Table) -> String {
    let cols = t.header.len();
    let mut widths: Vec<usize> = t.header.iter().map(|h| h.chars().count()).collect();
    for r in &t.rows {
        for (i, c) in r.cells.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(c);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(widths[i].saturating_sub(c.chars().count())));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(t.header.clone());
    for r in &t.rows {
        out.push_str(&line(r.cells.iter().map(String::as_str).collect()));
    }
    out
}

/// The whole snapshot, as `spillway top` prints it when stdout is not a terminal.
pub(crate) fn snapshot(frame: &Frame, sort: SortKey, window_secs: f64) -> String {
    let mut out = format!(
        "spillway top: {} replica(s), rates over {window_secs:.1} s, sorted by {}\n\n",
        frame.replicas.len(),
        sort.title()
    );
    out.push_str(&render_text(&replicas(frame, sort)));
    out.push('\n');
    if !frame.total.per_rpc {
        out.push_str("(no per-RPC metrics on these replicas: rows are HTTP routes)\n");
    }
    out.push_str(&render_text(&methods(
        frame,
        sort,
        frame.replicas.len() > 1,
    )));
    if let Some(u) = upstreams(frame) {
        out.push('\n');
        out.push_str(&render_text(&u));
    }
    out
}
