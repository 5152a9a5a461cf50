//! Writing objects: one PUT for small ones, a parallel multipart upload for large ones.
//!
//! A streamed payload is read until it is either finished (and at most the multipart
//! threshold: one `PutObject`) or longer than the threshold (a multipart upload). Parts are cut
//! as the stream delivers bytes and uploaded by at most `concurrency` tasks at a time; the
//! stream is not read further while all of them are busy, so memory stays at about
//! `threshold + (concurrency + 1) * part_size` whatever the object's size.
//!
//! Whatever goes wrong (the producer fails, a part fails after the SDK's retries, the size
//! limit trips, the store stops answering, or the caller drops the future), the multipart
//! upload is aborted, so no incomplete upload is left behind to be billed. When the store is
//! unavailable the abort is retried in the background ([`crate::cleanup`]) and the caller gets
//! its error at once; a lifecycle rule (`spillway storage init`) catches what that misses.

use std::collections::VecDeque;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use spillway_storage::{ObjectKey, ObjectMeta, PutOptions, PutPayload, StorageError};
use tokio::task::JoinSet;

use crate::cleanup::Cleanup;
use crate::config::ObjectSettings;
use crate::errors::object_error;

/// S3's limit on the number of parts of one upload.
pub const MAX_PARTS: u64 = 10_000;
/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's largest part, and largest single PUT.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// How objects are uploaded.
#[derive(Debug, Clone)]
pub(crate) struct UploadConfig {
    /// Objects up to this size go in one PUT.
    pub threshold: u64,
    /// Size of every part but the last.
    pub part_size: u64,
    /// Parts uploaded at once.
    pub concurrency: usize,
    /// Largest object accepted.
    pub max_object_bytes: u64,
    /// Whether parts carry CRC32 checksums (the SDK's default request checksum mode).
    pub checksums: bool,
}

/// Everything an upload needs, cheap to clone into part tasks.
#[derive(Debug, Clone)]
pub(crate) struct Uploader {
    pub client: Client,
    pub bucket: String,
    pub config: UploadConfig,
    pub object: ObjectSettings,
    pub cleanup: Cleanup,
}

/// The payload's bytes, handed out in pieces of a requested size.
struct Pieces {
    stream: Option<BoxStream<'static, std::io::Result<Bytes>>>,
    /// Bytes taken from the stream but not handed out yet.
    front: VecDeque<Bytes>,
    /// Bytes received from the stream so far.
    received: u64,
    limit: u64,
}

impl Pieces {
    fn new(payload: PutPayload, limit: u64) -> Self {
        match payload {
            PutPayload::Bytes(b) => Pieces {
                stream: None,
                received: b.len() as u64,
                front: VecDeque::from([b]),
                limit,
            },
            PutPayload::Stream { stream, .. } => Pieces {
                stream: Some(stream),
                front: VecDeque::new(),
                received: 0,
                limit,
            },
        }
    }

    fn check_limit(&self) -> Result<(), StorageError> {
        if self.received > self.limit {
            return Err(StorageError::TooLarge {
                size: self.received,
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// Up to `want` bytes as a list of slices (shorter only at the end of the payload).
    async fn take(&mut self, want: u64) -> Result<(Vec<Bytes>, u64), StorageError> {
        self.check_limit()?;
        let mut out = Vec::new();
        let mut have = 0u64;
        while have < want {
            let mut chunk = match self.front.pop_front() {
                Some(c) => c,
                None => match self.stream.as_mut() {
                    None => break,
                    Some(s) => match s.next().await {
                        None => {
                            self.stream = None;
                            break;
                        }
                        Some(Err(e)) => {
                            return Err(StorageError::UploadAborted {
                                reason: e.to_string(),
                            })
                        }
                        Some(Ok(c)) => {
                            self.received += c.len() as u64;
                            self.check_limit()?;
                            c
                        }
                    },
                },
            };
            let room = want - have;
            if chunk.len() as u64 > room {
                // `room` < chunk.len() <= usize::MAX, so the cast is lossless.
                let rest = chunk.split_off(room as usize);
                self.front.push_front(rest);
            }
            have += chunk.len() as u64;
            if !chunk.is_empty() {
                out.push(chunk);
            }
        }
        Ok((out, have))
    }

    /// Puts pieces back in front (after a look-ahead).
    fn unread(&mut self, pieces: Vec<Bytes>) {
        for p in pieces.into_iter().rev() {
            self.front.push_front(p);
        }
    }
}

/// One contiguous buffer; no copy when the pieces are a single slice (the usual case when the
/// producer's chunks are as large as the parts).
fn concat(mut pieces: Vec<Bytes>, len: u64) -> Bytes {
    if pieces.len() == 1 {
        return pieces.pop().unwrap_or_default();
    }
    let mut buf = BytesMut::with_capacity(len as usize);
    for p in &pieces {
        buf.extend_from_slice(p);
    }
    buf.freeze()
}

impl Uploader {
    /// Stores `payload` under `key`.
    pub(crate) async fn put(
        &self,
        key: &ObjectKey,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<ObjectMeta, StorageError> {
        if let Some(hint) = payload.size_hint() {
            if hint > self.config.max_object_bytes {
                return Err(StorageError::TooLarge {
                    size: hint,
                    limit: self.config.max_object_bytes,
                });
            }
        }
        let mut pieces = Pieces::new(payload, self.config.max_object_bytes);
        // One byte of look-ahead past the threshold decides between PUT and multipart.
        let (head, len) = pieces.take(self.config.threshold.saturating_add(1)).await?;
        if len <= self.config.threshold {
            return self.put_single(key, concat(head, len), len, &opts).await;
        }
        pieces.unread(head);
        self.put_multipart(key, pieces, &opts).await
    }

    async fn put_single(
        &self,
        key: &ObjectKey,
        body: Bytes,
        len: u64,
        opts: &PutOptions,
    ) -> Result<ObjectMeta, StorageError> {
        let o = &self.object;
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .content_length(len as i64)
            .set_content_type(opts.content_type.clone())
            .set_content_encoding(opts.content_encoding.clone())
            .set_server_side_encryption(o.sse.clone())
            .set_ssekms_key_id(o.kms_key_id.clone())
            .set_storage_class(o.storage_class.clone())
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| object_error("PutObject", &self.bucket, key.as_str(), e))?;
        metrics::counter!("spillway_s3_uploads_total", "mode" => "single").increment(1);
        metrics::counter!("spillway_s3_uploaded_bytes_total").increment(len);
        Ok(ObjectMeta {
            key: key.clone(),
            size: len,
            content_type: opts.content_type.clone(),
            content_encoding: opts.content_encoding.clone(),
            etag: out.e_tag,
        })
    }

    async fn put_multipart(
        &self,
        key: &ObjectKey,
        mut pieces: Pieces,
        opts: &PutOptions,
    ) -> Result<ObjectMeta, StorageError> {
        let o = &self.object;
        // Armed before the upload exists: a future dropped while CreateMultipartUpload is in
        // flight still sweeps the key for the upload the store may have created.
        let mut guard = AbortGuard {
            cleanup: self.cleanup.clone(),
            key: key.as_str().to_string(),
            upload_id: None,
            armed: true,
        };
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key.as_str())
            .set_content_type(opts.content_type.clone())
            .set_content_encoding(opts.content_encoding.clone())
            .set_server_side_encryption(o.sse.clone())
            .set_ssekms_key_id(o.kms_key_id.clone())
            .set_storage_class(o.storage_class.clone())
            .set_checksum_algorithm(self.config.checksums.then_some(ChecksumAlgorithm::Crc32))
            .send()
            .await
            .map_err(|e| object_error("CreateMultipartUpload", &self.bucket, key.as_str(), e));
        let created = match created {
            Ok(c) => c,
            // No (or a 5xx) answer: the store may have created the upload all the same, so the
            // guard, still armed, sweeps the key in the background.
            Err(e @ StorageError::Unavailable { .. }) => return Err(e),
            Err(e) => {
                guard.armed = false;
                return Err(e);
            }
        };
        let upload_id = created.upload_id.ok_or_else(|| {
            StorageError::Backend("s3 CreateMultipartUpload returned no upload id".into())
        })?;
        // The guard is declared before the part tasks: dropped after them, so an abort (on
        // cancellation) is sent only once no part upload is running any more.
        guard.upload_id = Some(upload_id.clone());
        let mut tasks = JoinSet::new();
        let result = self
            .upload_parts(key, &upload_id, &mut pieces, &mut tasks)
            .await;
        let result = match result {
            Ok(parts) => self.complete(key, &upload_id, parts).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(etag) => {
                guard.armed = false;
                metrics::counter!("spillway_s3_uploads_total", "mode" => "multipart").increment(1);
                metrics::counter!("spillway_s3_uploaded_bytes_total").increment(pieces.received);
                Ok(ObjectMeta {
                    key: key.clone(),
                    size: pieces.received,
                    content_type: opts.content_type.clone(),
                    content_encoding: opts.content_encoding.clone(),
                    etag,
                })
            }
            Err(e) => {
                // Stop every part upload first: a part that lands after the abort would
                // be stored (and billed) again.
                tasks.shutdown().await;
                guard.armed = false;
                if e.is_transient() {
                    // The abort would wait for the unavailable store too: the caller gets
                    // its error now, the abort is retried in the background.
                    self.cleanup.defer(key.as_str(), Some(&upload_id));
                } else {
                    self.cleanup.abort_or_defer(key.as_str(), &upload_id).await;
                }
                Err(e)
            }
        }
    }

    /// Uploads every part; returns them in part-number order.
    async fn upload_parts(
        &self,
        key: &ObjectKey,
        upload_id: &str,
        pieces: &mut Pieces,
        tasks: &mut JoinSet<Result<CompletedPart, StorageError>>,
    ) -> Result<Vec<CompletedPart>, StorageError> {
        let mut done = Vec::new();
        let mut number: i32 = 0;
        loop {
            while let Some(joined) = tasks.try_join_next() {
                done.push(joined_part(joined)?);
            }
            while tasks.len() >= self.config.concurrency {
                if let Some(joined) = tasks.join_next().await {
                    done.push(joined_part(joined)?);
                }
            }
            let (part, len) = pieces.take(self.config.part_size).await?;
            if len == 0 {
                break;
            }
            number += 1;
            if number as u64 > MAX_PARTS {
                return Err(StorageError::TooLarge {
                    size: pieces.received,
                    limit: MAX_PARTS * self.config.part_size,
                });
            }
            let this = self.clone();
            let key = key.as_str().to_string();
            let upload_id = upload_id.to_string();
            tasks.spawn(async move {
                this.upload_part(&key, &upload_id, number, concat(part, len), len)
                    .await
            });
            if len < self.config.part_size {
                break;
            }
        }
        while let Some(joined) = tasks.join_next().await {
            done.push(joined_part(joined)?);
        }
        done.sort_by_key(|p| p.part_number);
        Ok(done)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
        len: u64,
    ) -> Result<CompletedPart, StorageError> {
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(len as i64)
            .set_checksum_algorithm(self.config.checksums.then_some(ChecksumAlgorithm::Crc32))
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| object_error("UploadPart", &self.bucket, key, e))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag)
            .set_checksum_crc32(out.checksum_crc32)
            .build())
    }

    async fn complete(
        &self,
        key: &ObjectKey,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<Option<String>, StorageError> {
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key.as_str())
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| object_error("CompleteMultipartUpload", &self.bucket, key.as_str(), e))?;
        Ok(out.e_tag)
    }
}

fn joined_part(
    joined: Result<Result<CompletedPart, StorageError>, tokio::task::JoinError>,
) -> Result<CompletedPart, StorageError> {
    joined.map_err(|e| StorageError::Backend(format!("s3 part upload task failed: {e}")))?
}

/// Aborts the multipart upload (in the background) if the upload future is dropped before it
/// finished: the client disconnected, or the call was cancelled.
struct AbortGuard {
    cleanup: Cleanup,
    key: String,
    /// `None` while CreateMultipartUpload is in flight: the key is swept instead.
    upload_id: Option<String>,
    armed: bool,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if self.armed {
            self.cleanup.defer(&self.key, self.upload_id.as_deref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    fn streamed(chunks: Vec<&'static [u8]>) -> PutPayload {
        PutPayload::Stream {
            stream: stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c)))).boxed(),
            size_hint: None,
        }
    }

    #[tokio::test]
    async fn pieces_cut_chunks_to_the_requested_size() {
        let mut p = Pieces::new(streamed(vec![b"abc", b"", b"defgh", b"ij"]), 100);
        let (a, n) = p.take(4).await.unwrap();
        assert_eq!((concat(a, n), n), (Bytes::from_static(b"abcd"), 4));
        let (b, n) = p.take(4).await.unwrap();
        assert_eq!(b.len(), 1, "a slice of one chunk is not copied");
        assert_eq!((concat(b, n), n), (Bytes::from_static(b"efgh"), 4));
        let (c, n) = p.take(4).await.unwrap();
        assert_eq!((concat(c, n), n), (Bytes::from_static(b"ij"), 2));
        let (d, n) = p.take(4).await.unwrap();
        assert!(d.is_empty() && n == 0);
        assert_eq!(p.received, 10);
    }

    #[tokio::test]
    async fn look_ahead_can_be_put_back() {
        let mut p = Pieces::new(PutPayload::Bytes(Bytes::from_static(b"0123456789")), 100);
        let (head, n) = p.take(7).await.unwrap();
        assert_eq!(n, 7);
        p.unread(head);
        let (all, n) = p.take(100).await.unwrap();
        assert_eq!(concat(all, n), Bytes::from_static(b"0123456789"));
    }

    #[tokio::test]
    async fn limits_and_producer_errors_stop_the_payload() {
        let mut p = Pieces::new(streamed(vec![b"abcdef", b"ghijkl"]), 8);
        assert!(p.take(4).await.is_ok());
        assert!(matches!(
            p.take(8).await,
            Err(StorageError::TooLarge { size: 12, limit: 8 })
        ));
        let failing = PutPayload::Stream {
            stream: stream::iter(vec![
                Ok(Bytes::from_static(b"abc")),
                Err(std::io::Error::other("encoder failed")),
            ])
            .boxed(),
            size_hint: None,
        };
        let mut p = Pieces::new(failing, 100);
        match p.take(10).await {
            Err(StorageError::UploadAborted { reason }) => {
                assert!(reason.contains("encoder failed"))
            }
            other => panic!("expected UploadAborted, got {other:?}"),
        }
    }
}
