//! `spillway call` on a large externalized result: the pointer is fetched in parallel ranges
//! and the one-line summary says how (size, time, throughput, chunks, retries, hedges); the
//! fetch flags are honoured. Runs the real binary against `spillway serve` on 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_spillway");

struct Served {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve() -> Served {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SPILLWAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("SPILLWAY_LOCAL_DIR", dir.path())
        .env("SPILLWAY_COMPRESSION", "none")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("spillway serving") => break,
            Ok(_) => continue,
            Err(_) => panic!("spillway serve did not start"),
        }
    }
    Served {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

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
    let s = serve();
    let run = |extra: &[&str]| {
        let out = Command::new(BIN)
            .args([
                "call",
                "--url",
                &s.url,
                "spillway.Demo.v1.blob",
                "size=20000000",
            ])
            .args(extra)
            .env_remove("SPILLWAY_PREFIX")
            .output()
            .unwrap();
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
    let out = Command::new(BIN)
        .args([
            "call",
            "--url",
            &s.url,
            "spillway.Demo.v1.blob",
            "size=20000000",
        ])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("fetching"));
}
