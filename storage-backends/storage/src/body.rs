//! Reading a streamed body into memory within a byte cap: one loop for every HTTP body and
//! object stream the workspace collects (request bodies, RPC responses, request-pointer
//! objects, storage API responses).

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

/// Why [`collect_capped`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum CappedError<E> {
    /// The declared length, or the bytes streamed so far, exceed the cap.
    #[error("body of {seen} bytes exceeds the limit of {cap} bytes")]
    TooLarge {
        /// The declared length, or the bytes streamed when the cap was crossed (a lower bound).
        seen: u64,
        /// The cap.
        cap: u64,
        /// Whether `seen` is the declared length (`true`) or a count while streaming.
        declared: bool,
    },
    /// The stream itself failed.
    #[error(transparent)]
    Stream(E),
}

/// Collects `stream` into one buffer of at most `cap` bytes. `declared` (e.g. a
/// `Content-Length`) is checked before anything is read and pre-sizes the buffer; past the cap
/// the loop stops at the chunk that crosses it, so no more than `cap` + one chunk is ever held.
///
/// ```
/// # futures::executor::block_on(async {
/// use bytes::Bytes;
/// use spillway_storage::{collect_capped, CappedError};
/// let chunks = || futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"abc")), Ok(Bytes::from_static(b"de"))]);
/// assert_eq!(collect_capped(chunks(), None, 5).await.unwrap(), Bytes::from_static(b"abcde"));
/// assert!(matches!(
///     collect_capped(chunks(), None, 4).await,
///     Err(CappedError::TooLarge { seen: 5, cap: 4, declared: false })
/// ));
/// assert!(matches!(
///     collect_capped(chunks(), Some(9), 5).await,
///     Err(CappedError::TooLarge { seen: 9, declared: true, .. })
/// ));
/// # });
/// ```
pub async fn collect_capped<S, E>(
    stream: S,
    declared: Option<u64>,
    cap: u64,
) -> Result<Bytes, CappedError<E>>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    if let Some(len) = declared {
        if len > cap {
            return Err(CappedError::TooLarge {
                seen: len,
                cap,
                declared: true,
            });
        }
    }
    let capacity = usize::try_from(declared.unwrap_or(0).min(cap)).unwrap_or(0);
    let mut buf = BytesMut::with_capacity(capacity);
    let mut stream = std::pin::pin!(stream);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(CappedError::Stream)?;
        let seen = (buf.len() + chunk.len()) as u64;
        if seen > cap {
            return Err(CappedError::TooLarge {
                seen,
                cap,
                declared: false,
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, String>> {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn exactly_the_cap_is_accepted() {
        let got = collect_capped(chunks(&[b"ab", b"cd"]), Some(4), 4)
            .await
            .unwrap();
        assert_eq!(&got[..], b"abcd");
    }

    #[tokio::test]
    async fn a_body_longer_than_declared_is_still_capped() {
        let err = collect_capped(chunks(&[b"ab", b"cdef"]), Some(2), 4)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            CappedError::TooLarge {
                seen: 6,
                cap: 4,
                declared: false
            }
        ));
    }

    #[tokio::test]
    async fn stream_errors_pass_through() {
        let s = futures::stream::iter(vec![Ok(Bytes::from_static(b"a")), Err("boom".to_string())]);
        let err = collect_capped(s, None, 10).await.unwrap_err();
        assert!(matches!(err, CappedError::Stream(ref e) if e == "boom"));
    }
}
