//! Faults: which requests they apply to, what they do, and the request log.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use http::Method;

/// What a [`Match`] sees of a request.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// 0-based index among all requests.
    pub index: u64,
    /// The method.
    pub method: Method,
    /// The parsed `Range: bytes=a-b` (`b` absent for `a-`), if any.
    pub range: Option<(u64, Option<u64>)>,
    /// For range GETs other than the `bytes=0-0` probe: 0-based index among them.
    pub range_index: Option<u64>,
    /// How many earlier requests asked for a range starting at the same byte.
    pub same_start_before: u64,
    /// The path (never the query, which may hold a signature).
    pub path: String,
    /// The names of the query parameters, in order (never their values): S3 tells its
    /// operations apart by them (`?uploads`, `?partNumber=..&uploadId=..`).
    pub query_names: Vec<String>,
}

impl RequestInfo {
    /// A HEAD, or a `Range: bytes=0-0` GET.
    pub fn is_probe(&self) -> bool {
        self.method == Method::HEAD || self.range == Some((0, Some(0)))
    }

    /// Whether the query has a parameter `name`.
    pub fn has_query(&self, name: &str) -> bool {
        self.query_names.iter().any(|n| n == name)
    }
}

type Predicate = Arc<dyn Fn(&RequestInfo) -> bool + Send + Sync>;

/// Which requests a fault applies to.
#[derive(Clone)]
pub enum Match {
    /// Every request.
    Any,
    /// Probes: HEAD, or a `Range: bytes=0-0` GET.
    Probe,
    /// GETs with a range, the probe excluded.
    RangeGet,
    /// GETs without a `Range` header.
    PlainGet,
    /// The n-th range GET (0-based, probes excluded).
    NthRangeGet(u64),
    /// Range GETs starting at this byte.
    RangeStart(u64),
    /// The n-th (0-based) range GET starting at this byte: `nth: 1` is the first hedge or
    /// retry of a chunk.
    RangeStartNth {
        /// The first byte of the range.
        start: u64,
        /// Which request for it.
        nth: u64,
    },
    /// Any predicate.
    Custom(Predicate),
}

impl std::fmt::Debug for Match {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Match::Any => write!(f, "Any"),
            Match::Probe => write!(f, "Probe"),
            Match::RangeGet => write!(f, "RangeGet"),
            Match::PlainGet => write!(f, "PlainGet"),
            Match::NthRangeGet(n) => write!(f, "NthRangeGet({n})"),
            Match::RangeStart(s) => write!(f, "RangeStart({s})"),
            Match::RangeStartNth { start, nth } => write!(f, "RangeStartNth({start}, {nth})"),
            Match::Custom(_) => write!(f, "Custom"),
        }
    }
}

impl Match {
    pub(crate) fn matches(&self, r: &RequestInfo) -> bool {
        let is_get = r.method == Method::GET;
        match self {
            Match::Any => true,
            Match::Probe => r.is_probe(),
            Match::RangeGet => is_get && r.range.is_some() && !r.is_probe(),
            Match::PlainGet => is_get && r.range.is_none(),
            Match::NthRangeGet(n) => r.range_index == Some(*n),
            Match::RangeStart(s) => {
                is_get && !r.is_probe() && r.range.is_some_and(|(a, _)| a == *s)
            }
            Match::RangeStartNth { start, nth } => {
                is_get
                    && !r.is_probe()
                    && r.range.is_some_and(|(a, _)| a == *start)
                    && r.same_start_before == *nth
            }
            Match::Custom(p) => p(r),
        }
    }
}

/// A hook run before a request is forwarded.
pub type Hook = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// What to do to a matched request.
#[derive(Clone)]
pub enum Fault {
    /// Answer with this status and a short body, without asking the store.
    Status(u16),
    /// Answer 503 with S3's `SlowDown` error document (after reading the request body, so
    /// the client sees the answer, not a connection closed under its upload).
    SlowDown,
    /// Close the connection without answering.
    Drop,
    /// Forward, then reset the connection (TCP RST) after this many body bytes.
    ResetAfter(u64),
    /// Forward without `Content-Length` (chunked) and end the body cleanly after this many
    /// bytes: a well-formed but short response.
    TruncateAfter(u64),
    /// Forward without the `Range` header: 200 with the whole object.
    IgnoreRange,
    /// Forward the range moved by this many bytes: the store's (honest) `Content-Range`
    /// then names other bytes than those asked for.
    ShiftRange(u64),
    /// Flip the bits of the body byte at this offset.
    CorruptByte(u64),
    /// Wait this long before answering (before the first byte).
    Stall(Duration),
    /// Forward, then pause this long after this many body bytes.
    StallAfter {
        /// Body bytes delivered before the pause.
        bytes: u64,
        /// Length of the pause.
        pause: Duration,
    },
    /// Deliver the body at the bandwidth divided by this factor (or at 1 MiB/s divided by it
    /// when the shaper has no bandwidth limit).
    Slow(f64),
    /// Answer 302 to this location.
    Redirect(String),
    /// Run this, then forward normally (e.g. replace the object in the store).
    Hook(Hook),
    /// Wait, then apply another fault (e.g. a hedge that fails only after its original
    /// succeeded).
    Delayed {
        /// The wait before the answer.
        delay: Duration,
        /// What happens after it.
        then: Box<Fault>,
    },
}

impl std::fmt::Debug for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Hook(_) => write!(f, "Hook"),
            Fault::Status(s) => write!(f, "Status({s})"),
            Fault::SlowDown => write!(f, "SlowDown"),
            Fault::Drop => write!(f, "Drop"),
            Fault::ResetAfter(n) => write!(f, "ResetAfter({n})"),
            Fault::TruncateAfter(n) => write!(f, "TruncateAfter({n})"),
            Fault::IgnoreRange => write!(f, "IgnoreRange"),
            Fault::ShiftRange(n) => write!(f, "ShiftRange({n})"),
            Fault::CorruptByte(n) => write!(f, "CorruptByte({n})"),
            Fault::Stall(d) => write!(f, "Stall({d:?})"),
            Fault::StallAfter { bytes, pause } => write!(f, "StallAfter({bytes}, {pause:?})"),
            Fault::Slow(x) => write!(f, "Slow({x})"),
            Fault::Redirect(_) => write!(f, "Redirect"),
            Fault::Delayed { delay, then } => write!(f, "Delayed({delay:?}, {then:?})"),
        }
    }
}

/// A fault, the requests it applies to, and how many times it fires.
#[derive(Debug, Clone)]
pub struct FaultRule {
    /// Which requests.
    pub matcher: Match,
    /// What happens to them.
    pub fault: Fault,
    /// How many times it fires (`None`: every time).
    pub times: Option<u64>,
}

impl FaultRule {
    /// A rule that fires once.
    pub fn once(matcher: Match, fault: Fault) -> FaultRule {
        FaultRule {
            matcher,
            fault,
            times: Some(1),
        }
    }

    /// A rule that always fires.
    pub fn always(matcher: Match, fault: Fault) -> FaultRule {
        FaultRule {
            matcher,
            fault,
            times: None,
        }
    }
}

/// One request as the shaper saw it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// What the request was.
    pub info: RequestInfo,
    /// The fault applied, if any (its `Debug` text).
    pub fault: Option<String>,
    /// `"stall"` or `"slow"` when the random shaping made it a straggler.
    pub straggler: Option<&'static str>,
    /// When it arrived, relative to the shaper's start.
    pub at: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: Method, range: Option<(u64, Option<u64>)>) -> RequestInfo {
        RequestInfo {
            index: 0,
            method,
            range,
            range_index: None,
            same_start_before: 0,
            path: "/k".into(),
            query_names: vec!["uploadId".into(), "partNumber".into()],
        }
    }

    #[test]
    fn matchers() {
        let probe = info(Method::GET, Some((0, Some(0))));
        let head = info(Method::HEAD, None);
        let mut ranged = info(Method::GET, Some((8, Some(15))));
        ranged.range_index = Some(2);
        ranged.same_start_before = 1;
        let plain = info(Method::GET, None);
        assert!(Match::Probe.matches(&probe) && Match::Probe.matches(&head));
        assert!(!Match::RangeGet.matches(&probe));
        assert!(Match::RangeGet.matches(&ranged));
        assert!(Match::PlainGet.matches(&plain) && !Match::PlainGet.matches(&ranged));
        assert!(Match::NthRangeGet(2).matches(&ranged));
        assert!(Match::RangeStart(8).matches(&ranged));
        assert!(Match::RangeStartNth { start: 8, nth: 1 }.matches(&ranged));
        assert!(!Match::RangeStartNth { start: 8, nth: 0 }.matches(&ranged));
        assert!(plain.has_query("partNumber") && !plain.has_query("uploads"));
    }
}
