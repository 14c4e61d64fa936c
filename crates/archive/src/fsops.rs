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
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::num::NonZeroU64;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::ArchiveError;

/// Alignment (of memory, file offset and length) used for `O_DIRECT` writes. 4096
/// covers every logical block size in use (512 and 4096).
pub(crate) const DIRECT_ALIGN: usize = 4096;

/// The file operations behind [`SegmentWriter`](crate::SegmentWriter) and the
/// segment preparer. Each method does what the free function of the same name does.
pub(crate) trait SegmentFs: Send + Sync + fmt::Debug {
    /// [`open_existing`].
    fn open_existing(&self, path: &Path) -> Result<File, ArchiveError>;
    /// [`create_fresh_rw`]: a new empty file, with `O_DIRECT` if asked for and the
    /// filesystem accepts it. Returns the file and whether it is `O_DIRECT`.
    fn create_fresh(&self, path: &Path, direct: bool) -> Result<(File, bool), ArchiveError>;
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
    fn fsync_dir(&self, dir: &File, path: &Path) -> Result<(), ArchiveError>;
    /// [`rename`].
    fn rename(&self, from: &Path, to: &Path) -> Result<(), ArchiveError>;
    /// [`rename_noreplace`]: `Ok(false)`, and nothing renamed, if `to` exists.
    fn rename_noreplace(&self, from: &Path, to: &Path) -> Result<bool, ArchiveError>;
    /// [`remove`].
    fn remove(&self, path: &Path) -> Result<(), ArchiveError>;
    /// [`remove_if_exists`].
    fn remove_if_exists(&self, path: &Path) -> Result<(), ArchiveError>;
    /// [`exists`].
    fn exists(&self, path: &Path) -> Result<bool, ArchiveError>;
    /// [`files_identical`].
    fn files_identical(&self, a: &Path, b: &Path) -> Result<bool, ArchiveError>;
    /// [`drop_cache`].
    fn drop_cache(&self, file: &File);
}

/// The real file system: the free functions of this module.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RealFs;

impl SegmentFs for RealFs {
    fn open_existing(&self, path: &Path) -> Result<File, ArchiveError> {
        open_existing(path)
    }
    fn create_fresh(&self, path: &Path, direct: bool) -> Result<(File, bool), ArchiveError> {
        create_fresh_rw(path, direct)
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
    fn fsync_dir(&self, dir: &File, path: &Path) -> Result<(), ArchiveError> {
        fsync_dir(dir, path)
    }
    fn rename(&self, from: &Path, to: &Path) -> Result<(), ArchiveError> {
        rename(from, to)
    }
    fn rename_noreplace(&self, from: &Path, to: &Path) -> Result<bool, ArchiveError> {
        rename_noreplace(from, to)
    }
    fn remove(&self, path: &Path) -> Result<(), ArchiveError> {
        remove(path)
    }
    fn remove_if_exists(&self, path: &Path) -> Result<(), ArchiveError> {
        remove_if_exists(path)
    }
    fn exists(&self, path: &Path) -> Result<bool, ArchiveError> {
        exists(path)
    }
    fn files_identical(&self, a: &Path, b: &Path) -> Result<bool, ArchiveError> {
        files_identical(a, b)
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

/// Opens an existing file for reading and writing.
pub(crate) fn open_existing(path: &Path) -> Result<File, ArchiveError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| ArchiveError::io(path, "open", e))
}

/// Creates `path` empty with mode 0600, first removing any leftover file of that name
/// (used for temporary files, so a stale one from a crash never keeps its old mode).
pub(crate) fn create_fresh(path: &Path) -> Result<File, ArchiveError> {
    remove_if_exists(path)?;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|e| ArchiveError::io(path, "create", e))
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
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => Ok(false),
        Err(e) => Err(ArchiveError::io(path, "allocate space for", e.into())),
    }
}

/// Creates `path` empty (read-write, mode 0600), first removing any leftover file of
/// that name. With `direct`, opens it `O_DIRECT` if the filesystem allows (tmpfs on
/// older kernels refuses with `EINVAL`). Returns the file and whether it is direct.
pub(crate) fn create_fresh_rw(path: &Path, direct: bool) -> Result<(File, bool), ArchiveError> {
    remove_if_exists(path)?;
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create_new(true).mode(FILE_MODE);
    if direct {
        match opts.clone().custom_flags(libc::O_DIRECT).open(path) {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // Nothing was created when the open was refused; in case a
                // filesystem creates and then refuses, start over without it.
                remove_if_exists(path)?;
            }
            Err(e) => return Err(ArchiveError::io(path, "create", e)),
        }
    }
    opts.open(path)
        .map(|f| (f, false))
        .map_err(|e| ArchiveError::io(path, "create", e))
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

/// `rename(from, to)` unless `to` exists (`renameat2(RENAME_NOREPLACE)`; where the
/// filesystem lacks it, a check then a plain rename). `Ok(false)` if `to` exists.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> Result<bool, ArchiveError> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::EXIST => Ok(false),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            if exists(to)? {
                return Ok(false);
            }
            rename(from, to).map(|()| true)
        }
        Err(e) => Err(ArchiveError::io(from, "rename", e.into())),
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

/// Opens a directory so it can be fsynced.
pub(crate) fn open_dir(path: &Path) -> Result<File, ArchiveError> {
    File::open(path).map_err(|e| ArchiveError::io(path, "open directory", e))
}

/// `fsync` of a directory, which makes creations, renames and removals in it durable.
pub(crate) fn fsync_dir(dir: &File, path: &Path) -> Result<(), ArchiveError> {
    dir.sync_all()
        .map_err(|e| ArchiveError::io(path, "fsync directory", e))
}

/// `rename(from, to)`. The error names `from`.
pub(crate) fn rename(from: &Path, to: &Path) -> Result<(), ArchiveError> {
    fs::rename(from, to).map_err(|e| ArchiveError::io(from, "rename", e))
}

/// Removes a file.
pub(crate) fn remove(path: &Path) -> Result<(), ArchiveError> {
    fs::remove_file(path).map_err(|e| ArchiveError::io(path, "remove", e))
}

/// Removes a file if it exists.
pub(crate) fn remove_if_exists(path: &Path) -> Result<(), ArchiveError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(ArchiveError::io(path, "remove", e)),
        _ => Ok(()),
    }
}

/// Whether a directory entry named `path` exists (without following symlinks).
pub(crate) fn exists(path: &Path) -> Result<bool, ArchiveError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ArchiveError::io(path, "stat", e)),
    }
}

/// The whole content of a file, or `None` if it does not exist.
pub(crate) fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, ArchiveError> {
    match fs::read(path) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ArchiveError::io(path, "read", e)),
    }
}

/// Up to `n` leading bytes of a file.
pub(crate) fn read_prefix(path: &Path, n: usize) -> Result<Vec<u8>, ArchiveError> {
    let f = File::open(path).map_err(|e| ArchiveError::io(path, "open", e))?;
    let mut buf = Vec::with_capacity(n);
    f.take(n as u64)
        .read_to_end(&mut buf)
        .map_err(|e| ArchiveError::io(path, "read", e))?;
    Ok(buf)
}

/// Whether two files have the same length and bytes.
pub(crate) fn files_identical(a: &Path, b: &Path) -> Result<bool, ArchiveError> {
    let open = |p: &Path| File::open(p).map_err(|e| ArchiveError::io(p, "open", e));
    let (fa, fb) = (open(a)?, open(b)?);
    if file_len(&fa, a)? != file_len(&fb, b)? {
        return Ok(false);
    }
    let (mut ra, mut rb) = (fa, fb);
    let (mut ba, mut bb) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
    loop {
        let na = read_full(&mut ra, &mut ba).map_err(|e| ArchiveError::io(a, "read", e))?;
        let nb = read_full(&mut rb, &mut bb).map_err(|e| ArchiveError::io(b, "read", e))?;
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

/// Writes `content` to `dir/name` so that it either appears whole or not at all:
/// write `dir/name.tmp` (mode 0600), fsync it, rename it over `dir/name`, fsync the
/// directory. With `sync == false` the two fsyncs are skipped.
pub(crate) fn write_file_atomically(
    dir: &File,
    dir_path: &Path,
    name: &str,
    content: &[u8],
    sync: bool,
) -> Result<(), ArchiveError> {
    let tmp = dir_path.join(format!("{name}.tmp"));
    let dst = dir_path.join(name);
    let f = create_fresh(&tmp)?;
    write_at(&f, &tmp, content, 0)?;
    if sync {
        fsync(&f, &tmp)?;
    }
    drop(f);
    rename(&tmp, &dst)?;
    if sync {
        fsync_dir(dir, dir_path)?;
    }
    Ok(())
}
