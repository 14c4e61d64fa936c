//! `walsink.meta`: the cluster an archive directory is pinned to.
//!
//! A text file of `key = value` lines. Blank lines and lines starting with `#` are
//! ignored, and so are unknown keys (a newer walsink may add some). Both known keys
//! are required and may appear once.

use walsink_wal::WalSegSize;

/// The identity recorded in `walsink.meta`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    /// The database system identifier (`IDENTIFY_SYSTEM` systemid).
    pub(crate) system_identifier: u64,
    /// The WAL segment size.
    pub(crate) seg: WalSegSize,
}

impl Meta {
    /// The file content.
    pub(crate) fn render(&self) -> String {
        format!(
            "# walsink archive metadata: this directory holds WAL of this database system only.\n\
             system_identifier = {}\n\
             wal_segment_size = {}\n",
            self.system_identifier,
            self.seg.bytes()
        )
    }

    /// Parses the file content; the error says what is wrong.
    pub(crate) fn parse(text: &str) -> Result<Meta, String> {
        let mut sysid: Option<u64> = None;
        let mut seg: Option<WalSegSize> = None;
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
                _ => {}
            }
        }
        Ok(Meta {
            system_identifier: sysid.ok_or("system_identifier is missing")?,
            seg: seg.ok_or("wal_segment_size is missing")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let m = Meta {
            system_identifier: 7312345678901234567,
            seg: WalSegSize::DEFAULT,
        };
        assert_eq!(Meta::parse(&m.render()), Ok(m));
        assert!(
            m.render()
                .contains("system_identifier = 7312345678901234567\n")
        );
        assert!(m.render().contains("wal_segment_size = 16777216\n"));
    }

    #[test]
    fn tolerates_spacing_comments_and_unknown_keys() {
        let m =
            Meta::parse("\n# c\n  wal_segment_size=1048576\nfuture = x\nsystem_identifier =  5 \n")
                .unwrap();
        assert_eq!(m.system_identifier, 5);
        assert_eq!(m.seg.bytes(), 1 << 20);
    }

    #[test]
    fn rejects_broken_files() {
        for bad in [
            "",
            "system_identifier = 5\n",
            "wal_segment_size = 1048576\n",
            "system_identifier = x\nwal_segment_size = 1048576\n",
            "system_identifier = 5\nwal_segment_size = 1000\n",
            "system_identifier = 5\nsystem_identifier = 5\nwal_segment_size = 1048576\n",
            "system_identifier 5\nwal_segment_size = 1048576\n",
        ] {
            assert!(Meta::parse(bad).is_err(), "{bad:?}");
        }
    }
}
