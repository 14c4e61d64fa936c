//! After invalid WAL: the bytes of the broken record that earlier writes put in the
//! archive are overwritten with zeros, so the archive ends exactly at the end of the
//! last valid record.
//!
//! A record's CRC can only be checked once its last byte has arrived, possibly several
//! messages, pages and segments after its first: by then its first bytes are in the
//! files (never reported flushed). Left there, they would be read as WAL: a restart
//! takes the `.partial`'s end from its page and record headers
//! ([`walsink_wal::tail::written_end`]) as the floor of the flush positions it reports,
//! and `walsink status` and `walsink verify` read them too. So the writer makes the
//! archive look as if the stream had stopped at the last valid record, as pg_receivewal's
//! zero-padded `.partial`s look:
//! * the segment holding the last valid record's end is `NAME.partial` again, zeros from
//!   that end to what was written in it. If it had filled and was completed (renamed to
//!   `NAME`) while the broken record went on into the next segment, it is renamed back:
//!   it no longer holds a whole segment of valid WAL, and a restart must stream it again;
//! * later segments hold nothing but the broken record's continuation and are removed,
//!   newest first.
//!
//! Order, for a crash on the way: the removals and the rename back, one directory
//! `fsync`, then the zeros and their `fdatasync`. Until the zeros are durable the
//! invalid bytes are in the newest `.partial`, which a restart streams again from its
//! segment start (overwriting them; the flush floor taken from them only holds back
//! the reports until the new stream passes it). Zeroing first would be worse: with the
//! later files still there, a restart would resume after the zeroed segment and leave
//! the hole. The one window left is a filesystem that makes the removals durable
//! without the rename (they are in one directory, and journaling filesystems commit
//! them in order): a restart then resumes after the completed segment, as it did
//! before this existed.

use std::path::PathBuf;

use tracing::warn;
#[cfg(doc)]
use walsink_wal::validate::WalInvalid;
use walsink_wal::{Lsn, SegNo, SegmentName, TimelineId};

use super::SegmentWriter;
use crate::{ArchiveError, SyncMode};

impl SegmentWriter {
    /// Makes `end` (a position of timeline `tli`: where the invalid part begins,
    /// [`WalInvalid::good_end`]) the end of the WAL in the archive: the bytes written
    /// after it are
    /// zeroed or their files removed (see the module docs), durably, and the writer's
    /// position is `end` with no segment open, as after [`close`](Self::close)
    /// there. Nothing to do when nothing was written after it. A failure breaks the
    /// writer.
    ///
    /// Only what this writer wrote is touched: an `end` before where its position was
    /// last (re)started (a record that began in the completed segment before it, which
    /// the validator read there, see [`prime`](super::prime)) is taken as that start,
    /// and the segments before it are left as they are.
    pub(super) fn discard_after(&mut self, tli: TimelineId, end: Lsn) -> Result<(), ArchiveError> {
        let end = end.max(self.started);
        if self.written <= end {
            return Ok(());
        }
        let r = self.discard(tli, end);
        if r.is_err() && self.failed.is_none() {
            self.failed = Some(self.dir.path().to_owned());
        }
        r
    }

    fn discard(&mut self, tli: TimelineId, end: Lsn) -> Result<(), ArchiveError> {
        let seg = self.seg;
        let sync = self.sync == SyncMode::Sync;
        // Every byte written in its file, every queued completion done.
        self.settle_syncer()?;
        self.write_out()?;
        let keep = SegmentName::containing(tli, end, seg);
        // (`written` may be the end of the last segment, which was completed.)
        let last = SegmentName::containing(tli, Lsn(self.written.0 - 1), seg);
        let open = self.open.take();
        if let Some(o) = &open
            && o.name == keep
        {
            // Zeroed below through a buffered handle (the open one may be O_DIRECT).
            self.dir.verify_is(&o.partial_name, o.id)?;
        }
        drop(open);
        let fs = &self.fs;
        let mut dir_changed = false;
        for segno in (keep.segno.0 + 1..=last.segno.0).rev() {
            let name = SegmentName::new(tli, SegNo(segno));
            for file in [name.partial_file_name(seg), name.file_name(seg)] {
                if fs.exists(&self.dir, &file)? {
                    warn!(
                        "removing \"{}\": it holds only the rest of the invalid WAL from {end}",
                        self.dir.join(&file).display()
                    );
                    fs.remove(&self.dir, &file)?;
                    dir_changed = true;
                }
            }
        }
        let partial_name = keep.partial_file_name(seg);
        if !fs.exists(&self.dir, &partial_name)? {
            let complete_name = keep.file_name(seg);
            warn!(
                "renaming completed segment \"{}\" back to \"{partial_name}\": the invalid WAL from {end} runs on from it into the next segment",
                self.dir.join(&complete_name).display()
            );
            if !fs.rename_noreplace(&self.dir, &complete_name, &partial_name)? {
                return Err(ArchiveError::io(
                    self.dir.join(&partial_name),
                    "rename back",
                    std::io::Error::from(std::io::ErrorKind::AlreadyExists),
                ));
            }
            dir_changed = true;
        }
        if sync && (dir_changed || self.dir_dirty) {
            // The removals and the rename together, before the zeros: a crash before
            // the zeros are durable leaves the invalid bytes in the newest `.partial`,
            // which a restart streams again from its start.
            fs.fsync_dir(&self.dir)?;
        }
        let path: PathBuf = self.dir.join(&partial_name);
        let file = fs.open_existing(&self.dir, &partial_name)?;
        let from = seg.offset(end);
        let to = (self.written.0 - keep.start_lsn(seg).0).min(seg.bytes());
        warn!(
            "overwriting the {} bytes written from {end} in \"{}\" with zeros: they are invalid WAL",
            to - from,
            path.display()
        );
        fs.fill_zeros(&file, &path, from, to)?;
        if sync {
            fs.datasync(&file, &path)?;
        }
        self.dir_dirty = false;
        if let Some(s) = &self.syncer {
            s.reset();
        }
        self.requested = Lsn::INVALID;
        self.written = end;
        self.flushed = end;
        Ok(())
    }
}
