//! Static bearer tokens from a file (`SPILLWAY_AUTH=bearer`), re-read when it changes so
//! tokens rotate without a restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::RwLock;

use super::{AuthContext, AuthFailure, AuthReason, Authenticator};
use crate::error::{Error, Result};

/// The shortest token accepted: anything shorter is guessable.
pub const MIN_TOKEN_LEN: usize = 16;
/// The longest `Authorization` value looked at (a bearer token is far shorter).
const MAX_CREDENTIAL_LEN: usize = 8192;
/// How often the file's metadata is checked for a change.
const RECHECK: Duration = Duration::from_secs(1);

/// Bearer tokens read from a file of `TOKEN PRINCIPAL` lines (blank lines and `#` comments
/// allowed). Tokens are kept only as SHA-256 digests and compared in constant time; the file
/// is re-read within a second of a change, and a file that no longer parses keeps the tokens
/// loaded before (logged as an error) instead of locking everyone out.
///
/// ```no_run
/// # async fn f() -> spillway::Result<()> {
/// use std::sync::Arc;
/// use spillway::server::auth::BearerTokens;
/// let tokens = Arc::new(BearerTokens::from_file("/etc/spillway/tokens").await?);
/// # Ok(()) }
/// ```
pub struct BearerTokens {
    path: PathBuf,
    state: RwLock<Loaded>,
}

struct Loaded {
    /// (sha256(token), principal)
    entries: Vec<([u8; 32], String)>,
    stamp: Option<FileStamp>,
    checked: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

impl BearerTokens {
    /// Loads the token file; a missing, unreadable or malformed file is an error.
    pub async fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let (entries, stamp) = load(&path).await?;
        if entries.is_empty() {
            tracing::warn!(path = %path.display(), "the bearer token file holds no token: every call is refused");
        }
        Ok(BearerTokens {
            path,
            state: RwLock::new(Loaded {
                entries,
                stamp: Some(stamp),
                checked: Instant::now(),
            }),
        })
    }

    /// How many tokens are loaded.
    pub async fn len(&self) -> usize {
        self.state.read().await.entries.len()
    }

    /// Whether no token is loaded.
    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }

    /// Re-reads the file if it changed since the last look (at most once a second).
    async fn refresh(&self) {
        {
            let state = self.state.read().await;
            if state.checked.elapsed() < RECHECK {
                return;
            }
        }
        let mut state = self.state.write().await;
        if state.checked.elapsed() < RECHECK {
            return;
        }
        state.checked = Instant::now();
        let stamp = stamp_of(&self.path).await.ok();
        if stamp.is_some() && stamp == state.stamp {
            return;
        }
        match load(&self.path).await {
            Ok((entries, stamp)) => {
                tracing::info!(path = %self.path.display(), tokens = entries.len(), "bearer token file reloaded");
                state.entries = entries;
                state.stamp = Some(stamp);
            }
            Err(e) => {
                // Keep serving the tokens loaded before; retry on the next change.
                tracing::error!(path = %self.path.display(), error = %e, "bearer token file not reloaded; keeping the previous tokens");
                state.stamp = stamp;
            }
        }
    }

    async fn principal_of(&self, token: &str) -> Option<String> {
        self.refresh().await;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let state = self.state.read().await;
        // Every entry is compared, so the time taken does not depend on which one matched.
        let mut found = None;
        for (candidate, principal) in &state.entries {
            if bool::from(candidate.ct_eq(&digest)) {
                found = Some(principal.clone());
            }
        }
        found
    }
}

/// The token of an `Authorization: Bearer <token>` header: `None` when there is no such
/// header or it names another scheme; `Some(Err)` when it is malformed.
pub(crate) fn bearer_token(headers: &http::HeaderMap) -> Option<std::result::Result<&str, ()>> {
    let value = headers.get(http::header::AUTHORIZATION)?;
    if value.len() > MAX_CREDENTIAL_LEN {
        return Some(Err(()));
    }
    let value = match value.to_str() {
        Ok(v) => v.trim(),
        Err(_) => return Some(Err(())),
    };
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    if token.is_empty() {
        return Some(Err(()));
    }
    Some(Ok(token))
}

#[async_trait]
impl Authenticator for BearerTokens {
    fn name(&self) -> &str {
        "bearer"
    }

    async fn authenticate(
        &self,
        request: &http::request::Parts,
    ) -> std::result::Result<Option<AuthContext>, AuthFailure> {
        let token = match bearer_token(&request.headers) {
            None => return Ok(None),
            Some(Err(())) => {
                return Err(AuthFailure::rejected(
                    AuthReason::InvalidCredential,
                    "malformed authorization header",
                ))
            }
            Some(Ok(t)) => t,
        };
        match self.principal_of(token).await {
            Some(principal) => Ok(Some(AuthContext::new("bearer", principal))),
            None => Err(AuthFailure::rejected(
                AuthReason::InvalidCredential,
                "bearer token not in the token file",
            )),
        }
    }

    fn challenge(&self) -> Option<String> {
        Some("Bearer".to_string())
    }
}

async fn stamp_of(path: &Path) -> std::io::Result<FileStamp> {
    let meta = tokio::fs::metadata(path).await?;
    Ok(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

async fn load(path: &Path) -> Result<(Vec<([u8; 32], String)>, FileStamp)> {
    let shown = path.display();
    let stamp = stamp_of(path)
        .await
        .map_err(|e| Error::Config(format!("bearer token file {shown}: {e}")))?;
    if stamp.len > 16 * 1024 * 1024 {
        return Err(Error::Config(format!(
            "bearer token file {shown} is larger than 16 MiB"
        )));
    }
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| Error::Config(format!("bearer token file {shown}: {e}")))?;
    Ok((
        parse(&text).map_err(|e| Error::Config(format!("bearer token file {shown}: {e}")))?,
        stamp,
    ))
}

/// Parses `TOKEN PRINCIPAL` lines. Errors name the line, never the token.
fn parse(text: &str) -> std::result::Result<Vec<([u8; 32], String)>, String> {
    let mut entries: Vec<([u8; 32], String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let lineno = n + 1;
        let mut fields = line.split_ascii_whitespace();
        let (Some(token), Some(principal), None) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(format!(
                "line {lineno}: expected `TOKEN PRINCIPAL` (two fields separated by spaces)"
            ));
        };
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "line {lineno}: the token is shorter than {MIN_TOKEN_LEN} characters"
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "line {lineno}: the token has characters a header cannot carry"
            ));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if entries.iter().any(|(d, _)| *d == digest) {
            return Err(format!("line {lineno}: the same token appears twice"));
        }
        entries.push((digest, principal.to_string()));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(auth: Option<&str>) -> http::request::Parts {
        let mut b = http::Request::builder();
        if let Some(a) = auth {
            b = b.header(http::header::AUTHORIZATION, a);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn parse_refuses_bad_lines_without_echoing_the_token() {
        let ok = parse("# comment\n\ntok-aaaaaaaaaaaaaaaa alice\n  tok-bbbbbbbbbbbbbbbb bob  \n")
            .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].1, "bob");
        for (text, want) in [
            ("tok-aaaaaaaaaaaaaaaa\n", "line 1: expected"),
            ("tok-aaaaaaaaaaaaaaaa a b\n", "line 1: expected"),
            ("\ntiny alice\n", "line 2: the token is shorter"),
            (
                "tok-aaaaaaaaaaaaaaaa a\ntok-aaaaaaaaaaaaaaaa b\n",
                "line 2: the same token",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.starts_with(want), "{e}");
            assert!(!e.contains("tok-") && !e.contains("tiny"), "{e}");
        }
    }

    #[test]
    fn bearer_token_reads_only_the_bearer_scheme() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(http::header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        assert_eq!(bearer_token(&h("Bearer abc")), Some(Ok("abc")));
        assert_eq!(bearer_token(&h("bearer   abc ")), Some(Ok("abc")));
        assert_eq!(bearer_token(&h("Basic dXNlcg==")), None);
        assert_eq!(bearer_token(&h("Bearer")), Some(Err(())));
        assert_eq!(bearer_token(&http::HeaderMap::new()), None);
        let long = format!("Bearer {}", "a".repeat(MAX_CREDENTIAL_LEN));
        assert_eq!(bearer_token(&h(&long)), Some(Err(())));
    }

    #[tokio::test]
    async fn tokens_authenticate_and_rotate_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "first-token-0123456789 alice\n").unwrap();
        let tokens = BearerTokens::from_file(&path).await.unwrap();
        let ok = tokens
            .authenticate(&parts(Some("Bearer first-token-0123456789")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ok.principal.as_deref(), Some("alice"));
        assert_eq!(ok.domain.as_deref(), Some("bearer"));
        assert!(tokens.authenticate(&parts(None)).await.unwrap().is_none());
        let wrong = tokens
            .authenticate(&parts(Some("Bearer second-token-0123456789")))
            .await
            .unwrap_err();
        assert!(!wrong.to_string().contains("second-token"), "{wrong}");
        // Rotate: the new token works and the old one stops working.
        std::fs::write(&path, "second-token-0123456789 bob\n").unwrap();
        tokens.state.write().await.checked = Instant::now() - RECHECK;
        let ok = tokens
            .authenticate(&parts(Some("Bearer second-token-0123456789")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ok.principal.as_deref(), Some("bob"));
        tokens.state.write().await.checked = Instant::now() - RECHECK;
        assert!(tokens
            .authenticate(&parts(Some("Bearer first-token-0123456789")))
            .await
            .is_err());
        // A broken file keeps the previous tokens.
        std::fs::write(&path, "garbage\n").unwrap();
        tokens.state.write().await.checked = Instant::now() - RECHECK;
        assert!(tokens
            .authenticate(&parts(Some("Bearer second-token-0123456789")))
            .await
            .unwrap()
            .is_some());
    }

    #[tokio::test]
    async fn a_missing_file_is_a_config_error() {
        let e = BearerTokens::from_file("/nonexistent/tokens")
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("bearer token file"), "{e}");
    }
}
