//! Turning SDK errors into [`StorageError`]s that name the operation and never a signed URL.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use spillway_storage::{redact_text, StorageError};

/// Error codes S3 and S3-compatible stores answer when they shed load (the SDK retries them
/// with backoff before they reach us).
const THROTTLING_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
];

/// What went wrong, as far as the store's answer tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// 404 for an object (NoSuchKey, NotFound without a body on HEAD).
    NoSuchKey,
    /// 404 NoSuchBucket.
    NoSuchBucket,
    /// 416 InvalidRange.
    InvalidRange,
    /// 404 NoSuchUpload: the multipart upload was aborted or completed already.
    NoSuchUpload,
    /// No answer, or a 5xx one, after the retries: connection refused or reset, a timeout.
    Unavailable(String),
    /// Throttled (503 SlowDown, 429, ...) after the retries.
    Throttled(String),
    /// Anything else; already worded.
    Other(String),
}

impl Failure {
    /// The [`StorageError`] for failures that are not about a particular key.
    pub(crate) fn into_storage_error(self, bucket: &str) -> StorageError {
        match self {
            Failure::NoSuchBucket => no_such_bucket(bucket),
            Failure::Unavailable(reason) => StorageError::Unavailable { reason },
            Failure::Throttled(reason) => StorageError::Throttled { reason },
            Failure::Other(m) => StorageError::Backend(m),
            Failure::NoSuchKey => StorageError::Backend(format!("s3 bucket {bucket}: not found")),
            Failure::InvalidRange => StorageError::Backend("s3: invalid range".into()),
            Failure::NoSuchUpload => {
                StorageError::Backend("s3: the multipart upload no longer exists".into())
            }
        }
    }
}

/// `e` and its sources, `: `-separated (`dispatch failure: io error: ...: Connection refused`),
/// without the `Debug` forms the SDK's `DisplayErrorContext` appends.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    // Bounded: an error type may list itself as its own source.
    for _ in 0..8 {
        let Some(s) = source else { break };
        let more = s.to_string();
        if !more.is_empty() && !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
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
        (_, "NoSuchUpload") => return Failure::NoSuchUpload,
        (_, "NoSuchKey") | (Some(404), "NotFound") | (Some(404), "") => return Failure::NoSuchKey,
        (Some(416), _) | (_, "InvalidRange") => return Failure::InvalidRange,
        _ => {}
    }
    match err {
        SdkError::ServiceError(_) => {
            let message = err.message().unwrap_or("");
            let status_text = status.map(|s| s.to_string()).unwrap_or_default();
            let mut d = format!("http {status_text}");
            if !code.is_empty() {
                d.push(' ');
                d.push_str(code);
            }
            if !message.is_empty() {
                d.push_str(": ");
                d.push_str(message);
            }
            if status == Some(403) {
                d.push_str(" (check the credentials and their s3 permissions)");
            }
            let text = format!("s3 {op} {what}: {}", redact_text(&d));
            if status == Some(429) || THROTTLING_CODES.contains(&code) {
                Failure::Throttled(text)
            } else if matches!(status, Some(500..=599)) {
                Failure::Unavailable(text)
            } else {
                Failure::Other(text)
            }
        }
        // Transport failures and timeouts: the store did not answer. The SDK's context chain
        // names the cause (connection refused, which timeout after how long, dns) but never the
        // query string of a request; redacted all the same.
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            let detail = redact_text(&error_chain(err));
            Failure::Unavailable(format!("s3 {op} {what}: {detail}"))
        }
        other => {
            let detail = redact_text(&error_chain(other));
            Failure::Other(format!("s3 {op} {what}: {detail}"))
        }
    }
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
        Failure::InvalidRange => StorageError::Backend(format!("s3 {op} {what}: invalid range")),
        Failure::NoSuchUpload => StorageError::Backend(format!(
            "s3 {op} {what}: the multipart upload no longer exists"
        )),
        other => other.into_storage_error(bucket),
    }
}

/// The error for a bucket that does not exist.
pub(crate) fn no_such_bucket(bucket: &str) -> StorageError {
    StorageError::Config(format!(
        "bucket {bucket} does not exist (create it, or run `spillway storage init --create-bucket`)"
    ))
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_s3::operation::put_object::PutObjectError;
    use aws_sdk_s3::primitives::SdkBody;
    use aws_smithy_runtime_api::http::StatusCode;

    use super::*;

    fn answered(status: u16, code: &str, message: &str) -> SdkError<PutObjectError, HttpResponse> {
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        let raw = HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        SdkError::service_error(PutObjectError::generic(meta), raw)
    }

    fn mapped(err: SdkError<PutObjectError, HttpResponse>) -> StorageError {
        object_error("PutObject", "b", "spillway/k", err)
    }

    #[test]
    fn throttling_and_5xx_are_told_apart_from_request_errors() {
        let e = mapped(answered(
            503,
            "SlowDown",
            "Please reduce your request rate.",
        ));
        assert!(matches!(e, StorageError::Throttled { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.starts_with("storage throttled: s3 PutObject s3://b/spillway/k"));
        assert!(text.contains("503 SlowDown"), "{text}");
        let e = mapped(answered(429, "", ""));
        assert!(matches!(e, StorageError::Throttled { .. }), "{e:?}");
        for (status, code) in [
            (500, "InternalError"),
            (503, "ServiceUnavailable"),
            (504, ""),
        ] {
            let e = mapped(answered(status, code, "try again"));
            assert!(matches!(e, StorageError::Unavailable { .. }), "{e:?}");
        }
        let e = mapped(answered(403, "AccessDenied", "no"));
        assert!(matches!(e, StorageError::Backend(_)), "{e:?}");
        assert!(!e.is_transient());
        let e = mapped(answered(404, "NoSuchKey", ""));
        assert!(matches!(e, StorageError::NotFound { .. }), "{e:?}");
    }

    #[test]
    fn no_answer_is_unavailable_and_names_the_cause() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = mapped(SdkError::dispatch_failure(ConnectorError::io(
            refused.into(),
        )));
        assert!(matches!(e, StorageError::Unavailable { .. }), "{e:?}");
        assert!(e.to_string().contains("refused"), "{e}");
        let e = mapped(SdkError::timeout_error(
            "operation timeout occurred after 2s",
        ));
        assert!(matches!(e, StorageError::Unavailable { .. }), "{e:?}");
        assert!(e.to_string().contains("timeout"), "{e}");
    }
}
