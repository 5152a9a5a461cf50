//! Spillway storage backend: GCS (not implemented yet: the constructor refuses to start).

use spillway_storage::{StorageError, StoreSettings};

/// `SPILLWAY_GCS_*` settings.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GcsArgs {}

/// The GCS store.
#[derive(Debug)]
pub struct GcsStore {
    _private: (),
}

impl GcsStore {
    /// Connects to the store described by `args` and `settings`.
    pub async fn connect(args: &GcsArgs, settings: &StoreSettings) -> Result<Self, StorageError> {
        let _ = (args, settings);
        Err(StorageError::Config(
            "the gcs backend is not available in this build yet".into(),
        ))
    }
}

fn unavailable() -> StorageError {
    StorageError::Config("the gcs backend is not available in this build yet".into())
}

#[async_trait::async_trait]
impl spillway_storage::Storage for GcsStore {
    fn kind(&self) -> &'static str {
        "gcs"
    }
    fn new_key(&self) -> spillway_storage::ObjectKey {
        spillway_storage::ObjectKey::random("")
    }
    async fn put(
        &self,
        _key: &spillway_storage::ObjectKey,
        _payload: spillway_storage::PutPayload,
        _opts: spillway_storage::PutOptions,
    ) -> spillway_storage::Result<spillway_storage::ObjectMeta> {
        Err(unavailable())
    }
    async fn presign(
        &self,
        _key: &spillway_storage::ObjectKey,
        _method: spillway_storage::PresignMethod,
        _ttl: std::time::Duration,
    ) -> spillway_storage::Result<spillway_storage::PresignedUrl> {
        Err(unavailable())
    }
    async fn head(
        &self,
        _key: &spillway_storage::ObjectKey,
    ) -> spillway_storage::Result<spillway_storage::ObjectMeta> {
        Err(unavailable())
    }
    async fn get(
        &self,
        _key: &spillway_storage::ObjectKey,
        _range: Option<spillway_storage::ByteRange>,
    ) -> spillway_storage::Result<spillway_storage::GetResult> {
        Err(unavailable())
    }
    async fn delete(&self, _key: &spillway_storage::ObjectKey) -> spillway_storage::Result<()> {
        Err(unavailable())
    }
    fn key_from_url(
        &self,
        _url: &url::Url,
    ) -> spillway_storage::Result<spillway_storage::ObjectKey> {
        Err(unavailable())
    }
}
