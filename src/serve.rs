//! `spillway serve`: binds, runs the server, and shuts down gracefully.

use std::time::Duration;

use crate::config::{spawn_retention_sweep, ServeArgs};
use crate::error::{Error, Result};

/// Runs `spillway serve` until SIGTERM or Ctrl-C (tracing must be set up by the caller).
pub async fn run(args: ServeArgs) -> Result<()> {
    let (server, local) = args.build_server().await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener.local_addr()?;
    if let Some(store) = local {
        spawn_retention_sweep(store, Duration::from_secs(args.store.local_retention));
    }
    tracing::info!(
        listen = %addr,
        public_url = %args.public_url()?,
        prefix = %args.prefix,
        storage = ?args.store.storage,
        threshold_bytes = args.threshold_bytes,
        compression = %args.compression,
        "spillway serving protocol {}",
        crate::demo::PROTOCOL
    );
    axum::serve(listener, server.router())
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight calls");
}
