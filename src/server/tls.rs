//! TLS for the server's own listener (`SPILLWAY_TLS_CERT`, `SPILLWAY_TLS_KEY`,
//! `SPILLWAY_TLS_CLIENT_CA`), for deployments without an ingress that terminates TLS.
//!
//! [`ServerTls`] holds the current rustls configuration and reloads it when the certificate,
//! key or client CA files change (their contents are checked every
//! [`TlsConfig::reload_interval`]); a file that
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
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::error::{Error, Result};

/// The largest certificate, key or CA file read: a chain or a bundle is a few KiB, and the
/// file is re-read on every change.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;
/// How long a client gets to finish the TLS handshake, by default: a slow or silent client
/// must not hold a connection (and its task) open.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the files are checked for a change, by default (each is read and hashed: a few
/// KiB).
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
    /// What the files held when last loaded (or last tried): a reload is tried when it
    /// changes.
    digests: Vec<Option<[u8; 32]>>,
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
        let files = Files::read(&config).await;
        let rustls = build(&config, &files)?;
        Ok(ServerTls {
            inner: Arc::new(Inner {
                config,
                current: RwLock::new(Current {
                    rustls,
                    digests: files.digests(),
                }),
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
        let files = Files::read(config).await;
        let digests = files.digests();
        {
            let current = self.inner.current.read().unwrap_or_else(|e| e.into_inner());
            if current.digests == digests {
                return false;
            }
        }
        let loaded = build(config, &files);
        let mut current = self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner());
        current.digests = digests;
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

/// The contents of the certificate, key and client CA files, read in one pass (parsed from
/// these very bytes, so what was compared is what gets loaded).
struct Files {
    cert: ReadResult,
    key: ReadResult,
    client_ca: Option<ReadResult>,
}

/// A file's bytes, or why it could not be read.
type ReadResult = std::result::Result<Vec<u8>, String>;

impl Files {
    async fn read(config: &TlsConfig) -> Files {
        let client_ca = match &config.client_ca {
            Some(path) => Some(read_capped(path, "tls client ca").await),
            None => None,
        };
        Files {
            cert: read_capped(&config.cert, "tls certificate").await,
            key: read_capped(&config.key, "tls key").await,
            client_ca,
        }
    }

    /// A digest of each file's contents (`None`: unreadable). Contents, not modification
    /// times: a rewrite within the file system's clock tick, or a `..data` symlink swap in a
    /// Kubernetes secret volume, is still seen; the files are a few KiB.
    fn digests(&self) -> Vec<Option<[u8; 32]>> {
        let digest = |r: &ReadResult| r.as_ref().ok().map(|b| Sha256::digest(b).into());
        let mut out = vec![digest(&self.cert), digest(&self.key)];
        if let Some(ca) = &self.client_ca {
            out.push(digest(ca));
        }
        out
    }
}

/// A file that could not be read: the message of its [`Error::Config`].
fn unreadable(message: &str) -> Error {
    Error::Config(message.to_string())
}

/// The crypto provider of every TLS configuration: named explicitly so the process-wide
/// default (which another crate may set, or leave ambiguous) does not matter.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn build(config: &TlsConfig, files: &Files) -> Result<Arc<rustls::ServerConfig>> {
    let cert_pem = files.cert.as_ref().map_err(|m| unreadable(m))?;
    let key_pem = files.key.as_ref().map_err(|m| unreadable(m))?;
    let certs = parse_certs(cert_pem, &config.cert, "tls certificate")?;
    // The parser's own error is not shown: it may quote a line of the key file.
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| {
        Error::Config(format!(
            "tls key {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it",
            config.key.display()
        ))
    })?;
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("tls: {e}")))?;
    let builder = match (&config.client_ca, &files.client_ca) {
        (Some(path), Some(pem)) => {
            let pem = pem.as_ref().map_err(|m| unreadable(m))?;
            let mut roots = RootCertStore::empty();
            for (n, ca) in parse_certs(pem, path, "tls client ca")?
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
        _ => builder.with_no_client_auth(),
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

fn parse_certs(pem: &[u8], path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
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

async fn read_capped(path: &Path, what: &str) -> ReadResult {
    let failed = |e: std::io::Error| format!("{what} {}: {e}", path.display());
    let file = tokio::fs::File::open(path).await.map_err(failed)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(failed)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "{what} {}: larger than {MAX_PEM_BYTES} bytes",
            path.display()
        ));
    }
    Ok(bytes)
}

/// Certificates for the unit tests of this module and of the serve loop (rcgen).
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};

    /// A CA that issues server and client certificates.
    pub(crate) struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pub(crate) pem: String,
    }

    /// A certificate and key, PEM, and the certificate's DER.
    pub(crate) struct Issued {
        pub(crate) cert: String,
        pub(crate) key: String,
        pub(crate) der: Vec<u8>,
    }

    impl Ca {
        pub(crate) fn new() -> Ca {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, "unit test ca");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let pem = params.self_signed(&key).unwrap().pem();
            Ca {
                issuer: Issuer::new(params, key),
                pem,
            }
        }

        fn issue(&self, sans: &[&str], cn: &str, eku: ExtendedKeyUsagePurpose) -> Issued {
            let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![eku];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            Issued {
                cert: cert.pem(),
                key: key.serialize_pem(),
                der: cert.der().to_vec(),
            }
        }

        /// A server certificate for 127.0.0.1 and localhost.
        pub(crate) fn server(&self, cn: &str) -> Issued {
            self.issue(
                &["127.0.0.1", "localhost"],
                cn,
                ExtendedKeyUsagePurpose::ServerAuth,
            )
        }

        /// A client certificate with subject CN `cn`.
        pub(crate) fn client(&self, cn: &str) -> Issued {
            self.issue(&[], cn, ExtendedKeyUsagePurpose::ClientAuth)
        }

        /// A rustls client trusting this CA.
        pub(crate) fn client_config(&self) -> Arc<rustls::ClientConfig> {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(self.pem.as_bytes()).unwrap())
                .unwrap();
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            Arc::new(
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        }

        /// A reqwest client trusting this CA, presenting `identity`.
        pub(crate) fn reqwest(&self, identity: Option<&Issued>) -> reqwest::Client {
            let root = reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap();
            let mut b = reqwest::Client::builder().tls_certs_only([root]);
            if let Some(id) = identity {
                let pem = format!("{}{}", id.cert, id.key);
                b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
            }
            b.build().unwrap()
        }

        /// The certificate `server` presents in a handshake (in memory) with a client
        /// trusting this CA.
        pub(crate) async fn presented(&self, server: Arc<rustls::ServerConfig>) -> Vec<u8> {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let accept = tokio_rustls::TlsAcceptor::from(server).accept(a);
            let connect = tokio_rustls::TlsConnector::from(self.client_config())
                .connect(ServerName::try_from("localhost").unwrap(), b);
            let (accepted, connected) = tokio::join!(accept, connect);
            accepted.unwrap();
            let tls = connected.unwrap();
            tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Ca;
    use super::*;

    fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let path = dir.join(name);
        // Beside, then renamed over: the reader never sees half a file.
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    async fn load_err(config: TlsConfig) -> String {
        match ServerTls::load(config).await {
            Err(Error::Config(msg)) => msg,
            other => panic!("loaded: {other:?}"),
        }
    }

    #[tokio::test]
    async fn bad_files_are_config_errors_that_show_no_key_material() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let a = ca.server("a");
        let b = ca.server("b");
        let cert = write(dir.path(), "cert.pem", &a.cert);
        let key = write(dir.path(), "key.pem", &a.key);
        assert!(ServerTls::load(TlsConfig::new(&cert, &key)).await.is_ok());

        let missing = dir.path().join("absent.pem");
        let msg = load_err(TlsConfig::new(&missing, &key)).await;
        assert!(msg.contains("absent.pem"), "{msg}");

        let other_key = write(dir.path(), "other.key", &b.key);
        let msg = load_err(TlsConfig::new(&cert, &other_key)).await;
        assert!(
            msg.contains("cert.pem") && msg.contains("other.key"),
            "{msg}"
        );

        let secret = "S3CRETKEYMATERIALdonotlog";
        let bogus = write(
            dir.path(),
            "bogus.key",
            &format!("-----BEGIN PRIVATE KEY-----\n{secret}!!\n-----END PRIVATE KEY-----\n"),
        );
        let msg = load_err(TlsConfig::new(&cert, &bogus)).await;
        assert!(msg.contains("no PEM private key"), "{msg}");
        assert!(!msg.contains("S3CRET"), "{msg}");

        let no_cert = write(dir.path(), "empty.pem", "nothing here\n");
        let msg = load_err(TlsConfig::new(&no_cert, &key)).await;
        assert!(msg.contains("no CERTIFICATE"), "{msg}");
        let msg = load_err(TlsConfig::new(&cert, &key).with_client_ca(&no_cert)).await;
        assert!(msg.contains("tls client ca"), "{msg}");

        let huge = write(
            dir.path(),
            "huge.pem",
            &"x".repeat(MAX_PEM_BYTES as usize + 1),
        );
        let msg = load_err(TlsConfig::new(&huge, &key)).await;
        assert!(msg.contains("larger than"), "{msg}");
    }

    #[tokio::test]
    async fn a_change_is_reloaded_and_a_broken_one_keeps_the_last_good_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let (a, b, c) = (ca.server("a"), ca.server("b"), ca.server("c"));
        let cert = write(dir.path(), "cert.pem", &a.cert);
        let key = write(dir.path(), "key.pem", &a.key);
        let tls = ServerTls::load(TlsConfig::new(&cert, &key)).await.unwrap();
        assert_eq!(ca.presented(tls.current()).await, a.der);
        assert!(!tls.reload_if_changed().await, "nothing changed");

        write(dir.path(), "cert.pem", &b.cert);
        write(dir.path(), "key.pem", &b.key);
        assert!(tls.reload_if_changed().await);
        assert_eq!(ca.presented(tls.current()).await, b.der);

        // Half a rotation (a certificate whose key has not arrived yet), then garbage: the
        // last good certificate stays.
        write(dir.path(), "cert.pem", &c.cert);
        assert!(!tls.reload_if_changed().await);
        assert_eq!(ca.presented(tls.current()).await, b.der);
        write(dir.path(), "key.pem", "garbage");
        assert!(!tls.reload_if_changed().await);
        assert_eq!(ca.presented(tls.current()).await, b.der);
        std::fs::remove_file(&key).unwrap();
        assert!(!tls.reload_if_changed().await);
        assert_eq!(ca.presented(tls.current()).await, b.der);

        write(dir.path(), "key.pem", &c.key);
        assert!(tls.reload_if_changed().await);
        assert_eq!(ca.presented(tls.current()).await, c.der);
    }

    #[tokio::test]
    async fn the_client_ca_is_reloaded_with_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, next_ca) = (Ca::new(), Ca::new());
        let server = ca.server("s");
        let cert = write(dir.path(), "cert.pem", &server.cert);
        let key = write(dir.path(), "key.pem", &server.key);
        let bundle = write(dir.path(), "ca.pem", &ca.pem);
        let tls = ServerTls::load(TlsConfig::new(&cert, &key).with_client_ca(&bundle))
            .await
            .unwrap();
        assert!(tls.requests_client_certificates());
        // A bundle of both CAs (a CA rotation) is a change.
        write(dir.path(), "ca.pem", &format!("{}{}", ca.pem, next_ca.pem));
        assert!(tls.reload_if_changed().await);
    }

    #[test]
    fn a_peer_certificate_shows_sizes_not_bytes() {
        let ca = Ca::new();
        let client = ca.client("someone");
        let peer = PeerCertificate::new(vec![client.der.clone().into()]).unwrap();
        assert_eq!(peer.end_entity().as_ref(), client.der.as_slice());
        assert_eq!(peer.chain().len(), 1);
        let shown = format!("{peer:?}");
        assert!(shown.contains("chain_len: 1"), "{shown}");
        assert!(shown.len() < 100, "{shown}");
    }
}
