//! `spillway call` on a large externalized result: the pointer is fetched in parallel ranges
//! and the one-line summary says how (size, time, throughput, chunks, retries, hedges); the
//! fetch flags are honoured. Runs the real binary against `spillway serve` on 127.0.0.1.

use crate::common::{call, ServedBinary};

fn chunks_in(summary: &str) -> u64 {
    let before = summary.split(" chunk").next().unwrap();
    before
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn call_fetches_a_large_result_in_ranges_and_summarizes() {
    let s = ServedBinary::start(&[("SPILLWAY_COMPRESSION", "none")]);
    let run = |extra: &[&str]| {
        let mut args = vec!["spillway.Demo.v1.blob", "size=20000000"];
        args.extend_from_slice(extra);
        let out = call(&s.url, &args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        stderr
            .lines()
            .find(|l| l.starts_with("externalized result:"))
            .unwrap_or_else(|| panic!("no summary in {stderr}"))
            .to_string()
    };
    // Default tuning: 20 MB is above the 8 MiB threshold: 8 ranges of 2.5 MB.
    let summary = run(&[]);
    assert!(summary.contains("19.1 MiB stored"), "{summary}");
    assert_eq!(chunks_in(&summary), 8, "{summary}");
    assert!(
        summary.contains("retries") || summary.contains("retry"),
        "{summary}"
    );
    assert!(
        summary.contains(" launched / ") && summary.contains(" won) from "),
        "{summary}"
    );
    assert!(!summary.contains("Signature"), "{summary}");
    // The flags reach the engine.
    let summary = run(&["--fetch-concurrency", "2", "--fetch-chunk-bytes", "4194304"]);
    assert_eq!(chunks_in(&summary), 5, "{summary}");
    let summary = run(&["--fetch-parallel-threshold-bytes", "100000000"]);
    assert_eq!(chunks_in(&summary), 1, "{summary}");
    // Not a terminal: no progress bar drawn.
    let out = call(&s.url, &["spillway.Demo.v1.blob", "size=20000000"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("fetching"));
}
