//! Benchmark, run by hand (ignored by `cargo test`): externalize one large result to
//! LocalStack through the S3 store and report where the time and memory went.
//!
//! ```sh
//! scripts/localstack.sh start && eval "$(scripts/localstack.sh env)"
//! SPILLWAY_TEST_S3_ENDPOINT=$AWS_ENDPOINT_URL \
//!   cargo test --release --test servers s3_bench:: -- --ignored --nocapture --test-threads=1
//! ```
//!
//! Settings (environment): `SPILLWAY_BENCH_BYTES` (result size, default 512 MiB),
//! `SPILLWAY_BENCH_RUNS` (runs per configuration, default 3), `SPILLWAY_BENCH_CONN_RATE`
//! (bytes per second each connection may upload in the "shaped" runs, default 64 MiB/s; 0 skips
//! them). The shaped runs put a TCP proxy in front of LocalStack that paces every connection's
//! upload, as a real store's per-connection throughput does; on loopback the unshaped runs are
//! bound by CPU (LocalStack's and ours), not by the network.
//!
//! Per run: the externalizer's stage times (`Externalized.timings`: IPC encode, sha256, zstd,
//! upload, wall time) and the process's peak RSS during the run (Linux `VmHWM`, reset before
//! each run), against the result size. The result batch itself is allocated before the runs
//! and counts in the peak, as it does in a server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spillway::externalize::{Compression, ExternalizeConfig, Externalizer};
use spillway::wire::MetaBatch;
use spillway_storage::{Storage, StoreSettings};
use spillway_storage_s3::{S3Args, S3Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MIB: u64 = 1024 * 1024;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resets the peak RSS (`VmHWM`) of this process.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A TCP proxy to `upstream` that paces each connection's client-to-store bytes at `rate`
/// bytes per second (no credit builds up while a connection is idle).
async fn pacing_proxy(upstream: SocketAddr, rate: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(store) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = store.set_nodelay(true);
                let (mut client_r, mut client_w) = client.into_split();
                let (mut store_r, mut store_w) = store.into_split();
                let down = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut store_r, &mut client_w).await;
                    let _ = client_w.shutdown().await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                let mut start = Instant::now();
                let mut sent = 0u64;
                loop {
                    let n = match client_r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let now = Instant::now();
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    if now > start + due {
                        // Idle time gives no credit.
                        start = now - due;
                    }
                    if store_w.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent += n as u64;
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    let elapsed = start.elapsed();
                    // Sleep only once ahead by a few ms: timer granularity would otherwise
                    // slow every 64 KiB write down by far more than the rate asks.
                    if due > elapsed + Duration::from_millis(5) {
                        tokio::time::sleep(due - elapsed).await;
                    }
                }
                let _ = store_w.shutdown().await;
                let _ = down.await;
            });
        }
    });
    addr
}

async fn store(endpoint: &str, bucket: &str, tweak: impl FnOnce(&mut S3Args)) -> S3Store {
    let mut args = S3Args {
        s3_endpoint: Some(endpoint.parse().unwrap()),
        s3_region: Some("us-east-1".into()),
        s3_path_style: true,
        ..S3Args::default()
    };
    tweak(&mut args);
    S3Store::connect(
        &args,
        &StoreSettings {
            bucket: Some(bucket.into()),
            key_prefix: "bench/".into(),
            max_object_bytes: 64 * 1024 * MIB,
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand, see the module docs"]
async fn externalize_a_large_result_to_localstack() {
    let Ok(ep) = std::env::var("SPILLWAY_TEST_S3_ENDPOINT") else {
        panic!("set SPILLWAY_TEST_S3_ENDPOINT (scripts/localstack.sh start)");
    };
    let size = env_u64("SPILLWAY_BENCH_BYTES", 512 * MIB);
    let runs = env_u64("SPILLWAY_BENCH_RUNS", 3);
    let rate = env_u64("SPILLWAY_BENCH_CONN_RATE", 64 * MIB);
    let bucket = format!("spillway-bench-{:08x}", rand::random::<u32>());
    let direct = store(&ep, &bucket, |_| {}).await;
    direct
        .client()
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let shaped_ep = if rate > 0 {
        let upstream: SocketAddr = {
            let u = url::Url::parse(&ep).unwrap();
            format!("{}:{}", u.host_str().unwrap(), u.port().unwrap())
                .parse()
                .unwrap()
        };
        Some(format!("http://{}", pacing_proxy(upstream, rate).await))
    } else {
        None
    };

    let idle_rss = proc_status_kib("VmRSS:");
    let batch =
        spillway::demo::binary_result_batch(spillway::demo::generate_blob(size as usize, 7))
            .unwrap();
    let schema = batch.schema();
    println!(
        "\nresult: {} MiB of incompressible bytes in one binary value; process RSS before it {} MiB, with it {} MiB",
        size / MIB,
        idle_rss / 1024,
        proc_status_kib("VmRSS:") / 1024
    );
    // The IPC encoder alone, into a sink: what the externalizer's first stage holds on top of
    // the batch.
    reset_peak_rss();
    let before = proc_status_kib("VmRSS:") * 1024;
    let mut writer =
        spillway::wire::IpcStreamWriter::try_new(std::io::sink(), schema.clone()).unwrap();
    writer
        .write(&batch, &spillway::wire::Metadata::new())
        .unwrap();
    writer.finish().unwrap();
    let peak = proc_status_kib("VmHWM:") * 1024;
    println!(
        "arrow ipc encoding alone (into io::sink): peak RSS {} MiB = {} MiB more than before it",
        peak / MIB,
        peak.saturating_sub(before) / MIB
    );
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>10} {:>7}",
        "configuration",
        "wall ms",
        "encode",
        "sha256",
        "compress",
        "enc.wait",
        "upload",
        "peak MiB",
        "peak/x"
    );
    let mut configs: Vec<(String, String, S3Args)> = Vec::new();
    let base = |threshold: u64, concurrency: usize| S3Args {
        s3_multipart_threshold: threshold,
        s3_upload_concurrency: concurrency,
        ..S3Args::default()
    };
    let mut endpoints = vec![("loopback".to_string(), ep.clone())];
    if let Some(s) = &shaped_ep {
        endpoints.push((format!("{} MiB/s/conn", rate / MIB), s.clone()));
    }
    for (name, endpoint) in &endpoints {
        configs.push((
            format!("{name}, multipart 8 MiB x4"),
            endpoint.clone(),
            base(16 * MIB, 4),
        ));
        configs.push((
            format!("{name}, multipart 8 MiB x8"),
            endpoint.clone(),
            base(16 * MIB, 8),
        ));
        configs.push((
            format!("{name}, single PUT"),
            endpoint.clone(),
            base(5 * 1024 * MIB, 1),
        ));
    }
    for compression in [Compression::Zstd(3), Compression::None] {
        for (label, endpoint, args) in &configs {
            let s: Arc<dyn Storage> = Arc::new(
                store(endpoint, &bucket, |a| {
                    a.s3_multipart_threshold = args.s3_multipart_threshold;
                    a.s3_upload_concurrency = args.s3_upload_concurrency;
                })
                .await,
            );
            let externalizer = Externalizer::new(
                s.clone(),
                ExternalizeConfig {
                    threshold_bytes: 1,
                    compression,
                    ..ExternalizeConfig::default()
                },
            );
            for _ in 0..runs {
                reset_peak_rss();
                let ext = externalizer
                    .externalize(
                        &schema,
                        vec![MetaBatch::plain(batch.clone())],
                        size,
                        "bench",
                    )
                    .await
                    .unwrap();
                let peak = proc_status_kib("VmHWM:") * 1024;
                let t = ext.timings;
                let ms = |d: Duration| d.as_secs_f64() * 1000.0;
                println!(
                    "{:<34} {:>8.0} {:>8.0} {:>8.0} {:>9.0} {:>9.0} {:>9.0} {:>10} {:>7.2}",
                    format!("{label}, {compression}"),
                    ms(ext.elapsed),
                    ms(t.encode),
                    ms(t.hash),
                    ms(t.compress),
                    ms(t.upload_wait),
                    ms(t.upload),
                    peak / MIB,
                    peak as f64 / size as f64
                );
                let key = s.key_from_url(&ext.url.url).unwrap();
                s.delete(&key).await.unwrap();
            }
        }
    }
}
