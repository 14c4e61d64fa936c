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
use crate::{ArchiveError, SyncMode, fsops};

/// The segment file currently being written.
#[derive(Debug)]
struct OpenSegment {
    /// Which segment.
    name: SegmentName,
    /// `NAME.partial`, open for writing, always exactly one segment long.
    file: File,
    /// Path of `NAME.partial`.
    partial: PathBuf,
    /// Path of `NAME`, which it is renamed to when complete.
    complete: PathBuf,
    /// End of the bytes of this file made durable by the last `fdatasync`.
    synced_to: Lsn,
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
    /// The archive directory, open for `fsync`.
    dir: File,
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
    ) -> SegmentWriter {
        SegmentWriter {
            dir_path,
            dir,
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
                        return Err(ArchiveError::NotContiguous {
                            expected: self.written,
                            got: start,
                        });
                    }
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
            fsops::write_at(&open.file, &open.partial, &rest[..n], off)?;
            rest = &rest[n..];
            self.written = Lsn(pos.0 + n as u64);
            if self.seg.offset(self.written) == 0 {
                self.complete_segment()?;
            }
        }
        Ok(())
    }

    /// Makes everything written durable: `fdatasync` of the open `.partial` if it
    /// has unsynced bytes. Returns the new [`flushed`](Self::flushed) position. With
    /// [`SyncMode::NoSync`] no system call is made.
    pub fn flush(&mut self) -> Result<Lsn, ArchiveError> {
        self.check_usable()?;
        self.sync_open()?;
        self.flushed = self.written;
        Ok(self.flushed)
    }

    /// End of the last byte handed to [`write`](Self::write) (`Lsn::INVALID` before
    /// the first write or reset).
    pub fn written(&self) -> Lsn {
        self.written
    }

    /// End of the last byte known durable: `fdatasync`ed and, for completed segments,
    /// renamed with the directory `fsync`ed.
    pub fn flushed(&self) -> Lsn {
        self.flushed
    }

    /// Bytes written but not yet durable, `written() - flushed()`.
    pub fn unflushed_bytes(&self) -> u64 {
        self.written.saturating_sub(self.flushed)
    }

    /// The timeline of the current position (`None` before the first write or reset).
    pub fn timeline(&self) -> Option<TimelineId> {
        self.tli
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
        let Some(open) = &self.open else {
            return Ok(());
        };
        info!(
            "not renaming \"{}\", segment is not complete",
            open.name.partial_file_name(self.seg)
        );
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
    /// error is logged and the writer is broken (see the type docs).
    pub fn reset_position(&mut self, tli: TimelineId, lsn: Lsn) {
        if self.open.is_some()
            && let Err(e) = self.close()
        {
            error!("could not close the open segment: {e}");
        }
        let aligned = self.seg.segment_start(lsn);
        if aligned != lsn {
            warn!("WAL position {lsn} is not at a segment start; restarting at {aligned}");
        }
        self.restart_at(tli, aligned);
    }

    fn restart_at(&mut self, tli: TimelineId, lsn: Lsn) {
        debug_assert!(self.open.is_none());
        self.tli = Some(tli);
        self.written = lsn;
        self.flushed = lsn;
    }

    fn check_usable(&self) -> Result<(), ArchiveError> {
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

    /// `fdatasync` of the open segment if it has unsynced bytes (Sync mode only).
    fn sync_open(&mut self) -> Result<(), ArchiveError> {
        if self.sync == SyncMode::NoSync {
            return Ok(());
        }
        let written = self.written;
        let Some(open) = &self.open else {
            return Ok(());
        };
        if open.synced_to >= written {
            return Ok(());
        }
        let r = fsops::datasync(&open.file, &open.partial);
        let partial = open.partial.clone();
        self.fatal(&partial, r)?;
        if let Some(open) = &mut self.open {
            open.synced_to = written;
        }
        Ok(())
    }

    /// `fsync` of the archive directory (Sync mode only).
    fn sync_dir(&mut self) -> Result<(), ArchiveError> {
        if self.sync == SyncMode::NoSync {
            return Ok(());
        }
        let r = fsops::fsync_dir(&self.dir, &self.dir_path);
        let dir = self.dir_path.clone();
        self.fatal(&dir, r)
    }

    /// Opens the segment of timeline `tli` that contains `pos` for writing. `pos` is
    /// the segment start, or a later offset when continuing a closed `.partial`,
    /// which then must exist (creating it would put zeros before `pos`).
    fn open_segment(&mut self, tli: TimelineId, pos: Lsn) -> Result<(), ArchiveError> {
        let seg = self.seg;
        let name = SegmentName::containing(tli, pos, seg);
        let partial = self.dir_path.join(name.partial_file_name(seg));
        let complete = self.dir_path.join(name.file_name(seg));
        let size = seg.bytes();

        let (file, created) = if seg.offset(pos) == 0 {
            fsops::open_or_create(&partial)?
        } else {
            (fsops::open_existing(&partial)?, false)
        };
        if created {
            debug!("creating \"{}\"", partial.display());
            fsops::fill_zeros(&file, &partial, 0, size)?;
        } else {
            let len = fsops::file_len(&file, &partial)?;
            if len < size {
                // pg_receivewal fails on such a file forever; the bytes it has are
                // kept (they are re-streamed anyway) and the rest is zero-filled.
                warn!(
                    "write-ahead log file \"{}\" has {len} bytes, should be {size}; extending it with zeros",
                    partial.display()
                );
                fsops::fill_zeros(&file, &partial, len, size)?;
            } else if len > size {
                warn!(
                    "write-ahead log file \"{}\" has {len} bytes, should be {size}; truncating it",
                    partial.display()
                );
                fsops::set_len(&file, &partial, size)?;
            } else {
                debug!("reusing \"{}\"", partial.display());
            }
        }
        if self.sync == SyncMode::Sync {
            // New: make the zero fill and the name durable, so later fdatasyncs
            // commit no metadata. Existing: in case of a previous crash, and because
            // another program may have created it without syncing.
            let r = fsops::datasync(&file, &partial);
            self.fatal(&partial, r)?;
            self.sync_dir()?;
        }
        if fsops::exists(&complete)? {
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
        });
        Ok(())
    }

    /// The open segment is full: make it durable and give it its final name.
    fn complete_segment(&mut self) -> Result<(), ArchiveError> {
        let open = self.open.take().expect("a segment is open");
        let partial = open.partial.clone();
        let r = self.finish(open);
        self.fatal(&partial, r)?;
        self.flushed = self.written;
        Ok(())
    }

    fn finish(&self, open: OpenSegment) -> Result<(), ArchiveError> {
        let sync = self.sync == SyncMode::Sync;
        if sync {
            fsops::datasync(&open.file, &open.partial)?;
        }
        drop(open.file);
        let (partial, complete) = (&open.partial, &open.complete);
        if fsops::exists(complete)? {
            if fsops::files_identical(partial, complete)? {
                info!(
                    "segment file \"{}\" already exists with identical content; removing \"{}\"",
                    complete.display(),
                    partial.display()
                );
                if sync {
                    // Whoever wrote it may not have synced it.
                    let f = fsops::open_existing(complete)?;
                    fsops::fsync(&f, complete)?;
                }
                fsops::remove(partial)?;
            } else {
                let aside = aside_name(complete)?;
                warn!(
                    "segment file \"{}\" already exists with different content; keeping it as \"{}\"",
                    complete.display(),
                    aside.display()
                );
                fsops::rename(complete, &aside)?;
                fsops::rename(partial, complete)?;
            }
        } else {
            fsops::rename(partial, complete)?;
        }
        if sync {
            fsops::fsync_dir(&self.dir, &self.dir_path)?;
        }
        debug!("completed segment \"{}\"", complete.display());
        Ok(())
    }
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

