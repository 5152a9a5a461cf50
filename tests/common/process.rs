//! The built `spillway` binary: spawned, waited for, and stopped by its own pid.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `spillway` binary of this build.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_spillway");

/// How long `spillway serve` gets to print its startup line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A port that was free a moment ago (the OS picks it; the listener is dropped at once).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind an ephemeral port on 127.0.0.1")
}

/// Spawns `cmd` (a `spillway serve`) with its stderr piped, and waits until it prints
/// "spillway serving"; its stderr is drained from then on, so the server never blocks on a
/// full pipe.
///
/// # Panics
/// When the line does not come within 30 s (the process is killed first).
pub(crate) fn spawn_and_wait(cmd: &mut Command) -> Child {
    spawn_and_wait_logged(cmd, None)
}

/// Every line a process wrote to stderr so far (see [`ServedBinary::start_logged`]).
pub(crate) type LogLines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// As [`spawn_and_wait`], keeping every stderr line in `keep` when given.
pub(crate) fn spawn_and_wait_logged(cmd: &mut Command, keep: Option<LogLines>) -> Child {
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(keep) = &keep {
                keep.lock().unwrap().push(line.clone());
            }
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("spillway serving") => return child,
            Ok(_) => continue,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("spillway serve did not start");
            }
        }
    }
}

/// A `spillway serve` process on 127.0.0.1 with a private object directory, killed (by its
/// own pid) when dropped.
pub(crate) struct ServedBinary {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub(crate) url: String,
    _dir: tempfile::TempDir,
}

impl Drop for ServedBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServedBinary {
    /// `spillway serve` configured by the environment only: the listen address, a private
    /// object directory (so parallel tests do not share one) and `env`; nothing inherited
    /// but `PATH`.
    pub(crate) fn start(env: &[(&str, &str)]) -> ServedBinary {
        Self::start_inner(env, None)
    }

    /// As [`ServedBinary::start`], keeping everything the server logs to stderr (for tests
    /// that check what reaches the log).
    pub(crate) fn start_logged(env: &[(&str, &str)]) -> (ServedBinary, LogLines) {
        let lines = LogLines::default();
        (Self::start_inner(env, Some(lines.clone())), lines)
    }

    /// The server's process id (for RSS samples and signals).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub(crate) fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -TERM failed");
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None` if it still runs.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// As [`ServedBinary::start`], the binary run by `wrapper` (a program and its first
    /// arguments, e.g. a shell that sets a resource limit and `exec`s the rest).
    pub(crate) fn start_wrapped(wrapper: &[&str], env: &[(&str, &str)]) -> ServedBinary {
        Self::start_in(wrapper, env, None)
    }

    fn start_inner(env: &[(&str, &str)], keep: Option<LogLines>) -> ServedBinary {
        Self::start_in(&[], env, keep)
    }

    fn start_in(wrapper: &[&str], env: &[(&str, &str)], keep: Option<LogLines>) -> ServedBinary {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = match wrapper.split_first() {
            None => Command::new(BIN),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
        };
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SPILLWAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("SPILLWAY_LOCAL_DIR", dir.path())
            .stdout(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        ServedBinary {
            child: spawn_and_wait_logged(&mut cmd, keep),
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

/// A `spillway serve` process whose stdout and stderr go to a file (for tests that read the
/// server's log), killed (by its own pid) when dropped.
pub(crate) struct LoggedServe {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub(crate) url: String,
    /// Where its output goes.
    pub(crate) log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for LoggedServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LoggedServe {
    /// `spillway serve` configured by `env` only (plus the listen address and a private
    /// object directory; nothing inherited but `PATH`), its output in a file; waits (polling
    /// the file, with a deadline) until it prints "spillway serving".
    pub(crate) fn start(env: &[(&str, &str)]) -> LoggedServe {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serve.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NO_COLOR", "1")
            .env("SPILLWAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("SPILLWAY_LOCAL_DIR", dir.path().join("objects"))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("spillway serving") {
                break;
            }
            let exited = child.try_wait().unwrap().is_some();
            if exited || Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("spillway serve did not start:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        LoggedServe {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    /// Everything it printed so far.
    pub(crate) fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `spillway call --url URL ARGS...` (whatever `SPILLWAY_PREFIX` the caller exported), run to
/// completion.
pub(crate) fn call(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("call")
        .arg("--url")
        .arg(url)
        .args(args)
        .env_remove("SPILLWAY_PREFIX")
        .output()
        .unwrap()
}

/// `spillway call --url URL ARGS...` with `env` only (nothing inherited but `PATH`: no
/// `SPILLWAY_*`, no proxy variables), run to completion.
pub(crate) fn call_clean(url: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("call")
        .arg("--url")
        .arg(url)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// A finished process's stdout and stderr, as text.
pub(crate) fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
