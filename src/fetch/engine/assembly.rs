//! Piece assembly: how an object is cut into chunks, where a response's bytes land (and where
//! a retry resumes), and the pieces of the one buffer they are written into.

use bytes::BytesMut;

use super::request::Ask;
use crate::error::{Error, Result};

/// Smallest range an object is split into to use every connection.
const MIN_SPLIT_CHUNK: u64 = 1024 * 1024;

/// How an object is fetched: the range size and the chunks.
#[derive(Debug)]
pub(super) struct Plan {
    /// The range size used for this object (also the piece size of the buffer).
    pub(super) chunk_size: u64,
    /// Parallel range requests, one per chunk (else one request for the whole object).
    pub(super) ranged: bool,
    pub(super) chunks: Vec<Chunk>,
}

impl Plan {
    /// Objects too small for `concurrency` full chunks are split into `concurrency` equal
    /// ranges instead (not below 1 MiB), so a 64 MiB object still uses every connection.
    pub(super) fn new(
        size: Option<u64>,
        ranges: bool,
        chunk_size: u64,
        concurrency: usize,
        parallel_threshold: u64,
    ) -> Plan {
        let chunk_size = match size {
            Some(size) => chunk_size
                .min(
                    size.div_ceil(concurrency.max(1) as u64)
                        .max(MIN_SPLIT_CHUNK),
                )
                .max(1),
            None => chunk_size.max(1),
        };
        let ranged = ranges
            && size.is_some_and(|s| s >= parallel_threshold && s > chunk_size)
            && concurrency > 1;
        let chunks = match (ranged, size) {
            (true, Some(size)) => (0..size.div_ceil(chunk_size))
                .map(|i| Chunk::new(i * chunk_size, Some(((i + 1) * chunk_size).min(size))))
                .collect(),
            (_, size) => vec![Chunk::new(0, size)],
        };
        Plan {
            chunk_size,
            ranged,
            chunks,
        }
    }
}

/// A byte range fetched by one request at a time (plus hedges and retries).
#[derive(Debug)]
pub(super) struct Chunk {
    /// Exclusive; `None` while the object's size is unknown.
    pub(super) end: Option<u64>,
    /// `[start, filled)` is in the buffer.
    pub(super) filled: u64,
    pub(super) live: Vec<u64>,
    pub(super) failures: u32,
    pub(super) hedges: u32,
    pub(super) not_before: Option<std::time::Instant>,
    pub(super) done: bool,
}

/// Where a response's bytes fall in its chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Landing {
    /// They start beyond the filled mark: writing them would leave a hole.
    Beyond,
    /// Nothing new: already written (by a faster response) or past the chunk's end.
    Known,
    /// `[lo, hi)` is new and is to be written.
    New { lo: u64, hi: u64 },
}

impl Chunk {
    pub(super) fn new(start: u64, end: Option<u64>) -> Chunk {
        Chunk {
            end,
            filled: start,
            live: Vec::new(),
            failures: 0,
            hedges: 0,
            not_before: None,
            done: false,
        }
    }

    /// The next request for this chunk: it resumes at the filled mark, and asks for a range
    /// unless it wants the whole object or the store cannot serve ranges.
    pub(super) fn ask(&self, size: Option<u64>, ranges: bool) -> Ask {
        let start = self.filled;
        let range_last = self.end.map(|e| e - 1);
        let whole = start == 0 && (self.end.is_none() || self.end == size);
        let ranged = ranges && !whole && range_last.is_some();
        Ask {
            start,
            last: if ranged { range_last } else { None },
        }
    }

    /// Where the response bytes `[from, to)` land.
    pub(super) fn landing(&self, from: u64, to: u64) -> Landing {
        if from > self.filled {
            return Landing::Beyond;
        }
        let lo = from.max(self.filled);
        let hi = to.min(self.end.unwrap_or(u64::MAX));
        if hi > lo {
            Landing::New { lo, hi }
        } else {
            Landing::Known
        }
    }

    /// Whether the bytes up to `end` are in the buffer (only trusted once the object's size,
    /// hence the piece layout, is known).
    pub(super) fn covers(&self, end: u64, size_known: bool) -> bool {
        self.done || (size_known && self.filled >= end)
    }
}

enum PieceBuf {
    Unallocated,
    Ready(BytesMut),
    Sent,
}

/// The object's buffer, in pieces of `piece` bytes.
pub(super) struct Pieces {
    size: Option<u64>,
    piece: u64,
    bufs: Vec<PieceBuf>,
    next_flush: usize,
}

impl Pieces {
    /// One allocation split into views (joined for free at the end) when `single`, else one
    /// allocation per piece, made when the piece is first written (and freed once the
    /// decoder has consumed it).
    pub(super) fn new(size: Option<u64>, piece: u64, single: bool) -> Pieces {
        let mut bufs = Vec::new();
        if let Some(size) = size {
            let count = size.div_ceil(piece) as usize;
            if single {
                let mut whole = BytesMut::zeroed(size as usize);
                for _ in 0..count {
                    let n = (piece as usize).min(whole.len());
                    bufs.push(PieceBuf::Ready(whole.split_to(n)));
                }
            } else {
                bufs.resize_with(count, || PieceBuf::Unallocated);
            }
        }
        Pieces {
            size,
            piece,
            bufs,
            next_flush: 0,
        }
    }

    /// The object's size became known (its body ended).
    pub(super) fn set_size(&mut self, size: u64) {
        self.size = Some(size);
    }

    fn piece_len(&self, i: usize) -> u64 {
        let start = i as u64 * self.piece;
        match self.size {
            Some(s) => self.piece.min(s.saturating_sub(start)),
            None => self.piece,
        }
    }

    /// Writes `data` at object offset `pos`. Writes are contiguous per chunk, so a piece of
    /// an object of unknown size only ever grows at its end.
    pub(super) fn write(&mut self, mut pos: u64, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let i = (pos / self.piece) as usize;
            let off = (pos % self.piece) as usize;
            if i >= self.bufs.len() {
                if self.size.is_some() || i != self.bufs.len() {
                    return Err(Error::Internal(format!("write past the buffer at {pos}")));
                }
                self.bufs.push(PieceBuf::Unallocated);
            }
            let room = (self.piece_len(i) as usize).saturating_sub(off);
            if room == 0 {
                return Err(Error::Internal(format!("write past the buffer at {pos}")));
            }
            let n = room.min(data.len());
            if matches!(self.bufs[i], PieceBuf::Unallocated) {
                let len = self.piece_len(i) as usize;
                self.bufs[i] = PieceBuf::Ready(if self.size.is_some() {
                    BytesMut::zeroed(len)
                } else {
                    BytesMut::with_capacity(len)
                });
            }
            let PieceBuf::Ready(buf) = &mut self.bufs[i] else {
                return Err(Error::Internal(format!(
                    "write to a flushed piece at {pos}"
                )));
            };
            if self.size.is_some() {
                buf[off..off + n].copy_from_slice(&data[..n]);
            } else if buf.len() == off {
                buf.extend_from_slice(&data[..n]);
            } else {
                return Err(Error::Internal(format!("non-contiguous write at {pos}")));
            }
            pos += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    /// Takes the next piece in order when `complete(index, end offset, size known)` says all
    /// its bytes are in. A piece never written (only possible when flushing everything) is
    /// handed over as zeros.
    pub(super) fn take_next(
        &mut self,
        complete: impl Fn(usize, u64, bool) -> bool,
    ) -> Option<BytesMut> {
        let i = self.next_flush;
        if i >= self.bufs.len() {
            return None;
        }
        let end = i as u64 * self.piece + self.piece_len(i);
        if !complete(i, end, self.size.is_some()) {
            return None;
        }
        let piece = match std::mem::replace(&mut self.bufs[i], PieceBuf::Sent) {
            PieceBuf::Ready(b) => b,
            PieceBuf::Unallocated => BytesMut::zeroed(self.piece_len(i) as usize),
            PieceBuf::Sent => BytesMut::new(),
        };
        self.next_flush += 1;
        Some(piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn ends(plan: &Plan) -> Vec<(u64, Option<u64>)> {
        plan.chunks.iter().map(|c| (c.filled, c.end)).collect()
    }

    fn drain(p: &mut Pieces) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(b) = p.take_next(|_, _, _| true) {
            out.push(b.to_vec());
        }
        out
    }

    #[test]
    fn large_objects_split_into_chunk_size_ranges_with_a_short_last_one() {
        let plan = Plan::new(Some(40 * MIB + 1), true, 16 * MIB, 2, 8 * MIB);
        assert!(plan.ranged);
        assert_eq!(plan.chunk_size, 16 * MIB);
        assert_eq!(
            ends(&plan),
            vec![
                (0, Some(16 * MIB)),
                (16 * MIB, Some(32 * MIB)),
                (32 * MIB, Some(40 * MIB + 1)),
            ]
        );
    }

    #[test]
    fn mid_sized_objects_use_every_connection_but_not_below_one_mib() {
        let plan = Plan::new(Some(64 * MIB), true, 16 * MIB, 8, 8 * MIB);
        assert_eq!((plan.chunk_size, plan.chunks.len()), (8 * MIB, 8));
        let plan = Plan::new(Some(9 * MIB), true, 16 * MIB, 64, 8 * MIB);
        assert_eq!((plan.chunk_size, plan.chunks.len()), (MIB, 9));
    }

    #[test]
    fn small_unranged_or_unknown_objects_are_one_chunk() {
        for (size, ranges, concurrency) in [
            (Some(8 * MIB - 1), true, 8),
            (Some(64 * MIB), false, 8),
            (Some(64 * MIB), true, 1),
            (None, true, 8),
            (Some(0), true, 8),
            (Some(1), true, 8),
        ] {
            let plan = Plan::new(size, ranges, 16 * MIB, concurrency, 8 * MIB);
            assert!(!plan.ranged, "{size:?}");
            assert_eq!(ends(&plan), vec![(0, size)], "{size:?}");
        }
        // The range size never drops to zero, even for an empty object.
        assert_eq!(Plan::new(Some(0), true, 16 * MIB, 8, 0).chunk_size, MIB);
        assert_eq!(Plan::new(None, true, 0, 8, 0).chunk_size, 1);
    }

    #[test]
    fn an_object_no_larger_than_one_chunk_is_not_ranged_even_above_the_threshold() {
        let plan = Plan::new(Some(MIB), true, 16 * MIB, 8, 0);
        assert!(!plan.ranged);
        assert_eq!(plan.chunks.len(), 1);
    }

    #[test]
    fn requests_ask_for_what_is_missing() {
        let mut c = Chunk::new(16, Some(32));
        assert_eq!(c.ask(Some(40), true), Ask::range(16, 31));
        // A retry resumes at the filled mark, also at an exact piece boundary.
        c.filled = 24;
        assert_eq!(c.ask(Some(40), true), Ask::range(24, 31));
        // No ranges: the whole object again (the chunk takes what it needs).
        assert_eq!(c.ask(Some(40), false), Ask::whole(24));
        // The only chunk of an object, from its start, asks for the whole object.
        let only = Chunk::new(0, Some(40));
        assert_eq!(only.ask(Some(40), true), Ask::whole(0));
        let unknown = Chunk::new(0, None);
        assert_eq!(unknown.ask(None, true), Ask::whole(0));
        // The first chunk of several is a range.
        let first = Chunk::new(0, Some(16));
        assert_eq!(first.ask(Some(40), true), Ask::range(0, 15));
        // A retry of the only chunk after a broken response resumes with a range.
        let mut resumed = Chunk::new(0, Some(40));
        resumed.filled = 1;
        assert_eq!(resumed.ask(Some(40), true), Ask::range(1, 39));
        let one_byte = Chunk::new(0, Some(1));
        assert_eq!(one_byte.ask(Some(1), true), Ask::whole(0));
    }

    #[test]
    fn response_bytes_land_after_what_is_already_there() {
        let mut c = Chunk::new(16, Some(32));
        assert_eq!(c.landing(16, 20), Landing::New { lo: 16, hi: 20 });
        c.filled = 20;
        // A hedge or a resumed retry overlapping what is there: only the new part.
        assert_eq!(c.landing(16, 24), Landing::New { lo: 20, hi: 24 });
        assert_eq!(c.landing(16, 20), Landing::Known);
        assert_eq!(c.landing(20, 20), Landing::Known);
        // A whole-object answer to a range: cut at the chunk's end.
        assert_eq!(c.landing(0, 40), Landing::New { lo: 20, hi: 32 });
        assert_eq!(c.landing(21, 22), Landing::Beyond);
        c.filled = 32;
        assert_eq!(c.landing(32, 40), Landing::Known);
        let open = Chunk::new(0, None);
        assert_eq!(
            open.landing(0, u64::MAX),
            Landing::New {
                lo: 0,
                hi: u64::MAX
            }
        );
    }

    #[test]
    fn a_chunk_covers_a_piece_once_filled_and_the_size_is_known() {
        let mut c = Chunk::new(0, Some(8));
        c.filled = 8;
        assert!(c.covers(8, true));
        assert!(!c.covers(8, false));
        assert!(!c.covers(9, true));
        c.done = true;
        assert!(c.covers(100, false));
    }

    #[test]
    fn pieces_of_a_known_size_with_a_short_last_piece() {
        for single in [true, false] {
            let mut p = Pieces::new(Some(10), 4, single);
            // Across piece boundaries, out of order between pieces.
            p.write(8, b"89").unwrap();
            p.write(0, b"012345").unwrap();
            p.write(6, b"67").unwrap();
            assert_eq!(
                drain(&mut p),
                vec![b"0123".to_vec(), b"4567".to_vec(), b"89".to_vec()]
            );
            assert!(p.write(10, b"x").is_err(), "past the end");
            assert!(p.write(0, b"x").is_err(), "into a flushed piece");
        }
    }

    #[test]
    fn pieces_are_handed_over_in_order_and_only_when_complete() {
        let mut p = Pieces::new(Some(8), 4, false);
        p.write(4, b"4567").unwrap();
        assert!(p
            .take_next(|i, end, known| i == 1 && end == 8 && known)
            .is_none());
        assert_eq!(
            p.take_next(|i, end, _| i == 0 && end == 4).unwrap(),
            &[0u8; 4][..]
        );
        assert_eq!(p.take_next(|_, _, _| true).unwrap(), &b"4567"[..]);
        assert!(p.take_next(|_, _, _| true).is_none());
    }

    #[test]
    fn empty_and_one_byte_objects() {
        let mut empty = Pieces::new(Some(0), 1024, true);
        assert!(drain(&mut empty).is_empty());
        assert!(empty.write(0, b"x").is_err());
        for single in [true, false] {
            let mut one = Pieces::new(Some(1), 1024, single);
            one.write(0, b"z").unwrap();
            assert_eq!(drain(&mut one), vec![b"z".to_vec()]);
        }
    }

    #[test]
    fn pieces_of_an_unknown_size_grow_at_their_end() {
        let mut p = Pieces::new(None, 4, false);
        p.write(0, b"abcde").unwrap();
        assert!(p.write(2, b"x").is_err(), "non-contiguous");
        assert!(p.write(12, b"x").is_err(), "skips a piece");
        p.write(5, b"f").unwrap();
        p.set_size(6);
        assert_eq!(drain(&mut p), vec![b"abcd".to_vec(), b"ef".to_vec()]);
    }

    #[test]
    fn an_unwritten_piece_is_flushed_as_zeros() {
        let mut p = Pieces::new(Some(6), 4, false);
        assert_eq!(drain(&mut p), vec![vec![0; 4], vec![0; 2]]);
    }
}
