//! `.walsink.meta`: the cluster an archive directory is pinned to, and the gaps it has.
//!
//! A text file of `key = value` lines. Blank lines and lines starting with `#` are
//! ignored, and so are unknown keys (a newer walsink may add some). Both identity keys
//! are required and may appear once. `gap` may appear any number of times, one line per
//! gap accepted with `--allow-gap`:
//!
//! ```text
//! gap = <from LSN> <to LSN> <unix time> <reason, the rest of the line>
//! ```
//!
//! `wal_page_magic` (four hexadecimal digits) and `wal_block_size` pin the WAL format,
//! learned from the first WAL page the archive received; both or neither. Files written
//! before they existed have neither, and get them with the next WAL received.

use std::fmt;

use walsink_wal::validate::WalFormat;
use walsink_wal::{Lsn, WalSegSize};

/// WAL the archive does not have: the server had removed it when walsink needed it,
/// and the operator accepted the loss (`--allow-gap`). Recorded in `.walsink.meta`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    /// The first position missing: where the archive's WAL ended.
    pub from: Lsn,
    /// Where the archive continues: the oldest WAL the server still had (a segment
    /// start). WAL in `from..to` is not in the archive.
    pub to: Lsn,
    /// When the gap was accepted, in seconds since the Unix epoch.
    pub accepted_at: u64,
    /// Why the WAL was missing, as one line of text.
    pub reason: String,
}

impl Gap {
    /// A gap with `reason` reduced to one line (line breaks become spaces).
    pub fn new(from: Lsn, to: Lsn, accepted_at: u64, reason: &str) -> Gap {
        let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
        Gap {
            from,
            to,
            accepted_at,
            reason,
        }
    }

    fn render(&self) -> String {
        let mut line = format!("gap = {} {} {}", self.from, self.to, self.accepted_at);
        if !self.reason.is_empty() {
            line.push(' ');
            line.push_str(&self.reason);
        }
        line.push('\n');
        line
    }

    fn parse(value: &str) -> Result<Gap, String> {
        // The next whitespace-separated token, and the rest.
        fn token(s: &str) -> (&str, &str) {
            let s = s.trim_start();
            s.split_at(s.find(char::is_whitespace).unwrap_or(s.len()))
        }
        let (from, rest) = token(value);
        let (to, rest) = token(rest);
        let (at, reason) = token(rest);
        let missing = |what: &str| format!("{what} is missing");
        if from.is_empty() {
            return Err(missing("the start LSN"));
        }
        if to.is_empty() {
            return Err(missing("the end LSN"));
        }
        if at.is_empty() {
            return Err(missing("the time"));
        }
        let from: Lsn = from
            .parse()
            .map_err(|_| format!("the start \"{from}\" is not an LSN"))?;
        let to: Lsn = to
            .parse()
            .map_err(|_| format!("the end \"{to}\" is not an LSN"))?;
        let accepted_at: u64 = at
            .parse()
            .map_err(|_| format!("the time \"{at}\" is not a number of seconds"))?;
        if from >= to {
            return Err(format!("the gap {from}..{to} is empty or reversed"));
        }
        Ok(Gap::new(from, to, accepted_at, reason))
    }
}

impl fmt::Display for Gap {
    /// `0/3000000..0/5000000 accepted at 2025-01-02 03:04:05 UTC (reason)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}..{} accepted at {}",
            self.from,
            self.to,
            utc(self.accepted_at)
        )?;
        if !self.reason.is_empty() {
            write!(f, " ({})", self.reason)?;
        }
        Ok(())
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` of a Unix time.
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// What `.walsink.meta` records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    /// The database system identifier (`IDENTIFY_SYSTEM` systemid).
    pub(crate) system_identifier: u64,
    /// The WAL segment size.
    pub(crate) seg: WalSegSize,
    /// The WAL page magic and block size, once learned from the first page received.
    pub(crate) format: Option<WalFormat>,
    /// Gaps accepted with `--allow-gap`, oldest first.
    pub(crate) gaps: Vec<Gap>,
}

impl Meta {
    /// The file content.
    pub(crate) fn render(&self) -> String {
        let mut text = format!(
            "# walsink archive metadata: this directory holds WAL of this database system only.\n\
             system_identifier = {}\n\
             wal_segment_size = {}\n",
            self.system_identifier,
            self.seg.bytes()
        );
        if let Some(f) = self.format {
            text.push_str(&format!(
                "wal_page_magic = {:04X}\nwal_block_size = {}\n",
                f.magic, f.blcksz
            ));
        }
        if !self.gaps.is_empty() {
            text.push_str(
                "# WAL missing from this archive, accepted with --allow-gap:\n\
                 # gap = <from LSN> <to LSN> <unix time accepted> <reason>\n",
            );
            for g in &self.gaps {
                text.push_str(&g.render());
            }
        }
        text
    }

    /// Parses the file content; the error says what is wrong.
    pub(crate) fn parse(text: &str) -> Result<Meta, String> {
        let mut sysid: Option<u64> = None;
        let mut seg: Option<WalSegSize> = None;
        let mut magic: Option<u16> = None;
        let mut blcksz: Option<u32> = None;
        let mut gaps = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let lineno = i + 1;
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {lineno} is not of the form \"key = value\""))?;
            let (key, value) = (key.trim(), value.trim());
            let bad = |what: &str| format!("line {lineno}: invalid {what} \"{value}\"");
            match key {
                "system_identifier" => {
                    let v = value.parse::<u64>().map_err(|_| bad(key))?;
                    if sysid.replace(v).is_some() {
                        return Err(format!("line {lineno}: {key} appears twice"));
                    }
                }
                "wal_segment_size" => {
                    let v = value
                        .parse::<u64>()
                        .ok()
                        .and_then(|b| WalSegSize::new(b).ok())
                        .ok_or_else(|| bad(key))?;
                    if seg.replace(v).is_some() {
                        return Err(format!("line {lineno}: {key} appears twice"));
                    }
                }
                "wal_page_magic" => {
                    let hex = value.len() == 4 && value.bytes().all(|b| b.is_ascii_hexdigit());
                    let v = hex
                        .then(|| u16::from_str_radix(value, 16).ok())
                        .flatten()
                        .ok_or_else(|| bad(key))?;
                    if magic.replace(v).is_some() {
                        return Err(format!("line {lineno}: {key} appears twice"));
                    }
                }
                "wal_block_size" => {
                    let v = value
                        .parse::<u32>()
                        .ok()
                        .filter(|b| b.is_power_of_two() && (1024..=65536).contains(b))
                        .ok_or_else(|| bad(key))?;
                    if blcksz.replace(v).is_some() {
                        return Err(format!("line {lineno}: {key} appears twice"));
                    }
                }
                "gap" => {
                    let g = Gap::parse(value)
                        .map_err(|e| format!("line {lineno}: invalid gap \"{value}\": {e}"))?;
                    gaps.push(g);
                }
                _ => {}
            }
        }
        let format = match (magic, blcksz) {
            (Some(magic), Some(blcksz)) => Some(WalFormat { magic, blcksz }),
            (None, None) => None,
            (Some(_), None) => return Err("wal_page_magic without wal_block_size".into()),
            (None, Some(_)) => return Err("wal_block_size without wal_page_magic".into()),
        };
        Ok(Meta {
            system_identifier: sysid.ok_or("system_identifier is missing")?,
            seg: seg.ok_or("wal_segment_size is missing")?,
            format,
            gaps,
        })
    }
}

/// Fuzzing entry point: `data` as the content of `.walsink.meta`, read as the archive
/// reads it (UTF-8 or refused). Never panics on its own account; it panics only if a
/// file that parses does not render to one that parses back to the same metadata.
pub fn fuzz_meta(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(meta) = Meta::parse(text) {
        let rendered = meta.render();
        assert_eq!(
            Meta::parse(&rendered).as_ref(),
            Ok(&meta),
            ".walsink.meta does not round-trip: {rendered:?}"
        );
        for g in &meta.gaps {
            let _ = g.to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            system_identifier: 7312345678901234567,
            seg: WalSegSize::DEFAULT,
            format: None,
            gaps: Vec::new(),
        }
    }

    #[test]
    fn the_wal_format_round_trips_and_old_files_have_none() {
        let mut m = meta();
        m.format = Some(WalFormat {
            magic: 0xD106,
            blcksz: 8192,
        });
        let text = m.render();
        assert!(
            text.contains("wal_page_magic = D106\nwal_block_size = 8192\n"),
            "{text}"
        );
        assert_eq!(Meta::parse(&text), Ok(m));
        // A file of an older walsink.
        let old = Meta::parse("system_identifier = 5\nwal_segment_size = 1048576\n").unwrap();
        assert_eq!(old.format, None);
        const ID: &str = "system_identifier = 5\nwal_segment_size = 1048576\n";
        for bad in [
            "wal_page_magic = D106\n",
            "wal_block_size = 8192\n",
            "wal_page_magic = D1060\nwal_block_size = 8192\n",
            "wal_page_magic = XYZW\nwal_block_size = 8192\n",
            "wal_page_magic = +D10\nwal_block_size = 8192\n",
            "wal_page_magic = D106\nwal_block_size = 1000\n",
        ] {
            assert!(Meta::parse(&format!("{ID}{bad}")).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn round_trips() {
        let m = meta();
        assert_eq!(Meta::parse(&m.render()), Ok(m.clone()));
        assert!(
            m.render()
                .contains("system_identifier = 7312345678901234567\n")
        );
        assert!(m.render().contains("wal_segment_size = 16777216\n"));
        assert!(!m.render().contains("gap"), "{}", m.render());
    }

    #[test]
    fn gaps_round_trip_in_order() {
        let mut m = meta();
        m.gaps = vec![
            Gap::new(
                Lsn(0x300_0000),
                Lsn(0x500_0000),
                1_700_000_000,
                "requested WAL segment 000000010000000000000003\nhas already been removed",
            ),
            Gap::new(Lsn(0x1_0000_0123), Lsn(0x1_0200_0000), 1_700_000_060, ""),
        ];
        let text = m.render();
        assert!(
            text.contains(
                "gap = 0/3000000 0/5000000 1700000000 requested WAL segment 000000010000000000000003 has already been removed\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("gap = 1/123 1/2000000 1700000060\n"),
            "{text}"
        );
        let parsed = Meta::parse(&text).unwrap();
        assert_eq!(parsed, m);
        assert_eq!(parsed.gaps[1].reason, "");
    }

    #[test]
    fn gap_is_shown_with_its_range_and_time() {
        let g = Gap::new(Lsn(0x300_0000), Lsn(0x500_0000), 1_700_000_000, "why");
        assert_eq!(
            g.to_string(),
            "0/3000000..0/5000000 accepted at 2023-11-14 22:13:20 UTC (why)"
        );
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(4_107_542_399), "2100-02-28 23:59:59 UTC");
    }

    #[test]
    fn tolerates_spacing_comments_and_unknown_keys() {
        let m = Meta::parse(
            "\n# c\n  wal_segment_size=1048576\nfuture = x\nsystem_identifier =  5 \n\
             gap =  0/1000000   0/2000000 17  some  reason \n",
        )
        .unwrap();
        assert_eq!(m.system_identifier, 5);
        assert_eq!(m.seg.bytes(), 1 << 20);
        assert_eq!(
            m.gaps,
            [Gap::new(
                Lsn(0x100_0000),
                Lsn(0x200_0000),
                17,
                "some reason"
            )]
        );
    }

    #[test]
    fn rejects_broken_files() {
        const ID: &str = "system_identifier = 5\nwal_segment_size = 1048576\n";
        for bad in [
            "".to_owned(),
            "system_identifier = 5\n".to_owned(),
            "wal_segment_size = 1048576\n".to_owned(),
            "system_identifier = x\nwal_segment_size = 1048576\n".to_owned(),
            "system_identifier = 5\nwal_segment_size = 1000\n".to_owned(),
            "system_identifier = 5\nsystem_identifier = 5\nwal_segment_size = 1048576\n".to_owned(),
            "system_identifier 5\nwal_segment_size = 1048576\n".to_owned(),
            format!("{ID}gap =\n"),
            format!("{ID}gap = 0/1000000\n"),
            format!("{ID}gap = 0/1000000 0/2000000\n"),
            format!("{ID}gap = 0/1000000 0/2000000 soon\n"),
            format!("{ID}gap = x 0/2000000 1\n"),
            format!("{ID}gap = 0/2000000 0/1000000 1\n"),
            format!("{ID}gap = 0/2000000 0/2000000 1\n"),
        ] {
            assert!(Meta::parse(&bad).is_err(), "{bad:?}");
        }
    }
}
