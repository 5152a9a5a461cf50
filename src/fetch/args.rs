//! Command-line flags (and `SPILLWAY_FETCH_*` variables) for the fetch engine's knobs (feature
//! `cli`; a library user sets [`FetchConfig`] directly).

use std::time::Duration;

use clap::{ArgAction, Args};

use super::{
    FetchConfig, DEFAULT_CHUNK_SIZE, DEFAULT_CONCURRENCY, DEFAULT_HEDGE_BUDGET,
    DEFAULT_HEDGE_MIN_DELAY_MS, DEFAULT_PARALLEL_THRESHOLD,
};

/// The fetch engine's tuning, as flags; [`FetchArgs::apply`] copies it into a
/// [`FetchConfig`]. Defaults are those of [`FetchConfig::default`].
#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    /// Range requests in flight at once for a large pointer object.
    #[arg(long = "fetch-concurrency", env = "SPILLWAY_FETCH_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Bytes per range request.
    #[arg(long = "fetch-chunk-bytes", env = "SPILLWAY_FETCH_CHUNK_BYTES", default_value_t = DEFAULT_CHUNK_SIZE)]
    pub chunk_bytes: u64,
    /// Objects at least this large are fetched in parallel ranges.
    #[arg(long = "fetch-parallel-threshold-bytes", env = "SPILLWAY_FETCH_PARALLEL_THRESHOLD_BYTES", default_value_t = DEFAULT_PARALLEL_THRESHOLD)]
    pub parallel_threshold_bytes: u64,
    /// Duplicate straggling requests (`true` or `false`).
    #[arg(long = "fetch-hedge", env = "SPILLWAY_FETCH_HEDGE", default_value_t = true, action = ArgAction::Set)]
    pub hedge: bool,
    /// Hedges allowed per fetch, as a fraction of its chunks (at least 4).
    #[arg(
        long = "fetch-hedge-budget",
        env = "SPILLWAY_FETCH_HEDGE_BUDGET",
        default_value_t = DEFAULT_HEDGE_BUDGET
    )]
    pub hedge_budget: f64,
    /// Milliseconds before any request may be hedged.
    #[arg(
        long = "fetch-hedge-min-delay-ms",
        env = "SPILLWAY_FETCH_HEDGE_MIN_DELAY_MS",
        default_value_t = DEFAULT_HEDGE_MIN_DELAY_MS
    )]
    pub hedge_min_delay_ms: u64,
    /// Hedge a request without a first byte after this many median times-to-first-byte.
    #[arg(
        long = "fetch-hedge-ttfb-factor",
        env = "SPILLWAY_FETCH_HEDGE_TTFB_FACTOR",
        default_value_t = 3.0
    )]
    pub hedge_ttfb_factor: f64,
    /// Hedge a receiving request that would finish this many times later than a fresh one.
    #[arg(
        long = "fetch-hedge-slow-factor",
        env = "SPILLWAY_FETCH_HEDGE_SLOW_FACTOR",
        default_value_t = 2.0
    )]
    pub hedge_slow_factor: f64,
    /// Retries per chunk before the fetch fails.
    #[arg(
        long = "fetch-retries",
        env = "SPILLWAY_FETCH_RETRIES",
        default_value_t = 4
    )]
    pub retries: u32,
    /// First retry delay in milliseconds (doubles per retry, with jitter, up to 2 s).
    #[arg(
        long = "fetch-retry-base-ms",
        env = "SPILLWAY_FETCH_RETRY_BASE_MS",
        default_value_t = 100
    )]
    pub retry_base_ms: u64,
    /// Milliseconds without a byte before a request is abandoned and retried.
    #[arg(
        long = "fetch-stall-timeout-ms",
        env = "SPILLWAY_FETCH_STALL_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub stall_timeout_ms: u64,
    /// Seconds allowed for fetching one pointer object, retries included.
    #[arg(
        long = "fetch-deadline",
        env = "SPILLWAY_FETCH_DEADLINE",
        default_value_t = 600
    )]
    pub deadline_secs: u64,
}

impl Default for FetchArgs {
    fn default() -> Self {
        let c = FetchConfig::default();
        FetchArgs {
            concurrency: c.concurrency,
            chunk_bytes: c.chunk_size,
            parallel_threshold_bytes: c.parallel_threshold,
            hedge: c.hedge,
            hedge_budget: c.hedge_budget,
            hedge_min_delay_ms: c.hedge_min_delay.as_millis() as u64,
            hedge_ttfb_factor: c.hedge_ttfb_factor,
            hedge_slow_factor: c.hedge_slow_factor,
            retries: c.max_chunk_retries,
            retry_base_ms: c.retry_base_delay.as_millis() as u64,
            stall_timeout_ms: c.stall_timeout.as_millis() as u64,
            deadline_secs: c.deadline.as_secs(),
        }
    }
}

impl FetchArgs {
    /// Copies these settings into `config` (limits and policy are left alone).
    pub fn apply(&self, config: &mut FetchConfig) {
        config.concurrency = self.concurrency.max(1);
        config.chunk_size = self.chunk_bytes.max(1);
        config.parallel_threshold = self.parallel_threshold_bytes;
        config.hedge = self.hedge;
        config.hedge_budget = self.hedge_budget;
        config.hedge_min_delay = Duration::from_millis(self.hedge_min_delay_ms);
        config.hedge_ttfb_factor = self.hedge_ttfb_factor;
        config.hedge_slow_factor = self.hedge_slow_factor;
        config.max_chunk_retries = self.retries;
        config.retry_base_delay = Duration::from_millis(self.retry_base_ms);
        config.stall_timeout = Duration::from_millis(self.stall_timeout_ms.max(1));
        config.deadline = Duration::from_secs(self.deadline_secs.max(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_config() {
        let mut c = FetchConfig {
            concurrency: 1,
            hedge: false,
            ..Default::default()
        };
        FetchArgs::default().apply(&mut c);
        let d = FetchConfig::default();
        assert_eq!(c.concurrency, d.concurrency);
        assert_eq!(c.chunk_size, d.chunk_size);
        assert_eq!(c.parallel_threshold, d.parallel_threshold);
        assert!(c.hedge);
        assert_eq!(c.hedge_min_delay, d.hedge_min_delay);
        assert_eq!(c.hedge_budget, d.hedge_budget);
        assert_eq!(c.hedge_ttfb_factor, d.hedge_ttfb_factor);
        assert_eq!(c.hedge_slow_factor, d.hedge_slow_factor);
        assert_eq!(c.retry_base_delay, d.retry_base_delay);
        assert_eq!(c.stall_timeout, d.stall_timeout);
        assert_eq!(c.deadline, d.deadline);
        assert_eq!(c.max_chunk_retries, d.max_chunk_retries);
    }
}
