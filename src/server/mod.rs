//! The HTTP RPC server: vgi-rpc 0.52 over axum, with externalization of large results.
//!
//! Build a [`Server`] from protocols and a storage, then serve [`Server::router`] with
//! `axum::serve`, or with [`listener::serve`] for TLS ([`tls`]) and client certificates. The
//! router is a plain `axum::Router`, so it can be tested in-process or mounted inside a larger
//! application.
//!
//! ```no_run
//! # async fn run() -> spillway::Result<()> {
//! use spillway::server::{Server, ServerConfig};
//! let server = Server::new(ServerConfig::default()).with_protocol(spillway::demo::protocol()?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, server.router()).await?;
//! # Ok(())
//! # }
//! ```

// Handlers return `Result<_, Response>` early-outs, as axum code does; a Response is large,
// and boxing it on these cold error paths would only add noise.
#![allow(clippy::result_large_err)]

mod access_log;
mod admission;
pub mod auth;
pub mod authz;
mod body;
pub mod body_rate;
mod compress;
mod config;
pub mod cors;
mod emit;
mod invoke;
pub mod listener;
pub mod memory;
pub mod ops;
mod pointers;
mod protocol;
mod reflection;
mod request;
mod response;
mod routes;
mod rpc_call;
mod stamp;
mod state;
mod stream;
pub mod tls;
mod tokens;
mod trace;
mod unary;
mod upload;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::routing::{any, get, post};
use axum::Router;
use spillway_storage::Storage;

pub use admission::AdmissionConfig;
pub use config::{
    is_valid_server_id, normalize_prefix, random_server_id, ServerConfig, MAX_SERVER_ID_LEN,
};
pub use protocol::{
    empty_schema, is_valid_protocol_name, parse_semver, CallContext, HandlerResult, Method,
    Protocol, StreamMethod, StreamStart, StreamTurn, TurnOutput, UnaryMethod, CANCEL_KEY,
};
pub use response::{ApiError, RPC_ERROR_HEADER};
pub use upload::{upload_url_schema, MAX_UPLOAD_URLS, UPLOAD_METHOD};

use crate::error::{Error, Result};
use crate::externalize::Externalizer;
use crate::wire::http;
use routes::{flat_route, health, health_options, not_allowed, not_found, rpc_get};
use state::{AppState, Readiness};

/// A vgi-rpc server: protocols, storage, settings.
pub struct Server {
    config: ServerConfig,
    protocols: Vec<Protocol>,
    storage: Option<Arc<dyn Storage>>,
    storage_routes: Option<(String, Router)>,
    reflection: bool,
    auth: Option<Arc<dyn auth::Authenticator>>,
    authz: Option<Arc<authz::AuthzPolicy>>,
    oauth: Option<auth::OAuthResourceMetadata>,
    drain: Drain,
}

impl Server {
    /// A server with no protocols and no storage (results are never externalized).
    pub fn new(config: ServerConfig) -> Self {
        Server {
            config,
            protocols: Vec::new(),
            storage: None,
            storage_routes: None,
            reflection: false,
            auth: None,
            authz: None,
            oauth: None,
            drain: Drain::default(),
        }
    }

    /// A handle that starts draining: once [`Drain::start`] is called, `/readyz` answers 503
    /// and new calls get 503 with `Connection: close`, while calls in flight finish. Call it
    /// on SIGTERM, before stopping the listener.
    pub fn drain_handle(&self) -> Drain {
        self.drain.clone()
    }

    /// Serves RFC 9728 protected-resource metadata at
    /// `/.well-known/oauth-protected-resource{prefix}` (and without the prefix), at the root
    /// and without authentication, as the reference does: clients that log in through OAuth
    /// find the issuer there.
    pub fn with_oauth_resource_metadata(mut self, metadata: auth::OAuthResourceMetadata) -> Self {
        self.oauth = Some(metadata);
        self
    }

    /// Requires every RPC request to be vouched for by `authenticator` (401 otherwise).
    /// `OPTIONS`, `/health`, `/.well-known/*`, the operations endpoints and the storage routes
    /// stay open: see [`auth`].
    pub fn with_authenticator(mut self, authenticator: Arc<dyn auth::Authenticator>) -> Self {
        self.auth = Some(authenticator);
        self
    }

    /// Applies an authorization policy to every call (403 `PermissionError` when it denies).
    pub fn with_authorization(mut self, policy: authz::AuthzPolicy) -> Self {
        self.authz = Some(Arc::new(policy));
        self
    }

    /// Also serves `vgi_rpc.Reflection.v1` (`list_protocols`, `describe`), which
    /// `vgi-rpc describe` and the conformance suite use to discover the hosted protocols.
    pub fn with_reflection(mut self, enabled: bool) -> Self {
        self.reflection = enabled;
        self
    }

    /// Hosts a protocol. The first one added is the "primary" protocol named by `/health`.
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocols.push(protocol);
        self
    }

    /// Externalizes large results to `storage` and vends upload URLs from it.
    pub fn with_storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Serves `routes` under `{prefix}{path}` (the embedded store's object URLs).
    pub fn with_storage_routes(mut self, path: &str, routes: Router) -> Self {
        self.storage_routes = Some((path.to_string(), routes));
        self
    }

    /// The axum router: the RPC routes under the prefix, the storage routes, and the
    /// operations endpoints (`/livez`, `/readyz`, `/metrics`) at the root. A prefix that is
    /// not a URL path (see [`http::normalize_prefix`]) is logged and mounted as given, where
    /// no request reaches it; [`Server::try_router`] refuses it instead.
    pub fn router(self) -> Router {
        self.into_routers().0
    }

    /// As [`Server::router`], refusing a prefix that is not a URL path (`?`, `#`, whitespace).
    pub fn try_router(self) -> Result<Router> {
        Ok(self.try_into_routers()?.0)
    }

    /// The main router (as [`Server::router`]) and an operations-only router for a separate
    /// admin port.
    pub fn into_routers(self) -> (Router, Router) {
        let prefix = match http::normalize_prefix(&self.config.prefix) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "the RPC routes are unreachable under this prefix");
                normalize_prefix(&self.config.prefix)
            }
        };
        self.build(prefix)
    }

    /// As [`Server::into_routers`], refusing a prefix that is not a URL path (`?`, `#`,
    /// whitespace) with [`Error::Config`].
    pub fn try_into_routers(self) -> Result<(Router, Router)> {
        let prefix = http::normalize_prefix(&self.config.prefix)
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(self.build(prefix))
    }

    fn build(self, prefix: String) -> (Router, Router) {
        // The recorder must exist before the first counter is touched.
        let _ = ops::prometheus();
        let mut config = self.config;
        config.prefix = prefix.clone();
        let primary_protocol = self
            .protocols
            .first()
            .map(|p| p.name().to_string())
            .unwrap_or_default();
        let externalizer = self
            .storage
            .as_ref()
            .map(|s| Externalizer::new(s.clone(), config.externalize.clone()));
        let has_storage = self.storage.is_some();
        let tokens = tokens::TokenSigner::new(
            &config.signing_secret,
            &config.previous_signing_secrets,
            config.stream_token_ttl,
        );
        // Registration order is kept for reflection's listing.
        let hosted: Vec<Arc<Protocol>> = self.protocols.into_iter().map(Arc::new).collect();
        let mut protocols: BTreeMap<String, Arc<Protocol>> = hosted
            .iter()
            .map(|p| (p.name().to_string(), p.clone()))
            .collect();
        if self.reflection {
            let r = reflection::protocol(&config.server_id, &primary_protocol, &hosted);
            protocols.insert(r.name().to_string(), Arc::new(r));
        }
        if let Some(policy) = &self.authz {
            for named in policy.named_protocols() {
                if !protocols.contains_key(named) {
                    tracing::warn!(
                        protocol = named,
                        "the authorization policy names a protocol this server does not host"
                    );
                }
            }
        }
        let emit = memory::EmitCost {
            threshold: externalizer.as_ref().map(|x| x.config().threshold_bytes),
            // Two chunks queued for the upload, one being filled, zstd's window and buffers.
            pipeline: externalizer
                .as_ref()
                .map(|x| 4 * x.config().chunk_bytes.max(64 * 1024) as u64)
                .unwrap_or(0),
        };
        let admission =
            admission::Admission::new(&config.admission, emit, self.auth.is_some(), self.drain);
        let protocol_hashes = reflection::protocol_hashes(protocols.values());
        let state = Arc::new(AppState {
            server_id: Arc::from(config.server_id.as_str()),
            protocol_hashes,
            admission,
            auth: self.auth,
            authz: self.authz,
            tokens,
            readiness: Readiness::default(),
            protocols,
            primary_protocol,
            storage: self.storage,
            externalizer,
            config,
        });
        // Calls go through the authentication gate (a route layer: it runs only for these
        // routes); health and the storage routes are added after it, outside.
        let mut rpc = Router::new()
            .route(
                "/{protocol}/{method}",
                post(unary::unary).get(rpc_get).fallback(not_allowed),
            )
            .route("/{protocol}/{method}/init", post(stream::init_route))
            .route(
                "/{protocol}/{method}/exchange",
                post(stream::exchange_route),
            )
            .route("/{name}", post(flat_route));
        if has_storage {
            let route = format!("/{}/init", http::UPLOAD_METHOD);
            rpc = rpc.route(&route, post(upload::upload_url_init));
        }
        let gate = || axum::middleware::from_fn_with_state(state.clone(), auth::authenticate);
        // The gate runs first (the outer layer), so admission knows the caller.
        let mut rpc = rpc
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                admission::admit,
            ))
            .route_layer(gate())
            // Outside the gate, as the reference's middleware: the span covers authentication.
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                trace::trace_call,
            ))
            .route("/health", get(health).head(health).options(health_options));
        if let Some((path, routes)) = self.storage_routes {
            rpc = rpc.nest_service(&path, routes);
        }
        let rpc = rpc
            .fallback(any(not_found))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                stamp::stamp_headers,
            ))
            .with_state(state.clone());
        let app = if prefix.is_empty() {
            rpc
        } else {
            Router::new().nest(&prefix, rpc).fallback(any(not_found))
        };
        let admin = ops::routes().with_state(state.clone());
        // On the main port, the metrics (method names, rates) need a credential when
        // authentication is configured; on the admin port, as the probes everywhere, they do not.
        let mut metrics = ops::metrics();
        if state.auth.is_some() {
            metrics = metrics.route_layer(gate());
        }
        let mut app = app.merge(ops::probes().merge(metrics).with_state(state.clone()));
        if let Some(metadata) = &self.oauth {
            app = app.merge(auth::oauth_routes(metadata, &prefix));
        }
        if !state.config.cors_origins.is_empty() {
            // Outermost: a preflight is answered before routing, authentication or stamping.
            app = cors::wrap(app, &state.config.cors_origins);
        }
        // Bodies are capped by the handlers themselves (413 with the protocol's JSON body).
        (app.layer(axum::extract::DefaultBodyLimit::disable()), admin)
    }
}

/// Drains a [`Server`] for shutdown (see [`Server::drain_handle`]), and counts its calls in
/// flight.
#[derive(Debug, Clone, Default)]
pub struct Drain(Arc<DrainState>);

#[derive(Debug, Default)]
struct DrainState {
    draining: std::sync::atomic::AtomicBool,
    in_flight: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Drain {
    /// Readiness false, new calls refused with 503 and `Connection: close`; calls in flight
    /// go on.
    pub fn start(&self) {
        self.0
            .draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.0.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Calls admitted whose response has not been sent yet.
    pub fn in_flight(&self) -> usize {
        self.0.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves when no call is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.0.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn call_started(&self) {
        self.0
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn call_ended(&self) {
        let before = self
            .0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        if before == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_router_refuses_a_prefix_that_is_not_a_path() {
        let with_prefix = |prefix: &str| {
            Server::new(ServerConfig {
                prefix: prefix.to_string(),
                ..ServerConfig::default()
            })
        };
        for bad in ["/a?b", "/a#b", "/a b"] {
            match with_prefix(bad).try_router() {
                Err(Error::Config(msg)) => assert!(msg.contains("invalid prefix"), "{msg}"),
                other => panic!("{bad:?} accepted: {:?}", other.map(|_| ())),
            }
        }
        assert!(with_prefix("vgi/").try_into_routers().is_ok());
        assert!(with_prefix("").try_router().is_ok());
    }
}
