//! Arrow IPC stream reading and writing with per-message custom metadata.
//!
//! vgi-rpc carries all its bookkeeping in the `custom_metadata` of each RecordBatch *message*
//! (not in the schema). arrow-rs's `StreamWriter`/`StreamReader` neither write nor expose it, so
//! this module frames the stream itself and lets arrow-ipc encode and decode the batch bodies.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_buffer::Buffer;

use arrow_ipc::MessageHeader;
use arrow_schema::{Schema, SchemaRef};
use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;

use crate::error::{Error, Result};

/// Per-message custom metadata: UTF-8 keys and values.
pub type Metadata = BTreeMap<String, String>;

/// The MIME type of every RPC body.
pub const ARROW_STREAM_CONTENT_TYPE: &str = "application/vnd.apache.arrow.stream";

const CONTINUATION: [u8; 4] = [0xff; 4];

/// One record batch as read from, or written to, a stream, with its message metadata.
#[derive(Debug, Clone)]
pub struct MetaBatch {
    /// The batch.
    pub batch: RecordBatch,
    /// The `custom_metadata` of the message that carried it.
    pub metadata: Metadata,
}

impl MetaBatch {
    /// A batch with no metadata.
    pub fn plain(batch: RecordBatch) -> Self {
        MetaBatch {
            batch,
            metadata: Metadata::new(),
        }
    }
}

/// One complete IPC stream: a schema and its batches.
#[derive(Debug, Clone)]
pub struct IpcStream {
    /// The stream's schema.
    pub schema: SchemaRef,
    /// The batches, in order.
    pub batches: Vec<MetaBatch>,
}

/// Limits applied while parsing untrusted IPC bytes (the byte size itself is capped by whoever
/// read the bytes).
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Most record batches accepted in one stream.
    pub max_batches: usize,
    /// Largest flatbuffer message header accepted.
    pub max_message_header_bytes: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_batches: 10_000,
            max_message_header_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Writes one IPC stream to `W`, batch by batch, with per-batch metadata.
///
/// arrow-ipc's `StreamWriter` streams each buffer of a batch straight from the batch to the
/// sink (no copy of the body); it cannot set per-message metadata. So it writes into a
/// [`MetadataInjector`], which rewrites the (small) message header of each record batch to
/// add the metadata and passes the body through.
pub struct IpcStreamWriter<W: Write> {
    inner: arrow_ipc::writer::StreamWriter<MetadataInjector<W>>,
    schema: SchemaRef,
}

impl<W: Write> IpcStreamWriter<W> {
    /// Starts a stream: writes the schema message.
    pub fn try_new(out: W, schema: SchemaRef) -> Result<Self> {
        let injector = MetadataInjector::new(out);
        let inner = arrow_ipc::writer::StreamWriter::try_new(injector, &schema)?;
        Ok(IpcStreamWriter { inner, schema })
    }

    /// Writes a batch; its schema must be the stream's (metadata aside).
    pub fn write(&mut self, batch: &RecordBatch, metadata: &Metadata) -> Result<()> {
        if !schemas_equal(batch.schema_ref(), &self.schema) {
            return Err(Error::Protocol(format!(
                "batch schema {} does not match stream schema {}",
                batch.schema(),
                self.schema
            )));
        }
        // arrow-rs refuses a batch whose schema differs in metadata or nullability details
        // it considers significant; give it the stream's own schema.
        let batch = if batch.schema_ref() == &self.schema {
            batch.clone()
        } else {
            batch.clone().with_schema(self.schema.clone())?
        };
        self.inner.get_mut().pending = (!metadata.is_empty()).then(|| metadata.clone());
        self.inner.write(&batch)?;
        let injector = self.inner.get_mut();
        if let Some(e) = injector.error.take() {
            return Err(e);
        }
        if injector.pending.is_some() {
            return Err(Error::Internal("batch metadata was not written".into()));
        }
        Ok(())
    }

    /// Writes the end-of-stream marker and returns the sink.
    pub fn finish(mut self) -> Result<W> {
        self.inner.finish()?;
        let injector = self.inner.into_inner()?;
        injector.into_inner()
    }
}

/// Where a [`MetadataInjector`] is in the message framing.
enum InjectorState {
    /// Collecting the 8-byte continuation + length prefix.
    Prefix,
    /// Collecting a message header of this many bytes.
    Header(usize),
    /// Passing this many body bytes through.
    Body(u64),
}

/// A `Write` adapter that parses the IPC stream framing written through it and adds
/// `custom_metadata` to the next record batch message; everything else passes unchanged.
struct MetadataInjector<W: Write> {
    out: W,
    frame: InjectorState,
    buf: Vec<u8>,
    pending: Option<Metadata>,
    error: Option<Error>,
}

impl<W: Write> MetadataInjector<W> {
    fn new(out: W) -> Self {
        MetadataInjector {
            out,
            frame: InjectorState::Prefix,
            buf: Vec::with_capacity(1024),
            pending: None,
            error: None,
        }
    }

    fn into_inner(self) -> Result<W> {
        match self.frame {
            InjectorState::Prefix if self.buf.is_empty() => Ok(self.out),
            _ => Err(Error::Internal("ipc stream ended inside a message".into())),
        }
    }

    /// A complete header is in `buf`: forward it (rewritten for a record batch with pending
    /// metadata) and return the body length that follows.
    fn emit_header(&mut self) -> std::io::Result<u64> {
        let (body_len, rewritten) = {
            let msg = arrow_ipc::root_as_message(&self.buf)
                .map_err(|e| std::io::Error::other(format!("invalid message header: {e}")))?;
            let body_len = u64::try_from(msg.bodyLength())
                .map_err(|_| std::io::Error::other("negative body length"))?;
            let rewritten = match (msg.header_type(), &self.pending) {
                (MessageHeader::RecordBatch, Some(md)) => Some(
                    attach_metadata(&self.buf, md)
                        .map_err(|e| std::io::Error::other(e.to_string()))?,
                ),
                _ => None,
            };
            (body_len, rewritten)
        };
        match rewritten {
            None => {
                self.out.write_all(&CONTINUATION)?;
                self.out.write_all(&(self.buf.len() as u32).to_le_bytes())?;
                self.out.write_all(&self.buf)?;
            }
            Some(mut header) => {
                self.pending = None;
                // Keep the body 8-byte aligned: the prefix is 8 bytes, so pad the header.
                header.resize(header.len().div_ceil(8) * 8, 0);
                self.out.write_all(&CONTINUATION)?;
                self.out.write_all(&(header.len() as u32).to_le_bytes())?;
                self.out.write_all(&header)?;
            }
        }
        self.buf.clear();
        Ok(body_len)
    }
}

impl<W: Write> Write for MetadataInjector<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            match self.frame {
                InjectorState::Body(n) => {
                    let take = (n.min(rest.len() as u64)) as usize;
                    self.out.write_all(&rest[..take])?;
                    rest = &rest[take..];
                    let left = n - take as u64;
                    self.frame = if left == 0 {
                        InjectorState::Prefix
                    } else {
                        InjectorState::Body(left)
                    };
                }
                InjectorState::Prefix => {
                    let take = (8 - self.buf.len()).min(rest.len());
                    self.buf.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if self.buf.len() == 8 {
                        let len = u32::from_le_bytes([
                            self.buf[4],
                            self.buf[5],
                            self.buf[6],
                            self.buf[7],
                        ]);
                        if self.buf[..4] != CONTINUATION {
                            return Err(std::io::Error::other("unexpected legacy ipc framing"));
                        }
                        self.buf.clear();
                        if len == 0 {
                            self.out.write_all(&CONTINUATION)?;
                            self.out.write_all(&[0u8; 4])?;
                        } else {
                            self.frame = InjectorState::Header(len as usize);
                        }
                    }
                }
                InjectorState::Header(len) => {
                    let take = (len - self.buf.len()).min(rest.len());
                    self.buf.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if self.buf.len() == len {
                        let body = match self.emit_header() {
                            Ok(b) => b,
                            Err(e) => {
                                self.error = Some(Error::Ipc(e.to_string()));
                                return Err(e);
                            }
                        };
                        self.frame = if body == 0 {
                            InjectorState::Prefix
                        } else {
                            InjectorState::Body(body)
                        };
                    }
                }
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Rebuilds a RecordBatch message flatbuffer with `custom_metadata` added.
fn attach_metadata(message: &[u8], metadata: &Metadata) -> Result<Vec<u8>> {
    let msg = arrow_ipc::root_as_message(message)
        .map_err(|e| Error::Ipc(format!("re-reading an encoded message: {e}")))?;
    let rb = msg
        .header_as_record_batch()
        .ok_or_else(|| Error::Ipc("encoded message is not a record batch".into()))?;
    let mut fbb = FlatBufferBuilder::new();
    let nodes: Vec<arrow_ipc::FieldNode> = rb
        .nodes()
        .map(|v| v.iter().copied().collect())
        .unwrap_or_default();
    let buffers: Vec<arrow_ipc::Buffer> = rb
        .buffers()
        .map(|v| v.iter().copied().collect())
        .unwrap_or_default();
    let variadic: Option<Vec<i64>> = rb.variadicBufferCounts().map(|v| v.iter().collect());
    let nodes = fbb.create_vector(&nodes);
    let buffers = fbb.create_vector(&buffers);
    let variadic = variadic.map(|v| fbb.create_vector(&v));
    let kvs: Vec<_> = metadata
        .iter()
        .map(|(k, v)| {
            let k = fbb.create_string(k);
            let v = fbb.create_string(v);
            let mut kv = arrow_ipc::KeyValueBuilder::new(&mut fbb);
            kv.add_key(k);
            kv.add_value(v);
            kv.finish()
        })
        .collect();
    let kvs = fbb.create_vector(&kvs);
    let mut rbb = arrow_ipc::RecordBatchBuilder::new(&mut fbb);
    rbb.add_length(rb.length());
    rbb.add_nodes(nodes);
    rbb.add_buffers(buffers);
    if let Some(v) = variadic {
        rbb.add_variadicBufferCounts(v);
    }
    let header = rbb.finish();
    let mut mb = arrow_ipc::MessageBuilder::new(&mut fbb);
    mb.add_version(msg.version());
    mb.add_header_type(MessageHeader::RecordBatch);
    mb.add_header(header.as_union_value());
    mb.add_bodyLength(msg.bodyLength());
    mb.add_custom_metadata(kvs);
    let root = mb.finish();
    fbb.finish(root, None);
    Ok(fbb.finished_data().to_vec())
}

/// Encodes one complete stream into memory.
pub fn write_stream(schema: &SchemaRef, batches: &[MetaBatch]) -> Result<Vec<u8>> {
    let mut w = IpcStreamWriter::try_new(Vec::new(), schema.clone())?;
    for b in batches {
        w.write(&b.batch, &b.metadata)?;
    }
    w.finish()
}

/// Field names, types, nullability and order equal; schema and field metadata ignored (the
/// protocol says readers must ignore them).
pub fn schemas_equal(a: &Schema, b: &Schema) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields().iter().zip(b.fields().iter()).all(|(x, y)| {
            x.name() == y.name()
                && x.data_type().equals_datatype(y.data_type())
                && x.is_nullable() == y.is_nullable()
        })
}

/// Parses every stream in `bytes` (a body may hold several streams end to end).
pub fn read_streams(bytes: Bytes, limits: ReadLimits) -> Result<Vec<IpcStream>> {
    let mut reader = StreamParser {
        bytes,
        pos: 0,
        limits,
    };
    let mut streams = Vec::new();
    while reader.pos < reader.bytes.len() {
        streams.push(reader.read_stream()?);
    }
    if streams.is_empty() {
        return Err(Error::Ipc("empty body".into()));
    }
    Ok(streams)
}

/// Parses a body that must hold exactly one stream.
pub fn read_stream(bytes: Bytes, limits: ReadLimits) -> Result<IpcStream> {
    let mut streams = read_streams(bytes, limits)?;
    if streams.len() != 1 {
        return Err(Error::Ipc(format!(
            "expected one ipc stream, found {}",
            streams.len()
        )));
    }
    streams
        .pop()
        .ok_or_else(|| Error::Ipc("expected one ipc stream, found none".into()))
}

struct StreamParser {
    bytes: Bytes,
    pos: usize,
    limits: ReadLimits,
}

enum Frame {
    Message { header: Bytes, body: Bytes },
    End,
}

impl StreamParser {
    fn take(&mut self, n: usize, what: &str) -> Result<Bytes> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                Error::Ipc(format!(
                    "truncated {what}: needs {n} bytes at offset {}, {} left",
                    self.pos,
                    self.bytes.len() - self.pos
                ))
            })?;
        let out = self.bytes.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    fn read_u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn next_frame(&mut self) -> Result<Frame> {
        let mut len = self.read_u32("message length")?;
        if len == u32::MAX {
            len = self.read_u32("message length")?;
        }
        if len == 0 {
            return Ok(Frame::End);
        }
        let len = len as usize;
        if len > self.limits.max_message_header_bytes {
            return Err(Error::Ipc(format!(
                "message header of {len} bytes exceeds the limit of {}",
                self.limits.max_message_header_bytes
            )));
        }
        let header = self.take(len, "message header")?;
        let body_len = {
            let msg = parse_message(&header)?;
            usize::try_from(msg.bodyLength())
                .map_err(|_| Error::Ipc("negative message body length".into()))?
        };
        let body = self.take(body_len, "message body")?;
        Ok(Frame::Message { header, body })
    }

    fn read_stream(&mut self) -> Result<IpcStream> {
        let schema = match self.next_frame()? {
            Frame::End => return Err(Error::Ipc("stream ends before its schema".into())),
            Frame::Message { header, .. } => {
                let msg = parse_message(&header)?;
                let fb = msg
                    .header_as_schema()
                    .ok_or_else(|| Error::Ipc("first message is not a schema".into()))?;
                Arc::new(arrow_ipc::convert::try_fb_to_schema(fb)?)
            }
        };
        let mut dictionaries: HashMap<i64, ArrayRef> = HashMap::new();
        let mut batches = Vec::new();
        loop {
            let (header, body) = match self.next_frame() {
                Ok(Frame::End) => break,
                Ok(Frame::Message { header, body }) => (header, body),
                // A stream that simply stops without EOS is accepted by pyarrow; so do we.
                Err(_) if self.pos >= self.bytes.len() => break,
                Err(e) => return Err(e),
            };
            let msg = parse_message(&header)?;
            let body = Buffer::from(body);
            match msg.header_type() {
                MessageHeader::RecordBatch => {
                    if batches.len() >= self.limits.max_batches {
                        return Err(Error::Ipc(format!(
                            "more than {} batches in one stream",
                            self.limits.max_batches
                        )));
                    }
                    let rb = msg
                        .header_as_record_batch()
                        .ok_or_else(|| Error::Ipc("record batch header missing".into()))?;
                    check_buffers(rb.buffers(), body.len())?;
                    let version = msg.version();
                    let batch = guard_decode(|| {
                        arrow_ipc::reader::read_record_batch(
                            &body,
                            rb,
                            schema.clone(),
                            &dictionaries,
                            None,
                            &version,
                        )
                    })?;
                    let mut metadata = Metadata::new();
                    if let Some(kvs) = msg.custom_metadata() {
                        for kv in kvs {
                            if let (Some(k), Some(v)) = (kv.key(), kv.value()) {
                                metadata.insert(k.to_string(), v.to_string());
                            }
                        }
                    }
                    batches.push(MetaBatch { batch, metadata });
                }
                MessageHeader::DictionaryBatch => {
                    let db = msg
                        .header_as_dictionary_batch()
                        .ok_or_else(|| Error::Ipc("dictionary batch header missing".into()))?;
                    if let Some(data) = db.data() {
                        check_buffers(data.buffers(), body.len())?;
                    }
                    let version = msg.version();
                    guard_decode(|| {
                        arrow_ipc::reader::read_dictionary(
                            &body,
                            db,
                            &schema,
                            &mut dictionaries,
                            &version,
                        )
                    })?;
                }
                MessageHeader::Schema => {
                    return Err(Error::Ipc(
                        "schema message in the middle of a stream".into(),
                    ))
                }
                other => {
                    return Err(Error::Ipc(format!(
                        "unsupported message type {other:?} in stream"
                    )))
                }
            }
        }
        Ok(IpcStream { schema, batches })
    }
}

/// Every buffer a message names must lie inside its body: arrow-ipc slices without checking.
fn check_buffers(
    buffers: Option<flatbuffers::Vector<'_, arrow_ipc::Buffer>>,
    body_len: usize,
) -> Result<()> {
    for b in buffers.iter().flatten() {
        let end = u64::try_from(b.offset())
            .ok()
            .zip(u64::try_from(b.length()).ok())
            .and_then(|(o, l)| o.checked_add(l));
        match end {
            Some(end) if end <= body_len as u64 => {}
            _ => {
                return Err(Error::Ipc(format!(
                    "buffer at offset {} of length {} lies outside a body of {body_len} bytes",
                    b.offset(),
                    b.length()
                )))
            }
        }
    }
    Ok(())
}

/// Runs an arrow-ipc decode step on untrusted bytes. arrow-ipc validates most inputs, but a
/// panic deep in it must become an error for this request, not take the worker down.
fn guard_decode<T>(
    f: impl FnOnce() -> std::result::Result<T, arrow_schema::ArrowError>,
) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| Error::Ipc(e.to_string())),
        Err(_) => Err(Error::Ipc("arrow decoder rejected the message".into())),
    }
}

fn parse_message(header: &[u8]) -> Result<arrow_ipc::Message<'_>> {
    let opts = flatbuffers::VerifierOptions {
        max_depth: 128,
        max_tables: 1_000_000,
        ..Default::default()
    };
    arrow_ipc::root_as_message_with_opts(&opts, header)
        .map_err(|e| Error::Ipc(format!("invalid message flatbuffer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, BinaryArray, DictionaryArray, Int64Array, StringArray};
    use arrow_schema::{DataType, Field};

    fn md(pairs: &[(&str, &str)]) -> Metadata {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn metadata_round_trips_per_batch() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let b1 = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1]))])
            .unwrap();
        let b2 = RecordBatch::new_empty(schema.clone());
        let bytes = write_stream(
            &schema,
            &[
                MetaBatch {
                    batch: b1.clone(),
                    metadata: md(&[("a", "1"), ("vgi_rpc.method", "x")]),
                },
                MetaBatch::plain(b2),
            ],
        )
        .unwrap();
        let s = read_stream(Bytes::from(bytes), ReadLimits::default()).unwrap();
        assert_eq!(s.batches.len(), 2);
        assert_eq!(s.batches[0].batch, b1);
        assert_eq!(
            s.batches[0].metadata,
            md(&[("a", "1"), ("vgi_rpc.method", "x")])
        );
        assert!(s.batches[1].metadata.is_empty());
        assert_eq!(s.batches[1].batch.num_rows(), 0);
    }

    #[test]
    fn dictionaries_and_two_streams() {
        let dict: DictionaryArray<arrow_array::types::Int16Type> =
            vec!["a", "b", "a"].into_iter().collect();
        let schema = Arc::new(Schema::new(vec![Field::new(
            "e",
            dict.data_type().clone(),
            false,
        )]));
        let b = RecordBatch::try_new(schema.clone(), vec![Arc::new(dict)]).unwrap();
        let mut bytes = write_stream(&schema, &[MetaBatch::plain(b.clone())]).unwrap();
        let s2 = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, true)]));
        let b2 =
            RecordBatch::try_new(s2.clone(), vec![Arc::new(StringArray::from(vec!["x"]))]).unwrap();
        bytes.extend(write_stream(&s2, &[MetaBatch::plain(b2.clone())]).unwrap());
        let streams = read_streams(Bytes::from(bytes), ReadLimits::default()).unwrap();
        assert_eq!(streams.len(), 2);
        assert_eq!(streams[0].batches[0].batch, b);
        assert_eq!(streams[1].batches[0].batch, b2);
    }

    #[test]
    fn truncated_and_garbage_inputs_error() {
        let schema = Arc::new(Schema::new(vec![Field::new("d", DataType::Binary, false)]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(BinaryArray::from_vec(vec![b"hello world"]))],
        )
        .unwrap();
        let bytes = write_stream(&schema, &[MetaBatch::plain(b)]).unwrap();
        // Every strict prefix that cuts a message must fail (never panic).
        for cut in 1..bytes.len() - 8 {
            let r = read_stream(Bytes::copy_from_slice(&bytes[..cut]), ReadLimits::default());
            if let Ok(s) = &r {
                // Cutting exactly at a message boundary yields a shorter valid stream.
                assert!(
                    s.batches.is_empty(),
                    "prefix of {cut} bytes parsed as a batch"
                );
            }
        }
        for garbage in [
            &b""[..],
            b"hello",
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
        ] {
            assert!(read_stream(Bytes::copy_from_slice(garbage), ReadLimits::default()).is_err());
        }
        // Flip bytes everywhere: errors are fine, panics are not.
        for i in 0..bytes.len() {
            let mut m = bytes.clone();
            m[i] ^= 0x5a;
            let _ = read_stream(Bytes::from(m), ReadLimits::default());
        }
    }

    /// A sink that takes at most 3 bytes per call: the framing parser must not care.
    struct Trickle(Vec<u8>);
    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let n = b.len().min(3);
            self.0.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn metadata_injection_survives_any_write_chunking() {
        let dict: DictionaryArray<arrow_array::types::Int16Type> =
            vec!["a", "b", "a"].into_iter().collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("e", dict.data_type().clone(), false),
            Field::new("d", DataType::Binary, false),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(dict),
                Arc::new(BinaryArray::from_vec(vec![b"x", b"yy", b"zzz"])),
            ],
        )
        .unwrap();
        let mut w = IpcStreamWriter::try_new(Trickle(Vec::new()), schema.clone()).unwrap();
        w.write(&b, &md(&[("k", "v1")])).unwrap();
        w.write(&b, &Metadata::new()).unwrap();
        w.write(&b, &md(&[("k", "v3")])).unwrap();
        let bytes = w.finish().unwrap().0;
        assert_eq!(bytes.len() % 8, 0, "framing stays 8-byte aligned");
        let s = read_stream(Bytes::from(bytes.clone()), ReadLimits::default()).unwrap();
        assert_eq!(s.batches.len(), 3);
        assert_eq!(s.batches[0].metadata, md(&[("k", "v1")]));
        assert!(s.batches[1].metadata.is_empty());
        assert_eq!(s.batches[2].metadata, md(&[("k", "v3")]));
        for x in &s.batches {
            assert_eq!(x.batch, b);
        }
        // The same stream written in one piece is byte-identical.
        let whole = write_stream(
            &schema,
            &[
                MetaBatch {
                    batch: b.clone(),
                    metadata: md(&[("k", "v1")]),
                },
                MetaBatch::plain(b.clone()),
                MetaBatch {
                    batch: b.clone(),
                    metadata: md(&[("k", "v3")]),
                },
            ],
        )
        .unwrap();
        assert_eq!(whole, bytes);
    }

    #[test]
    fn batch_count_limit() {
        let schema = Arc::new(Schema::empty());
        let empty = RecordBatch::new_empty(schema.clone());
        let batches = vec![MetaBatch::plain(empty); 5];
        let bytes = write_stream(&schema, &batches).unwrap();
        let limits = ReadLimits {
            max_batches: 4,
            ..Default::default()
        };
        let err = read_stream(Bytes::from(bytes), limits).unwrap_err();
        assert!(err.to_string().contains("more than 4 batches"), "{err}");
    }
}
