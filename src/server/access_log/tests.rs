use super::*;

fn notes() -> CallNotes {
    CallNotes::default()
}

fn record<'a>(notes: &'a CallNotes) -> AccessRecord<'a> {
    AccessRecord {
        at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_777_217_445_123),
        server_id: "pod-7",
        server_version: "1.2.3",
        protocol: "test.P.v1",
        protocol_hash: "ab",
        method: "m",
        method_type: MethodType::Unary,
        remote_addr: "127.0.0.1:5000".into(),
        duration: Duration::from_micros(1_234_567),
        http_status: 200,
        rpc_error: false,
        request_id: "rid-1",
        request_bytes: Some(10),
        response_bytes: Some(20),
        externalized_bytes: 0,
        notes,
        trace: None,
        dropped: 0,
    }
}

fn parsed(r: &AccessRecord<'_>) -> Map<String, Value> {
    match serde_json::from_str(&r.to_json()).unwrap() {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

#[test]
fn an_ok_record_has_the_envelope_and_no_error_fields() {
    let n = notes();
    let m = parsed(&record(&n));
    assert_eq!(m["timestamp"], "2026-04-26T15:30:45.123Z");
    assert_eq!(m["level"], "INFO");
    assert_eq!(m["logger"], "vgi_rpc.access");
    assert_eq!(m["message"], "test.P.v1.m ok");
    assert_eq!(m["server_id"], "pod-7");
    assert_eq!(m["method_type"], "unary");
    assert_eq!(m["status"], "ok");
    assert_eq!(m["error_type"], "");
    assert_eq!(m["principal"], "");
    assert_eq!(m["authenticated"], false);
    assert_eq!(m["duration_ms"], 1234.57);
    assert_eq!(m["http_status"], 200);
    assert_eq!(m["request_bytes"], 10);
    assert_eq!(m["response_bytes"], 20);
    assert_eq!(m["server_version"], "1.2.3");
    for absent in [
        "error_code",
        "error_message",
        "externalized_bytes",
        "stream_id",
        "trace_id",
        "span_id",
        "dropped_records",
        "request_fields",
        "request_rows",
    ] {
        assert!(!m.contains_key(absent), "{absent} in {m:?}");
    }
}

#[test]
fn an_error_record_carries_type_message_and_code() {
    let mut n = notes();
    n.error = Some(NotedError {
        error_type: "ValueError".into(),
        message: "n must be >= 0".into(),
        code: ErrorCode::InvalidArgument,
    });
    let mut r = record(&n);
    r.rpc_error = true;
    let m = parsed(&r);
    assert_eq!(m["status"], "error");
    assert_eq!(m["error_type"], "ValueError");
    assert_eq!(m["error_message"], "n must be >= 0");
    assert_eq!(m["error_code"], "INVALID_ARGUMENT");
    assert_eq!(m["message"], "test.P.v1.m error");
}

#[test]
fn a_failure_without_an_exception_batch_is_named_by_its_status() {
    let n = notes();
    let mut r = record(&n);
    r.http_status = 413;
    let m = parsed(&r);
    assert_eq!(m["status"], "error");
    assert_eq!(m["error_type"], "HTTPError");
    assert_eq!(m["error_message"], "HTTP status 413");
    assert_eq!(m["error_code"], "RESOURCE_EXHAUSTED");
    let mut r = record(&n);
    r.http_status = 401;
    assert_eq!(parsed(&r)["error_code"], "UNAUTHENTICATED");
}

#[test]
fn stream_turns_carry_sizes_never_tokens_or_values() {
    let secret_value = "hunter2-password";
    let mut n = notes();
    n.auth = Some(Arc::new(
        AuthContext::new("bearer", "alice").with_claims(
            [("email".to_string(), json!("alice@example.com"))]
                .into_iter()
                .collect(),
        ),
    ));
    n.request_shape = Some((vec![("password".into(), "Utf8".into())], 1));
    n.stream_id = Some("0123456789abcdef0123456789abcdef".into());
    n.request_state_bytes = Some(300);
    n.response_state_bytes = Some(310);
    let mut r = record(&n);
    r.method_type = MethodType::Stream;
    r.externalized_bytes = 5000;
    r.trace = Some(("a".repeat(32), "b".repeat(16)));
    r.dropped = 3;
    let line = r.to_json();
    assert!(!line.contains(secret_value), "{line}");
    assert!(
        !line.contains("alice@example.com"),
        "claims are not logged: {line}"
    );
    let m = parsed(&r);
    assert_eq!(m["method_type"], "stream");
    assert_eq!(m["principal"], "alice");
    assert_eq!(m["auth_domain"], "bearer");
    assert_eq!(m["authenticated"], true);
    assert_eq!(
        m["request_fields"],
        json!([{ "name": "password", "type": "Utf8" }])
    );
    assert_eq!(m["request_rows"], 1);
    assert_eq!(m["stream_id"], "0123456789abcdef0123456789abcdef");
    assert_eq!(m["request_state_bytes"], 300);
    assert_eq!(m["response_state_bytes"], 310);
    assert_eq!(m["externalized_bytes"], 5000);
    assert_eq!(m["trace_id"], "a".repeat(32));
    assert_eq!(m["span_id"], "b".repeat(16));
    assert_eq!(m["dropped_records"], 3);
    for forbidden in ["request_data", "request_state", "response_state", "claims"] {
        assert!(!m.contains_key(forbidden), "{forbidden} in {m:?}");
    }
}

#[tokio::test]
async fn notes_are_filled_inside_the_scope_only() {
    let e = RpcError::new("ValueError", "bad").with_code(ErrorCode::InvalidArgument);
    // Outside a scope: nothing happens, and the batch has no server id.
    note_stream(b"0123456789abcdef");
    let outside = error_batch(&e, &crate::server::empty_schema(), None);
    assert!(!outside.metadata.contains_key(keys::SERVER_ID));

    let shared = Arc::new(Mutex::new(CallNotes {
        server_id: Some(Arc::from("pod-7")),
        ..CallNotes::default()
    }));
    let batch = run(shared.clone(), async {
        note_stream(b"0123456789abcdef");
        let first = error_batch(&e, &crate::server::empty_schema(), Some("rid"));
        // A later error does not replace the first.
        note_error(&RpcError::internal("later"));
        first
    })
    .await;
    assert_eq!(batch.metadata[keys::SERVER_ID], "pod-7");
    let n = shared.lock().unwrap().clone();
    let id = n.stream_id.unwrap();
    assert_eq!(id.len(), 32);
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert!(!id.contains(&hex::encode(b"0123456789abcdef")));
    assert_eq!(n.error.unwrap().message, "bad");
}
