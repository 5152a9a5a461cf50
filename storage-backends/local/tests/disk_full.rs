//! The local store on a disk that fills up: a real 8 MiB tmpfs (skipped, with a message, where
//! the test may not mount one). The write fails with an error naming the cause, the partial
//! temporary file is removed, and the store keeps working once there is room.

use bytes::Bytes;
use futures::StreamExt;
use spillway_storage::{PutOptions, PutPayload, Storage, StorageError};
use spillway_storage_local::{LocalStore, LocalStoreConfig};
use spillway_test_support::{files_under, SmallFs};

const MIB: usize = 1024 * 1024;

fn chunks(total: usize) -> PutPayload {
    let chunk = Bytes::from(vec![0x5a; MIB]);
    PutPayload::Stream {
        stream: futures::stream::iter((0..total / MIB).map(move |_| Ok(chunk.clone()))).boxed(),
        size_hint: None,
    }
}

#[tokio::test]
async fn a_full_disk_names_the_cause_and_leaves_nothing_behind() {
    let Some(fs) = SmallFs::mount(8 * MIB as u64) else {
        return;
    };
    let store = LocalStore::new(LocalStoreConfig {
        root: fs.path().to_path_buf(),
        key_prefix: "results/".into(),
        public_base: "http://127.0.0.1:9/__storage__/".parse().unwrap(),
        secret: vec![7; 32],
        previous_secrets: Vec::new(),
        max_object_bytes: 1 << 30,
    })
    .unwrap();

    // 16 MiB into 8 MiB: the write runs out of space part way.
    let key = store.new_key();
    let err = store
        .put(&key, chunks(16 * MIB), PutOptions::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StorageError::Full { .. }), "{err:?}");
    assert!(text.contains("local store disk is full"), "{text}");
    assert!(
        text.to_lowercase().contains("no space left on device"),
        "{text}"
    );
    // Nothing partial: no temporary file, no object.
    assert_eq!(files_under(fs.path()), Vec::<std::path::PathBuf>::new());
    assert!(matches!(
        store.head(&key).await,
        Err(StorageError::NotFound { .. })
    ));

    // The space is back: a smaller object fits and reads back.
    let key = store.new_key();
    let meta = store
        .put(&key, chunks(2 * MIB), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(meta.size, 2 * MIB as u64);
    assert_eq!(store.head(&key).await.unwrap().size, 2 * MIB as u64);
}
