//! The client's credential: a bearer token, fixed or from a [`TokenProvider`], sent as
//! `Authorization: Bearer ...` on RPC requests only (never to storage URLs).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::sync::Mutex;

use crate::error::{Error, Result};

/// The largest token file read. A JWT (a Kubernetes service-account token included) is a few
/// KiB; anything much larger is not a token.
pub const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// A bearer token. Its `Debug` and `Display` print `<redacted>`; only
/// [`BearerToken::expose`] gives the value, for the `Authorization` header.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(Arc<str>);

impl BearerToken {
    /// A token, checked: surrounding whitespace is dropped, and what remains must be
    /// non-empty visible ASCII (RFC 6750's `b64token` is a subset). The error never quotes
    /// the value.
    pub fn new(token: impl AsRef<str>) -> Result<Self> {
        let t = token.as_ref().trim();
        if t.is_empty() {
            return Err(Error::Credential("the bearer token is empty".into()));
        }
        if let Some(pos) = t.bytes().position(|b| !b.is_ascii_graphic()) {
            return Err(Error::Credential(format!(
                "the bearer token has a character that is not visible ASCII at byte {pos}"
            )));
        }
        Ok(BearerToken(Arc::from(t)))
    }

    /// The token itself. Never log or format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl fmt::Display for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for BearerToken {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        BearerToken::new(s)
    }
}

/// Where a [`Client`](super::Client) gets the bearer token of each RPC request. Called once per
/// request (capability probe, unary call, stream `/init` and `/exchange`, upload-URL init), so
/// an implementation that fetches tokens remotely caches them itself.
///
/// ```
/// use async_trait::async_trait;
/// use spillway::client::{BearerToken, TokenProvider};
///
/// /// A token from somewhere of the caller's own (a vault, an OAuth token exchange...).
/// struct FromVault;
///
/// #[async_trait]
/// impl TokenProvider for FromVault {
///     async fn token(&self) -> spillway::Result<BearerToken> {
///         BearerToken::new("token-from-the-vault")
///     }
/// }
/// ```
#[async_trait]
pub trait TokenProvider: Send + Sync {
    /// The token for the next request. An error fails that request with it (it should be
    /// [`Error::Credential`] and must never hold the token).
    async fn token(&self) -> Result<BearerToken>;
}

#[async_trait]
impl TokenProvider for BearerToken {
    async fn token(&self) -> Result<BearerToken> {
        Ok(self.clone())
    }
}

/// A token read from a file and re-read whenever the file changes (its size, modification
/// time or inode): a projected Kubernetes service-account token, which the kubelet rotates by
/// swapping the file. Checked on every request (one `stat`); read only after a change.
/// Surrounding whitespace (a trailing newline) is dropped.
pub struct FileToken {
    path: PathBuf,
    cached: Mutex<Option<(FileStamp, BearerToken)>>,
}

impl fmt::Debug for FileToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileToken")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What tells a changed file from the one read before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        }
    }
}

impl FileToken {
    /// A provider reading `path` (first read on the first request).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileToken {
            path: path.into(),
            cached: Mutex::new(None),
        }
    }

    /// The file it reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn unavailable(&self, why: impl fmt::Display) -> Error {
        Error::Credential(format!("token file {}: {why}", self.path.display()))
    }
}

#[async_trait]
impl TokenProvider for FileToken {
    async fn token(&self) -> Result<BearerToken> {
        let meta = tokio::fs::metadata(&self.path)
            .await
            .map_err(|e| self.unavailable(e))?;
        let stamp = FileStamp::of(&meta);
        let mut cached = self.cached.lock().await;
        if let Some((seen, token)) = cached.as_ref() {
            if *seen == stamp {
                return Ok(token.clone());
            }
        }
        if stamp.len > MAX_TOKEN_FILE_BYTES {
            return Err(self.unavailable(format!(
                "{} bytes exceeds the token file limit of {MAX_TOKEN_FILE_BYTES} bytes",
                stamp.len
            )));
        }
        let path = self.path.clone();
        let bytes = tokio::task::spawn_blocking(move || {
            crate::fetch::read_capped(&path, MAX_TOKEN_FILE_BYTES, "token file")
        })
        .await
        .map_err(|e| Error::Internal(format!("token file task failed: {e}")))?
        .map_err(|e| match e {
            Error::Config(m) => Error::Credential(m),
            other => other,
        })?;
        let text = std::str::from_utf8(&bytes).map_err(|_| self.unavailable("not utf-8"))?;
        let token = BearerToken::new(text).map_err(|e| self.unavailable(e))?;
        tracing::debug!(path = %self.path.display(), "read the bearer token file");
        *cached = Some((stamp, token.clone()));
        Ok(token)
    }
}

/// The `Authorization` value of `token`, marked sensitive (HTTP/2 never indexes it, and a
/// `Debug` of the header map prints `Sensitive`).
pub(super) fn authorization_value(token: &BearerToken) -> Result<http::HeaderValue> {
    let mut v = http::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| Error::Credential("the bearer token is not a valid header value".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "tok-0123456789-abcdef";

    #[test]
    fn tokens_are_checked_and_never_printed() {
        let t = BearerToken::new(format!("  {SECRET}\n")).unwrap();
        assert_eq!(t.expose(), SECRET);
        for shown in [format!("{t:?}"), format!("{t:#?}"), t.to_string()] {
            assert!(!shown.contains(SECRET), "{shown}");
        }
        for bad in ["", "  \n", "two words", "tab\there", "é-accent"] {
            let e = BearerToken::new(bad).unwrap_err();
            assert!(matches!(e, Error::Credential(_)), "{bad:?}: {e:?}");
            if !bad.trim().is_empty() {
                assert!(!e.to_string().contains(bad.trim()), "{e}");
            }
        }
        let v = authorization_value(&t).unwrap();
        assert!(v.is_sensitive());
        assert_eq!(v.to_str().unwrap(), format!("Bearer {SECRET}"));
        assert!(!format!("{v:?}").contains(SECRET));
    }

    #[tokio::test]
    async fn file_tokens_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let provider = FileToken::new(&path);
        let e = provider.token().await.unwrap_err();
        assert!(
            matches!(e, Error::Credential(ref m) if m.contains("token")),
            "{e:?}"
        );

        std::fs::write(&path, "first-token-aaaa\n").unwrap();
        assert_eq!(provider.token().await.unwrap().expose(), "first-token-aaaa");
        // Rotation as the kubelet does it: a new file renamed over the old one.
        let next = dir.path().join("token.new");
        std::fs::write(&next, "second-token-bbbbbb").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(
            provider.token().await.unwrap().expose(),
            "second-token-bbbbbb"
        );
        // Rewritten in place, with another length.
        std::fs::write(&path, "third-token").unwrap();
        assert_eq!(provider.token().await.unwrap().expose(), "third-token");

        std::fs::write(&path, "\n").unwrap();
        let e = provider.token().await.unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        std::fs::write(&path, format!("{SECRET} and more")).unwrap();
        let e = provider.token().await.unwrap_err();
        assert!(!e.to_string().contains(SECRET), "{e}");
        std::fs::write(&path, vec![b'a'; MAX_TOKEN_FILE_BYTES as usize + 1]).unwrap();
        let e = provider.token().await.unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        assert!(!format!("{provider:?}").contains(SECRET));
    }
}
