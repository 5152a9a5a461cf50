//! The call kinds of the load generator: what each sends, and how its answer is checked.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, BinaryArray, Int64Array, RecordBatch, StringArray};
use arrow_buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use rand::{Rng, RngCore};
use spillway::client::{CallRequest, Client};

/// Bytes at the start of every echo payload overwritten with a fresh random stamp per call, so
/// that an answer meant for another call (or another client) is a wrong answer.
const STAMP_BYTES: usize = 16;

/// The longest text of a wrong answer kept in the report.
const MAX_WRONG_TEXT: usize = 200;

/// A kind of call in the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    /// `spillway.Demo.v1.echo` of `--small-bytes` (inline both ways).
    Small,
    /// `spillway.Demo.v1.echo` of `--echo-bytes` (above the server's request limit: the
    /// request goes through the upload-URL flow; the result is externalized).
    Echo,
    /// `spillway.Demo.v1.blob(size = --blob-bytes)` (externalized above the threshold).
    Blob,
    /// `spillway.Demo.v1.blob_stream(count = --stream-count, size = --stream-bytes)`.
    Stream,
    /// `ConformanceService.echo_string` of `--string-bytes` characters: the conformance
    /// worker's small call, served by the Python reference (`serve_ref.py`) and by
    /// `spillway-conformance` alike.
    EchoString,
}

impl Kind {
    pub(crate) const ALL: [Kind; 5] = [
        Kind::Small,
        Kind::Echo,
        Kind::Blob,
        Kind::Stream,
        Kind::EchoString,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Small => "small",
            Kind::Echo => "echo",
            Kind::Blob => "blob",
            Kind::Stream => "stream",
            Kind::EchoString => "echo_string",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The protocol it calls, and the `vgi_rpc.protocol_version` it sends, unless
    /// `--protocol` says otherwise.
    fn default_protocol(self) -> (&'static str, Option<&'static str>) {
        match self {
            // The version the conformance catalog declares (conformance/schemas/): the
            // reference refuses a call to a versioned protocol without it.
            Kind::EchoString => ("ConformanceService", Some("2.0.0")),
            _ => (spillway::demo::PROTOCOL, None),
        }
    }

    fn method(self) -> &'static str {
        match self {
            Kind::Small | Kind::Echo => "echo",
            Kind::Blob => "blob",
            Kind::Stream => "blob_stream",
            Kind::EchoString => "echo_string",
        }
    }
}

/// What every call of a run shares: sizes, the payload template, the expected stream batches.
pub(crate) struct Plan {
    pub(crate) protocol: Option<String>,
    pub(crate) protocol_version: Option<String>,
    pub(crate) verify: bool,
    pub(crate) small_bytes: usize,
    pub(crate) string_bytes: usize,
    pub(crate) blob_bytes: u64,
    pub(crate) stream_count: u64,
    pub(crate) stream_bytes: u64,
    /// `--echo-bytes` of generated data; each call sends a copy with its own stamp.
    pub(crate) echo_template: Vec<u8>,
    /// Batch `i` of `blob_stream` holds `generate_blob(size, i)` (src/demo.rs): computed once
    /// when verifying.
    pub(crate) stream_expected: Vec<Vec<u8>>,
}

/// Payload bytes a call carried: Arrow values sent and received (not HTTP framing, not the
/// compressed or stored size).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Moved {
    pub(crate) up: u64,
    pub(crate) down: u64,
}

/// Why a call did not count as a success.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server answered, but not what was asked for.
    Wrong(String),
    /// The call failed.
    Call(spillway::Error),
}

impl From<spillway::Error> for Failure {
    fn from(e: spillway::Error) -> Self {
        Failure::Call(e)
    }
}

impl From<arrow_schema::ArrowError> for Failure {
    fn from(e: arrow_schema::ArrowError) -> Self {
        Failure::Call(e.into())
    }
}

fn wrong(text: impl Into<String>) -> Failure {
    let mut text: String = text.into();
    if text.len() > MAX_WRONG_TEXT {
        let mut cut = MAX_WRONG_TEXT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    Failure::Wrong(text)
}

/// One call of `kind`; `rng` makes its payload unique.
pub(crate) async fn run_call(
    client: &Client,
    plan: &Plan,
    kind: Kind,
    rng: &mut impl RngCore,
) -> Result<Moved, Failure> {
    let target = Target::of(plan, kind);
    match kind {
        Kind::Small => {
            let mut data = vec![0u8; plan.small_bytes];
            rng.fill_bytes(&mut data);
            echo(client, &target, plan.verify, data).await
        }
        Kind::Echo => {
            let mut data = plan.echo_template.clone();
            let stamp: u128 = rng.random();
            let n = STAMP_BYTES.min(data.len());
            data[..n].copy_from_slice(&stamp.to_le_bytes()[..n]);
            echo(client, &target, plan.verify, data).await
        }
        Kind::Blob => blob(client, &target, plan.blob_bytes).await,
        Kind::Stream => stream(client, &target, plan).await,
        Kind::EchoString => {
            let text: String = (0..plan.string_bytes)
                .map(|_| char::from(rng.random_range(b'a'..=b'z')))
                .collect();
            echo_string(client, &target, plan.verify, text).await
        }
    }
}

/// Where a call of a kind goes: protocol, method, protocol version.
struct Target<'a> {
    protocol: &'a str,
    method: &'static str,
    version: Option<&'a str>,
}

impl<'a> Target<'a> {
    fn of(plan: &'a Plan, kind: Kind) -> Target<'a> {
        let (protocol, version) = match &plan.protocol {
            Some(p) => (p.as_str(), None),
            None => kind.default_protocol(),
        };
        Target {
            protocol,
            method: kind.method(),
            version: plan.protocol_version.as_deref().or(version),
        }
    }

    fn request(&self, params: RecordBatch) -> CallRequest {
        let request = CallRequest::new(self.protocol, self.method, params);
        match self.version {
            Some(v) => request.with_protocol_version(v),
            None => request,
        }
    }
}

/// A one-row `data: binary` batch (`spillway.Demo.v1.echo`'s parameters) over `data`.
fn binary_params(data: Buffer) -> Result<RecordBatch, Failure> {
    let len = i32::try_from(data.len())
        .map_err(|_| wrong("an echo payload holds at most 2 GiB - 1 bytes"))?;
    let offsets = OffsetBuffer::new(ScalarBuffer::from(vec![0i32, len]));
    let array = BinaryArray::try_new(offsets, data, None)?;
    Ok(RecordBatch::try_new(
        spillway::demo::echo_params(),
        vec![Arc::new(array)],
    )?)
}

fn int_params(schema: SchemaRef, values: &[i64]) -> Result<RecordBatch, Failure> {
    let columns = values
        .iter()
        .map(|v| Arc::new(Int64Array::from(vec![*v])) as Arc<dyn Array>)
        .collect();
    Ok(RecordBatch::try_new(schema, columns)?)
}

fn as_i64(v: u64, what: &str) -> Result<i64, Failure> {
    i64::try_from(v).map_err(|_| wrong(format!("{what} {v} does not fit an int64")))
}

/// The one value of the one-row binary column `name`.
fn one_binary<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a [u8], Failure> {
    let col = batch
        .column_by_name(name)
        .and_then(|c| c.as_binary_opt::<i32>())
        .ok_or_else(|| wrong(format!("no binary column {name:?} in the result")))?;
    if batch.num_rows() != 1 || col.is_null(0) {
        return Err(wrong(format!(
            "{} rows in the result, want one non-null value",
            batch.num_rows()
        )));
    }
    Ok(col.value(0))
}

fn mismatch(what: &str, got: &[u8], want: &[u8]) -> Failure {
    if got.len() != want.len() {
        return wrong(format!("{what}: {} bytes, want {}", got.len(), want.len()));
    }
    let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
    wrong(format!(
        "{what}: wrong byte at offset {at} of {}",
        want.len()
    ))
}

async fn echo(
    client: &Client,
    target: &Target<'_>,
    verify: bool,
    data: Vec<u8>,
) -> Result<Moved, Failure> {
    let sent = Buffer::from_vec(data);
    let params = binary_params(sent.clone())?;
    let out = client.call_with(target.request(params)).await?;
    let got = one_binary(&out.batch, "result")?;
    // The length is always checked; every byte only under --verify.
    if got.len() != sent.len() || (verify && got != sent.as_slice()) {
        return Err(mismatch("echo", got, sent.as_slice()));
    }
    Ok(Moved {
        up: sent.len() as u64,
        down: got.len() as u64,
    })
}

async fn blob(client: &Client, target: &Target<'_>, size: u64) -> Result<Moved, Failure> {
    let params = int_params(
        spillway::demo::blob_params(),
        &[as_i64(size, "--blob-bytes")?],
    )?;
    let out = client.call_with(target.request(params)).await?;
    let got = one_binary(&out.batch, "result")?;
    // `blob` draws a random seed per call that it does not report (src/demo.rs), so only the
    // length can be checked here; an externalized result's bytes are checked against the
    // pointer's sha256 by the client.
    if got.len() as u64 != size {
        return Err(wrong(format!("blob: {} bytes, want {size}", got.len())));
    }
    Ok(Moved { up: 0, down: size })
}

async fn stream(client: &Client, target: &Target<'_>, plan: &Plan) -> Result<Moved, Failure> {
    let params = int_params(
        spillway::demo::blob_stream_params(),
        &[
            as_i64(plan.stream_count, "--stream-count")?,
            as_i64(plan.stream_bytes, "--stream-bytes")?,
        ],
    )?;
    let mut stream = client.open_stream(target.request(params)).await?;
    let mut next_index: u64 = 0;
    let mut down = 0u64;
    while let Some(b) = stream.next().await? {
        let index = b
            .batch
            .column_by_name("index")
            .and_then(|c| c.as_primitive_opt::<arrow_array::types::Int64Type>())
            .ok_or_else(|| wrong("no int64 column \"index\" in a stream batch"))?;
        let data = b
            .batch
            .column_by_name("data")
            .and_then(|c| c.as_binary_opt::<i32>())
            .ok_or_else(|| wrong("no binary column \"data\" in a stream batch"))?;
        for row in 0..b.batch.num_rows() {
            if next_index >= plan.stream_count {
                return Err(wrong(format!(
                    "stream: more than the {} batches asked for",
                    plan.stream_count
                )));
            }
            if index.is_null(row) || index.value(row) != next_index as i64 {
                return Err(wrong(format!(
                    "stream: batch {next_index} carries index {:?}",
                    (!index.is_null(row)).then(|| index.value(row))
                )));
            }
            let got = if data.is_null(row) {
                &[][..]
            } else {
                data.value(row)
            };
            let what = format!("stream batch {next_index}");
            if got.len() as u64 != plan.stream_bytes {
                return Err(wrong(format!(
                    "{what}: {} bytes, want {}",
                    got.len(),
                    plan.stream_bytes
                )));
            }
            if let Some(want) = plan.stream_expected.get(next_index as usize) {
                if got != want.as_slice() {
                    return Err(mismatch(&what, got, want));
                }
            }
            down += got.len() as u64;
            next_index += 1;
        }
    }
    if next_index != plan.stream_count {
        return Err(wrong(format!(
            "stream: {next_index} batches, want {}",
            plan.stream_count
        )));
    }
    Ok(Moved { up: 0, down })
}

/// `echo_string(value: string) -> result: string`.
fn string_params() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "value",
        DataType::Utf8,
        false,
    )]))
}

async fn echo_string(
    client: &Client,
    target: &Target<'_>,
    verify: bool,
    text: String,
) -> Result<Moved, Failure> {
    let params = RecordBatch::try_new(
        string_params(),
        vec![Arc::new(StringArray::from(vec![text.clone()]))],
    )?;
    let out = client.call_with(target.request(params)).await?;
    let col = out
        .batch
        .column_by_name("result")
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| wrong("no string column \"result\" in the result"))?;
    if out.batch.num_rows() != 1 || col.is_null(0) {
        return Err(wrong(format!(
            "{} rows in the result, want one non-null value",
            out.batch.num_rows()
        )));
    }
    let got = col.value(0);
    if got.len() != text.len() || (verify && got != text) {
        return Err(mismatch("echo_string", got.as_bytes(), text.as_bytes()));
    }
    Ok(Moved {
        up: text.len() as u64,
        down: got.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_their_names() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_name(k.name()), Some(k));
        }
        assert_eq!(Kind::from_name("nope"), None);
    }

    #[test]
    fn a_mismatch_names_the_first_wrong_byte() {
        match mismatch("echo", b"abcd", b"abXd") {
            Failure::Wrong(t) => assert_eq!(t, "echo: wrong byte at offset 2 of 4"),
            other => panic!("{other:?}"),
        }
        match mismatch("echo", b"abc", b"abcd") {
            Failure::Wrong(t) => assert_eq!(t, "echo: 3 bytes, want 4"),
            other => panic!("{other:?}"),
        }
    }
}
