//! The root crate's integration tests against outside servers, in one test binary (one link
//! step): LocalStack's S3 (`s3_roundtrip`, `fetch_faults_s3`, the `s3_bench` benchmark), the
//! GCS emulator (`gcs_e2e`), the Python reference (`python_interop`, `python_auth`,
//! `client_reference`, whose `mock_*` tests run in-process; `vgi_cli`, its command line) and
//! squid (`client_proxy`); the otelsink OTLP receiver (`otel`); storage outages on LocalStack (`storage_outage`).
//! `scripts/test.sh` starts the servers; without one, its tests say they are skipped, unless
//! `SPILLWAY_REQUIRE_SERVERS=1`, where they fail. Each module is one former test file; run one
//! with `cargo test --test servers gcs_e2e::`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod access_log;
mod cli_reference;
mod client_proxy;
mod client_reference;
mod fetch_faults_s3;
mod gcs_e2e;
mod otel;
mod python_auth;
mod python_interop;
mod s3_bench;
mod s3_roundtrip;
mod storage_outage;
mod vgi_cli;
