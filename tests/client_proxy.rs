//! The client behind a real forward proxy (squid, `SPILLWAY_TEST_SQUID` names its binary;
//! `scripts/test.d/40-squid.env.sh` sets it): RPC requests of `spillway call` follow
//! `HTTP_PROXY`/`NO_PROXY`, an explicit [`ClientProxy::Url`] is used, and pointer downloads
//! and upload PUTs never go through a proxy (the URL policy judges their addresses).
//!
//! (Squid, not tinyproxy: tinyproxy answers HTTP/1.1 without `Connection: close` and then
//! closes the connection, so a keep-alive client's next POST on it fails now and then.)

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spillway::client::{BearerToken, ClientConfig, ClientProxy};
use spillway::demo;

use crate::common::{blob, call_clean, echo, free_port, output_text, LoggedServe, TestServer};

const TOKEN: &str = "proxy-test-token-0123456789";
/// How long squid gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A squid on 127.0.0.1 (no cache) logging every request to a file; killed (by its own pid)
/// when dropped.
struct Squid {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Squid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Squid {
    /// Starts one, or reports the test skipped (fails under `SPILLWAY_REQUIRE_SERVERS=1`).
    fn start() -> Option<Squid> {
        let bin = spillway_test_support::require_env(
            "SPILLWAY_TEST_SQUID",
            "the squid binary (apt-get install squid; scripts/test.sh finds it)",
        )?;
        let dir = tempfile::tempdir().unwrap();
        // Started as root, squid writes its logs as its own user.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let port = free_port();
        let log = dir.path().join("access.log");
        let conf = dir.path().join("squid.conf");
        let d = dir.path().display();
        std::fs::write(
            &conf,
            format!(
                "http_port 127.0.0.1:{port}\nhttp_access allow all\ncache deny all\n\
                 access_log stdio:{}\ncache_log {d}/cache.log\npid_filename none\n\
                 coredump_dir {d}\nlogfile_rotate 0\nshutdown_lifetime 0 seconds\n\
                 pinger_enable off\nvisible_hostname spillway-test\n",
                log.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(bin)
            .arg("-N")
            .arg("-f")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if child.try_wait().unwrap().is_some() || Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "squid did not start:\n{}",
                    read(&dir.path().join("cache.log"))
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Squid {
            child,
            port,
            log,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The requests it proxied, as `METHOD URL` (squid logs a request when it completes).
    fn requests(&self) -> Vec<String> {
        read(&self.log)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 6).then(|| format!("{} {}", f[5], f[6]))
            })
            .collect()
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Bearer auth, externalizing above 64 KiB, uploads above 64 KiB.
fn server(dir: &Path) -> LoggedServe {
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("{TOKEN} proxied\n")).unwrap();
    LoggedServe::start(&[
        ("SPILLWAY_AUTH", "bearer"),
        ("SPILLWAY_AUTH_TOKENS_FILE", tokens.to_str().unwrap()),
        ("SPILLWAY_THRESHOLD_BYTES", "65536"),
        ("SPILLWAY_MAX_REQUEST_BYTES", "65536"),
    ])
}

#[test]
fn spillway_call_sends_rpc_requests_through_http_proxy_and_storage_requests_direct() {
    let Some(proxy) = Squid::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path());
    let input = dir.path().join("input.bin");
    std::fs::write(&input, spillway_test_support::generated_bytes(150_000, 3)).unwrap();
    let data = format!("data:binary=@{}", input.display());
    let env = [
        ("HTTP_PROXY", proxy.url()),
        ("SPILLWAY_TOKEN", TOKEN.into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // An externalized result, then a request through the upload-URL flow.
    let out = call_clean(&s.url, &["spillway.Demo.v1.blob", "size=200000"], &env);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("externalized result"),
        "{}",
        output_text(&out)
    );
    let out = call_clean(&s.url, &["spillway.Demo.v1.echo", &data], &env);
    assert!(out.status.success(), "{}", output_text(&out));

    let requests = proxy.requests();
    let through = |line: &str| requests.iter().any(|r| r == line);
    for line in [
        format!("OPTIONS {}/health", s.url),
        format!("POST {}/spillway.Demo.v1/blob", s.url),
        format!("POST {}/__upload_url__/init", s.url),
        format!("POST {}/spillway.Demo.v1/echo", s.url),
    ] {
        assert!(through(&line), "{line} not proxied; proxied: {requests:?}");
    }
    assert!(
        !requests.iter().any(|r| r.contains("__storage__")),
        "a storage request went through the proxy: {requests:?}"
    );
    // The server saw them too: the storage requests went to it directly.
    let log = s.output();
    assert!(!log.contains(TOKEN), "{log}");
}

#[test]
fn a_dead_proxy_fails_the_call_unless_no_proxy_names_the_server() {
    // No proxy needed: a port nothing listens on.
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path());
    let dead = format!("http://127.0.0.1:{}", free_port());
    let args = ["spillway.Demo.v1.blob", "size=10"];
    for var in ["HTTP_PROXY", "http_proxy", "ALL_PROXY"] {
        let out = call_clean(&s.url, &args, &[(var, &dead), ("SPILLWAY_TOKEN", TOKEN)]);
        assert!(!out.status.success(), "{var}: {}", output_text(&out));
        assert!(
            output_text(&out).contains("connection failed"),
            "{var}: {}",
            output_text(&out)
        );
    }
    // (hyper-util matches `*` against host names only, not IP addresses.)
    for no_proxy in ["127.0.0.1", "127.0.0.0/8", "localhost,127.0.0.1"] {
        let out = call_clean(
            &s.url,
            &args,
            &[
                ("HTTP_PROXY", &dead),
                ("NO_PROXY", no_proxy),
                ("SPILLWAY_TOKEN", TOKEN),
            ],
        );
        assert!(
            out.status.success(),
            "NO_PROXY={no_proxy}: {}",
            output_text(&out)
        );
    }
    // HTTPS_PROXY is for https servers only: an http server is reached directly.
    let out = call_clean(
        &s.url,
        &args,
        &[("HTTPS_PROXY", &dead), ("SPILLWAY_TOKEN", TOKEN)],
    );
    assert!(out.status.success(), "{}", output_text(&out));
}

#[tokio::test]
async fn an_explicit_proxy_carries_rpc_requests_and_never_pointer_downloads() {
    let Some(proxy) = Squid::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN} proxied\n")).unwrap();
    let s = TestServer::start(&[
        "--auth",
        "bearer",
        "--auth-tokens-file",
        tokens.to_str().unwrap(),
        "--threshold-bytes",
        "65536",
        "--max-request-bytes",
        "65536",
    ])
    .await;
    let client = s.client_with(ClientConfig {
        proxy: ClientProxy::Url(proxy.url()),
        ..ClientConfig::default().with_token(BearerToken::new(TOKEN).unwrap())
    });
    assert!(blob(&client, 200_000).await.externalized.is_some());
    echo(&client, &spillway_test_support::generated_bytes(150_000, 9)).await;
    let requests = proxy.requests();
    let rpc = format!("POST {}/{}/blob", s.base, demo::PROTOCOL);
    assert!(requests.contains(&rpc), "{requests:?}");
    assert!(
        !requests.iter().any(|r| r.contains("__storage__")),
        "{requests:?}"
    );
}
