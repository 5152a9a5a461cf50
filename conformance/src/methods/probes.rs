//! Observation and session methods: the cancel-probe counters the cancellation tests read back,
//! and the sticky-session counter methods (sticky sessions are not offered, so they fail the way
//! the reference fails without them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::{Int64Array, ListArray};
use arrow_buffer::OffsetBuffer;
use arrow_schema::DataType;
use spillway::wire::RpcError;

use super::call::runtime_error;
use super::{Registrar, Worker};
use crate::error::Result;

/// Process-wide counts of stream calls, read back over the wire by `cancel_probe_counters`
/// (the cancellation tests check that a cancelled stream ran its cancel hook and stopped).
#[derive(Debug, Default)]
pub struct CancelProbe {
    produce: AtomicU64,
    exchange: AtomicU64,
    on_cancel: AtomicU64,
}

impl CancelProbe {
    /// A `cancellable_producer` turn ran.
    pub fn produced(&self) {
        self.produce.fetch_add(1, Ordering::SeqCst);
    }

    /// A `cancellable_exchange` turn ran.
    pub fn exchanged(&self) {
        self.exchange.fetch_add(1, Ordering::SeqCst);
    }

    /// A cancel hook ran.
    pub fn cancelled(&self) {
        self.on_cancel.fetch_add(1, Ordering::SeqCst);
    }

    /// `[produce_calls, exchange_calls, on_cancel_calls]`.
    pub fn snapshot(&self) -> [u64; 3] {
        [
            self.produce.load(Ordering::SeqCst),
            self.exchange.load(Ordering::SeqCst),
            self.on_cancel.load(Ordering::SeqCst),
        ]
    }

    /// Back to zero.
    pub fn reset(&self) {
        for c in [&self.produce, &self.exchange, &self.on_cancel] {
            c.store(0, Ordering::SeqCst);
        }
    }
}

pub(super) fn register(r: Registrar, worker: &Arc<Worker>) -> Result<Registrar> {
    let w = worker.clone();
    let r = r.sync("cancel_probe_counters", move |call| {
        let result_type = call.result.fields().first().map(|f| f.data_type());
        let Some(DataType::List(item)) = result_type else {
            return Err(RpcError::internal("cancel_probe_counters returns a list"));
        };
        let counts: Vec<i64> = w
            .cancel_probe
            .snapshot()
            .iter()
            .map(|&c| i64::try_from(c).unwrap_or(i64::MAX))
            .collect();
        let list = ListArray::try_new(
            item.clone(),
            OffsetBuffer::from_lengths([counts.len()]),
            Arc::new(Int64Array::from(counts)),
            None,
        )
        .map_err(|e| RpcError::internal(e.to_string()))?;
        call.reply(Arc::new(list))
    })?;
    let w = worker.clone();
    r.sync("reset_cancel_probe", move |call| {
        w.cancel_probe.reset();
        call.reply_void()
    })?
    .sync("open_counter", |call| {
        call.int("initial")?;
        Err(runtime_error(
            "sticky sessions not available on this transport",
        ))
    })?
    .sync("increment_counter", |call| {
        call.int("by")?;
        Err(runtime_error("no sticky counter bound to this request"))
    })?
    .sync("close_counter", |_call| {
        Err(runtime_error("no sticky counter bound to this request"))
    })
}

#[cfg(test)]
mod tests {
    use super::CancelProbe;

    #[test]
    fn cancel_probe_counts_and_resets() {
        let p = CancelProbe::default();
        p.produced();
        p.produced();
        p.exchanged();
        p.cancelled();
        assert_eq!(p.snapshot(), [2, 1, 1]);
        p.reset();
        assert_eq!(p.snapshot(), [0, 0, 0]);
    }
}
