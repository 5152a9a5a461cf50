//! A store shaper for Spillway's tests and benchmarks (not a product feature).
//!
//! [`Shaper`] is an HTTP/1.1 proxy on 127.0.0.1 in front of any HTTP object store (the
//! embedded local store, LocalStack, a GCS emulator). It makes a loopback store behave like a
//! real one, and breaks it on purpose:
//!
//! - **Shaping** ([`ShaperConfig`]): per-connection bandwidth (each response body is paced),
//!   time to first byte with jitter, and stragglers: a fraction of requests stall before the
//!   first byte, a fraction deliver at a fraction of the rate.
//! - **Faults** ([`FaultRule`], [`Fault`]): chosen by a [`Match`] on the request (the probe,
//!   the n-th range GET, the n-th request for a given range start, ...), each firing a given
//!   number of times: 5xx and 503 SlowDown, connection dropped before the answer or reset in
//!   the middle of the body, truncated body, 200 instead of 206, wrong `Content-Range`,
//!   corrupted byte, stalls, slow delivery, redirects, and a hook that runs before the
//!   request is forwarded (to replace the object in the store mid-fetch).
//!
//! Presigned URLs keep working: the path and query are forwarded unchanged. For stores whose
//! signature does not cover the host (Spillway's local store), point the URL at the shaper
//! with [`Shaper::rewrite`]. For stores whose signature covers the host (S3 SigV4), presign
//! for the shaper's address and set [`ShaperConfig::preserve_host`], so the store sees the
//! host the URL was signed for.
//!
//! Every request is recorded ([`Shaper::log`]) with what was done to it.

mod config;
mod conn;
mod faults;
mod proxy;
mod server;

pub use config::ShaperConfig;
pub use faults::{Fault, FaultRule, Hook, Match, RequestInfo, RequestRecord};
pub use server::Shaper;
