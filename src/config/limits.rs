//! The overload settings of `spillway serve`: the memory budget, admission, and the
//! connection bounds. Every one is in the README's configuration table.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

use crate::error::{Error, Result};
use crate::server::body_rate::BodyRate;
use crate::server::listener::ServeOptions;
use crate::server::memory::detect_memory_limit;
use crate::server::AdmissionConfig;

/// The budget's share of a container's memory limit when nothing else is said.
pub(crate) const DEFAULT_CONTAINER_FRACTION: f64 = 0.70;
/// The budget's share of the machine's RAM outside a memory-limited container.
pub(crate) const DEFAULT_RAM_FRACTION: f64 = 0.50;

/// `SPILLWAY_MEMORY_LIMIT`: bytes (`1073741824`, `1GiB`, `512MiB`, `2G`) or a percentage of
/// the memory available to the process (`70%`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryLimit {
    /// Exactly this many bytes.
    Bytes(u64),
    /// This fraction (0, 1] of the container's limit (or RAM).
    Fraction(f64),
}

impl FromStr for MemoryLimit {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        let bad = || {
            Error::Config(format!(
                "memory limit must be bytes (e.g. 1073741824, 1GiB, 512MiB) or a percentage (e.g. 70%), got {t:?}"
            ))
        };
        if let Some(p) = t.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(bad());
            }
            return Ok(MemoryLimit::Fraction(p / 100.0));
        }
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(digits);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "ki" | "kib" => 1 << 10,
            "m" | "mb" => 1000 * 1000,
            "mi" | "mib" => 1 << 20,
            "g" | "gb" => 1000 * 1000 * 1000,
            "gi" | "gib" => 1 << 30,
            "t" | "tb" => 1000 * 1000 * 1000 * 1000,
            "ti" | "tib" => 1 << 40,
            _ => return Err(bad()),
        };
        let bytes = n.checked_mul(mult).filter(|b| *b > 0).ok_or_else(bad)?;
        Ok(MemoryLimit::Bytes(bytes))
    }
}

impl fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryLimit::Bytes(b) => write!(f, "{b}"),
            MemoryLimit::Fraction(p) => write!(f, "{}%", p * 100.0),
        }
    }
}

fn seconds(s: &str) -> std::result::Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected seconds (e.g. 15 or 0.5), got {s:?}"))?;
    if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
        return Err(format!("seconds must be between 0 and 86400, got {s:?}"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn share(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a fraction such as 0.5, got {s:?}"))?;
    if !(v > 0.0 && v <= 1.0) {
        return Err(format!("the share must be in (0, 1], got {s:?}"));
    }
    Ok(v)
}

/// Memory budget, admission and connection bounds (`spillway serve`).
#[derive(Debug, Clone, Args)]
pub struct LimitsArgs {
    /// Memory budget for calls in flight: bytes (`1073741824`, `1GiB`, `512MiB`) or a
    /// percentage (`70%`) of the container's memory limit (SPILLWAY_CONTAINER_MEMORY, else the
    /// cgroup's), or of RAM outside a limited container [default: 70% of the container's
    /// limit, else 50% of RAM].
    #[arg(long, env = "SPILLWAY_MEMORY_LIMIT")]
    pub memory_limit: Option<MemoryLimit>,
    /// The container's memory limit, in bytes (the chart sets it from the pod spec); overrides
    /// what the cgroup files say.
    #[arg(long, env = "SPILLWAY_CONTAINER_MEMORY")]
    pub container_memory: Option<u64>,
    /// Seconds a call waits for memory or a call slot before it gets 503 + Retry-After.
    #[arg(long, env = "SPILLWAY_ADMISSION_TIMEOUT", default_value = "10", value_parser = seconds)]
    pub admission_timeout: Duration,
    /// Most calls waiting for memory (and most waiting for a slot); more get 503 at once.
    #[arg(long, env = "SPILLWAY_ADMISSION_QUEUE", default_value_t = 1024)]
    pub admission_queue: usize,
    /// Most calls running at once (0: no limit but memory).
    #[arg(long, env = "SPILLWAY_MAX_CONCURRENT_CALLS", default_value_t = 1024)]
    pub max_concurrent_calls: usize,
    /// With authentication, the fraction of the memory budget one principal may hold (1: no
    /// per-principal limit).
    #[arg(long, env = "SPILLWAY_PRINCIPAL_SHARE", default_value = "0.5", value_parser = share)]
    pub principal_share: f64,
    /// Most open connections (0: no limit); past it, accepting pauses until one closes.
    #[arg(long, env = "SPILLWAY_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Seconds a connection gets to send a request's headers, and stays open idle between
    /// requests (0: no limit).
    #[arg(long, env = "SPILLWAY_HEADER_TIMEOUT", default_value = "15", value_parser = seconds)]
    pub header_timeout: Duration,
    /// Slowest request body accepted, in bytes/s averaged over 5 s windows after the grace
    /// (0: no check); slower bodies are cut off with 408.
    #[arg(long, env = "SPILLWAY_MIN_BODY_RATE", default_value_t = 1024)]
    pub min_body_rate: u64,
    /// Seconds a request body may take to get going before the rate applies.
    #[arg(long, env = "SPILLWAY_BODY_RATE_GRACE", default_value = "10", value_parser = seconds)]
    pub body_rate_grace: Duration,
}

impl LimitsArgs {
    /// The memory budget in bytes, with how it was found (for the startup log).
    pub fn memory_budget(&self) -> Result<(u64, String)> {
        let available = || -> Option<(u64, String)> {
            if let Some(c) = self.container_memory.filter(|c| *c > 0) {
                return Some((c, "SPILLWAY_CONTAINER_MEMORY".into()));
            }
            detect_memory_limit().map(|(m, src)| (m, src.to_string()))
        };
        match self.memory_limit {
            Some(MemoryLimit::Bytes(b)) => Ok((b, "SPILLWAY_MEMORY_LIMIT".into())),
            Some(MemoryLimit::Fraction(f)) => {
                let (m, src) = available().ok_or_else(|| {
                    Error::Config(
                        "SPILLWAY_MEMORY_LIMIT is a percentage, but neither the container's memory limit nor the machine's RAM could be read; give bytes instead".into(),
                    )
                })?;
                Ok((
                    (m as f64 * f) as u64,
                    format!("{} of {src}", MemoryLimit::Fraction(f)),
                ))
            }
            None => {
                let (m, src) = available().ok_or_else(|| {
                    Error::Config(
                        "could not read the container's memory limit or the machine's RAM; set SPILLWAY_MEMORY_LIMIT".into(),
                    )
                })?;
                let f = if src == "ram" {
                    DEFAULT_RAM_FRACTION
                } else {
                    DEFAULT_CONTAINER_FRACTION
                };
                Ok((
                    (m as f64 * f) as u64,
                    format!("{} of {src}", MemoryLimit::Fraction(f)),
                ))
            }
        }
    }

    /// The admission settings, with the budget.
    pub fn admission(&self, memory_limit: u64) -> AdmissionConfig {
        AdmissionConfig {
            memory_limit: Some(memory_limit),
            timeout: self.admission_timeout,
            max_waiters: self.admission_queue,
            max_concurrent_calls: (self.max_concurrent_calls > 0)
                .then_some(self.max_concurrent_calls),
            principal_share: (self.principal_share < 1.0).then_some(self.principal_share),
        }
    }

    /// The serve loop's connection bounds.
    pub fn serve_options(&self) -> ServeOptions {
        ServeOptions {
            tls: None,
            max_connections: (self.max_connections > 0).then_some(self.max_connections),
            header_timeout: (!self.header_timeout.is_zero()).then_some(self.header_timeout),
            body_rate: BodyRate {
                min_bytes_per_sec: self.min_body_rate,
                grace: self.body_rate_grace,
                ..BodyRate::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_limits_parse() {
        for (text, want) in [
            ("1073741824", MemoryLimit::Bytes(1 << 30)),
            ("1GiB", MemoryLimit::Bytes(1 << 30)),
            ("512 MiB", MemoryLimit::Bytes(512 << 20)),
            ("2G", MemoryLimit::Bytes(2_000_000_000)),
            ("70%", MemoryLimit::Fraction(0.7)),
        ] {
            assert_eq!(text.parse::<MemoryLimit>().unwrap(), want, "{text}");
        }
        for bad in [
            "",
            "0",
            "-1",
            "1.5GiB",
            "12XB",
            "0%",
            "101%",
            "abc%",
            "99999999999999TiB",
        ] {
            assert!(bad.parse::<MemoryLimit>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn seconds_and_shares_are_checked() {
        assert_eq!(seconds("0.5").unwrap(), Duration::from_millis(500));
        assert!(seconds("-1").is_err() && seconds("x").is_err() && seconds("1e9").is_err());
        assert!(share("0.5").is_ok() && share("1").is_ok());
        assert!(share("0").is_err() && share("1.5").is_err());
    }
}
