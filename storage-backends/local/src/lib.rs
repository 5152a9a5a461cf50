//! Spillway's embedded object store: objects in a local directory, served by the Spillway HTTP
//! server itself through HMAC-SHA256 signed, expiring URLs.
//!
//! It is the default store, so that `spillway serve` works without a cloud account. The server
//! nests [`LocalStore::router`] at the path of [`LocalStoreConfig::public_base`], and clients
//! download (and, with PUT URLs, upload) through it exactly as they would through S3.
//!
//! A URL looks like
//! `{public_base}{key}?X-Spillway-Method=GET&X-Spillway-Expires=<unix seconds>&X-Spillway-Signature=<hex>`,
//! where the signature is an HMAC-SHA256 over `"spillway-local-v1\n{METHOD}\n{key}\n{expires}"`.
//! A GET URL also allows HEAD; a PUT URL allows only PUT.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use spillway_storage::{PresignMethod, PutOptions, Storage};
//! use spillway_storage_local::{LocalStore, LocalStoreConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Arc::new(LocalStore::new(LocalStoreConfig {
//!     root: dir.path().to_path_buf(),
//!     key_prefix: "results/".to_string(),
//!     public_base: "http://127.0.0.1:8080/vgi/__storage__/".parse()?,
//!     secret: vec![42; 32],
//!     previous_secrets: Vec::new(),
//!     max_object_bytes: 1 << 20,
//! })?);
//! let key = store.new_key();
//! store.put(&key, b"hello".to_vec().into(), PutOptions::default()).await?;
//! let url = store.presign(&key, PresignMethod::Get, Duration::from_secs(60)).await?;
//! assert_eq!(store.key_from_url(&url.url)?, key);
//! // Serve it: axum::Router::new().nest("/vgi/__storage__", store.clone().router())
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod disk;
mod server;
mod sign;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use spillway_storage::{
    redact_url, validate_key_prefix, ByteRange, GetResult, ObjectKey, ObjectMeta, PresignMethod,
    PresignedUrl, PutOptions, PutPayload, Storage, StorageError,
};
use tokio_util::io::ReaderStream;
use url::Url;

/// The shortest HMAC secret accepted, in bytes (the output size of SHA-256).
pub const MIN_SECRET_LEN: usize = 32;

/// How a [`LocalStore`] is set up.
#[derive(Clone)]
pub struct LocalStoreConfig {
    /// Directory holding objects (created if missing).
    pub root: PathBuf,
    /// Prefix of the keys [`Storage::new_key`] makes; checked with
    /// [`spillway_storage::validate_key_prefix`].
    pub key_prefix: String,
    /// Base URL objects are served under; must be `http` or `https` and end with `/`, e.g.
    /// `http://127.0.0.1:8080/vgi/__storage__/`.
    pub public_base: Url,
    /// HMAC key for URL signatures; at least [`MIN_SECRET_LEN`] bytes.
    pub secret: Vec<u8>,
    /// Keys used before `secret` (each at least [`MIN_SECRET_LEN`] bytes): URLs signed with
    /// one of them still verify, new URLs are signed with `secret`. Keep one here for as long
    /// as URLs signed with it may live, then remove it.
    pub previous_secrets: Vec<Vec<u8>>,
    /// Largest object accepted by [`Storage::put`] and by PUT through upload URLs.
    pub max_object_bytes: u64,
}

impl fmt::Debug for LocalStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStoreConfig")
            .field("root", &self.root)
            .field("key_prefix", &self.key_prefix)
            .field("public_base", &self.public_base.as_str())
            .field("secret", &"<redacted>")
            .field(
                "previous_secrets",
                &vec!["<redacted>"; self.previous_secrets.len()],
            )
            .field("max_object_bytes", &self.max_object_bytes)
            .finish()
    }
}

/// The embedded object store. Implements [`Storage`] with [`Storage::kind`] `"local"`.
pub struct LocalStore {
    disk: disk::Layout,
    key_prefix: String,
    public_base: Url,
    signer: sign::Signer,
    max_object_bytes: u64,
}

impl fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStore")
            .field("disk", &self.disk)
            .field("key_prefix", &self.key_prefix)
            .field("public_base", &self.public_base.as_str())
            .field("max_object_bytes", &self.max_object_bytes)
            .finish_non_exhaustive()
    }
}

fn config_error(message: impl Into<String>) -> StorageError {
    StorageError::Config(message.into())
}

fn check_public_base(base: &Url) -> Result<(), StorageError> {
    if !matches!(base.scheme(), "http" | "https") {
        return Err(config_error("public base url must be http or https"));
    }
    if base.host_str().is_none() {
        return Err(config_error("public base url has no host"));
    }
    if !base.path().ends_with('/') {
        return Err(config_error("public base url must end with '/'"));
    }
    if base.query().is_some() || base.fragment().is_some() {
        return Err(config_error(
            "public base url must not have a query or fragment",
        ));
    }
    if !base.username().is_empty() || base.password().is_some() {
        return Err(config_error("public base url must not carry credentials"));
    }
    Ok(())
}

impl LocalStore {
    /// Opens (creating if needed) the store at `config.root` and removes temporary files left
    /// by a crashed process (untouched for an hour). Replicas may share a root on a shared
    /// volume if they share the signing secret.
    pub fn new(config: LocalStoreConfig) -> Result<Self, StorageError> {
        if config.secret.len() < MIN_SECRET_LEN {
            return Err(config_error(format!(
                "secret must be at least {MIN_SECRET_LEN} bytes"
            )));
        }
        if config
            .previous_secrets
            .iter()
            .any(|s| s.len() < MIN_SECRET_LEN)
        {
            return Err(config_error(format!(
                "every previous secret must be at least {MIN_SECRET_LEN} bytes"
            )));
        }
        validate_key_prefix(&config.key_prefix)
            .map_err(|e| config_error(format!("invalid key prefix: {e}")))?;
        check_public_base(&config.public_base)?;
        let disk = disk::Layout::create(&config.root)?;
        Ok(LocalStore {
            disk,
            key_prefix: config.key_prefix,
            public_base: config.public_base,
            signer: sign::Signer::new(config.secret, config.previous_secrets),
            max_object_bytes: config.max_object_bytes,
        })
    }

    /// An axum [`Router`](axum::Router) serving GET, HEAD and PUT of objects at `/{*key}`
    /// relative to where it is nested. Nest it at the path of `public_base`, e.g.
    /// `.nest("/vgi/__storage__", store.router())`.
    pub fn router(self: Arc<Self>) -> axum::Router {
        server::router(self)
    }

    /// Deletes objects whose upload finished at least `age` ago; returns how many. The server
    /// may run it periodically. An object re-uploaded while the sweep runs may be deleted too.
    pub async fn sweep_older_than(&self, age: Duration) -> Result<usize, StorageError> {
        self.disk.sweep(age).await
    }

    /// Like [`Storage::presign`], but with an absolute expiry instead of a TTL. The expiry is
    /// rounded down to a whole second and the URL works strictly before it; an expiry in the
    /// past yields a URL that is already refused.
    pub fn presign_until(
        &self,
        key: &ObjectKey,
        method: PresignMethod,
        expires_at: SystemTime,
    ) -> Result<PresignedUrl, StorageError> {
        let expires = expires_at
            .duration_since(UNIX_EPOCH)
            .map_err(|_| config_error("presign expiry is before the unix epoch"))?
            .as_secs();
        let signature = self.signer.sign(method, key, expires)?;
        let mut url = self.public_base.clone();
        // Keys are restricted to [A-Za-z0-9._/-], so appending needs no escaping and cannot
        // climb out of the base path.
        url.set_path(&format!("{}{}", self.public_base.path(), key.as_str()));
        url.query_pairs_mut()
            .append_pair(sign::PARAM_METHOD, method.as_str())
            .append_pair(sign::PARAM_EXPIRES, &expires.to_string())
            .append_pair(sign::PARAM_SIGNATURE, &signature);
        Ok(PresignedUrl {
            url,
            method,
            expires_at: UNIX_EPOCH + Duration::from_secs(expires),
        })
    }
}

#[async_trait]
impl Storage for LocalStore {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn new_key(&self) -> ObjectKey {
        ObjectKey::random(&self.key_prefix)
    }

    async fn put_object(
        &self,
        key: &ObjectKey,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<ObjectMeta, StorageError> {
        self.disk
            .write(key, payload, opts, self.max_object_bytes)
            .await
    }

    async fn presign(
        &self,
        key: &ObjectKey,
        method: PresignMethod,
        ttl: Duration,
    ) -> Result<PresignedUrl, StorageError> {
        let expires_at = SystemTime::now()
            .checked_add(ttl)
            .ok_or_else(|| config_error("presign ttl is too large"))?;
        self.presign_until(key, method, expires_at)
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta, StorageError> {
        Ok(self.disk.open(key).await?.meta)
    }

    async fn get(
        &self,
        key: &ObjectKey,
        range: Option<ByteRange>,
    ) -> Result<GetResult, StorageError> {
        let object = self.disk.open(key).await?;
        let size = object.meta.size;
        let range = match range {
            None => ByteRange {
                start: 0,
                end: size,
            },
            Some(r) if r.start >= r.end || r.start >= size => {
                return Err(StorageError::RangeNotSatisfiable { size });
            }
            Some(r) => ByteRange {
                start: r.start,
                end: r.end.min(size),
            },
        };
        let meta = object.meta.clone();
        let reader = object
            .into_reader(range.start, range.end - range.start)
            .await?;
        let stream = ReaderStream::new(reader)
            .map_err(|source| StorageError::Io {
                op: "read object",
                source,
            })
            .boxed();
        Ok(GetResult {
            meta,
            range,
            stream,
        })
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.disk.delete(key).await
    }

    fn key_from_url(&self, url: &Url) -> Result<ObjectKey, StorageError> {
        let base = &self.public_base;
        let foreign = || StorageError::ForeignUrl {
            url: redact_url(url.as_str()),
        };
        if url.scheme() != base.scheme()
            || url.host_str() != base.host_str()
            || url.port_or_known_default() != base.port_or_known_default()
            // As S3 and GCS: a URL with user info is not one this store handed out.
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(foreign());
        }
        // Url has already resolved "." and ".." segments (including "%2e%2e"), so a URL that
        // climbs out of the base path no longer starts with it.
        let rest = url.path().strip_prefix(base.path()).ok_or_else(foreign)?;
        // No percent-decoding: keys never need escaping, so any '%' (an encoded '/' or '.')
        // is refused by the key alphabet rather than decoded into something new.
        let key = ObjectKey::parse(rest)?;
        let signed = sign::parse_query(url.query())?;
        match self.signer.verify(&key, &signed, sign::now_unix())? {
            PresignMethod::Get => Ok(key),
            PresignMethod::Put => Err(StorageError::UrlRefused {
                reason: "url is signed for PUT".to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn config(dir: &std::path::Path) -> LocalStoreConfig {
        LocalStoreConfig {
            root: dir.join("root"),
            key_prefix: "p/".to_string(),
            public_base: Url::parse("http://127.0.0.1:9/base/__storage__/").unwrap(),
            secret: vec![1; 32],
            previous_secrets: Vec::new(),
            max_object_bytes: 100,
        }
    }

    fn config_reason(err: StorageError) -> String {
        match err {
            StorageError::Config(m) => m,
            other => panic!("expected Config, got {other:?}"),
        }
    }

    #[test]
    fn configuration_is_validated() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.secret = vec![1; 31];
        let msg = config_reason(LocalStore::new(c).unwrap_err());
        assert!(msg.contains("at least 32 bytes"), "{msg}");
        let mut c = config(dir.path());
        c.previous_secrets = vec![vec![2; 32], vec![3; 31]];
        let msg = config_reason(LocalStore::new(c).unwrap_err());
        assert!(
            msg.contains("previous secret must be at least 32 bytes"),
            "{msg}"
        );

        let mut c = config(dir.path());
        c.key_prefix = "../".into();
        assert!(config_reason(LocalStore::new(c).unwrap_err()).contains("key prefix"));

        for base in [
            "http://h/no-slash",
            "ftp://h/x/",
            "http://h/x/?a=1",
            "http://u:p@h/x/",
        ] {
            let mut c = config(dir.path());
            c.public_base = Url::parse(base).unwrap();
            assert!(LocalStore::new(c).is_err(), "{base}");
        }
        // Nothing was created for refused configurations.
        assert!(!dir.path().join("root").exists());
        let store = LocalStore::new(config(dir.path())).unwrap();
        assert_eq!(store.kind(), "local");
        assert!(store.new_key().as_str().starts_with("p/"));
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.secret = b"super-secret-value-of-32-bytes!!".to_vec();
        c.previous_secrets = vec![b"older-secret-value-of-32-bytes!!".to_vec()];
        for shown in [format!("{c:?}"), format!("{c:#?}")] {
            assert!(!shown.contains("super-secret"), "{shown}");
            assert!(!shown.contains("older-secret"), "{shown}");
            // Nor as the derived Debug of the bytes would show them.
            assert!(!shown.contains("111, 108, 100"), "{shown}");
            assert!(shown.contains("previous_secrets"), "{shown}");
        }
        let store = LocalStore::new(c).unwrap();
        for shown in [format!("{store:?}"), format!("{store:#?}")] {
            assert!(!shown.contains("super-secret"), "{shown}");
            assert!(!shown.contains("older-secret"), "{shown}");
        }
    }

    #[tokio::test]
    async fn presigned_urls_have_the_documented_shape() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(config(dir.path())).unwrap();
        let key = ObjectKey::parse("p/abc").unwrap();
        let url = store
            .presign_until(
                &key,
                PresignMethod::Get,
                UNIX_EPOCH + Duration::from_millis(4_000_000_999),
            )
            .unwrap();
        assert_eq!(url.expires_at, UNIX_EPOCH + Duration::from_secs(4_000_000));
        let s = url.url.as_str();
        let expected_prefix = "http://127.0.0.1:9/base/__storage__/p/abc?X-Spillway-Method=GET&X-Spillway-Expires=4000000&X-Spillway-Signature=";
        assert!(s.starts_with(expected_prefix), "{s}");
        let sig = &s[expected_prefix.len()..];
        assert_eq!(sig.len(), 64);
        assert!(!format!("{url:?}").contains(sig));

        let ttl_url = store
            .presign(&key, PresignMethod::Put, Duration::from_secs(1))
            .await
            .unwrap();
        let now = SystemTime::now();
        assert!(ttl_url.expires_at <= now + Duration::from_secs(1));
        assert!(ttl_url.expires_at + Duration::from_secs(1) > now);
        assert!(store
            .presign(&key, PresignMethod::Get, Duration::MAX)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn get_honours_ranges_and_put_checks_options() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(config(dir.path())).unwrap();
        let key = store.new_key();
        store
            .put(
                &key,
                Bytes::from_static(b"0123456789").into(),
                PutOptions::default(),
            )
            .await
            .unwrap();
        let read = |range| {
            let store = &store;
            let key = &key;
            async move {
                let r = store.get(key, range).await?;
                let range = r.range;
                let bytes: Vec<Bytes> = r.stream.try_collect().await?;
                Ok::<_, StorageError>((range, bytes.concat()))
            }
        };
        let (range, bytes) = read(None).await.unwrap();
        assert_eq!(range, ByteRange { start: 0, end: 10 });
        assert_eq!(bytes, b"0123456789");
        let (range, bytes) = read(Some(ByteRange { start: 3, end: 50 })).await.unwrap();
        assert_eq!(range, ByteRange { start: 3, end: 10 });
        assert_eq!(bytes, b"3456789");
        for bad in [
            ByteRange { start: 10, end: 11 },
            ByteRange { start: 4, end: 4 },
            ByteRange { start: 5, end: 2 },
        ] {
            assert!(matches!(
                read(Some(bad)).await,
                Err(StorageError::RangeNotSatisfiable { size: 10 })
            ));
        }

        let bad = PutOptions {
            content_type: Some("text/plain\r\nx-injected: 1".into()),
            content_encoding: None,
        };
        assert!(store
            .put(&key, Bytes::from_static(b"x").into(), bad)
            .await
            .is_err());
        // The refused put did not touch the stored object.
        assert_eq!(store.head(&key).await.unwrap().size, 10);
        store.delete(&key).await.unwrap();
        store.delete(&key).await.unwrap();
        assert!(matches!(
            store.head(&key).await,
            Err(StorageError::NotFound { .. })
        ));
    }
}
