//! Test support shared by every test crate of the workspace.
//!
//! The one rule for tests that need an outside server (LocalStack, the GCS emulator, the Python
//! reference): without its environment variable a test is *skipped* with a loud message, unless
//! `SPILLWAY_REQUIRE_SERVERS=1` (set by `./scripts/test.sh` and so by CI), where it *fails*.
//! A test never passes silently for lack of its server: the skip message goes to the process's
//! stderr, which the test harness does not capture.

use std::io::Write;
use std::path::PathBuf;

/// The variable that turns a missing test server from a skip into a failure.
pub const REQUIRE_SERVERS: &str = "SPILLWAY_REQUIRE_SERVERS";

/// The variable naming a Python with vgi-rpc 0.52.2 (`scripts/vgi-reference.sh python` prints
/// one), for the tests against the Python reference.
pub const VGI_PYTHON: &str = "SPILLWAY_VGI_PYTHON";

/// The variable that, like [`REQUIRE_SERVERS`], makes a missing [`VGI_PYTHON`] a failure
/// (`scripts/test.d/10-python-reference.env.sh` sets it).
pub const REQUIRE_PYTHON: &str = "SPILLWAY_REQUIRE_PYTHON";

/// Whether missing test servers are failures (`SPILLWAY_REQUIRE_SERVERS=1`).
pub fn servers_required() -> bool {
    flag_set(REQUIRE_SERVERS)
}

fn flag_set(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// The value of `var`, which names the server `what` (e.g. "LocalStack"); `None` (with a
/// message on stderr) when it is unset or empty, so the caller returns early and the test is
/// reported skipped.
///
/// # Panics
/// When the variable is missing and [`servers_required`]: the test must not pass without its
/// server.
///
/// ```
/// // (Under `SPILLWAY_REQUIRE_SERVERS=1` the call would fail this example, as it should.)
/// # if !spillway_test_support::servers_required() {
/// let endpoint = spillway_test_support::require_env("SPILLWAY_TEST_NO_SUCH_VAR", "nothing");
/// assert!(endpoint.is_none());
/// # }
/// ```
pub fn require_env(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            skip_or_fail(&format!("{var} is not set ({what})"));
            None
        }
    }
}

/// Every variable of `vars` (all needed for the server `what`), or `None` as [`require_env`].
pub fn require_envs<const N: usize>(vars: [&str; N], what: &str) -> Option<[String; N]> {
    let values: Vec<Option<String>> = vars
        .iter()
        .map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .collect();
    if values.iter().all(Option::is_some) {
        let mut out: [String; N] = std::array::from_fn(|_| String::new());
        for (slot, v) in out.iter_mut().zip(values) {
            *slot = v.unwrap_or_default();
        }
        return Some(out);
    }
    let missing: Vec<&str> = vars
        .iter()
        .zip(&values)
        .filter(|(_, v)| v.is_none())
        .map(|(name, _)| *name)
        .collect();
    skip_or_fail(&format!("{} not set ({what})", missing.join(", ")));
    None
}

/// The Python of [`VGI_PYTHON`], or `None` (with a message) as [`require_env`].
///
/// # Panics
/// When it is missing and [`servers_required`] or `SPILLWAY_REQUIRE_PYTHON=1`.
pub fn require_python() -> Option<PathBuf> {
    let what = "a Python with vgi-rpc 0.52.2: scripts/vgi-reference.sh python prints one";
    let set = std::env::var(VGI_PYTHON).is_ok_and(|v| !v.is_empty());
    if !set && flag_set(REQUIRE_PYTHON) {
        panic!("{REQUIRE_PYTHON}=1 but {VGI_PYTHON} is not set ({what})");
    }
    require_env(VGI_PYTHON, what).map(PathBuf::from)
}

/// Reports a test that cannot run here: a failure when servers are required, else a skip
/// message on stderr.
///
/// # Panics
/// When [`servers_required`].
pub fn skip_or_fail(reason: &str) {
    if servers_required() {
        panic!("{REQUIRE_SERVERS}=1 but {reason}: run ./scripts/test.sh, which starts the test servers");
    }
    // Not `eprintln!`: the test harness captures that and shows it only for failing tests.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: {reason}. Run ./scripts/test.sh to run this test. ***\n"
    );
}

/// `len` bytes of a repeatable pseudo-random sequence (xorshift64*, seeded): test payloads
/// that do not compress away and that a reader can regenerate to verify.
///
/// ```
/// let a = spillway_test_support::generated_bytes(1000, 7);
/// assert_eq!(a, spillway_test_support::generated_bytes(1000, 7));
/// assert_ne!(a, spillway_test_support::generated_bytes(1000, 8));
/// ```
pub fn generated_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A small tmpfs mounted on a fresh directory: a real filesystem that fills up, for the tests
/// of what happens when a disk is full. Unmounted (lazily, so a process that still holds a
/// file in it cannot keep it mounted) and its directory removed when dropped.
#[derive(Debug)]
pub struct SmallFs {
    path: PathBuf,
}

impl SmallFs {
    /// Mounts `bytes` of tmpfs, or `None` with a skip message when this machine does not let
    /// the test mount one (it needs root, or `CAP_SYS_ADMIN`, on Linux). That is the
    /// machine's property, not a missing server: it is a skip even under
    /// `SPILLWAY_REQUIRE_SERVERS=1`.
    pub fn mount(bytes: u64) -> Option<SmallFs> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("spillway-smallfs-{}-{n}", std::process::id()));
        if std::fs::create_dir_all(&path).is_err() {
            return Self::skip(&path, "cannot create a mount point");
        }
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0700"))
            .arg("spillway-test")
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            return Self::skip(&path, "mount -t tmpfs is not permitted here (needs root)");
        }
        Some(SmallFs { path })
    }

    fn skip(path: &std::path::Path, why: &str) -> Option<SmallFs> {
        let _ = std::fs::remove_dir(path);
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: {why}: this test needs a small real filesystem. ***\n"
        );
        None
    }

    /// The mount point.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Every file under `dir`, recursively (a directory that does not exist has none): for tests
/// that check what a store left on disk.
pub fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}
