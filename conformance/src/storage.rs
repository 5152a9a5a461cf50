//! A [`Storage`] over vgi-rpc's fake object-storage service (`vgi_rpc.conformance.fake_storage`),
//! the store the conformance suite's external-location fixtures run.
//!
//! The service keeps blobs in memory under ids and serves them on three method-bound routes:
//! `PUT /upload/{id}`, `GET|HEAD /download/{id}`, and the dual-method `/blob/{id}`. Its `POST
//! /alloc` only mints an id (a random 128-bit hex string) and names the three URLs; nothing is
//! created until a PUT. So a key here *is* a fake-storage id: [`Storage::new_key`] mints one
//! locally, with no round trip, and [`FakeStorage::connect`] calls `/alloc` once to learn the URL
//! layout the service uses.
//!
//! Presigned URLs are the method-bound `upload_url` / `download_url` (never the dual
//! `object_url`): the suite checks that a vended upload URL refuses GET and a download URL
//! refuses PUT. The worker itself reads and probes through `/blob/{id}`, so its own traffic
//! does not move the `download_requests` counter the security tests watch.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use spillway_storage::{
    redact_url, ByteRange, GetResult, ObjectKey, ObjectMeta, PresignMethod, PresignedUrl,
    PutOptions, PutPayload, Result, Storage, StorageError,
};
use url::Url;

/// Time allowed to connect and get a response's headers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause in a body.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A [`Storage`] backed by a running fake-storage service.
#[derive(Debug, Clone)]
pub struct FakeStorage {
    http: reqwest::Client,
    base: String,
    upload_prefix: String,
    download_prefix: String,
    blob_prefix: String,
    max_object_bytes: u64,
}

/// The answer of `POST /alloc`.
#[derive(serde::Deserialize)]
struct Allocation {
    object_url: String,
    upload_url: String,
    download_url: String,
}

impl FakeStorage {
    /// Connects to the service at `base` (`http://127.0.0.1:<port>`): one `POST /alloc` to learn
    /// its URL layout. Objects larger than `max_object_bytes` are refused.
    pub async fn connect(base: &str, max_object_bytes: u64) -> Result<Self> {
        let base = base.trim_end_matches('/').to_string();
        Url::parse(&base)
            .map_err(|e| StorageError::Config(format!("fake storage url {base:?}: {e}")))?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| StorageError::Config(format!("http client: {e}")))?;
        let alloc_url = format!("{base}/alloc");
        let resp = http
            .post(&alloc_url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body("{}")
            .send()
            .await
            .map_err(|e| backend("POST", &alloc_url, e))?;
        let resp = check_status("POST", &alloc_url, resp)?;
        let body = resp
            .bytes()
            .await
            .map_err(|e| backend("POST", &alloc_url, e))?;
        let alloc: Allocation = serde_json::from_slice(&body)
            .map_err(|e| unexpected(&format!("/alloc answered {e}"), &alloc_url))?;
        let id = alloc
            .object_url
            .rsplit('/')
            .next()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| unexpected("object_url has no id", &alloc.object_url))?;
        let prefix_of = |url: &str, what: &str| {
            url.strip_suffix(id)
                .map(str::to_string)
                .ok_or_else(|| unexpected(&format!("{what} does not end with the id"), url))
        };
        Ok(FakeStorage {
            upload_prefix: prefix_of(&alloc.upload_url, "upload_url")?,
            download_prefix: prefix_of(&alloc.download_url, "download_url")?,
            blob_prefix: prefix_of(&alloc.object_url, "object_url")?,
            http,
            base,
            max_object_bytes,
        })
    }

    /// The service's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn blob_url(&self, key: &ObjectKey) -> String {
        format!("{}{}", self.blob_prefix, key.as_str())
    }

    async fn collect(&self, payload: PutPayload) -> Result<Bytes> {
        let too_large = |size: u64| StorageError::TooLarge {
            size,
            limit: self.max_object_bytes,
        };
        match payload {
            PutPayload::Bytes(b) if b.len() as u64 > self.max_object_bytes => {
                Err(too_large(b.len() as u64))
            }
            PutPayload::Bytes(b) => Ok(b),
            // The service (a wsgiref server) reads exactly Content-Length bytes and does not
            // support chunked uploads, so a streamed payload is gathered first, within the cap.
            PutPayload::Stream { mut stream, .. } => {
                let mut buf = BytesMut::new();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| StorageError::UploadAborted {
                        reason: e.to_string(),
                    })?;
                    let size = (buf.len() + chunk.len()) as u64;
                    if size > self.max_object_bytes {
                        return Err(too_large(size));
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(buf.freeze())
            }
        }
    }
}

#[async_trait]
impl Storage for FakeStorage {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn new_key(&self) -> ObjectKey {
        // The service's own ids: 32 lowercase hex digits (uuid4().hex), no prefix.
        ObjectKey::random("")
    }

    async fn put_object(
        &self,
        key: &ObjectKey,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<ObjectMeta> {
        let body = self.collect(payload).await?;
        let size = body.len() as u64;
        let url = format!("{}{}", self.upload_prefix, key.as_str());
        let content_type = opts
            .content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".into());
        let mut req = self
            .http
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, content_type.as_str())
            .body(body);
        if let Some(enc) = &opts.content_encoding {
            req = req.header(reqwest::header::CONTENT_ENCODING, enc.as_str());
        }
        let resp = req.send().await.map_err(|e| backend("PUT", &url, e))?;
        check_status("PUT", &url, resp)?;
        Ok(ObjectMeta {
            key: key.clone(),
            size,
            content_type: Some(content_type),
            content_encoding: opts.content_encoding,
            etag: None,
        })
    }

    async fn presign(
        &self,
        key: &ObjectKey,
        method: PresignMethod,
        ttl: Duration,
    ) -> Result<PresignedUrl> {
        let prefix = match method {
            PresignMethod::Get => &self.download_prefix,
            PresignMethod::Put => &self.upload_prefix,
        };
        let raw = format!("{prefix}{}", key.as_str());
        let url = Url::parse(&raw).map_err(|e| unexpected(&e.to_string(), &raw))?;
        Ok(PresignedUrl {
            url,
            method,
            // The service does not expire URLs; the promise is the caller's ttl.
            expires_at: SystemTime::now() + ttl,
        })
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let url = self.blob_url(key);
        let resp = self
            .http
            .head(&url)
            .send()
            .await
            .map_err(|e| backend("HEAD", &url, e))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(StorageError::NotFound {
                key: key.to_string(),
            });
        }
        let resp = check_status("HEAD", &url, resp)?;
        Ok(meta_of(key, &resp, header_u64(&resp, "content-length")))
    }

    async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<GetResult> {
        let url = self.blob_url(key);
        let mut req = self.http.get(&url);
        if let Some(r) = range {
            if r.end <= r.start {
                return Err(StorageError::RangeNotSatisfiable { size: 0 });
            }
            req = req.header(
                reqwest::header::RANGE,
                format!("bytes={}-{}", r.start, r.end - 1),
            );
        }
        let resp = req.send().await.map_err(|e| backend("GET", &url, e))?;
        match resp.status() {
            reqwest::StatusCode::NOT_FOUND => {
                return Err(StorageError::NotFound {
                    key: key.to_string(),
                })
            }
            reqwest::StatusCode::RANGE_NOT_SATISFIABLE => {
                let size = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.rsplit('/').next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                return Err(StorageError::RangeNotSatisfiable { size });
            }
            _ => {}
        }
        let resp = check_status("GET", &url, resp)?;
        let length = header_u64(&resp, "content-length");
        let (size, served) = if resp.status() == reqwest::StatusCode::PARTIAL_CONTENT {
            let (start, end, total) = content_range(&resp)
                .ok_or_else(|| unexpected("206 without a valid Content-Range", &url))?;
            (total, ByteRange { start, end })
        } else {
            (
                length,
                ByteRange {
                    start: 0,
                    end: length,
                },
            )
        };
        let meta = meta_of(key, &resp, size);
        let redacted = redact_url(&url);
        let stream = resp
            .bytes_stream()
            .map(move |chunk| {
                chunk.map_err(|e| {
                    StorageError::Backend(format!("GET {redacted}: {}", e.without_url()))
                })
            })
            .boxed();
        Ok(GetResult {
            meta,
            range: served,
            stream,
        })
    }

    async fn delete(&self, _key: &ObjectKey) -> Result<()> {
        // The service has no delete route: its objects live as long as the service does, which
        // is one test session.
        Ok(())
    }

    fn key_from_url(&self, url: &Url) -> Result<ObjectKey> {
        let foreign = || StorageError::ForeignUrl {
            url: redact_url(url.as_str()),
        };
        if url.query().is_some() || url.fragment().is_some() {
            return Err(foreign());
        }
        let id = url
            .as_str()
            .strip_prefix(self.download_prefix.as_str())
            .ok_or_else(foreign)?;
        if id.contains('/') {
            return Err(foreign());
        }
        ObjectKey::parse(id)
    }

    async fn check_ready(&self) -> Result<()> {
        let url = format!("{}/_stats", self.base);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| backend("GET", &url, e))?;
        check_status("GET", &url, resp).map(|_| ())
    }
}

fn backend(op: &str, url: &str, e: reqwest::Error) -> StorageError {
    StorageError::Backend(format!("{op} {}: {}", redact_url(url), e.without_url()))
}

fn unexpected(what: &str, url: &str) -> StorageError {
    StorageError::Backend(format!(
        "unexpected answer from the fake storage: {what} ({})",
        redact_url(url)
    ))
}

fn check_status(op: &str, url: &str, resp: reqwest::Response) -> Result<reqwest::Response> {
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(StorageError::Backend(format!(
            "{op} {} answered {}",
            redact_url(url),
            resp.status().as_u16()
        )))
    }
}

fn header_u64(resp: &reqwest::Response, name: &str) -> u64 {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `Content-Range: bytes START-END/TOTAL` as (start, end exclusive, total).
fn content_range(resp: &reqwest::Response) -> Option<(u64, u64, u64)> {
    let v = resp
        .headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end, total): (u64, u64, u64) =
        (start.parse().ok()?, end.parse().ok()?, total.parse().ok()?);
    (start <= end && end < total).then_some((start, end + 1, total))
}

fn meta_of(key: &ObjectKey, resp: &reqwest::Response, size: u64) -> ObjectMeta {
    let text = |name: reqwest::header::HeaderName| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    ObjectMeta {
        key: key.clone(),
        size,
        content_type: text(reqwest::header::CONTENT_TYPE),
        content_encoding: text(reqwest::header::CONTENT_ENCODING),
        etag: None,
    }
}
