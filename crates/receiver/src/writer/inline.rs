//! The `--synchronous` writer: the network task writes, flushes and publishes itself
//! (the documented exception to the writer thread, see the module docs).

use std::sync::Arc;

use tokio::sync::watch;
use tracing::debug;
use walsink_archive::{Archive, ArchiveError, SegmentWriter};
use walsink_wal::{Lsn, TimelineId};

use super::{Request, WriterState, archive_request, publish, publish_failure, publish_reset};

/// What the network task owns in `--synchronous` mode.
pub(super) struct Inline {
    /// `None` once stopped.
    archive: Option<Archive>,
    seg: SegmentWriter,
    state: watch::Sender<WriterState>,
    flush_bytes: u64,
    /// The task that rechecks the archive's lock file (see the module docs).
    lock_watch: Option<tokio::task::JoinHandle<()>>,
}

impl Inline {
    pub(super) fn new(
        archive: Archive,
        seg: SegmentWriter,
        state: watch::Sender<WriterState>,
        flush_bytes: u64,
        lock_watch: Option<tokio::task::JoinHandle<()>>,
    ) -> Inline {
        Inline {
            archive: Some(archive),
            seg,
            state,
            flush_bytes,
            lock_watch,
        }
    }

    fn failed(&self) -> bool {
        self.state.borrow().error.is_some()
    }

    fn fail(&self, e: ArchiveError) -> Arc<ArchiveError> {
        publish_failure(&self.seg, &self.state, e)
    }

    pub(super) fn unflushed_bytes(&self) -> u64 {
        self.seg.unflushed_bytes()
    }

    /// Writes WAL at once; flushes on size. A failure is published.
    pub(super) fn write(&mut self, tli: TimelineId, start: Lsn, data: &[u8]) {
        if self.failed() {
            return;
        }
        let seg = &mut self.seg;
        let archive = &mut self.archive;
        let r = seg.write(tli, start, data).and_then(|()| {
            if let (Some(f), Some(a)) = (seg.take_new_format(), archive.as_mut()) {
                a.pin_format(f)?;
            }
            if seg.unflushed_bytes() >= self.flush_bytes {
                debug!(bytes = seg.unflushed_bytes(), "flushing on size");
                seg.flush().map(|_| ())
            } else {
                Ok(())
            }
        });
        match r {
            // A completed segment (renamed, directory synced) may have moved `flushed`.
            Ok(()) => publish(&self.seg, &self.state),
            Err(e) => {
                self.fail(e);
            }
        }
    }

    /// Rechecks the lock file (the network task's tick); its loss is published as
    /// the failure, after what was written is made durable.
    pub(super) fn check_lock(&mut self) {
        if let Err(e) = self.seg.check_lock() {
            self.fail(e);
        }
    }

    /// The group-commit point: makes everything written durable and publishes it.
    pub(super) fn idle(&mut self) {
        if self.seg.unflushed_bytes() == 0 {
            return;
        }
        match self.seg.flush() {
            Ok(_) => publish(&self.seg, &self.state),
            Err(e) => {
                self.fail(e);
            }
        }
    }

    /// Runs a request at once.
    pub(super) fn request(&mut self, req: Request) -> Result<(), Arc<ArchiveError>> {
        let r = match req {
            Request::Reset { tli, lsn } => {
                self.seg.reset_position(tli, lsn);
                if self.seg.is_broken() {
                    // Closing the segment still open failed (and was logged).
                    Err(self.seg.flush().expect_err("a broken writer fails"))
                } else {
                    publish_reset(&self.seg, &self.state);
                    Ok(())
                }
            }
            Request::Close => {
                // After a failed write (not a failed sync) what did get written is
                // still made durable, as the thread does before waiting for space.
                self.seg.close().map(|()| publish(&self.seg, &self.state))
            }
            req => match &mut self.archive {
                Some(a) => archive_request(a, req),
                None => Err(ArchiveError::WriterFailed {
                    path: Default::default(),
                }),
            },
        };
        r.map_err(|e| self.fail(e))
    }

    /// Closes the open segment (unless broken) and gives the archive back.
    pub(super) fn stop(&mut self) -> Option<Archive> {
        if let Some(t) = self.lock_watch.take() {
            t.abort();
        }
        if !self.seg.is_broken() && self.archive.is_some() {
            match self.seg.close() {
                Ok(()) => publish(&self.seg, &self.state),
                Err(e) => {
                    self.fail(e);
                }
            }
        }
        self.archive.take()
    }
}
