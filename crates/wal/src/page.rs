//! WAL page headers (`XLogPageHeaderData`, `XLogLongPageHeaderData`).
//!
//! Every `XLOG_BLCKSZ` page of a segment starts with a short header; the first page of a
//! segment has the long header, which adds the system identifier, the segment size and
//! the block size. Fields are in the server's byte order, little-endian on every
//! platform PostgreSQL ships WAL from in practice.

use crate::{Lsn, TimelineId};

/// Size of the short page header, `MAXALIGN(SizeOfXLogShortPHD)`.
pub const SHORT_HEADER_LEN: usize = 24;
/// Size of the long page header at the start of each segment.
pub const LONG_HEADER_LEN: usize = 40;
/// The default (and by far the most common) WAL block size.
pub const DEFAULT_BLCKSZ: usize = 8192;
/// `XLP_LONG_HEADER`: this page has the long header.
pub const XLP_LONG_HEADER: u16 = 0x0002;

/// A decoded page header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeader {
    /// `xlp_magic`, which identifies the WAL format version.
    pub magic: u16,
    /// `xlp_info` flag bits.
    pub info: u16,
    /// `xlp_tli`, the timeline of the first record on the page.
    pub tli: u32,
    /// `xlp_pageaddr`, the LSN of the page's first byte.
    pub pageaddr: Lsn,
    /// `xlp_rem_len`, bytes of a continued record remaining.
    pub rem_len: u32,
    /// The long-header fields, when `XLP_LONG_HEADER` is set.
    pub long: Option<LongHeader>,
}

/// The extra fields of a segment's first page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongHeader {
    /// `xlp_sysid`, the cluster's system identifier.
    pub sysid: u64,
    /// `xlp_seg_size`, the segment size in bytes.
    pub seg_size: u32,
    /// `xlp_xlog_blcksz`, the WAL block size in bytes.
    pub blcksz: u32,
}

fn u16le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64le(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl PageHeader {
    /// Decodes the header at the start of `page`, or `None` if `page` is too short to
    /// hold it.
    pub fn parse(page: &[u8]) -> Option<PageHeader> {
        if page.len() < SHORT_HEADER_LEN {
            return None;
        }
        let info = u16le(page, 2);
        let long = if info & XLP_LONG_HEADER != 0 {
            if page.len() < LONG_HEADER_LEN {
                return None;
            }
            Some(LongHeader {
                sysid: u64le(page, 24),
                seg_size: u32le(page, 32),
                blcksz: u32le(page, 36),
            })
        } else {
            None
        };
        Some(PageHeader {
            magic: u16le(page, 0),
            info,
            tli: u32le(page, 4),
            pageaddr: Lsn(u64le(page, 8)),
            rem_len: u32le(page, 16),
            long,
        })
    }

    /// Whether this header is plausible for the page that starts at `pageaddr`:
    /// the page address matches, the timeline is non-zero and, for the first page of a
    /// segment, the long header is present. This is the check that tells written WAL
    /// from zero fill or stale bytes of a recycled file.
    pub fn plausible_at(&self, pageaddr: Lsn, first_in_segment: bool) -> bool {
        self.pageaddr == pageaddr
            && TimelineId::new(self.tli).is_some()
            && (self.long.is_some() == first_in_segment)
    }
}

/// The number of leading bytes of a segment image that carry plausible WAL pages
/// (whole pages whose header matches their position), scanning from the segment start
/// `seg_start`. A `.partial` file is zero-filled past what was received, so this finds
/// how far its valid content reaches.
pub fn valid_prefix_pages(image: &[u8], seg_start: Lsn, blcksz: usize) -> usize {
    let mut off = 0;
    while off + blcksz <= image.len() {
        let Some(h) = PageHeader::parse(&image[off..]) else {
            break;
        };
        if !h.plausible_at(Lsn(seg_start.0 + off as u64), off == 0) {
            break;
        }
        off += blcksz;
    }
    off
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(addr: u64, long: bool) -> Vec<u8> {
        let mut p = vec![0u8; DEFAULT_BLCKSZ];
        p[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        let info: u16 = if long { XLP_LONG_HEADER } else { 0 };
        p[2..4].copy_from_slice(&info.to_le_bytes());
        p[4..8].copy_from_slice(&1u32.to_le_bytes());
        p[8..16].copy_from_slice(&addr.to_le_bytes());
        if long {
            p[24..32].copy_from_slice(&7312345678901234567u64.to_le_bytes());
            p[32..36].copy_from_slice(&(1u32 << 20).to_le_bytes());
            p[36..40].copy_from_slice(&8192u32.to_le_bytes());
        }
        p
    }

    #[test]
    fn parses_long_header() {
        let h = PageHeader::parse(&page(0x100_0000, true)).unwrap();
        assert_eq!(h.magic, 0xD110);
        assert_eq!(h.long.unwrap().sysid, 7312345678901234567);
        assert!(h.plausible_at(Lsn(0x100_0000), true));
        assert!(!h.plausible_at(Lsn(0x100_0000), false));
        assert!(!h.plausible_at(Lsn(0x200_0000), true));
    }

    #[test]
    fn finds_valid_prefix() {
        let base = 0x100_0000u64;
        let mut img = page(base, true);
        img.extend(page(base + 8192, false));
        img.extend(page(base + 2 * 8192, false));
        img.extend(vec![0u8; 8192 * 3]);
        assert_eq!(
            valid_prefix_pages(&img, Lsn(base), DEFAULT_BLCKSZ),
            3 * 8192
        );
        assert_eq!(
            valid_prefix_pages(&img[..100], Lsn(base), DEFAULT_BLCKSZ),
            0
        );
        assert_eq!(
            valid_prefix_pages(&img, Lsn(base + 8192), DEFAULT_BLCKSZ),
            0
        );
    }
}
