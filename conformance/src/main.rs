//! `spillway-conformance`: serves vgi-rpc's `ConformanceService` on Spillway for the reference
//! conformance suite. Listens on 127.0.0.1, prints `PORT:<n>` once listening, serves until
//! SIGTERM or Ctrl-C.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use spillway::server::Server;
use spillway_conformance::catalog::Catalog;
use spillway_conformance::flags::{Flags, MAX_OBJECT_BYTES};
use spillway_conformance::methods::{protocols, Worker};
use spillway_conformance::storage::FakeStorage;
use spillway_conformance::Result;
use spillway_storage::Storage;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(Flags::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spillway-conformance: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(flags: Flags) -> Result<()> {
    let config = flags.server_config()?;
    let storage: Option<Arc<dyn Storage>> = match &flags.fake_storage {
        Some(url) => Some(Arc::new(FakeStorage::connect(url, MAX_OBJECT_BYTES).await?)),
        None => None,
    };
    let worker = Arc::new(Worker::new(
        Catalog::load()?,
        storage.clone(),
        flags.object_compression()?,
    ));
    // The reference worker runs with enable_describe=True: reflection is always on.
    let mut server = Server::new(config).with_reflection(true);
    for protocol in protocols(&worker)? {
        server = server.with_protocol(protocol);
    }
    if let Some(storage) = storage {
        server = server.with_storage(storage);
    }
    if flags.reject_all_auth {
        server = server.with_authenticator(Arc::new(spillway_conformance::auth::RejectAll));
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", flags.port)).await?;
    let port = listener.local_addr()?.port();
    // The runner reads this line to find the server; nothing else goes to stdout.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "PORT:{port}")?;
    stdout.flush()?;
    drop(stdout);
    axum::serve(listener, server.router())
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

/// Resolves on SIGTERM (how the runner stops the worker) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
