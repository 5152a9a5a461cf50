//! Feeding a [`PutPayload`](spillway_storage::PutPayload) stream to the client library's
//! uploader, with the size limit enforced on the way and the producer's failure kept for the
//! caller.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use google_cloud_storage::streaming_source::{SizeHint, StreamingSource};
use spillway_storage::StorageError;

/// Where a [`CappedSource`] leaves the reason it stopped an upload.
pub(crate) type FailureSlot = Arc<Mutex<Option<StorageError>>>;

/// The error the uploader sees when the source stops; the real reason is in the
/// [`FailureSlot`].
#[derive(Debug, thiserror::Error)]
#[error("upload source stopped: {0}")]
pub(crate) struct SourceStopped(String);

/// How an upload is getting on, as its source sees it: when the uploader last received a
/// piece, and whether it is waiting for the producer now (then the store is not the one
/// holding it up).
#[derive(Debug, Clone)]
pub(crate) struct Progress(Arc<Mutex<(Instant, bool)>>);

impl Progress {
    fn new() -> Self {
        Progress(Arc::new(Mutex::new((Instant::now(), false))))
    }

    fn set(&self, waiting_on_producer: bool) {
        if let Ok(mut p) = self.0.lock() {
            *p = (Instant::now(), waiting_on_producer);
        }
    }

    /// How long the uploader has gone without taking a piece while not waiting for the
    /// producer: time spent on the store.
    pub(crate) fn stalled_for(&self) -> Duration {
        match self.0.lock() {
            Ok(p) if !p.1 => p.0.elapsed(),
            _ => Duration::ZERO,
        }
    }
}

/// Runs `upload` unless it goes `limit` without progress ([`Progress::stalled_for`]); then
/// gives it up (dropping it) and returns how long it was stalled.
pub(crate) async fn unless_stalled<F: std::future::Future>(
    upload: F,
    progress: &Progress,
    limit: Duration,
) -> Result<F::Output, Duration> {
    tokio::pin!(upload);
    let tick = (limit / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::select! {
            out = &mut upload => return Ok(out),
            _ = tokio::time::sleep(tick) => {
                let stalled = progress.stalled_for();
                if stalled >= limit {
                    return Err(stalled);
                }
            }
        }
    }
}

/// A [`StreamingSource`] over a chunk stream that fails once more than `limit` bytes came.
pub(crate) struct CappedSource {
    // The uploader wants a `Sync` source; the stream is only ever reached through `&mut self`
    // (`Mutex::get_mut`), so the mutex is never locked.
    stream: Mutex<BoxStream<'static, std::io::Result<Bytes>>>,
    size_hint: Option<u64>,
    seen: u64,
    limit: u64,
    failure: FailureSlot,
    progress: Progress,
}

impl CappedSource {
    pub(crate) fn new(
        stream: BoxStream<'static, std::io::Result<Bytes>>,
        size_hint: Option<u64>,
        limit: u64,
    ) -> (Self, FailureSlot) {
        let failure = FailureSlot::default();
        let source = CappedSource {
            stream: Mutex::new(stream),
            size_hint,
            seen: 0,
            limit,
            failure: failure.clone(),
            progress: Progress::new(),
        };
        (source, failure)
    }

    /// The upload's progress, for [`unless_stalled`].
    pub(crate) fn progress(&self) -> Progress {
        self.progress.clone()
    }

    fn fail(&self, err: StorageError) -> SourceStopped {
        let text = err.to_string();
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert(err);
        }
        SourceStopped(text)
    }
}

/// The failure a source recorded, if any.
pub(crate) fn take_failure(slot: &FailureSlot) -> Option<StorageError> {
    match slot.lock() {
        Ok(mut s) => s.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    }
}

impl StreamingSource for CappedSource {
    type Error = SourceStopped;

    async fn next(&mut self) -> Option<Result<Bytes, Self::Error>> {
        let stream = match self.stream.get_mut() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.progress.set(true);
        let item = stream.next().await;
        self.progress.set(false);
        match item? {
            Ok(chunk) => {
                self.seen = self.seen.saturating_add(chunk.len() as u64);
                if self.seen > self.limit {
                    let err = StorageError::TooLarge {
                        size: self.seen,
                        limit: self.limit,
                    };
                    return Some(Err(self.fail(err)));
                }
                Some(Ok(chunk))
            }
            Err(e) => {
                let err = StorageError::UploadAborted {
                    reason: e.to_string(),
                };
                Some(Err(self.fail(err)))
            }
        }
    }

    async fn size_hint(&self) -> Result<SizeHint, Self::Error> {
        Ok(match self.size_hint {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(
        items: Vec<std::io::Result<&'static [u8]>>,
    ) -> BoxStream<'static, std::io::Result<Bytes>> {
        futures::stream::iter(
            items
                .into_iter()
                .map(|r| r.map(Bytes::from_static))
                .collect::<Vec<_>>(),
        )
        .boxed()
    }

    #[tokio::test]
    async fn passes_chunks_through_within_the_limit() {
        let (mut src, slot) = CappedSource::new(chunks(vec![Ok(b"abc"), Ok(b"de")]), None, 5);
        assert_eq!(src.size_hint().await.unwrap().upper(), None);
        assert_eq!(src.next().await.unwrap().unwrap(), "abc");
        assert_eq!(src.next().await.unwrap().unwrap(), "de");
        assert!(src.next().await.is_none());
        assert!(take_failure(&slot).is_none());
    }

    #[tokio::test]
    async fn stops_past_the_limit_and_records_why() {
        let (mut src, slot) = CappedSource::new(chunks(vec![Ok(b"abc"), Ok(b"def")]), Some(6), 5);
        assert_eq!(src.size_hint().await.unwrap().exact(), Some(6));
        assert!(src.next().await.unwrap().is_ok());
        assert!(src.next().await.unwrap().is_err());
        assert!(matches!(
            take_failure(&slot),
            Some(StorageError::TooLarge { size: 6, limit: 5 })
        ));
    }

    #[tokio::test]
    async fn only_time_spent_on_the_store_counts_as_stalled() {
        let (tx, rx) = futures::channel::mpsc::channel::<std::io::Result<Bytes>>(1);
        let (mut src, _slot) = CappedSource::new(rx.boxed(), None, 100);
        let progress = src.progress();
        // Waiting for the producer: not stalled, however long.
        let waiting = tokio::spawn(async move {
            let first = src.next().await;
            (src, first)
        });
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(progress.stalled_for(), Duration::ZERO);
        let mut tx = tx;
        futures::SinkExt::send(&mut tx, Ok(Bytes::from_static(b"abc")))
            .await
            .unwrap();
        let (_src, first) = waiting.await.unwrap();
        assert!(first.unwrap().is_ok());
        // The uploader holds the piece and takes no next one: the store is slow.
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(progress.stalled_for() >= Duration::from_millis(100));
        let never = std::future::pending::<()>();
        let stalled = unless_stalled(never, &progress, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(stalled >= Duration::from_millis(200));
        let quick = unless_stalled(async { 7 }, &progress, Duration::from_secs(5)).await;
        assert_eq!(quick, Ok(7));
    }

    #[tokio::test]
    async fn producer_errors_abort_the_upload() {
        let (mut src, slot) = CappedSource::new(
            chunks(vec![Ok(b"a"), Err(std::io::Error::other("encoder failed"))]),
            None,
            100,
        );
        assert!(src.next().await.unwrap().is_ok());
        let err = src.next().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("encoder failed"));
        match take_failure(&slot) {
            Some(StorageError::UploadAborted { reason }) => {
                assert!(reason.contains("encoder failed"))
            }
            other => panic!("{other:?}"),
        }
    }
}
