//! Turning the bytes of a stored object back into the batch a pointer stood for: decode per
//! `Content-Encoding` within a cap, verify sha256, then apply the reader rules of the wire spec
//! (§5.5). Shared by the client (response pointers) and the server (request pointers).

use std::io::Read;
use std::time::Duration;

use arrow_schema::SchemaRef;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::wire::http::normalize_content_encoding;
use crate::wire::{
    classify, keys, read_stream, schemas_equal, BatchKind, LogMessage, MetaBatch, ReadLimits,
    RpcError,
};

/// Decodes `encoded` per its `Content-Encoding` (`zstd`, `gzip`, `identity` or none), refusing
/// output above `max_decoded` (zstd frames that declare a larger size are refused before any
/// allocation).
pub fn decode_content(encoded: Bytes, encoding: Option<&str>, max_decoded: u64) -> Result<Bytes> {
    decode_content_metered(encoded, encoding, max_decoded, &mut |_| Ok(()))
}

/// The step in which [`decode_content_metered`] grows its output.
pub const DECODE_STEP_BYTES: u64 = 8 << 20;

/// As [`decode_content`], calling `meter(n)` before the output grows by `n` bytes (in steps
/// of [`DECODE_STEP_BYTES`]), so a caller can account the memory as it is used, or stop the
/// decoding by returning an error.
pub fn decode_content_metered(
    encoded: Bytes,
    encoding: Option<&str>,
    max_decoded: u64,
    meter: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<Bytes> {
    let too_large = |what: String| Error::TooLarge {
        what,
        limit_name: "max_decompressed_bytes",
        limit: max_decoded,
    };
    match normalize_content_encoding(encoding).as_deref() {
        None => {
            if encoded.len() as u64 > max_decoded {
                return Err(too_large(format!("object of {} bytes", encoded.len())));
            }
            Ok(encoded)
        }
        Some("zstd") => {
            if let Ok(Some(declared)) = zstd::zstd_safe::get_frame_content_size(&encoded) {
                if declared > max_decoded {
                    return Err(too_large(format!("zstd frame declaring {declared} bytes")));
                }
            }
            let decoder = zstd::stream::read::Decoder::new(&encoded[..])
                .map_err(|e| Error::Protocol(format!("invalid zstd data: {e}")))?;
            read_capped(decoder, max_decoded, "zstd", &too_large, meter)
        }
        Some("gzip") => {
            let decoder = flate2::read::GzDecoder::new(&encoded[..]);
            read_capped(decoder, max_decoded, "gzip", &too_large, meter)
        }
        Some(other) => Err(Error::Protocol(format!(
            "unsupported content-encoding {other:?}"
        ))),
    }
}

fn read_capped<R: Read>(
    reader: R,
    max: u64,
    codec: &str,
    too_large: &dyn Fn(String) -> Error,
    meter: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<Bytes> {
    let mut out = Vec::new();
    let mut limited = reader.take(max.saturating_add(1));
    loop {
        meter(DECODE_STEP_BYTES)?;
        // Growing by exact steps: a large buffer is an mmap that realloc moves by remapping,
        // so this costs no copy, and the capacity never runs ahead of what was metered.
        out.reserve_exact(DECODE_STEP_BYTES as usize);
        let n = (&mut limited)
            .take(DECODE_STEP_BYTES)
            .read_to_end(&mut out)
            .map_err(|e| Error::Protocol(format!("invalid {codec} data: {e}")))?;
        if (n as u64) < DECODE_STEP_BYTES {
            break;
        }
    }
    if out.len() as u64 > max {
        return Err(too_large(format!(
            "decoded {codec} stream of more than {max} bytes"
        )));
    }
    Ok(Bytes::from(out))
}

/// Lowercase hex sha256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The result of resolving a pointer.
#[derive(Debug, Clone)]
pub struct ResolvedBatch {
    /// The data batch, with metadata = inner metadata + `vgi_rpc.location.fetch_ms` and
    /// `vgi_rpc.location.source`.
    pub batch: MetaBatch,
    /// Log batches found in the object, in order.
    pub logs: Vec<LogMessage>,
}

/// Applies the reader rules to a decoded object: verify sha256 (if expected), parse the IPC
/// stream, reject nested pointers, collect logs, raise an EXCEPTION, require exactly one data
/// batch whose schema equals `expected_schema`, and stamp the metadata.
pub fn resolve_object(
    decoded: Bytes,
    expected_schema: &SchemaRef,
    expected_sha256: Option<&str>,
    source_url: &str,
    fetch_time: Duration,
) -> Result<ResolvedBatch> {
    let redacted = spillway_storage::redact_url(source_url);
    if let Some(expected) = expected_sha256 {
        let actual = sha256_hex(&decoded);
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(Error::Checksum {
                url: redacted,
                expected: expected.to_string(),
                actual,
            });
        }
    }
    let stream = read_stream(decoded, ReadLimits::default())?;
    let mut logs = Vec::new();
    let mut data: Vec<MetaBatch> = Vec::new();
    for b in stream.batches {
        if b.metadata.contains_key(keys::LOCATION) {
            return Err(Error::Protocol(format!(
                "Redirect loop detected: the object at {redacted} holds another pointer"
            )));
        }
        match classify(&b.batch, &b.metadata) {
            BatchKind::Error => return Err(RpcError::from_metadata(&b.metadata).into()),
            BatchKind::Log => logs.push(LogMessage::from_metadata(&b.metadata)),
            _ => data.push(b),
        }
    }
    let mut batch = match data.len() {
        1 => data.remove(0),
        0 => {
            return Err(Error::Protocol(format!(
                "No data batch found in ExternalLocation stream from {redacted}"
            )))
        }
        n => {
            return Err(Error::Protocol(format!(
                "Multiple data batches ({n}) found in ExternalLocation stream from {redacted}"
            )))
        }
    };
    if !schemas_equal(batch.batch.schema_ref(), expected_schema) {
        return Err(Error::Protocol(format!(
            "Schema mismatch in ExternalLocation: pointer has {expected_schema}, object has {}",
            batch.batch.schema()
        )));
    }
    batch.metadata.insert(
        keys::LOCATION_FETCH_MS.into(),
        format!("{:.1}", fetch_time.as_secs_f64() * 1000.0),
    );
    batch
        .metadata
        .insert(keys::LOCATION_SOURCE.into(), source_url.to_string());
    Ok(ResolvedBatch { batch, logs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{pointer_batch, write_stream, Metadata};
    use arrow_array::{Int64Array, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new(
            "result",
            DataType::Int64,
            false,
        )]))
    }

    fn one(v: i64) -> MetaBatch {
        MetaBatch::plain(
            RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(vec![v]))]).unwrap(),
        )
    }

    #[test]
    fn zstd_bomb_is_refused_before_allocation() {
        let big = vec![0u8; 50 * 1024 * 1024];
        let compressed = zstd::bulk::compress(&big, 3).unwrap();
        assert!(compressed.len() < 100_000);
        let err = decode_content(Bytes::from(compressed), Some("zstd"), 1024 * 1024).unwrap_err();
        assert!(err.to_string().contains("max_decompressed_bytes"), "{err}");
    }

    #[test]
    fn streaming_zstd_frames_without_size_are_capped() {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        std::io::Write::write_all(&mut enc, &vec![7u8; 2 * 1024 * 1024]).unwrap();
        let compressed = enc.finish().unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&compressed).unwrap(),
            None
        );
        let err = decode_content(
            Bytes::from(compressed.clone()),
            Some("ZSTD; x"),
            1024 * 1024,
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_decompressed_bytes"));
        let ok = decode_content(Bytes::from(compressed), Some("zstd"), 4 * 1024 * 1024).unwrap();
        assert_eq!(ok.len(), 2 * 1024 * 1024);
    }

    #[test]
    fn gzip_and_unknown_encodings() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, b"hello").unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(
            &decode_content(Bytes::from(gz), Some("gzip"), 10).unwrap()[..],
            b"hello"
        );
        assert!(decode_content(Bytes::from_static(b"x"), Some("br"), 10).is_err());
        assert!(decode_content(Bytes::from_static(b"not zstd"), Some("zstd"), 10).is_err());
        assert!(decode_content(Bytes::from_static(b"12345"), None, 4).is_err());
    }

    #[test]
    fn reader_rules() {
        let s = schema();
        let body = Bytes::from(write_stream(&s, &[one(7)]).unwrap());
        let sha = sha256_hex(&body);
        let r = resolve_object(
            body.clone(),
            &s,
            Some(&sha),
            "http://h/k?sig=1",
            Duration::from_millis(3),
        )
        .unwrap();
        assert_eq!(r.batch.batch, one(7).batch);
        assert_eq!(r.batch.metadata[keys::LOCATION_FETCH_MS], "3.0");
        assert_eq!(r.batch.metadata[keys::LOCATION_SOURCE], "http://h/k?sig=1");

        let err = resolve_object(
            body.clone(),
            &s,
            Some(&"0".repeat(64)),
            "http://h/k?sig=1",
            Duration::ZERO,
        )
        .unwrap_err();
        assert!(err.to_string().contains("checksum"));
        assert!(!err.to_string().contains("sig=1"));

        let two = Bytes::from(write_stream(&s, &[one(1), one(2)]).unwrap());
        assert!(resolve_object(two, &s, None, "u", Duration::ZERO)
            .unwrap_err()
            .to_string()
            .contains("Multiple data batches (2)"));

        let nested = pointer_batch(&s, "https://x", None);
        let nested = Bytes::from(write_stream(&s, &[nested]).unwrap());
        assert!(resolve_object(nested, &s, None, "u", Duration::ZERO)
            .unwrap_err()
            .to_string()
            .contains("Redirect loop"));

        let other = Arc::new(Schema::new(vec![Field::new(
            "result",
            DataType::Int64,
            true,
        )]));
        assert!(resolve_object(body, &other, None, "u", Duration::ZERO)
            .unwrap_err()
            .to_string()
            .contains("Schema mismatch"));

        let log = LogMessage {
            level: "INFO".into(),
            message: "hi".into(),
            extra: None,
        };
        let with_log = Bytes::from(write_stream(&s, &[log.to_batch(&s), one(3)]).unwrap());
        let r = resolve_object(with_log, &s, None, "u", Duration::ZERO).unwrap();
        assert_eq!(r.logs, vec![log]);

        let exc = RpcError::new("ValueError", "inside").to_batch(&s, None);
        let with_exc = Bytes::from(write_stream(&s, &[exc]).unwrap());
        match resolve_object(with_exc, &s, None, "u", Duration::ZERO) {
            Err(Error::Rpc(e)) => assert_eq!(e.message, "inside"),
            other => panic!("expected rpc error, got {other:?}"),
        }
        let empty = Bytes::from(write_stream(&s, &[]).unwrap());
        assert!(resolve_object(empty, &s, None, "u", Duration::ZERO).is_err());
        let _ = Metadata::new();
    }
}
