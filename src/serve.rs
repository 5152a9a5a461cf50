//! `spillway serve`: binds, runs the server through the one serve loop
//! ([`listener::serve`]: plain HTTP or TLS), and shuts down gracefully.

use std::time::Duration;

use crate::config::{spawn_retention_sweep, ServeArgs};
use crate::error::{Error, Result};
use crate::server::listener::{self, ServeOptions};
use crate::server::tls::ServerTls;

/// Runs `spillway serve` until SIGTERM or Ctrl-C (tracing must be set up by the caller).
pub async fn run(args: ServeArgs) -> Result<()> {
    tune_allocator();
    let (server, local) = args.build_server().await?;
    let tls = args.security.tls().await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener.local_addr()?;
    // Bound before "spillway serving" is logged: whoever waits for that line (a test, a
    // supervisor) may connect to both ports at once.
    let admin_listener = match args.admin_listen {
        Some(admin_addr) => Some(
            tokio::net::TcpListener::bind(admin_addr)
                .await
                .map_err(|e| Error::Config(format!("cannot listen on {admin_addr}: {e}")))?,
        ),
        None => None,
    };
    if !args.security.auth_enabled() && !addr.ip().is_loopback() {
        tracing::warn!(
            listen = %addr,
            "no authentication configured (SPILLWAY_AUTH) on a non-loopback address: anyone who can reach this port can call every method"
        );
    }
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
        tls = tls.is_some(),
        client_certificates = tls.as_ref().is_some_and(ServerTls::requests_client_certificates),
        "spillway serving protocol {}",
        crate::demo::PROTOCOL
    );
    let drain = server.drain_handle();
    let (app, admin) = server.try_into_routers()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Some(admin_listener) = admin_listener {
        tracing::info!(admin_listen = %admin_listener.local_addr()?, "admin endpoints: /livez /readyz /metrics");
        // Plain HTTP even when the main listener has TLS: the admin port is for probes and
        // the metrics scraper inside the cluster.
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move {
            let _ = listener::serve(admin_listener, admin, ServeOptions::default(), stop).await;
        });
    }
    let options = ServeOptions {
        tls,
        ..args.limits.serve_options()
    };
    let server = listener::serve(listener, app, options, stopped(stop_rx.clone()));
    let mut server = tokio::spawn(server);
    tokio::select! {
        r = &mut server => {
            return match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(Error::Internal(format!("server task failed: {e}"))),
            };
        }
        _ = shutdown_signal() => {}
    }
    // Readiness turns false and new calls get 503 + `Connection: close` at once, while the
    // listener stays open, so a client the load balancer still sends here is told to go
    // elsewhere instead of finding the port closed. When the calls in flight are done (or
    // the grace is over), the listener stops.
    drain.start();
    let grace = Duration::from_secs(args.shutdown_grace);
    let deadline = tokio::time::Instant::now() + grace;
    tracing::info!(
        in_flight = drain.in_flight(),
        "draining: waiting for calls in flight"
    );
    let _ = tokio::time::timeout_at(deadline, drain.idle()).await;
    let _ = stop_tx.send(true);
    match tokio::time::timeout_at(deadline, server).await {
        Ok(Ok(Ok(()))) => {
            tracing::info!("all in-flight calls finished; bye");
            Ok(())
        }
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(e)) => Err(Error::Internal(format!("server task failed: {e}"))),
        Err(_) => {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "in-flight calls still running after the shutdown grace; exiting"
            );
            Ok(())
        }
    }
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

/// Keeps glibc from holding on to freed result buffers. By default glibc raises its mmap
/// threshold (up to 32 MiB) each time a large mmapped block is freed, so the next 8 MiB
/// chunks and encoded bodies come from its heap arenas, which it rarely returns to the OS:
/// RSS then drifts 30-40 % above the memory the budget counts. A fixed 1 MiB threshold (and
/// trim threshold) keeps large buffers in mmaps, released when freed. `MALLOC_MMAP_THRESHOLD_`
/// in the environment wins (glibc has read it already).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        const ONE_MIB: libc::c_int = 1 << 20;
        // SAFETY: mallopt only sets allocator parameters; it is called once, before the
        // runtime's worker threads allocate anything large.
        let ok = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, ONE_MIB) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, ONE_MIB) == 1
        };
        if !ok {
            tracing::warn!(
                "could not set the allocator's mmap threshold; RSS may exceed the memory budget"
            );
        }
    }
}
