//! `spillway top`: a live terminal view of one or more replicas, from their Prometheus
//! metrics endpoints (`GET /metrics`). Modules: [`parse`] reads the exposition, [`model`]
//! turns two scrapes into rates and latency quantiles, [`view`] makes the table rows (shared by
//! the terminal view in [`ui`] and the one-shot text snapshot), [`scrape`] fetches, bounded.
//!
//! When stdout is not a terminal (or with `--once`) it scrapes twice, one interval apart,
//! prints a snapshot and exits.

mod model;
mod parse;
mod scrape;
mod ui;
mod view;

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::cli::CredentialArgs;
use crate::client::{ClientConfig, TokenProvider};
use crate::error::{Error, Result};

use model::{replica_stats, Scrape, Stats};
use scrape::Target;
use view::{Frame, ReplicaView, SortKey};

/// The most replicas one `spillway top` watches (each is one scrape per refresh).
const MAX_REPLICAS: usize = 64;

/// `spillway top` settings.
#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    /// Replica base URLs (`http://host:port`; `/metrics` is appended) or metrics URLs.
    #[arg(required = true, num_args = 1..)]
    pub urls: Vec<String>,
    /// Seconds between refreshes: the window the rates and latencies are computed over.
    #[arg(long, default_value_t = 2.0, value_parser = parse_seconds)]
    pub interval: f64,
    /// Seconds a replica gets to answer a scrape before it is shown as down.
    #[arg(long, default_value_t = 2.0, value_parser = parse_seconds)]
    pub timeout: f64,
    /// Print one text snapshot (two scrapes one interval apart) and exit, even on a terminal.
    #[arg(long)]
    pub once: bool,
    /// Sort the tables by: calls, errors, p99 or name.
    #[arg(long, default_value = "calls", value_parser = parse_sort)]
    pub sort: String,
    /// Credentials and TLS for `/metrics` on a server with authentication or mTLS, as
    /// `spillway call` (`--token`, `--token-file`, `--ca-cert`, `--client-cert`, ...).
    #[command(flatten)]
    pub credentials: CredentialArgs,
}

fn parse_seconds(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("not a number of seconds: {s:?}"))?;
    if (0.1..=3600.0).contains(&v) {
        Ok(v)
    } else {
        Err("must be between 0.1 and 3600 seconds".into())
    }
}

fn parse_sort(s: &str) -> std::result::Result<String, String> {
    sort_key(s)
        .map(|_| s.to_string())
        .ok_or_else(|| "must be calls, errors, p99 or name".into())
}

fn sort_key(s: &str) -> Option<SortKey> {
    match s {
        "calls" => Some(SortKey::Calls),
        "errors" => Some(SortKey::Errors),
        "p99" => Some(SortKey::P99),
        "name" => Some(SortKey::Name),
        _ => None,
    }
}

/// The replicas and what scrapes them.
struct Watcher {
    client: reqwest::Client,
    token: Option<Arc<dyn TokenProvider>>,
    timeout: Duration,
    replicas: Vec<(Target, Option<Scrape>)>,
    round: u64,
}

impl Watcher {
    fn new(args: &TopArgs) -> Result<Watcher> {
        if args.urls.len() > MAX_REPLICAS {
            return Err(Error::Config(format!(
                "spillway top watches at most {MAX_REPLICAS} replicas, got {}",
                args.urls.len()
            )));
        }
        let replicas = args
            .urls
            .iter()
            .map(|u| Target::parse(u).map(|t| (t, None)).map_err(Error::Config))
            .collect::<Result<Vec<_>>>()?;
        let mut creds = ClientConfig::default();
        args.credentials.apply(&mut creds)?;
        let timeout = Duration::from_secs_f64(args.timeout);
        let mut builder = reqwest::Client::builder()
            // The whole scrape is bounded by `timeout` (scrape::scrape), which says so.
            .connect_timeout(timeout)
            // A replica's metrics are its own: a redirect elsewhere would carry the token away.
            .redirect(reqwest::redirect::Policy::none());
        builder = creds.ca.apply(builder);
        if let Some(identity) = &creds.identity {
            builder = builder.identity(identity.reqwest());
        }
        let client = builder
            .build()
            .map_err(|e| Error::Config(format!("cannot build the http client: {e}")))?;
        Ok(Watcher {
            client,
            token: creds.token,
            timeout,
            replicas,
            round: 0,
        })
    }

    /// Scrapes every replica (concurrently, each bounded by the timeout) into a frame.
    async fn round(&mut self) -> Frame {
        let (client, token, timeout) = (&self.client, self.token.as_ref(), self.timeout);
        let mut scrapes = Vec::with_capacity(self.replicas.len());
        for (t, _) in &self.replicas {
            scrapes.push(scrape::scrape(client, t, token, timeout));
        }
        // At most MAX_REPLICAS at once, each bounded by the timeout.
        let results = futures::future::join_all(scrapes).await;
        self.round += 1;
        let mut frame = Frame {
            round: self.round,
            ..Frame::default()
        };
        let mut total = Stats::default();
        for ((target, prev), result) in self.replicas.iter_mut().zip(results) {
            let view = match result {
                Ok(cur) => {
                    let stats = replica_stats(&target.name, prev.as_ref(), &cur);
                    *prev = Some(cur);
                    ReplicaView {
                        name: target.name.clone(),
                        down: None,
                        stats,
                    }
                }
                Err(why) => {
                    // Rates restart after an outage rather than span it.
                    *prev = None;
                    ReplicaView {
                        name: target.name.clone(),
                        down: Some(why),
                        stats: Stats::default(),
                    }
                }
            };
            total.add(&view.stats);
            frame.replicas.push(view);
        }
        frame.total = total;
        frame
    }
}

/// Runs `spillway top`.
pub async fn run(args: TopArgs) -> Result<()> {
    let mut watcher = Watcher::new(&args)?;
    let sort = sort_key(&args.sort).unwrap_or_default();
    let interval = Duration::from_secs_f64(args.interval);
    if args.once || !std::io::stdout().is_terminal() {
        watcher.round().await;
        tokio::time::sleep(interval).await;
        let frame = watcher.round().await;
        print!("{}", view::snapshot(&frame, sort, args.interval));
        return Ok(());
    }
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(Frame::default()));
    let scraper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let frame = watcher.round().await;
            if tx.send(Arc::new(frame)).is_err() {
                return;
            }
        }
    });
    let settings = ui::Settings {
        sort,
        interval: args.interval,
    };
    let outcome = tokio::task::spawn_blocking(move || ui::run(rx, settings)).await;
    scraper.abort();
    match outcome {
        Ok(r) => r.map_err(Error::Io),
        Err(e) => Err(Error::Internal(format!("the terminal view failed: {e}"))),
    }
}

#[cfg(test)]
mod tests;
