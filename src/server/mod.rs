//! The HTTP RPC server: vgi-rpc 0.52 over axum, with externalization of large results.
//!
//! Build a [`Server`] from protocols and a storage, then serve [`Server::router`] with
//! `axum::serve`. The router is a plain `axum::Router`, so it can be tested in-process or
//! mounted inside a larger application.
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

mod body;
mod compress;
mod emit;
pub mod ops;
mod pointers;
mod reflection;
mod request;
mod response;
mod service;
mod stream;
mod tokens;
mod unary;
mod upload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use spillway_storage::Storage;

pub use response::{ApiError, RPC_ERROR_HEADER};
pub use service::{
    empty_schema, is_valid_protocol_name, parse_semver, CallContext, HandlerResult, Method,
    Protocol, UnaryMethod,
};
pub use stream::{StreamMethod, StreamStart, StreamTurn, TurnOutput, CANCEL_KEY};
pub use upload::{upload_url_schema, MAX_UPLOAD_URLS, UPLOAD_METHOD};

use crate::externalize::{ExternalizeConfig, Externalizer};
use crate::wire::RpcError;

/// Server settings (see the README's configuration table for the environment variables).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Mount prefix: `""` (root) or e.g. `/vgi`.
    pub prefix: String,
    /// Largest request body accepted, raw and decoded (413 above it); advertised.
    pub max_request_bytes: u64,
    /// Largest inline response body; `None` = only the client's own budget applies.
    pub max_response_bytes: Option<u64>,
    /// Largest object accepted through an upload URL (advertised, and enforced by the local
    /// store); also the cap on request objects the server resolves.
    pub max_upload_bytes: u64,
    /// Lifetime of vended upload/download URL pairs.
    pub upload_url_ttl: Duration,
    /// Longest a method may run.
    pub method_timeout: Duration,
    /// An id for this process, in `/health` and error metadata.
    pub server_id: String,
    /// Externalization policy (used when a storage is configured).
    pub externalize: ExternalizeConfig,
    /// How request pointers are resolved. `None` (the default): only URLs of this server's
    /// own storage, read through the storage. `Some(fetcher)`: any URL the fetcher's URL
    /// policy allows, fetched over HTTP (for test rigs such as the vgi-rpc conformance
    /// suite, whose storage is a separate service).
    pub request_pointer_fetcher: Option<crate::fetch::Fetcher>,
    /// Secret signing stream state tokens (at least 32 bytes); replicas behind one load
    /// balancer must share it. Defaults to a random per-process secret.
    pub signing_secret: Vec<u8>,
    /// Longest pause allowed between two turns of a stream.
    pub stream_token_ttl: Duration,
    /// Compress RPC responses (zstd or gzip, as negotiated). When off, the server advertises an
    /// empty `VGI-Supported-Encodings` and never compresses; compressed requests are still
    /// decoded.
    pub response_compression: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            prefix: String::new(),
            max_request_bytes: 4 * 1024 * 1024,
            max_response_bytes: None,
            max_upload_bytes: 4 * 1024 * 1024 * 1024,
            upload_url_ttl: Duration::from_secs(3600),
            method_timeout: Duration::from_secs(600),
            server_id: format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff),
            externalize: ExternalizeConfig::default(),
            request_pointer_fetcher: None,
            signing_secret: {
                let mut secret = vec![0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
                secret
            },
            stream_token_ttl: Duration::from_secs(3600),
            response_compression: true,
        }
    }
}

/// Normalizes a mount prefix: `""`, or `/a/b` without a trailing slash.
pub fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim().trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("/{trimmed}")
    }
}

pub(crate) struct AppState {
    pub(crate) config: ServerConfig,
    pub(crate) protocols: BTreeMap<String, Arc<Protocol>>,
    pub(crate) primary_protocol: String,
    pub(crate) storage: Option<Arc<dyn Storage>>,
    pub(crate) externalizer: Option<Externalizer>,
    pub(crate) tokens: tokens::TokenSigner,
    pub(crate) readiness: ops::Readiness,
}

/// A vgi-rpc server: protocols, storage, settings.
pub struct Server {
    config: ServerConfig,
    protocols: Vec<Protocol>,
    storage: Option<Arc<dyn Storage>>,
    storage_routes: Option<(String, Router)>,
    reflection: bool,
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
        }
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
    /// operations endpoints (`/livez`, `/readyz`, `/metrics`) at the root.
    pub fn router(self) -> Router {
        self.into_routers().0
    }

    /// The main router (as [`Server::router`]) and an operations-only router for a separate
    /// admin port.
    pub fn into_routers(self) -> (Router, Router) {
        // The recorder must exist before the first counter is touched.
        let _ = ops::prometheus();
        let mut config = self.config;
        config.prefix = normalize_prefix(&config.prefix);
        let prefix = config.prefix.clone();
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
        let tokens =
            tokens::TokenSigner::new(config.signing_secret.clone(), config.stream_token_ttl);
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
        let state = Arc::new(AppState {
            tokens,
            readiness: ops::Readiness::default(),
            protocols,
            primary_protocol,
            storage: self.storage,
            externalizer,
            config,
        });
        let mut rpc = Router::new()
            .route("/health", get(health).head(health).options(health_options))
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
            rpc = rpc.route("/__upload_url__/init", post(upload::upload_url_init));
        }
        if let Some((path, routes)) = self.storage_routes {
            rpc = rpc.nest_service(&path, routes);
        }
        let rpc = rpc
            .fallback(any(not_found))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                stamp_headers,
            ))
            .with_state(state.clone());
        let app = if prefix.is_empty() {
            rpc
        } else {
            Router::new().nest(&prefix, rpc).fallback(any(not_found))
        };
        let admin = ops::routes().with_state(state.clone());
        let app = app.merge(admin.clone());
        // Bodies are capped by the handlers themselves (413 with the protocol's JSON body).
        (app.layer(axum::extract::DefaultBodyLimit::disable()), admin)
    }
}

/// The request id of the current request (from `X-Request-ID`, or generated).
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub(crate) String);

fn valid_request_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
}

/// Stamps the capability headers and `X-Request-ID` on every response, errors included, and
/// writes the access log line.
async fn stamp_headers(State(st): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // The route template, not the path: keys and protocol names must not explode label sets.
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    req.extensions_mut().insert(RequestId(request_id.clone()));
    // Decremented on drop, so a call abandoned by its client is not counted forever.
    struct InFlight(metrics::Gauge);
    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.decrement(1.0);
        }
    }
    // Only RPC answers (POST) are compressed; object downloads keep their stored encoding,
    // ranges and lengths.
    let codec = (st.config.response_compression && req.method() == axum::http::Method::POST)
        .then(|| compress::negotiate(req.headers()))
        .flatten();
    let in_flight = InFlight(metrics::gauge!("spillway_http_requests_in_flight"));
    in_flight.0.increment(1.0);
    // A response sent before the request body was read to the end makes hyper drop the
    // connection after it, without telling the client; say `Connection: close` so the client
    // does not reuse it for its next request.
    let has_body = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || req
            .headers()
            .contains_key(axum::http::header::TRANSFER_ENCODING);
    let body_done = Arc::new(std::sync::atomic::AtomicBool::new(!has_body));
    if has_body {
        let flag = body_done.clone();
        let (parts, body) = req.into_parts();
        let tracked = futures::StreamExt::chain(
            body.into_data_stream(),
            futures::stream::once(async move {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, axum::Error>(bytes::Bytes::new())
            }),
        );
        req = Request::from_parts(parts, axum::body::Body::from_stream(tracked));
    }
    let resp = next.run(req).await;
    let mut resp = compress::compress_response(codec, resp).await;
    drop(in_flight);
    if !body_done.load(std::sync::atomic::Ordering::SeqCst) {
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    let h = resp.headers_mut();
    let cfg = &st.config;
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    set("vgi-accept-max-response-bytes-support", "true".into());
    set(
        "vgi-externalization-enabled",
        st.externalizer.is_some().to_string(),
    );
    // Present but empty when compression is off: "speaks no compression", unlike a legacy
    // server's absent header.
    set(
        "vgi-supported-encodings",
        if cfg.response_compression {
            compress::RESPONSE_CODECS.join(", ")
        } else {
            String::new()
        },
    );
    set("vgi-max-request-bytes", cfg.max_request_bytes.to_string());
    if st.storage.is_some() {
        set("vgi-upload-url-support", "true".into());
        set("vgi-max-upload-bytes", cfg.max_upload_bytes.to_string());
    }
    if let Some(m) = cfg.max_response_bytes {
        set("vgi-max-response-bytes", m.to_string());
    }
    if let (Some(_), Some(m)) = (&st.externalizer, cfg.externalize.max_externalized_bytes) {
        set("vgi-max-externalized-response-bytes", m.to_string());
    }
    set("x-request-id", request_id.clone());
    let status = resp.status().as_u16();
    let externalized = resp
        .extensions()
        .get::<unary::ExternalizedBytes>()
        .map(|e| e.0)
        .unwrap_or(0);
    let elapsed = started.elapsed();
    let labels = [
        ("route", route),
        ("method", method.to_string()),
        ("status", status.to_string()),
    ];
    metrics::counter!("spillway_http_requests_total", &labels).increment(1);
    metrics::histogram!("spillway_http_request_duration_seconds", &labels[..2])
        .record(elapsed.as_secs_f64());
    tracing::info!(
        target: "spillway::access",
        %method,
        path = %path,
        status,
        externalized_bytes = externalized,
        rpc_error = resp.headers().contains_key(RPC_ERROR_HEADER),
        elapsed_ms = elapsed.as_secs_f64() * 1000.0,
        request_id = %request_id,
        "rpc"
    );
    resp
}

async fn health(State(st): State<Arc<AppState>>, method: axum::http::Method) -> Response {
    let body = serde_json::json!({
        "status": "ok",
        "server_id": st.config.server_id,
        "protocol": st.primary_protocol,
    })
    .to_string();
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if method == axum::http::Method::HEAD {
        *resp.body_mut() = axum::body::Body::empty();
    }
    resp
}

async fn health_options() -> Response {
    (
        StatusCode::OK,
        [
            (header::ALLOW, "GET, HEAD"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
    )
        .into_response()
}

async fn rpc_get(
    State(st): State<Arc<AppState>>,
    axum::extract::Path((protocol, _method)): axum::extract::Path<(String, String)>,
) -> Response {
    if st.protocols.contains_key(&protocol) {
        response::json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "405 Method Not Allowed",
            "RPC methods are called with POST",
        )
    } else {
        not_found().await
    }
}

async fn not_allowed() -> Response {
    response::json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "405 Method Not Allowed",
        "RPC methods are called with POST",
    )
}

async fn flat_route(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let error = if name == "__describe__" {
        RpcError::new(
            "MethodNotImplementedError",
            "__describe__ is retired; use vgi_rpc.Reflection.v1",
        )
        .with_kind("method_not_implemented")
    } else {
        RpcError::new("NotFound", format!("No route for '{name}'"))
    }
    .with_code(crate::wire::ErrorCode::Unimplemented);
    ApiError::client(StatusCode::NOT_FOUND, error).into_response()
}

async fn not_found() -> Response {
    ApiError::client(
        StatusCode::NOT_FOUND,
        RpcError::new("NotFound", "No such route").with_code(crate::wire::ErrorCode::NotFound),
    )
    .into_response()
}
