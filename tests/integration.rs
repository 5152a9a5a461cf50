//! The root crate's integration tests that need no outside server, in one test binary (one
//! link step): `spillway serve` in-process and as the built binary, the client against it, and
//! the fetch engine against the embedded store behind the shaper. Each module is one former
//! test file; run one with `cargo test --test integration e2e::`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod auth;
mod cli;
mod cli_streams;
mod client_auth;
mod client_retry;
mod disk_full;
mod e2e;
mod fetch_cli;
mod fetch_faults;
mod jwt_auth;
mod ops;
mod overload;
mod reflection;
mod rpc_metrics;
mod server_api;
mod stream_tokens;
mod streams;
mod tls;
mod wire_vectors;

/// With `autotests = false` (Cargo.toml), a file in `tests/` that no test group includes would
/// never be compiled nor run: every one must be a module of a group, or a group itself.
#[test]
fn every_test_file_belongs_to_a_group() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let (manifest, groups) = (
        read("Cargo.toml"),
        read("tests/integration.rs") + &read("tests/servers.rs"),
    );
    let mut orphans = Vec::new();
    for entry in std::fs::read_dir(root.join("tests")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".rs") else {
            continue;
        };
        let is_group = manifest.contains(&format!("path = \"tests/{name}\""));
        if !is_group && !groups.contains(&format!("\nmod {stem};")) {
            orphans.push(name);
        }
    }
    assert!(orphans.is_empty(), "not in any test group: {orphans:?}");
}
