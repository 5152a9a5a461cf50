//! The running shaper: its listener, its state, and the connection it serves.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::Request;
use hyper::body::Incoming;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::{TcpListener, TcpStream};
use url::Url;

use crate::config::ShaperConfig;
use crate::conn::ResettableIo;
use crate::faults::{FaultRule, RequestRecord};
use crate::proxy::handle;

/// Most requests kept in the log.
pub(crate) const MAX_LOG: usize = 100_000;

/// What every connection of one shaper shares.
pub(crate) struct State {
    pub(crate) config: ShaperConfig,
    pub(crate) client: reqwest::Client,
    pub(crate) rules: Mutex<Vec<FaultRule>>,
    pub(crate) rng: Mutex<StdRng>,
    pub(crate) log: Mutex<Vec<RequestRecord>>,
    pub(crate) requests: AtomicU64,
    pub(crate) range_gets: AtomicU64,
    pub(crate) starts: Mutex<std::collections::HashMap<u64, u64>>,
    pub(crate) connections: AtomicU64,
    pub(crate) started: Instant,
}

/// A running shaper; stops when dropped.
pub struct Shaper {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Shaper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shaper {
    /// Listens on 127.0.0.1 (a free port) and proxies to `config.upstream`.
    pub async fn start(config: ShaperConfig) -> io::Result<Shaper> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .http1_only()
            .tcp_nodelay(true)
            .no_proxy()
            .build()
            .map_err(io::Error::other)?;
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let state = Arc::new(State {
            config,
            client,
            rules: Mutex::new(Vec::new()),
            rng: Mutex::new(rng),
            log: Mutex::new(Vec::new()),
            requests: AtomicU64::new(0),
            range_gets: AtomicU64::new(0),
            starts: Mutex::new(Default::default()),
            connections: AtomicU64::new(0),
            started: Instant::now(),
        });
        let accept_state = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                accept_state.connections.fetch_add(1, Ordering::Relaxed);
                let state = accept_state.clone();
                tokio::spawn(serve_connection(state, stream));
            }
        });
        Ok(Shaper { addr, state, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>/`.
    #[allow(clippy::expect_used)]
    pub fn base_url(&self) -> Url {
        // A constant, valid URL: parsing it cannot fail.
        let mut u = Url::parse("http://127.0.0.1/").expect("static url");
        let _ = u.set_port(Some(self.addr.port()));
        u
    }

    /// `url` with its scheme, host and port replaced by the shaper's (path and query kept).
    pub fn rewrite(&self, url: &str) -> String {
        match Url::parse(url) {
            Ok(mut u) => {
                let _ = u.set_scheme("http");
                let _ = u.set_host(Some("127.0.0.1"));
                let _ = u.set_port(Some(self.addr.port()));
                u.to_string()
            }
            Err(_) => url.to_string(),
        }
    }

    /// Adds a fault rule (rules are tried in the order added; the first match applies).
    pub fn add_fault(&self, rule: FaultRule) {
        lock(&self.state.rules).push(rule);
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        lock(&self.state.rules).clear();
    }

    /// Every request seen so far, in arrival order.
    pub fn log(&self) -> Vec<RequestRecord> {
        lock(&self.state.log).clone()
    }

    /// Requests seen so far.
    pub fn request_count(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// TCP connections accepted so far.
    pub fn connection_count(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }
}

/// A lock that survives a panicked holder (the data is a log and counters).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn serve_connection(state: Arc<State>, stream: TcpStream) {
    let reset = Arc::new(AtomicBool::new(false));
    let io = hyper_util::rt::TokioIo::new(ResettableIo {
        inner: stream,
        reset: reset.clone(),
    });
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        let reset = reset.clone();
        async move { handle(state, reset, req).await }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service)
        .await;
}
