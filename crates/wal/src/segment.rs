use std::fmt;

use crate::{Lsn, TimelineId, WalError};

/// The size of one WAL segment file: a power of two from 1 MiB to 1 GiB
/// (`initdb --wal-segsize`, reported by `SHOW wal_segment_size`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct WalSegSize(u32);

impl WalSegSize {
    /// The compiled-in default, 16 MiB.
    pub const DEFAULT: WalSegSize = WalSegSize(16 << 20);
    /// The smallest size PostgreSQL accepts.
    pub const MIN: u64 = 1 << 20;
    /// The largest size PostgreSQL accepts.
    pub const MAX: u64 = 1 << 30;

    /// Validates a size in bytes.
    pub fn new(bytes: u64) -> Result<WalSegSize, WalError> {
        if bytes.is_power_of_two() && (Self::MIN..=Self::MAX).contains(&bytes) {
            Ok(WalSegSize(bytes as u32))
        } else {
            Err(WalError::InvalidSegSize(bytes))
        }
    }

    /// Parses the text of `SHOW wal_segment_size` (`16MB`, `1GB`, `1048576`, `64kB`).
    pub fn from_show(text: &str) -> Result<WalSegSize, WalError> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| WalError::InvalidSegSize(0))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "kB" => 1 << 10,
            "MB" => 1 << 20,
            "GB" => 1 << 30,
            _ => return Err(WalError::InvalidSegSize(0)),
        };
        WalSegSize::new(
            n.checked_mul(mult)
                .ok_or(WalError::InvalidSegSize(u64::MAX))?,
        )
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        u64::from(self.0)
    }

    /// Segments per 4 GiB "xlogid", the middle part of a segment file name.
    pub fn segments_per_xlogid(self) -> u64 {
        (1u64 << 32) / self.bytes()
    }

    /// The segment that contains `lsn`.
    pub fn segno(self, lsn: Lsn) -> SegNo {
        SegNo(lsn.0 / self.bytes())
    }

    /// The offset of `lsn` inside its segment.
    pub fn offset(self, lsn: Lsn) -> u64 {
        lsn.0 % self.bytes()
    }

    /// `lsn` rounded down to the start of its segment.
    pub fn segment_start(self, lsn: Lsn) -> Lsn {
        Lsn(lsn.0 - self.offset(lsn))
    }

    /// The first byte of segment `segno`.
    pub fn start_of(self, segno: SegNo) -> Lsn {
        Lsn(segno.0 * self.bytes())
    }
}

impl fmt::Display for WalSegSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 1 << 30 {
            write!(f, "{}GB", self.0 >> 30)
        } else {
            write!(f, "{}MB", self.0 >> 20)
        }
    }
}

/// A segment number: the LSN divided by the segment size.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SegNo(pub u64);

impl SegNo {
    /// The following segment.
    pub fn next(self) -> SegNo {
        SegNo(self.0 + 1)
    }
}

/// One WAL segment on one timeline, named `TTTTTTTTXXXXXXXXYYYYYYYY` on disk.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SegmentName {
    /// The timeline the segment belongs to.
    pub tli: TimelineId,
    /// The segment number.
    pub segno: SegNo,
}

/// What kind of file a name in a WAL archive directory denotes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SegmentFileKind {
    /// A completed segment, `NAME`.
    Complete,
    /// A segment still being written, `NAME.partial`.
    Partial,
    /// A completed compressed segment, `NAME.gz`, `NAME.lz4` or `NAME.zst`.
    CompressedComplete,
    /// A compressed segment still being written, `NAME.gz.partial` and so on.
    CompressedPartial,
}

impl SegmentName {
    /// Builds a segment name.
    pub fn new(tli: TimelineId, segno: SegNo) -> SegmentName {
        SegmentName { tli, segno }
    }

    /// The segment of timeline `tli` that contains `lsn`.
    pub fn containing(tli: TimelineId, lsn: Lsn, seg: WalSegSize) -> SegmentName {
        SegmentName::new(tli, seg.segno(lsn))
    }

    /// The 24-hex-digit file name (`XLogFileName`).
    pub fn file_name(&self, seg: WalSegSize) -> String {
        let per = seg.segments_per_xlogid();
        format!(
            "{:08X}{:08X}{:08X}",
            self.tli.get(),
            self.segno.0 / per,
            self.segno.0 % per
        )
    }

    /// The `.partial` file name of this segment.
    pub fn partial_file_name(&self, seg: WalSegSize) -> String {
        format!("{}.partial", self.file_name(seg))
    }

    /// Parses a file name from an archive directory. Returns `None` for anything that
    /// is not a WAL segment file (history files, lock files, temporary files), and for
    /// names whose segment part is impossible at this segment size.
    pub fn parse_file_name(name: &str, seg: WalSegSize) -> Option<(SegmentName, SegmentFileKind)> {
        let base = name.get(..24)?;
        if !base.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')) {
            return None;
        }
        let kind = match &name[24..] {
            "" => SegmentFileKind::Complete,
            ".partial" => SegmentFileKind::Partial,
            ".gz" | ".lz4" | ".zst" => SegmentFileKind::CompressedComplete,
            ".gz.partial" | ".lz4.partial" | ".zst.partial" => SegmentFileKind::CompressedPartial,
            _ => return None,
        };
        let hex = |r: std::ops::Range<usize>| u32::from_str_radix(&base[r], 16).ok();
        let tli = TimelineId::new(hex(0..8)?)?;
        let log = u64::from(hex(8..16)?);
        let off = u64::from(hex(16..24)?);
        let per = seg.segments_per_xlogid();
        if off >= per {
            return None;
        }
        Some((SegmentName::new(tli, SegNo(log * per + off)), kind))
    }

    /// The first byte of this segment.
    pub fn start_lsn(&self, seg: WalSegSize) -> Lsn {
        seg.start_of(self.segno)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tli(n: u32) -> TimelineId {
        TimelineId::new(n).unwrap()
    }

    #[test]
    fn segment_sizes() {
        assert!(WalSegSize::new(1 << 20).is_ok());
        assert!(WalSegSize::new(1 << 30).is_ok());
        assert!(WalSegSize::new(1 << 19).is_err());
        assert!(WalSegSize::new(1 << 31).is_err());
        assert!(WalSegSize::new(3 << 20).is_err());
        assert_eq!(WalSegSize::from_show("16MB").unwrap().bytes(), 16 << 20);
        assert_eq!(WalSegSize::from_show("1GB").unwrap().bytes(), 1 << 30);
        assert_eq!(WalSegSize::from_show("1048576").unwrap().bytes(), 1 << 20);
        assert!(WalSegSize::from_show("16XB").is_err());
        assert!(WalSegSize::from_show("").is_err());
        assert!(WalSegSize::from_show("99999999999999999999GB").is_err());
    }

    #[test]
    fn names_match_xlogfilename() {
        let s16 = WalSegSize::DEFAULT;
        let n = SegmentName::containing(tli(1), "0/16B3748".parse().unwrap(), s16);
        assert_eq!(n.file_name(s16), "000000010000000000000001");
        let n = SegmentName::containing(tli(2), "1/FF000000".parse().unwrap(), s16);
        assert_eq!(n.file_name(s16), "0000000200000001000000FF");
        let s1 = WalSegSize::new(1 << 20).unwrap();
        let n = SegmentName::containing(tli(0xA), "3/FFF00000".parse().unwrap(), s1);
        assert_eq!(n.file_name(s1), "0000000A0000000300000FFF");
        let s1g = WalSegSize::new(1 << 30).unwrap();
        let n = SegmentName::containing(tli(1), "5/C0000000".parse().unwrap(), s1g);
        assert_eq!(n.file_name(s1g), "000000010000000500000003");
    }

    #[test]
    fn parse_round_trips_and_rejects() {
        let s = WalSegSize::DEFAULT;
        let n = SegmentName::new(tli(3), SegNo(0x1_23));
        let name = n.file_name(s);
        assert_eq!(
            SegmentName::parse_file_name(&name, s),
            Some((n, SegmentFileKind::Complete))
        );
        assert_eq!(
            SegmentName::parse_file_name(&format!("{name}.partial"), s),
            Some((n, SegmentFileKind::Partial))
        );
        assert_eq!(
            SegmentName::parse_file_name(&format!("{name}.gz.partial"), s),
            Some((n, SegmentFileKind::CompressedPartial))
        );
        for bad in [
            "00000001000000000000000",  // 23 digits
            "00000001000000000000000a", // lower case
            "000000010000000000000001.tmp",
            "000000010000000000000001.partial.x",
            "00000000000000000000000A", // timeline 0
            "000000010000000000000100", // segment 0x100 >= 256 per xlogid at 16 MiB
            "00000001.history",
            ".walsink.lock",
        ] {
            assert_eq!(SegmentName::parse_file_name(bad, s), None, "{bad}");
        }
    }

    #[test]
    fn arithmetic() {
        let s = WalSegSize::new(1 << 20).unwrap();
        let l: Lsn = "0/3123456".parse().unwrap();
        assert_eq!(s.segno(l), SegNo(0x31));
        assert_eq!(s.offset(l), 0x23456);
        assert_eq!(s.segment_start(l), "0/3100000".parse().unwrap());
        assert_eq!(s.start_of(SegNo(0x31).next()), "0/3200000".parse().unwrap());
    }
}
