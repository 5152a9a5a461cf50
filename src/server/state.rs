//! The state every handler shares, and the per-request extensions the router adds.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use spillway_storage::Storage;
use tokio::sync::Mutex;

use super::admission::Admission;
use super::auth::Authenticator;
use super::authz::AuthzPolicy;
use super::config::ServerConfig;
use super::protocol::Protocol;
use super::tokens::TokenSigner;
use crate::externalize::Externalizer;

/// What the handlers share: the settings, the hosted protocols, the storage.
pub(crate) struct AppState {
    pub(crate) config: ServerConfig,
    pub(crate) protocols: BTreeMap<String, Arc<Protocol>>,
    pub(crate) primary_protocol: String,
    pub(crate) storage: Option<Arc<dyn Storage>>,
    pub(crate) externalizer: Option<Externalizer>,
    pub(crate) tokens: TokenSigner,
    pub(crate) readiness: Readiness,
    /// Who may call: `None` = anyone (no authentication configured).
    pub(crate) auth: Option<Arc<dyn Authenticator>>,
    /// What they may call: `None` = everything.
    pub(crate) authz: Option<Arc<AuthzPolicy>>,
    /// The memory budget, call slots and draining flag.
    pub(crate) admission: Admission,
    /// `config.server_id`, shared with every call's access-log notes.
    pub(crate) server_id: Arc<str>,
    /// Each hosted protocol's hash (the reference's `compute_protocol_hash`), for the access
    /// log.
    pub(crate) protocol_hashes: HashMap<String, String>,
}

/// The cached storage verdict of `/readyz`: when it was reached, and the reason the store is
/// not ready. The lock is held during a check, so concurrent probes share it.
#[derive(Default)]
pub(crate) struct Readiness {
    pub(crate) last: Mutex<Option<(Instant, Result<(), String>)>>,
}

/// The request id of the current request (from `X-Request-ID`, or generated).
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub(crate) String);

impl RequestId {
    /// The client's `X-Request-ID` when it is usable (1-128 visible ASCII characters).
    pub(crate) fn from_client(value: &str) -> Option<Self> {
        let valid =
            !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
        valid.then(|| RequestId(value.to_string()))
    }
}
