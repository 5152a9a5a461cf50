//! A real `spillway serve` configuration, in-process, on 127.0.0.1.

use std::sync::Arc;

use clap::Parser;
use spillway::cli::{Cli, Command};
use spillway::client::{Client, ClientConfig};
use spillway::server::Server;
use spillway::url_policy::UrlPolicy;
use spillway_storage_local::LocalStore;
use tempfile::TempDir;

/// One request as a [`TestServer::start_recording`] server received it.
#[derive(Debug, Clone)]
pub(crate) struct SeenRequest {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) authorization: Option<String>,
}

/// The requests a recording server received, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recorded(Arc<std::sync::Mutex<Vec<SeenRequest>>>);

impl Recorded {
    /// Everything received so far (and forgets it).
    pub(crate) fn take(&self) -> Vec<SeenRequest> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A server listening on 127.0.0.1, stopped when dropped.
pub(crate) struct TestServer {
    pub(crate) base: String,
    pub(crate) dir: TempDir,
    pub(crate) store: Option<Arc<LocalStore>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Starts `spillway serve` with these extra flags (parsed exactly as the CLI parses them).
    pub(crate) async fn start(flags: &[&str]) -> TestServer {
        Self::start_routed(flags, |r| r).await
    }

    /// Like [`TestServer::start`], recording every request's method, path and
    /// `Authorization` header as the server receives it.
    pub(crate) async fn start_recording(flags: &[&str]) -> (TestServer, Recorded) {
        let recorded = Recorded::default();
        let log = recorded.clone();
        let s = Self::start_routed(flags, move |router| {
            router.layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let log = log.clone();
                    async move {
                        log.0.lock().unwrap().push(SeenRequest {
                            method: req.method().to_string(),
                            path: req.uri().path().to_string(),
                            authorization: req
                                .headers()
                                .get(http::header::AUTHORIZATION)
                                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
                        });
                        next.run(req).await
                    }
                },
            ))
        })
        .await;
        (s, recorded)
    }

    /// Starts `spillway serve` with `flags`, its router passed through `wrap` (a test's own
    /// layer).
    pub(crate) async fn start_routed(
        flags: &[&str],
        wrap: impl FnOnce(axum::Router) -> axum::Router,
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let local_dir = dir.path().join("objects");
        Self::start_in(dir, &local_dir, flags, wrap).await
    }

    /// Starts `spillway serve` with its local store in `objects` (replicas sharing a volume
    /// pass the same directory).
    pub(crate) async fn start_sharing(objects: &std::path::Path, flags: &[&str]) -> TestServer {
        Self::start_in(tempfile::tempdir().unwrap(), objects, flags, |r| r).await
    }

    async fn start_in(
        dir: TempDir,
        local_dir: &std::path::Path,
        flags: &[&str],
        wrap: impl FnOnce(axum::Router) -> axum::Router,
    ) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let listen = format!("127.0.0.1:{port}");
        let mut argv = vec![
            "spillway",
            "serve",
            "--listen",
            &listen,
            "--local-dir",
            local_dir.to_str().unwrap(),
            // In-process: the records would go to the test binary's stderr, uncaptured.
            "--access-log",
            "off",
        ];
        argv.extend_from_slice(flags);
        let cli = Cli::try_parse_from(argv).unwrap();
        let Command::Serve(args) = cli.command else {
            unreachable!()
        };
        let (server, store) = args.build_server().await.unwrap();
        let base = format!(
            "http://127.0.0.1:{port}{}",
            args.server_config().unwrap().prefix
        );
        Self::serve_router(listener, wrap(server.router()), base, dir, store)
    }

    /// Starts `spillway serve` with `flags` followed by `extra` (owned flags, e.g. a storage
    /// backend's, and a test's own).
    pub(crate) async fn start_with(flags: Vec<String>, extra: &[&str]) -> TestServer {
        let mut flags = flags;
        flags.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
        TestServer::start(&refs).await
    }

    /// Serves `server` (built by the caller, without storage) on a random 127.0.0.1 port.
    pub(crate) async fn start_server(server: Server) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        Self::serve(listener, server, base, tempfile::tempdir().unwrap(), None)
    }

    /// Serves a server built by the caller.
    pub(crate) fn serve(
        listener: tokio::net::TcpListener,
        server: Server,
        base: String,
        dir: TempDir,
        store: Option<Arc<LocalStore>>,
    ) -> TestServer {
        Self::serve_router(listener, server.router(), base, dir, store)
    }

    fn serve_router(
        listener: tokio::net::TcpListener,
        router: axum::Router,
        base: String,
        dir: TempDir,
        store: Option<Arc<LocalStore>>,
    ) -> TestServer {
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        TestServer {
            base,
            dir,
            store,
            task,
        }
    }

    /// The server's root URL without the prefix.
    pub(crate) fn origin(&self) -> String {
        let u = url::Url::parse(&self.base).unwrap();
        u.origin().ascii_serialization()
    }

    /// A client of this server (prefix taken from `base`).
    pub(crate) fn client(&self) -> Client {
        self.client_with(ClientConfig::default())
    }

    /// A client of this server with `config` (its prefix and URL policy set for this server).
    pub(crate) fn client_with(&self, mut config: ClientConfig) -> Client {
        let u = url::Url::parse(&self.base).unwrap();
        config.prefix = u.path().trim_end_matches('/').to_string();
        config.fetch.policy = UrlPolicy::local_testing();
        Client::new(&self.origin(), config).unwrap()
    }

    /// `POST {base}/{protocol}/{method}` of raw bytes with the Arrow content type.
    pub(crate) async fn post(
        &self,
        protocol: &str,
        method: &str,
        body: Vec<u8>,
    ) -> reqwest::Response {
        crate::common::post_raw(&format!("{}/{protocol}/{method}", self.base), body).await
    }

    /// Number of stored objects.
    pub(crate) fn object_count(&self) -> usize {
        fn walk(p: &std::path::Path) -> usize {
            std::fs::read_dir(p)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| {
                            let path = e.path();
                            if path.is_dir() {
                                walk(&path)
                            } else {
                                1
                            }
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        walk(&self.dir.path().join("objects"))
    }
}
