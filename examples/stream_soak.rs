//! Soak: stream `count` cycles of `size` bytes from `spillway.Demo.v1.blob_stream` through
//! externalization and report throughput and the server's peak memory.
//!
//! ```sh
//! SPILLWAY_COMPRESSION=none ./target/release/spillway serve &   # note its pid
//! cargo run --release --example stream_soak -- --server-pid <pid> --count 160 --size 67108864
//! ```
//! The server's resident set is sampled from /proc every 50 ms (Linux).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{Array, BinaryArray, Int64Array, RecordBatch};
use spillway::client::{CallRequest, Client, ClientConfig};
use spillway::url_policy::UrlPolicy;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn rss_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::main]
async fn main() -> spillway::Result<()> {
    let url = arg("--url", "http://127.0.0.1:8080");
    let count: i64 = arg("--count", "160").parse().unwrap_or(160);
    let size: i64 = arg("--size", "67108864").parse().unwrap_or(64 << 20);
    let verify_every: i64 = arg("--verify-every", "16").parse().unwrap_or(16);
    let pid = arg("--server-pid", "");
    let peak = Arc::new(AtomicU64::new(0));
    if !pid.is_empty() {
        let (peak, pid) = (peak.clone(), pid.clone());
        tokio::spawn(async move {
            loop {
                if let Some(kib) = rss_kib(&pid, "VmRSS:") {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    let mut config = ClientConfig::default();
    config.fetch.policy = UrlPolicy::local_testing();
    let client = Client::new(&url, config)?;
    let params = RecordBatch::try_new(
        spillway::demo::blob_stream_params(),
        vec![
            Arc::new(Int64Array::from(vec![count])),
            Arc::new(Int64Array::from(vec![size])),
        ],
    )?;
    let started = Instant::now();
    let mut stream = client
        .open_stream(CallRequest::new(
            spillway::demo::PROTOCOL,
            "blob_stream",
            params,
        ))
        .await?;
    let (mut cycles, mut bytes, mut externalized) = (0i64, 0u64, 0i64);
    while let Some(b) = stream.next().await? {
        let index = b
            .batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .map(|a| a.value(0));
        let data = b
            .batch
            .column(1)
            .as_any()
            .downcast_ref::<BinaryArray>()
            .map(|a| a.value(0).to_vec());
        let (Some(index), Some(data)) = (index, data) else {
            return Err(spillway::Error::Protocol("unexpected batch layout".into()));
        };
        if index != cycles || data.len() as i64 != size {
            return Err(spillway::Error::Protocol(format!(
                "cycle {cycles}: got index {index}, {} bytes",
                data.len()
            )));
        }
        if verify_every > 0
            && index % verify_every == 0
            && data != spillway::demo::generate_blob(size as usize, index as u64)
        {
            return Err(spillway::Error::Protocol(format!(
                "cycle {index}: wrong bytes"
            )));
        }
        externalized += i64::from(b.externalized.is_some());
        bytes += data.len() as u64;
        cycles += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "cycles={cycles} externalized={externalized} bytes={bytes} ({:.2} GiB) time={secs:.1}s throughput={:.1} MiB/s",
        bytes as f64 / (1u64 << 30) as f64,
        bytes as f64 / (1u64 << 20) as f64 / secs
    );
    if !pid.is_empty() {
        println!(
            "server peak RSS sampled={:.1} MiB, VmHWM={:.1} MiB",
            peak.load(Ordering::Relaxed) as f64 / 1024.0,
            rss_kib(&pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0
        );
    }
    Ok(())
}
