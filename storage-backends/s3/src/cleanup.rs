//! Aborting multipart uploads that failed or were cancelled, also when the store is down at
//! the time.
//!
//! An abort sent while the store does not answer fails too. Such uploads are handed to a
//! background task that retries (with backoff, for up to [`CLEANUP_WINDOW`]) until the store
//! answers again. It also sweeps the object's key with `ListMultipartUploads`: when the answer
//! to a `CreateMultipartUpload` was lost (a timeout), the store may still have created the
//! upload, and only its key is known. Keys are random and used for one upload, so every
//! incomplete upload of the key is ours to abort. After the store answered, one more sweep
//! follows a few seconds later, for requests the store had queued while it was stuck.
//!
//! What this misses (the process exits first, the store stays down longer, the credentials
//! may not list uploads) is left to the bucket's lifecycle rule (`AbortIncompleteMultipartUpload`,
//! installed by `spillway storage init`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;
use spillway_storage::StorageError;
use tokio::time::Instant;

use crate::errors::{classify, object_error, Failure};

/// How long a cleanup keeps retrying while the store does not answer.
pub(crate) const CLEANUP_WINDOW: Duration = Duration::from_secs(15 * 60);
/// The first wait before a cleanup retries; it doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);
/// The longest wait between two attempts: the store is cleaned up within seconds of its return.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(8);
/// The wait before the confirming sweep, after the store answered.
const CONFIRM_DELAY: Duration = Duration::from_secs(3);
/// Most cleanups waiting at once; beyond, the lifecycle rule takes over (an outage under heavy
/// load must not grow the process without bound).
pub(crate) const MAX_PENDING_CLEANUPS: usize = 1024;

/// Aborts multipart uploads of one bucket. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Cleanup {
    client: Client,
    bucket: String,
    pending: Arc<AtomicUsize>,
}

/// Decrements the pending count when a background cleanup ends, however it ends.
struct PendingSlot(Arc<AtomicUsize>);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let left = self.0.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        metrics::gauge!("spillway_s3_multipart_cleanups_pending").set(left as f64);
    }
}

impl Cleanup {
    pub(crate) fn new(client: Client, bucket: String) -> Self {
        Cleanup {
            client,
            bucket,
            pending: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Cleanups running in the background.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// One `AbortMultipartUpload` (with the SDK's retries, within the operation timeout). An
    /// upload that no longer exists counts as aborted.
    pub(crate) async fn abort(&self, key: &str, upload_id: &str) -> Result<(), StorageError> {
        let sent = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        match sent {
            Ok(_) => {
                metrics::counter!("spillway_s3_multipart_aborts_total").increment(1);
                tracing::debug!(bucket = %self.bucket, key, "aborted multipart upload");
                Ok(())
            }
            Err(e) => {
                let what = format!("s3://{}/{key}", self.bucket);
                if classify("AbortMultipartUpload", &what, &e) == Failure::NoSuchUpload {
                    return Ok(());
                }
                metrics::counter!("spillway_s3_multipart_abort_failures_total").increment(1);
                Err(object_error("AbortMultipartUpload", &self.bucket, key, e))
            }
        }
    }

    /// Aborts `upload_id` now; when that fails because the store is unavailable, hands it to
    /// the background.
    pub(crate) async fn abort_or_defer(&self, key: &str, upload_id: &str) {
        match self.abort(key, upload_id).await {
            Ok(()) => {}
            Err(e) if e.is_transient() => self.defer(key, Some(upload_id)),
            Err(e) => abandoned(&self.bucket, key, &e),
        }
    }

    /// Retries in the background until the upload `upload_id` (when known) and every other
    /// incomplete upload of `key` are aborted. Never blocks; needs a tokio runtime.
    pub(crate) fn defer(&self, key: &str, upload_id: Option<&str>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                bucket = %self.bucket,
                key,
                "multipart upload cancelled outside a runtime; it is left to the lifecycle rule"
            );
            return;
        };
        let taken = self
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_PENDING_CLEANUPS).then_some(n + 1)
            });
        let Ok(before) = taken else {
            metrics::counter!("spillway_s3_multipart_cleanups_abandoned_total").increment(1);
            tracing::warn!(
                bucket = %self.bucket,
                key,
                limit = MAX_PENDING_CLEANUPS,
                "too many multipart uploads waiting to be aborted; this one is left to the \
                 bucket's lifecycle rule"
            );
            return;
        };
        metrics::gauge!("spillway_s3_multipart_cleanups_pending").set((before + 1) as f64);
        let slot = PendingSlot(self.pending.clone());
        let this = self.clone();
        let key = key.to_string();
        let upload_id = upload_id.map(str::to_string);
        rt.spawn(async move {
            let _slot = slot;
            this.run(&key, upload_id).await;
        });
    }

    async fn run(&self, key: &str, mut upload_id: Option<String>) {
        let deadline = Instant::now() + CLEANUP_WINDOW;
        let mut delay = FIRST_RETRY_DELAY;
        let mut confirmed = false;
        loop {
            match self.sweep(key, upload_id.as_deref()).await {
                Ok(()) if confirmed => return,
                Ok(()) => {
                    confirmed = true;
                    upload_id = None;
                    tokio::time::sleep(CONFIRM_DELAY).await;
                }
                Err(e) if e.is_transient() => {
                    if Instant::now() + delay > deadline {
                        metrics::counter!("spillway_s3_multipart_cleanups_abandoned_total")
                            .increment(1);
                        tracing::warn!(
                            bucket = %self.bucket,
                            key,
                            error = %e,
                            window_secs = CLEANUP_WINDOW.as_secs(),
                            "could not abort a failed multipart upload while the store was \
                             unavailable; the bucket's lifecycle rule (spillway storage init) \
                             removes it later"
                        );
                        return;
                    }
                    tracing::debug!(bucket = %self.bucket, key, error = %e, "multipart cleanup retries");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
                Err(e) => return abandoned(&self.bucket, key, &e),
            }
        }
    }

    /// Aborts `upload_id`, then every other incomplete upload of `key` the store lists.
    async fn sweep(&self, key: &str, upload_id: Option<&str>) -> Result<(), StorageError> {
        if let Some(id) = upload_id {
            self.abort(key, id).await?;
        }
        let listed = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(key)
            .send()
            .await;
        let out = match listed {
            Ok(out) => out,
            Err(e) => {
                let what = format!("s3://{}/{key}", self.bucket);
                return match classify("ListMultipartUploads", &what, &e) {
                    f @ (Failure::Unavailable(_) | Failure::Throttled(_)) => {
                        Err(f.into_storage_error(&self.bucket))
                    }
                    // Typically s3:ListBucketMultipartUploads not granted: the known upload
                    // is aborted, the lifecycle rule covers the rest.
                    other => {
                        tracing::debug!(
                            bucket = %self.bucket,
                            key,
                            failure = ?other,
                            "cannot list multipart uploads to sweep"
                        );
                        Ok(())
                    }
                };
            }
        };
        for upload in out.uploads() {
            if upload.key() != Some(key) {
                continue;
            }
            match upload.upload_id() {
                Some(id) if Some(id) != upload_id => self.abort(key, id).await?,
                _ => {}
            }
        }
        Ok(())
    }
}

fn abandoned(bucket: &str, key: &str, e: &StorageError) {
    metrics::counter!("spillway_s3_multipart_cleanups_abandoned_total").increment(1);
    tracing::warn!(
        bucket,
        key,
        error = %e,
        "could not abort a failed multipart upload; the bucket's lifecycle rule (spillway \
         storage init) removes it later"
    );
}
