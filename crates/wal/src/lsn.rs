use std::fmt;
use std::str::FromStr;

use crate::WalError;

/// A position in the write-ahead log: a byte offset into the WAL stream.
///
/// Displayed the way PostgreSQL up to 18 prints it, `%X/%X` (for example `0/16B3748`).
/// Parsing accepts exactly two hexadecimal halves of at most eight digits each, so
/// both `0/16B3748` and PostgreSQL 19's `0/016B3748` are accepted and trailing garbage
/// is not.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid position, `0/0`, which the protocol uses for "unknown".
    pub const INVALID: Lsn = Lsn(0);

    /// Whether this is the invalid position `0/0`.
    pub fn is_valid(self) -> bool {
        self.0 != 0
    }

    /// This position plus `n` bytes, or `None` on overflow.
    pub fn checked_add(self, n: u64) -> Option<Lsn> {
        self.0.checked_add(n).map(Lsn)
    }

    /// The number of bytes from `earlier` to `self`, saturating at zero.
    pub fn saturating_sub(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 as u32)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

impl FromStr for Lsn {
    type Err = WalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || WalError::InvalidLsn(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let half = |p: &str| -> Result<u64, WalError> {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            u64::from_str_radix(p, 16).map_err(|_| err())
        };
        Ok(Lsn((half(hi)? << 32) | half(lo)?))
    }
}

/// A timeline ID. Timeline 1 is the one `initdb` starts; each promotion creates a new one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimelineId(u32);

impl TimelineId {
    /// The first timeline of every cluster.
    pub const ONE: TimelineId = TimelineId(1);

    /// A timeline ID, or `None` for zero, which PostgreSQL never uses.
    pub fn new(tli: u32) -> Option<TimelineId> {
        (tli != 0).then_some(TimelineId(tli))
    }

    /// The numeric value.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The name of this timeline's history file, `%08X.history`.
    pub fn history_file_name(self) -> String {
        format!("{:08X}.history", self.0)
    }

    /// The timeline whose history file is named `name` (`%08X.history`, upper-case hex
    /// as PostgreSQL writes it); `None` for any other name and for timeline 0.
    pub fn from_history_file_name(name: &str) -> Option<TimelineId> {
        let hex = name.strip_suffix(".history")?;
        if hex.len() != 8 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')) {
            return None;
        }
        TimelineId::new(u32::from_str_radix(hex, 16).ok()?)
    }
}

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLI({})", self.0)
    }
}

impl FromStr for TimelineId {
    type Err = WalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<u32>()
            .ok()
            .and_then(TimelineId::new)
            .ok_or_else(|| WalError::InvalidTimeline(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn history_file_names_round_trip() {
        for n in [1, 2, 0xA, 0x7FFF_FFFF, u32::MAX] {
            let t = TimelineId::new(n).unwrap();
            assert_eq!(
                TimelineId::from_history_file_name(&t.history_file_name()),
                Some(t)
            );
        }
        for bad in [
            "00000000.history",
            "0000000a.history",
            "0000002.history",
            "000000002.history",
            "00000002.history.tmp",
            "00000002",
            "../00000002.history",
            "00000002.HISTORY",
        ] {
            assert_eq!(TimelineId::from_history_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_and_prints_like_postgres() {
        assert_eq!("0/16B3748".parse::<Lsn>().unwrap(), Lsn(0x16B3748));
        assert_eq!("0/016B3748".parse::<Lsn>().unwrap(), Lsn(0x16B3748));
        assert_eq!("A/0".parse::<Lsn>().unwrap(), Lsn(0xA_0000_0000));
        assert_eq!("ffffffff/ffffffff".parse::<Lsn>().unwrap(), Lsn(u64::MAX));
        assert_eq!(Lsn(0x1_0000_00A0).to_string(), "1/A0");
        assert_eq!(Lsn(0).to_string(), "0/0");
    }

    #[test]
    fn rejects_what_pg_parse_lsn_rejects() {
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "1/2/3",
            "123456789/0",
            "0/123456789",
            "g/0",
            "0x1/0",
            " 0/0",
            "0/0 ",
            "-1/0",
            "+1/0",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn timeline_zero_is_not_a_timeline() {
        assert!(TimelineId::new(0).is_none());
        assert!("0".parse::<TimelineId>().is_err());
        assert_eq!(
            "2".parse::<TimelineId>().unwrap().history_file_name(),
            "00000002.history"
        );
    }

    proptest! {
        #[test]
        fn display_round_trips(v in any::<u64>()) {
            prop_assert_eq!(Lsn(v).to_string().parse::<Lsn>().unwrap(), Lsn(v));
        }
    }
}
