//! Moves large result batches into object storage and replaces them with pointer batches.
//!
//! The object is produced in one pass on a blocking thread: the IPC stream writer feeds a
//! counting sha256 hasher, which feeds the zstd encoder, which cuts its output into chunks that
//! cross a bounded channel to the storage upload. Memory therefore stays at the batch itself,
//! arrow's encoded body of it, and a few chunks, whatever the object's size.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use spillway_storage::{
    ObjectMeta, PresignMethod, PresignedUrl, PutOptions, PutPayload, Storage, StorageError,
};
use tokio::sync::mpsc;
use tracing::field::Empty;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::wire::{pointer_batch, IpcStreamWriter, MetaBatch, ARROW_STREAM_CONTENT_TYPE};

/// How externalized objects are compressed. Parsed from `zstd`, `zstd:LEVEL` (1..=22) or `none`.
///
/// ```
/// use spillway::externalize::Compression;
/// assert_eq!("zstd".parse::<Compression>().unwrap(), Compression::Zstd(3));
/// assert_eq!("zstd:9".parse::<Compression>().unwrap(), Compression::Zstd(9));
/// assert_eq!("none".parse::<Compression>().unwrap(), Compression::None);
/// assert!("gzip:99".parse::<Compression>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Stored as raw IPC bytes.
    None,
    /// One zstd frame at this level; stored with `Content-Encoding: zstd`.
    Zstd(i32),
}

impl Compression {
    /// The level used by plain `zstd` (the protocol's reference default).
    pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

    /// The `Content-Encoding` objects are stored with.
    pub fn content_encoding(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Zstd(_) => Some("zstd"),
        }
    }
}

impl FromStr for Compression {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        match s.split_once(':') {
            None if s == "none" || s == "identity" => Ok(Compression::None),
            None if s == "zstd" => Ok(Compression::Zstd(Self::DEFAULT_ZSTD_LEVEL)),
            Some(("zstd", level)) => match level.parse::<i32>() {
                Ok(l) if (1..=22).contains(&l) => Ok(Compression::Zstd(l)),
                _ => Err(Error::Config(format!(
                    "zstd level must be 1..=22, got {level:?}"
                ))),
            },
            _ => Err(Error::Config(format!(
                "compression must be `zstd`, `zstd:LEVEL` or `none`, got {s:?}"
            ))),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Zstd(l) => write!(f, "zstd:{l}"),
        }
    }
}

/// Externalization policy.
#[derive(Debug, Clone)]
pub struct ExternalizeConfig {
    /// Results whose buffers hold at least this many bytes are externalized.
    pub threshold_bytes: u64,
    /// Object compression.
    pub compression: Compression,
    /// Lifetime of the presigned GET URL put in the pointer.
    pub presign_ttl: Duration,
    /// Hard cap on the raw (uncompressed IPC) size of one externalized object.
    pub max_externalized_bytes: Option<u64>,
    /// Size of the chunks handed to the storage upload.
    pub chunk_bytes: usize,
}

impl Default for ExternalizeConfig {
    fn default() -> Self {
        ExternalizeConfig {
            threshold_bytes: 1024 * 1024,
            compression: Compression::Zstd(Compression::DEFAULT_ZSTD_LEVEL),
            presign_ttl: Duration::from_secs(3600),
            max_externalized_bytes: None,
            chunk_bytes: 8 * 1024 * 1024,
        }
    }
}

/// What one externalization produced.
#[derive(Debug, Clone)]
pub struct Externalized {
    /// The pointer batch to put on the wire.
    pub pointer: MetaBatch,
    /// The presigned download URL (secret: log only its redacted form).
    pub url: PresignedUrl,
    /// Lowercase hex sha256 of the raw IPC bytes.
    pub sha256: String,
    /// Raw IPC bytes.
    pub raw_bytes: u64,
    /// Bytes stored (after compression).
    pub stored_bytes: u64,
    /// Wall time spent.
    pub elapsed: Duration,
    /// Where the time went.
    pub timings: ExternalizeTimings,
}

/// Time spent per stage of one externalization. The stages run as a pipeline (the upload
/// overlaps the encoding), so they add up to more than the wall time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExternalizeTimings {
    /// Arrow IPC encoding (CPU, on the encoder thread).
    pub encode: Duration,
    /// sha256 over the raw bytes (CPU, on the encoder thread).
    pub hash: Duration,
    /// zstd compression (CPU, on the encoder thread).
    pub compress: Duration,
    /// Time the encoder thread waited for the upload to take the next chunk.
    pub upload_wait: Duration,
    /// Wall time of the storage upload, from its start to the stored object.
    pub upload: Duration,
}

/// Writes objects to a [`Storage`] and makes pointers to them.
#[derive(Debug, Clone)]
pub struct Externalizer {
    storage: Arc<dyn Storage>,
    config: ExternalizeConfig,
}

impl Externalizer {
    /// An externalizer over `storage` with `config`.
    pub fn new(storage: Arc<dyn Storage>, config: ExternalizeConfig) -> Self {
        Externalizer { storage, config }
    }

    /// The policy.
    pub fn config(&self) -> &ExternalizeConfig {
        &self.config
    }

    /// The storage objects go to.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The externalized-size cap error, worded as the protocol requires.
    pub fn cap_error(&self, actual: u64, cap: u64, method: &str) -> Error {
        Error::ExternalizedTooLarge {
            actual,
            cap,
            method: method.to_string(),
        }
    }

    /// Stores `batches` (one complete IPC stream on `schema`) as one object and returns a
    /// pointer to it on `schema`. `estimated_bytes` is checked against the cap before any work.
    ///
    /// Runs in a `spillway.externalize` span with two children, `vgi_rpc.external/encode`
    /// (the encoder thread) and `vgi_rpc.external/upload` (the storage write), named and
    /// attributed as the reference's spans.
    pub async fn externalize(
        &self,
        schema: &SchemaRef,
        batches: Vec<MetaBatch>,
        estimated_bytes: u64,
        method: &str,
    ) -> Result<Externalized> {
        let span = tracing::debug_span!(
            "spillway.externalize",
            otel.status_code = Empty,
            rpc.method = method,
            compression = %self.config.compression,
            estimated_bytes = crate::telemetry::int(estimated_bytes),
            raw_bytes = Empty,
            stored_bytes = Empty,
            url = Empty,
        );
        let result = self
            .externalize_in_span(schema, batches, estimated_bytes, method)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(x) => {
                span.record("raw_bytes", crate::telemetry::int(x.raw_bytes));
                span.record("stored_bytes", crate::telemetry::int(x.stored_bytes));
                span.record("url", crate::telemetry::url_attribute(x.url.url.as_str()));
                span.record("otel.status_code", "OK");
            }
            Err(_) => {
                span.record("otel.status_code", "ERROR");
            }
        }
        result
    }

    async fn externalize_in_span(
        &self,
        schema: &SchemaRef,
        batches: Vec<MetaBatch>,
        estimated_bytes: u64,
        method: &str,
    ) -> Result<Externalized> {
        let started = Instant::now();
        let cap = self.config.max_externalized_bytes;
        if let Some(cap) = cap {
            if estimated_bytes > cap {
                return Err(self.cap_error(estimated_bytes, cap, method));
            }
        }
        let key = self.storage.new_key();
        // Two chunks in flight: one being uploaded, one being filled.
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(2);
        let compression = self.config.compression;
        let chunk_bytes = self.config.chunk_bytes.max(64 * 1024);
        let writer_schema = schema.clone();
        let method_name = method.to_string();
        // Set when the upload stopped taking chunks: the encoder's error is then only a
        // consequence, and the upload's own error (disk full, store unavailable) is the cause.
        let upload_gone = Arc::new(AtomicBool::new(false));
        let gone = upload_gone.clone();
        let encode_span = tracing::debug_span!(
            "spillway.externalize.encode",
            otel.name = "vgi_rpc.external/encode",
            otel.status_code = Empty,
            compression = %compression,
            original_bytes = Empty,
            encoded_bytes = Empty,
            encode_ms = Empty,
            hash_ms = Empty,
            compress_ms = Empty,
            upload_wait_ms = Empty,
        );
        let encode = tokio::task::spawn_blocking(move || {
            // Ends when the encoder does (the span is dropped with this closure).
            let span = encode_span;
            let sink = ChunkSender {
                tx: tx.clone(),
                buf: BytesMut::with_capacity(chunk_bytes),
                chunk_bytes,
                sent: 0,
                wait: Duration::ZERO,
                upload_gone: gone,
            };
            let result = encode_object(&writer_schema, &batches, compression, cap, sink);
            record_encode(&span, &result);
            if result.is_err() {
                // Tell the upload to abort so no partial object is kept.
                let _ = tx.blocking_send(Err(io::Error::other("the object encoder failed")));
            }
            result.map_err(|e| match e {
                EncodeError::Cap(actual, cap) => Error::ExternalizedTooLarge {
                    actual,
                    cap,
                    method: method_name,
                },
                EncodeError::Other(e) => e,
            })
        });
        let stream = tokio_stream_from(rx);
        let upload_started = Instant::now();
        let put = self.storage.put(
            &key,
            PutPayload::Stream {
                stream,
                size_hint: None,
            },
            PutOptions {
                content_type: Some(ARROW_STREAM_CONTENT_TYPE.to_string()),
                content_encoding: compression.content_encoding().map(str::to_string),
            },
        );
        let upload_span = tracing::debug_span!(
            "spillway.externalize.upload",
            otel.name = "vgi_rpc.external/upload",
            otel.kind = "client",
            otel.status_code = Empty,
            compression = compression.content_encoding().unwrap_or("identity"),
            upload_bytes = Empty,
            original_bytes = Empty,
            url = Empty,
        );
        let put = async {
            let r = put.await;
            (r, upload_started.elapsed())
        }
        .instrument(upload_span.clone());
        let ((put_result, upload_time), encode_result) = tokio::join!(put, encode);
        match &put_result {
            Ok(meta) => {
                upload_span.record("upload_bytes", crate::telemetry::int(meta.size));
                upload_span.record("otel.status_code", "OK");
            }
            Err(_) => {
                upload_span.record("otel.status_code", "ERROR");
            }
        }
        let encoded =
            encode_result.map_err(|e| Error::Internal(format!("encoder task failed: {e}")))?;
        let (encoded, meta) = root_cause(encoded, put_result, upload_gone.load(Ordering::SeqCst))?;
        let Encoded {
            sha256,
            raw_bytes,
            stored_bytes,
            mut timings,
        } = encoded;
        timings.upload = upload_time;
        debug_assert_eq!(meta.size, stored_bytes);
        let url = self
            .storage
            .presign(&key, PresignMethod::Get, self.config.presign_ttl)
            .await?;
        upload_span.record("original_bytes", crate::telemetry::int(raw_bytes));
        upload_span.record("url", crate::telemetry::url_attribute(url.url.as_str()));
        let pointer = pointer_batch(schema, url.url.as_str(), Some(&sha256));
        Ok(Externalized {
            pointer,
            url,
            sha256,
            raw_bytes,
            stored_bytes,
            elapsed: started.elapsed(),
            timings,
        })
    }
}

/// The outcome of one externalization from its two halves. When both failed, the upload's
/// error wins if the encoder only stopped because the upload went away (`upload_gone`): "disk
/// full" or "storage unavailable" explains the failure, "the upload stopped" does not. When the
/// encoder failed first (the cap, a bad batch), the upload merely aborted and the encoder's
/// error wins.
fn root_cause(
    encoded: Result<Encoded>,
    put: std::result::Result<ObjectMeta, StorageError>,
    upload_gone: bool,
) -> Result<(Encoded, ObjectMeta)> {
    match (encoded, put) {
        (Ok(e), Ok(m)) => Ok((e, m)),
        (Err(_), Err(put)) if upload_gone => Err(put.into()),
        (Err(e), _) => Err(e),
        (Ok(_), Err(put)) => Err(put.into()),
    }
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<io::Result<Bytes>>,
) -> futures::stream::BoxStream<'static, io::Result<Bytes>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

enum EncodeError {
    Cap(u64, u64),
    Other(Error),
}

impl From<Error> for EncodeError {
    fn from(e: Error) -> Self {
        EncodeError::Other(e)
    }
}

impl From<io::Error> for EncodeError {
    fn from(e: io::Error) -> Self {
        EncodeError::Other(Error::Io(e))
    }
}

/// What the encoder thread produced.
struct Encoded {
    /// Lowercase hex sha256 of the raw IPC bytes.
    sha256: String,
    /// Raw IPC bytes.
    raw_bytes: u64,
    /// Bytes handed to the upload (after compression).
    stored_bytes: u64,
    /// The stage timings, without the upload's (measured by the caller).
    timings: ExternalizeTimings,
}

fn encode_object(
    schema: &SchemaRef,
    batches: &[MetaBatch],
    compression: Compression,
    cap: Option<u64>,
    sink: ChunkSender,
) -> std::result::Result<Encoded, EncodeError> {
    let started = Instant::now();
    let counter = StoredCounter { inner: sink };
    let (mut hashed, counter) = match compression {
        Compression::None => {
            let hasher = HashingWriter::new(Inner::Plain(counter), cap);
            let (hashed, inner) = write_batches(schema, batches, hasher)?.finish();
            match inner {
                Inner::Plain(c) => (hashed, c),
                Inner::Zstd(_) => unreachable_inner()?,
            }
        }
        Compression::Zstd(level) => {
            let mut enc = zstd::stream::write::Encoder::new(counter, level)?;
            enc.include_checksum(false)?;
            let hasher = HashingWriter::new(Inner::Zstd(enc), cap);
            let (mut hashed, inner) = write_batches(schema, batches, hasher)?.finish();
            match inner {
                Inner::Zstd(enc) => {
                    let t = Instant::now();
                    let counter = enc.finish()?;
                    hashed.downstream_time += t.elapsed();
                    (hashed, counter)
                }
                Inner::Plain(_) => unreachable_inner()?,
            }
        }
    };
    let mut sink = counter.inner;
    sink.flush_chunk()?;
    let total = started.elapsed();
    let downstream = std::mem::take(&mut hashed.downstream_time);
    let timings = ExternalizeTimings {
        encode: total.saturating_sub(hashed.hash_time + downstream),
        hash: hashed.hash_time,
        compress: downstream.saturating_sub(sink.wait),
        upload_wait: sink.wait,
        upload: Duration::ZERO,
    };
    Ok(Encoded {
        sha256: hashed.sha256,
        raw_bytes: hashed.raw_bytes,
        stored_bytes: sink.sent,
        timings,
    })
}

/// The encoder span's outcome and stage timings.
fn record_encode(span: &tracing::Span, result: &std::result::Result<Encoded, EncodeError>) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    match result {
        Ok(e) => {
            span.record("original_bytes", crate::telemetry::int(e.raw_bytes));
            span.record("encoded_bytes", crate::telemetry::int(e.stored_bytes));
            span.record("encode_ms", ms(e.timings.encode));
            span.record("hash_ms", ms(e.timings.hash));
            span.record("compress_ms", ms(e.timings.compress));
            span.record("upload_wait_ms", ms(e.timings.upload_wait));
            span.record("otel.status_code", "OK");
        }
        Err(_) => {
            span.record("otel.status_code", "ERROR");
        }
    }
}

fn unreachable_inner<T>() -> std::result::Result<T, EncodeError> {
    Err(EncodeError::Other(Error::Internal(
        "compression layer changed while encoding".into(),
    )))
}

fn write_batches(
    schema: &SchemaRef,
    batches: &[MetaBatch],
    hasher: HashingWriter,
) -> std::result::Result<HashingWriter, EncodeError> {
    let raw = hasher.raw.clone();
    let cap = hasher.cap;
    // The cap trips inside io::Write, where only an io::Error can travel; the shared counter
    // tells it apart from a real failure.
    let classify = |e: Error| match cap {
        Some(cap) if raw.load(Ordering::Relaxed) > cap => {
            EncodeError::Cap(raw.load(Ordering::Relaxed), cap)
        }
        _ => EncodeError::Other(e),
    };
    let mut writer = IpcStreamWriter::try_new(hasher, schema.clone()).map_err(classify)?;
    for b in batches {
        writer.write(&b.batch, &b.metadata).map_err(classify)?;
    }
    writer.finish().map_err(classify)
}

enum Inner {
    Plain(StoredCounter),
    Zstd(zstd::stream::write::Encoder<'static, StoredCounter>),
}

impl Write for Inner {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Inner::Plain(w) => w.write(buf),
            Inner::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Inner::Plain(w) => w.flush(),
            Inner::Zstd(w) => w.flush(),
        }
    }
}

/// What [`HashingWriter`] measured of the raw IPC bytes.
struct Hashed {
    sha256: String,
    raw_bytes: u64,
    /// Time spent hashing.
    hash_time: Duration,
    /// Time spent in the layers below (compression, chunking, waiting for the upload).
    downstream_time: Duration,
}

/// Hashes and counts the raw IPC bytes on their way to compression, enforcing the cap.
struct HashingWriter {
    hasher: Sha256,
    raw: Arc<AtomicU64>,
    cap: Option<u64>,
    inner: Inner,
    hash_time: Duration,
    downstream_time: Duration,
}

impl HashingWriter {
    fn new(inner: Inner, cap: Option<u64>) -> Self {
        HashingWriter {
            hasher: Sha256::new(),
            raw: Arc::new(AtomicU64::new(0)),
            cap,
            inner,
            hash_time: Duration::ZERO,
            downstream_time: Duration::ZERO,
        }
    }

    /// The digest and counts, and the layer below (still to be finished).
    fn finish(self) -> (Hashed, Inner) {
        let raw_bytes = self.raw.load(Ordering::Relaxed);
        let t = Instant::now();
        let sha256 = hex::encode(self.hasher.finalize());
        let hashed = Hashed {
            sha256,
            raw_bytes,
            hash_time: self.hash_time + t.elapsed(),
            downstream_time: self.downstream_time,
        };
        (hashed, self.inner)
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let t = Instant::now();
        let n = self.inner.write(buf)?;
        let t2 = Instant::now();
        self.downstream_time += t2 - t;
        self.hasher.update(&buf[..n]);
        self.hash_time += t2.elapsed();
        let raw = self.raw.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if let Some(cap) = self.cap {
            if raw > cap {
                return Err(io::Error::other("externalized object exceeds its cap"));
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Passes bytes through to the chunker (kept as a layer so compressed output is what counts).
struct StoredCounter {
    inner: ChunkSender,
}

impl Write for StoredCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Cuts the byte stream into chunks and sends them to the upload, blocking when it lags.
struct ChunkSender {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: BytesMut,
    chunk_bytes: usize,
    sent: u64,
    wait: Duration,
    /// Set when the upload dropped its end of the channel.
    upload_gone: Arc<AtomicBool>,
}

impl ChunkSender {
    fn flush_chunk(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.sent += chunk.len() as u64;
        self.buf.reserve(self.chunk_bytes);
        let t = Instant::now();
        let sent = self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            self.upload_gone.store(true, Ordering::SeqCst);
            io::Error::other("storage upload stopped before the object was complete")
        });
        self.wait += t.elapsed();
        sent
    }
}

impl Write for ChunkSender {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let total = buf.len();
        while !buf.is_empty() {
            let room = self.chunk_bytes - self.buf.len();
            let take = room.min(buf.len());
            self.buf.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.buf.len() >= self.chunk_bytes {
                self.flush_chunk()?;
            }
        }
        Ok(total)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use arrow_array::{BinaryArray, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};
    use async_trait::async_trait;
    use spillway_storage::{ByteRange, GetResult, ObjectKey};
    use url::Url;

    use super::*;

    /// A store whose disk fills up after the first chunk, as the local store's does when the
    /// write fails with ENOSPC.
    #[derive(Debug)]
    struct FillsUp;

    fn unused() -> StorageError {
        StorageError::Backend("not used by this test".into())
    }

    #[async_trait]
    impl Storage for FillsUp {
        fn kind(&self) -> &'static str {
            "fills-up"
        }
        fn new_key(&self) -> ObjectKey {
            ObjectKey::random("t/")
        }
        async fn put_object(
            &self,
            _key: &ObjectKey,
            payload: PutPayload,
            _opts: PutOptions,
        ) -> spillway_storage::Result<ObjectMeta> {
            let PutPayload::Stream { mut stream, .. } = payload else {
                return Err(unused());
            };
            let _first = stream.next().await;
            Err(StorageError::from_io(
                "write temp file",
                io::Error::from(io::ErrorKind::StorageFull),
            ))
        }
        async fn presign(
            &self,
            _key: &ObjectKey,
            _method: PresignMethod,
            _ttl: Duration,
        ) -> spillway_storage::Result<PresignedUrl> {
            Err(unused())
        }
        async fn head(&self, _key: &ObjectKey) -> spillway_storage::Result<ObjectMeta> {
            Err(unused())
        }
        async fn get(
            &self,
            _key: &ObjectKey,
            _range: Option<ByteRange>,
        ) -> spillway_storage::Result<GetResult> {
            Err(unused())
        }
        async fn delete(&self, _key: &ObjectKey) -> spillway_storage::Result<()> {
            Err(unused())
        }
        fn key_from_url(&self, _url: &Url) -> spillway_storage::Result<ObjectKey> {
            Err(unused())
        }
    }

    fn big_batch(schema: &SchemaRef, bytes: usize) -> MetaBatch {
        let data = vec![7u8; bytes];
        let col = BinaryArray::from_vec(vec![data.as_slice()]);
        MetaBatch::plain(RecordBatch::try_new(schema.clone(), vec![Arc::new(col)]).unwrap())
    }

    #[tokio::test]
    async fn a_full_disk_is_reported_instead_of_the_stopped_upload() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new(
            "result",
            DataType::Binary,
            false,
        )]));
        let ext = Externalizer::new(
            Arc::new(FillsUp),
            ExternalizeConfig {
                compression: Compression::None,
                chunk_bytes: 64 * 1024,
                ..ExternalizeConfig::default()
            },
        );
        // Many chunks: the encoder is still sending when the upload gives up.
        let batches = vec![big_batch(&schema, 4 * 1024 * 1024)];
        let err = ext
            .externalize(&schema, batches, 4 * 1024 * 1024, "blob")
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, Error::Storage(StorageError::Full { .. })),
            "{err:?}"
        );
        assert!(text.contains("local store disk is full"), "{text}");
        assert!(!text.contains("stopped before the object"), "{text}");
    }

    #[test]
    fn the_encoder_error_wins_when_it_failed_first() {
        let cap = || Error::ExternalizedTooLarge {
            actual: 9,
            cap: 8,
            method: "m".into(),
        };
        let aborted = || StorageError::UploadAborted {
            reason: "the object encoder failed".into(),
        };
        // The encoder failed on its own (the cap): the upload only aborted.
        let e = root_cause(Err(cap()), Err(aborted()), false).err();
        assert!(
            matches!(e, Some(Error::ExternalizedTooLarge { .. })),
            "{e:?}"
        );
        // The upload went away first: its error is the cause.
        let full = StorageError::Full {
            reason: "local store disk is full".into(),
        };
        let stopped = Error::Io(io::Error::other("storage upload stopped"));
        let e = root_cause(Err(stopped), Err(full), true).err();
        assert!(
            matches!(e, Some(Error::Storage(StorageError::Full { .. }))),
            "{e:?}"
        );
    }
}
