//! Made-up but valid WAL, for tests, benchmarks and fuzzing: page headers, records with
//! correct CRC-32C and previous-record links, records continued over page and segment
//! boundaries, and `XLOG_SWITCH` with the zero padding after it, laid out as PostgreSQL
//! lays out its WAL. Nothing in walsink's normal operation uses it.

use crate::validate::{RECORD_HEADER_LEN, WalFormat};
use crate::{Lsn, WalSegSize};

/// The format of PostgreSQL 18 with the default page size.
pub const PG18: WalFormat = WalFormat {
    magic: 0xD118,
    blcksz: 8192,
};

/// Who the made-up WAL belongs to.
#[derive(Clone, Copy, Debug)]
pub struct SynthParams {
    /// Segment size.
    pub seg: WalSegSize,
    /// Magic and page size.
    pub format: WalFormat,
    /// System identifier in long headers.
    pub system_id: u64,
    /// `xlp_tli` of the pages.
    pub tli: u32,
}

/// Builds a WAL stream from a segment start, record by record.
#[derive(Clone, Debug)]
pub struct SynthWal {
    p: SynthParams,
    start: u64,
    out: Vec<u8>,
    prev: u64,
    /// Bytes of the record being written that are still to come (for continuation
    /// headers).
    rem: u32,
}

/// A record header for `payload` at `start` (with `prev` as `xl_prev`), CRC included.
pub fn record_header(tot: u32, prev: u64, rmid: u8, info: u8, payload: &[u8]) -> [u8; 24] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0..4].copy_from_slice(&tot.to_le_bytes());
    h[4..8].copy_from_slice(&7u32.to_le_bytes());
    h[8..16].copy_from_slice(&prev.to_le_bytes());
    h[16] = info;
    h[17] = rmid;
    let crc = crate::crc::crc_append(crate::crc::crc32c(payload), &h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A page header for the page at `page` (long on a segment's first page).
pub fn page_header(p: &SynthParams, page: u64, info: u16, rem_len: u32) -> Vec<u8> {
    let long = page.is_multiple_of(p.seg.bytes());
    let mut h = vec![0u8; if long { 40 } else { 24 }];
    h[0..2].copy_from_slice(&p.format.magic.to_le_bytes());
    let info = info
        | if long {
            crate::page::XLP_LONG_HEADER
        } else {
            0
        };
    h[2..4].copy_from_slice(&info.to_le_bytes());
    h[4..8].copy_from_slice(&p.tli.to_le_bytes());
    h[8..16].copy_from_slice(&page.to_le_bytes());
    h[16..20].copy_from_slice(&rem_len.to_le_bytes());
    if long {
        h[24..32].copy_from_slice(&p.system_id.to_le_bytes());
        h[32..36].copy_from_slice(&(p.seg.bytes() as u32).to_le_bytes());
        h[36..40].copy_from_slice(&p.format.blcksz.to_le_bytes());
    }
    h
}

impl SynthWal {
    /// A stream starting at `start` (a segment start) whose first record links back to
    /// `start - 8`.
    pub fn new(p: SynthParams, start: Lsn) -> SynthWal {
        assert_eq!(start.0 % p.seg.bytes(), 0);
        SynthWal {
            p,
            start: start.0,
            out: Vec::new(),
            prev: start.0.saturating_sub(8),
            rem: 0,
        }
    }

    /// The position of the next byte.
    pub fn position(&self) -> Lsn {
        Lsn(self.start + self.out.len() as u64)
    }

    /// Everything written so far, from the start.
    pub fn bytes(&self) -> &[u8] {
        &self.out
    }

    /// Changes `xlp_tli` of the pages that follow.
    pub fn set_timeline(&mut self, tli: u32) {
        self.p.tli = tli;
    }

    fn blcksz(&self) -> u64 {
        u64::from(self.p.format.blcksz)
    }

    /// Writes `bytes` of the current record, with page headers where pages begin.
    fn put(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let pos = self.position().0;
            if pos.is_multiple_of(self.blcksz()) {
                let cont = if self.rem > 0 { 1 } else { 0 };
                let h = page_header(&self.p, pos, cont, self.rem);
                self.out.extend_from_slice(&h);
                continue;
            }
            let room = self.blcksz() - pos % self.blcksz();
            let n = (room as usize).min(bytes.len());
            self.out.extend_from_slice(&bytes[..n]);
            self.rem -= n as u32;
            bytes = &bytes[n..];
        }
    }

    /// Zeros up to the next multiple of 8 (within the page).
    fn align(&mut self) {
        while !self.position().0.is_multiple_of(8) {
            self.out.push(0);
        }
    }

    /// Appends a record; returns its start.
    pub fn record(&mut self, rmid: u8, info: u8, payload: &[u8]) -> Lsn {
        let pos = self.position().0;
        if pos.is_multiple_of(self.blcksz()) {
            let h = page_header(&self.p, pos, 0, 0);
            self.out.extend_from_slice(&h);
        }
        let start = self.position().0;
        let tot = (RECORD_HEADER_LEN + payload.len()) as u32;
        let h = record_header(tot, self.prev, rmid, info, payload);
        self.rem = tot;
        self.put(&h);
        self.put(payload);
        self.align();
        self.prev = start;
        Lsn(start)
    }

    /// Appends an `XLOG_SWITCH` record and the zero padding to the segment end (PostgreSQL 11
    /// and later zero the page headers there too); returns the record's start.
    pub fn switch(&mut self) -> Lsn {
        let at = self.record(0, 0x40, &[]);
        let seg = self.p.seg.bytes();
        let end = self.position().0;
        if !end.is_multiple_of(seg) {
            let pad = seg - end % seg;
            self.out.resize(self.out.len() + pad as usize, 0);
        }
        at
    }

    /// Appends records of deterministic content with payload sizes cycling through
    /// `sizes` until the stream reaches `until`.
    pub fn fill(&mut self, until: Lsn, sizes: &[usize]) {
        let mut i = 0;
        while self.position() < until {
            let n = sizes[i % sizes.len()];
            let pos = self.position().0;
            let payload: Vec<u8> = (0..n as u64)
                .map(|k| (pos.wrapping_add(k).wrapping_mul(0x9E37_79B9) >> 13) as u8 | 1)
                .collect();
            self.record(10, 0, &payload);
            i += 1;
        }
    }
}

/// Record boundaries of [`fixed_page`] within a page (record ends; each record starts at
/// the previous end rounded up to 8, the first after the page header).
pub const FIXED_PAGE_RECORD_ENDS: [u64; 4] = [100, 512, 8064, 8192];

/// One 8 KiB page of WAL at `page` that depends on nothing but its position, so any
/// range of such WAL can be produced without the rest: records end at the page offsets
/// of [`FIXED_PAGE_RECORD_ENDS`] (never across a page boundary), each record's
/// `xl_prev` is the previous record's start (for a page's first record, the previous
/// page's last one) and its data is a pattern of its position that is never zero.
/// `p.format.blcksz` must be 8192.
pub fn fixed_page(p: &SynthParams, page: u64) -> Vec<u8> {
    assert_eq!(p.format.blcksz, 8192);
    assert_eq!(page % 8192, 0);
    let mut out = page_header(p, page, 0, 0);
    let mut prev = page.wrapping_sub(8192 - 8064);
    for end in FIXED_PAGE_RECORD_ENDS {
        let start = (out.len() as u64 + 7) & !7;
        out.resize(start as usize, 0);
        let at = page + start;
        // (The last page of the LSN space ends at 2^64.)
        let payload: Vec<u8> = (24..end - start)
            .map(|k| (at.wrapping_add(k).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 | 1)
            .collect();
        let h = record_header((end - start) as u32, prev, 10, 0, &payload);
        out.extend_from_slice(&h);
        out.extend_from_slice(&payload);
        prev = at;
    }
    debug_assert_eq!(out.len(), 8192);
    out
}
