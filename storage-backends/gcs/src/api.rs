//! The Cloud Storage JSON API calls the client library has no HTTP form for: object metadata,
//! delete, bucket permissions, and bucket metadata for lifecycle rules. (The library's
//! `StorageControl` client makes these calls over gRPC only, which emulators and some private
//! endpoints do not serve.)

use std::time::Duration;

use bytes::Bytes;
use google_cloud_auth::credentials::{CacheableResource, Credentials};
use http::{Extensions, Method, StatusCode};
use spillway_storage::{ObjectKey, ObjectMeta, StorageError};

use crate::errors;

/// What Spillway does with objects: write them, read them, delete them.
pub(crate) const OBJECT_PERMISSIONS: &[&str] = &[
    "storage.objects.create",
    "storage.objects.get",
    "storage.objects.delete",
];

/// Largest JSON response read (object and bucket resources are a few KiB).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Attempts of an idempotent call that fails with a transient error.
const ATTEMPTS: u32 = 3;

/// Time allowed to open a connection for a JSON API call.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A JSON API response: status and (bounded) body.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    pub(crate) fn json(&self) -> Result<serde_json::Value, StorageError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| StorageError::Backend(format!("gcs answered with invalid json: {e}")))
    }
}

/// The service's explanation in an error body (`{"error": {"message": ...}}`), bounded and
/// redacted.
pub(crate) fn service_message(body: &[u8]) -> String {
    let parsed: Option<String> = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        });
    let text = parsed.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    if text.trim().is_empty() {
        "no details".into()
    } else {
        errors::redact_text(text.trim())
    }
}

/// What reading a bucket's metadata found.
pub(crate) enum Bucket {
    /// The bucket resource.
    Found(serde_json::Value),
    /// No such bucket.
    Missing,
    /// The credentials may not read the bucket's metadata (why).
    Denied(String),
}

pub(crate) struct JsonApi {
    http: reqwest::Client,
    /// `http(s)://host[:port]`.
    base: String,
    bucket: String,
    credentials: Credentials,
}

/// An object name as one path segment: keys are `[A-Za-z0-9._/-]`, so only `/` needs escaping.
fn object_segment(key: &ObjectKey) -> String {
    key.as_str().replace('/', "%2F")
}

impl JsonApi {
    pub(crate) fn new(
        base: String,
        bucket: String,
        credentials: Credentials,
        request_timeout: Duration,
    ) -> Result<Self, StorageError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(request_timeout))
            .timeout(request_timeout)
            .build()
            .map_err(|e| StorageError::Config(format!("http client: {e}")))?;
        Ok(JsonApi {
            http,
            base,
            bucket,
            credentials,
        })
    }

    fn bucket_path(&self) -> String {
        format!("/storage/v1/b/{}", self.bucket)
    }

    fn object_path(&self, key: &ObjectKey) -> String {
        format!("{}/o/{}", self.bucket_path(), object_segment(key))
    }

    async fn auth_headers(&self) -> Result<http::HeaderMap, StorageError> {
        match self.credentials.headers(Extensions::new()).await {
            Ok(CacheableResource::New { data, .. }) => Ok(data),
            Ok(CacheableResource::NotModified) => Err(StorageError::Backend(
                "gcs credentials returned no headers".into(),
            )),
            Err(e) => Err(StorageError::Backend(format!(
                "gcs credentials: {}",
                errors::redacted_chain(&e)
            ))),
        }
    }

    /// One call; idempotent ones are retried on connection failures, timeouts, 429 and 5xx.
    pub(crate) async fn call(
        &self,
        op: &str,
        method: Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
        idempotent: bool,
    ) -> Result<Reply, StorageError> {
        let attempts = if idempotent { ATTEMPTS } else { 1 };
        self.call_with(op, method, path_and_query, body, attempts, None)
            .await
    }

    /// [`JsonApi::call`] with `attempts` and, when given, a shorter `timeout` per attempt.
    pub(crate) async fn call_with(
        &self,
        op: &str,
        method: Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
        attempts: u32,
        timeout: Option<Duration>,
    ) -> Result<Reply, StorageError> {
        let url = format!("{}{}", self.base, path_and_query);
        let mut last = None;
        for attempt in 0..attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * 4u64.pow(attempt - 1))).await;
            }
            let headers = self.auth_headers().await?;
            match self
                .attempt(method.clone(), &url, headers, body, timeout)
                .await
            {
                Ok(reply)
                    if reply.status == StatusCode::TOO_MANY_REQUESTS
                        || reply.status.is_server_error() =>
                {
                    last = Some(Ok(reply));
                }
                Ok(reply) => return Ok(reply),
                Err(e) if e.is_connect() || e.is_timeout() => {
                    last = Some(Err(e));
                }
                Err(e) => return Err(transport_error(op, &e)),
            }
        }
        match last {
            Some(Ok(reply)) => Ok(reply),
            Some(Err(e)) => Err(transport_error(op, &e)),
            None => Err(StorageError::Backend(format!("gcs {op}: no attempt made"))),
        }
    }

    async fn attempt(
        &self,
        method: Method,
        url: &str,
        headers: http::HeaderMap,
        body: Option<&serde_json::Value>,
        timeout: Option<Duration>,
    ) -> Result<Reply, reqwest::Error> {
        let mut request = self.http.request(method, url).headers(headers);
        if let Some(t) = timeout {
            request = request.timeout(t);
        }
        if let Some(b) = body {
            request = request
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(b.to_string());
        }
        let mut response = request.send().await?;
        let status = response.status();
        let mut buf = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if buf.len() + chunk.len() > MAX_RESPONSE_BYTES {
                // Enough to explain an error; a success this large is not one of ours.
                break;
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Reply {
            status,
            body: Bytes::from(buf),
        })
    }

    /// Maps a non-success reply to an error.
    pub(crate) fn failure(&self, op: &str, reply: &Reply, key: Option<&ObjectKey>) -> StorageError {
        let message = service_message(&reply.body);
        match (reply.status, key) {
            (StatusCode::NOT_FOUND, Some(key)) => StorageError::NotFound {
                key: key.to_string(),
            },
            (StatusCode::NOT_FOUND, None) => StorageError::Config(format!(
                "gcs bucket {} not found ({op}): {message}",
                self.bucket
            )),
            (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, _) => {
                StorageError::Backend(format!(
                    "gcs {op} on bucket {} was denied (http {}): {message}",
                    self.bucket,
                    reply.status.as_u16()
                ))
            }
            (status, _) => {
                let reason = format!("gcs {op} failed (http {}): {message}", status.as_u16());
                if status == StatusCode::TOO_MANY_REQUESTS {
                    StorageError::Throttled { reason }
                } else if status.is_server_error() {
                    StorageError::Unavailable { reason }
                } else {
                    StorageError::Backend(reason)
                }
            }
        }
    }

    pub(crate) async fn object_meta(&self, key: &ObjectKey) -> Result<ObjectMeta, StorageError> {
        let path = format!(
            "{}?fields=size,contentType,contentEncoding,etag",
            self.object_path(key)
        );
        let reply = self
            .call("object metadata", Method::GET, &path, None, true)
            .await?;
        if !reply.status.is_success() {
            return Err(self.failure("object metadata", &reply, Some(key)));
        }
        let v = reply.json()?;
        let text = |name: &str| {
            v.get(name)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .unwrap_or_default()
        };
        // The JSON API sends int64 fields as strings.
        let size = text("size")
            .parse::<u64>()
            .map_err(|_| StorageError::Backend("gcs object metadata has no valid size".into()))?;
        Ok(ObjectMeta {
            key: key.clone(),
            size,
            content_type: errors::non_empty(text("contentType")),
            content_encoding: errors::stored_encoding(text("contentEncoding")),
            etag: errors::non_empty(text("etag")),
        })
    }

    pub(crate) async fn delete_object(&self, key: &ObjectKey) -> Result<(), StorageError> {
        let reply = self
            .call(
                "delete object",
                Method::DELETE,
                &self.object_path(key),
                None,
                true,
            )
            .await?;
        match reply.status {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Ok(()),
            _ => Err(self.failure("delete object", &reply, Some(key))),
        }
    }

    /// Which of `permissions` the credentials hold on the bucket: one attempt within
    /// `timeout` (a readiness probe), or the usual retries.
    pub(crate) async fn test_permissions(
        &self,
        permissions: &[&str],
        timeout: Option<Duration>,
    ) -> Result<Vec<String>, StorageError> {
        let query: Vec<String> = permissions
            .iter()
            .map(|p| format!("permissions={p}"))
            .collect();
        let path = format!(
            "{}/iam/testPermissions?{}",
            self.bucket_path(),
            query.join("&")
        );
        let attempts = if timeout.is_some() { 1 } else { ATTEMPTS };
        let reply = self
            .call_with(
                "permission check",
                Method::GET,
                &path,
                None,
                attempts,
                timeout,
            )
            .await?;
        if !reply.status.is_success() {
            return Err(self.failure("permission check", &reply, None));
        }
        let v = reply.json()?;
        Ok(v.get("permissions")
            .and_then(|p| p.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The bucket's metadata (name, metageneration, lifecycle).
    pub(crate) async fn get_bucket(&self) -> Result<Bucket, StorageError> {
        let path = format!(
            "{}?fields=name,metageneration,lifecycle",
            self.bucket_path()
        );
        let reply = self
            .call("read bucket metadata", Method::GET, &path, None, true)
            .await?;
        match reply.status {
            s if s.is_success() => Ok(Bucket::Found(reply.json()?)),
            StatusCode::NOT_FOUND => Ok(Bucket::Missing),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Ok(Bucket::Denied(
                self.failure("read bucket metadata", &reply, None)
                    .to_string(),
            )),
            _ => Err(self.failure("read bucket metadata", &reply, None)),
        }
    }

    /// Creates the bucket in `project`; `Ok(false)` if it already exists.
    pub(crate) async fn create_bucket(&self, project: &str) -> Result<bool, StorageError> {
        let project: String = url::form_urlencoded::byte_serialize(project.as_bytes()).collect();
        let path = format!("/storage/v1/b?project={project}");
        let body = serde_json::json!({ "name": self.bucket });
        let reply = self
            .call("create bucket", Method::POST, &path, Some(&body), false)
            .await?;
        match reply.status {
            s if s.is_success() => Ok(true),
            StatusCode::CONFLICT => Ok(false),
            _ => Err(self.failure("create bucket", &reply, None)),
        }
    }

    /// Replaces the bucket's lifecycle rules, if its metageneration is still `metageneration`.
    pub(crate) async fn set_lifecycle(
        &self,
        metageneration: &str,
        rules: &[serde_json::Value],
    ) -> Result<Reply, StorageError> {
        let path = format!(
            "{}?ifMetagenerationMatch={metageneration}&fields=name,metageneration,lifecycle",
            self.bucket_path()
        );
        let body = serde_json::json!({ "lifecycle": { "rule": rules } });
        // Conditional on the metageneration, so a retry cannot undo someone else's change.
        self.call(
            "update bucket lifecycle",
            Method::PATCH,
            &path,
            Some(&body),
            true,
        )
        .await
    }
}

/// No answer (refused, reset, timed out): the store is unavailable.
fn transport_error(op: &str, e: &reqwest::Error) -> StorageError {
    let reason = format!("gcs {op} failed: {}", errors::redacted_chain(e));
    if e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() {
        StorageError::Unavailable { reason }
    } else {
        StorageError::Backend(reason)
    }
}
