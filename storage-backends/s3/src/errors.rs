//! Turning SDK errors into [`StorageError`]s that name the operation and never a signed URL.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use spillway_storage::StorageError;

/// What went wrong, as far as the store's answer tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// 404 for an object (NoSuchKey, NotFound without a body on HEAD).
    NoSuchKey,
    /// 404 NoSuchBucket.
    NoSuchBucket,
    /// 416 InvalidRange.
    InvalidRange,
    /// Anything else; already worded.
    Other(String),
}

/// Classifies an SDK error. `op` is the S3 operation name, `what` the object or bucket.
pub(crate) fn classify<E>(op: &str, what: &str, err: &SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().unwrap_or("");
    match (status, code) {
        (_, "NoSuchBucket") => return Failure::NoSuchBucket,
        (_, "NoSuchKey") | (Some(404), "NotFound") | (Some(404), "") => return Failure::NoSuchKey,
        (Some(416), _) | (_, "InvalidRange") => return Failure::InvalidRange,
        _ => {}
    }
    let detail = match err {
        SdkError::ServiceError(_) => {
            let message = err.message().unwrap_or("");
            let status = status.map(|s| s.to_string()).unwrap_or_default();
            let mut d = format!("http {status}");
            if !code.is_empty() {
                d.push(' ');
                d.push_str(code);
            }
            if !message.is_empty() {
                d.push_str(": ");
                d.push_str(message);
            }
            if status == "403" {
                d.push_str(" (check the credentials and their s3 permissions)");
            }
            d
        }
        // Transport failures: the SDK's context chain names the cause (connection refused,
        // timeout, dns) but never the query string of a request.
        other => DisplayErrorContext(other).to_string(),
    };
    Failure::Other(format!("s3 {op} {what}: {detail}"))
}

/// Maps an SDK error on an object operation to a [`StorageError`].
pub(crate) fn object_error<E>(
    op: &str,
    bucket: &str,
    key: &str,
    err: SdkError<E, HttpResponse>,
) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let what = format!("s3://{bucket}/{key}");
    match classify(op, &what, &err) {
        Failure::NoSuchKey => StorageError::NotFound {
            key: key.to_string(),
        },
        Failure::NoSuchBucket => no_such_bucket(bucket),
        Failure::InvalidRange => StorageError::Backend(format!("s3 {op} {what}: invalid range")),
        Failure::Other(m) => StorageError::Backend(m),
    }
}

/// The error for a bucket that does not exist.
pub(crate) fn no_such_bucket(bucket: &str) -> StorageError {
    StorageError::Config(format!(
        "bucket {bucket} does not exist (create it, or run `spillway storage init --create-bucket`)"
    ))
}
