//! The outside test servers (LocalStack's S3, the GCS emulator, the Python reference), found
//! through the environment by the one rule of `spillway_test_support`: skipped with a message
//! when missing, failed when `SPILLWAY_REQUIRE_SERVERS=1`.

use std::path::PathBuf;

use clap::Parser;
use spillway_storage::StoreSettings;
use spillway_storage_s3::{S3Args, S3Store};

/// LocalStack's S3 endpoint (`SPILLWAY_TEST_S3_ENDPOINT`, set by `scripts/test.sh`).
pub(crate) fn s3_endpoint() -> Option<String> {
    spillway_test_support::require_env("SPILLWAY_TEST_S3_ENDPOINT", "LocalStack")
}

/// The GCS emulator of `scripts/test.sh` (scripts/test.d/30-gcs-emulator.env.sh).
pub(crate) struct Emulator {
    /// `SPILLWAY_TEST_GCS_ENDPOINT`.
    pub(crate) endpoint: String,
    /// `SPILLWAY_TEST_GCS_BUCKET`, a bucket that exists.
    pub(crate) bucket: String,
}

/// The GCS emulator named by `SPILLWAY_TEST_GCS_ENDPOINT` and `SPILLWAY_TEST_GCS_BUCKET`.
pub(crate) fn gcs_emulator() -> Option<Emulator> {
    let [endpoint, bucket] = spillway_test_support::require_envs(
        ["SPILLWAY_TEST_GCS_ENDPOINT", "SPILLWAY_TEST_GCS_BUCKET"],
        "the GCS emulator",
    )?;
    Some(Emulator { endpoint, bucket })
}

/// The Python with vgi-rpc 0.52.2 (`SPILLWAY_VGI_PYTHON`).
pub(crate) fn vgi_python() -> Option<PathBuf> {
    spillway_test_support::require_python()
}

/// `flags` parsed as the `spillway` command line parses a flattened `T` (a backend's
/// `--s3-*` or `--gcs-*` flags).
pub(crate) fn parse_flags<T: clap::Args>(flags: &[&str]) -> T {
    #[derive(Parser)]
    struct Flags<T: clap::Args> {
        #[command(flatten)]
        inner: T,
    }
    Flags::<T>::try_parse_from(std::iter::once("x").chain(flags.iter().copied()))
        .unwrap()
        .inner
}

/// The `--s3-*` flags that reach LocalStack at `endpoint`.
pub(crate) fn localstack_flags(endpoint: &str) -> Vec<String> {
    [
        "--s3-endpoint",
        endpoint,
        "--s3-path-style",
        "--s3-region",
        "us-east-1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// An S3 store handle of the tests' own, configured by `flags` as `spillway serve` is.
pub(crate) async fn s3_store(flags: &[String], settings: StoreSettings) -> S3Store {
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    S3Store::connect(&parse_flags::<S3Args>(&refs), &settings)
        .await
        .unwrap()
}

/// A fresh name (`spillway-{tag}-{random}`) for a bucket or prefix of one test's own.
pub(crate) fn unique_name(tag: &str) -> String {
    let id: u64 = rand::random();
    format!("spillway-{tag}-{id:016x}")
}
