//! The shared harness of the root crate's integration tests: a real `spillway serve`
//! configuration in-process ([`TestServer`]), the built binary spawned and waited for
//! ([`ServedBinary`], [`spawn_and_wait`]), the embedded local store on a random port
//! ([`StoreServer`]), the outside test servers ([`s3_endpoint`], [`gcs_emulator`],
//! [`vgi_python`]) and request helpers. Every test group (`tests/integration.rs`,
//! `tests/servers.rs`, `tests/fetch_metrics.rs`) includes it; each uses a part of it.
// Each group uses a part of the harness: the rest is unused there, not dead.
#![allow(dead_code, unused_imports)]

mod external;
mod pki;
mod process;
mod requests;
mod server;
mod store;

pub(crate) use external::*;
pub(crate) use pki::*;
pub(crate) use process::*;
pub(crate) use requests::*;
pub(crate) use server::*;
pub(crate) use spillway_test_support::generated_bytes;
pub(crate) use store::*;
