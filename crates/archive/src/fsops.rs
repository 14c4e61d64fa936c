//! The file operations the archive is built from, one small function each.
//!
//! Every function does exactly one thing and turns an `io::Error` into an
//! [`ArchiveError::Io`] naming the path and the operation. Whether to sync is decided
//! by the callers (from [`SyncMode`](crate::SyncMode)); these functions always do
//! what their name says.
//!
//! The segment writer and the segment preparer reach them only through the
//! [`SegmentFs`] trait ([`RealFs`] here; a recording implementation in the tests
//! asserts the order of writes, syncs and renames against what the writer reports).

use std::fmt;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::num::NonZeroU64;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::{AtFlags, OFlags};
use rustix::io::Errno;

use crate::ArchiveError;
use crate::dir::Dir;

/// Alignment (of memory, file offset and length) used for `O_DIRECT` writes. 4096
/// covers every logical block size in use (512 and 4096).
pub(crate) const DIRECT_ALIGN: usize = 4096;

/// The file operations behind [`SegmentWriter`](crate::SegmentWriter) and the
/// segment preparer. Each method does what the free function of the same name does.
/// Files are named relative to the archive directory's handle ([`Dir`]); operations
/// on an open file take its path for messages only.
pub(crate) trait SegmentFs: Send + Sync + fmt::Debug {
    /// [`open_existing`].
    fn open_existing(&self, dir: &Dir, name: &str) -> Result<File, ArchiveError>;
    /// [`create_fresh_rw`]: a new empty file, with `O_DIRECT` if asked for and the
    /// filesystem accepts it. Returns the file and whether it is `O_DIRECT`.
    fn create_fresh(
        &self,
        dir: &Dir,
        name: &str,
        direct: bool,
    ) -> Result<(File, bool), ArchiveError>;
    /// [`clear_direct`].
    fn clear_direct(&self, file: &File, path: &Path) -> Result<(), ArchiveError>;
    /// [`file_len`].
    fn file_len(&self, file: &File, path: &Path) -> Result<u64, ArchiveError>;
    /// [`fallocate`]: `Ok(false)` where the filesystem does not support it.
    fn fallocate(&self, file: &File, path: &Path, from: u64, to: u64)
    -> Result<bool, ArchiveError>;
    /// [`fill_zeros`] (buffered files only).
    fn fill_zeros(&self, file: &File, path: &Path, from: u64, to: u64) -> Result<(), ArchiveError>;
    /// [`set_len`].
    fn set_len(&self, file: &File, path: &Path, len: u64) -> Result<(), ArchiveError>;
    /// [`write_at`].
    fn write_at(
        &self,
        file: &File,
        path: &Path,
        buf: &[u8],
        offset: u64,
    ) -> Result<(), ArchiveError>;
    /// [`datasync`].
    fn datasync(&self, file: &File, path: &Path) -> Result<(), ArchiveError>;
    /// [`fsync`].
    fn fsync(&self, file: &File, path: &Path) -> Result<(), ArchiveError>;
    /// [`fsync_dir`].
    fn fsync_dir(&self, dir: &Dir) -> Result<(), ArchiveError>;
    /// [`rename`].
    fn rename(&self, dir: &Dir, from: &str, to: &str) -> Result<(), ArchiveError>;
    /// [`rename_noreplace`]: `Ok(false)`, and nothing renamed, if `to` exists.
    fn rename_noreplace(&self, dir: &Dir, from: &str, to: &str) -> Result<bool, ArchiveError>;
    /// [`remove`].
    fn remove(&self, dir: &Dir, name: &str) -> Result<(), ArchiveError>;
    /// [`remove_if_exists`].
    fn remove_if_exists(&self, dir: &Dir, name: &str) -> Result<(), ArchiveError>;
    /// [`exists`].
    fn exists(&self, dir: &Dir, name: &str) -> Result<bool, ArchiveError>;
    /// [`files_identical`].
    fn files_identical(&self, dir: &Dir, a: &str, b: &str) -> Result<bool, ArchiveError>;
    /// [`drop_cache`].
    fn drop_cache(&self, file: &File);
}

/// The real file system: the free functions of this module.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RealFs;

impl SegmentFs for RealFs {
    fn open_existing(&self, dir: &Dir, name: &str) -> Result<File, ArchiveError> {
        open_existing(dir, name)
    }
    fn create_fresh(
        &self,
        dir: &Dir,
        name: &str,
        direct: bool,
    ) -> Result<(File, bool), ArchiveError> {
        create_fresh_rw(dir, name, direct)
    }
    fn clear_direct(&self, file: &File, path: &Path) -> Result<(), ArchiveError> {
        clear_direct(file, path)
    }
    fn file_len(&self, file: &File, path: &Path) -> Result<u64, ArchiveError> {
        file_len(file, path)
    }
    fn fallocate(
        &self,
        file: &File,
        path: &Path,
        from: u64,
        to: u64,
    ) -> Result<bool, ArchiveError> {
        fallocate(file, path, from, to)
    }
    fn fill_zeros(&self, file: &File, path: &Path, from: u64, to: u64) -> Result<(), ArchiveError> {
        fill_zeros(file, path, from, to)
    }
    fn set_len(&self, file: &File, path: &Path, len: u64) -> Result<(), ArchiveError> {
        set_len(file, path, len)
    }
    fn write_at(
        &self,
        file: &File,
        path: &Path,
        buf: &[u8],
        offset: u64,
    ) -> Result<(), ArchiveError> {
        write_at(file, path, buf, offset)
    }
    fn datasync(&self, file: &File, path: &Path) -> Result<(), ArchiveError> {
        datasync(file, path)
    }
    fn fsync(&self, file: &File, path: &Path) -> Result<(), ArchiveError> {
        fsync(file, path)
    }
    fn fsync_dir(&self, dir: &Dir) -> Result<(), ArchiveError> {
        fsync_dir(dir)
    }
    fn rename(&self, dir: &Dir, from: &str, to: &str) -> Result<(), ArchiveError> {
        rename(dir, from, to)
    }
    fn rename_noreplace(&self, dir: &Dir, from: &str, to: &str) -> Result<bool, ArchiveError> {
        rename_noreplace(dir, from, to)
    }
    fn remove(&self, dir: &Dir, name: &str) -> Result<(), ArchiveError> {
        remove(dir, name)
    }
    fn remove_if_exists(&self, dir: &Dir, name: &str) -> Result<(), ArchiveError> {
        remove_if_exists(dir, name)
    }
    fn exists(&self, dir: &Dir, name: &str) -> Result<bool, ArchiveError> {
        exists(dir, name)
    }
    fn files_identical(&self, dir: &Dir, a: &str, b: &str) -> Result<bool, ArchiveError> {
        files_identical(dir, a, b)
    }
    fn drop_cache(&self, file: &File) {
        drop_cache(file)
    }
}

/// Mode of every file walsink creates.
pub(crate) const FILE_MODE: u32 = 0o600;

/// Size of the zero blocks written to pre-fill a segment, and of the chunks used to
/// compare files.
pub(crate) const BLOCK: usize = 1 << 20;

/// Opens an existing regular file of the directory for reading and writing.
pub(crate) fn open_existing(dir: &Dir, name: &str) -> Result<File, ArchiveError> {
    dir.open_file(name, OFlags::RDWR)
}

/// Creates `name` empty with mode 0600, first removing any leftover regular file of
/// that name (used for temporary files, so a stale one from a crash never keeps its
/// old mode). Anything else in its place is refused.
pub(crate) fn create_fresh(dir: &Dir, name: &str) -> Result<File, ArchiveError> {
    remove_if_exists(dir, name)?;
    dir.create_new(name, FILE_MODE, OFlags::empty())
}

/// The current size of an open file.
pub(crate) fn file_len(file: &File, path: &Path) -> Result<u64, ArchiveError> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|e| ArchiveError::io(path, "stat", e))
}

/// Writes zeros over `[from, to)`, in blocks of [`BLOCK`] bytes. Real zero bytes, not
/// a hole or `fallocate`, so later `fdatasync`s of overwrites commit no allocation
/// metadata.
pub(crate) fn fill_zeros(file: &File, path: &Path, from: u64, to: u64) -> Result<(), ArchiveError> {
    if from >= to {
        return Ok(());
    }
    let zeros = vec![0u8; BLOCK.min(usize::try_from(to - from).unwrap_or(BLOCK))];
    let mut off = from;
    while off < to {
        let n = zeros
            .len()
            .min(usize::try_from(to - off).unwrap_or(usize::MAX));
        write_at(file, path, &zeros[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

/// Allocates `[from, to)` with `fallocate` (unwritten extents that read as zeros; no
/// data is copied), extending the file to `to`. `Ok(false)` where the filesystem
/// does not support it.
pub(crate) fn fallocate(
    file: &File,
    path: &Path,
    from: u64,
    to: u64,
) -> Result<bool, ArchiveError> {
    if from >= to {
        return Ok(true);
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), from, to - from) {
        Ok(()) => Ok(true),
        Err(e) if e == Errno::OPNOTSUPP || e == Errno::NOSYS => Ok(false),
        Err(e) => Err(ArchiveError::io(path, "allocate space for", e.into())),
    }
}

/// Creates `name` empty (read-write, mode 0600), first removing any leftover regular
/// file of that name. With `direct`, opens it `O_DIRECT` if the filesystem allows
/// (tmpfs on older kernels refuses with `EINVAL`). Returns the file and whether it is
/// direct.
pub(crate) fn create_fresh_rw(
    dir: &Dir,
    name: &str,
    direct: bool,
) -> Result<(File, bool), ArchiveError> {
    remove_if_exists(dir, name)?;
    if direct {
        match dir.create_new(name, FILE_MODE, OFlags::DIRECT) {
            Ok(f) => return Ok((f, true)),
            Err(ArchiveError::Io { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                // Nothing was created when the open was refused; in case a
                // filesystem creates and then refuses, start over without it.
                remove_if_exists(dir, name)?;
            }
            Err(e) => return Err(e),
        }
    }
    dir.create_new(name, FILE_MODE, OFlags::empty())
        .map(|f| (f, false))
}

/// Turns `O_DIRECT` off on an open file (a filesystem that accepted the open but
/// refuses aligned direct writes).
pub(crate) fn clear_direct(file: &File, path: &Path) -> Result<(), ArchiveError> {
    let flags = rustix::fs::fcntl_getfl(file)
        .map_err(|e| ArchiveError::io(path, "get flags of", e.into()))?;
    rustix::fs::fcntl_setfl(file, flags - rustix::fs::OFlags::DIRECT)
        .map_err(|e| ArchiveError::io(path, "set flags of", e.into()))
}

/// Drops the (clean) cached pages of a file: `posix_fadvise(DONTNEED)`. A hint;
/// errors are ignored.
pub(crate) fn drop_cache(file: &File) {
    let _ = rustix::fs::fadvise(file, 0, None::<NonZeroU64>, rustix::fs::Advice::DontNeed);
}

/// `renameat(from, to)` in the directory unless `to` exists
/// (`renameat2(RENAME_NOREPLACE)`; where the filesystem lacks it, a check then a plain
/// rename). `Ok(false)` if `to` exists.
pub(crate) fn rename_noreplace(dir: &Dir, from: &str, to: &str) -> Result<bool, ArchiveError> {
    use rustix::fs::{RenameFlags, renameat_with};
    match renameat_with(dir, from, dir, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(true),
        Err(e) if e == Errno::EXIST => Ok(false),
        Err(e) if e == Errno::INVAL || e == Errno::NOSYS => {
            if exists(dir, to)? {
                return Ok(false);
            }
            rename(dir, from, to).map(|()| true)
        }
        Err(e) => Err(ArchiveError::io(dir.join(from), "rename", e.into())),
    }
}

/// `pwrite` all of `buf` at `offset`.
pub(crate) fn write_at(
    file: &File,
    path: &Path,
    buf: &[u8],
    offset: u64,
) -> Result<(), ArchiveError> {
    file.write_all_at(buf, offset)
        .map_err(|e| ArchiveError::io(path, "write to", e))
}

/// Truncates (or extends with a hole) to `len` bytes.
pub(crate) fn set_len(file: &File, path: &Path, len: u64) -> Result<(), ArchiveError> {
    file.set_len(len)
        .map_err(|e| ArchiveError::io(path, "truncate", e))
}

/// `fdatasync`.
pub(crate) fn datasync(file: &File, path: &Path) -> Result<(), ArchiveError> {
    file.sync_data()
        .map_err(|e| ArchiveError::io(path, "fdatasync", e))
}

/// `fsync` of a file.
pub(crate) fn fsync(file: &File, path: &Path) -> Result<(), ArchiveError> {
    file.sync_all()
        .map_err(|e| ArchiveError::io(path, "fsync", e))
}

/// `fsync` of the directory, which makes creations, renames and removals in it durable.
pub(crate) fn fsync_dir(dir: &Dir) -> Result<(), ArchiveError> {
    dir.file()
        .sync_all()
        .map_err(|e| ArchiveError::io(dir.path(), "fsync directory", e))
}

/// `renameat(from, to)` in the directory (replacing the entry `to`, never what a link
/// there points to). The error names `from`.
pub(crate) fn rename(dir: &Dir, from: &str, to: &str) -> Result<(), ArchiveError> {
    rustix::fs::renameat(dir, from, dir, to)
        .map_err(|e| ArchiveError::io(dir.join(from), "rename", e.into()))
}

/// Removes a regular file of the directory (anything else is refused).
pub(crate) fn remove(dir: &Dir, name: &str) -> Result<(), ArchiveError> {
    if let Some(st) = dir.lstat(name)? {
        dir.refuse_special(name, &st)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::empty())
        .map_err(|e| ArchiveError::io(dir.join(name), "remove", e.into()))
}

/// Removes a regular file of the directory if it exists (anything else is refused).
pub(crate) fn remove_if_exists(dir: &Dir, name: &str) -> Result<(), ArchiveError> {
    let Some(st) = dir.lstat(name)? else {
        return Ok(());
    };
    dir.refuse_special(name, &st)?;
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(ArchiveError::io(dir.join(name), "remove", e.into())),
    }
}

/// Whether the directory has an entry `name` (of any type; links are not followed).
pub(crate) fn exists(dir: &Dir, name: &str) -> Result<bool, ArchiveError> {
    Ok(dir.lstat(name)?.is_some())
}

/// Up to `n` leading bytes of a regular file of the directory.
pub(crate) fn read_prefix(dir: &Dir, name: &str, n: usize) -> Result<Vec<u8>, ArchiveError> {
    let f = dir.open_file(name, OFlags::RDONLY)?;
    let mut buf = Vec::with_capacity(n);
    f.take(n as u64)
        .read_to_end(&mut buf)
        .map_err(|e| ArchiveError::io(dir.join(name), "read", e))?;
    Ok(buf)
}

/// Whether two regular files of the directory have the same length and bytes.
pub(crate) fn files_identical(dir: &Dir, a: &str, b: &str) -> Result<bool, ArchiveError> {
    let (fa, fb) = (
        dir.open_file(a, OFlags::RDONLY)?,
        dir.open_file(b, OFlags::RDONLY)?,
    );
    let (pa, pb) = (dir.join(a), dir.join(b));
    if file_len(&fa, &pa)? != file_len(&fb, &pb)? {
        return Ok(false);
    }
    let (mut ra, mut rb) = (fa, fb);
    let (mut ba, mut bb) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
    loop {
        let na = read_full(&mut ra, &mut ba).map_err(|e| ArchiveError::io(&pa, "read", e))?;
        let nb = read_full(&mut rb, &mut bb).map_err(|e| ArchiveError::io(&pb, "read", e))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the end of the file; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes `content` to `name` in the directory so that it either appears whole or
/// not at all: write `name.tmp` (created anew, mode 0600), fsync it, rename it over
/// `name`, fsync the directory. With `sync == false` the two fsyncs are skipped.
pub(crate) fn write_file_atomically(
    dir: &Dir,
    name: &str,
    content: &[u8],
    sync: bool,
) -> Result<(), ArchiveError> {
    let tmp = format!("{name}.tmp");
    let tmp_path = dir.join(&tmp);
    let f = create_fresh(dir, &tmp)?;
    write_at(&f, &tmp_path, content, 0)?;
    if sync {
        fsync(&f, &tmp_path)?;
    }
    drop(f);
    rename(dir, &tmp, name)?;
    if sync {
        fsync_dir(dir)?;
    }
    Ok(())
}
