//! Feeding a [`PutPayload`](spillway_storage::PutPayload) stream to the client library's
//! uploader, with the size limit enforced on the way and the producer's failure kept for the
//! caller.

use std::sync::{Arc, Mutex};

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

/// A [`StreamingSource`] over a chunk stream that fails once more than `limit` bytes came.
pub(crate) struct CappedSource {
    // The uploader wants a `Sync` source; the stream is only ever reached through `&mut self`
    // (`Mutex::get_mut`), so the mutex is never locked.
    stream: Mutex<BoxStream<'static, std::io::Result<Bytes>>>,
    size_hint: Option<u64>,
    seen: u64,
    limit: u64,
    failure: FailureSlot,
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
        };
        (source, failure)
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
        match stream.next().await? {
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
