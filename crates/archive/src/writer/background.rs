//! Background syncing: handing `fdatasync`s and segment completions to the sync
//! thread, and taking its results back.

use std::sync::Arc;

use walsink_wal::Lsn;

use super::SegmentWriter;
use crate::syncer::{After, FlushListener, ListenerSlot, Syncer, Task, Work};
use crate::{ArchiveError, SyncMode};

impl SegmentWriter {
    /// Starts making everything written durable without waiting for it, with
    /// [`WriterOptions::background_sync`](crate::WriterOptions::background_sync): the sync thread runs the `fdatasync` once
    /// the writes it covers have finished, and [`flushed`](Self::flushed) (and the
    /// [listener](Self::set_flush_listener)) move when it returns. With direct I/O it
    /// covers the bytes already handed to the I/O threads, not a partly filled
    /// staging buffer (that waits for the next full buffer or [`flush`](Self::flush)).
    /// Without background sync (or with [`SyncMode::NoSync`]) this is
    /// [`flush`](Self::flush).
    pub fn flush_behind(&mut self) -> Result<(), ArchiveError> {
        self.check_usable()?;
        if !self.opts.background_sync || self.sync == SyncMode::NoSync {
            return self.flush().map(|_| ());
        }
        let Some(open) = &self.open else {
            // Completed segments are already queued.
            return Ok(());
        };
        let (upto, after) = if open.direct {
            let stage = self.stage.as_ref().expect("direct segments have a stage");
            // Everything before the stage's first byte was handed to the I/O threads
            // or written here.
            let base = stage.end() - stage.staged() as u64;
            let seg_start = self.seg.segment_start(self.written);
            (Lsn(seg_start.0 + base), self.after_jobs())
        } else {
            (self.written, None)
        };
        if upto <= self.durable().max(self.requested) {
            return Ok(());
        }
        let task = Task {
            work: Work::Sync {
                file: Arc::clone(&open.file),
                path: open.partial.clone(),
                dir: self.dir_dirty,
            },
            after,
            upto,
        };
        if self.submit_task(task).is_err() {
            return self.flush().map(|_| ());
        }
        self.dir_dirty = false;
        self.requested = upto;
        Ok(())
    }

    /// Bytes written but neither durable nor handed to the sync thread yet.
    pub fn unrequested_bytes(&self) -> u64 {
        self.written
            .saturating_sub(self.durable().max(self.requested))
    }

    /// Calls `listener`, from the sync thread, with each position it makes durable
    /// ([`WriterOptions::background_sync`](crate::WriterOptions::background_sync)). Positions made durable inline are not
    /// announced: read [`flushed`](Self::flushed) after each call.
    pub fn set_flush_listener(&mut self, listener: FlushListener) {
        self.listener = ListenerSlot(Some(listener));
    }

    /// The direct writes a sync must wait for: all submitted so far.
    pub(super) fn after_jobs(&self) -> Option<After> {
        self.writeback.as_ref().map(|wb| After {
            progress: wb.progress(),
            jobs: wb.submitted(),
        })
    }

    /// Hands a task to the sync thread, starting it if needed. `Err` if it cannot run.
    pub(super) fn submit_task(&mut self, task: Task) -> Result<(), ()> {
        if self.syncer.is_none() {
            self.syncer = Syncer::start(
                Arc::clone(&self.fs),
                Arc::clone(&self.dir),
                self.listener.clone(),
            );
        }
        match &self.syncer {
            Some(s) => s.submit(task).map_err(|_| ()),
            None => Err(()),
        }
    }

    /// Waits for the sync thread's tasks. A failed one breaks the writer.
    pub(super) fn settle_syncer(&mut self) -> Result<(), ArchiveError> {
        let Some(s) = &self.syncer else {
            return Ok(());
        };
        match s.wait_idle() {
            Ok(at) => {
                self.flushed = self.flushed.max(at);
                Ok(())
            }
            Err(e) => {
                let path = self
                    .open
                    .as_ref()
                    .map(|o| o.partial.clone())
                    .unwrap_or_else(|| self.dir.path().to_owned());
                self.failed = Some(path.clone());
                Err(e.unwrap_or(ArchiveError::WriterFailed { path }))
            }
        }
    }
}
