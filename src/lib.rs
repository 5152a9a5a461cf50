//! Spillway: Arrow RPC (the vgi-rpc 0.52 HTTP protocol) that carries payloads of any size.
//!
//! A server built on this crate answers small results inline and moves large ones to object
//! storage, sending a tiny *pointer batch* with a presigned URL instead; clients resolve
//! pointers transparently. Large requests travel the other way through server-vended upload
//! URLs.
//!
//! Modules, one concept each:
//! - [`wire`]: IPC framing with per-message metadata; pointer, log and error batches.
//! - [`externalize`]: result batch → compressed object in storage → pointer.
//! - [`object`]: stored bytes → decoded, verified batch (the reader rules).
//! - [`fetch`]: getting an object's bytes over HTTP.
//! - [`gateway`]: Spillway in front of any vgi-rpc HTTP service (`spillway gateway`).
//! - [`url_policy`]: which URLs may be fetched.
//! - [`server`]: the axum HTTP RPC server and the API to register protocols.
//! - [`client`]: the Rust client.
//! - [`telemetry`]: W3C trace context in and out, OTLP span export (feature `otlp`).
//! - [`demo`]: the built-in `spillway.Demo.v1` protocol.
//! - [`config`]: settings of `spillway serve` (the flags and environment variables need the
//!   `cli` feature).
//! - `cli`, `serve` (feature `cli`, on by default): the `spillway` binary's command line.
//!
//! Cargo features: `cli` (default) builds the command line and its dependencies (clap, the
//! progress bar, result tables, log output). A service built on the library needs none of
//! them: depend on `spillway` with `default-features = false`.

#[cfg(feature = "cli")]
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod error;
pub mod externalize;
pub mod fetch;
pub mod gateway;
#[cfg(feature = "cli")]
pub mod logging;
pub mod object;
#[cfg(feature = "cli")]
pub mod serve;
pub mod server;
pub mod telemetry;
#[cfg(feature = "cli")]
pub mod top;
pub mod url_policy;
pub mod wire;

pub use error::{AuthRejection, Error, Result};

#[cfg(test)]
mod readme_tests {
    /// The README's library example is `examples/squares_service.rs` (which cargo compiles),
    /// shown from its first `use` on; this keeps the two from drifting apart.
    #[test]
    fn readme_shows_the_compiled_library_example() {
        let readme = include_str!("../README.md");
        let example = include_str!("../examples/squares_service.rs");
        let code = &example[example.find("use std::sync::Arc;").unwrap()..];
        assert!(
            readme.contains(&format!("```rust\n{code}```")),
            "README.md \"Building a service on the library\" must show examples/squares_service.rs"
        );
    }
}
