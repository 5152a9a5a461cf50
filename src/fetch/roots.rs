//! Extra certificate authorities for outbound https: a private CA that signed a Spillway
//! server's certificate (its RPC routes and, on a TLS server, its local-store URLs), trusted
//! next to the platform's roots.

use std::fmt;
use std::path::Path;

use crate::error::{Error, Result};

/// The largest CA bundle file read (a bundle of a few hundred certificates is far smaller).
pub const MAX_CA_BUNDLE_BYTES: u64 = 4 * 1024 * 1024;

/// Certificate authorities trusted in addition to the platform's roots. Empty by default.
/// Public data: its `Debug` shows only how many certificates it holds.
#[derive(Clone, Default)]
pub struct CaBundle {
    certs: Vec<reqwest::Certificate>,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("certificates", &self.certs.len())
            .finish()
    }
}

impl CaBundle {
    /// Parses a PEM bundle (one or more `CERTIFICATE` blocks); a bundle without a
    /// certificate is an error.
    pub fn from_pem(pem: &[u8]) -> Result<Self> {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| Error::Config(format!("invalid PEM CA bundle: {e}")))?;
        if certs.is_empty() {
            return Err(Error::Config(
                "the PEM CA bundle holds no certificate".into(),
            ));
        }
        Ok(CaBundle { certs })
    }

    /// Reads and parses PEM CA bundles from files (each at most [`MAX_CA_BUNDLE_BYTES`]).
    pub fn from_files<P: AsRef<Path>>(paths: &[P]) -> Result<Self> {
        let mut bundle = CaBundle::default();
        for path in paths {
            let path = path.as_ref();
            let pem = read_capped(path, MAX_CA_BUNDLE_BYTES, "CA bundle")?;
            let one = CaBundle::from_pem(&pem)
                .map_err(|e| Error::Config(format!("CA bundle {}: {e}", path.display())))?;
            bundle.certs.extend(one.certs);
        }
        Ok(bundle)
    }

    /// Whether it holds no certificate.
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// How many certificates it holds.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// This bundle and `other` together.
    pub fn merged(&self, other: &CaBundle) -> CaBundle {
        let mut certs = self.certs.clone();
        certs.extend(other.certs.iter().cloned());
        CaBundle { certs }
    }

    /// Adds the certificates to a client under construction, next to the platform's roots.
    pub(crate) fn apply(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        if self.certs.is_empty() {
            builder
        } else {
            builder.tls_certs_merge(self.certs.iter().cloned())
        }
    }
}

/// Reads a small file whole, refusing one larger than `cap` (`what` names it in errors).
pub(crate) fn read_capped(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| Error::Config(format!("cannot read {what} {}: {e}", path.display())))?;
    let mut buf = Vec::new();
    file.take(cap.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| Error::Config(format!("cannot read {what} {}: {e}", path.display())))?;
    if buf.len() as u64 > cap {
        return Err(Error::TooLarge {
            what: format!("{what} {}", path.display()),
            limit_name: "max_pem_file_bytes",
            limit: cap,
        });
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn bundles_parse_merge_and_refuse_garbage() {
        let two = format!("{}{}", ca_pem(), ca_pem());
        let b = CaBundle::from_pem(two.as_bytes()).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(format!("{b:?}"), "CaBundle { certificates: 2 }");
        let one = CaBundle::from_pem(ca_pem().as_bytes()).unwrap();
        assert_eq!(b.merged(&one).len(), 3);
        assert!(CaBundle::default().is_empty());
        assert!(CaBundle::from_pem(b"not a pem").is_err());
        assert!(CaBundle::from_pem(b"").is_err());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, two).unwrap();
        assert_eq!(CaBundle::from_files(&[&path, &path]).unwrap().len(), 4);
        let missing = CaBundle::from_files(&[dir.path().join("none.pem")]).unwrap_err();
        assert!(missing.to_string().contains("none.pem"), "{missing}");
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; (MAX_CA_BUNDLE_BYTES + 1) as usize]).unwrap();
        assert!(matches!(
            CaBundle::from_files(&[&big]),
            Err(Error::TooLarge { .. })
        ));
    }
}
