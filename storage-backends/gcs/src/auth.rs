//! Credentials for API calls, and the signer for URLs.
//!
//! | configuration | API calls | URL signer |
//! |---|---|---|
//! | nothing (ADC) | Application Default Credentials | ADC's: a service-account key signs locally; on GKE Workload Identity or GCE the metadata server's account signs through IAM `signBlob` |
//! | credentials file | that file | a service-account key signs locally; impersonation files sign through `signBlob` |
//! | anonymous | none | the credentials file's key (an emulator does not check signatures) |
//! | signing account | as above | that account, through `signBlob`, called with the API credentials |

use std::path::Path;

use base64::Engine;
use google_cloud_auth::credentials::{
    anonymous, external_account, impersonated, service_account, user_account, CacheableResource,
    Credentials,
};
use google_cloud_auth::signer::{Signer, SigningError, SigningProvider};
use http::Extensions;
use spillway_storage::{CappedError, StorageError};
use url::Url;

use crate::config::origin_string;
use crate::errors;
use crate::GcsConfig;

/// The IAM Credentials API.
const DEFAULT_IAM_ENDPOINT: &str = "https://iamcredentials.googleapis.com";

/// Largest credentials file read.
const MAX_CREDENTIALS_FILE_BYTES: u64 = 1024 * 1024;

/// Largest `signBlob` response read.
const MAX_SIGN_RESPONSE_BYTES: usize = 64 * 1024;

/// What [`load`] found.
pub(crate) struct Auth {
    pub credentials: Credentials,
    pub signer: Result<Signer, String>,
}

fn config_error(message: impl Into<String>) -> StorageError {
    StorageError::Config(message.into())
}

/// Loads credentials and builds the signer as the module table says. Never sends a request.
pub(crate) fn load(config: &GcsConfig) -> Result<Auth, StorageError> {
    let file = match &config.credentials_file {
        Some(path) => Some(read_credentials_file(path)?),
        None => None,
    };
    let credentials = if config.anonymous {
        anonymous::Builder::new().build()
    } else {
        match &file {
            Some(json) => credentials_from_json(json)?,
            None => google_cloud_auth::credentials::Builder::default()
                .build()
                .map_err(|e| {
                    config_error(format!(
                        "gcs application default credentials: {}",
                        errors::redacted_chain(&e)
                    ))
                })?,
        }
    };
    let signer = match &config.signing_account {
        Some(account) => {
            if config.anonymous {
                return Err(config_error(
                    "SPILLWAY_GCS_SIGNING_ACCOUNT signs through the IAM API, which needs \
                     credentials: it cannot be combined with SPILLWAY_GCS_ANONYMOUS",
                ));
            }
            check_account(account)?;
            let endpoint = match &config.iam_endpoint {
                Some(u) => origin_string(u),
                None => DEFAULT_IAM_ENDPOINT.to_string(),
            };
            Ok(Signer::from(IamSignBlob::new(
                account.clone(),
                credentials.clone(),
                endpoint,
            )?))
        }
        None => match &file {
            Some(json) => signer_from_json(json),
            None if config.anonymous => Err(
                "anonymous gcs api calls leave nothing to sign urls with: set \
                 SPILLWAY_GCS_CREDENTIALS_FILE to a service-account key (used only for signing)"
                    .to_string(),
            ),
            None => google_cloud_auth::credentials::Builder::default()
                .build_signer()
                .map_err(|e| {
                    format!(
                        "the application default credentials cannot sign urls ({}): use a \
                         service-account key, or set SPILLWAY_GCS_SIGNING_ACCOUNT to a service \
                         account these credentials may sign as",
                        errors::redacted_chain(&e)
                    )
                }),
        },
    };
    Ok(Auth {
        credentials,
        signer,
    })
}

fn read_credentials_file(path: &Path) -> Result<serde_json::Value, StorageError> {
    let fail =
        |reason: String| config_error(format!("gcs credentials file {}: {reason}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.len() > MAX_CREDENTIALS_FILE_BYTES {
        return Err(fail("larger than 1 MiB".into()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    // serde_json's errors name a line and column, never the content.
    serde_json::from_str(&text).map_err(|e| fail(format!("not json: {e}")))
}

fn credential_type(json: &serde_json::Value) -> &str {
    json.get("type").and_then(|t| t.as_str()).unwrap_or("")
}

fn credentials_from_json(json: &serde_json::Value) -> Result<Credentials, StorageError> {
    let kind = credential_type(json);
    let built = match kind {
        "service_account" => service_account::Builder::new(json.clone()).build(),
        "authorized_user" => user_account::Builder::new(json.clone()).build(),
        "impersonated_service_account" => impersonated::Builder::new(json.clone()).build(),
        "external_account" => external_account::Builder::new(json.clone()).build(),
        other => {
            return Err(config_error(format!(
                "unsupported gcs credentials type {other:?} (expected service_account, \
                 authorized_user, impersonated_service_account or external_account)"
            )))
        }
    };
    built.map_err(|e| {
        config_error(format!(
            "gcs credentials ({kind}): {}",
            errors::redacted_chain(&e)
        ))
    })
}

fn signer_from_json(json: &serde_json::Value) -> Result<Signer, String> {
    let kind = credential_type(json);
    let built = match kind {
        "service_account" => service_account::Builder::new(json.clone()).build_signer(),
        "impersonated_service_account" => impersonated::Builder::new(json.clone()).build_signer(),
        other => {
            return Err(format!(
                "credentials of type {other:?} cannot sign urls: use a service-account key, or \
                 set SPILLWAY_GCS_SIGNING_ACCOUNT to a service account they may sign as"
            ))
        }
    };
    built.map_err(|e| {
        format!(
            "cannot sign urls with the {kind} credentials: {}",
            errors::redacted_chain(&e)
        )
    })
}

/// A service account's email goes into a URL path: keep it to the characters emails of
/// service accounts use.
fn check_account(account: &str) -> Result<(), StorageError> {
    let ok = account.len() <= 254
        && account.split_once('@').is_some_and(|(user, domain)| {
            !user.is_empty() && domain.contains('.') && !domain.contains('@')
        })
        && account
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'@' | b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(config_error(format!(
            "SPILLWAY_GCS_SIGNING_ACCOUNT {account:?} is not a service account email"
        )))
    }
}

/// Signs as `account` through the IAM Credentials API's `signBlob`, authenticated with the
/// store's credentials (which need `iam.serviceAccounts.signBlob` on the account, e.g. through
/// roles/iam.serviceAccountTokenCreator).
#[derive(Debug)]
pub(crate) struct IamSignBlob {
    account: String,
    credentials: Credentials,
    url: Url,
    http: reqwest::Client,
}

impl IamSignBlob {
    pub(crate) fn new(
        account: String,
        credentials: Credentials,
        endpoint: String,
    ) -> Result<Self, StorageError> {
        let url = Url::parse(&format!(
            "{endpoint}/v1/projects/-/serviceAccounts/{account}:signBlob"
        ))
        .map_err(|e| config_error(format!("iam signBlob url: {e}")))?;
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| config_error(format!("http client: {e}")))?;
        Ok(IamSignBlob {
            account,
            credentials,
            url,
            http,
        })
    }

    async fn sign_blob(&self, content: &[u8]) -> Result<bytes::Bytes, String> {
        let headers = match self.credentials.headers(Extensions::new()).await {
            Ok(CacheableResource::New { data, .. }) => data,
            Ok(CacheableResource::NotModified) => {
                return Err("credentials returned no headers".into())
            }
            Err(e) => return Err(format!("credentials: {}", errors::redacted_chain(&e))),
        };
        let body = serde_json::json!({
            "payload": base64::prelude::BASE64_STANDARD.encode(content),
        });
        let response = self
            .http
            .post(self.url.clone())
            .headers(headers)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| errors::redacted_chain(&e))?;
        let status = response.status();
        let bytes = spillway_storage::collect_capped(
            response.bytes_stream(),
            None,
            MAX_SIGN_RESPONSE_BYTES as u64,
        )
        .await
        .map_err(|e| match e {
            CappedError::TooLarge { .. } => "signBlob response too large".to_string(),
            CappedError::Stream(e) => errors::redacted_chain(&e),
        })?;
        if !status.is_success() {
            return Err(format!(
                "signBlob for {} answered http {}: {}",
                self.account,
                status.as_u16(),
                crate::api::service_message(&bytes)
            ));
        }
        let reply: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("signBlob reply: {e}"))?;
        let signed = reply
            .get("signedBlob")
            .and_then(|v| v.as_str())
            .ok_or("signBlob reply has no signedBlob")?;
        base64::prelude::BASE64_STANDARD
            .decode(signed)
            .map(bytes::Bytes::from)
            .map_err(|e| format!("signBlob reply: {e}"))
    }
}

impl SigningProvider for IamSignBlob {
    async fn client_email(&self) -> google_cloud_auth::signer::Result<String> {
        Ok(self.account.clone())
    }

    async fn sign(&self, content: &[u8]) -> google_cloud_auth::signer::Result<bytes::Bytes> {
        self.sign_blob(content)
            .await
            .map_err(SigningError::from_msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::tests::{test_signer, TEST_KEY_FILE};
    use axum::extract::{Path as AxPath, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use axum::Json;
    use std::sync::{Arc, Mutex};

    fn config() -> GcsConfig {
        GcsConfig::new("test-bucket")
    }

    #[tokio::test]
    async fn anonymous_mode_signs_with_the_key_file() {
        let mut c = config();
        c.anonymous = true;
        c.credentials_file = Some(TEST_KEY_FILE.into());
        let auth = load(&c).unwrap();
        let signer = auth.signer.unwrap();
        assert_eq!(
            signer.client_email().await.unwrap(),
            "test-iam-credentials@dummy-project-id.iam.gserviceaccount.com"
        );
        match auth.credentials.headers(Extensions::new()).await.unwrap() {
            CacheableResource::New { data, .. } => assert!(data.is_empty()),
            CacheableResource::NotModified => panic!("no headers"),
        }

        c.credentials_file = None;
        let reason = load(&c).unwrap().signer.unwrap_err();
        assert!(reason.contains("SPILLWAY_GCS_CREDENTIALS_FILE"), "{reason}");

        c.signing_account = Some("sa@p.iam.gserviceaccount.com".into());
        assert!(load(&c).is_err());
    }

    // Building credentials starts their token refresh task, hence a runtime.
    #[tokio::test]
    async fn bad_credentials_files_are_configuration_errors() {
        let dir = std::env::temp_dir().join(format!("spillway-gcs-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            ("missing.json", None),
            ("notjson.json", Some("{ not json")),
            ("unknown.json", Some(r#"{"type": "martian"}"#)),
        ];
        for (name, content) in cases {
            let path = dir.join(name);
            if let Some(c) = content {
                std::fs::write(&path, c).unwrap();
            }
            let mut c = config();
            c.credentials_file = Some(path);
            match load(&c) {
                Err(StorageError::Config(m)) => assert!(m.contains("gcs credentials"), "{m}"),
                Err(other) => panic!("{name}: {other}"),
                Ok(_) => panic!("{name} was accepted"),
            }
        }
        // A user's own credentials can call the API but not sign. (Anonymous API calls: real
        // user credentials would fetch a token from Google at once.)
        let path = dir.join("user.json");
        std::fs::write(
            &path,
            r#"{"type": "authorized_user", "client_id": "c", "client_secret": "s", "refresh_token": "r"}"#,
        )
        .unwrap();
        let mut c = config();
        c.anonymous = true;
        c.credentials_file = Some(path);
        let reason = load(&c).unwrap().signer.unwrap_err();
        assert!(reason.contains("SPILLWAY_GCS_SIGNING_ACCOUNT"), "{reason}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn signing_accounts_must_look_like_emails() {
        check_account("spillway@my-project.iam.gserviceaccount.com").unwrap();
        for bad in [
            "",
            "nobody",
            "a@b",
            "a/b@c.d",
            "a@b.c/../x",
            "a@@b.c",
            "@b.c",
        ] {
            assert!(check_account(bad).is_err(), "{bad:?}");
        }
    }

    #[derive(Default)]
    struct Seen {
        paths: Vec<String>,
        api_keys: Vec<Option<String>>,
    }

    /// An in-process stand-in for the IAM signBlob API that signs with the test key.
    async fn fake_iam(fail: bool) -> (String, Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let handler = move |State(seen): State<Arc<Mutex<Seen>>>,
                            AxPath(rest): AxPath<String>,
                            headers: HeaderMap,
                            Json(body): Json<serde_json::Value>| async move {
            {
                let mut s = seen.lock().unwrap();
                s.paths.push(rest);
                s.api_keys.push(
                    headers
                        .get("x-goog-api-key")
                        .map(|v| v.to_str().unwrap().to_string()),
                );
            }
            if fail {
                return (
                    StatusCode::FORBIDDEN,
                    Json(
                        serde_json::json!({"error": {"code": 403, "message": "Permission 'iam.serviceAccounts.signBlob' denied"}}),
                    ),
                );
            }
            let payload = base64::prelude::BASE64_STANDARD
                .decode(body["payload"].as_str().unwrap())
                .unwrap();
            let sig = test_signer().sign(payload).await.unwrap();
            (
                StatusCode::OK,
                Json(serde_json::json!({
                    "keyId": "k",
                    "signedBlob": base64::prelude::BASE64_STANDARD.encode(sig),
                })),
            )
        };
        let app = axum::Router::new()
            .route("/v1/projects/-/serviceAccounts/{*rest}", post(handler))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (base, seen, task)
    }

    #[tokio::test]
    async fn sign_blob_signs_as_the_configured_account() {
        let (base, seen, task) = fake_iam(false).await;
        // API credentials that produce a fixed header without any network.
        let creds =
            google_cloud_auth::credentials::api_key_credentials::Builder::new("test-key").build();
        let signer = Signer::from(
            IamSignBlob::new(
                "signer@p.iam.gserviceaccount.com".into(),
                creds,
                base.clone(),
            )
            .unwrap(),
        );
        assert_eq!(
            signer.client_email().await.unwrap(),
            "signer@p.iam.gserviceaccount.com"
        );
        let got = signer.sign("to be signed").await.unwrap();
        let want = test_signer().sign("to be signed").await.unwrap();
        assert_eq!(got, want);
        {
            let s = seen.lock().unwrap();
            assert_eq!(s.paths, ["signer@p.iam.gserviceaccount.com:signBlob"]);
            // The call carries the store's credentials.
            assert_eq!(s.api_keys, [Some("test-key".to_string())]);
        }
        task.abort();

        let (base, _seen, task) = fake_iam(true).await;
        let signer = Signer::from(
            IamSignBlob::new(
                "signer@p.iam.gserviceaccount.com".into(),
                anonymous::Builder::new().build(),
                base,
            )
            .unwrap(),
        );
        let err = signer.sign("x").await.unwrap_err().to_string();
        assert!(err.contains("http 403"), "{err}");
        assert!(err.contains("signBlob' denied"), "{err}");
        task.abort();
    }
}
