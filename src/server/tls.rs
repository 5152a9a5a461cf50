//! TLS for the server's own listener (`SPILLWAY_TLS_CERT`, `SPILLWAY_TLS_KEY`,
//! `SPILLWAY_TLS_CLIENT_CA`), for deployments without an ingress that terminates TLS.
//!
//! [`ServerTls`] holds the current rustls configuration and reloads it when the certificate,
//! key or client CA files change (checked every [`TlsConfig::reload_interval`]); a file that
//! no longer loads keeps the configuration loaded before, logged as an error, so a bad
//! rotation never takes the server down. [`listener::serve`](super::listener::serve) uses it
//! for every new connection.
//!
//! With a client CA, client certificates are *requested*, not required, at the TLS level: a
//! certificate that is presented must chain to the CA (or the handshake fails), but a client
//! without one still connects, so `OPTIONS`, `/health` and the storage routes (whose signature
//! is the credential) stay reachable. The RPC routes then need a credential from the
//! authentication gate: [`ClientCertificates`](super::auth::mtls::ClientCertificates) turns the
//! verified [`PeerCertificate`] the serve loop attaches to each request into the caller's
//! identity, and without one (and no other scheme vouching) the call gets the standard 401.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;

use crate::error::{Error, Result};

/// The largest certificate, key or CA file read: a chain or a bundle is a few KiB, and the
/// file is re-read on every change.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;
/// How long a client gets to finish the TLS handshake, by default: a slow or silent client
/// must not hold a connection (and its task) open.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the files are checked for a change, by default (one `stat` per file).
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Protocols offered through ALPN, preferred first: the serve loop speaks both.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Where the server's TLS material is, and how it is served. Holds paths, never key bytes.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM bundle of the CAs client certificates must chain to; `None`: no client
    /// certificates are requested.
    pub client_ca: Option<PathBuf>,
    /// Longest a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// How often the files are checked for a change.
    pub reload_interval: Duration,
}

impl TlsConfig {
    /// Serve `cert` with `key`, without client certificates, with the default timeouts.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        TlsConfig {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
        }
    }

    /// Also request client certificates, verified against the CAs in `client_ca`.
    pub fn with_client_ca(mut self, client_ca: impl Into<PathBuf>) -> Self {
        self.client_ca = Some(client_ca.into());
        self
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }
}

/// The verified certificate chain a TLS client presented, attached by the serve loop to
/// every request of that connection (a request extension). Only a certificate that chained to
/// the configured client CA gets here: the handshake fails otherwise.
#[derive(Clone)]
pub struct PeerCertificate {
    chain: Arc<[CertificateDer<'static>]>,
}

impl PeerCertificate {
    /// The chain as presented (end-entity first); `None` when it is empty. Public so a
    /// service that terminates TLS itself can attach the certificate it verified.
    pub fn new(chain: Vec<CertificateDer<'static>>) -> Option<Self> {
        if chain.is_empty() {
            None
        } else {
            Some(PeerCertificate {
                chain: chain.into(),
            })
        }
    }

    /// The client's own certificate (DER).
    pub fn end_entity(&self) -> &CertificateDer<'static> {
        // `new` refuses an empty chain.
        &self.chain[0]
    }

    /// The whole chain, end-entity first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }
}

// By hand: the DER bytes are public but long; a log line needs only their size.
impl fmt::Debug for PeerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerCertificate")
            .field("chain_len", &self.chain.len())
            .field("end_entity_bytes", &self.end_entity().len())
            .finish()
    }
}

/// The server's TLS setup: the current rustls configuration, reloaded when its files change.
/// Cheap to clone (shared).
#[derive(Clone)]
pub struct ServerTls {
    inner: Arc<Inner>,
}

struct Inner {
    config: TlsConfig,
    current: RwLock<Current>,
}

struct Current {
    rustls: Arc<rustls::ServerConfig>,
    /// The files' stamps when last loaded (or last tried): a reload is tried when they change.
    stamps: Vec<Option<FileStamp>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the certificate, key and client CA; any that is missing, unreadable, malformed
    /// or inconsistent (a key that does not match the certificate) is an [`Error::Config`].
    pub async fn load(config: TlsConfig) -> Result<Self> {
        let stamps = stamps_of(&config).await;
        let rustls = build(&config).await?;
        Ok(ServerTls {
            inner: Arc::new(Inner {
                config,
                current: RwLock::new(Current { rustls, stamps }),
            }),
        })
    }

    /// The settings this was loaded from.
    pub fn config(&self) -> &TlsConfig {
        &self.inner.config
    }

    /// Whether client certificates are requested.
    pub fn requests_client_certificates(&self) -> bool {
        self.inner.config.client_ca.is_some()
    }

    /// The configuration new handshakes use.
    pub(crate) fn current(&self) -> Arc<rustls::ServerConfig> {
        // A poisoned lock still holds a complete configuration (it is replaced whole).
        let current = self.inner.current.read().unwrap_or_else(|e| e.into_inner());
        current.rustls.clone()
    }

    /// Reloads the files if any changed since the last look. Returns whether a new
    /// configuration is in use; a change that does not load is logged as an error, the
    /// previous configuration stays, and the next change is tried again.
    pub async fn reload_if_changed(&self) -> bool {
        let config = &self.inner.config;
        let stamps = stamps_of(config).await;
        {
            let current = self.inner.current.read().unwrap_or_else(|e| e.into_inner());
            if current.stamps == stamps {
                return false;
            }
        }
        let loaded = build(config).await;
        let mut current = self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner());
        current.stamps = stamps;
        match loaded {
            Ok(rustls) => {
                current.rustls = rustls;
                tracing::info!(
                    cert = %config.cert.display(),
                    "tls certificate reloaded; new connections use it"
                );
                true
            }
            Err(e) => {
                tracing::error!(
                    cert = %config.cert.display(),
                    error = %e,
                    "tls files changed but do not load; keeping the previous certificate"
                );
                false
            }
        }
    }

    /// Checks the files every [`TlsConfig::reload_interval`] until the returned guard is
    /// dropped.
    pub(crate) fn spawn_reloader(&self) -> AbortOnDrop {
        let tls = self.clone();
        let period = self
            .inner
            .config
            .reload_interval
            .max(Duration::from_millis(100));
        AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                tls.reload_if_changed().await;
            }
        }))
    }
}

/// Aborts a background task when dropped.
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn stamps_of(config: &TlsConfig) -> Vec<Option<FileStamp>> {
    let mut stamps = Vec::new();
    for path in config.paths() {
        // Follows symlinks: a Kubernetes secret volume swaps its `..data` link on update.
        let stamp = tokio::fs::metadata(path).await.ok().map(|m| FileStamp {
            modified: m.modified().ok(),
            len: m.len(),
        });
        stamps.push(stamp);
    }
    stamps
}

/// The crypto provider of every TLS configuration: named explicitly so the process-wide
/// default (which another crate may set, or leave ambiguous) does not matter.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

async fn build(config: &TlsConfig) -> Result<Arc<rustls::ServerConfig>> {
    let certs = read_certs(&config.cert, "tls certificate").await?;
    let key_pem = read_capped(&config.key, "tls key").await?;
    // The parser's own error is not shown: it may quote a line of the key file.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        Error::Config(format!(
            "tls key {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it",
            config.key.display()
        ))
    })?;
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("tls: {e}")))?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for (n, ca) in read_certs(path, "tls client ca")
                .await?
                .into_iter()
                .enumerate()
            {
                roots.add(ca).map_err(|e| {
                    Error::Config(format!(
                        "tls client ca {}: certificate {n} is not a usable CA: {e}",
                        path.display()
                    ))
                })?;
            }
            // Optional at the TLS level (see the module docs): a presented certificate must
            // still chain to these roots, or the handshake fails.
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| Error::Config(format!("tls client ca {}: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_single_cert(certs, key).map_err(|e| {
        Error::Config(format!(
            "tls certificate {} with key {}: {e}",
            config.cert.display(),
            config.key.display()
        ))
    })?;
    server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(server))
}

async fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_capped(path, what).await?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("{what} {}: not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "{what} {}: no CERTIFICATE block in it",
            path.display()
        )));
    }
    Ok(certs)
}

async fn read_capped(path: &Path, what: &str) -> Result<Vec<u8>> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::Config(format!("{what} {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| Error::Config(format!("{what} {}: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(Error::Config(format!(
            "{what} {}: larger than {MAX_PEM_BYTES} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}
