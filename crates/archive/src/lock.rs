//! The archive directory's lock, shared by the [`Archive`](crate::Archive) and its
//! [`SegmentWriter`](crate::SegmentWriter).
//!
//! Two locks, both exclusive `flock`s held for as long as the archive or its writer
//! lives:
//! * on the directory itself (its open handle). Nothing can delete or replace it
//!   while walsink runs, so a second walsink is kept out even after another tool
//!   removed `.walsink.lock` (Barman, for one, moves unknown files out of its
//!   directories);
//! * on `.walsink.lock`, which also holds our pid for the operator (and keeps out an
//!   older walsink, which only knew this lock).
//!
//! Like the PostgreSQL postmaster with its `postmaster.pid`, walsink rechecks its lock
//! file while it runs ([`Shared::check`]): if the name no longer leads to the file it
//! locked (removed, or replaced by another file), something else is changing the
//! directory, and walsink stops writing ([`ArchiveError::LockLost`]).

use std::fs::File;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock, Weak};

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::dir::{Dir, FileId, file_id};
use crate::{ArchiveError, LOCK_FILE, fsops};

/// State shared between the [`Archive`](crate::Archive) and its
/// [`SegmentWriter`](crate::SegmentWriter).
#[derive(Debug)]
pub(crate) struct Shared {
    /// The archive directory, `flock`ed: the lock lives as long as this handle (and
    /// its duplicates) is open.
    _dir: Dir,
    /// The locked `.walsink.lock`.
    _lock: File,
    /// Which file `.walsink.lock` was when it was locked.
    lock_id: FileId,
    /// Set when the lock file was found removed or replaced ("removed", "replaced").
    lost: OnceLock<&'static str>,
    /// Whether a [`SegmentWriter`](crate::SegmentWriter) exists; there may be only one.
    pub(crate) writer_active: AtomicBool,
}

impl Shared {
    /// Locks the directory `dir` and its `.walsink.lock` (created with mode 0600 if
    /// missing; refused if it is not a regular file), and writes our pid into it.
    pub(crate) fn acquire(dir: &Dir) -> Result<Shared, ArchiveError> {
        // A handle of its own: the lock must end with the archive and its writer, not
        // with the last of the other handles on the directory (a `LockWatch` has one).
        let dir_lock = dir.reopen()?;
        match rustix::fs::flock(&dir_lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => return Err(locked(dir, LOCK_FILE)),
            Err(e) => return Err(ArchiveError::io(dir.path(), "lock", e.into())),
        }
        let lock_path = dir.join(LOCK_FILE);
        let existed = match dir.lstat(LOCK_FILE)? {
            Some(st) => {
                dir.refuse_special(LOCK_FILE, &st)?;
                true
            }
            None => false,
        };
        let flags = OFlags::RDWR
            | OFlags::CREATE
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::NOCTTY
            | OFlags::CLOEXEC;
        let lock = match rustix::fs::openat(
            dir,
            LOCK_FILE,
            flags,
            Mode::from_raw_mode(fsops::FILE_MODE),
        ) {
            Ok(fd) => File::from(fd),
            Err(Errno::LOOP) => {
                return Err(ArchiveError::NotARegularFile {
                    path: lock_path,
                    kind: "a symbolic link",
                });
            }
            // EACCES on an existing lock file is about that file (another user's
            // walsink?), not about the directory.
            Err(e) if e == Errno::ROFS || (e == Errno::ACCESS && !existed) => {
                return Err(ArchiveError::NotWritable {
                    path: dir.path().into(),
                    source: e.into(),
                });
            }
            Err(e) => return Err(ArchiveError::io(lock_path, "open", e.into())),
        };
        let st =
            rustix::fs::fstat(&lock).map_err(|e| ArchiveError::io(&lock_path, "stat", e.into()))?;
        dir.refuse_special(LOCK_FILE, &st)?;
        match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => return Err(locked(dir, LOCK_FILE)),
            Err(e) => return Err(ArchiveError::io(lock_path, "lock", e.into())),
        }
        fsops::set_len(&lock, &lock_path, 0)?;
        (&lock)
            .write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(|e| ArchiveError::io(&lock_path, "write to", e))?;
        Ok(Shared {
            _dir: dir_lock,
            _lock: lock,
            lock_id: file_id(&st),
            lost: OnceLock::new(),
            writer_active: AtomicBool::new(false),
        })
    }

    /// Whether a check found the lock file removed or replaced (an atomic load).
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.get().is_some()
    }

    /// Checks that `.walsink.lock` in `dir` is still the file this process locked: two
    /// `fstatat`s' worth of work. Once it was found removed or replaced, every later
    /// check fails too.
    pub(crate) fn check(&self, dir: &Dir) -> Result<(), ArchiveError> {
        if self.lost.get().is_none() {
            let how = match dir.lstat(LOCK_FILE)? {
                None => Some("removed"),
                Some(st) if file_id(&st) != self.lock_id => Some("replaced"),
                Some(_) => None,
            };
            match how {
                None => return Ok(()),
                Some(how) => {
                    let _ = self.lost.set(how);
                }
            }
        }
        Err(ArchiveError::LockLost {
            path: dir.join(LOCK_FILE),
            how: self.lost.get().copied().unwrap_or("removed"),
        })
    }
}

/// A handle that rechecks the archive's lock file from another thread or task, for a
/// writer that may sit idle (no WAL arriving, so no [`write`] to check on its own):
/// [`SegmentWriter::lock_watch`](crate::SegmentWriter::lock_watch). It does not keep
/// the directory locked: once the archive and its writer are gone, checks succeed.
///
/// [`write`]: crate::SegmentWriter::write
#[derive(Clone, Debug)]
pub struct LockWatch {
    shared: Weak<Shared>,
    dir: Arc<Dir>,
}

impl LockWatch {
    pub(crate) fn new(shared: &Arc<Shared>, dir: &Arc<Dir>) -> LockWatch {
        LockWatch {
            shared: Arc::downgrade(shared),
            dir: Arc::clone(dir),
        }
    }

    /// [`ArchiveError::LockLost`] if `.walsink.lock` was removed or replaced (one
    /// `fstatat`). The writer itself refuses further writes from its next one on.
    pub fn check(&self) -> Result<(), ArchiveError> {
        match self.shared.upgrade() {
            Some(shared) => shared.check(&self.dir),
            None => Ok(()),
        }
    }
}

/// The error for a directory another process has locked, with the pid it wrote into
/// the lock file `name` if that can be read (a small regular file).
pub(crate) fn locked(dir: &Dir, name: &str) -> ArchiveError {
    let pid = dir
        .read_capped(name, 64)
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.trim().parse::<u32>().ok());
    ArchiveError::Locked {
        path: dir.path().into(),
        pid,
    }
}
