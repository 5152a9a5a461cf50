//! The server's resident set (`--server-pid`), read from `/proc/PID/status` (Linux): `VmRSS`
//! sampled on an interval while the load runs, `VmHWM` (the kernel's own high-water mark,
//! which a sample can miss) at the end. The kernel updates `VmHWM` lazily (when the resident
//! set is about to shrink), so a sample can also exceed it: the peak is the larger of the two.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How often `VmRSS` is read.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// What the sampler saw.
#[derive(Debug, Clone)]
pub(crate) struct RssReport {
    pub(crate) pid: u32,
    /// Largest `VmRSS` sampled, bytes.
    pub(crate) sampled_peak: u64,
    /// `VmHWM` at the end, bytes (`None` when the process was gone by then).
    pub(crate) vm_hwm: Option<u64>,
    /// Samples read.
    pub(crate) samples: u64,
    pub(crate) interval: Duration,
    /// The process disappeared while the load ran.
    pub(crate) exited: bool,
}

/// A `Vm...:` line of `/proc/PID/status` (`VmRSS:   12345 kB`), in bytes.
pub(crate) fn status_field(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()
        .map(|kib| kib * 1024)
}

fn read_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field(&status, field)
}

/// Samples `pid` until [`Sampler::finish`].
pub(crate) struct Sampler {
    pid: u32,
    stop: oneshot::Sender<()>,
    task: JoinHandle<(u64, u64, bool)>,
}

impl Sampler {
    /// Starts sampling; fails when `pid` cannot be read now (a wrong pid is a usage error,
    /// better told before the load starts than after).
    pub(crate) fn start(pid: u32) -> Result<Sampler, String> {
        if read_field(pid, "VmRSS").is_none() {
            return Err(format!(
                "--server-pid {pid}: cannot read VmRSS from /proc/{pid}/status"
            ));
        }
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let (mut peak, mut samples, mut exited) = (0u64, 0u64, false);
            let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate: one sample even when the run is shorter than
            // the interval.
            loop {
                tick.tick().await;
                match read_field(pid, "VmRSS") {
                    Some(rss) => {
                        peak = peak.max(rss);
                        samples += 1;
                    }
                    None => {
                        exited = true;
                        break;
                    }
                }
                // Stopped, or the sampler was dropped.
                if !matches!(stopped.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
                    break;
                }
            }
            (peak, samples, exited)
        });
        Ok(Sampler { pid, stop, task })
    }

    /// Stops sampling and reads `VmHWM`.
    pub(crate) async fn finish(self) -> RssReport {
        let _ = self.stop.send(());
        let (sampled_peak, samples, exited) = self.task.await.unwrap_or((0, 0, true));
        let vm_hwm = read_field(self.pid, "VmHWM");
        RssReport {
            pid: self.pid,
            sampled_peak,
            vm_hwm,
            samples,
            interval: SAMPLE_INTERVAL,
            exited: exited || vm_hwm.is_none(),
        }
    }
}

impl RssReport {
    /// The peak resident set: the largest sample or `VmHWM`, whichever is larger.
    pub(crate) fn peak(&self) -> u64 {
        self.sampled_peak.max(self.vm_hwm.unwrap_or(0))
    }
}

/// This process's peak RSS (`getrusage`), bytes.
pub(crate) fn own_peak_rss() -> Option<u64> {
    // SAFETY: rusage is plain old data; zero is a valid value for every field.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer is to a live local.
    let r = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    // ru_maxrss is in KiB on Linux.
    (r == 0).then(|| u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_in_bytes() {
        let status = "Name:\tspillway\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_field(status, "VmRSS"), Some(1024 * 1024));
        assert_eq!(status_field(status, "VmHWM"), Some(2048 * 1024));
        assert_eq!(status_field(status, "VmSwap"), None);
    }

    #[tokio::test]
    async fn samples_its_own_process() {
        let s = Sampler::start(std::process::id()).unwrap();
        let r = s.finish().await;
        assert!(r.samples >= 1, "{r:?}");
        assert!(r.sampled_peak > 0 && r.vm_hwm.is_some(), "{r:?}");
        assert_eq!(r.peak(), r.sampled_peak.max(r.vm_hwm.unwrap()));
        assert!(!r.exited);
    }
}
