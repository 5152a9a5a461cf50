//! A minimum request-body rate: a body that arrives slower than the policy allows ends in
//! [`BodyTooSlow`], which the body readers answer with 408. This is the slow-body half of the
//! slowloris defence (the header half is hyper's header read timeout, see
//! [`listener`](super::listener)): without it, a client dribbling one byte a second holds a
//! connection, a call slot and its memory reservation for as long as it likes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The policy: after `grace`, every `window` must bring at least `min_bytes_per_sec x
/// window` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRate {
    /// Bytes per second a body must keep up, averaged over each window; 0 turns the check off.
    pub min_bytes_per_sec: u64,
    /// Time before the first window starts (slow starts, TLS, a client filling its buffer).
    pub grace: Duration,
    /// Length of each window.
    pub window: Duration,
}

impl Default for BodyRate {
    fn default() -> Self {
        BodyRate {
            min_bytes_per_sec: 1024,
            grace: Duration::from_secs(10),
            window: Duration::from_secs(5),
        }
    }
}

impl BodyRate {
    /// Whether the check is on.
    pub fn enabled(&self) -> bool {
        self.min_bytes_per_sec > 0 && !self.window.is_zero()
    }

    fn window_bytes(&self) -> u64 {
        (self.min_bytes_per_sec as f64 * self.window.as_secs_f64()).ceil() as u64
    }
}

/// The error a too-slow body ends with.
#[derive(Debug, Clone, thiserror::Error)]
#[error("request body arrived slower than {min_bytes_per_sec} bytes/s")]
pub struct BodyTooSlow {
    /// The policy's rate.
    pub min_bytes_per_sec: u64,
}

impl BodyTooSlow {
    /// Finds a [`BodyTooSlow`] in an error's source chain (the body readers see it wrapped).
    pub fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTooSlow> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(slow) = err.downcast_ref::<BodyTooSlow>() {
                return Some(slow);
            }
            cur = err.source();
        }
        None
    }
}

/// A request body under a [`BodyRate`].
pub(crate) struct RateLimited<B> {
    inner: B,
    policy: BodyRate,
    /// Bytes still owed in the current window.
    owed: u64,
    deadline: Pin<Box<Sleep>>,
    failed: bool,
}

impl<B> RateLimited<B> {
    pub(crate) fn new(inner: B, policy: BodyRate) -> Self {
        let first = Instant::now() + policy.grace + policy.window;
        RateLimited {
            inner,
            policy,
            owed: policy.window_bytes(),
            deadline: Box::pin(tokio::time::sleep_until(first)),
            failed: false,
        }
    }
}

impl<B> Body for RateLimited<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.owed = this.owed.saturating_sub(data.len() as u64);
                    if this.owed == 0 {
                        // The window's quota is in: the next window starts now.
                        this.owed = this.policy.window_bytes();
                        let next = Instant::now() + this.policy.window;
                        this.deadline.as_mut().reset(next);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.failed = true;
                    metrics::counter!("spillway_slow_bodies_total").increment(1);
                    Poll::Ready(Some(Err(Box::new(BodyTooSlow {
                        min_bytes_per_sec: this.policy.min_bytes_per_sec,
                    }))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn policy() -> BodyRate {
        BodyRate {
            min_bytes_per_sec: 100,
            grace: Duration::from_millis(100),
            window: Duration::from_millis(100),
        }
    }

    #[tokio::test]
    async fn a_stalled_body_fails_after_grace_and_one_window() {
        let (_tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(1);
        let started = Instant::now();
        let mut limited = RateLimited::new(body, policy());
        let e = limited.frame().await.unwrap().unwrap_err();
        assert!(BodyTooSlow::find(&*e).is_some(), "{e}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(190) && waited < Duration::from_secs(10),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn a_body_that_keeps_the_rate_is_passed_whole() {
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(1);
        tokio::spawn(async move {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                tx.send_data(Bytes::from(vec![7u8; 10])).await.unwrap();
            }
        });
        let got = RateLimited::new(body, policy())
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(got.len(), 200);
    }

    #[tokio::test]
    async fn a_dribble_is_cut_off() {
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(1);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                if tx.send_data(Bytes::from_static(b"x")).await.is_err() {
                    return;
                }
            }
        });
        let e = RateLimited::new(body, policy())
            .collect()
            .await
            .unwrap_err();
        assert!(BodyTooSlow::find(&*e).is_some());
    }
}
