//! [`SegmentWriter`]: contiguous WAL into `.partial` segment files.

use std::cell::Cell;
use std::fs::File;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{debug, error, info, warn};
use walsink_wal::{Lsn, SegmentName, TimelineId, WalSegSize};

use crate::archive::Shared;
use crate::fsops::SegmentFs;
use crate::prepare::Preparer;
use crate::stage::Stage;
use crate::syncer::{After, FlushListener, ListenerSlot, Syncer, Task, Work};
use crate::writeback::{Job, Writeback};
use crate::{ArchiveError, SyncMode, WriterOptions, fsops};

/// Size of the direct-I/O staging buffers without write-behind; with it, they are
/// [`WriterOptions::write_behind`] bytes (rounded up to whole blocks).
const STAGE_BYTES: usize = 1 << 20;

/// The segment file currently being written.
#[derive(Debug)]
struct OpenSegment {
    /// Which segment.
    name: SegmentName,
    /// `NAME.partial`, open for writing, always exactly one segment long (shared with
    /// the I/O threads while direct writes are in flight).
    file: Arc<File>,
    /// Path of `NAME.partial`.
    partial: PathBuf,
    /// Path of `NAME`, which it is renamed to when complete.
    complete: PathBuf,
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
    /// The archive directory.
    dir_path: PathBuf,
    /// The archive directory, open for `fsync` (shared with the sync thread).
    dir: Arc<File>,
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
    /// Set when a sync or a segment completion failed: the file involved.
    failed: Option<PathBuf>,
    /// The archive lock and the one-writer flag.
    shared: Arc<Shared>,
    /// Makes the writer `!Sync`.
    _not_sync: PhantomData<Cell<()>>,
}

impl SegmentWriter {
    pub(crate) fn new(
        dir_path: PathBuf,
        dir: File,
        seg: WalSegSize,
        sync: SyncMode,
        shared: Arc<Shared>,
        opts: WriterOptions,
        fs: Arc<dyn SegmentFs>,
    ) -> SegmentWriter {
        let preparer = Preparer::new(
            Arc::clone(&fs),
            &dir_path,
            seg.bytes(),
            opts.prefill,
            opts.direct_io,
            sync,
            opts.prepare_ahead,
        );
        SegmentWriter {
            dir_path,
            fs,
            opts,
            preparer,
            dir: Arc::new(dir),
            stage: None,
            writeback: None,
            syncer: None,
            listener: ListenerSlot::default(),
            requested: Lsn::INVALID,
            dir_dirty: false,
            seg,
            sync,
            open: None,
            tli: None,
            written: Lsn::INVALID,
            flushed: Lsn::INVALID,
            failed: None,
            shared,
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
    pub fn write(&mut self, tli: TimelineId, start: Lsn, data: &[u8]) -> Result<(), ArchiveError> {
        self.check_usable()?;
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
        Ok(())
    }

    /// Hands the full stage buffer of the open direct segment to the I/O threads
    /// (or writes it here without them).
    fn submit_full(&mut self) -> Result<(), ArchiveError> {
        let (Some(open), Some(stage), Some(wb)) =
            (&self.open, &mut self.stage, &mut self.writeback)
        else {
            return self.write_out();
        };
        let path = open.partial.clone();
        let spare = match wb.spare() {
            Ok(b) => b,
            // Bytes already accepted are lost: nothing may be reported past them.
            Err(e) => return self.fatal(&path, Err(e)),
        };
        let (buf, offset) = stage.swap_full(spare);
        wb.submit(Job {
            file: Arc::clone(&open.file),
            path,
            buf,
            offset,
            seq: 0,
        });
        Ok(())
    }

    /// Waits for the direct writes in flight. Their bytes were accepted by `write`,
    /// so a failure breaks the writer.
    fn settle(&mut self) -> Result<(), ArchiveError> {
        let Some(wb) = &mut self.writeback else {
            return Ok(());
        };
        let r = wb.drain();
        if r.is_err() {
            let path = self
                .open
                .as_ref()
                .map(|o| o.partial.clone())
                .unwrap_or_default();
            return self.fatal(&path, r);
        }
        Ok(())
    }

    /// Writes what the stage holds of the open direct segment to its file, after the
    /// writes in flight.
    fn write_out(&mut self) -> Result<(), ArchiveError> {
        self.settle()?;
        let (Some(open), Some(stage)) = (&self.open, &mut self.stage) else {
            return Ok(());
        };
        if !open.direct || !stage.is_dirty() {
            return Ok(());
        }
        // The stage ends where the data does (at the segment end when it is full).
        debug_assert_eq!(
            stage.end() % self.seg.bytes(),
            self.seg.offset(self.written)
        );
        let (blocks, at) = stage.blocks();
        self.fs.write_at(&open.file, &open.partial, blocks, at)?;
        stage.written_out();
        Ok(())
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

    /// Starts making everything written durable without waiting for it, with
    /// [`WriterOptions::background_sync`]: the sync thread runs the `fdatasync` once
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
        if upto <= self.flushed().max(self.requested) {
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
            .saturating_sub(self.flushed().max(self.requested))
    }

    /// Calls `listener`, from the sync thread, with each position it makes durable
    /// ([`WriterOptions::background_sync`]). Positions made durable inline are not
    /// announced: read [`flushed`](Self::flushed) after each call.
    pub fn set_flush_listener(&mut self, listener: FlushListener) {
        self.listener = ListenerSlot(Some(listener));
    }

    /// The direct writes a sync must wait for: all submitted so far.
    fn after_jobs(&self) -> Option<After> {
        self.writeback.as_ref().map(|wb| After {
            progress: wb.progress(),
            jobs: wb.submitted(),
        })
    }

    /// Hands a task to the sync thread, starting it if needed. `Err` if it cannot run.
    fn submit_task(&mut self, task: Task) -> Result<(), ()> {
        if self.syncer.is_none() {
            self.syncer = Syncer::start(
                Arc::clone(&self.fs),
                Arc::clone(&self.dir),
                self.dir_path.clone(),
                self.listener.clone(),
            );
        }
        match &self.syncer {
            Some(s) => s.submit(task).map_err(|_| ()),
            None => Err(()),
        }
    }

    /// Waits for the sync thread's tasks. A failed one breaks the writer.
    fn settle_syncer(&mut self) -> Result<(), ArchiveError> {
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
                    .unwrap_or_else(|| self.dir_path.clone());
                self.failed = Some(path.clone());
                Err(e.unwrap_or(ArchiveError::WriterFailed { path }))
            }
        }
    }

    /// End of the last byte handed to [`write`](Self::write) (`Lsn::INVALID` before
    /// the first write or reset).
    pub fn written(&self) -> Lsn {
        self.written
    }

    /// End of the last byte known durable: `fdatasync`ed and, for completed segments,
    /// renamed with the directory `fsync`ed.
    pub fn flushed(&self) -> Lsn {
        match &self.syncer {
            Some(s) => self.flushed.max(s.synced()),
            None => self.flushed,
        }
    }

    /// Bytes written but not yet durable, `written() - flushed()`.
    pub fn unflushed_bytes(&self) -> u64 {
        self.written.saturating_sub(self.flushed())
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

    /// `fsync` of the archive directory (Sync mode only).
    fn sync_dir(&mut self) -> Result<(), ArchiveError> {
        if self.sync == SyncMode::NoSync {
            return Ok(());
        }
        let r = self.fs.fsync_dir(&self.dir, &self.dir_path);
        let dir = self.dir_path.clone();
        self.fatal(&dir, r)?;
        self.dir_dirty = false;
        Ok(())
    }

    /// Opens the segment of timeline `tli` that contains `pos` for writing. `pos` is
    /// the segment start, or a later offset when continuing a closed `.partial`,
    /// which then must exist (creating it would put zeros before `pos`).
    fn open_segment(&mut self, tli: TimelineId, pos: Lsn) -> Result<(), ArchiveError> {
        let seg = self.seg;
        let name = SegmentName::containing(tli, pos, seg);
        let partial = self.dir_path.join(name.partial_file_name(seg));
        let complete = self.dir_path.join(name.file_name(seg));

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
            // A new segment gets the prepared file, unless its .partial exists.
            let prepared = self.preparer.take()?;
            match fs.rename_noreplace(self.preparer.path(), &partial) {
                Ok(true) => {
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
                let file = fs.open_existing(&partial)?;
                self.reuse_existing(&file, &partial)?;
                file
            }
        });
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
        if fs.exists(&complete)? {
            info!(
                "completed segment file \"{}\" already exists; keeping it until \"{}\" is complete",
                complete.display(),
                partial.display()
            );
        }
        self.open = Some(OpenSegment {
            name,
            file,
            partial,
            complete,
            synced_to: Lsn::INVALID,
            direct,
        });
        Ok(())
    }

    /// Makes an existing `.partial` (left by a previous run, or by pg_receivewal)
    /// exactly one segment long, keeping its bytes, and durable.
    fn reuse_existing(&mut self, file: &File, partial: &Path) -> Result<(), ArchiveError> {
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

    /// The open segment is full: make it durable and give it its final name.
    fn complete_segment(&mut self) -> Result<(), ArchiveError> {
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
            let (fs, dir, dir_path) = (
                Arc::clone(&self.fs),
                Arc::clone(&self.dir),
                self.dir_path.clone(),
            );
            let upto = self.written;
            let task = Task {
                work: Work::Complete(Box::new(move || {
                    finish_segment(&*fs, &dir, &dir_path, true, open)
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
        let r = finish_segment(
            &*self.fs,
            &self.dir,
            &self.dir_path,
            self.sync == SyncMode::Sync,
            open,
        );
        self.fatal(&partial, r)?;
        self.dir_dirty = false;
        self.flushed = self.written;
        Ok(())
    }
}

/// Completes a full segment: `fdatasync` (if `sync`), rename from `NAME.partial` to
/// `NAME` (an identical existing `NAME` is kept, a different one moved aside), and
/// `fsync` of the directory (if `sync`).
fn finish_segment(
    fs: &dyn SegmentFs,
    dir: &File,
    dir_path: &Path,
    sync: bool,
    open: OpenSegment,
) -> Result<(), ArchiveError> {
    if sync {
        fs.datasync(&open.file, &open.partial)?;
        // Written buffered: its pages are clean now and will not be read again.
        fs.drop_cache(&open.file);
    }
    drop(open.file);
    let (partial, complete) = (&open.partial, &open.complete);
    if fs.exists(complete)? {
        if fs.files_identical(partial, complete)? {
            info!(
                "segment file \"{}\" already exists with identical content; removing \"{}\"",
                complete.display(),
                partial.display()
            );
            if sync {
                // Whoever wrote it may not have synced it.
                let f = fs.open_existing(complete)?;
                fs.fsync(&f, complete)?;
            }
            fs.remove(partial)?;
        } else {
            let aside = aside_name(complete)?;
            warn!(
                "segment file \"{}\" already exists with different content; keeping it as \"{}\"",
                complete.display(),
                aside.display()
            );
            fs.rename(complete, &aside)?;
            fs.rename(partial, complete)?;
        }
    } else {
        fs.rename(partial, complete)?;
    }
    if sync {
        fs.fsync_dir(dir, dir_path)?;
    }
    debug!("completed segment \"{}\"", complete.display());
    Ok(())
}

/// A free name `NAME.replaced-<unix seconds>[-N]` to move an old `NAME` to.
fn aside_name(complete: &Path) -> Result<PathBuf, ArchiveError> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let with_suffix = |suffix: String| {
        let mut s = complete.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    let mut candidate = with_suffix(format!(".replaced-{secs}"));
    let mut n = 1;
    while fsops::exists(&candidate)? {
        candidate = with_suffix(format!(".replaced-{secs}-{n}"));
        n += 1;
    }
    Ok(candidate)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::{Archive, StartPoint};
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    const S3: Lsn = Lsn(3 * SEG);

    fn setup(sync: SyncMode) -> (tempfile::TempDir, Archive, SegmentWriter) {
        let d = tempdir();
        let a = Archive::open(d.path(), sync).unwrap();
        let w = a.segment_writer(seg1m()).unwrap();
        (d, a, w)
    }

    fn name(t: u32, segno: u64) -> String {
        SegmentName::new(tli(t), walsink_wal::SegNo(segno)).file_name(seg1m())
    }

    fn read(d: &tempfile::TempDir, file: &str) -> Vec<u8> {
        fs::read(d.path().join(file)).unwrap()
    }

    fn files(d: &tempfile::TempDir) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            // The lock, and the next segment being prepared ahead (never WAL).
            .filter(|n| n != "walsink.lock" && n != crate::PREPARED_FILE)
            .collect();
        v.sort();
        v
    }

    fn at(l: Lsn, n: usize) -> Lsn {
        Lsn(l.0 + n as u64)
    }

    #[test]
    fn contiguous_writes_across_a_segment_boundary() {
        for sync in [SyncMode::Sync, SyncMode::NoSync] {
            let (d, _a, mut w) = setup(sync);
            assert_eq!(w.written(), Lsn::INVALID);
            assert_eq!(w.flushed(), Lsn::INVALID);
            let data = pattern(1_400_000, 7);
            w.write(tli(1), S3, &data[..700_000]).unwrap();
            assert_eq!(w.written(), at(S3, 700_000));
            assert_eq!(w.flushed(), S3);
            assert_eq!(files(&d), [format!("{}.partial", name(1, 3))]);
            w.write(tli(1), at(S3, 700_000), &data[700_000..]).unwrap();
            assert_eq!(w.written(), at(S3, 1_400_000));
            assert_eq!(w.flushed(), Lsn(4 * SEG));
            assert_eq!(w.unflushed_bytes(), 1_400_000 - SEG);

            let complete = read(&d, &name(1, 3));
            assert_eq!(complete, &data[..SEG as usize]);
            let partial_name = format!("{}.partial", name(1, 4));
            let partial = read(&d, &partial_name);
            assert_eq!(partial.len() as u64, SEG);
            let rest = 1_400_000 - SEG as usize;
            assert_eq!(&partial[..rest], &data[SEG as usize..]);
            assert!(partial[rest..].iter().all(|&b| b == 0));
            assert_eq!(files(&d), [name(1, 3), partial_name.clone()]);
            assert_eq!(mode(&d.path().join(name(1, 3))), 0o600);
            assert_eq!(mode(&d.path().join(&partial_name)), 0o600);
        }
    }

    #[test]
    fn one_write_can_span_several_segments() {
        let (d, _a, mut w) = setup(SyncMode::Sync);
        let data = pattern(2 * SEG as usize + 10, 1);
        w.write(tli(1), S3, &data).unwrap();
        assert_eq!(w.flushed(), Lsn(5 * SEG));
        assert_eq!(read(&d, &name(1, 3)), &data[..SEG as usize]);
        assert_eq!(read(&d, &name(1, 4)), &data[SEG as usize..2 * SEG as usize]);
        assert_eq!(
            &read(&d, &format!("{}.partial", name(1, 5)))[..10],
            &data[2 * SEG as usize..]
        );
        // A write that ends exactly at a segment end leaves no segment open.
        let tail = pattern(SEG as usize - 10, 2);
        w.write(tli(1), w.written(), &tail).unwrap();
        assert_eq!(w.open_segment_name(), None);
        assert_eq!(w.written(), Lsn(6 * SEG));
        assert_eq!(w.flushed(), Lsn(6 * SEG));
        assert_eq!(files(&d), [name(1, 3), name(1, 4), name(1, 5)]);
    }

    #[test]
    fn non_contiguous_writes_are_refused_before_writing() {
        let (d, _a, mut w) = setup(SyncMode::NoSync);
        // Nothing written yet: only a segment start is acceptable.
        let e = w.write(tli(1), at(S3, 100), b"x").unwrap_err();
        assert!(
            matches!(e, ArchiveError::NotContiguous { expected: Lsn::INVALID, got } if got == at(S3, 100)),
            "{e:?}"
        );
        assert!(files(&d).is_empty());

        w.write(tli(1), S3, &pattern(1000, 3)).unwrap();
        for bad in [at(S3, 1001), at(S3, 999), S3, Lsn(4 * SEG)] {
            let e = w.write(tli(1), bad, &[0xFF; 10]).unwrap_err();
            match e {
                ArchiveError::NotContiguous { expected, got } => {
                    assert_eq!(expected, at(S3, 1000));
                    assert_eq!(got, bad);
                }
                e => panic!("{e:?}"),
            }
        }
        let e = w.write(tli(2), at(S3, 1000), &[0xFF; 10]).unwrap_err();
        assert!(
            matches!(e, ArchiveError::TimelineMismatch { open, got, at: a } if open == tli(1) && got == tli(2) && a == at(S3, 1000)),
            "{e:?}"
        );
        assert!(e.to_string().contains("timeline 2"), "{e}");
        assert_eq!(w.written(), at(S3, 1000));
        let f = read(&d, &format!("{}.partial", name(1, 3)));
        assert_eq!(&f[..1000], &pattern(1000, 3)[..]);
        assert!(
            f[1000..].iter().all(|&b| b == 0),
            "nothing past the last good byte"
        );
        assert_eq!(files(&d), [format!("{}.partial", name(1, 3))]);

        // After close, only the exact continuation on the same timeline or a segment
        // start is accepted.
        w.close().unwrap();
        let e = w.write(tli(1), at(S3, 1001), b"x").unwrap_err();
        assert!(matches!(e, ArchiveError::NotContiguous { .. }), "{e:?}");
        let e = w.write(tli(2), at(S3, 1000), b"x").unwrap_err();
        assert!(matches!(e, ArchiveError::TimelineMismatch { .. }), "{e:?}");
        assert_eq!(files(&d), [format!("{}.partial", name(1, 3))]);

        let e = w.write(tli(1), Lsn(u64::MAX - 5), &[0; 10]).unwrap_err();
        assert!(matches!(e, ArchiveError::LsnOverflow { .. }), "{e:?}");
    }

    #[test]
    fn empty_write_creates_nothing() {
        let (d, _a, mut w) = setup(SyncMode::NoSync);
        w.write(tli(1), S3, &[]).unwrap();
        assert!(files(&d).is_empty());
        assert_eq!(w.written(), S3);
    }

    #[test]
    fn close_keeps_the_partial_and_writing_continues_it() {
        let (d, a, mut w) = setup(SyncMode::Sync);
        let data = pattern(SEG as usize, 9);
        w.write(tli(1), S3, &data[..1000]).unwrap();
        w.close().unwrap();
        assert_eq!(w.flushed(), at(S3, 1000));
        assert_eq!(w.open_segment_name(), None);
        let partial = format!("{}.partial", name(1, 3));
        assert_eq!(files(&d), [partial]);
        w.close().unwrap(); // nothing open: no-op
        assert_eq!(
            a.find_start(seg1m()).unwrap(),
            Some(StartPoint {
                tli: tli(1),
                lsn: S3,
                from_partial: true
            })
        );
        w.write(tli(1), at(S3, 1000), &data[1000..]).unwrap();
        assert_eq!(read(&d, &name(1, 3)), data);
        assert_eq!(files(&d), [name(1, 3)]);
        assert_eq!(a.find_start(seg1m()).unwrap().unwrap().lsn, Lsn(4 * SEG));
    }

    #[test]
    fn continuing_requires_the_partial_to_exist() {
        let (d, _a, mut w) = setup(SyncMode::NoSync);
        w.write(tli(1), S3, &[1; 1000]).unwrap();
        w.close().unwrap();
        fs::remove_file(d.path().join(format!("{}.partial", name(1, 3)))).unwrap();
        let e = w.write(tli(1), at(S3, 1000), &[2; 10]).unwrap_err();
        assert!(matches!(e, ArchiveError::Io { .. }), "{e:?}");
        assert!(files(&d).is_empty(), "no zero-filled gap was created");
    }

    #[test]
    fn timeline_switch_leaves_the_old_partial() {
        let (d, _a, mut w) = setup(SyncMode::Sync);
        let old = pattern(500_000, 1);
        w.write(tli(1), S3, &old).unwrap();
        w.close().unwrap();
        // The new timeline's first segment holds the old WAL up to the switch point.
        let new = pattern(600_000, 2);
        w.write(tli(2), S3, &new).unwrap();
        assert_eq!(w.timeline(), Some(tli(2)));
        assert_eq!(
            &read(&d, &format!("{}.partial", name(1, 3)))[..500_000],
            &old[..]
        );
        assert_eq!(
            &read(&d, &format!("{}.partial", name(2, 3)))[..600_000],
            &new[..]
        );
    }

    #[test]
    fn short_partial_is_extended_keeping_its_bytes() {
        let (d, _a, mut w) = setup(SyncMode::Sync);
        let partial = format!("{}.partial", name(1, 3));
        let old = pattern(300_000, 5);
        fs::write(d.path().join(&partial), &old).unwrap();
        let new = pattern(100_000, 6);
        w.write(tli(1), S3, &new).unwrap();
        let f = read(&d, &partial);
        assert_eq!(f.len() as u64, SEG);
        assert_eq!(&f[..100_000], &new[..]);
        assert_eq!(&f[100_000..300_000], &old[100_000..]);
        assert!(f[300_000..].iter().all(|&b| b == 0));
    }

    #[test]
    fn oversized_partial_is_truncated() {
        let (d, _a, mut w) = setup(SyncMode::Sync);
        let partial = format!("{}.partial", name(1, 3));
        let old = pattern(SEG as usize + 5000, 5);
        fs::write(d.path().join(&partial), &old).unwrap();
        w.write(tli(1), S3, &[0xAA; 10]).unwrap();
        let f = read(&d, &partial);
        assert_eq!(f.len() as u64, SEG);
        assert_eq!(&f[..10], &[0xAA; 10]);
        assert_eq!(&f[10..], &old[10..SEG as usize]);
    }

    #[test]
    fn full_size_partial_is_reused_in_place() {
        let (d, _a, mut w) = setup(SyncMode::Sync);
        let partial = format!("{}.partial", name(1, 3));
        let old = pattern(SEG as usize, 5);
        fs::write(d.path().join(&partial), &old).unwrap();
        let ino = fs::metadata(d.path().join(&partial)).unwrap().ino();
        w.write(tli(1), S3, &[0xAA; 10]).unwrap();
        let f = read(&d, &partial);
        assert_eq!(&f[..10], &[0xAA; 10]);
        assert_eq!(&f[10..], &old[10..]);
        assert_eq!(fs::metadata(d.path().join(&partial)).unwrap().ino(), ino);
    }

    #[test]
    fn identical_completed_segment_is_kept() {
        let (d, _a, mut w) = setup(SyncMode::Sync);
        let data = pattern(SEG as usize, 4);
        fs::write(d.path().join(name(1, 3)), &data).unwrap();
        let ino = fs::metadata(d.path().join(name(1, 3))).unwrap().ino();
        w.write(tli(1), S3, &data).unwrap();
        assert_eq!(files(&d), [name(1, 3)]);
        assert_eq!(read(&d, &name(1, 3)), data);
        assert_eq!(fs::metadata(d.path().join(name(1, 3))).unwrap().ino(), ino);
        assert_eq!(w.flushed(), Lsn(4 * SEG));
    }

    #[test]
    fn differing_completed_segment_is_moved_aside_not_lost() {
        let (d, _a, mut w) = setup(SyncMode::Sync);
        // A short (wrong-size) completed file, as find_start would have skipped.
        let old = pattern(1000, 1);
        fs::write(d.path().join(name(1, 3)), &old).unwrap();
        let data = pattern(SEG as usize, 2);
        w.write(tli(1), S3, &data[..500]).unwrap();
        // Untouched while the segment is being written.
        assert_eq!(read(&d, &name(1, 3)), old);
        w.write(tli(1), at(S3, 500), &data[500..]).unwrap();
        assert_eq!(read(&d, &name(1, 3)), data);
        let aside: Vec<String> = files(&d)
            .into_iter()
            .filter(|f| f.starts_with(&format!("{}.replaced-", name(1, 3))))
            .collect();
        assert_eq!(aside.len(), 1, "{:?}", files(&d));
        assert_eq!(read(&d, &aside[0]), old);

        // Re-streaming the segment with other bytes again keeps both old versions,
        // even within the same second.
        let other = pattern(SEG as usize, 3);
        w.write(tli(1), S3, &other).unwrap();
        assert_eq!(read(&d, &name(1, 3)), other);
        let mut contents: Vec<Vec<u8>> = files(&d)
            .into_iter()
            .filter(|f| f.contains(".replaced-"))
            .map(|f| read(&d, &f))
            .collect();
        contents.sort();
        let mut expected = vec![old, data];
        expected.sort();
        assert_eq!(contents, expected);
        assert!(!files(&d).iter().any(|f| f.ends_with(".partial")));
    }

    #[test]
    fn flushed_moves_only_on_flush_and_completion() {
        for sync in [SyncMode::Sync, SyncMode::NoSync] {
            let (_d, _a, mut w) = setup(sync);
            w.reset_position(tli(1), S3);
            assert_eq!((w.written(), w.flushed()), (S3, S3));
            let chunk = pattern(300_000, 8);
            let mut seen_flushed = S3;
            for i in 0..8 {
                let before = w.flushed();
                w.write(tli(1), w.written(), &chunk).unwrap();
                assert!(w.flushed() <= w.written());
                assert_eq!(w.unflushed_bytes(), w.written().0 - w.flushed().0);
                if w.flushed() != before {
                    // Only a completed segment moves it, to that segment's end.
                    assert_eq!(seg1m().offset(w.flushed()), 0);
                    assert!(w.flushed() > before);
                }
                if i % 3 == 2 {
                    let f = w.flush().unwrap();
                    assert_eq!(f, w.written());
                    assert_eq!(w.flushed(), w.written());
                    assert_eq!(w.unflushed_bytes(), 0);
                    // A second flush with nothing new is a no-op.
                    assert_eq!(w.flush().unwrap(), f);
                }
                assert!(w.flushed() >= seen_flushed);
                seen_flushed = w.flushed();
            }
            w.close().unwrap();
            assert_eq!(w.flushed(), w.written());
        }
    }

    #[test]
    fn reset_position_starts_anew_and_closes_an_open_segment() {
        let (d, _a, mut w) = setup(SyncMode::Sync);
        w.write(tli(1), S3, &[1; 100]).unwrap();
        w.reset_position(tli(2), Lsn(5 * SEG + 123));
        assert_eq!(w.open_segment_name(), None);
        assert_eq!(w.written(), Lsn(5 * SEG));
        assert_eq!(w.flushed(), Lsn(5 * SEG));
        assert_eq!(w.timeline(), Some(tli(2)));
        assert!(d.path().join(format!("{}.partial", name(1, 3))).exists());
        w.write(tli(2), Lsn(5 * SEG), &[2; 100]).unwrap();
        assert_eq!(
            w.open_segment_name(),
            Some(SegmentName::new(tli(2), walsink_wal::SegNo(5)))
        );
    }

    #[test]
    fn failed_segment_open_can_be_retried() {
        let (d, _a, mut w) = setup(SyncMode::Sync);
        // Something in the way of the next segment's .partial.
        let blocker = d.path().join(format!("{}.partial", name(1, 4)));
        fs::create_dir(&blocker).unwrap();
        let data = pattern(SEG as usize + 100, 1);
        let e = w.write(tli(1), S3, &data).unwrap_err();
        assert!(matches!(e, ArchiveError::Io { .. }), "{e:?}");
        // The first segment made it, and the position says so.
        assert_eq!(w.written(), Lsn(4 * SEG));
        assert_eq!(w.flushed(), Lsn(4 * SEG));
        assert_eq!(read(&d, &name(1, 3)), &data[..SEG as usize]);
        fs::remove_dir(&blocker).unwrap();
        w.write(tli(1), w.written(), &data[SEG as usize..]).unwrap();
        assert_eq!(w.written(), Lsn(4 * SEG + 100));
    }

    #[test]
    fn a_failed_sync_breaks_the_writer_for_good() {
        let (d, _a, mut w) = setup(SyncMode::Sync);
        w.write(tli(1), S3, &[1; 100]).unwrap();
        let path = d.path().join("x");
        let r: Result<(), _> = w.fatal(
            &path,
            Err(ArchiveError::io(
                &path,
                "fdatasync",
                std::io::Error::from_raw_os_error(libc::EIO),
            )),
        );
        assert!(r.is_err());
        assert!(w.is_broken());
        for e in [
            w.write(tli(1), at(S3, 100), &[1]).unwrap_err(),
            w.flush().unwrap_err(),
            w.close().unwrap_err(),
        ] {
            assert!(matches!(e, ArchiveError::WriterFailed { .. }), "{e:?}");
        }
        // Nothing pretends the unsynced bytes are durable.
        w.reset_position(tli(1), Lsn(9 * SEG));
        assert_eq!(w.flushed(), S3);
        assert_eq!(w.written(), at(S3, 100));
        assert!(w.write(tli(1), Lsn(9 * SEG), &[1]).is_err());
    }

    #[test]
    fn writer_is_send_but_not_shared() {
        fn send<T: Send>() {}
        send::<SegmentWriter>();
        send::<Archive>();
    }

    #[test]
    fn new_partials_are_full_size_zero_filled_and_private() {
        let (d, _a, mut w) = setup(SyncMode::Sync);
        w.write(tli(1), S3, &[7; 3]).unwrap();
        let p = d.path().join(format!("{}.partial", name(1, 3)));
        assert_eq!(mode(&p), 0o600);
        let f = fs::read(&p).unwrap();
        assert_eq!(f.len() as u64, SEG);
        assert_eq!(&f[..3], &[7; 3]);
        assert!(f[3..].iter().all(|&b| b == 0));
        // Real zeros, not a hole.
        assert!(fs::metadata(&p).unwrap().blocks() * 512 >= SEG);
    }
}
