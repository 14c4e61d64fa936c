//! The staging buffer for `O_DIRECT` segment writes.
//!
//! Direct I/O skips the page cache (on this kind of machine the kernel's copy into
//! freshly allocated page-cache pages was most of walsink's CPU), but it only takes
//! whole aligned blocks from aligned memory. So the writer copies the received bytes
//! into this buffer (a cheap user-space copy into memory that is reused for ever) and
//! writes whole [`DIRECT_ALIGN`] blocks covering the bytes it holds. A partly filled
//! last block is written padded with zeros — the bytes a fresh segment file holds
//! there anyway — and kept at the start of the buffer, so that it is written again,
//! fuller, by the next write-out.

use crate::fsops::DIRECT_ALIGN;

/// A zero-initialised byte buffer whose start is aligned to [`DIRECT_ALIGN`].
///
/// Safe code only: a `Vec` one alignment larger than needed, used from its first
/// aligned byte on.
#[derive(Debug)]
pub(crate) struct AlignedBuf {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` zero bytes (`len` a multiple of [`DIRECT_ALIGN`]).
    pub(crate) fn zeroed(len: usize) -> AlignedBuf {
        debug_assert_eq!(len % DIRECT_ALIGN, 0);
        let mem = vec![0u8; len + DIRECT_ALIGN];
        // At run time `align_offset` of a byte pointer is always exact.
        let start = mem.as_ptr().align_offset(DIRECT_ALIGN);
        assert!(start < DIRECT_ALIGN, "cannot align a byte buffer");
        AlignedBuf { mem, start, len }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.len]
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// Rounds `n` up to a multiple of [`DIRECT_ALIGN`].
pub(crate) fn round_up(n: usize) -> usize {
    n.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN
}

/// Bytes of one segment waiting to be written with direct I/O.
///
/// `buf[..len]` holds the file's bytes from offset `base` (block aligned) on; bytes
/// past `len` are not data. `dirty` says whether anything changed since the last
/// write-out.
#[derive(Debug)]
pub(crate) struct Stage {
    buf: AlignedBuf,
    base: u64,
    len: usize,
    dirty: bool,
}

impl Stage {
    /// An empty stage of `capacity` bytes (a multiple of [`DIRECT_ALIGN`]).
    pub(crate) fn new(capacity: usize) -> Stage {
        Stage {
            buf: AlignedBuf::zeroed(capacity),
            base: 0,
            len: 0,
            dirty: false,
        }
    }

    /// Starts staging a new file at offset `base` (block aligned). Whatever was
    /// staged before is forgotten.
    pub(crate) fn reset(&mut self, base: u64) {
        debug_assert_eq!(base % DIRECT_ALIGN as u64, 0);
        self.base = base;
        self.len = 0;
        self.dirty = false;
    }

    /// File offset just past the staged bytes.
    pub(crate) fn end(&self) -> u64 {
        self.base + self.len as u64
    }

    /// Bytes held that were not written out yet (or, for the partial last block, that
    /// will be written again).
    pub(crate) fn staged(&self) -> usize {
        self.len
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len == self.buf.len()
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Copies as much of `data` as fits; returns how many bytes were taken.
    pub(crate) fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.buf.len() - self.len);
        self.buf.as_mut_slice()[self.len..self.len + n].copy_from_slice(&data[..n]);
        self.len += n;
        if n > 0 {
            self.dirty = true;
        }
        n
    }

    /// The whole blocks covering the staged bytes, the last one padded with zeros,
    /// and the file offset to write them at.
    pub(crate) fn blocks(&mut self) -> (&[u8], u64) {
        let end = round_up(self.len);
        self.buf.as_mut_slice()[self.len..end].fill(0);
        (&self.buf.as_slice()[..end], self.base)
    }

    /// Swaps a full buffer for `spare` (of the same size) and moves on past it:
    /// returns the full buffer and the file offset to write it at.
    pub(crate) fn swap_full(&mut self, spare: AlignedBuf) -> (AlignedBuf, u64) {
        debug_assert!(self.is_full());
        debug_assert_eq!(spare.len(), self.buf.len());
        let full = std::mem::replace(&mut self.buf, spare);
        let at = self.base;
        self.base += self.len as u64;
        self.len = 0;
        self.dirty = false;
        (full, at)
    }

    /// After [`blocks`](Self::blocks) were written: drops the whole blocks and keeps
    /// a partial last block at the start of the buffer.
    pub(crate) fn written_out(&mut self) {
        let full = self.len / DIRECT_ALIGN * DIRECT_ALIGN;
        if full > 0 {
            self.buf.as_mut_slice().copy_within(full..self.len, 0);
            self.base += full as u64;
            self.len -= full;
        }
        self.dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        for _ in 0..4 {
            let b = AlignedBuf::zeroed(3 * DIRECT_ALIGN);
            assert_eq!(b.as_slice().as_ptr() as usize % DIRECT_ALIGN, 0);
            assert_eq!(b.len(), 3 * DIRECT_ALIGN);
            assert!(b.as_slice().iter().all(|&x| x == 0));
        }
    }

    #[test]
    fn stage_writes_whole_blocks_and_keeps_the_partial_tail() {
        let mut s = Stage::new(4 * DIRECT_ALIGN);
        s.reset(0);
        assert_eq!(s.push(&[1; 5000]), 5000);
        assert!(s.is_dirty());
        let (b, off) = s.blocks();
        assert_eq!((b.len(), off), (2 * DIRECT_ALIGN, 0));
        assert!(b[..5000].iter().all(|&x| x == 1));
        assert!(b[5000..].iter().all(|&x| x == 0));
        s.written_out();
        assert!(!s.is_dirty());
        assert_eq!((s.staged(), s.end()), (5000 - DIRECT_ALIGN, 5000));
        // More data: the partial block is written again, fuller.
        assert_eq!(s.push(&[2; 100]), 100);
        let (b, off) = s.blocks();
        assert_eq!((b.len(), off), (DIRECT_ALIGN, DIRECT_ALIGN as u64));
        assert!(b[..5000 - DIRECT_ALIGN].iter().all(|&x| x == 1));
        assert!(
            b[5000 - DIRECT_ALIGN..5100 - DIRECT_ALIGN]
                .iter()
                .all(|&x| x == 2)
        );
        assert!(b[5100 - DIRECT_ALIGN..].iter().all(|&x| x == 0));
        s.written_out();
        // Fills up: only what fits is taken.
        let room = 4 * DIRECT_ALIGN - s.staged();
        assert_eq!(s.push(&vec![3; room + 10]), room);
        assert!(s.is_full());
        s.blocks();
        s.written_out();
        assert_eq!(s.staged(), 0);
        assert_eq!(s.end(), 5100 + room as u64);
    }
}
