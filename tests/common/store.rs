//! The embedded local store, served over real HTTP on 127.0.0.1.

use std::path::Path;
use std::sync::Arc;

use spillway_storage_local::{LocalStore, LocalStoreConfig};
use tempfile::TempDir;

/// A local store under `dir/objects` whose URLs name `{origin}/__storage__/`, signed with a
/// key of 32 bytes `secret`, keys under `key_prefix`, objects up to 1 GiB.
pub(crate) fn local_store(
    dir: &Path,
    origin: &str,
    key_prefix: &str,
    secret: u8,
) -> Arc<LocalStore> {
    Arc::new(
        LocalStore::new(LocalStoreConfig {
            root: dir.join("objects"),
            key_prefix: key_prefix.into(),
            public_base: format!("{origin}/__storage__/").parse().unwrap(),
            secret: vec![secret; 32],
            previous_secrets: Vec::new(),
            max_object_bytes: 1 << 30,
        })
        .unwrap(),
    )
}

/// A [`local_store`] served alone (its router at `/__storage__`) on a random 127.0.0.1 port,
/// stopped when dropped.
pub(crate) struct StoreServer {
    pub(crate) store: Arc<LocalStore>,
    /// `http://127.0.0.1:<port>`.
    pub(crate) origin: String,
    _dir: TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StoreServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StoreServer {
    /// Starts the store (see [`local_store`] for `key_prefix` and `secret`).
    pub(crate) async fn start(key_prefix: &str, secret: u8) -> StoreServer {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let store = local_store(dir.path(), &origin, key_prefix, secret);
        let router = axum::Router::new().nest("/__storage__", store.clone().router());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        StoreServer {
            store,
            origin,
            _dir: dir,
            task,
        }
    }
}
