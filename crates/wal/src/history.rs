//! Timeline history files (`NNNNNNNN.history`).
//!
//! Each line is `parentTLI <tab> switchpoint <tab> reason`; blank lines and lines
//! starting with `#` are ignored, as PostgreSQL's `readTimeLineHistory` does. A history
//! file for timeline N lists every ancestor of N, oldest first.

use crate::{Lsn, TimelineId, WalError};

/// One ancestor timeline and the position where its successor forked from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The ancestor timeline.
    pub tli: TimelineId,
    /// The first position that is *not* on `tli` any more.
    pub switchpoint: Lsn,
}

/// The parsed history of one timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineHistory {
    /// The timeline the file describes.
    pub tli: TimelineId,
    /// Its ancestors, oldest first, with strictly increasing timelines and
    /// non-decreasing switch points.
    pub ancestors: Vec<HistoryEntry>,
}

impl TimelineHistory {
    /// Parses the content of the history file of timeline `tli`.
    pub fn parse(tli: TimelineId, content: &[u8]) -> Result<TimelineHistory, WalError> {
        let text = std::str::from_utf8(content).map_err(|_| WalError::InvalidHistory {
            line: 0,
            reason: "file is not valid UTF-8".into(),
        })?;
        let mut ancestors: Vec<HistoryEntry> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| WalError::InvalidHistory {
                line: i + 1,
                reason: reason.to_owned(),
            };
            let mut fields = line.split_whitespace();
            let tli_field = fields.next().ok_or_else(|| bad("missing timeline ID"))?;
            let entry_tli: TimelineId = tli_field
                .parse()
                .map_err(|_| bad("timeline ID is not a positive integer"))?;
            let switchpoint: Lsn = fields
                .next()
                .ok_or_else(|| bad("missing switch point"))?
                .parse()
                .map_err(|_| bad("switch point is not an LSN"))?;
            if let Some(prev) = ancestors.last() {
                if entry_tli <= prev.tli {
                    return Err(bad("timeline IDs must be in increasing sequence"));
                }
                if switchpoint < prev.switchpoint {
                    return Err(bad("switch points must not decrease"));
                }
            }
            if entry_tli >= tli {
                return Err(bad(
                    "ancestor timeline is not older than the file's timeline",
                ));
            }
            ancestors.push(HistoryEntry {
                tli: entry_tli,
                switchpoint,
            });
        }
        Ok(TimelineHistory { tli, ancestors })
    }

    /// The timeline that `lsn` belongs to in this history (`tliOfPointInHistory`).
    pub fn timeline_of(&self, lsn: Lsn) -> TimelineId {
        self.ancestors
            .iter()
            .find(|e| lsn < e.switchpoint)
            .map(|e| e.tli)
            .unwrap_or(self.tli)
    }

    /// Where timeline `tli` ends in this history, or `None` if it is the newest
    /// timeline (it has no end yet) or not in the history at all.
    pub fn switchpoint_of(&self, tli: TimelineId) -> Option<Lsn> {
        self.ancestors
            .iter()
            .find(|e| e.tli == tli)
            .map(|e| e.switchpoint)
    }

    /// Whether `tli` is this timeline or one of its ancestors.
    pub fn contains(&self, tli: TimelineId) -> bool {
        tli == self.tli || self.ancestors.iter().any(|e| e.tli == tli)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tli(n: u32) -> TimelineId {
        TimelineId::new(n).unwrap()
    }

    #[test]
    fn parses_a_real_history_file() {
        let content = b"1\t0/3000158\tno recovery target specified\n\n# comment\n2\t0/5000000\tat restore point \"x\"\n";
        let h = TimelineHistory::parse(tli(3), content).unwrap();
        assert_eq!(h.ancestors.len(), 2);
        assert_eq!(h.timeline_of("0/1000000".parse().unwrap()), tli(1));
        assert_eq!(h.timeline_of("0/3000158".parse().unwrap()), tli(2));
        assert_eq!(h.timeline_of("0/6000000".parse().unwrap()), tli(3));
        assert_eq!(h.switchpoint_of(tli(1)), Some("0/3000158".parse().unwrap()));
        assert_eq!(h.switchpoint_of(tli(3)), None);
        assert!(h.contains(tli(2)) && !h.contains(tli(4)));
    }

    #[test]
    fn accepts_pg19_lsn_format() {
        let h = TimelineHistory::parse(tli(2), b"1\t0/03000158\tno recovery target specified\n")
            .unwrap();
        assert_eq!(h.ancestors[0].switchpoint, "0/3000158".parse().unwrap());
    }

    #[test]
    fn rejects_nonsense() {
        for (t, bad) in [
            (3, &b"2\t0/1\tx\n1\t0/2\tx\n"[..]),
            (3, b"1\t0/2\tx\n2\t0/1\tx\n"),
            (2, b"2\t0/1\tx\n"),
            (2, b"one\t0/1\tx\n"),
            (2, b"1\tzz\tx\n"),
            (2, b"1\n"),
            (2, b"\xff\xfe"),
        ] {
            assert!(
                TimelineHistory::parse(tli(t), bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
