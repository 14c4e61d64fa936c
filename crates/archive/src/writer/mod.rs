//! [`SegmentWriter`]: contiguous WAL into `.partial` segment files.
//!
//! One job per file:
//! * this file: the writer's state, its public API (write, flush, close, positions)
//!   and the rules every call checks (contiguity, a broken writer stays broken);
//! * [`open`]: opening the segment a write goes to (a prepared file renamed into
//!   place, or an existing `.partial` reused);
//! * [`complete`]: completing a full segment (sync, rename, directory `fsync`);
//! * [`direct`]: staging bytes of `O_DIRECT` segments and handing full buffers to
//!   the I/O threads;
//! * [`background`]: handing syncs and completions to the sync thread;
//! * [`discard`]: after invalid WAL, zeroing what was written of the invalid record;
//! * [`prime`]: where streaming (re)starts, the validator reads the completed segment
//!   before it, to check the record that runs on into the stream;
//! * WAL validation ([`WriterOptions::validate`]) is `validate` here, the checks
//!   themselves are `walsink_wal::validate`.

mod background;
mod complete;
mod direct;
mod discard;
mod open;
mod prime;
#[cfg(test)]
mod prime_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod validation_tests;

use std::cell::Cell;
use std::fs::File;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::{debug, error, info, warn};
use walsink_wal::validate::{ValidatorConfig, WalFormat, WalValidator};
use walsink_wal::{Lsn, SegmentName, TimelineId, WalSegSize};

use crate::LOCK_CHECK_INTERVAL;
use crate::dir::{Dir, FileId};
use crate::fsops::SegmentFs;
use crate::lock::{LockWatch, Shared};
use crate::observe::{Observed, WriteObserver};
use crate::prepare::Preparer;
use crate::stage::Stage;
use crate::syncer::{ListenerSlot, Syncer};
use crate::writeback::Writeback;
use crate::{ArchiveError, SyncMode, WriterOptions};

/// The segment file currently being written.
#[derive(Debug)]
struct OpenSegment {
    /// Which segment.
    name: SegmentName,
    /// `NAME.partial`, open for writing, always exactly one segment long (shared with
    /// the I/O threads while direct writes are in flight).
    file: Arc<File>,
    /// Which file `file` is (device, inode): the name must still lead to it when
    /// the segment is completed.
    id: FileId,
    /// Path of `NAME.partial`, for messages.
    partial: PathBuf,
    /// `NAME.partial`, in the archive directory.
    partial_name: String,
    /// `NAME`, which it is renamed to when complete.
    complete_name: String,
    /// End of the bytes of this file made durable by the last `fdatasync`.
    synced_to: Lsn,
    /// Written with `O_DIRECT` through the writer's [`Stage`].
    direct: bool,
}

/// Writes WAL into segment files of one archive directory.
///
/// Positions are absolute LSNs. Bytes must arrive contiguously: a write starts where
/// the previous one ended ([`SegmentWriter::written`]), or, when no segment is open,
/// at any segment start (where streaming (re)starts). Anything else is refused before
/// a byte is written, so the archive never holds a gap or an overlap within a file.
///
/// Invariants: `flushed() <= written()`; `flushed()` moves only when an `fdatasync`
/// (and, at a segment end, the rename and directory `fsync`) has returned, or when the
/// position is (re)started with [`SegmentWriter::reset_position`] or a write at a
/// new segment start; with no segment open, `flushed() == written()`.
///
/// Error handling: if a write or the opening of a segment fails (for example with
/// `ENOSPC`, see [`ArchiveError::is_disk_full`]), `written()` says how far the data
/// got, and the caller may retry from there. If an `fdatasync`/`fsync`, or the
/// completion of a segment, fails, the writer is broken for good: every later call
/// returns [`ArchiveError::WriterFailed`] and streaming must restart from
/// [`Archive::find_start`](crate::Archive::find_start) with a new writer. Failed syncs
/// are never retried.
///
/// The writer is `Send` but not `Sync`: it belongs to the one thread that writes.
/// It keeps the archive directory locked while it exists.
#[derive(Debug)]
pub struct SegmentWriter {
    /// The archive directory (shared with the helper threads): every file is opened
    /// relative to it.
    dir: Arc<Dir>,
    /// The file operations.
    fs: Arc<dyn SegmentFs>,
    /// Options.
    opts: WriterOptions,
    /// Hands out new segment files.
    preparer: Preparer,
    /// Bytes of the open (direct I/O) segment not written to it yet; allocated with
    /// the first direct segment.
    stage: Option<Stage>,
    /// Threads writing full stage buffers (started with the first direct segment).
    writeback: Option<Writeback>,
    /// The sync thread ([`WriterOptions::background_sync`]; started with the first
    /// background flush or completion).
    syncer: Option<Syncer>,
    /// Told about every position the sync thread makes durable.
    listener: ListenerSlot,
    /// Told about the I/O ([`set_observer`](Self::set_observer)).
    observer: Option<Arc<dyn WriteObserver>>,
    /// End of what the tasks handed to the sync thread will make durable.
    requested: Lsn,
    /// A rename in the directory (a prepared file to `NAME.partial`) is not durable
    /// yet: the next flush `fsync`s the directory.
    dir_dirty: bool,
    /// The segment size.
    seg: WalSegSize,
    /// Whether to sync.
    sync: SyncMode,
    /// The segment being written, if any.
    open: Option<OpenSegment>,
    /// The timeline of `written` (`None` until the first write or reset).
    tli: Option<TimelineId>,
    /// End of the last byte handed to `write`.
    written: Lsn,
    /// End of the last byte known durable.
    flushed: Lsn,
    /// Where the position was last (re)started: nothing before it is this writer's.
    started: Lsn,
    /// Set when a sync or a segment completion failed: the file involved.
    failed: Option<PathBuf>,
    /// The archive lock and the one-writer flag.
    shared: Arc<Shared>,
    /// When the lock file was last checked.
    lock_checked_at: Instant,
    /// The lock file was found removed or replaced: no more writes.
    lock_lost: bool,
    /// The WAL validator ([`WriterOptions::validate`]).
    check: Option<WalCheck>,
    /// Makes the writer `!Sync`.
    _not_sync: PhantomData<Cell<()>>,
}

/// WAL validation at ingest: what the WAL must match, and the validator once the
/// writer has a position.
#[derive(Debug)]
struct WalCheck {
    cfg: ValidatorConfig,
    v: Option<WalValidator>,
    /// The stream was closed ([`SegmentWriter::close`]) with no problem found: the end of
    /// what was received is the end the caller chose (`--endpos`, shutdown), and the
    /// durable position is reported whole, even inside a record.
    closed: bool,
    /// The completed segment before the start position that the validator read
    /// ([`prime`]), if it did.
    primed: Option<prime::Primed>,
    /// The validator is to be primed before it sees the first bytes after a (re)start:
    /// then, not at the reset, so that a new timeline's history file, which the stream
    /// writes between the two, says whose segment comes before the start.
    prime_due: bool,
}

impl SegmentWriter {
    pub(crate) fn new(
        dir: Arc<Dir>,
        check: Option<ValidatorConfig>,
        seg: WalSegSize,
        sync: SyncMode,
        shared: Arc<Shared>,
        opts: WriterOptions,
        fs: Arc<dyn SegmentFs>,
    ) -> SegmentWriter {
        let preparer = Preparer::new(
            Arc::clone(&fs),
            Arc::clone(&dir),
            seg.bytes(),
            opts.prefill,
            opts.direct_io,
            sync,
            opts.prepare_ahead,
        );
        SegmentWriter {
            dir,
            fs,
            opts,
            preparer,
            stage: None,
            writeback: None,
            syncer: None,
            listener: ListenerSlot::default(),
            observer: None,
            requested: Lsn::INVALID,
            dir_dirty: false,
            seg,
            sync,
            open: None,
            tli: None,
            written: Lsn::INVALID,
            flushed: Lsn::INVALID,
            started: Lsn::INVALID,
            failed: None,
            shared,
            lock_checked_at: Instant::now(),
            lock_lost: false,
            check: check.map(|cfg| WalCheck {
                cfg,
                v: None,
                closed: false,
                primed: None,
                prime_due: false,
            }),
            _not_sync: PhantomData,
        }
    }

    /// Writes `data`, which starts at `start` on timeline `tli`.
    ///
    /// With a segment open, `start` must equal [`written`](Self::written)
    /// ([`ArchiveError::NotContiguous`]) and `tli` must be the open segment's
    /// timeline ([`ArchiveError::TimelineMismatch`]; [`close`](Self::close) the
    /// segment first when the timeline changes). With none open, `start` may be any
    /// segment start, which (re)starts the position there like
    /// [`reset_position`](Self::reset_position), or exactly `written()` on the same
    /// timeline, which continues the `.partial` left by [`close`](Self::close).
    ///
    /// Data is split at segment boundaries; every segment that fills is completed
    /// (synced, renamed from `NAME.partial` to `NAME`, directory synced) before the
    /// rest is written.
    ///
    /// At most every [`LOCK_CHECK_INTERVAL`](crate::LOCK_CHECK_INTERVAL), and before a
    /// new segment file is named, the lock file is rechecked (see
    /// [`check_lock`](Self::check_lock)).
    pub fn write(&mut self, tli: TimelineId, start: Lsn, data: &[u8]) -> Result<(), ArchiveError> {
        self.check_usable()?;
        self.check_lock_due(false)?;
        if start.checked_add(data.len() as u64).is_none() {
            return Err(ArchiveError::LsnOverflow {
                start,
                len: data.len(),
            });
        }
        match &self.open {
            Some(open) => {
                if start != self.written {
                    return Err(ArchiveError::NotContiguous {
                        expected: self.written,
                        got: start,
                    });
                }
                if tli != open.name.tli {
                    return Err(ArchiveError::TimelineMismatch {
                        open: open.name.tli,
                        got: tli,
                        at: start,
                    });
                }
            }
            None => {
                let continuing = self.tli == Some(tli) && start == self.written;
                if !continuing {
                    if self.seg.offset(start) != 0 {
                        if let Some(current) = self.tli
                            && start == self.written
                        {
                            return Err(ArchiveError::TimelineMismatch {
                                open: current,
                                got: tli,
                                at: start,
                            });
                        }
                        return Err(ArchiveError::NotContiguous {
                            expected: self.written,
                            got: start,
                        });
                    }
                    self.settle_syncer()?;
                    self.restart_at(tli, start);
                }
            }
        }

        self.prime_if_due();
        let (data, invalid) = self.validate(tli, start, data);
        let mut rest = data;
        while !rest.is_empty() {
            let pos = self.written;
            if self.open.is_none() {
                self.open_segment(tli, pos)?;
            }
            let open = self.open.as_ref().expect("a segment is open");
            let off = self.seg.offset(pos);
            let room = self.seg.bytes() - off;
            let n = rest.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            if open.direct {
                let mut chunk = &rest[..n];
                while !chunk.is_empty() {
                    let stage = self.stage.as_mut().expect("direct segments have a stage");
                    let k = stage.push(chunk);
                    chunk = &chunk[k..];
                    self.written = Lsn(self.written.0 + k as u64);
                    if stage.is_full() {
                        self.submit_full()?;
                    }
                }
                let stage = self.stage.as_ref().expect("direct segments have a stage");
                if stage.is_dirty() && stage.staged() > self.opts.write_behind {
                    self.write_out()?;
                }
            } else {
                self.fs
                    .write_at(&open.file, &open.partial, &rest[..n], off)?;
                self.written = Lsn(pos.0 + n as u64);
            }
            rest = &rest[n..];
            if self.seg.offset(self.written) == 0 {
                self.complete_segment()?;
            }
        }
        if let Some(e) = invalid {
            // Bytes of the broken record that earlier writes put in the files are
            // zeroed; the valid WAL before it is kept, and made durable.
            if let ArchiveError::InvalidWal { invalid, .. }
            | ArchiveError::InvalidArchivedRecord { invalid, .. } = &e
                && let Err(d) = self.discard_after(tli, invalid.good_end)
            {
                error!(
                    "could not overwrite the bytes of the invalid record from {} with zeros: {d}",
                    invalid.good_end
                );
                return Err(e);
            }
            self.flush()?;
            return Err(e);
        }
        Ok(())
    }

    /// Feeds the validator what it has not seen of `data` (which starts at `start`),
    /// and returns the part of `data` to write: all of it, or, after a problem, what
    /// comes before the invalid part (the end of the last valid record, with its
    /// padding), with the error to return once that is written.
    fn validate<'d>(
        &mut self,
        tli: TimelineId,
        start: Lsn,
        data: &'d [u8],
    ) -> (&'d [u8], Option<ArchiveError>) {
        let Some(c) = self.check.as_mut() else {
            return (data, None);
        };
        c.closed = false;
        let Some(v) = c.v.as_mut() else {
            return (data, None);
        };
        let end = start.0 + data.len() as u64;
        debug_assert!(v.position() >= start || v.failure().is_some());
        if v.failure().is_none() && v.position().0 < end {
            // A retry after a failed write repeats bytes the validator has seen.
            let seen = usize::try_from(v.position().0.saturating_sub(start.0)).unwrap_or(0);
            let _ = v.feed(&data[seen..]);
        }
        let Some(e) = v.failure() else {
            return (data, None);
        };
        let keep = e.good_end.0.saturating_sub(start.0).min(data.len() as u64) as usize;
        if e.good_end < self.started
            && let Some(p) = &c.primed
        {
            // The record began in the completed segment read before the start.
            let err = ArchiveError::InvalidArchivedRecord {
                tli,
                path: self.dir.join(&p.name),
                dir: self.dir.path().to_owned(),
                start: self.started,
                invalid: e.clone(),
            };
            return (&data[..keep], Some(err));
        }
        let err = ArchiveError::InvalidWal {
            tli,
            segment: SegmentName::containing(tli, e.at, self.seg).file_name(self.seg),
            offset: self.seg.offset(e.at),
            invalid: e.clone(),
        };
        (&data[..keep], Some(err))
    }

    /// The WAL format learned from the first page written, once, if the archive had
    /// none pinned: to be pinned with [`Archive::pin_format`](crate::Archive::pin_format).
    pub fn take_new_format(&mut self) -> Option<WalFormat> {
        let c = self.check.as_mut()?;
        if c.cfg.format.is_some() {
            return None;
        }
        let f = c.v.as_ref()?.format()?;
        c.cfg.format = Some(f);
        Some(f)
    }

    /// Makes everything written durable: `fdatasync` of the open `.partial` if it
    /// has unsynced bytes. Returns the new [`flushed`](Self::flushed) position. With
    /// [`SyncMode::NoSync`] no system call is made.
    pub fn flush(&mut self) -> Result<Lsn, ArchiveError> {
        self.check_usable()?;
        self.settle_syncer()?;
        self.write_out()?;
        self.sync_open()?;
        self.flushed = self.written;
        Ok(self.flushed)
    }

    /// Tells `observer` about every file operation of this writer from now on (each
    /// `fdatasync` with its duration, each completed segment), from whichever thread
    /// does it. Call it before the first write: the threads started for the writer
    /// (sync, direct writes) take the file operations as they are when they start.
    /// Files prepared ahead are not observed.
    pub fn set_observer(&mut self, observer: Arc<dyn WriteObserver>) {
        self.fs = Arc::new(Observed {
            inner: Arc::clone(&self.fs),
            obs: Arc::clone(&observer),
        });
        self.observer = Some(observer);
    }

    /// End of the last byte handed to [`write`](Self::write) (`Lsn::INVALID` before
    /// the first write or reset).
    pub fn written(&self) -> Lsn {
        self.written
    }

    /// End of the last byte known durable: `fdatasync`ed and, for completed segments,
    /// renamed with the directory `fsync`ed. With [`WriterOptions::validate`], never
    /// past the start of a record whose CRC has not been checked (the rest of it has
    /// not arrived) until [`close`](Self::close) (the stream ends where the caller
    /// chose, `--endpos` or shutdown, even inside a record), and never past the last
    /// valid record after invalid WAL.
    pub fn flushed(&self) -> Lsn {
        let durable = self.durable();
        match &self.check {
            Some(WalCheck {
                v: Some(v), closed, ..
            }) if !closed || v.failure().is_some() => {
                // (A record begun before the start, in the completed segment the
                // validator read there, holds nothing back that was not held back
                // before: the start was reported already.)
                durable.min(v.checked_end().max(self.started))
            }
            _ => durable,
        }
    }

    /// End of the last byte durable, whether validated or not.
    pub(crate) fn durable(&self) -> Lsn {
        match &self.syncer {
            Some(s) => self.flushed.max(s.synced()),
            None => self.flushed,
        }
    }

    /// Bytes written but not yet durable.
    pub fn unflushed_bytes(&self) -> u64 {
        self.written.saturating_sub(self.durable())
    }

    /// The timeline of the current position (`None` before the first write or reset).
    pub fn timeline(&self) -> Option<TimelineId> {
        self.tli
    }

    /// Whether an earlier sync or segment completion failed, so that every call now
    /// returns [`ArchiveError::WriterFailed`]. A broken writer must be dropped and
    /// streaming restarted from [`Archive::find_start`](crate::Archive::find_start);
    /// other errors (a failed write, or a segment that could not be opened) leave
    /// it usable, to retry from [`written`](Self::written).
    pub fn is_broken(&self) -> bool {
        self.failed.is_some() || self.syncer.as_ref().is_some_and(Syncer::failed)
    }

    /// The segment currently open, if any.
    pub fn open_segment_name(&self) -> Option<SegmentName> {
        self.open.as_ref().map(|o| o.name)
    }

    /// Flushes and closes the open `.partial` without renaming it: the segment is not
    /// complete (a timeline switch or shutdown mid-segment). Does nothing if no
    /// segment is open. Afterwards `flushed() == written()`.
    pub fn close(&mut self) -> Result<(), ArchiveError> {
        self.check_usable()?;
        self.settle_syncer()?;
        let Some(open) = &self.open else {
            if let Some(c) = &mut self.check {
                c.closed = true;
            }
            return Ok(());
        };
        info!(
            "not renaming \"{}\", segment is not complete",
            open.name.partial_file_name(self.seg)
        );
        self.write_out()?;
        self.sync_open()?;
        self.open = None;
        self.flushed = self.written;
        if let Some(c) = &mut self.check {
            c.closed = true;
        }
        Ok(())
    }

    /// Sets the position the next write continues from, without writing: streaming
    /// (re)starts at `lsn` on `tli`, and `flushed = written = lsn`.
    ///
    /// `lsn` should be a segment start (pg_receivewal always starts at one); any
    /// other value is rounded down to its segment start with a warning. A segment
    /// still open is closed first as by [`close`](Self::close); if that fails the
    /// error is logged and the writer is broken (see the type docs). A broken
    /// writer keeps its positions.
    pub fn reset_position(&mut self, tli: TimelineId, lsn: Lsn) {
        if (self.open.is_some() || self.syncer.as_ref().is_some_and(Syncer::busy))
            && let Err(e) = self.close()
        {
            error!("could not close the open segment: {e}");
        }
        if self.failed.is_some() {
            return;
        }
        let aligned = self.seg.segment_start(lsn);
        if aligned != lsn {
            warn!("WAL position {lsn} is not at a segment start; restarting at {aligned}");
        }
        self.restart_at(tli, aligned);
    }

    fn restart_at(&mut self, tli: TimelineId, lsn: Lsn) {
        debug_assert!(self.open.is_none());
        if let Some(s) = &self.syncer {
            debug_assert!(!s.busy());
            s.reset();
        }
        self.requested = Lsn::INVALID;
        self.tli = Some(tli);
        self.written = lsn;
        self.flushed = lsn;
        self.started = lsn;
        let Some(c) = &mut self.check else {
            return;
        };
        c.closed = false;
        match &mut c.v {
            Some(v) => v.reset(tli.get(), lsn),
            None => c.v = Some(WalValidator::new(c.cfg, tli.get(), lsn)),
        }
        c.primed = None;
        c.prime_due = true;
    }

    /// Primes the validator ([`prime`]) if a (re)start left that to do and it has seen
    /// nothing since.
    fn prime_if_due(&mut self) {
        let Some(c) = self.check.as_mut() else {
            return;
        };
        if !std::mem::take(&mut c.prime_due) {
            return;
        }
        let (Some(mut v), Some(tli)) = (c.v.take(), self.tli) else {
            return;
        };
        let primed = if v.position() == self.started && v.failure().is_none() {
            self.prime(&mut v, tli, self.started)
        } else {
            None
        };
        let c = self.check.as_mut().expect("checked above");
        c.v = Some(v);
        c.primed = primed;
    }

    fn check_usable(&mut self) -> Result<(), ArchiveError> {
        if self.failed.is_none() && self.syncer.as_ref().is_some_and(Syncer::failed) {
            // Report the sync thread's failure once, then as for any broken writer.
            return self.settle_syncer();
        }
        match &self.failed {
            Some(path) => Err(ArchiveError::WriterFailed { path: path.clone() }),
            None => Ok(()),
        }
    }

    /// Marks the writer broken if `r` is an error.
    fn fatal<T>(&mut self, path: &Path, r: Result<T, ArchiveError>) -> Result<T, ArchiveError> {
        if r.is_err() {
            self.failed = Some(path.to_owned());
        }
        r
    }

    /// `fdatasync` of the open segment if it has unsynced bytes, then `fsync` of the
    /// directory if a rename in it is not durable yet (Sync mode only). Staged bytes
    /// must have been written out.
    fn sync_open(&mut self) -> Result<(), ArchiveError> {
        if self.sync == SyncMode::NoSync {
            return Ok(());
        }
        let written = self.written;
        if let Some(open) = &self.open
            && open.synced_to < written
        {
            let r = self.fs.datasync(&open.file, &open.partial);
            let partial = open.partial.clone();
            self.fatal(&partial, r)?;
            if let Some(open) = &mut self.open {
                open.synced_to = written;
            }
        }
        if self.dir_dirty {
            self.sync_dir()?;
        }
        Ok(())
    }

    /// A handle to recheck the lock file from another thread or task while this
    /// writer is idle (see [`check_lock`](Self::check_lock)); once it reports
    /// [`ArchiveError::LockLost`], the writer's next [`write`](Self::write) is refused
    /// too.
    pub fn lock_watch(&self) -> LockWatch {
        LockWatch::new(&self.shared, &self.dir)
    }

    /// Checks that `.walsink.lock` is still the file the archive locked. If it was
    /// removed or replaced ([`ArchiveError::LockLost`]), another program is changing
    /// the directory: the writer makes what it has written durable (through the files
    /// it has open, without looking up or creating a name) and refuses every later
    /// [`write`](Self::write); [`flush`](Self::flush) and [`close`](Self::close) still
    /// work. [`write`](Self::write) checks on its own, at most every
    /// [`LOCK_CHECK_INTERVAL`](crate::LOCK_CHECK_INTERVAL); call this as often while
    /// no WAL arrives. Costs one `fstatat`.
    pub fn check_lock(&mut self) -> Result<(), ArchiveError> {
        self.lock_checked_at = Instant::now();
        let Err(e) = self.shared.check(&self.dir) else {
            return Ok(());
        };
        if !std::mem::replace(&mut self.lock_lost, true) && self.failed.is_none() {
            match self.flush() {
                Ok(at) => info!("WAL written up to {at} is durable"),
                Err(f) => warn!("could not make the WAL written so far durable: {f}"),
            }
        }
        Err(e)
    }

    /// [`check_lock`](Self::check_lock) if `now`, if the lock was found lost already
    /// (here or through a [`LockWatch`]), or if
    /// the last check is [`LOCK_CHECK_INTERVAL`](crate::LOCK_CHECK_INTERVAL) old.
    fn check_lock_due(&mut self, now: bool) -> Result<(), ArchiveError> {
        if now
            || self.lock_lost
            || self.shared.is_lost()
            || self.lock_checked_at.elapsed() >= LOCK_CHECK_INTERVAL
        {
            return self.check_lock();
        }
        Ok(())
    }

    /// `fsync` of the archive directory (Sync mode only).
    fn sync_dir(&mut self) -> Result<(), ArchiveError> {
        if self.sync == SyncMode::NoSync {
            return Ok(());
        }
        let r = self.fs.fsync_dir(&self.dir);
        let dir = self.dir.path().to_owned();
        self.fatal(&dir, r)?;
        self.dir_dirty = false;
        Ok(())
    }
}

impl Drop for SegmentWriter {
    fn drop(&mut self) {
        // Queued completions still rename their segments.
        if self.settle_syncer().is_err() {
            debug!("a background sync failed");
        }
        if self.failed.is_none() && self.write_out().is_err() {
            debug!("could not write out the staged bytes of the open segment");
        }
        // Before the flag is cleared: a new writer may then prepare files at once.
        self.preparer.shutdown();
        if let Some(open) = &self.open {
            let n = self.unflushed_bytes();
            if n > 0 {
                warn!(
                    "segment writer dropped with {n} unflushed bytes in \"{}\"",
                    open.partial.display()
                );
            }
        }
        self.shared.writer_active.store(false, Ordering::Release);
    }
}
