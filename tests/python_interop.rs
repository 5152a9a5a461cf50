//! Interoperability with the Python reference client (vgi-rpc 0.52.2).
//!
//! Starts the real `spillway serve` binary on a free loopback port with a temporary local store,
//! then runs `tests/python/interop_demo.py` with the interpreter in `SPILLWAY_VGI_PYTHON` (a
//! venv holding `vgi-rpc[http,external]==0.52.2`; `scripts/vgi-reference.sh python` makes one
//! and prints its path, and `scripts/test.sh` sets it). The script drives the demo protocol
//! with the real Python client: inline and externalized `blob`s, small and upload-URL `echo`s,
//! and an unknown method.
//!
//! Without `SPILLWAY_VGI_PYTHON` the tests say they are skipped, unless
//! `SPILLWAY_REQUIRE_SERVERS=1` or `SPILLWAY_REQUIRE_PYTHON=1`, where they fail.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{free_port, vgi_python, BIN};

const THRESHOLD_BYTES: u64 = 1024 * 1024;
const MAX_REQUEST_BYTES: u64 = 4 * 1024 * 1024;
/// How long the server gets to answer `/health` after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the Python script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);
/// Attempts at starting the server (a free port may be taken before the server binds it).
const START_ATTEMPTS: usize = 5;

pub(crate) fn read_to_string_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Last `n` lines of a text.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `GET /health` over a plain TCP connection; true when this server answers 200 with the
/// demo protocol's name.
fn health_ok(addr: SocketAddr) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.set_write_timeout(Some(Duration::from_secs(2)))?;
        write!(
            stream,
            "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let response = String::from_utf8_lossy(&response);
        Ok(response.starts_with("HTTP/1.1 200") && response.contains("spillway.Demo.v1"))
    };
    attempt().unwrap_or(false)
}

/// A running `spillway serve`; killed (by its own pid) when dropped.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Server {
    /// Starts the server with a local store in `local_dir` and waits until `/health` answers.
    fn start(work: &Path, local_dir: &Path, compression: Option<&str>) -> Server {
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port();
            let log = work.join(format!("server-{attempt}.log"));
            let log_file = File::create(&log).expect("create the server log file");
            let mut cmd = Command::new(BIN);
            // Settings come from the command line only, whatever SPILLWAY_* the caller exported.
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("SPILLWAY_") {
                    cmd.env_remove(&key);
                }
            }
            cmd.arg("serve")
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--local-dir")
                .arg(local_dir)
                .arg("--threshold-bytes")
                .arg(THRESHOLD_BYTES.to_string())
                .arg("--max-request-bytes")
                .arg(MAX_REQUEST_BYTES.to_string())
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("clone the log file handle"))
                .stderr(log_file);
            if let Some(c) = compression {
                cmd.arg("--compression").arg(c);
            }
            let child = cmd.spawn().expect("start the spillway binary");
            let mut server = Server { child, port, log };
            match server.wait_ready() {
                Ok(()) => return server,
                Err(why) => {
                    failures.push(format!(
                        "attempt {attempt} (port {port}): {why}\n--- server log ---\n{}",
                        tail(&read_to_string_lossy(&server.log), 40)
                    ));
                    // `server` is dropped here, which kills it if it is still running.
                }
            }
        }
        panic!(
            "spillway serve did not become ready in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// Polls `/health` until it answers, the process exits, or the deadline passes.
    fn wait_ready(&mut self) -> Result<(), String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("the server exited early with {status}"));
            }
            if health_ok(addr) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("/health did not answer within {READY_TIMEOUT:?}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Runs a command to completion with a deadline, output to `out` (stdout and stderr together).
pub(crate) fn run_with_deadline(
    mut cmd: Command,
    out: &Path,
    timeout: Duration,
) -> Option<ExitStatus> {
    let file = File::create(out).expect("create the script output file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone the output file handle"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the script") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a server with the given object compression and runs the Python script against it.
fn interop(compression: Option<&str>, object_encoding: &str) {
    let Some(python) = vgi_python() else {
        return;
    };
    let work = tempfile::tempdir().expect("create a temp dir");
    let local_dir = work.path().join("objects");
    std::fs::create_dir_all(&local_dir).expect("create the local store dir");
    let server = Server::start(work.path(), &local_dir, compression);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/interop_demo.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .arg(server.port.to_string())
        .arg("--threshold")
        .arg(THRESHOLD_BYTES.to_string())
        .arg("--max-request-bytes")
        .arg(MAX_REQUEST_BYTES.to_string())
        .arg("--local-dir")
        .arg(&local_dir)
        .arg("--object-encoding")
        .arg(object_encoding)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        // The client must reach the loopback server directly, never through a proxy.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    let out_path = work.path().join("interop.out");
    let status = run_with_deadline(cmd, &out_path, SCRIPT_TIMEOUT);
    let output = read_to_string_lossy(&out_path);
    let label = compression.unwrap_or("default");
    match status {
        Some(s) if s.success() => {
            eprintln!("--- interop_demo.py (compression {label}) ---\n{output}");
        }
        _ => {
            let what = match status {
                Some(s) => format!("exited with {s}"),
                None => format!("timed out after {SCRIPT_TIMEOUT:?}"),
            };
            panic!(
                "interop_demo.py against spillway serve (compression {label}) {what}\n\
                 python: {}\n--- script output ---\n{output}\n--- server log (last 60 lines) ---\n{}",
                python.display(),
                tail(&read_to_string_lossy(&server.log), 60)
            );
        }
    }
    drop(server);
}

#[test]
fn python_client_interop_default_compression() {
    interop(None, "zstd");
}

#[test]
fn python_client_interop_no_compression() {
    interop(Some("none"), "none");
}
