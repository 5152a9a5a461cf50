//! Spillway storage backend for Google Cloud Storage.
//!
//! Objects live in one bucket under `{key prefix}{random 128-bit hex id}`. The pieces:
//!
//! - **Data** goes through the official [`google_cloud_storage`] client (JSON API over HTTP):
//!   uploads of unknown size are resumable and buffered in 8 MiB pieces, so memory stays
//!   bounded whatever the object's size; reads are ranged, resumable and checksummed. The
//!   library has no per-request timeout of its own: a request that makes no progress for
//!   [`GcsConfig::request_timeout`] is given up here, and its retries end after
//!   [`GcsConfig::operation_timeout`]. An upload given up leaves at most an uncommitted
//!   resumable session, which holds no object and expires on its own (a week).
//! - **Signed URLs** are V4 (`GOOG4-RSA-SHA256`), built by the crate's
//!   [`SignedUrlBuilder`](google_cloud_storage::builder::storage::SignedUrlBuilder) and signed
//!   by a [`google_cloud_auth`] signer: locally with a service-account key, or through the IAM
//!   `signBlob` API under GKE Workload Identity (or for the account named in
//!   [`GcsConfig::signing_account`]).
//! - **Metadata calls** (object metadata, delete, bucket permissions, lifecycle) use the JSON
//!   API directly: the crate's `StorageControl` client speaks only gRPC, which emulators and
//!   some private endpoints do not serve.
//!
//! Upload URLs sign the `Content-Type` Spillway's clients send
//! ([`DEFAULT_SIGNED_PUT_CONTENT_TYPE`]), so a PUT with another type is refused by GCS.
//!
//! # Example
//! ```no_run
//! # async fn run() -> Result<(), spillway_storage::StorageError> {
//! use std::time::Duration;
//! use spillway_storage::{PresignMethod, Storage};
//! use spillway_storage_gcs::{GcsConfig, GcsStore};
//!
//! let mut config = GcsConfig::new("my-bucket");
//! config.key_prefix = "spillway/".into();
//! let store = GcsStore::new(config).await?;
//! let key = store.new_key();
//! store.put(&key, b"hello".to_vec().into(), Default::default()).await?;
//! let url = store.presign(&key, PresignMethod::Get, Duration::from_secs(600)).await?;
//! assert_eq!(store.key_from_url(&url.url)?, key);
//! # Ok(()) }
//! ```

//!
//! The command line form of the configuration, `GcsArgs` (flags `--gcs-*`, variables
//! `SPILLWAY_GCS_*`), is behind the `cli` feature.

mod api;
mod auth;
mod config;
mod errors;
mod lifecycle;
mod signing;
mod store;
mod upload;

#[cfg(feature = "cli")]
mod cli;

#[cfg(feature = "cli")]
pub use cli::GcsArgs;
pub use config::GcsConfig;
pub use store::GcsStore;

pub use signing::MAX_SIGNED_URL_TTL;

/// The Cloud Storage endpoint used when none is configured.
pub const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";

/// The `Content-Type` upload URLs are signed for: the one Spillway's clients (and the Python
/// reference client) send when they PUT a request.
pub const DEFAULT_SIGNED_PUT_CONTENT_TYPE: &str = "application/vnd.apache.arrow.stream";

/// Size of the pieces a streamed upload is sent in (and so the memory one upload holds).
pub const UPLOAD_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// Default [`GcsConfig::request_timeout`]: one piece of an upload is 8 MiB, so 60 s allows for
/// about 140 KiB/s.
pub const DEFAULT_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Default [`GcsConfig::operation_timeout`] (the client library's own is 300 s).
pub const DEFAULT_OPERATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// How long a readiness check (one permissions call, no retries) may take.
pub const READY_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[cfg(test)]
mod tests;
