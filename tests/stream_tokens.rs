//! Stream state tokens over real HTTP against `spillway serve`: sealed (their bytes show no
//! plaintext), bound to the caller who opened the stream, and valid across replicas through a
//! signing-secret rotation, together with the local store's URLs.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Int64Array, RecordBatch};
use arrow_schema::Schema;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use spillway::demo;
use spillway::wire::{keys, read_stream, MetaBatch, Metadata, ARROW_STREAM_CONTENT_TYPE};

use crate::common::*;

const ALICE: &str = "alice-bearer-token-0123456789abcdef";
const BOB: &str = "bob-bearer-token-0123456789abcdef-xyz";
const S1: &str = "first-signing-secret-0123456789abcdef-0001";
const S2: &str = "second-signing-secret-0123456789abcdef-002";
/// The demo stream's parameters: `COUNT` batches of `SIZE` bytes.
const COUNT: i64 = 4;
const SIZE: i64 = 8;

/// The two tokens a client echoes on every continuation.
#[derive(Clone)]
struct Tokens {
    cursor: String,
    call: String,
}

fn stream_params() -> RecordBatch {
    RecordBatch::try_new(
        demo::blob_stream_params(),
        vec![
            Arc::new(Int64Array::from(vec![COUNT])),
            Arc::new(Int64Array::from(vec![SIZE])),
        ],
    )
    .unwrap()
}

/// POSTs an Arrow body, with `Authorization: Bearer {bearer}` when given.
async fn post_as(url: &str, bearer: Option<&str>, body: Vec<u8>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", ARROW_STREAM_CONTENT_TYPE)
        .body(body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

fn route(base: &str, step: &str) -> String {
    format!("{base}/{}/blob_stream/{step}", demo::PROTOCOL)
}

/// The `index` of every data batch.
fn indexes(batches: &[MetaBatch]) -> Vec<i64> {
    batches
        .iter()
        .filter(|b| b.batch.num_rows() > 0)
        .flat_map(|b| {
            b.batch
                .column_by_name("index")
                .unwrap()
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

/// Opens the demo's `blob_stream` on `base` as `bearer`: the first turn (index 0) runs, and
/// the tokens come back.
async fn open(base: &str, bearer: Option<&str>) -> Tokens {
    let body = request_body(
        &demo::blob_stream_params(),
        stream_params(),
        request_md("blob_stream"),
    );
    let resp = post_as(&route(base, "init"), bearer, body).await;
    assert_eq!(resp.status(), 200);
    let stream = read_stream(resp.bytes().await.unwrap(), Default::default()).unwrap();
    assert_eq!(indexes(&stream.batches), vec![0]);
    let md = &stream.batches.last().unwrap().metadata;
    Tokens {
        cursor: md[keys::STREAM_STATE].clone(),
        call: md[keys::CALL_STATE].clone(),
    }
}

/// One continuation of the stream `tokens` name, on `base`, as `bearer`.
async fn continue_as(base: &str, bearer: Option<&str>, tokens: &Tokens) -> reqwest::Response {
    let mut md = Metadata::new();
    md.insert(keys::STREAM_STATE.into(), tokens.cursor.clone());
    md.insert(keys::CALL_STATE.into(), tokens.call.clone());
    let body = request_body(&Arc::new(Schema::empty()), no_params(), md);
    post_as(&route(base, "exchange"), bearer, body).await
}

/// A continuation that went through: the turn's indexes, and the tokens of the next turn.
async fn next_turn(resp: reqwest::Response, tokens: &Tokens) -> (Vec<i64>, Tokens) {
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-vgi-rpc-error").is_none());
    let stream = read_stream(resp.bytes().await.unwrap(), Default::default()).unwrap();
    let md = &stream.batches.last().unwrap().metadata;
    // The call token is never re-issued.
    assert!(!md.contains_key(keys::CALL_STATE));
    let next = Tokens {
        cursor: md[keys::STREAM_STATE].clone(),
        call: tokens.call.clone(),
    };
    (indexes(&stream.batches), next)
}

/// Refused as a forged token is: 400, the same words, nothing about why.
async fn assert_refused(resp: reqwest::Response) {
    assert_eq!(resp.status(), 400);
    let message = error_of(resp).await.message;
    assert_eq!(message, "State token signature verification failed");
}

/// A bearer token file with two callers.
fn token_file(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("tokens");
    std::fs::write(&path, format!("# two callers\n{ALICE} alice\n{BOB} bob\n")).unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test]
async fn a_stream_opened_by_one_principal_cannot_be_continued_by_another() {
    let dir = tempfile::tempdir().unwrap();
    let tokens_file = token_file(&dir);
    let s = TestServer::start(&["--auth", "bearer", "--auth-tokens-file", &tokens_file]).await;
    let alice = open(&s.base, Some(ALICE)).await;
    let bob = open(&s.base, Some(BOB)).await;
    // Each presents the other's tokens: refused exactly like forged ones.
    assert_refused(continue_as(&s.base, Some(BOB), &alice).await).await;
    assert_refused(continue_as(&s.base, Some(ALICE), &bob).await).await;
    // Half of each: Alice's call token with Bob's cursor fails on the cursor, presented by
    // either of them.
    let mixed = Tokens {
        cursor: bob.cursor.clone(),
        call: alice.call.clone(),
    };
    assert_refused(continue_as(&s.base, Some(ALICE), &mixed).await).await;
    assert_refused(continue_as(&s.base, Some(BOB), &mixed).await).await;
    // Without a credential the authentication gate answers first.
    assert_eq!(continue_as(&s.base, None, &alice).await.status(), 401);
    // After all that, each continues their own stream to the end.
    for (bearer, tokens) in [(ALICE, alice), (BOB, bob)] {
        let mut tokens = tokens;
        for want in 1..COUNT {
            let (seen, next) =
                next_turn(continue_as(&s.base, Some(bearer), &tokens).await, &tokens).await;
            assert_eq!(seen, vec![want]);
            tokens = next;
        }
    }
}

#[tokio::test]
async fn a_tokens_bytes_show_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let tokens_file = token_file(&dir);
    let s = TestServer::start(&["--auth", "bearer", "--auth-tokens-file", &tokens_file]).await;
    let first = open(&s.base, Some(ALICE)).await;
    let (_, second) = next_turn(continue_as(&s.base, Some(ALICE), &first).await, &first).await;
    // What the cursor of the second turn carries: the demo's state (count, size, index 2).
    let state: Vec<u8> = [COUNT, SIZE, 2]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    for token in [&first.call, &first.cursor, &second.cursor] {
        assert!(!token.contains('{') && !token.contains('"'), "{token}");
        let raw = B64.decode(token).unwrap();
        let text = String::from_utf8_lossy(&raw);
        for word in ["alice", "bearer", "blob_stream", demo::PROTOCOL] {
            assert!(!text.contains(word), "{word} visible in {token}");
            assert!(!token.contains(word), "{word} visible in {token}");
        }
        for needle in [&state[..], &COUNT.to_le_bytes()[..]] {
            assert!(
                !raw.windows(needle.len()).any(|w| w == needle),
                "state bytes visible in {token}"
            );
        }
        // Nor the state's base64 (the old JSON tokens carried it so).
        assert!(!token.contains(&B64.encode(&state)[..12]), "{token}");
    }
}

#[tokio::test]
async fn a_rotated_secret_keeps_streams_and_urls_valid_across_replicas() {
    // Three replicas on one store volume: before the rotation (S1), during it (S2, previous
    // S1), and one that never had S1.
    let shared = tempfile::tempdir().unwrap();
    let objects = shared.path().join("objects");
    let start = |flags: &'static [&'static str]| {
        let objects = objects.clone();
        async move {
            let mut all = vec!["--threshold-bytes", "1024"];
            all.extend_from_slice(flags);
            TestServer::start_sharing(&objects, &all).await
        }
    };
    let old = start(&["--signing-secret", S1]).await;
    let rotated = start(&["--signing-secret", S2, "--signing-secret-previous", S1]).await;
    let fresh = start(&["--signing-secret", S2]).await;

    // A stream begun before the rotation continues on the rotated replica...
    let begun = open(&old.base, None).await;
    assert_refused(continue_as(&fresh.base, None, &begun).await).await;
    let (seen, next) = next_turn(continue_as(&rotated.base, None, &begun).await, &begun).await;
    assert_eq!(seen, vec![1]);
    // ...whose new cursor is sealed with S2 only: the old replica cannot open it, the rotated
    // one continues.
    assert_refused(continue_as(&old.base, None, &next).await).await;
    let (seen, _) = next_turn(continue_as(&rotated.base, None, &next).await, &next).await;
    assert_eq!(seen, vec![2]);
    // A stream begun on the rotated replica lives on S2 alone: the fresh replica takes it.
    let after = open(&rotated.base, None).await;
    let (seen, _) = next_turn(continue_as(&fresh.base, None, &after).await, &after).await;
    assert_eq!(seen, vec![1]);
    assert_refused(continue_as(&old.base, None, &after).await).await;

    // A download URL minted before the rotation is served by the rotated replica, not by the
    // one without S1; one minted after it is served by both S2 replicas, not by the old one.
    let minted_on = |s: &TestServer| {
        let base = s.base.clone();
        async move {
            let resp = post_raw(&format!("{base}/{}/blob", demo::PROTOCOL), blob_body(4096)).await;
            assert_eq!(resp.status(), 200);
            let stream = read_stream(resp.bytes().await.unwrap(), Default::default()).unwrap();
            // After the method's log line: the pointer.
            stream
                .batches
                .iter()
                .find_map(|b| b.metadata.get(keys::LOCATION).cloned())
                .expect("an externalized result")
        }
    };
    let on = |url: &str, from: &TestServer, to: &TestServer| {
        assert!(url.starts_with(&from.origin()), "{}", redact(url));
        url.replacen(&from.origin(), &to.origin(), 1)
    };
    let before_url = minted_on(&old).await;
    let object = reqwest::get(&before_url).await.unwrap();
    assert_eq!(object.status(), 200);
    let object = object.bytes().await.unwrap();
    let served = reqwest::get(on(&before_url, &old, &rotated)).await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.bytes().await.unwrap(), object);
    let refused = reqwest::get(on(&before_url, &old, &fresh)).await.unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.text().await.unwrap(), "signature mismatch\n");

    let after_url = minted_on(&rotated).await;
    let served = reqwest::get(on(&after_url, &rotated, &fresh))
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let refused = reqwest::get(on(&after_url, &rotated, &old)).await.unwrap();
    assert_eq!(refused.status(), 403);
}

/// A URL without its query (the signature), for assertion messages.
fn redact(url: &str) -> String {
    spillway_storage::redact_url(url)
}
