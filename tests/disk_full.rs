//! `spillway serve` with its local store on a disk that fills up: the call that runs out of
//! space fails with an error naming the cause (not "storage upload stopped before the object
//! was complete"), no partial file is left, and the server keeps serving. Two real limits: a
//! small tmpfs (ENOSPC; skipped with a message where the test may not mount one) and a file
//! size limit, `ulimit -f` (EFBIG; any Linux).

use std::path::{Path, PathBuf};

use spillway::client::{Client, ClientConfig};
use spillway::demo;
use spillway::url_policy::UrlPolicy;
use spillway::wire::ErrorCode;
use spillway_test_support::{files_under, SmallFs};

use crate::common::*;

const MIB: i64 = 1024 * 1024;

fn client_of(url: &str) -> Client {
    let mut config = ClientConfig::default();
    config.fetch.policy = UrlPolicy::local_testing();
    Client::new(url, config).unwrap()
}

/// A 16 MiB result does not fit: the error names `cause`, nothing is left in `objects`, and
/// the server still answers small calls and stores a result that fits.
async fn the_full_store_is_reported_and_the_server_keeps_serving(
    served: &ServedBinary,
    objects: &Path,
    cause: &str,
) {
    let client = client_of(&served.url);
    let err = client
        .call(demo::PROTOCOL, "blob", size_params(16 * MIB))
        .await
        .unwrap_err();
    let spillway::Error::Rpc(rpc) = &err else {
        panic!("expected an rpc error, got {err:?}");
    };
    assert_eq!(rpc.code, ErrorCode::ResourceExhausted, "{rpc:?}");
    assert!(
        rpc.message.contains("storage full: local store")
            && rpc.message.to_lowercase().contains(cause),
        "{}",
        rpc.message
    );
    assert!(!rpc.message.contains("stopped before"), "{}", rpc.message);
    assert_eq!(
        files_under(objects),
        Vec::<PathBuf>::new(),
        "partial files left"
    );

    echo(&client, b"still serving").await;
    let out = blob(&client, 2 * MIB).await;
    assert!(out.externalized.is_some(), "a 2 MiB result is externalized");
    assert_eq!(files_under(&objects.join("objects")).len(), 1);
}

#[tokio::test]
async fn a_full_local_disk_names_the_cause() {
    let Some(fs) = SmallFs::mount(8 * MIB as u64) else {
        return;
    };
    let objects = fs.path().join("store");
    let served = ServedBinary::start(&[
        ("SPILLWAY_LOCAL_DIR", objects.to_str().unwrap()),
        ("SPILLWAY_COMPRESSION", "none"),
    ]);
    the_full_store_is_reported_and_the_server_keeps_serving(
        &served,
        &objects,
        "no space left on device",
    )
    .await;
    drop(served);
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_file_size_limit_names_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("store");
    // 8192 blocks: 4 MiB (512-byte blocks, POSIX sh) or 8 MiB (bash). SIGXFSZ ignored, so a
    // write past the limit fails with EFBIG instead of killing the server.
    let served = ServedBinary::start_wrapped(
        &[
            "sh",
            "-c",
            "trap '' XFSZ; ulimit -f 8192 && exec \"$0\" \"$@\"",
        ],
        &[
            ("SPILLWAY_LOCAL_DIR", objects.to_str().unwrap()),
            ("SPILLWAY_COMPRESSION", "none"),
        ],
    );
    the_full_store_is_reported_and_the_server_keeps_serving(&served, &objects, "file size limit")
        .await;
}
