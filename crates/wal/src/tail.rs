//! Where the WAL in a segment image ends, as its page and record headers describe it.
//!
//! A WAL sender sends WAL up to positions of two kinds: a record's end (its flush
//! pointer after a commit; records are `MAXALIGN`ed, so the end includes the padding),
//! or a page boundary (the WAL writer flushes whole pages; a catch-up sends at most
//! 128 KiB, cut at a page boundary). A receiver writes what it got into a `.partial`
//! zero-filled past it, and reports some of those positions as flushed.
//!
//! [`written_end`] reads such an image and returns the position of that kind where its
//! content ends: a record end with nothing after it, or the page boundary where a record
//! runs into the first page that was not written. For an image written up to a position
//! of either kind it returns exactly that position. After a `XLOG_SWITCH` record it
//! returns the segment end: the rest of the segment is zero padding (without page headers
//! on recent servers), which the server flushes with the switch, so how much of it was
//! written cannot be told and does not matter. So:
//! * every position the image's writer could have reported flushed is at or below it;
//! * the server's WAL reaches it (the record whose header is in the image exists on
//!   the server, and a page a record runs beyond is full there).
//!
//! It says nothing about durability: nothing is checked beyond the headers (no record
//! CRC), and bytes may have reached the page cache and never the disk. walsink uses it
//! only as a floor for what it reports after a restart (a position it must not report
//! below), never as a position it reports.
//!
//! Why this is not [`crate::validate::WalValidator`]: the two answer opposite questions.
//! The validator says how far WAL is known good, so it stops at the start of a record
//! whose CRC it has not checked (or that is wrong). The floor must be at or past every
//! position a writer may have reported, and a writer without validation (pg_receivewal,
//! which reports what it received) reports page boundaries inside records and records it
//! never checked; a floor below such a position would let a physical slot's restart_lsn
//! move back. So the walk here trusts headers and counts unchecked bytes, and is cheap:
//! it reads record headers only, never the data. (After invalid WAL at ingest the writer
//! zeros what it wrote of the invalid record, so both agree on such a `.partial`.)

use crate::Lsn;
use crate::page::{LONG_HEADER_LEN, PageHeader, SHORT_HEADER_LEN};

/// `SizeOfXLogRecord`: the fixed record header.
const RECORD_HEADER_LEN: u64 = 24;
/// `XLP_FIRST_IS_CONTRECORD`: the page starts with the rest of a record.
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// `RM_XLOG_ID`, the resource manager of `XLOG_SWITCH`.
const RM_XLOG_ID: u8 = 0;
/// `XLOG_SWITCH`: the rest of the segment is padding.
const XLOG_SWITCH: u8 = 0x40;
/// `XLR_INFO_MASK`: the info bits that are not the record type.
const XLR_INFO_MASK: u8 = 0x0F;
/// `MAXIMUM_ALIGNOF` of every platform PostgreSQL ships WAL from in practice.
const MAXALIGN: u64 = 8;

/// The end of the WAL the segment image `image` holds, for the segment starting at
/// `seg_start` (see the module docs); `None` if its first page has no plausible long
/// header for that position (nothing was written, or it is not WAL of that segment).
///
/// Only whole pages count, up to the segment size the long header names; the block
/// size comes from the long header too.
pub fn written_end(image: &[u8], seg_start: Lsn) -> Option<Lsn> {
    let first = PageHeader::parse(image)?;
    let long = first.long?;
    if !first.plausible_at(seg_start, true) {
        return None;
    }
    let bs = u64::from(long.blcksz);
    let seg_size = u64::from(long.seg_size);
    if !bs.is_power_of_two()
        || !(1024..=65536).contains(&bs)
        || !seg_size.is_power_of_two()
        || seg_size < bs
        || !seg_start.0.is_multiple_of(seg_size)
    {
        return None;
    }
    let len = (image.len() as u64).min(seg_size);
    let mut pages = 0;
    while (pages + 1) * bs <= len {
        let off = pages * bs;
        let Some(h) = PageHeader::parse(&image[off as usize..]) else {
            break;
        };
        if h.magic != first.magic || !h.plausible_at(Lsn(seg_start.0 + off), off == 0) {
            break;
        }
        pages += 1;
    }
    if pages == 0 {
        return None;
    }
    let walk = Walk {
        image,
        bs,
        plausible_end: pages * bs,
        seg_size,
        seg_start,
    };
    Some(Lsn(seg_start.0 + walk.end()))
}

/// How a record laid out from a position fits the image.
enum Span {
    /// It ends here (offset of the byte after its last byte).
    Ends(u64),
    /// It runs into the page at this offset, which is past the plausible pages.
    Continues(u64),
    /// A page it runs into does not continue it (corrupt or foreign content).
    Invalid,
}

/// A walk over the record headers of one segment image; offsets are from its start.
struct Walk<'a> {
    image: &'a [u8],
    bs: u64,
    /// End of the leading pages with plausible headers.
    plausible_end: u64,
    seg_size: u64,
    seg_start: Lsn,
}

impl Walk<'_> {
    fn header(&self, page: u64) -> PageHeader {
        PageHeader::parse(&self.image[page as usize..]).expect("a plausible page")
    }

    fn header_len(page: u64) -> u64 {
        if page == 0 {
            LONG_HEADER_LEN as u64
        } else {
            SHORT_HEADER_LEN as u64
        }
    }

    /// The offset past the last byte of a record of `len` bytes starting at `start` (not
    /// in a page header), checking that each page it runs into says it continues it.
    fn span(&self, start: u64, len: u64) -> Span {
        let mut pos = start;
        let mut left = len;
        loop {
            let page_end = (pos / self.bs + 1) * self.bs;
            let room = page_end - pos;
            if left <= room {
                return Span::Ends(pos + left);
            }
            left -= room;
            pos = page_end;
            if pos >= self.plausible_end {
                return Span::Continues(pos);
            }
            let h = self.header(pos);
            if h.info & XLP_FIRST_IS_CONTRECORD == 0 || u64::from(h.rem_len) != left {
                return Span::Invalid;
            }
            pos += SHORT_HEADER_LEN as u64;
        }
    }

    /// `n` bytes of content from `start` (skipping page headers), if all of them are
    /// in plausible pages.
    fn gather(&self, start: u64, n: u64) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(n as usize);
        let mut pos = start;
        while (out.len() as u64) < n {
            if pos.is_multiple_of(self.bs) {
                if pos >= self.plausible_end {
                    return None;
                }
                pos += Self::header_len(pos);
            }
            let page_end = (pos / self.bs + 1) * self.bs;
            let k = (n - out.len() as u64).min(page_end - pos);
            out.extend_from_slice(&self.image[pos as usize..(pos + k) as usize]);
            pos += k;
        }
        Some(out)
    }

    fn end(&self) -> u64 {
        let first = self.header(0);
        let mut end = LONG_HEADER_LEN as u64;
        // The rest of a record begun in the previous segment.
        if first.info & XLP_FIRST_IS_CONTRECORD != 0 && first.rem_len > 0 {
            match self.span(end, u64::from(first.rem_len)) {
                Span::Ends(e) => end = align(e),
                Span::Continues(at) => return at,
                Span::Invalid => return 0,
            }
        }
        let mut prev: Option<u64> = None;
        loop {
            // `end` is a position a sender may send up to; the next record starts here,
            // or after the header of the page starting here.
            if end >= self.seg_size || end > self.plausible_end {
                return end.min(self.seg_size);
            }
            let mut start = end;
            if start.is_multiple_of(self.bs) {
                if start == self.plausible_end {
                    return end;
                }
                let h = self.header(start);
                if h.info & XLP_FIRST_IS_CONTRECORD != 0 || h.rem_len != 0 {
                    return end;
                }
                start += Self::header_len(start);
            }
            // A record starts MAXALIGNed and pages end MAXALIGNed: its length (the
            // first 4 bytes) is always on the page it starts on.
            let s = start as usize;
            let tot_len = u32::from_le_bytes(self.image[s..s + 4].try_into().expect("4 bytes"));
            let tot_len = u64::from(tot_len);
            if tot_len < RECORD_HEADER_LEN {
                // Zeros: nothing was written here (or the server's WAL ended here).
                return end;
            }
            let Some(h) = self.gather(start, RECORD_HEADER_LEN) else {
                // The header runs into a page that was not written.
                return self.plausible_end;
            };
            let xl_prev = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
            let (info, rmid) = (h[16], h[17]);
            if let Some(p) = prev
                && xl_prev != self.seg_start.0 + p
            {
                // Not the record that follows: stale or foreign bytes.
                return end;
            }
            match self.span(start, tot_len) {
                Span::Ends(e) => {
                    if rmid == RM_XLOG_ID && info & !XLR_INFO_MASK == XLOG_SWITCH {
                        // The rest of the segment is padding, on the server already.
                        return self.seg_size;
                    }
                    prev = Some(start);
                    end = align(e);
                }
                Span::Continues(at) => return at,
                Span::Invalid => return end,
            }
        }
    }
}

fn align(pos: u64) -> u64 {
    pos.div_ceil(MAXALIGN) * MAXALIGN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::XLP_LONG_HEADER;

    const BS: u64 = 8192;
    const SEG: u64 = 1 << 20;
    const BASE: u64 = 7 * SEG;
    const MAGIC: u16 = 0xD10D;
    const SYSID: u64 = 7_312_345_678_901_234_567;

    /// A segment as a server lays it out, and the positions a sender may send up to
    /// (record ends and page boundaries), as offsets.
    struct Segment {
        image: Vec<u8>,
        flush_points: Vec<u64>,
        /// Where the last record (or the padding after a switch) ends in the segment.
        end: u64,
        /// Where a switch record starts.
        switch: Option<u64>,
    }

    /// A record: its total length and whether it is an `XLOG_SWITCH`.
    #[derive(Clone, Copy)]
    struct Rec(u64, bool);

    struct Builder {
        image: Vec<u8>,
        pos: u64,
        flush_points: Vec<u64>,
    }

    impl Builder {
        fn page_header(&mut self, page: u64, rem_len: u64) {
            let p = page as usize;
            let mut info: u16 = if rem_len > 0 {
                XLP_FIRST_IS_CONTRECORD
            } else {
                0
            };
            if page == 0 {
                info |= XLP_LONG_HEADER;
            }
            self.image[p..p + 2].copy_from_slice(&MAGIC.to_le_bytes());
            self.image[p + 2..p + 4].copy_from_slice(&info.to_le_bytes());
            self.image[p + 4..p + 8].copy_from_slice(&1u32.to_le_bytes());
            self.image[p + 8..p + 16].copy_from_slice(&(BASE + page).to_le_bytes());
            self.image[p + 16..p + 20].copy_from_slice(&(rem_len as u32).to_le_bytes());
            if page == 0 {
                self.image[p + 24..p + 32].copy_from_slice(&SYSID.to_le_bytes());
                self.image[p + 32..p + 36].copy_from_slice(&(SEG as u32).to_le_bytes());
                self.image[p + 36..p + 40].copy_from_slice(&(BS as u32).to_le_bytes());
            }
        }

        /// Lays out the rest of a record, `bytes`, from the cursor (not in a page header),
        /// with a continuation header on each page it runs into. Returns false if it
        /// runs past the segment end.
        fn put(&mut self, bytes: &[u8]) -> bool {
            let mut left = bytes;
            while !left.is_empty() {
                if self.pos.is_multiple_of(BS) {
                    if self.pos >= SEG {
                        return false;
                    }
                    self.flush_points.push(self.pos);
                    self.page_header(self.pos, left.len() as u64);
                    self.pos += SHORT_HEADER_LEN as u64;
                }
                let room = BS - self.pos % BS;
                let k = (left.len() as u64).min(room) as usize;
                let p = self.pos as usize;
                self.image[p..p + k].copy_from_slice(&left[..k]);
                self.pos += k as u64;
                left = &left[k..];
            }
            true
        }
    }

    /// Lays out a continuation of `cont` bytes from the previous segment, then `recs`.
    fn segment(cont: u64, recs: &[Rec]) -> Segment {
        let mut b = Builder {
            image: vec![0; SEG as usize],
            pos: 0,
            flush_points: vec![0],
        };
        b.page_header(0, cont);
        b.pos = LONG_HEADER_LEN as u64;
        let body = |n: u64, seed: u64| -> Vec<u8> {
            // Non-zero, except a zero tail, as records often end.
            (0..n)
                .map(|i| {
                    if i + 16 >= n {
                        0
                    } else {
                        (((i + seed) % 251) + 1) as u8
                    }
                })
                .collect()
        };
        let mut complete = b.put(&body(cont, 3));
        if complete {
            b.pos = align(b.pos);
            b.flush_points.push(b.pos);
        }
        let mut prev = 0x1234u64;
        let mut end = b.pos;
        let mut switch_at = None;
        for (i, &Rec(len, switch)) in recs.iter().enumerate() {
            if !complete {
                break;
            }
            if b.pos.is_multiple_of(BS) {
                if b.pos >= SEG {
                    break;
                }
                b.flush_points.push(b.pos);
                b.page_header(b.pos, 0);
                b.pos += SHORT_HEADER_LEN as u64;
            }
            let start = b.pos;
            let mut rec = body(len, i as u64);
            rec[0..4].copy_from_slice(&(len as u32).to_le_bytes());
            rec[4..8].copy_from_slice(&7u32.to_le_bytes());
            rec[8..16].copy_from_slice(&prev.to_le_bytes());
            (rec[16], rec[17]) = if switch {
                (XLOG_SWITCH, RM_XLOG_ID)
            } else {
                (0x10, 10)
            };
            complete = b.put(&rec);
            if !complete {
                end = SEG;
                break;
            }
            prev = BASE + start;
            b.pos = align(b.pos);
            end = b.pos;
            if switch {
                // Zero padding up to the segment end (no page headers, as recent servers
                // write it); the switch record's end position is the segment end (the
                // server flushes the padding with it), so the sender stops only at page
                // boundaries.
                switch_at = Some(start);
                let mut page = b.pos.div_ceil(BS) * BS;
                while page < SEG {
                    b.flush_points.push(page);
                    page += BS;
                }
                b.flush_points.push(SEG);
                end = SEG;
                break;
            }
            b.flush_points.push(b.pos);
        }
        b.flush_points.sort_unstable();
        b.flush_points.dedup();
        b.flush_points.retain(|&p| p <= end);
        Segment {
            image: b.image,
            flush_points: b.flush_points,
            end,
            switch: switch_at,
        }
    }

    /// The image as a receiver leaves it having written everything before `w`.
    fn written_to(s: &Segment, w: u64) -> Vec<u8> {
        let mut img = s.image.clone();
        img[w as usize..].fill(0);
        img
    }

    fn lengths(seed: u64, n: usize) -> Vec<Rec> {
        // A small LCG: lengths from a header alone to several pages.
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = x >> 33;
                let len = match r % 10 {
                    0 => 24,
                    1..=5 => 25 + r % 200,
                    6..=8 => 200 + r % 3000,
                    _ => 8000 + r % 30000,
                };
                Rec(len, false)
            })
            .collect()
    }

    fn check_every_flush_point(s: &Segment) {
        assert!(s.flush_points.len() > 2);
        for &w in &s.flush_points {
            if w < LONG_HEADER_LEN as u64 && w > 0 {
                continue;
            }
            let got = written_end(&written_to(s, w), Lsn(BASE));
            let want = match s.switch {
                _ if w == 0 => None,
                Some(at) if w > at => Some(Lsn(BASE + SEG)),
                _ => Some(Lsn(BASE + w)),
            };
            assert_eq!(got, want, "written up to offset {w:#x}");
        }
    }

    #[test]
    fn an_image_written_to_a_flush_point_ends_exactly_there() {
        for seed in 0..6 {
            let s = segment(0, &lengths(seed, 250));
            check_every_flush_point(&s);
        }
    }

    #[test]
    fn a_continued_record_from_the_previous_segment_is_skipped() {
        for cont in [1, 16, 8000, 8152, 8153, 3 * 8192 + 5] {
            let s = segment(cont, &lengths(cont, 120));
            check_every_flush_point(&s);
        }
    }

    #[test]
    fn a_record_running_past_the_segment_ends_the_walk_at_the_segment_end() {
        let mut recs = lengths(9, 50);
        recs.push(Rec(3 * SEG, false));
        let s = segment(0, &recs);
        assert_eq!(s.end, SEG);
        check_every_flush_point(&s);
        assert_eq!(written_end(&s.image, Lsn(BASE)), Some(Lsn(BASE + SEG)));
    }

    #[test]
    fn after_a_switch_the_segment_end_counts() {
        let mut recs = lengths(5, 60);
        recs.push(Rec(24, true));
        let s = segment(0, &recs);
        assert_eq!(s.end, SEG);
        check_every_flush_point(&s);
    }

    #[test]
    fn between_flush_points_it_is_at_or_after_the_last_and_never_past_the_next() {
        let s = segment(100, &lengths(77, 300));
        let mut w = 0;
        while w < s.end {
            w += 211;
            // A sender never stops inside a page header.
            if w % BS < SHORT_HEADER_LEN as u64 || w < LONG_HEADER_LEN as u64 {
                continue;
            }
            let lo = *s.flush_points.iter().rev().find(|&&p| p <= w).unwrap();
            let hi = *s.flush_points.iter().find(|&&p| p >= w).unwrap_or(&s.end);
            let got = written_end(&written_to(&s, w), Lsn(BASE)).unwrap().0 - BASE;
            assert!(
                lo <= got && got <= hi,
                "written to {w:#x}: {got:#x} not in {lo:#x}..={hi:#x}"
            );
        }
    }

    #[test]
    fn zero_fill_foreign_or_short_images_are_not_wal_of_the_segment() {
        assert_eq!(written_end(&[], Lsn(BASE)), None);
        assert_eq!(written_end(&vec![0; SEG as usize], Lsn(BASE)), None);
        let s = segment(0, &lengths(1, 100));
        assert_eq!(written_end(&s.image, Lsn(BASE + SEG)), None);
        assert_eq!(written_end(&s.image[..100], Lsn(BASE)), None);
        // Only whole pages count.
        assert_eq!(
            written_end(&s.image[..BS as usize + 100], Lsn(BASE)),
            written_end(&written_to(&s, BS), Lsn(BASE))
        );
    }

    #[test]
    fn a_record_not_linked_to_the_previous_one_ends_the_walk() {
        let s = segment(0, &lengths(3, 100));
        let mut img = s.image.clone();
        // The third record's xl_prev no longer names the second.
        let third = s
            .flush_points
            .iter()
            .copied()
            .filter(|p| p % BS != 0)
            .nth(2)
            .unwrap();
        let at = (third + 8) as usize;
        img[at] ^= 0xFF;
        let second_end = third;
        assert_eq!(written_end(&img, Lsn(BASE)), Some(Lsn(BASE + second_end)));
    }
}
