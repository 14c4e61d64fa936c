//! Watching the segment writer's I/O from outside (metrics, health checks):
//! [`WriteObserver`], told about every file operation as it begins and ends, each
//! `fdatasync` with its duration, and each completed segment.
//!
//! The writer calls it from whichever thread does the I/O (the writer's, the sync
//! thread, the direct-write threads), so an observer must be cheap and must never
//! block: atomics, not locks held across anything.

use std::fmt;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ArchiveError;
use crate::dir::Dir;
use crate::fsops::SegmentFs;

/// Told about the segment writer's I/O as it happens (see the module docs).
pub trait WriteObserver: Send + Sync + fmt::Debug {
    /// A file operation on the archive (write, `fdatasync`, rename, ...) begins.
    fn io_started(&self);
    /// It ended, whether it succeeded or not.
    fn io_finished(&self);
    /// An `fdatasync` of a segment file returned (successfully) after `took`.
    fn synced(&self, took: Duration);
    /// A full segment was completed: synced, renamed to its final name, directory synced.
    fn segment_completed(&self);
}

/// A [`SegmentFs`] that tells a [`WriteObserver`] about each operation.
#[derive(Debug)]
pub(crate) struct Observed {
    pub(crate) inner: Arc<dyn SegmentFs>,
    pub(crate) obs: Arc<dyn WriteObserver>,
}

impl Observed {
    fn io<T>(&self, op: impl FnOnce() -> T) -> T {
        self.obs.io_started();
        let r = op();
        self.obs.io_finished();
        r
    }
}

impl SegmentFs for Observed {
    fn open_existing(&self, dir: &Dir, name: &str) -> Result<File, ArchiveError> {
        self.io(|| self.inner.open_existing(dir, name))
    }
    fn create_fresh(
        &self,
        dir: &Dir,
        name: &str,
        direct: bool,
    ) -> Result<(File, bool), ArchiveError> {
        self.io(|| self.inner.create_fresh(dir, name, direct))
    }
    fn clear_direct(&self, file: &File, path: &Path) -> Result<(), ArchiveError> {
        self.io(|| self.inner.clear_direct(file, path))
    }
    fn file_len(&self, file: &File, path: &Path) -> Result<u64, ArchiveError> {
        self.io(|| self.inner.file_len(file, path))
    }
    fn fallocate(
        &self,
        file: &File,
        path: &Path,
        from: u64,
        to: u64,
    ) -> Result<bool, ArchiveError> {
        self.io(|| self.inner.fallocate(file, path, from, to))
    }
    fn fill_zeros(&self, file: &File, path: &Path, from: u64, to: u64) -> Result<(), ArchiveError> {
        self.io(|| self.inner.fill_zeros(file, path, from, to))
    }
    fn set_len(&self, file: &File, path: &Path, len: u64) -> Result<(), ArchiveError> {
        self.io(|| self.inner.set_len(file, path, len))
    }
    fn write_at(
        &self,
        file: &File,
        path: &Path,
        buf: &[u8],
        offset: u64,
    ) -> Result<(), ArchiveError> {
        self.io(|| self.inner.write_at(file, path, buf, offset))
    }
    fn datasync(&self, file: &File, path: &Path) -> Result<(), ArchiveError> {
        self.obs.io_started();
        let t = Instant::now();
        let r = self.inner.datasync(file, path);
        if r.is_ok() {
            self.obs.synced(t.elapsed());
        }
        self.obs.io_finished();
        r
    }
    fn fsync(&self, file: &File, path: &Path) -> Result<(), ArchiveError> {
        self.io(|| self.inner.fsync(file, path))
    }
    fn fsync_dir(&self, dir: &Dir) -> Result<(), ArchiveError> {
        self.io(|| self.inner.fsync_dir(dir))
    }
    fn rename(&self, dir: &Dir, from: &str, to: &str) -> Result<(), ArchiveError> {
        self.io(|| self.inner.rename(dir, from, to))
    }
    fn rename_noreplace(&self, dir: &Dir, from: &str, to: &str) -> Result<bool, ArchiveError> {
        self.io(|| self.inner.rename_noreplace(dir, from, to))
    }
    fn remove(&self, dir: &Dir, name: &str) -> Result<(), ArchiveError> {
        self.io(|| self.inner.remove(dir, name))
    }
    fn remove_if_exists(&self, dir: &Dir, name: &str) -> Result<(), ArchiveError> {
        self.io(|| self.inner.remove_if_exists(dir, name))
    }
    fn exists(&self, dir: &Dir, name: &str) -> Result<bool, ArchiveError> {
        self.io(|| self.inner.exists(dir, name))
    }
    fn files_identical(&self, dir: &Dir, a: &str, b: &str) -> Result<bool, ArchiveError> {
        self.io(|| self.inner.files_identical(dir, a, b))
    }
    fn drop_cache(&self, file: &File) {
        self.io(|| self.inner.drop_cache(file))
    }
}
