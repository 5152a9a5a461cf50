//! vgi-rpc's own command line (`vgi-rpc`, from `vgi-rpc[cli]` 0.52.2, next to the Python in
//! `SPILLWAY_VGI_PYTHON`) and the reference's `http_introspect` against `spillway serve`,
//! unchanged: `describe` and `call` on unary methods in JSON, table and Arrow output work
//! because reflection is on by default; with `SPILLWAY_REFLECTION=false` they fail with the
//! server's `ProtocolNotSupportedError`, as they all did before.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{vgi_python, ServedBinary};

/// The `vgi-rpc` script of the venv `python` belongs to.
fn vgi_rpc(python: &Path) -> PathBuf {
    let cli = python.with_file_name("vgi-rpc");
    assert!(
        cli.exists(),
        "{} not found: the venv lacks vgi-rpc[cli] (scripts/vgi-reference.sh installs it)",
        cli.display()
    );
    cli
}

fn run(cli: &Path, url: &str, args: &[&str]) -> Output {
    Command::new(cli)
        .arg("--url")
        .arg(url)
        .args(args)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env("NO_COLOR", "1")
        .env("COLUMNS", "200")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn explain(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_vgi_rpc_cli_describes_and_calls_spillway_serve() {
    let Some(python) = vgi_python() else {
        return;
    };
    let cli = vgi_rpc(&python);
    let served = ServedBinary::start(&[]);
    let url = served.url.as_str();

    let out = run(&cli, url, &["--format", "json", "describe"]);
    assert!(out.status.success(), "{}", explain(&out));
    let described: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(described["protocol_name"], spillway::demo::PROTOCOL);
    for method in ["blob", "echo", "blob_stream"] {
        assert!(
            described["methods"].get(method).is_some(),
            "{method} missing: {described}"
        );
    }
    assert_eq!(described["methods"]["blob"]["method_type"], "unary");
    assert_eq!(described["methods"]["blob_stream"]["method_type"], "stream");
    assert_eq!(described["capabilities"]["upload_url_support"], true);

    let out = run(&cli, url, &["--format", "table", "describe"]);
    assert!(out.status.success(), "{}", explain(&out));
    let table = stdout(&out);
    assert!(
        table.contains("spillway.Demo.v1") && table.contains("blob(unary)"),
        "{table}"
    );

    // A unary call: JSON output carries the 100 bytes (as Python's bytes repr), and the table
    // output names the result column.
    let out = run(&cli, url, &["--format", "json", "call", "blob", "size=100"]);
    assert!(out.status.success(), "{}", explain(&out));
    let called: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let repr = called["result"].as_str().unwrap();
    assert!(repr.starts_with("b'") || repr.starts_with("b\""), "{repr}");
    let out = run(&cli, url, &["--format", "table", "call", "blob", "size=0"]);
    assert!(out.status.success(), "{}", explain(&out));
    assert!(stdout(&out).contains("result"), "{}", explain(&out));

    // Arrow output: the result batch itself, byte for byte what the demo generates.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob.arrow");
    let out = run(
        &cli,
        url,
        &[
            "--format",
            "arrow",
            "--output",
            file.to_str().unwrap(),
            "call",
            "blob",
            "size=4096",
        ],
    );
    assert!(out.status.success(), "{}", explain(&out));
    let bytes = std::fs::read(&file).unwrap();
    let stream = spillway::wire::read_stream(bytes.into(), Default::default()).unwrap();
    let data = stream
        .batches
        .iter()
        .find(|b| b.batch.num_rows() == 1)
        .expect("the result batch");
    assert_eq!(crate::common::binary_value(&data.batch).len(), 4096);

    // A server-side error: non-zero exit, the error as JSON on stderr.
    let out = run(&cli, url, &["--format", "json", "call", "blob", "size=-1"]);
    assert!(!out.status.success(), "{}", explain(&out));
    let error: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stderr).trim()).unwrap();
    assert_eq!(error["error"]["type"], "ValueError", "{}", explain(&out));
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("size must be >= 0"),
        "{}",
        explain(&out)
    );
}

#[test]
fn http_introspect_and_reflection_off() {
    let Some(python) = vgi_python() else {
        return;
    };
    let served = ServedBinary::start(&[]);
    let script = format!(
        "from vgi_rpc.http import http_introspect\n\
         d = http_introspect({url:?})\n\
         print(d.protocol_name, ','.join(sorted(d.methods)))\n",
        url = served.url
    );
    let out = Command::new(&python)
        .arg("-c")
        .arg(&script)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", explain(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("{} blob,blob_stream,echo", spillway::demo::PROTOCOL)
    );

    // Reflection off (the original failure): describe, and call (the CLI finds a
    // method's schema through describe), fail with the server's ProtocolNotSupportedError.
    let cli = vgi_rpc(&python);
    let off = ServedBinary::start(&[("SPILLWAY_REFLECTION", "false")]);
    for args in [
        &["describe"][..],
        &["--format", "json", "call", "blob", "size=1"],
    ] {
        let out = run(&cli, &off.url, args);
        assert!(!out.status.success(), "{args:?}: {}", explain(&out));
        let error: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stderr).trim()).unwrap();
        assert_eq!(
            error["error"]["type"], "ProtocolNotSupportedError",
            "{error}"
        );
        assert!(error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("vgi_rpc.Reflection.v1"));
    }
}
