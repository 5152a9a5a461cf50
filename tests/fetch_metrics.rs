//! The fetch engine's counters, read through a recorder installed for this test binary (the
//! only test in it, so the process-wide counters are its own). The store is the embedded
//! local store over real HTTP on 127.0.0.1, behind the store shaper.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use spillway::fetch::{FetchConfig, Fetcher};
use spillway::url_policy::UrlPolicy;
use spillway_shaper::{Fault, FaultRule, Match, Shaper, ShaperConfig};
use spillway_storage::{PresignMethod, PutOptions, PutPayload, Storage};

use crate::common::StoreServer;

#[derive(Default)]
struct Counters(Mutex<HashMap<String, Arc<AtomicU64>>>);

struct Cell(Arc<AtomicU64>);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

struct Rec(Arc<Counters>);

fn key_text(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    if labels.is_empty() {
        key.name().to_string()
    } else {
        format!("{}{{{}}}", key.name(), labels.join(","))
    }
}

impl Recorder for Rec {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let cell = self
            .0
             .0
            .lock()
            .unwrap()
            .entry(key_text(key))
            .or_default()
            .clone();
        Counter::from_arc(Arc::new(Cell(cell)))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

impl Counters {
    fn get(&self, name: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .map(|c| c.load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

#[tokio::test]
async fn counters_track_bytes_retries_hedges_and_failures() {
    let counters = Arc::new(Counters::default());
    metrics::set_global_recorder(Rec(counters.clone())).unwrap();

    let server = StoreServer::start("m/", 9).await;
    let store = server.store.clone();
    let shaper = Shaper::start(ShaperConfig::transparent(server.origin.parse().unwrap()))
        .await
        .unwrap();
    let data: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let key = store.new_key();
    store
        .put(
            &key,
            PutPayload::Bytes(data.clone().into()),
            PutOptions::default(),
        )
        .await
        .unwrap();
    let url = store
        .presign(&key, PresignMethod::Get, Duration::from_secs(60))
        .await
        .unwrap();
    let url = shaper.rewrite(url.url.as_str());
    let fetcher = Fetcher::new(FetchConfig {
        policy: UrlPolicy::local_testing(),
        chunk_size: 64 * 1024,
        parallel_threshold: 128 * 1024,
        concurrency: 4,
        hedge_min_delay: Duration::from_millis(60),
        retry_base_delay: Duration::from_millis(5),
        ..Default::default()
    })
    .unwrap();
    shaper.add_fault(FaultRule::once(Match::NthRangeGet(1), Fault::Status(500)));
    shaper.add_fault(FaultRule::once(
        Match::NthRangeGet(3),
        Fault::Stall(Duration::from_secs(5)),
    ));
    let (object, stats) = tokio::time::timeout(
        Duration::from_secs(30),
        fetcher.fetch_with_stats(&url, None),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(object.encoded == data);
    assert_eq!(counters.get("spillway_fetch_retries_total"), 1);
    assert_eq!(
        counters.get("spillway_fetch_hedges_launched_total"),
        u64::from(stats.hedges_launched)
    );
    assert!(counters.get("spillway_fetch_hedges_launched_total") >= 1);
    assert_eq!(
        counters.get("spillway_fetch_hedges_won_total"),
        u64::from(stats.hedges_won)
    );
    assert!(stats.hedges_won >= 1);
    assert_eq!(
        counters.get("spillway_fetch_bytes_total"),
        stats.bytes_received
    );
    assert!(stats.bytes_received >= data.len() as u64);

    // A failure is counted by kind; the signed URL appears in no counter name.
    shaper.add_fault(FaultRule::once(Match::Probe, Fault::Status(404)));
    assert!(fetcher.fetch(&url, None).await.is_err());
    assert_eq!(
        counters.get("spillway_fetch_failures_total{kind=status}"),
        1
    );
    let names: Vec<String> = counters.0.lock().unwrap().keys().cloned().collect();
    assert!(names.iter().all(|n| !n.contains("Signature")), "{names:?}");
    drop(server);
}
