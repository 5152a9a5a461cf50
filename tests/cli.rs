//! The `spillway` binary: `serve` with no configuration, `call` against it, and one-line errors.

use std::process::Command;

use crate::common::{call, free_port, spawn_and_wait, ServedBinary, BIN};

#[test]
fn serve_with_no_configuration_and_call_shows_an_externalized_result() {
    let s = ServedBinary::start(&[]);
    let out = call(&s.url, &["spillway.Demo.v1.blob", "size=2000000"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("externalized result"), "{stderr}");
    assert!(!stderr.contains("X-Spillway-Signature"), "{stderr}");
    assert!(stdout.contains("<2000000 bytes:"), "{stdout}");

    let out = call(&s.url, &["spillway.Demo.v1.echo", "data:binary=hello"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("inline result"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("68656c6c6f"));

    // --output writes an Arrow IPC stream that reads back to the same value.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.arrows");
    let out = call(
        &s.url,
        &[
            "spillway.Demo.v1.echo",
            "data:binary=abc",
            "--output",
            file.to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    let bytes = std::fs::read(&file).unwrap();
    let stream = spillway::wire::read_stream(bytes.into(), Default::default()).unwrap();
    assert_eq!(stream.batches[0].batch.num_rows(), 1);
}

#[test]
fn errors_are_one_line_without_backtrace() {
    let s = ServedBinary::start(&[]);
    let closed = "http://127.0.0.1:1".to_string();
    for (url, args) in [
        (&s.url, vec!["spillway.Demo.v1.nope"]),
        (&s.url, vec!["spillway.Demo.v1.blob", "size=-1"]),
        (&s.url, vec!["spillway.Demo.v1.blob", "size:int64=abc"]),
        (&s.url, vec!["noDot"]),
        (&closed, vec!["spillway.Demo.v1.blob", "size=1"]),
    ] {
        let out = call(url, &args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert!(lines[0].starts_with("error: "), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
    }
}

#[test]
fn bad_configuration_is_refused_at_start() {
    for (k, v) in [
        ("SPILLWAY_COMPRESSION", "brotli"),
        ("SPILLWAY_SIGNING_SECRET", "short"),
        ("SPILLWAY_STORAGE", "s3"),
        ("SPILLWAY_MAX_REQUEST_BYTES", "100"),
    ] {
        let out = Command::new(BIN)
            .arg("serve")
            .env("SPILLWAY_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env(k, v)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{k}={v}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("error"), "{k}={v}: {stderr}");
        assert!(
            !stderr.contains(v) || k != "SPILLWAY_SIGNING_SECRET",
            "secret echoed"
        );
    }
}

#[test]
fn settings_come_from_env_and_flags_override() {
    let s = ServedBinary::start(&[("SPILLWAY_THRESHOLD_BYTES", "100000000")]);
    let out = call(&s.url, &["spillway.Demo.v1.blob", "size=2000000"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("inline result"));
    drop(s);
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_and_wait(
        Command::new(BIN)
            .args(["serve", "--threshold-bytes", "1000"])
            .env("SPILLWAY_THRESHOLD_BYTES", "100000000")
            .env("SPILLWAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("SPILLWAY_LOCAL_DIR", dir.path()),
    );
    let out = call(
        &format!("http://127.0.0.1:{port}"),
        &["spillway.Demo.v1.blob", "size=5000"],
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(String::from_utf8_lossy(&out.stderr).contains("externalized result"));
}
