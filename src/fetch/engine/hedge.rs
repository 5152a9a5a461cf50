//! Hedging decisions: when a request is a straggler, what a fresh request can be expected to
//! do, and how many duplicates a fetch may launch.

use std::time::Duration;

use super::super::FetchConfig;

/// Most hedges one chunk gets (the original plus this many duplicates).
pub(super) const MAX_HEDGES_PER_CHUNK: u32 = 2;
/// Hedges always allowed per fetch, whatever the budget fraction gives.
const MIN_HEDGE_BUDGET: u32 = 4;
/// Responses shorter than this (or than half a chunk) give no throughput sample: too noisy.
const MIN_RATE_SAMPLE_BYTES: u64 = 256 * 1024;

/// The median of `samples` (the upper one of an even count).
pub(super) fn median(samples: &[f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// How many hedges a fetch may launch, in all and at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HedgeBudget {
    /// Hedges per fetch.
    pub(super) cap: u32,
    /// Hedges in flight at once.
    pub(super) max_in_flight: usize,
}

impl HedgeBudget {
    /// `fraction` of the chunks (at least [`MIN_HEDGE_BUDGET`]), half the concurrency in
    /// flight (at least 2).
    pub(super) fn new(fraction: f64, chunks: usize, concurrency: usize) -> HedgeBudget {
        HedgeBudget {
            cap: MIN_HEDGE_BUDGET.max((fraction.max(0.0) * chunks as f64).ceil() as u32),
            max_in_flight: (concurrency / 2).max(2),
        }
    }

    /// Hedges that may start now, `launched` so far and `in_flight` still running.
    pub(super) fn room(&self, launched: u32, in_flight: usize) -> usize {
        if launched >= self.cap || in_flight >= self.max_in_flight {
            return 0;
        }
        ((self.cap - launched) as usize).min(self.max_in_flight - in_flight)
    }
}

/// The throughput sample a completed response gives, if it was long enough to be one.
pub(super) fn rate_sample(bytes: u64, secs: f64, chunk_size: u64) -> Option<f64> {
    let min_sample = MIN_RATE_SAMPLE_BYTES.min(chunk_size / 2);
    (bytes >= min_sample && secs > 0.0).then(|| bytes as f64 / secs)
}

/// The throughput a fresh request can expect: the median of completed responses, or,
/// before any completes, the median of the responses receiving now (at least three, so one
/// straggler among them stands out). `receiving` holds (seconds since the first byte, bytes)
/// of each; those receiving for less than `window` seconds do not count yet.
pub(super) fn reference_rate(
    completed: &[f64],
    receiving: impl Iterator<Item = (f64, u64)>,
    window: f64,
) -> Option<f64> {
    if let Some(m) = median(completed) {
        return Some(m);
    }
    let current: Vec<f64> = receiving
        .filter(|&(secs, _)| secs >= window && secs > 0.0)
        .map(|(secs, bytes)| bytes as f64 / secs)
        .collect();
    if current.len() >= 3 {
        median(&current)
    } else {
        None
    }
}

/// Why a request is a straggler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Straggler {
    /// Stuck before the first byte.
    NoFirstByte,
    /// Receiving, but so slowly that a fresh request would finish well first.
    Slow,
}

impl Straggler {
    /// The `reason` of the straggler log line.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Straggler::NoFirstByte => "no first byte",
            Straggler::Slow => "slow",
        }
    }
}

/// The thresholds of the straggler decision, fixed for one timer tick.
#[derive(Debug, Clone, Copy)]
pub(super) struct Thresholds {
    /// Median time to first byte, seconds (0 before any sample).
    pub(super) ttfb: f64,
    /// Seconds without a first byte after which a request is a straggler.
    pub(super) ttfb_deadline: f64,
    /// Seconds of receiving before a request may be judged slow.
    pub(super) min_delay: f64,
    /// How many times later than a fresh request a slow one must finish.
    pub(super) slow_factor: f64,
    /// What a fresh request can expect, bytes per second.
    pub(super) reference_rate: Option<f64>,
}

impl Thresholds {
    /// From the configuration and the time-to-first-byte samples so far.
    pub(super) fn new(
        cfg: &FetchConfig,
        ttfb_samples: &[f64],
        reference_rate: Option<f64>,
    ) -> Thresholds {
        let ttfb = median(ttfb_samples).unwrap_or(0.0);
        let min_delay = cfg.hedge_min_delay.as_secs_f64();
        Thresholds {
            ttfb,
            ttfb_deadline: min_delay.max(ttfb * cfg.hedge_ttfb_factor),
            min_delay,
            slow_factor: cfg.hedge_slow_factor,
            reference_rate,
        }
    }
}

/// What the decision looks at of a chunk's newest request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Progress {
    /// Since it was sent.
    pub(super) waited: Duration,
    /// Since its first byte, if one came.
    pub(super) receiving: Option<Duration>,
    /// Body bytes it delivered.
    pub(super) bytes: u64,
    /// Bytes the chunk still misses, when its end is known.
    pub(super) remaining: Option<u64>,
}

/// Whether the newest request of a chunk is a straggler worth a hedge.
pub(super) fn straggler(p: Progress, t: &Thresholds) -> Option<Straggler> {
    let Some(receiving) = p.receiving else {
        return (p.waited.as_secs_f64() >= t.ttfb_deadline).then_some(Straggler::NoFirstByte);
    };
    let secs = receiving.as_secs_f64();
    match (t.reference_rate, p.remaining) {
        (Some(rate), Some(remaining)) if secs >= t.min_delay => {
            let remaining = remaining as f64;
            let own = (p.bytes as f64 / secs).max(1.0);
            let own_eta = remaining / own;
            let hedge_eta = t.ttfb + remaining / rate.max(1.0);
            (own_eta > t.slow_factor * hedge_eta).then_some(Straggler::Slow)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds(reference_rate: Option<f64>) -> Thresholds {
        let cfg = FetchConfig::default();
        Thresholds::new(&cfg, &[0.030, 0.020, 0.040], reference_rate)
    }

    fn waiting(ms: u64) -> Progress {
        Progress {
            waited: Duration::from_millis(ms),
            receiving: None,
            bytes: 0,
            remaining: Some(1 << 20),
        }
    }

    fn receiving(ms: u64, bytes: u64, remaining: Option<u64>) -> Progress {
        Progress {
            waited: Duration::from_millis(ms),
            receiving: Some(Duration::from_millis(ms)),
            bytes,
            remaining,
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(3.0));
    }

    #[test]
    fn the_budget_is_a_fraction_of_the_chunks_with_a_minimum() {
        assert_eq!(
            HedgeBudget::new(0.2, 100, 8),
            HedgeBudget {
                cap: 20,
                max_in_flight: 4
            }
        );
        assert_eq!(HedgeBudget::new(0.2, 21, 8).cap, 5, "rounded up");
        // Few chunks, no budget, a negative one: the minimum.
        assert_eq!(HedgeBudget::new(0.2, 1, 8).cap, 4);
        assert_eq!(HedgeBudget::new(0.0, 1000, 8).cap, 4);
        assert_eq!(HedgeBudget::new(-1.0, 1000, 8).cap, 4);
        // At least two in flight, whatever the concurrency.
        assert_eq!(HedgeBudget::new(0.2, 1, 1).max_in_flight, 2);
        assert_eq!(HedgeBudget::new(0.2, 1, 5).max_in_flight, 2);
    }

    #[test]
    fn room_is_bounded_by_the_budget_and_the_hedges_in_flight() {
        let b = HedgeBudget::new(0.2, 1, 8);
        assert_eq!(b.room(0, 0), 4);
        assert_eq!(b.room(1, 0), 3);
        assert_eq!(b.room(0, 1), 3);
        assert_eq!(b.room(3, 0), 1);
        assert_eq!(b.room(2, 3), 1);
        // Exhausted, or too many at once.
        assert_eq!(b.room(4, 0), 0);
        assert_eq!(b.room(9, 0), 0);
        assert_eq!(b.room(0, 4), 0);
        assert_eq!(b.room(0, 7), 0);
    }

    #[test]
    fn short_responses_give_no_rate_sample() {
        let chunk = 16 << 20;
        assert_eq!(rate_sample(256 * 1024, 0.5, chunk), Some(512.0 * 1024.0));
        assert_eq!(rate_sample(256 * 1024 - 1, 0.5, chunk), None);
        assert_eq!(rate_sample(256 * 1024, 0.0, chunk), None);
        // Small chunks: half a chunk is enough.
        assert_eq!(rate_sample(50, 1.0, 100), Some(50.0));
        assert_eq!(rate_sample(49, 1.0, 100), None);
        assert_eq!(rate_sample(0, 1.0, 1), Some(0.0));
    }

    #[test]
    fn the_reference_rate_prefers_completed_responses() {
        let none = std::iter::empty();
        assert_eq!(reference_rate(&[10.0, 30.0, 20.0], none, 0.1), Some(20.0));
        assert_eq!(reference_rate(&[], std::iter::empty(), 0.1), None);
        let three = [(1.0, 100), (2.0, 400), (0.5, 150)];
        assert_eq!(reference_rate(&[], three.into_iter(), 0.1), Some(200.0));
        // Fewer than three long enough to judge: no reference.
        let young = [(1.0, 100), (2.0, 400), (0.05, 150)];
        assert_eq!(reference_rate(&[], young.into_iter(), 0.1), None);
        let two = [(1.0, 100), (2.0, 400)];
        assert_eq!(reference_rate(&[], two.into_iter(), 0.1), None);
        let instant = [(0.0, 100), (0.0, 400), (0.0, 150)];
        assert_eq!(reference_rate(&[], instant.into_iter(), 0.0), None);
    }

    #[test]
    fn thresholds_follow_the_median_time_to_first_byte() {
        let t = thresholds(None);
        assert!((t.ttfb - 0.030).abs() < 1e-9);
        // 3 x 30 ms is below the 100 ms floor.
        assert!((t.ttfb_deadline - 0.100).abs() < 1e-9);
        let slow_store = Thresholds::new(&FetchConfig::default(), &[0.5], None);
        assert!((slow_store.ttfb_deadline - 1.5).abs() < 1e-9);
        let first = Thresholds::new(&FetchConfig::default(), &[], None);
        assert_eq!(first.ttfb, 0.0);
        assert!((first.ttfb_deadline - 0.100).abs() < 1e-9);
    }

    #[test]
    fn a_request_without_a_first_byte_is_late_after_the_deadline() {
        let t = thresholds(None);
        assert_eq!(straggler(waiting(99), &t), None);
        assert_eq!(straggler(waiting(100), &t), Some(Straggler::NoFirstByte));
        assert_eq!(Straggler::NoFirstByte.as_str(), "no first byte");
    }

    #[test]
    fn a_receiving_request_is_late_when_a_fresh_one_would_finish_well_first() {
        // A fresh request: 30 ms + 1 MiB at 10 MiB/s = 130 ms; the slow one needs more
        // than twice that.
        let t = thresholds(Some(10.0 * 1048576.0));
        let mib = 1 << 20;
        // 100 KiB in 200 ms: 0.5 MiB/s, 2 s for the remaining MiB.
        assert_eq!(
            straggler(receiving(200, 100 << 10, Some(mib)), &t),
            Some(Straggler::Slow)
        );
        assert_eq!(Straggler::Slow.as_str(), "slow");
        // 1 MiB in 200 ms: 5 MiB/s, 200 ms: not twice 130 ms.
        assert_eq!(straggler(receiving(200, mib, Some(mib)), &t), None);
        // Too early to judge, no reference, an open-ended chunk, nothing left.
        assert_eq!(straggler(receiving(99, 1, Some(mib)), &t), None);
        assert_eq!(
            straggler(receiving(200, 1, Some(mib)), &thresholds(None)),
            None
        );
        assert_eq!(straggler(receiving(200, 1, None), &t), None);
        assert_eq!(straggler(receiving(200, 1, Some(0)), &t), None);
    }
}
