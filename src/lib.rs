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
//! - [`url_policy`]: which URLs may be fetched.
//! - [`server`]: the axum HTTP RPC server and the API to register protocols.
//! - [`client`]: the Rust client.
//! - [`demo`]: the built-in `spillway.Demo.v1` protocol.
//! - [`config`]: settings from environment variables and flags.

pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod error;
pub mod externalize;
pub mod fetch;
pub mod object;
pub mod serve;
pub mod server;
pub mod url_policy;
pub mod wire;

pub use error::{Error, Result};
