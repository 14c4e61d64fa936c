//! Opening the segment a write goes to: the prepared file renamed into place for a
//! new segment, or an existing `.partial` reused (fixed to the segment size).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use tracing::{debug, info, warn};
use walsink_wal::{Lsn, SegmentName, TimelineId};

use super::direct::STAGE_BYTES;
use super::{OpenSegment, SegmentWriter};
use crate::PREPARED_FILE;
use crate::dir::id_of;
use crate::stage::Stage;
use crate::syncer::Syncer;
use crate::writeback::Writeback;
use crate::{ArchiveError, SyncMode};

impl SegmentWriter {
    /// Opens the segment of timeline `tli` that contains `pos` for writing. `pos` is
    /// the segment start, or a later offset when continuing a closed `.partial`,
    /// which then must exist (creating it would put zeros before `pos`).
    pub(super) fn open_segment(&mut self, tli: TimelineId, pos: Lsn) -> Result<(), ArchiveError> {
        let seg = self.seg;
        let name = SegmentName::containing(tli, pos, seg);
        let partial_name = name.partial_file_name(seg);
        let complete_name = name.file_name(seg);
        let partial = self.dir.join(&partial_name);

        let fs = Arc::clone(&self.fs);
        let mut direct = false;
        let file = if seg.offset(pos) == 0 {
            // The previous segment's completion (queued for the sync thread) must be
            // durable before this segment's name exists: after a crash, streaming
            // restarts from the newest segment, so an earlier `.partial` would stay a
            // hole in the archive.
            if self.syncer.as_ref().is_some_and(Syncer::busy) {
                self.settle_syncer()?;
            }
            // No new name while another program is changing the directory.
            self.check_lock_due(true)?;
            // A new segment gets the prepared file, unless its .partial exists.
            let prepared = self.preparer.take()?;
            let prepared_id = id_of(&prepared.file, self.preparer.path())?;
            match fs.rename_noreplace(&self.dir, PREPARED_FILE, &partial_name) {
                Ok(true) => {
                    // What was renamed must be the file prepared (and still open
                    // here), not one another process put under the prepared name.
                    let r = self.dir.verify_is(&partial_name, prepared_id);
                    self.fatal(&partial, r)?;
                    debug!("creating \"{}\"", partial.display());
                    self.preparer.request();
                    if self.sync == SyncMode::Sync {
                        self.dir_dirty = true;
                    }
                    direct = prepared.direct;
                    Some(prepared.file)
                }
                Ok(false) => {
                    self.preparer.put_back(prepared);
                    None
                }
                Err(e) => {
                    self.preparer.put_back(prepared);
                    return Err(e);
                }
            }
        } else {
            None
        };
        let file = Arc::new(match file {
            Some(f) => f,
            None => {
                let file = fs.open_existing(&self.dir, &partial_name)?;
                self.reuse_existing(&file, &partial)?;
                file
            }
        });
        let id = id_of(&file, &partial)?;
        if direct {
            let cap = match self.opts.write_behind {
                0 => STAGE_BYTES,
                n => crate::stage::round_up(n),
            };
            let stage = self.stage.get_or_insert_with(|| Stage::new(cap));
            stage.reset(0);
            if self.writeback.is_none() {
                self.writeback = Writeback::start(Arc::clone(&fs), cap, self.opts.io_threads);
            }
        }
        if fs.exists(&self.dir, &complete_name)? {
            info!(
                "completed segment file \"{}\" already exists; keeping it until \"{}\" is complete",
                self.dir.join(&complete_name).display(),
                partial.display()
            );
        }
        self.open = Some(OpenSegment {
            name,
            file,
            id,
            partial,
            partial_name,
            complete_name,
            synced_to: Lsn::INVALID,
            direct,
        });
        Ok(())
    }

    /// Makes an existing `.partial` (left by a previous run, or by pg_receivewal)
    /// exactly one segment long, keeping its bytes, and durable.
    pub(super) fn reuse_existing(
        &mut self,
        file: &File,
        partial: &Path,
    ) -> Result<(), ArchiveError> {
        let fs = Arc::clone(&self.fs);
        let size = self.seg.bytes();
        let len = fs.file_len(file, partial)?;
        if len == 0 {
            // pg_receivewal recreates empty files; so do we, in place.
            debug!("zero-filling empty \"{}\"", partial.display());
            fs.fill_zeros(file, partial, 0, size)?;
        } else if len < size {
            // pg_receivewal fails on such a file forever; the bytes it has are
            // kept (they are re-streamed anyway) and the rest is zero-filled.
            warn!(
                "write-ahead log file \"{}\" has {len} bytes, should be {size}; extending it with zeros",
                partial.display()
            );
            fs.fill_zeros(file, partial, len, size)?;
        } else if len > size {
            warn!(
                "write-ahead log file \"{}\" has {len} bytes, should be {size}; truncating it",
                partial.display()
            );
            fs.set_len(file, partial, size)?;
        } else {
            debug!("reusing \"{}\"", partial.display());
        }
        if self.sync == SyncMode::Sync {
            // In case of a previous crash, and because another program may have
            // created or extended it without syncing.
            let r = fs.datasync(file, partial);
            self.fatal(partial, r)?;
            self.sync_dir()?;
        }
        Ok(())
    }
}
