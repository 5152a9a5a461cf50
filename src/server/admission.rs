//! Admission control: every RPC request passes here after authentication and before its
//! handler. It is refused with 503 + `Retry-After` when the server is draining for shutdown,
//! or when no call slot (`max_concurrent_calls`) comes free within the admission timeout;
//! otherwise it gets its [`CallMemory`], which it holds, with its slot, until its response
//! body has been sent.
//!
//! Every refusal here happens before the method runs, which is what makes it safe for
//! clients to retry (see the client's retry policy).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::auth::AuthContext;
use super::memory::{AdmissionError, CallMemory, EmitCost, MemoryBudget};
use super::response::ApiError;
use super::state::AppState;

/// How calls are admitted (see the README's configuration table).
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// The memory budget in bytes; `None`: unbounded (library default; `spillway serve` sets
    /// one from the container's memory limit).
    pub memory_limit: Option<u64>,
    /// Longest a call waits for a call slot or for memory before it gets 503.
    pub timeout: Duration,
    /// Most calls waiting for memory, and most waiting for a slot; more get 503 at once.
    pub max_waiters: usize,
    /// Most calls running at once (`None`: no limit but memory).
    pub max_concurrent_calls: Option<usize>,
    /// With authentication, the fraction of the memory budget one principal may hold.
    pub principal_share: Option<f64>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            memory_limit: None,
            timeout: Duration::from_secs(10),
            max_waiters: 1024,
            max_concurrent_calls: None,
            principal_share: None,
        }
    }
}

/// The server's admission state: the budget, the call slots, the draining flag.
pub(crate) struct Admission {
    pub(crate) budget: MemoryBudget,
    slots: Option<Arc<Semaphore>>,
    slot_limit: usize,
    slot_waiters: AtomicUsize,
    config: AdmissionConfig,
    pub(crate) drain: super::Drain,
    emit: EmitCost,
    /// Principals get a share only when authentication can name them.
    per_principal: bool,
}

impl Admission {
    pub(crate) fn new(
        config: &AdmissionConfig,
        emit: EmitCost,
        per_principal: bool,
        drain: super::Drain,
    ) -> Self {
        let budget = match config.memory_limit {
            Some(limit) => MemoryBudget::new(
                super::memory::BudgetConfig::new(limit)
                    .with_admission_timeout(config.timeout)
                    .with_max_waiters(config.max_waiters)
                    .with_principal_share(config.principal_share.filter(|_| per_principal)),
            ),
            None => MemoryBudget::unlimited(),
        };
        let slot_limit = config.max_concurrent_calls.unwrap_or(0);
        Admission {
            budget,
            slots: config
                .max_concurrent_calls
                .map(|n| Arc::new(Semaphore::new(n.max(1)))),
            slot_limit,
            slot_waiters: AtomicUsize::new(0),
            config: config.clone(),
            drain,
            emit,
            per_principal,
        }
    }

    async fn slot(&self) -> Result<Option<OwnedSemaphorePermit>, AdmissionError> {
        let Some(slots) = &self.slots else {
            return Ok(None);
        };
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            return Ok(Some(permit));
        }
        let too_many = AdmissionError::TooManyCalls {
            limit: self.slot_limit,
        };
        if self.slot_waiters.fetch_add(1, Ordering::SeqCst) >= self.config.max_waiters {
            self.slot_waiters.fetch_sub(1, Ordering::SeqCst);
            return Err(too_many);
        }
        // The semaphore is fair: slots go to waiters in arrival order.
        let waited = tokio::time::timeout(self.config.timeout, slots.clone().acquire_owned()).await;
        self.slot_waiters.fetch_sub(1, Ordering::SeqCst);
        match waited {
            Ok(Ok(permit)) => Ok(Some(permit)),
            _ => Err(too_many),
        }
    }
}

/// The 503 of a refused call: the reference's error shape (an Arrow error batch, code
/// `UNAVAILABLE`, a `vgi_rpc.RetryInfo` detail) with `Retry-After`; while draining, also
/// `Connection: close`, so the client's next request goes to another replica.
pub(crate) fn refusal(e: &AdmissionError) -> Response {
    if let AdmissionError::TooLarge { .. } = e {
        // Waiting cannot help: a size limit, answered as the other size limits are.
        return ApiError::server(e.to_rpc_error()).into_response();
    }
    // `Retry-After` is set from the error's RetryInfo as for every overload refusal.
    let mut resp =
        ApiError::client(StatusCode::SERVICE_UNAVAILABLE, e.to_rpc_error()).into_response();
    if matches!(e, AdmissionError::Draining) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The admission middleware (a route layer inside the authentication gate).
pub(crate) async fn admit(
    State(st): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let adm = &st.admission;
    if adm.drain.is_draining() {
        metrics::counter!("spillway_admission_rejections_total", "reason" => "draining")
            .increment(1);
        return refusal(&AdmissionError::Draining);
    }
    let slot = match adm.slot().await {
        Ok(slot) => slot,
        Err(e) => {
            metrics::counter!("spillway_admission_rejections_total", "reason" => e.reason())
                .increment(1);
            tracing::debug!(reason = e.reason(), "call refused: no call slot");
            return refusal(&e);
        }
    };
    let auth = req
        .extensions()
        .get::<Arc<AuthContext>>()
        .cloned()
        .unwrap_or_else(|| Arc::new(AuthContext::anonymous()));
    super::access_log::note_auth(&auth);
    let principal = Some(&auth)
        .filter(|a| adm.per_principal && a.authenticated)
        .and_then(|a| a.principal.as_deref().map(Arc::<str>::from));
    let memory = CallMemory::new(&adm.budget, principal, adm.emit);
    req.extensions_mut().insert(Admitted {
        auth,
        memory: memory.clone(),
    });
    let held = CallHold::new(memory, slot, adm.drain.clone());
    let resp = next.run(req).await;
    let (parts, body) = resp.into_parts();
    Response::from_parts(
        parts,
        Body::new(HoldingBody {
            inner: body,
            _held: held,
        }),
    )
}

/// What an admitted call's handler gets: who calls, and the call's memory.
#[derive(Clone)]
pub(crate) struct Admitted {
    pub(crate) auth: Arc<AuthContext>,
    pub(crate) memory: CallMemory,
}

/// What a call holds until its response body is gone (or the call is dropped, when its
/// client goes away).
struct CallHold {
    _memory: CallMemory,
    _slot: Option<OwnedSemaphorePermit>,
    drain: super::Drain,
}

impl CallHold {
    fn new(memory: CallMemory, slot: Option<OwnedSemaphorePermit>, drain: super::Drain) -> Self {
        metrics::gauge!("spillway_calls_in_flight").increment(1.0);
        drain.call_started();
        CallHold {
            _memory: memory,
            _slot: slot,
            drain,
        }
    }
}

impl Drop for CallHold {
    fn drop(&mut self) {
        metrics::gauge!("spillway_calls_in_flight").decrement(1.0);
        self.drain.call_ended();
    }
}

/// A response body that keeps the call's memory and slot until it has been sent or dropped.
struct HoldingBody {
    inner: Body,
    _held: CallHold,
}

impl HttpBody for HoldingBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
