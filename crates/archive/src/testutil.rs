//! Helpers shared by the unit tests.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use walsink_wal::page::XLP_LONG_HEADER;
use walsink_wal::{TimelineId, WalSegSize};

/// The segment size used in tests, 1 MiB.
pub(crate) const SEG: u64 = 1 << 20;

pub(crate) fn seg1m() -> WalSegSize {
    WalSegSize::new(SEG).unwrap()
}

pub(crate) fn tli(n: u32) -> TimelineId {
    TimelineId::new(n).unwrap()
}

pub(crate) fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A file of `len` zero bytes.
pub(crate) fn put(dir: &Path, name: &str, len: usize) {
    fs::write(dir.join(name), vec![0u8; len]).unwrap();
}

/// The first page of a segment that starts at `segno * seg_size`, with a long header
/// for database system `sysid`, followed by zeros up to 8 KiB.
pub(crate) fn first_page(segno: u64, sysid: u64, seg_size: u64) -> Vec<u8> {
    let mut p = vec![0u8; 8192];
    p[0..2].copy_from_slice(&0xD118u16.to_le_bytes());
    p[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
    p[4..8].copy_from_slice(&1u32.to_le_bytes());
    p[8..16].copy_from_slice(&(segno * seg_size).to_le_bytes());
    p[24..32].copy_from_slice(&sysid.to_le_bytes());
    p[32..36].copy_from_slice(&(seg_size as u32).to_le_bytes());
    p[36..40].copy_from_slice(&8192u32.to_le_bytes());
    p
}

/// A 1 MiB segment file whose first page is [`first_page`]`(segno, sysid, seg_size)`.
pub(crate) fn put_segment(dir: &Path, name: &str, segno: u64, sysid: u64, seg_size: u64) {
    let mut img = first_page(segno, sysid, seg_size);
    img.resize(SEG as usize, 0);
    fs::write(dir.join(name), img).unwrap();
}

/// `len` bytes of a pattern that differs at every offset modulo 251, shifted by `seed`.
pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_add(seed))
        .collect()
}

/// The permission bits of a file.
pub(crate) fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}
