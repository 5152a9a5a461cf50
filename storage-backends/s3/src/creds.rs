//! Watching the credentials the SDK signs with, to tell when presigned URLs die early.
//!
//! A SigV4 presigned URL made with temporary credentials (IRSA, instance profiles, assumed
//! roles) stops working when those credentials expire, whatever its own expiry says. The SDK
//! caches credentials and only asks the provider chain again shortly before they expire, so
//! wrapping the chain records exactly the credentials that are being signed with.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{future, ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;

/// The standard AWS credential chain, remembering the last credentials it handed out.
#[derive(Debug, Clone)]
pub(crate) struct CredentialsWatch {
    inner: SharedCredentialsProvider,
    last: Arc<Mutex<Option<Credentials>>>,
}

impl CredentialsWatch {
    pub(crate) fn new(inner: SharedCredentialsProvider) -> Self {
        CredentialsWatch {
            inner,
            last: Arc::new(Mutex::new(None)),
        }
    }

    /// The credentials most recently handed to the SDK.
    pub(crate) fn current(&self) -> Option<Credentials> {
        self.last.lock().ok().and_then(|g| g.clone())
    }

    /// When the current credentials expire (`None`: static credentials, or none yet).
    pub(crate) fn expiry(&self) -> Option<SystemTime> {
        self.current().and_then(|c| c.expiry())
    }

    #[cfg(test)]
    pub(crate) fn set_for_test(&self, creds: Credentials) {
        if let Ok(mut g) = self.last.lock() {
            *g = Some(creds);
        }
    }
}

impl ProvideCredentials for CredentialsWatch {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let creds = self.inner.provide_credentials().await?;
            if let Ok(mut g) = self.last.lock() {
                *g = Some(creds.clone());
            }
            Ok(creds)
        })
    }
}

/// Why a URL presigned now with `ttl` may stop working before its expiry, if it may.
/// `expiry` is when the signing credentials expire; `refresh_margin` is how long before that
/// the SDK replaces them (so URLs signed just before a refresh live at least that long).
pub(crate) fn ttl_warning(
    ttl: Duration,
    expiry: Option<SystemTime>,
    refresh_margin: Duration,
    now: SystemTime,
) -> Option<String> {
    let expiry = expiry?;
    let left = expiry.duration_since(now).unwrap_or(Duration::ZERO);
    if ttl <= left {
        return None;
    }
    Some(format!(
        "presigned urls are valid for {}s but the temporary aws credentials signing them expire \
         in {}s: a url stops working when its signing credentials expire, so urls signed \
         shortly before a credentials refresh live only about {}s \
         (SPILLWAY_S3_CREDENTIALS_REFRESH_MARGIN); lower SPILLWAY_PRESIGN_TTL and \
         SPILLWAY_UPLOAD_URL_TTL, or use credentials that live longer",
        ttl.as_secs(),
        left.as_secs(),
        refresh_margin.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_only_when_the_ttl_outlives_temporary_credentials() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let margin = Duration::from_secs(600);
        let hour = Duration::from_secs(3600);
        assert_eq!(ttl_warning(hour, None, margin, now), None);
        assert_eq!(
            ttl_warning(hour, Some(now + 2 * hour), margin, now),
            None,
            "credentials outlive the url"
        );
        let w = ttl_warning(hour, Some(now + Duration::from_secs(900)), margin, now)
            .expect("a url outliving its credentials is reported");
        assert!(w.contains("valid for 3600s"), "{w}");
        assert!(w.contains("expire in 900s"), "{w}");
        assert!(w.contains("about 600s"), "{w}");
        // Already expired credentials count as zero seconds left.
        let w = ttl_warning(hour, Some(now - hour), margin, now).unwrap();
        assert!(w.contains("expire in 0s"), "{w}");
    }
}
