//! The serve loop: accepts TCP connections, terminates TLS when configured, and serves the
//! router over HTTP/1.1 and HTTP/2 (hyper-util's auto builder: by ALPN under TLS, by the
//! connection preface in the clear), until a shutdown signal, after which in-flight requests
//! finish.
//!
//! `spillway serve` runs its main and admin listeners through [`serve`]; a service built on
//! the library can too (or mount [`Server::router`](super::Server::router) in its own server,
//! which then has no [`PeerCertificate`]). Connection-level policy lives here and only here:
//! the TLS handshake and its timeout, the request extensions every request gets
//! ([`ConnectInfo`] with the peer address, and the [`PeerCertificate`] when the client
//! presented one), and the bounds that keep a crowd of slow or idle sockets from taking the
//! replica down, as fields of [`ServeOptions`], so plain and TLS listeners get them alike:
//! - at most `max_connections` open connections: past it, accepting pauses (new connections
//!   wait in the kernel's backlog) until one closes;
//! - a header read timeout: a connection that does not finish a request's headers within it
//!   is closed, and so is a keep-alive connection idle that long between requests;
//! - a minimum request-body rate ([`BodyRate`]): a body dribbled slower is cut off and the
//!   call answered 408.
//!
//! HTTP/2 is offered by ALPN under TLS and accepted with prior knowledge (h2c) in the clear,
//! as hyper-util's auto builder does.
//!
//! ```no_run
//! # async fn run() -> spillway::Result<()> {
//! use spillway::server::listener::{serve, ServeOptions};
//! use spillway::server::tls::{ServerTls, TlsConfig};
//! use spillway::server::{Server, ServerConfig};
//! let app = Server::new(ServerConfig::default()).try_router()?;
//! let tls = ServerTls::load(TlsConfig::new("/etc/tls/tls.crt", "/etc/tls/tls.key")).await?;
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8443").await?;
//! let shutdown = async {
//!     let _ = tokio::signal::ctrl_c().await;
//! };
//! serve(listener, app, ServeOptions::default().with_tls(tls), shutdown).await
//! # }
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

use super::body_rate::{BodyRate, RateLimited};
use super::tls::{PeerCertificate, ServerTls};
use crate::error::Result;

/// How long accepting pauses after an error that is not about one connection (e.g. out of
/// file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// How [`serve`] serves connections.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Serve HTTPS with this TLS setup; `None`: plain HTTP.
    pub tls: Option<ServerTls>,
    /// Most connections open at once (`None`: no limit).
    pub max_connections: Option<usize>,
    /// Longest wait for a request's headers, and for the next request on an idle keep-alive
    /// connection (`None`: no limit).
    pub header_timeout: Option<Duration>,
    /// The minimum request-body rate.
    pub body_rate: BodyRate,
}

impl Default for ServeOptions {
    /// 4096 connections, a 15 s header timeout, bodies at 1 KiB/s after 10 s.
    fn default() -> Self {
        ServeOptions {
            tls: None,
            max_connections: Some(4096),
            header_timeout: Some(Duration::from_secs(15)),
            body_rate: BodyRate::default(),
        }
    }
}

impl ServeOptions {
    /// Serve HTTPS with `tls`.
    pub fn with_tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, lets every
/// connection finish its in-flight requests (HTTP/1.1 closes after the current response,
/// HTTP/2 sends GOAWAY), and returns when the last one has closed. Bound the wait with a
/// timeout around this future.
///
/// A connection's failures (a TLS handshake that fails or times out, a peer that sends
/// garbage or resets) are logged at debug and end that connection only; with TLS, the
/// certificate files are watched for changes while this runs.
pub async fn serve<F>(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: F,
) -> Result<()>
where
    F: Future<Output = ()> + Send,
{
    // `stop` tells connections to wind down; each holds a `closed` receiver, and the loop
    // waits for the last one to be dropped.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (closed_tx, closed_rx) = watch::channel(());
    let _reloader = options.tls.as_ref().map(ServerTls::spawn_reloader);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if let Some(timeout) = options.header_timeout {
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(timeout);
        // HTTP/2 has no header timeout of its own: pings find peers that went away.
        builder
            .http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(timeout)
            .keep_alive_timeout(timeout);
    }
    let slots = options
        .max_connections
        .map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1))));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // At the limit, stop accepting until a connection closes: the kernel's backlog holds
        // the next ones, and nothing is accepted only to be dropped.
        let slot = match &slots {
            None => None,
            Some(slots) => {
                let permit = match slots.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        metrics::counter!("spillway_connection_limit_waits_total").increment(1);
                        tracing::debug!("connection limit reached; accepting pauses");
                        tokio::select! {
                            p = slots.clone().acquire_owned() => match p {
                                Ok(p) => p,
                                Err(_) => break,
                            },
                            () = &mut shutdown => break,
                        }
                    }
                };
                Some(permit)
            }
        };
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "accepting a connection failed; pausing");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Responses are written whole; Nagle would only delay their last segment.
        let _ = tcp.set_nodelay(true);
        let conn = Connection {
            app: app.clone(),
            builder: builder.clone(),
            tls: options.tls.clone(),
            remote,
            body_rate: options.body_rate,
            stop: stop_rx.clone(),
            _closed: closed_rx.clone(),
            _slot: slot.map(OpenConnection::new),
        };
        tokio::spawn(conn.run(tcp));
    }
    drop(listener);
    drop(closed_rx);
    let _ = stop_tx.send(true);
    closed_tx.closed().await;
    Ok(())
}

/// Errors that concern the one connection being accepted, not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One accepted connection and what it needs to be served.
struct Connection {
    app: Router,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<ServerTls>,
    remote: SocketAddr,
    body_rate: BodyRate,
    stop: watch::Receiver<bool>,
    /// Dropped when the connection is done: the serve loop waits for all of these.
    _closed: watch::Receiver<()>,
    /// The connection's place under `max_connections`.
    _slot: Option<OpenConnection>,
}

/// A counted open connection: its slot, and the open-connections gauge.
struct OpenConnection(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl OpenConnection {
    fn new(permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        metrics::gauge!("spillway_connections_open").increment(1.0);
        OpenConnection(permit)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("spillway_connections_open").decrement(1.0);
    }
}

impl Connection {
    async fn run(mut self, tcp: TcpStream) {
        let Some(tls) = self.tls.clone() else {
            self.serve_http(tcp, None).await;
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let timeout = tls.config().handshake_timeout;
        let remote = self.remote;
        let handshake = tokio::time::timeout(timeout, acceptor.accept(tcp));
        let stream = tokio::select! {
            done = handshake => match done {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    metrics::counter!("spillway_tls_handshake_failures_total", "reason" => "error")
                        .increment(1);
                    tracing::debug!(%remote, error = %e, "tls handshake failed");
                    return;
                }
                Err(_) => {
                    metrics::counter!("spillway_tls_handshake_failures_total", "reason" => "timeout")
                        .increment(1);
                    tracing::debug!(%remote, timeout_ms = timeout.as_millis() as u64, "tls handshake timed out");
                    return;
                }
            },
            // Shutting down: a connection that has sent no request yet has nothing to finish.
            _ = self.stop.wait_for(|stop| *stop) => return,
        };
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| PeerCertificate::new(chain.to_vec()));
        self.serve_http(stream, peer).await;
    }

    async fn serve_http<I>(mut self, io: I, peer: Option<PeerCertificate>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let app = self.app.clone();
        let remote = self.remote;
        let rate = self.body_rate;
        let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
            let extensions = req.extensions_mut();
            extensions.insert(ConnectInfo(remote));
            if let Some(peer) = &peer {
                extensions.insert(peer.clone());
            }
            let req = if rate.enabled() {
                req.map(|b| axum::body::Body::new(RateLimited::new(b, rate)))
            } else {
                req.map(axum::body::Body::new)
            };
            app.clone().oneshot(req)
        });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        let mut conn = std::pin::pin!(conn);
        let mut stopping = false;
        loop {
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(%remote, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = self.stop.wait_for(|stop| *stop), if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use axum::routing::get;
    use axum::Extension;
    use tokio::io::AsyncReadExt;
    use tokio::sync::{mpsc, oneshot};

    use super::*;
    use crate::server::tls::testing::Ca;
    use crate::server::tls::TlsConfig;

    /// Bound of every wait in these tests (a failure, not a synchronization).
    const DEADLINE: Duration = Duration::from_secs(20);

    struct Running {
        port: u16,
        stop: Option<oneshot::Sender<()>>,
        done: tokio::task::JoinHandle<Result<()>>,
        _dir: tempfile::TempDir,
    }

    async fn tls_for(
        ca: &Ca,
        client_ca: bool,
        handshake: Duration,
    ) -> (ServerTls, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let server = ca.server("listener");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, &server.cert).unwrap();
        std::fs::write(&key, &server.key).unwrap();
        let mut config = TlsConfig::new(&cert, &key);
        config.handshake_timeout = handshake;
        if client_ca {
            let path = dir.path().join("ca.pem");
            std::fs::write(&path, &ca.pem).unwrap();
            config = config.with_client_ca(path);
        }
        (ServerTls::load(config).await.unwrap(), dir)
    }

    async fn start(app: Router, tls: ServerTls, dir: tempfile::TempDir) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = oneshot::channel::<()>();
        let options = ServeOptions::default().with_tls(tls);
        let done = tokio::spawn(serve(listener, app, options, async {
            let _ = stopped.await;
        }));
        Running {
            port,
            stop: Some(stop),
            done,
            _dir: dir,
        }
    }

    #[tokio::test]
    async fn a_silent_client_is_dropped_at_the_handshake_timeout_and_others_are_served() {
        let ca = Ca::new();
        let (tls, dir) = tls_for(&ca, false, Duration::from_millis(200)).await;
        let app = Router::new().route("/", get(|| async { "ok" }));
        let s = start(app, tls, dir).await;
        let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
            .await
            .unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(DEADLINE, silent.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the silent connection was not closed: {read:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(150));
        let resp = ca
            .reqwest(None)
            .get(format!("https://127.0.0.1:{}/", s.port))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.text().await.unwrap(), "ok");
    }

    #[tokio::test]
    async fn handlers_see_the_peer_certificate_and_address() {
        let ca = Ca::new();
        let (tls, dir) = tls_for(&ca, true, Duration::from_secs(5)).await;
        let app = Router::new().route(
            "/",
            get(
                |peer: Option<Extension<PeerCertificate>>,
                 ConnectInfo(addr): ConnectInfo<SocketAddr>| async move {
                    let cert = peer.map(|Extension(p)| p.end_entity().len()).unwrap_or(0);
                    format!("{cert} {}", addr.ip())
                },
            ),
        );
        let s = start(app, tls, dir).await;
        let url = format!("https://127.0.0.1:{}/", s.port);
        let client = ca.client("someone");
        let with = ca.reqwest(Some(&client)).get(&url).send().await.unwrap();
        assert_eq!(
            with.text().await.unwrap(),
            format!("{} 127.0.0.1", client.der.len())
        );
        let without = ca.reqwest(None).get(&url).send().await.unwrap();
        assert_eq!(without.text().await.unwrap(), "0 127.0.0.1");
    }

    #[tokio::test]
    async fn on_shutdown_in_flight_requests_finish_and_new_connections_are_refused() {
        let ca = Ca::new();
        let (tls, dir) = tls_for(&ca, false, Duration::from_secs(5)).await;
        let (entered_tx, mut entered) = mpsc::channel::<()>(1);
        let (release_tx, release) = oneshot::channel::<()>();
        let release = Arc::new(tokio::sync::Mutex::new(Some(release)));
        let app = Router::new().route(
            "/slow",
            get(move || {
                let entered_tx = entered_tx.clone();
                let release = release.clone();
                async move {
                    let _ = entered_tx.send(()).await;
                    if let Some(r) = release.lock().await.take() {
                        let _ = r.await;
                    }
                    "finished"
                }
            }),
        );
        let mut s = start(app, tls, dir).await;
        let http = ca.reqwest(None);
        let url = format!("https://127.0.0.1:{}/slow", s.port);
        let call = tokio::spawn(async move { http.get(url).send().await?.text().await });
        tokio::time::timeout(DEADLINE, entered.recv())
            .await
            .unwrap()
            .unwrap();
        s.stop.take().unwrap().send(()).unwrap();
        // The listener closes...
        let start = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", s.port))
            .await
            .is_ok()
        {
            assert!(start.elapsed() < DEADLINE, "still accepting after shutdown");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // ...the loop waits for the call in flight...
        assert!(!s.done.is_finished());
        release_tx.send(()).unwrap();
        // ...which completes, and then the loop returns.
        let body = tokio::time::timeout(DEADLINE, call).await.unwrap().unwrap();
        assert_eq!(body.unwrap(), "finished");
        tokio::time::timeout(DEADLINE, s.done)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
