//! The server-wide memory budget: a pool of bytes that calls reserve before they allocate, so a
//! burst of large calls waits (or is refused with 503) instead of taking the replica past its
//! memory limit.
//!
//! Modelled on DataFusion's `MemoryPool`/`MemoryReservation`: a [`MemoryBudget`] hands out
//! [`Reservation`]s, which grow, shrink and give their bytes back when dropped. A reservation
//! that does not fit waits in one FIFO queue, so a large call is not starved by a stream of
//! small ones; it gives up after the admission timeout, and a full queue refuses at once. With
//! a per-principal share, one caller's requests wait once that caller holds its share, while
//! other callers' requests go past them.
//!
//! Each call holds one [`CallMemory`]: the request body, decoded request pointers, what the
//! handler reserves ([`CallContext::reserve`](super::CallContext::reserve)), the result and
//! its encoding are all counted in it, and it is released when the response body has been
//! sent.
//!
//! ```
//! # async fn run() {
//! use std::time::Duration;
//! use spillway::server::memory::{BudgetConfig, MemoryBudget};
//! let budget = MemoryBudget::new(BudgetConfig::new(64 << 20).with_admission_timeout(Duration::from_secs(1)));
//! let mut r = budget.reserve(None, 48 << 20).await.unwrap();
//! assert_eq!(budget.in_use(), 48 << 20);
//! assert!(budget.reserve(None, 32 << 20).await.is_err()); // waits 1 s, then gives up
//! r.shrink(40 << 20);
//! let _more = budget.reserve(None, 32 << 20).await.unwrap();
//! drop(r);
//! assert_eq!(budget.in_use(), 32 << 20);
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::wire::{ErrorCode, RpcError};

/// The error type of the RPC error a refused reservation is answered with (503). The Rust
/// client and `spillway call` retry it (it is sent before the method ran, or by a handler
/// that reserves before it does anything).
pub const OVERLOADED_ERROR: &str = "ServerOverloadedError";

/// How a [`MemoryBudget`] admits reservations.
#[derive(Debug, Clone)]
pub struct BudgetConfig {
    /// Bytes in the pool.
    pub limit: u64,
    /// Longest a reservation waits for room before it is refused.
    pub admission_timeout: Duration,
    /// Most reservations waiting at once; one more is refused at once.
    pub max_waiters: usize,
    /// The fraction of the pool one principal may hold (`None`: no per-principal limit).
    /// Applies to reservations made with a principal (calls of authenticated callers).
    pub principal_share: Option<f64>,
}

impl BudgetConfig {
    /// A pool of `limit` bytes, waiting up to 10 s, at most 1024 waiters, no principal share.
    pub fn new(limit: u64) -> Self {
        BudgetConfig {
            limit,
            admission_timeout: Duration::from_secs(10),
            max_waiters: 1024,
            principal_share: None,
        }
    }

    /// Sets [`BudgetConfig::admission_timeout`].
    pub fn with_admission_timeout(mut self, timeout: Duration) -> Self {
        self.admission_timeout = timeout;
        self
    }

    /// Sets [`BudgetConfig::max_waiters`].
    pub fn with_max_waiters(mut self, n: usize) -> Self {
        self.max_waiters = n;
        self
    }

    /// Sets [`BudgetConfig::principal_share`] (clamped to (0, 1]).
    pub fn with_principal_share(mut self, share: Option<f64>) -> Self {
        self.principal_share = share.map(|s| s.clamp(f64::MIN_POSITIVE, 1.0));
        self
    }
}

/// Why a reservation was not granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// More than the pool (or the caller's share of it) could ever hold.
    #[error("the call needs {requested} bytes of memory, more than this server's budget allows one call ({allowed} bytes)")]
    TooLarge {
        /// Bytes asked for.
        requested: u64,
        /// The most one reservation of this caller can hold.
        allowed: u64,
    },
    /// No room came free within the admission timeout.
    #[error("the server is busy: no memory came free for {requested} bytes within {} s", .waited.as_secs_f64().ceil())]
    Timeout {
        /// Bytes asked for.
        requested: u64,
        /// How long it waited.
        waited: Duration,
    },
    /// Too many reservations are waiting already.
    #[error("the server is busy: {waiters} calls are already waiting for memory")]
    QueueFull {
        /// Waiters at the time.
        waiters: usize,
    },
    /// Too many calls are running and waiting already.
    #[error("the server is busy: {limit} calls are running")]
    TooManyCalls {
        /// `max_concurrent_calls`.
        limit: usize,
    },
    /// The server is shutting down.
    #[error("the server is shutting down")]
    Draining,
}

impl AdmissionError {
    /// The `Retry-After` to advertise, in seconds.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            AdmissionError::Draining => 1,
            _ => 2,
        }
    }

    /// The metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            AdmissionError::TooLarge { .. } => "too_large",
            AdmissionError::Timeout { .. } => "timeout",
            AdmissionError::QueueFull { .. } => "queue_full",
            AdmissionError::TooManyCalls { .. } => "too_many_calls",
            AdmissionError::Draining => "draining",
        }
    }

    /// The RPC error a client sees: `ServerOverloadedError`, code `UNAVAILABLE`, with a
    /// `vgi_rpc.RetryInfo` detail (the reference's shape for a transient refusal); a
    /// reservation that can never fit is `RESOURCE_EXHAUSTED` without retry.
    pub fn to_rpc_error(&self) -> RpcError {
        match self {
            AdmissionError::TooLarge { .. } => RpcError::new(OVERLOADED_ERROR, self.to_string())
                .with_code(ErrorCode::ResourceExhausted),
            _ => RpcError::new(OVERLOADED_ERROR, self.to_string())
                .with_code(ErrorCode::Unavailable)
                .with_details(vec![serde_json::json!({
                    "@type": "vgi_rpc.RetryInfo",
                    "retry_delay_seconds": self.retry_after_secs(),
                })]),
        }
    }
}

/// A pool of bytes shared by every call of a server. Cloning shares the pool.
#[derive(Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    config: BudgetConfig,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    used: u64,
    by_principal: HashMap<Arc<str>, u64>,
    queue: VecDeque<Waiter>,
    next_id: u64,
}

struct Waiter {
    id: u64,
    bytes: u64,
    principal: Option<Arc<str>>,
    grant: oneshot::Sender<()>,
    /// Work that holds memory already and needs a little more to finish.
    top_up: bool,
}

impl fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("limit", &self.inner.config.limit)
            .field("in_use", &self.in_use())
            .field("waiters", &self.waiters())
            .finish()
    }
}

impl MemoryBudget {
    /// A pool as `config` says.
    pub fn new(config: BudgetConfig) -> Self {
        metrics::gauge!("spillway_memory_budget_bytes").set(config.limit as f64);
        MemoryBudget {
            inner: Arc::new(Inner {
                config,
                state: Mutex::default(),
            }),
        }
    }

    /// A pool so large it never makes anyone wait (for library users who bound memory
    /// elsewhere, and for tests).
    pub fn unlimited() -> Self {
        Self::new(BudgetConfig::new(u64::MAX / 2))
    }

    /// The settings.
    pub fn config(&self) -> &BudgetConfig {
        &self.inner.config
    }

    /// Bytes in the pool.
    pub fn limit(&self) -> u64 {
        self.inner.config.limit
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> u64 {
        self.inner.lock().used
    }

    /// Reservations waiting now.
    pub fn waiters(&self) -> usize {
        self.inner.lock().queue.len()
    }

    /// An empty reservation for `principal`, to grow later.
    pub fn empty(&self, principal: Option<Arc<str>>) -> Reservation {
        Reservation {
            inner: self.inner.clone(),
            principal,
            bytes: 0,
        }
    }

    /// The most one reservation of `principal` can ever hold.
    pub fn allowed_for(&self, principal: Option<&str>) -> u64 {
        self.inner.allowed(principal.is_some())
    }

    /// Reserves `bytes` for `principal`, waiting in the queue for room up to the admission
    /// timeout.
    pub async fn reserve(
        &self,
        principal: Option<Arc<str>>,
        bytes: u64,
    ) -> Result<Reservation, AdmissionError> {
        let mut r = self.empty(principal);
        r.grow(bytes).await?;
        Ok(r)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a few counters updated in single statements: a panic elsewhere cannot
        // leave it half-written, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reservations this small never queue when they fit: 1/64 of the pool, at most 1 MiB.
    fn small_bytes(&self) -> u64 {
        (self.config.limit / 64).min(1 << 20)
    }

    fn allowed(&self, has_principal: bool) -> u64 {
        match self.config.principal_share {
            Some(share) if has_principal => (self.config.limit as f64 * share) as u64,
            _ => self.config.limit,
        }
    }

    fn principal_fits(&self, st: &State, principal: Option<&Arc<str>>, bytes: u64) -> bool {
        match principal {
            Some(p) if self.config.principal_share.is_some() => {
                let held = st.by_principal.get(p).copied().unwrap_or(0);
                held.saturating_add(bytes) <= self.allowed(true)
            }
            _ => true,
        }
    }

    fn take(&self, st: &mut State, principal: Option<&Arc<str>>, bytes: u64) {
        st.used = st.used.saturating_add(bytes);
        if let Some(p) = principal {
            *st.by_principal.entry(p.clone()).or_default() += bytes;
        }
        metrics::gauge!("spillway_memory_in_use_bytes").set(st.used as f64);
    }

    fn give_back(&self, st: &mut State, principal: Option<&Arc<str>>, bytes: u64) {
        st.used = st.used.saturating_sub(bytes);
        if let Some(p) = principal {
            if let Some(held) = st.by_principal.get_mut(p) {
                *held = held.saturating_sub(bytes);
                if *held == 0 {
                    st.by_principal.remove(p);
                }
            }
        }
        metrics::gauge!("spillway_memory_in_use_bytes").set(st.used as f64);
        self.pump(st);
    }

    /// Grants waiters in order while they fit. A waiter held back only by its principal's
    /// share is passed over (it must not block other callers); one held back by the pool
    /// stops the scan, so the pool's room goes to the oldest waiter first.
    fn pump(&self, st: &mut State) {
        let mut i = 0;
        while i < st.queue.len() {
            let (bytes, principal) = {
                let w = &st.queue[i];
                (w.bytes, w.principal.clone())
            };
            if !self.principal_fits(st, principal.as_ref(), bytes) {
                i += 1;
                continue;
            }
            if st.used.saturating_add(bytes) > self.config.limit {
                break;
            }
            let Some(w) = st.queue.remove(i) else { break };
            self.take(st, principal.as_ref(), bytes);
            if w.grant.send(()).is_err() {
                // The waiter gave up as it was granted: the bytes go back at once.
                st.used = st.used.saturating_sub(bytes);
                if let Some(p) = &principal {
                    if let Some(held) = st.by_principal.get_mut(p) {
                        *held = held.saturating_sub(bytes);
                    }
                }
            }
        }
        metrics::gauge!("spillway_memory_waiters").set(st.queue.len() as f64);
    }

    /// Whether someone who may go is waiting ahead of a new request.
    fn queue_blocks(&self, st: &State) -> bool {
        st.queue
            .iter()
            .any(|w| self.principal_fits(st, w.principal.as_ref(), w.bytes))
    }
}

/// A queued request, taken out of the queue when its wait ends either way.
struct WaitGuard {
    inner: Arc<Inner>,
    id: u64,
    bytes: u64,
    principal: Option<Arc<str>>,
    rx: oneshot::Receiver<()>,
}

impl WaitGuard {
    /// Leaves the queue; true when the grant came in the meantime (the bytes are then this
    /// waiter's).
    fn leave(&mut self) -> bool {
        let mut st = self.inner.lock();
        if let Some(pos) = st.queue.iter().position(|w| w.id == self.id) {
            st.queue.remove(pos);
            // Leaving may let the waiters behind go.
            self.inner.pump(&mut st);
            return false;
        }
        self.rx.try_recv().is_ok()
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        if let Some(pos) = st.queue.iter().position(|w| w.id == self.id) {
            st.queue.remove(pos);
            self.inner.pump(&mut st);
        } else if self.rx.try_recv().is_ok() {
            // Granted, but the future was dropped before it took the grant: nobody holds
            // these bytes, so they go back. (A grant the wait or `leave` took was consumed.)
            self.inner
                .give_back(&mut st, self.principal.as_ref(), self.bytes);
        }
    }
}

/// Bytes held in a [`MemoryBudget`]; given back when dropped.
pub struct Reservation {
    inner: Arc<Inner>,
    principal: Option<Arc<str>>,
    bytes: u64,
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl Reservation {
    /// Bytes held.
    pub fn size(&self) -> u64 {
        self.bytes
    }

    /// Holds `bytes` more, waiting in the queue for room up to the admission timeout.
    pub async fn grow(&mut self, bytes: u64) -> Result<(), AdmissionError> {
        self.grow_in_turn(bytes, false).await
    }

    /// As [`Reservation::grow`], ahead of every waiter that is not itself a top-up: for work
    /// that already holds memory and needs a little more to finish (encoding a result it has,
    /// decoding a body it read). Queued behind new calls, it would hold its memory while they
    /// wait for it: a deadlock that only the admission timeout ends.
    pub async fn top_up(&mut self, bytes: u64) -> Result<(), AdmissionError> {
        self.grow_in_turn(bytes, true).await
    }

    async fn grow_in_turn(&mut self, bytes: u64, top_up: bool) -> Result<(), AdmissionError> {
        if bytes == 0 {
            return Ok(());
        }
        let allowed = self.inner.allowed(self.principal.is_some());
        let requested = self.bytes.saturating_add(bytes);
        if requested > allowed {
            metrics::counter!("spillway_admission_rejections_total", "reason" => "too_large")
                .increment(1);
            return Err(AdmissionError::TooLarge { requested, allowed });
        }
        let (rx, id) = {
            let mut st = self.inner.lock();
            let fits = st.used.saturating_add(bytes) <= self.inner.config.limit
                && self
                    .inner
                    .principal_fits(&st, self.principal.as_ref(), bytes);
            // Small reservations (a small call's body and answer) go past the queue when they
            // fit: FIFO protects large calls from being starved by small ones, but making a
            // 200-byte call wait for a 300 MiB one to fit would only add latency.
            let small = bytes <= self.inner.small_bytes();
            if fits && (top_up || small || !self.inner.queue_blocks(&st)) {
                self.inner.take(&mut st, self.principal.as_ref(), bytes);
                self.bytes += bytes;
                return Ok(());
            }
            if st.queue.len() >= self.inner.config.max_waiters {
                let waiters = st.queue.len();
                drop(st);
                metrics::counter!("spillway_admission_rejections_total", "reason" => "queue_full")
                    .increment(1);
                return Err(AdmissionError::QueueFull { waiters });
            }
            let (tx, rx) = oneshot::channel();
            let id = st.next_id;
            st.next_id += 1;
            let waiter = Waiter {
                id,
                bytes,
                principal: self.principal.clone(),
                grant: tx,
                top_up,
            };
            if top_up {
                // Behind the top-ups already waiting, ahead of every new call.
                let at = st.queue.iter().take_while(|w| w.top_up).count();
                st.queue.insert(at, waiter);
            } else {
                st.queue.push_back(waiter);
            }
            metrics::gauge!("spillway_memory_waiters").set(st.queue.len() as f64);
            (rx, id)
        };
        // Dropping this future (the client went away) must take it out of the queue, or a
        // dead waiter at the head would hold everyone behind it.
        let mut guard = WaitGuard {
            inner: self.inner.clone(),
            id,
            bytes,
            principal: self.principal.clone(),
            rx,
        };
        let started = Instant::now();
        let outcome =
            tokio::time::timeout(self.inner.config.admission_timeout, &mut guard.rx).await;
        if matches!(outcome, Ok(Ok(()))) || guard.leave() {
            self.bytes += bytes;
            metrics::histogram!("spillway_admission_wait_seconds")
                .record(started.elapsed().as_secs_f64());
            return Ok(());
        }
        metrics::counter!("spillway_admission_rejections_total", "reason" => "timeout")
            .increment(1);
        Err(AdmissionError::Timeout {
            requested: bytes,
            waited: started.elapsed(),
        })
    }

    /// Holds `bytes` more at once, over the pool's limit if need be: for memory that is
    /// already allocated (a result a handler returned without reserving it), so that later
    /// calls wait for it to be released.
    pub fn force_grow(&mut self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut st = self.inner.lock();
        self.inner.take(&mut st, self.principal.as_ref(), bytes);
        self.bytes += bytes;
    }

    /// Gives back up to `bytes`.
    pub fn shrink(&mut self, bytes: u64) {
        let bytes = bytes.min(self.bytes);
        if bytes == 0 {
            return;
        }
        self.bytes -= bytes;
        let mut st = self.inner.lock();
        self.inner
            .give_back(&mut st, self.principal.as_ref(), bytes);
    }

    /// Moves `other`'s bytes into this reservation (same pool and principal assumed).
    pub fn merge(&mut self, mut other: Reservation) {
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        if bytes > 0 {
            let mut st = self.inner.lock();
            self.inner
                .give_back(&mut st, self.principal.as_ref(), bytes);
        }
    }
}

/// What emitting a result batch of `bytes` costs beyond the batch itself: the inline body
/// (and its compressed copy), or arrow's encoded copy plus the chunks in flight to the store.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EmitCost {
    /// Results at or above this are externalized (`None`: no storage, always inline).
    pub(crate) threshold: Option<u64>,
    /// Bytes of the externalizer's in-flight chunks and zstd state.
    pub(crate) pipeline: u64,
}

impl EmitCost {
    /// The bytes a result of `bytes` needs while it is emitted, itself included.
    pub(crate) fn of(&self, bytes: u64) -> u64 {
        match self.threshold {
            // The chunks in flight never hold more than the object itself.
            Some(t) if bytes >= t => bytes
                .saturating_mul(2)
                .saturating_add(self.pipeline.min(bytes)),
            // Inline: the batch, the encoded body and a compressed copy of it.
            _ => bytes.saturating_mul(3),
        }
    }
}

/// The memory one call holds, shared by everything that works on it (request reading, the
/// handler's [`CallContext`](super::CallContext), result emission); released when the last
/// clone is dropped, which the admission layer delays until the response body has been sent.
#[derive(Clone)]
pub struct CallMemory {
    budget: MemoryBudget,
    held: Arc<Mutex<Reservation>>,
    emit: EmitCost,
}

impl fmt::Debug for CallMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallMemory")
            .field("held", &self.held())
            .finish()
    }
}

impl CallMemory {
    pub(crate) fn new(budget: &MemoryBudget, principal: Option<Arc<str>>, emit: EmitCost) -> Self {
        CallMemory {
            held: Arc::new(Mutex::new(budget.empty(principal.clone()))),
            budget: budget.clone(),
            emit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Reservation> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes this call holds.
    pub fn held(&self) -> u64 {
        self.lock().size()
    }

    fn principal(&self) -> Option<Arc<str>> {
        self.lock().principal.clone()
    }

    /// Holds `bytes` more, waiting for room.
    pub async fn reserve(&self, bytes: u64) -> Result<(), AdmissionError> {
        let more = self.budget.reserve(self.principal(), bytes).await?;
        self.lock().merge(more);
        Ok(())
    }

    /// Holds `bytes` more to finish work the call holds memory for, ahead of new calls (see
    /// [`Reservation::top_up`]).
    pub(crate) async fn top_up(&self, bytes: u64) -> Result<(), AdmissionError> {
        let mut more = self.budget.empty(self.principal());
        more.top_up(bytes).await?;
        self.lock().merge(more);
        Ok(())
    }

    /// Tops up by `bytes` from a blocking thread (a decoder growing as it writes).
    pub(crate) fn reserve_blocking(&self, bytes: u64) -> Result<(), AdmissionError> {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle.block_on(self.top_up(bytes)),
            // No runtime (unit tests of decoders): counted without waiting.
            Err(_) => {
                self.force(bytes);
                Ok(())
            }
        }
    }

    /// Holds `bytes` more at once: memory that is already allocated.
    pub(crate) fn force(&self, bytes: u64) {
        self.lock().force_grow(bytes);
    }

    /// Gives back up to `bytes`.
    pub(crate) fn release(&self, bytes: u64) {
        self.lock().shrink(bytes);
    }

    /// What emitting a result of `bytes` costs, the result included.
    pub(crate) fn emit_cost(&self, bytes: u64) -> u64 {
        self.emit.of(bytes)
    }
}

/// The memory this process may use: the cgroup limit of its container (v2 `memory.max` or v1
/// `memory.limit_in_bytes`, the smallest along its cgroup path) when there is one, else the
/// machine's RAM; with where it came from.
pub fn detect_memory_limit() -> Option<(u64, &'static str)> {
    detect_memory_limit_in(Path::new("/"))
}

/// [`detect_memory_limit`] under another root (fixtures in tests).
pub fn detect_memory_limit_in(root: &Path) -> Option<(u64, &'static str)> {
    if let Some(limit) = cgroup_limit(root) {
        return Some((limit, "cgroup"));
    }
    mem_total(root).map(|m| (m, "ram"))
}

/// Lines of an unlimited cgroup read as "max" (v2) or a huge number (v1: the page-rounded
/// i64::MAX); both mean no limit.
fn parse_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    t.parse::<u64>()
        .ok()
        .filter(|v| *v > 0 && *v < (1u64 << 62))
}

fn cgroup_limit(root: &Path) -> Option<u64> {
    let sys = root.join("sys/fs/cgroup");
    let own = std::fs::read_to_string(root.join("proc/self/cgroup")).unwrap_or_default();
    let mut limits = Vec::new();
    // v2: the unified hierarchy, "0::/path".
    let v2_path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/");
    // v1: the memory controller, "N:memory:/path" (possibly with other controllers).
    let v1_path = own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    });
    let walk = |base: &Path, path: &str, file: &str, limits: &mut Vec<u64>| {
        // In a container's own cgroup namespace the path is "/", and the files sit at the base;
        // otherwise every ancestor's limit applies.
        let mut dir = base.join(path.trim_start_matches('/'));
        loop {
            if let Some(v) = std::fs::read_to_string(dir.join(file))
                .ok()
                .and_then(|t| parse_limit(&t))
            {
                limits.push(v);
            }
            if dir == base || !dir.pop() || !dir.starts_with(base) {
                break;
            }
        }
    };
    if sys.join("cgroup.controllers").exists() {
        walk(&sys, v2_path, "memory.max", &mut limits);
    } else {
        let base = sys.join("memory");
        walk(
            &base,
            v1_path.unwrap_or("/"),
            "memory.limit_in_bytes",
            &mut limits,
        );
    }
    limits.into_iter().min()
}

fn mem_total(root: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(root.join("proc/meminfo")).ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: u64, timeout_ms: u64) -> MemoryBudget {
        MemoryBudget::new(
            BudgetConfig::new(limit).with_admission_timeout(Duration::from_millis(timeout_ms)),
        )
    }

    #[tokio::test]
    async fn reservations_are_counted_and_given_back() {
        let b = budget(100, 50);
        let mut r = b.reserve(None, 60).await.unwrap();
        assert_eq!(b.in_use(), 60);
        r.shrink(10);
        assert_eq!((r.size(), b.in_use()), (50, 50));
        r.force_grow(70);
        assert_eq!(b.in_use(), 120, "forced growth may exceed the limit");
        drop(r);
        assert_eq!(b.in_use(), 0);
    }

    #[tokio::test]
    async fn a_reservation_larger_than_the_pool_is_refused_at_once() {
        let b = budget(100, 10_000);
        let started = Instant::now();
        let e = b.reserve(None, 101).await.unwrap_err();
        assert!(matches!(
            e,
            AdmissionError::TooLarge {
                requested: 101,
                allowed: 100
            }
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(e.to_rpc_error().code, ErrorCode::ResourceExhausted);
    }

    #[tokio::test]
    async fn a_waiter_times_out_and_leaves_the_queue() {
        let b = budget(100, 50);
        let _held = b.reserve(None, 80).await.unwrap();
        let e = b.reserve(None, 30).await.unwrap_err();
        assert!(
            matches!(e, AdmissionError::Timeout { requested: 30, .. }),
            "{e:?}"
        );
        assert_eq!(b.waiters(), 0);
        let rpc = e.to_rpc_error();
        assert_eq!(rpc.code, ErrorCode::Unavailable);
        assert!(rpc.details().unwrap().contains("vgi_rpc.RetryInfo"));
        assert_eq!(b.in_use(), 80);
    }

    #[tokio::test]
    async fn a_waiter_is_granted_when_room_comes_free() {
        let b = budget(100, 10_000);
        let held = b.reserve(None, 80).await.unwrap();
        let b2 = b.clone();
        let waiting = tokio::spawn(async move { b2.reserve(None, 50).await.map(|r| r.size()) });
        while b.waiters() == 0 {
            tokio::task::yield_now().await;
        }
        drop(held);
        assert_eq!(waiting.await.unwrap().unwrap(), 50);
        assert_eq!(b.in_use(), 0);
    }

    #[tokio::test]
    async fn the_queue_is_fifo_so_a_large_request_is_not_starved() {
        let b = budget(100, 10_000);
        let held = b.reserve(None, 60).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let spawn = |bytes: u64, name: &'static str| {
            let b = b.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let r = b.reserve(None, bytes).await.unwrap();
                tx.send(name).unwrap();
                r
            })
        };
        let big = spawn(90, "big");
        while b.waiters() < 1 {
            tokio::task::yield_now().await;
        }
        // 30 would fit beside the 60 held, but the big request came first.
        let small = spawn(30, "small");
        while b.waiters() < 2 {
            tokio::task::yield_now().await;
        }
        assert!(
            rx.try_recv().is_err(),
            "the small one went past the big one"
        );
        drop(held);
        assert_eq!(rx.recv().await, Some("big"));
        drop(big.await.unwrap());
        assert_eq!(rx.recv().await, Some("small"));
        drop(small.await.unwrap());
        assert_eq!(b.in_use(), 0);
    }

    #[tokio::test]
    async fn a_top_up_goes_ahead_of_new_calls_waiting() {
        let b = budget(100, 10_000);
        let mut working = b.reserve(None, 50).await.unwrap();
        let b2 = b.clone();
        // A new call that cannot fit waits at the head of the queue...
        let _new = tokio::spawn(async move { b2.reserve(None, 60).await.map(|r| r.size()) });
        while b.waiters() == 0 {
            tokio::task::yield_now().await;
        }
        // ...but the call at work gets the little it needs to finish at once.
        tokio::time::timeout(Duration::from_secs(5), working.top_up(10))
            .await
            .expect("the top-up waited behind a new call")
            .unwrap();
        assert_eq!(working.size(), 60);
    }

    #[tokio::test]
    async fn a_small_reservation_goes_past_a_large_waiter_when_it_fits() {
        let b = budget(64 << 20, 10_000);
        let _held = b.reserve(None, 40 << 20).await.unwrap();
        let b2 = b.clone();
        let _large = tokio::spawn(async move { b2.reserve(None, 30 << 20).await.is_ok() });
        while b.waiters() == 0 {
            tokio::task::yield_now().await;
        }
        let small = tokio::time::timeout(Duration::from_secs(5), b.reserve(None, 4096))
            .await
            .expect("a small reservation waited behind a large one")
            .unwrap();
        assert_eq!(small.size(), 4096);
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_the_queue() {
        let b = budget(100, 10_000);
        let held = b.reserve(None, 80).await.unwrap();
        let b2 = b.clone();
        let waiting = tokio::spawn(async move { b2.reserve(None, 50).await.is_ok() });
        while b.waiters() == 0 {
            tokio::task::yield_now().await;
        }
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(b.waiters(), 0, "a cancelled wait stayed in the queue");
        drop(held);
        assert_eq!(b.in_use(), 0);
        assert!(b.reserve(None, 100).await.is_ok());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let b = MemoryBudget::new(
            BudgetConfig::new(10)
                .with_admission_timeout(Duration::from_secs(10))
                .with_max_waiters(1),
        );
        let _held = b.reserve(None, 10).await.unwrap();
        let b2 = b.clone();
        let _waiting = tokio::spawn(async move { b2.reserve(None, 5).await.is_ok() });
        while b.waiters() == 0 {
            tokio::task::yield_now().await;
        }
        let e = b.reserve(None, 5).await.unwrap_err();
        assert_eq!(e, AdmissionError::QueueFull { waiters: 1 });
    }

    #[tokio::test]
    async fn one_principal_cannot_take_more_than_its_share_and_others_go_past_it() {
        let b = MemoryBudget::new(
            BudgetConfig::new(100)
                .with_admission_timeout(Duration::from_secs(10))
                .with_principal_share(Some(0.5)),
        );
        let alice: Arc<str> = Arc::from("alice");
        let bob: Arc<str> = Arc::from("bob");
        let a1 = b.reserve(Some(alice.clone()), 40).await.unwrap();
        assert!(matches!(
            b.reserve(Some(alice.clone()), 60).await,
            Err(AdmissionError::TooLarge { allowed: 50, .. })
        ));
        let b2 = b.clone();
        let alice2 = alice.clone();
        let a2 = tokio::spawn(async move { b2.reserve(Some(alice2), 20).await.map(|r| r.size()) });
        while b.waiters() == 0 {
            tokio::task::yield_now().await;
        }
        // Alice waits for her own share; Bob is not held up behind her.
        let bob1 = tokio::time::timeout(Duration::from_secs(5), b.reserve(Some(bob), 40))
            .await
            .expect("bob waited behind alice")
            .unwrap();
        assert_eq!(b.in_use(), 80);
        drop(a1);
        assert_eq!(a2.await.unwrap().unwrap(), 20);
        drop(bob1);
        assert_eq!(b.in_use(), 0);
        // Anonymous reservations have no share.
        assert!(b.reserve(None, 100).await.is_ok());
    }

    #[test]
    fn emit_cost_counts_the_copies() {
        let cost = EmitCost {
            threshold: Some(1000),
            pipeline: 50,
        };
        assert_eq!(cost.of(999), 2997);
        assert_eq!(cost.of(1000), 2050);
        let small_objects = EmitCost {
            threshold: Some(10),
            pipeline: 50,
        };
        assert_eq!(small_objects.of(20), 60, "chunks bounded by the object");
        let inline = EmitCost {
            threshold: None,
            pipeline: 50,
        };
        assert_eq!(inline.of(1000), 3000);
    }

    fn fixture(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    const MEMINFO: &str = "MemTotal:       24576000 kB\nMemFree:  1000 kB\n";

    #[test]
    fn cgroup_v2_limit_of_the_container() {
        let d = fixture(&[
            ("proc/self/cgroup", "0::/\n"),
            ("proc/meminfo", MEMINFO),
            ("sys/fs/cgroup/cgroup.controllers", "cpu memory\n"),
            ("sys/fs/cgroup/memory.max", "2147483648\n"),
        ]);
        assert_eq!(
            detect_memory_limit_in(d.path()),
            Some((2147483648, "cgroup"))
        );
    }

    #[test]
    fn cgroup_v2_nested_path_takes_the_smallest_ancestor_limit() {
        let d = fixture(&[
            ("proc/self/cgroup", "0::/kubepods/pod1/ctr\n"),
            ("proc/meminfo", MEMINFO),
            ("sys/fs/cgroup/cgroup.controllers", "memory\n"),
            ("sys/fs/cgroup/kubepods/memory.max", "8589934592\n"),
            ("sys/fs/cgroup/kubepods/pod1/memory.max", "1073741824\n"),
            ("sys/fs/cgroup/kubepods/pod1/ctr/memory.max", "max\n"),
        ]);
        assert_eq!(
            detect_memory_limit_in(d.path()),
            Some((1073741824, "cgroup"))
        );
    }

    #[test]
    fn cgroup_v2_unlimited_falls_back_to_ram() {
        let d = fixture(&[
            ("proc/self/cgroup", "0::/\n"),
            ("proc/meminfo", MEMINFO),
            ("sys/fs/cgroup/cgroup.controllers", "memory\n"),
            ("sys/fs/cgroup/memory.max", "max\n"),
        ]);
        assert_eq!(
            detect_memory_limit_in(d.path()),
            Some((24576000 * 1024, "ram"))
        );
    }

    #[test]
    fn cgroup_v1_limit_and_its_unlimited_value() {
        let limited = fixture(&[
            (
                "proc/self/cgroup",
                "12:cpu,cpuacct:/\n11:memory:/docker/abc\n",
            ),
            ("proc/meminfo", MEMINFO),
            (
                "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
                "536870912\n",
            ),
            (
                "sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
        ]);
        assert_eq!(
            detect_memory_limit_in(limited.path()),
            Some((536870912, "cgroup"))
        );
        let unlimited = fixture(&[
            ("proc/self/cgroup", "11:memory:/\n"),
            ("proc/meminfo", MEMINFO),
            (
                "sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
        ]);
        assert_eq!(
            detect_memory_limit_in(unlimited.path()),
            Some((24576000 * 1024, "ram"))
        );
    }

    #[test]
    fn nothing_readable_is_none() {
        let d = fixture(&[]);
        assert_eq!(detect_memory_limit_in(d.path()), None);
    }
}
