//! How the shaper shapes a store when no fault applies.

use std::time::Duration;

use url::Url;

/// How the shaper makes the store behave when no fault applies.
#[derive(Debug, Clone)]
pub struct ShaperConfig {
    /// The store: `scheme://host:port` (a path is ignored; request paths are forwarded).
    pub upstream: Url,
    /// Bytes per second of each response body; `None`: unlimited.
    pub bandwidth: Option<u64>,
    /// Time to first byte added to every request.
    pub ttfb: Duration,
    /// The time to first byte varies uniformly within `ttfb ± ttfb_jitter`.
    pub ttfb_jitter: Duration,
    /// Probability that a request stalls for `stall` before its first byte.
    pub stall_probability: f64,
    /// How long a straggler stalls.
    pub stall: Duration,
    /// Probability that a response is delivered at `1 / slow_factor` of the bandwidth.
    pub slow_probability: f64,
    /// Slowdown of slow responses.
    pub slow_factor: f64,
    /// Forward the client's `Host` header instead of the upstream's (for stores whose
    /// signature covers the host: presign for the shaper's address).
    pub preserve_host: bool,
    /// Query string added to requests that have none (lets clients that cannot carry a
    /// presigned query, such as `object_store`'s HTTP store, read a signed store).
    pub append_query: Option<String>,
    /// Seed of the straggler draws (`None`: random).
    pub seed: Option<u64>,
}

impl ShaperConfig {
    /// No shaping at all: a plain proxy (faults still apply).
    pub fn transparent(upstream: Url) -> ShaperConfig {
        ShaperConfig {
            upstream,
            bandwidth: None,
            ttfb: Duration::ZERO,
            ttfb_jitter: Duration::ZERO,
            stall_probability: 0.0,
            stall: Duration::ZERO,
            slow_probability: 0.0,
            slow_factor: 1.0,
            preserve_host: false,
            append_query: None,
            seed: None,
        }
    }

    /// The default S3-like shaping of the fetch benchmark: 50 MiB/s per connection, 30 ms
    /// (± 10 ms) to first byte, 3 % of requests stall 2 s before the first byte, 1 % deliver
    /// at a tenth of the rate.
    pub fn s3_like(upstream: Url) -> ShaperConfig {
        ShaperConfig {
            bandwidth: Some(50 * 1024 * 1024),
            ttfb: Duration::from_millis(30),
            ttfb_jitter: Duration::from_millis(10),
            stall_probability: 0.03,
            stall: Duration::from_secs(2),
            slow_probability: 0.01,
            slow_factor: 10.0,
            ..ShaperConfig::transparent(upstream)
        }
    }
}
