//! Shared harness: a real `spillway serve` configuration, in-process, on 127.0.0.1.
#![allow(dead_code)]

use std::sync::Arc;

use arrow_array::{BinaryArray, Int64Array, RecordBatch};
use arrow_schema::SchemaRef;
use clap::Parser;
use spillway::cli::{Cli, Command};
use spillway::client::{Client, ClientConfig};
use spillway::server::Server;
use spillway::url_policy::UrlPolicy;
use spillway::wire::{keys, write_stream, MetaBatch, Metadata, ARROW_STREAM_CONTENT_TYPE};
use spillway_storage_local::LocalStore;
use tempfile::TempDir;

/// A server listening on 127.0.0.1, stopped when dropped.
pub struct TestServer {
    pub base: String,
    pub dir: TempDir,
    pub store: Option<Arc<LocalStore>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Starts `spillway serve` with these extra flags (parsed exactly as the CLI parses them).
    pub async fn start(flags: &[&str]) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let listen = format!("127.0.0.1:{port}");
        let local_dir = dir.path().join("objects");
        let mut argv = vec![
            "spillway",
            "serve",
            "--listen",
            &listen,
            "--local-dir",
            local_dir.to_str().unwrap(),
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
        Self::serve(listener, server, base, dir, store)
    }

    /// Serves a server built by the caller.
    pub fn serve(
        listener: tokio::net::TcpListener,
        server: Server,
        base: String,
        dir: TempDir,
        store: Option<Arc<LocalStore>>,
    ) -> TestServer {
        let router = server.router();
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
    pub fn origin(&self) -> String {
        let u = url::Url::parse(&self.base).unwrap();
        u.origin().ascii_serialization()
    }

    /// A client of this server (prefix taken from `base`).
    pub fn client(&self) -> Client {
        self.client_with(ClientConfig::default())
    }

    pub fn client_with(&self, mut config: ClientConfig) -> Client {
        let u = url::Url::parse(&self.base).unwrap();
        config.prefix = u.path().trim_end_matches('/').to_string();
        config.fetch.policy = UrlPolicy::local_testing();
        Client::new(&self.origin(), config).unwrap()
    }

    /// Number of stored objects.
    pub fn object_count(&self) -> usize {
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

pub fn size_params(size: i64) -> RecordBatch {
    RecordBatch::try_new(
        spillway::demo::blob_params(),
        vec![Arc::new(Int64Array::from(vec![size]))],
    )
    .unwrap()
}

pub fn data_params(data: &[u8]) -> RecordBatch {
    RecordBatch::try_new(
        spillway::demo::echo_params(),
        vec![Arc::new(BinaryArray::from_vec(vec![data]))],
    )
    .unwrap()
}

pub fn binary_value(batch: &RecordBatch) -> Vec<u8> {
    batch
        .column(0)
        .as_any()
        .downcast_ref::<BinaryArray>()
        .unwrap()
        .value(0)
        .to_vec()
}

/// Request metadata for a demo method.
pub fn request_md(method: &str) -> Metadata {
    let mut md = Metadata::new();
    md.insert(keys::METHOD.into(), method.into());
    md.insert(keys::REQUEST_VERSION.into(), "1".into());
    md.insert(keys::PROTOCOL.into(), spillway::demo::PROTOCOL.into());
    md
}

/// An encoded request body.
pub fn request_body(schema: &SchemaRef, batch: RecordBatch, md: Metadata) -> Vec<u8> {
    write_stream(
        schema,
        &[MetaBatch {
            batch,
            metadata: md,
        }],
    )
    .unwrap()
}

/// POSTs raw bytes with the Arrow content type.
pub async fn post_raw(url: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("content-type", ARROW_STREAM_CONTENT_TYPE)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Reads the single EXCEPTION of an error response.
pub async fn error_of(resp: reqwest::Response) -> spillway::wire::RpcError {
    let bytes = resp.bytes().await.unwrap();
    let stream = spillway::wire::read_stream(bytes, Default::default()).unwrap();
    let b = stream
        .batches
        .iter()
        .find(|b| b.metadata.get(keys::LOG_LEVEL).map(String::as_str) == Some("EXCEPTION"))
        .expect("an EXCEPTION batch");
    spillway::wire::RpcError::from_metadata(&b.metadata)
}
