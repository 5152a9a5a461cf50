//! `spillway top` in a real terminal: tmux runs it against a real `spillway serve` (with calls
//! going on), `capture-pane` reads the screen, `send-keys` types. Also a replica that is down,
//! one that answers garbage and one that hangs, and the snapshot printed when stdout is a pipe.
//! Without tmux these are skipped (they fail under `SPILLWAY_REQUIRE_SERVERS=1`).

use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{free_port, ServedBinary, BIN};

const SCREEN_DEADLINE: Duration = Duration::from_secs(60);
const BLOB: &str = "spillway.Demo.v1.blob";
const UNKNOWN: &str = "spillway.Demo.v1.unknown";

fn have_tmux() -> bool {
    let found = Command::new("tmux")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        spillway_test_support::skip_or_fail(
            "tmux is not installed (spillway top's terminal tests)",
        );
    }
    found
}

/// A private tmux server (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(cols: u16, rows: u16, command: &str) -> Tmux {
        let socket = format!("spillway-top-test-{}-{}", std::process::id(), free_port());
        let t = Tmux { socket };
        let ok = t
            .cmd()
            .args(["-f", "/dev/null", "new-session", "-d", "-s", "top"])
            .args(["-x", &cols.to_string(), "-y", &rows.to_string()])
            .arg(command)
            .status()
            .unwrap()
            .success();
        assert!(ok, "tmux new-session failed");
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn pane_flag(&self, flag: &str) -> String {
        let out = self
            .cmd()
            .args([
                "display-message",
                "-p",
                "-t",
                "top",
                &format!("#{{{flag}}}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn keys(&self, keys: &[&str]) {
        let ok = self
            .cmd()
            .args(["send-keys", "-t", "top"])
            .args(keys)
            .status()
            .unwrap()
            .success();
        assert!(ok, "tmux send-keys failed");
    }

    /// Polls the screen until `ok` holds, up to the deadline; the last screen otherwise.
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + SCREEN_DEADLINE;
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "screen never showed {what}:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").stderr(Stdio::null()).status();
    }
}

/// Calls `blob` twice for every call of a method that does not exist, until stopped (and at
/// most a few hundred calls), so every refresh window has calls and errors.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(url: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, url) = (stop.clone(), url.to_string());
        let thread = std::thread::spawn(move || {
            for i in 0..600 {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                let target = if i % 3 == 2 {
                    "spillway.Demo.v1.nosuch"
                } else {
                    BLOB
                };
                // `--kind`: no reflection lookup, so the unknown method reaches the server
                // (which counts it as `unknown`) instead of being refused by the CLI.
                let _ = Command::new(BIN)
                    .args(["call", "--kind", "unary", "--url", &url, target, "size=100"])
                    .env_clear()
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The line of the methods table that names `method` (its index on the screen).
fn row_of(screen: &str, method: &str) -> Option<usize> {
    screen.lines().position(|l| l.contains(method))
}

/// Both method rows are there with a number of calls per second.
fn rows_with_rates(screen: &str) -> bool {
    [BLOB, UNKNOWN].iter().all(|m| {
        screen
            .lines()
            .find(|l| l.contains(m))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|c| c.parse::<f64>().ok())
            .is_some_and(|v| v > 0.0)
    })
}

#[test]
fn top_in_tmux_shows_methods_sorts_and_quits_cleanly() {
    if !have_tmux() {
        return;
    }
    let server = ServedBinary::start(&[]);
    let _load = Load::start(&server.url);
    let down = format!("http://127.0.0.1:{}", free_port());
    let tmux = Tmux::start(
        200,
        50,
        &format!(
            "sh -c '{BIN} top --interval 1 {} {down}; echo top-exit=$?; exec cat'",
            server.url
        ),
    );
    let screen = tmux.wait_for("both methods with rates", rows_with_rates);
    assert!(screen.contains("sort: calls/s"), "{screen}");
    assert!(screen.contains("DOWN"), "the down replica:\n{screen}");
    assert!(screen.contains("refused"), "why it is down:\n{screen}");
    assert!(
        screen.contains("TOTAL") && screen.contains("1/2 up"),
        "{screen}"
    );
    assert!(screen.contains("P99") && screen.contains("ms"), "{screen}");
    assert_eq!(
        tmux.pane_flag("alternate_on"),
        "1",
        "the view is on the alternate screen"
    );
    // Twice as many blob calls as unknown ones: blob first by calls/s.
    let s = tmux.wait_for("blob above unknown by calls", |s| {
        rows_with_rates(s) && row_of(s, BLOB) < row_of(s, UNKNOWN)
    });
    assert!(s.contains("sort: calls/s"));
    tmux.keys(&["e"]);
    let s = tmux.wait_for("unknown above blob by errors", |s| {
        s.contains("sort: errors") && rows_with_rates(s) && row_of(s, UNKNOWN) < row_of(s, BLOB)
    });
    assert!(s.contains("ERR%"));
    tmux.keys(&["n"]);
    tmux.wait_for("sort by name", |s| {
        s.contains("sort: name") && row_of(s, BLOB) < row_of(s, UNKNOWN)
    });
    tmux.keys(&["q"]);
    let s = tmux.wait_for("the exit status", |s| s.contains("top-exit="));
    assert!(s.contains("top-exit=0"), "{s}");
    assert!(!s.contains(BLOB), "the view is gone after quitting:\n{s}");
    assert_eq!(
        tmux.pane_flag("alternate_on"),
        "0",
        "the terminal is restored"
    );
    assert_eq!(
        tmux.pane_flag("cursor_flag"),
        "1",
        "the cursor is visible again"
    );
}

#[test]
fn top_quits_on_esc_and_ctrl_c() {
    if !have_tmux() {
        return;
    }
    let server = ServedBinary::start(&[]);
    for key in ["Escape", "C-c"] {
        let tmux = Tmux::start(
            160,
            40,
            &format!(
                "sh -c '{BIN} top --interval 1 {}; echo top-exit=$?; exec cat'",
                server.url
            ),
        );
        tmux.wait_for("the view", |s| s.contains("REPLICA") && s.contains("TOTAL"));
        tmux.keys(&[key]);
        let s = tmux.wait_for("the exit status", |s| s.contains("top-exit="));
        assert!(s.contains("top-exit=0"), "{key}: {s}");
        assert_eq!(
            tmux.pane_flag("alternate_on"),
            "0",
            "{key}: terminal restored"
        );
    }
}

#[test]
fn top_snapshot_when_stdout_is_a_pipe_shows_every_replica_state() {
    let server = ServedBinary::start(&[]);
    // Calls before the snapshot, so the methods are listed.
    for target in [BLOB, "spillway.Demo.v1.nosuch"] {
        let _ = Command::new(BIN)
            .args([
                "call",
                "--kind",
                "unary",
                "--url",
                &server.url,
                target,
                "size=10",
            ])
            .env_clear()
            .output()
            .unwrap();
    }
    let down = format!("http://127.0.0.1:{}", free_port());
    // Accepts connections (the kernel's backlog) but never answers.
    let hang = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let hang_url = format!("http://{}", hang.local_addr().unwrap());
    // Answers 200 with something that is not an exposition.
    let garbage = format!("{}/livez", server.url);
    let out = Command::new(BIN)
        .args(["top", "--interval", "0.5", "--timeout", "1"])
        .args([&server.url, &down, &hang_url, &garbage])
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("REPLICA") && text.contains("1/4 up"),
        "{text}"
    );
    assert!(text.contains(BLOB) && text.contains(UNKNOWN), "{text}");
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle}:\n{text}"))
            .to_string()
    };
    assert!(line(&down["http://".len()..]).contains("refused"), "{text}");
    assert!(
        line(&hang_url["http://".len()..]).contains("no answer within 1.0 s"),
        "{text}"
    );
    assert!(
        line("/livez").contains("not a prometheus exposition: line 1"),
        "{text}"
    );
}

#[test]
fn top_needs_the_token_on_a_server_with_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "s3cr3t-top-token alice\n").unwrap();
    let server = ServedBinary::start(&[
        ("SPILLWAY_AUTH", "bearer"),
        ("SPILLWAY_AUTH_TOKENS_FILE", tokens.to_str().unwrap()),
    ]);
    let run = |env: &[(&str, &str)]| {
        let out = Command::new(BIN)
            .args(["top", "--once", "--interval", "0.2", &server.url])
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let without = run(&[]);
    assert!(
        without.contains("DOWN") && without.contains("401"),
        "{without}"
    );
    let with = run(&[("SPILLWAY_TOKEN", "s3cr3t-top-token")]);
    assert!(with.contains("1/1 up"), "{with}");
    assert!(
        !with.contains("s3cr3t"),
        "the token is never printed:\n{with}"
    );
}
