//! The local store, served over real HTTP on 127.0.0.1, against the shared storage contract
//! (`spillway_storage::conformance`). Its HTTP server's own behaviour (HEAD, multi-ranges,
//! traversal, size caps, aborted uploads) is tested in `http.rs`.

use std::sync::Arc;

use spillway_storage::conformance::{self, Capabilities};
use spillway_storage::Storage;
use spillway_storage_local::{LocalStore, LocalStoreConfig};
use tokio::net::TcpListener;
use url::Url;

#[tokio::test]
async fn the_local_store_meets_the_storage_contract() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = Arc::new(
        LocalStore::new(LocalStoreConfig {
            root: dir.path().join("root"),
            key_prefix: "results/".to_string(),
            public_base: Url::parse(&format!("http://{addr}/base/__storage__/")).unwrap(),
            secret: b"0123456789abcdef0123456789abcdef".to_vec(),
            previous_secrets: Vec::new(),
            max_object_bytes: 1 << 20,
        })
        .unwrap(),
    );
    let app = axum::Router::new().nest("/base/__storage__", store.clone().router());
    tokio::spawn(async move { axum::serve(listener, app).await });
    // The local store checks every signature itself: nothing is left out.
    let dynamic: Arc<dyn Storage> = store;
    conformance::run_all(dynamic, Capabilities::FULL).await;
}
