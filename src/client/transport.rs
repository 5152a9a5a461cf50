//! How the client's RPC requests reach the server: its TLS client certificate (mTLS) and the
//! forward proxy. The extra CA roots are a [`CaBundle`](crate::fetch::CaBundle), shared with
//! the fetch engine.

use std::fmt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::fetch::read_capped;

/// The largest certificate or key file read.
const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;

/// A TLS client certificate with its private key, presented to servers that ask for one
/// (`SPILLWAY_TLS_CLIENT_CA` on a Spillway server). Its `Debug` prints `<redacted>`.
#[derive(Clone)]
pub struct ClientIdentity(reqwest::Identity);

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientIdentity(<redacted>)")
    }
}

impl ClientIdentity {
    /// From PEM: the certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or
    /// SEC1). The error never quotes either.
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<Self> {
        let mut both = Vec::with_capacity(cert_chain.len() + key.len() + 1);
        both.extend_from_slice(cert_chain);
        both.push(b'\n');
        both.extend_from_slice(key);
        let has_cert = pem_has(cert_chain, "CERTIFICATE");
        let has_key = pem_has(key, "PRIVATE KEY");
        if !has_cert || !has_key {
            return Err(Error::Config(format!(
                "client identity needs a PEM certificate and a PEM private key ({} missing)",
                if has_cert {
                    "the key is"
                } else {
                    "the certificate is"
                }
            )));
        }
        reqwest::Identity::from_pem(&both)
            .map(ClientIdentity)
            .map_err(|_| Error::Config("invalid client certificate or private key PEM".into()))
    }

    /// From a certificate file and a key file.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self> {
        let c = read_capped(cert, MAX_PEM_FILE_BYTES, "client certificate")?;
        let k = read_capped(key, MAX_PEM_FILE_BYTES, "client key")?;
        ClientIdentity::from_pem(&c, &k).map_err(|e| {
            Error::Config(format!(
                "client certificate {} / key {}: {e}",
                cert.display(),
                key.display()
            ))
        })
    }

    pub(crate) fn reqwest(&self) -> reqwest::Identity {
        self.0.clone()
    }
}

/// Whether a PEM text holds a block whose label ends with `label` (`BEGIN ... PRIVATE KEY`).
fn pem_has(pem: &[u8], label: &str) -> bool {
    let text = String::from_utf8_lossy(pem);
    text.lines().any(|l| {
        l.trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|name| name.ends_with(label))
    })
}

/// Which forward proxy RPC requests use. Pointer downloads and uploads to vended URLs never
/// use one: the URL policy judges the addresses their hosts resolve to, which a proxy would
/// resolve out of its sight.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum ClientProxy {
    /// From the environment when the client is created, as curl reads it: `HTTPS_PROXY` for
    /// https servers, `HTTP_PROXY` for http ones, `ALL_PROXY` for both (upper or lower case;
    /// `HTTP_PROXY` is ignored when `REQUEST_METHOD` is set, as in a CGI script), minus the
    /// hosts, domains and CIDR ranges of `NO_PROXY`. The default.
    #[default]
    Environment,
    /// Straight to the server, whatever the environment says.
    Direct,
    /// Every RPC request through this proxy (`http://[user:password@]host:port`), `NO_PROXY`
    /// ignored.
    Url(String),
}

impl fmt::Debug for ClientProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientProxy::Environment => f.write_str("Environment"),
            ClientProxy::Direct => f.write_str("Direct"),
            // The proxy's credentials stay out of Debug.
            ClientProxy::Url(u) => f
                .debug_tuple("Url")
                .field(&spillway_storage::redact_url(u))
                .finish(),
        }
    }
}

impl ClientProxy {
    /// Applies the choice to a client under construction.
    pub(super) fn apply(&self, builder: reqwest::ClientBuilder) -> Result<reqwest::ClientBuilder> {
        Ok(match self {
            // reqwest reads the variables at `build()` (hyper-util's matcher, curl's rules);
            // without `system-proxy` it never consults platform settings.
            ClientProxy::Environment => builder,
            ClientProxy::Direct => builder.no_proxy(),
            ClientProxy::Url(u) => {
                builder.proxy(reqwest::Proxy::all(u.as_str()).map_err(|_| {
                    Error::Config(format!(
                        "invalid proxy url {}",
                        spillway_storage::redact_url(u)
                    ))
                })?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_parse_and_stay_secret() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let key_pem = key.serialize_pem();
        let id = ClientIdentity::from_pem(cert.pem().as_bytes(), key_pem.as_bytes()).unwrap();
        let shown = format!("{id:?}{id:#?}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
        for (c, k) in [
            (cert.pem(), String::new()),
            (String::new(), key_pem.clone()),
            (key_pem.clone(), cert.pem()),
        ] {
            let e = ClientIdentity::from_pem(c.as_bytes(), k.as_bytes()).unwrap_err();
            assert!(!e.to_string().contains("BEGIN"), "{e}");
        }
        let e = ClientIdentity::from_files(Path::new("/nonexistent/c.pem"), Path::new("/k"))
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/c.pem"), "{e}");
    }

    #[test]
    fn proxy_urls_are_redacted_and_checked() {
        let p = ClientProxy::Url("http://user:hunter2@127.0.0.1:3128".into());
        assert!(!format!("{p:?}").contains("hunter2"));
        assert!(p.apply(reqwest::Client::builder()).is_ok());
        let bad = ClientProxy::Url("not a url with secret".into());
        let e = bad.apply(reqwest::Client::builder()).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
