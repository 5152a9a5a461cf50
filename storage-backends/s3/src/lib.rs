//! Spillway's storage backend for Amazon S3 and S3-compatible stores (MinIO, LocalStack, ...),
//! on the official AWS SDK (`aws-sdk-s3`).
//!
//! - **Uploads**: one `PutObject` up to [`S3Config::multipart_threshold`], above it a
//!   multipart upload whose parts ([`S3Config::part_size`]) are cut from the stream as it
//!   arrives and uploaded [`S3Config::upload_concurrency`] at a time, with bounded memory. A
//!   failed or cancelled multipart upload is aborted. `Content-Type` and `Content-Encoding` are
//!   stored with the object; server-side encryption (SSE-S3, SSE-KMS) and the storage class
//!   are optional.
//! - **Presigned URLs** (SigV4, at most 7 days) are signed for the *public* endpoint when one
//!   is configured ([`S3Config::public_endpoint`]): in Kubernetes the server reaches the store
//!   at an internal address, clients at another. The public endpoint must forward requests to
//!   the same store with the `Host` header unchanged (the signature covers it).
//! - **Credentials and region** come from the standard AWS chain: environment, shared
//!   config/credentials files (profiles, `credential_process`), web identity (EKS IRSA), ECS
//!   and EC2 instance metadata. `AWS_ENDPOINT_URL_S3` and `AWS_ENDPOINT_URL` are honoured when
//!   [`S3Config::endpoint`] is not set.
//! - **Keys** are `{prefix}{random 128-bit hex id}`.
//! - **Request pointers**: [`Storage::key_from_url`] accepts only GET URLs of this bucket and
//!   prefix on the internal or public endpoint, carrying a SigV4 signature that has not expired
//!   and (when signed with the current credentials) that verifies; see the `urls` module.
//!
//! The command line form of the configuration, `S3Args` (flags `--s3-*`, variables
//! `SPILLWAY_S3_*`), is behind the `cli` feature.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use spillway_storage::{PresignMethod, Storage};
//! use spillway_storage_s3::{S3Config, S3Store};
//!
//! let mut config = S3Config::new("spillway");
//! config.endpoint = Some("http://127.0.0.1:4566".parse()?);
//! config.path_style = true;
//! let store = S3Store::new(config).await?;
//! let key = store.new_key();
//! store.put(&key, b"hello".to_vec().into(), Default::default()).await?;
//! let url = store.presign(&key, PresignMethod::Get, std::time::Duration::from_secs(60)).await?;
//! assert_eq!(store.key_from_url(&url.url)?, key);
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

mod cleanup;
mod config;
mod creds;
mod errors;
mod lifecycle;
mod ops;
mod store;
mod upload;
mod urls;

#[cfg(feature = "cli")]
mod cli;

pub use aws_sdk_s3;
#[cfg(feature = "cli")]
pub use cli::S3Args;
pub use config::{S3Config, SseMode};
pub use lifecycle::{lifecycle_rule, lifecycle_rule_id};
pub use store::S3Store;
pub use upload::{MAX_PARTS, MAX_PART_SIZE, MIN_PART_SIZE};
pub use urls::MAX_PRESIGN_TTL;

/// Default [`S3Config::multipart_threshold`]: 16 MiB.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
/// Default [`S3Config::part_size`]: 8 MiB (the externalizer's chunk size, so parts are
/// uploaded without copying).
pub const DEFAULT_PART_SIZE: u64 = 8 * 1024 * 1024;
/// Default [`S3Config::upload_concurrency`].
pub const DEFAULT_UPLOAD_CONCURRENCY: usize = 4;
/// Most parts uploaded at once.
pub const MAX_UPLOAD_CONCURRENCY: usize = 64;
/// Default [`S3Config::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`S3Config::request_timeout`]: one attempt moves at most one part (8 MiB by
/// default) or one single PUT (up to the 16 MiB threshold), so 60 s allows for about
/// 270 KiB/s per connection; raise it with larger parts or slower links.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`S3Config::operation_timeout`]: two attempts of a request the store never answers
/// (quick failures, such as a refused connection or a 503, get all the SDK's retries in it).
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a readiness probe (one HeadBucket, no retries) may take.
pub const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests;
