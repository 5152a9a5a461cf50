//! The gateway: Spillway in front of any vgi-rpc HTTP service.
//!
//! `spillway gateway` speaks the vgi-rpc 0.52 HTTP protocol to clients and forwards each call
//! to one of its upstreams, externalizing large results to its own storage on the way back
//! and resolving request pointers (uploads) into inline requests on the way in. The upstream
//! needs no storage and no code change.
//!
//! - [`upstream`]: the upstream set: balancing, health checks, circuit breakers, metrics.

pub mod upstream;
