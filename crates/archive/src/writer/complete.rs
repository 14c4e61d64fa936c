//! Completing a full segment: `fdatasync`, rename from `NAME.partial` to `NAME`
//! (keeping a differing existing `NAME` aside), directory `fsync`; inline or queued
//! for the sync thread.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};

use super::{OpenSegment, SegmentWriter};
use crate::dir::Dir;
use crate::fsops::{self, SegmentFs};
use crate::stage::Stage;
use crate::syncer::{Task, Work};
use crate::{ArchiveError, SyncMode};

impl SegmentWriter {
    /// The open segment is full: make it durable and give it its final name.
    pub(super) fn complete_segment(&mut self) -> Result<(), ArchiveError> {
        let partial = self
            .open
            .as_ref()
            .expect("a segment is open")
            .partial
            .clone();
        let background = self.opts.background_sync && self.sync == SyncMode::Sync;
        // The segment is full: a failure from here on cannot be retried by writing.
        // In the background, full staging buffers are left to the I/O threads (the
        // sync thread waits for them); only a partly filled one is written here.
        let staged = self.stage.as_ref().is_some_and(Stage::is_dirty);
        let r = if background && !staged {
            Ok(())
        } else {
            self.write_out()
        };
        self.fatal(&partial, r)?;
        let open = self.open.take().expect("a segment is open");
        if background {
            let after = if open.direct { self.after_jobs() } else { None };
            let (fs, dir) = (Arc::clone(&self.fs), Arc::clone(&self.dir));
            let upto = self.written;
            let obs = self.observer.clone();
            let task = Task {
                work: Work::Complete(Box::new(move || {
                    finish_segment(&*fs, &dir, true, open)?;
                    if let Some(o) = obs {
                        o.segment_completed();
                    }
                    Ok(())
                })),
                after,
                upto,
            };
            if self.submit_task(task).is_err() {
                let r = Err(ArchiveError::io(
                    &partial,
                    "complete segment (sync thread not running)",
                    std::io::Error::other("sync thread not running"),
                ));
                return self.fatal(&partial, r);
            }
            self.dir_dirty = false;
            self.requested = upto;
            return Ok(());
        }
        let r = finish_segment(&*self.fs, &self.dir, self.sync == SyncMode::Sync, open);
        self.fatal(&partial, r)?;
        self.dir_dirty = false;
        self.flushed = self.written;
        if let Some(o) = &self.observer {
            o.segment_completed();
        }
        Ok(())
    }
}

/// Completes a full segment: `fdatasync` (if `sync`), rename from `NAME.partial` to
/// `NAME` (an identical existing `NAME` is kept, a different one moved aside), and
/// `fsync` of the directory (if `sync`). `NAME.partial` must still be the file written
/// before, and `NAME` must be it after the rename ([`ArchiveError::FileReplaced`]).
fn finish_segment(
    fs: &dyn SegmentFs,
    dir: &Dir,
    sync: bool,
    open: OpenSegment,
) -> Result<(), ArchiveError> {
    if sync {
        fs.datasync(&open.file, &open.partial)?;
        // Written buffered: its pages are clean now and will not be read again.
        fs.drop_cache(&open.file);
    }
    drop(open.file);
    let (partial, complete) = (open.partial_name.as_str(), open.complete_name.as_str());
    dir.verify_is(partial, open.id)?;
    let complete_path = dir.join(complete);
    if fs.exists(dir, complete)? {
        if fs.files_identical(dir, partial, complete)? {
            info!(
                "segment file \"{}\" already exists with identical content; removing \"{}\"",
                complete_path.display(),
                open.partial.display()
            );
            if sync {
                // Whoever wrote it may not have synced it.
                let f = fs.open_existing(dir, complete)?;
                fs.fsync(&f, &complete_path)?;
            }
            fs.remove(dir, partial)?;
        } else {
            let aside = aside_name(dir, complete)?;
            warn!(
                "segment file \"{}\" already exists with different content; keeping it as \"{}\"",
                complete_path.display(),
                dir.join(&aside).display()
            );
            fs.rename(dir, complete, &aside)?;
            fs.rename(dir, partial, complete)?;
            dir.verify_is(complete, open.id)?;
        }
    } else {
        fs.rename(dir, partial, complete)?;
        dir.verify_is(complete, open.id)?;
    }
    if sync {
        fs.fsync_dir(dir)?;
    }
    debug!("completed segment \"{}\"", complete_path.display());
    Ok(())
}

/// A free name `.NAME.replaced-<unix seconds>[-N]` to move an old `NAME` to: a
/// dot-name, so that programs that manage WAL directories (Barman) leave it alone.
fn aside_name(dir: &Dir, complete: &str) -> Result<String, ArchiveError> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut candidate = format!(".{complete}.replaced-{secs}");
    let mut n = 1;
    while fsops::exists(dir, &candidate)? {
        candidate = format!(".{complete}.replaced-{secs}-{n}");
        n += 1;
    }
    Ok(candidate)
}
