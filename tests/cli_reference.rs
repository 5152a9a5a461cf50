//! `spillway describe` and `spillway call` next to the reference's own CLI (`vgi-rpc`, from
//! `vgi-rpc[cli]` 0.52.2 in the venv of `SPILLWAY_VGI_PYTHON`) on the same `spillway serve`:
//! the same methods with the same types and protocol hash, and the same producer rows.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{vgi_python, ServedBinary, BIN};

fn run(program: &Path, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn spillway_describe_and_call_agree_with_the_reference_cli() {
    let Some(python) = vgi_python() else {
        return;
    };
    let reference = python.with_file_name("vgi-rpc");
    assert!(reference.exists(), "{} not found", reference.display());
    let served = ServedBinary::start(&[]);
    let url = served.url.as_str();

    let theirs = json(&run(
        &reference,
        &["--url", url, "--format", "json", "describe"],
    ));
    let ours = json(&run(
        Path::new(BIN),
        &[
            "describe",
            "--url",
            url,
            "--format",
            "json",
            "spillway.Demo.v1",
        ],
    ));
    let ours = &ours["protocols"][0];
    assert_eq!(theirs["protocol_name"], ours["protocol"]);
    assert_eq!(theirs["protocol_hash"], ours["protocol_hash"]);
    let their_methods: Vec<(String, String)> = theirs["methods"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, m)| (name.clone(), m["method_type"].as_str().unwrap().to_string()))
        .collect();
    let our_methods: Vec<(String, String)> = ours["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["method_type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(their_methods, our_methods);
    // pyarrow's schema text names the same fields and types.
    let their_params = theirs["methods"]["blob_stream"]["params_schema"]
        .as_str()
        .unwrap();
    assert!(
        their_params.contains("count: int64") && their_params.contains("size: int64"),
        "{their_params}"
    );

    // The same producer rows, one JSON object per row from both.
    let args = ["count=3", "size=2"];
    let theirs = run(
        &reference,
        &[
            &["--url", url, "--format", "json", "call", "blob_stream"][..],
            &args[..],
        ]
        .concat(),
    );
    let ours = run(
        Path::new(BIN),
        &[
            &["call", "blob_stream", "--url", url, "-f", "json"][..],
            &args[..],
        ]
        .concat(),
    );
    let index = |out: &Output| -> Vec<i64> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["index"]
                    .as_i64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(index(&theirs), vec![0, 1, 2]);
    assert_eq!(index(&ours), index(&theirs));
}
