//! The real Python vgi-rpc client (0.52.2) with a bearer token against `spillway serve` with
//! bearer auth (`tests/python/interop_auth.py`): capability discovery, an externalized result
//! and the upload-URL flow work with
//! `http_connect(..., client=httpx2.Client(headers={"Authorization": "Bearer ..."}))`; the same
//! calls without a token, or with a wrong one, raise the client's AuthenticationError with the
//! reason. No token value reaches the server's log.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{vgi_python, LoggedServe};
use crate::python_interop::{read_to_string_lossy, run_with_deadline};

const TOKEN: &str = "python-client-token-0123456789";
const THRESHOLD_BYTES: u64 = 256 * 1024;
const MAX_REQUEST_BYTES: u64 = 512 * 1024;
/// How long the Python script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn python_client_with_a_bearer_token() {
    let Some(python) = vgi_python() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let tokens = work.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN} python\n")).unwrap();
    let server = LoggedServe::start(&[
        ("SPILLWAY_AUTH", "bearer"),
        ("SPILLWAY_AUTH_TOKENS_FILE", tokens.to_str().unwrap()),
        ("SPILLWAY_THRESHOLD_BYTES", &THRESHOLD_BYTES.to_string()),
        ("SPILLWAY_MAX_REQUEST_BYTES", &MAX_REQUEST_BYTES.to_string()),
        ("RUST_LOG", "debug"),
    ]);
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/interop_auth.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .arg(&port)
        .arg(TOKEN)
        .arg("--threshold")
        .arg(THRESHOLD_BYTES.to_string())
        .arg("--max-request-bytes")
        .arg(MAX_REQUEST_BYTES.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        // The client must reach the loopback server directly, never through a proxy.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    let out_path = work.path().join("interop_auth.out");
    let status = run_with_deadline(cmd, &out_path, SCRIPT_TIMEOUT);
    let output = read_to_string_lossy(&out_path);
    let log = server.output();
    assert!(
        status.is_some_and(|s| s.success()),
        "interop_auth.py failed ({status:?})\n--- script output ---\n{output}\n--- server log ---\n{}",
        log.lines().rev().take(60).collect::<Vec<_>>().join("\n")
    );
    eprintln!("--- interop_auth.py ---\n{output}");
    assert!(
        output.contains("AuthenticationError(missing_credential)"),
        "{output}"
    );
    assert!(
        output.contains("AuthenticationError(invalid_credential)"),
        "{output}"
    );
    assert!(log.contains("authentication rejected"), "{log}");
    assert!(!log.contains(TOKEN), "the server log holds the token");
    assert!(
        !log.contains("not-a-token-of-this-server"),
        "the server log holds a token"
    );
}
