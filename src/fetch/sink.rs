//! The consumer side of a download, on a blocking thread: it receives the object's pieces in
//! order as soon as each is complete, so hashing and decompression overlap the transfer.
//!
//! Identity objects are joined without copying (the pieces are views of one allocation made
//! up front, and `BytesMut::unsplit` of adjacent views is O(1)). Compressed objects are
//! decoded as a stream; each piece is dropped once consumed.

use std::io::{self, BufRead, Read};
use std::sync::mpsc::Receiver;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// How the stored bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Identity,
    Zstd,
    Gzip,
}

impl Encoding {
    /// From a normalized `Content-Encoding` (see `crate::wire::http::normalize_content_encoding`).
    pub(crate) fn parse(normalized: Option<&str>) -> Result<Encoding> {
        match normalized {
            None => Ok(Encoding::Identity),
            Some("zstd") => Ok(Encoding::Zstd),
            Some("gzip") => Ok(Encoding::Gzip),
            Some(other) => Err(Error::Protocol(format!(
                "unsupported content-encoding {other:?}"
            ))),
        }
    }
}

/// What the sink produces.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SinkMode {
    /// The stored bytes, joined.
    Raw,
    /// The decoded bytes, capped at `max_decoded`, with their sha256 when `hash`.
    Decode {
        encoding: Encoding,
        max_decoded: u64,
        hash: bool,
    },
}

/// What the sink produced.
#[derive(Debug)]
pub(crate) struct SinkOutput {
    pub data: Bytes,
    /// Lowercase hex sha256 of `data` (decode mode with `hash`).
    pub sha256: Option<String>,
}

/// Consumes pieces until the sender is dropped. Must run on a blocking thread.
pub(crate) fn run(mode: SinkMode, rx: Receiver<BytesMut>) -> Result<SinkOutput> {
    match mode {
        SinkMode::Raw => Ok(SinkOutput {
            data: join(rx, None),
            sha256: None,
        }),
        SinkMode::Decode {
            encoding: Encoding::Identity,
            max_decoded,
            hash,
        } => {
            let mut hasher = hash.then(Sha256::new);
            let data = join(rx, hasher.as_mut());
            if data.len() as u64 > max_decoded {
                return Err(decoded_too_large(
                    format!("object of {} bytes", data.len()),
                    max_decoded,
                ));
            }
            Ok(SinkOutput {
                data,
                sha256: hasher.map(|h| hex::encode(h.finalize())),
            })
        }
        SinkMode::Decode {
            encoding,
            max_decoded,
            hash,
        } => decode(encoding, max_decoded, hash, rx),
    }
}

fn join(rx: Receiver<BytesMut>, mut hasher: Option<&mut Sha256>) -> Bytes {
    let mut whole: Option<BytesMut> = None;
    for piece in rx {
        if let Some(h) = hasher.as_mut() {
            h.update(&piece);
        }
        match whole.as_mut() {
            None => whole = Some(piece),
            Some(w) => w.unsplit(piece),
        }
    }
    whole.map(BytesMut::freeze).unwrap_or_default()
}

fn decoded_too_large(what: String, limit: u64) -> Error {
    Error::TooLarge {
        what,
        limit_name: "max_decompressed_bytes",
        limit,
    }
}

/// Reads pieces from the channel as one byte stream.
struct PieceReader {
    rx: Receiver<BytesMut>,
    current: Option<BytesMut>,
    pos: usize,
}

impl BufRead for PieceReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        loop {
            let exhausted = match &self.current {
                Some(c) => self.pos >= c.len(),
                None => true,
            };
            if !exhausted {
                break;
            }
            match self.rx.recv() {
                Ok(piece) => {
                    // Dropping the consumed piece here is what frees compressed input early.
                    self.current = Some(piece);
                    self.pos = 0;
                }
                Err(_) => {
                    self.current = None;
                    return Ok(&[]);
                }
            }
        }
        Ok(self
            .current
            .as_deref()
            .map(|c| &c[self.pos..])
            .unwrap_or(&[]))
    }

    fn consume(&mut self, amt: usize) {
        self.pos += amt;
    }
}

impl Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

fn decode(
    encoding: Encoding,
    max_decoded: u64,
    hash: bool,
    rx: Receiver<BytesMut>,
) -> Result<SinkOutput> {
    let mut reader = PieceReader {
        rx,
        current: None,
        pos: 0,
    };
    let mut initial = 0u64;
    if encoding == Encoding::Zstd {
        let head = reader.fill_buf()?;
        // Checked before the output buffer exists: a frame that declares a huge size is
        // refused without allocating anything for it.
        if let Ok(Some(declared)) = zstd::zstd_safe::get_frame_content_size(head) {
            if declared > max_decoded {
                return Err(decoded_too_large(
                    format!("zstd frame declaring {declared} bytes"),
                    max_decoded,
                ));
            }
            initial = declared;
        }
    }
    let mut out: Vec<u8> = Vec::new();
    out.try_reserve_exact(initial as usize)
        .map_err(|e| Error::Internal(format!("cannot allocate {initial} bytes: {e}")))?;
    let mut hasher = hash.then(Sha256::new);
    let codec = match encoding {
        Encoding::Zstd => "zstd",
        Encoding::Gzip => "gzip",
        Encoding::Identity => "identity",
    };
    let invalid = |e: io::Error| Error::Protocol(format!("invalid {codec} data: {e}"));
    match encoding {
        Encoding::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(reader).map_err(invalid)?;
            drain(decoder, &mut out, max_decoded, hasher.as_mut(), codec)?;
        }
        Encoding::Gzip => {
            let decoder = flate2::bufread::GzDecoder::new(reader);
            drain(decoder, &mut out, max_decoded, hasher.as_mut(), codec)?;
        }
        Encoding::Identity => {
            drain(reader, &mut out, max_decoded, hasher.as_mut(), codec)?;
        }
    }
    Ok(SinkOutput {
        data: Bytes::from(out),
        sha256: hasher.map(|h| hex::encode(h.finalize())),
    })
}

/// Decodes everything into `out`, hashing as it goes, refusing output beyond `max`.
fn drain<R: Read>(
    mut reader: R,
    out: &mut Vec<u8>,
    max: u64,
    mut hasher: Option<&mut Sha256>,
    codec: &str,
) -> Result<()> {
    let mut scratch = vec![0u8; 256 * 1024];
    loop {
        let n = match reader.read(&mut scratch) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Protocol(format!("invalid {codec} data: {e}"))),
        };
        if (out.len() + n) as u64 > max {
            return Err(decoded_too_large(
                format!("decoded {codec} stream of more than {max} bytes"),
                max,
            ));
        }
        if let Some(h) = hasher.as_mut() {
            h.update(&scratch[..n]);
        }
        out.try_reserve(n)
            .map_err(|e| Error::Internal(format!("cannot grow the decode buffer: {e}")))?;
        out.extend_from_slice(&scratch[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    fn feed(pieces: Vec<Vec<u8>>) -> Receiver<BytesMut> {
        let (tx, rx) = channel();
        for p in pieces {
            tx.send(BytesMut::from(&p[..])).unwrap();
        }
        rx
    }

    fn split(data: &[u8], size: usize) -> Vec<Vec<u8>> {
        data.chunks(size).map(<[u8]>::to_vec).collect()
    }

    #[test]
    fn identity_join_is_zero_copy_and_hashed() {
        let mut whole = BytesMut::zeroed(10);
        whole.copy_from_slice(b"0123456789");
        let base = whole.as_ptr();
        let a = whole.split_to(4);
        let b = whole.split_to(4);
        let (tx, rx) = channel();
        tx.send(a).unwrap();
        tx.send(b).unwrap();
        tx.send(whole).unwrap();
        drop(tx);
        let out = run(
            SinkMode::Decode {
                encoding: Encoding::Identity,
                max_decoded: 10,
                hash: true,
            },
            rx,
        )
        .unwrap();
        assert_eq!(&out.data[..], b"0123456789");
        assert_eq!(out.data.as_ptr(), base, "joined without a copy");
        assert_eq!(
            out.sha256.unwrap(),
            crate::object::sha256_hex(b"0123456789")
        );
    }

    #[test]
    fn zstd_streams_across_pieces_and_caps() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let z = zstd::bulk::compress(&data, 3).unwrap();
        let ok = run(
            SinkMode::Decode {
                encoding: Encoding::Zstd,
                max_decoded: data.len() as u64,
                hash: true,
            },
            feed(split(&z, 1000)),
        )
        .unwrap();
        assert_eq!(ok.data.len(), data.len());
        assert!(ok.data == data);
        assert_eq!(ok.sha256.unwrap(), crate::object::sha256_hex(&data));
        let err = run(
            SinkMode::Decode {
                encoding: Encoding::Zstd,
                max_decoded: 1000,
                hash: false,
            },
            feed(split(&z, 1000)),
        )
        .unwrap_err();
        assert!(err.to_string().contains("declaring"), "{err}");
        // A streaming frame (no declared size) is capped while decoding.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        io::Write::write_all(&mut enc, &data).unwrap();
        let streamed = enc.finish().unwrap();
        let err = run(
            SinkMode::Decode {
                encoding: Encoding::Zstd,
                max_decoded: 1_000_000,
                hash: false,
            },
            feed(split(&streamed, 777)),
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_decompressed_bytes"), "{err}");
        // Garbage and truncation are refused.
        let err = run(
            SinkMode::Decode {
                encoding: Encoding::Zstd,
                max_decoded: 1 << 30,
                hash: false,
            },
            feed(vec![z[..z.len() / 2].to_vec()]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("invalid zstd"), "{err}");
    }

    #[test]
    fn gzip_and_encodings() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut enc, b"hello world").unwrap();
        let gz = enc.finish().unwrap();
        let out = run(
            SinkMode::Decode {
                encoding: Encoding::Gzip,
                max_decoded: 100,
                hash: false,
            },
            feed(split(&gz, 3)),
        )
        .unwrap();
        assert_eq!(&out.data[..], b"hello world");
        assert_eq!(Encoding::parse(Some("gzip")).unwrap(), Encoding::Gzip);
        assert_eq!(Encoding::parse(None).unwrap(), Encoding::Identity);
        assert!(Encoding::parse(Some("br")).is_err());
    }
}
