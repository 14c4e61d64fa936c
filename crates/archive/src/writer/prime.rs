//! Where streaming (re)starts: the validator is primed with the completed segment
//! before the start position, so that the record crossing into the new stream is checked.
//!
//! Streaming always (re)starts at a segment start `L` (pg_receivewal's rule), and WAL
//! records very often cross segment boundaries: the stream then begins with the tail
//! of a record that began in the previous segment `S`, already archived. A validator
//! started at `L` can only skip that tail, so the record's CRC-32C would never be
//! checked, and a corrupt byte in `S`'s part of it (disk or transfer corruption) would
//! stay unnoticed until `walsink verify`. So when the archive holds `S` completed (a
//! regular file of a whole segment, same timeline), the validator reads all of `S`
//! first (a few milliseconds for 16 MiB; it starts at `S`'s start, which it must, and
//! `S`'s own records are checked on the way) and stands inside the crossing record at
//! `L`: the continuation streamed from the server completes its check.
//!
//! On a new timeline's first segment `S` is the parent timeline's (its history file in the
//! archive says where the parent's WAL ends), as recovery reads it.
//!
//! Nothing here stops archiving: `S` missing (a fresh archive, a gap)
//! starts unprimed as before; `S` unreadable, short or invalid itself is logged once as
//! a warning advising `walsink verify`, and streaming starts unprimed. `S` is only read,
//! never written, and the positions reported (the flush position, the start) do not
//! move: what the writer reports is never below where it started
//! ([`SegmentWriter::flushed`]), and after invalid WAL only what this writer wrote
//! (from `L`) is zeroed ([`SegmentWriter::discard_after`]).

use std::io::{ErrorKind, Read};

use rustix::fs::OFlags;
use tracing::{debug, info, warn};
use walsink_wal::validate::WalValidator;
use walsink_wal::{Lsn, SegmentName, TimelineHistory, TimelineId};

use super::SegmentWriter;
use crate::ArchiveError;
use crate::archive::HISTORY_LIMIT;

/// Bytes fed to the validator at a time (as `walsink verify` does, to stay in cache).
const CHUNK: usize = 1 << 20;

/// The completed segment the validator read before the start position.
#[derive(Clone, Debug)]
pub(super) struct Primed {
    /// Its file name.
    pub(super) name: String,
}

impl SegmentWriter {
    /// A validator for a stream (re)starting at `lsn` (a segment start) of timeline
    /// `tli`, primed with the completed segment before it if the archive holds it (see
    /// the module docs): `v` as [`WalValidator::reset`] there, else as fed with that
    /// segment. Returns the segment read, if any.
    pub(super) fn prime(&self, v: &mut WalValidator, tli: TimelineId, lsn: Lsn) -> Option<Primed> {
        v.reset(tli.get(), lsn);
        let seg = self.seg;
        if lsn.0 < seg.bytes() {
            return None;
        }
        // The segment before a new timeline's first one is its parent's (the history says
        // whose WAL the bytes before `lsn` are).
        let prev_tli = self.timeline_before(tli, lsn);
        let prev = SegmentName::containing(prev_tli, Lsn(lsn.0 - seg.bytes()), seg);
        let name = prev.file_name(seg);
        let path = self.dir.join(&name);
        let started = std::time::Instant::now();
        let mut p = v.clone();
        p.reset(tli.get(), prev.start_lsn(seg));
        match self.feed_previous(&name, &mut p) {
            Ok(true) => {}
            Ok(false) => {
                debug!(
                    "no completed segment \"{}\" before {lsn}: a record running into {lsn} is not checked",
                    path.display()
                );
                return None;
            }
            Err(why) => {
                warn!(
                    "cannot use the completed segment \"{}\" ({why}), so the CRC of a record that runs from it into the WAL streamed from {lsn} is not checked; run `walsink verify -D {}` to check the archive",
                    path.display(),
                    self.dir.path().display()
                );
                return None;
            }
        }
        debug_assert_eq!(p.position(), lsn);
        // (Inside a record that began before the segment, the validator only skips.)
        let record = p.checked_end();
        if record > prev.start_lsn(seg) && record < lsn {
            info!(
                "read the completed segment \"{}\" ({:.1} ms): the record at {record} that runs on into the WAL streamed from {lsn} is checked",
                path.display(),
                started.elapsed().as_secs_f64() * 1e3
            );
        } else {
            debug!(
                "read the completed segment \"{}\" ({:.1} ms): no record runs on from it into {lsn}",
                path.display(),
                started.elapsed().as_secs_f64() * 1e3
            );
        }
        *v = p;
        Some(Primed { name })
    }

    /// The timeline whose WAL holds the byte before `lsn` on timeline `tli`: an ancestor
    /// when `tli`'s history file in the archive says `tli` begins after it, else `tli`
    /// (also when that file is missing or unreadable: then nothing is primed across
    /// the switch, as before).
    fn timeline_before(&self, tli: TimelineId, lsn: Lsn) -> TimelineId {
        if tli == TimelineId::ONE {
            return tli;
        }
        match self
            .dir
            .read_capped(&tli.history_file_name(), HISTORY_LIMIT)
        {
            Ok(Some(bytes)) => TimelineHistory::parse(tli, &bytes)
                .map(|h| h.timeline_of(Lsn(lsn.0 - 1)))
                .unwrap_or(tli),
            _ => tli,
        }
    }

    /// Feeds `p` (at its start) the completed segment `name`, a chunk at a time: `Ok(false)`
    /// if there is none, `Err` with the reason if it is not a regular file of a whole
    /// segment, cannot be read, or is invalid WAL.
    fn feed_previous(&self, name: &str, p: &mut WalValidator) -> Result<bool, String> {
        let size = self.seg.bytes();
        let mut f = match self.dir.open_file(name, OFlags::RDONLY) {
            Ok(f) => f,
            Err(ArchiveError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                return Ok(false);
            }
            Err(e) => return Err(e.to_string()),
        };
        let len = f.metadata().map_err(|e| format!("stat: {e}"))?.len();
        if len != size {
            return Err(format!("it has {len} bytes, a segment has {size}"));
        }
        let mut buf = vec![0u8; usize::try_from(size).unwrap_or(CHUNK).min(CHUNK)];
        let mut left = size;
        while left > 0 {
            let n = usize::try_from(left).unwrap_or(CHUNK).min(buf.len());
            f.read_exact(&mut buf[..n])
                .map_err(|e| format!("read: {e}"))?;
            p.feed(&buf[..n])
                .map_err(|e| format!("it holds invalid WAL {e}"))?;
            left -= n as u64;
        }
        Ok(true)
    }
}
