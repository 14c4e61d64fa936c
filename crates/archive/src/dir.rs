//! The archive directory as an open handle, and the one way files in it are opened.
//!
//! Every file in the archive directory is reached relative to this handle, by a plain
//! name (never a path with `/`), with `O_NOFOLLOW`, and must be a regular file: a
//! symbolic link, FIFO, directory, device or socket in its place is refused with
//! [`ArchiveError::NotARegularFile`] naming it. So nothing outside the directory is
//! ever opened or written, whatever another user or tool puts into it, a FIFO cannot
//! make walsink hang and a device cannot make it read for ever. (The directory itself
//! may be reached through a symbolic link: that is the operator's choice.)
//!
//! A name is checked with `fstatat(AT_SYMLINK_NOFOLLOW)` before it is opened (so a
//! FIFO or device is never opened at all), opened with `O_NOFOLLOW | O_NONBLOCK`, and
//! checked again on the open handle (so a file swapped in between is noticed).

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::ArchiveError;

/// The archive directory, open (`O_DIRECTORY`), with its path for messages.
#[derive(Debug)]
pub(crate) struct Dir {
    fd: File,
    path: PathBuf,
}

/// Which file a handle or name refers to: device and inode number.
pub(crate) type FileId = (u64, u64);

pub(crate) fn file_id(st: &Stat) -> FileId {
    (st.st_dev, st.st_ino)
}

impl Dir {
    /// Opens the directory at `path` (following a symbolic link there).
    pub(crate) fn open(path: &Path) -> Result<Dir, ArchiveError> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ArchiveError::io(path, "open directory", e.into()))?;
        Ok(Dir {
            fd: File::from(fd),
            path: path.into(),
        })
    }

    /// The directory's path, as given.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in the directory, for messages.
    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The directory handle as a file, for `fsync`.
    pub(crate) fn file(&self) -> &File {
        &self.fd
    }

    /// The same directory opened anew (`openat(".")`): a handle of its own, whose
    /// `flock` no other handle shares.
    pub(crate) fn reopen(&self) -> Result<Dir, ArchiveError> {
        let fd = rustix::fs::openat(
            &self.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ArchiveError::io(&self.path, "open directory", e.into()))?;
        Ok(Dir {
            fd: File::from(fd),
            path: self.path.clone(),
        })
    }

    /// `fstatat(AT_SYMLINK_NOFOLLOW)` of `name`: `None` if there is no such entry.
    pub(crate) fn lstat(&self, name: &str) -> Result<Option<Stat>, ArchiveError> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(ArchiveError::io(self.join(name), "stat", e.into())),
        }
    }

    /// The error for `name` if it exists and is not a regular file.
    pub(crate) fn refuse_special(&self, name: &str, st: &Stat) -> Result<(), ArchiveError> {
        match kind_of(st) {
            None => Ok(()),
            Some(kind) => Err(ArchiveError::NotARegularFile {
                path: self.join(name),
                kind,
            }),
        }
    }

    /// Opens the existing regular file `name` with `flags` (`O_RDONLY` or `O_RDWR`,
    /// maybe `O_DIRECT`). A missing file is an [`ArchiveError::Io`] of kind
    /// `NotFound`; anything but a regular file is [`ArchiveError::NotARegularFile`].
    pub(crate) fn open_file(&self, name: &str, flags: OFlags) -> Result<File, ArchiveError> {
        let path = || self.join(name);
        let before = match self.lstat(name)? {
            Some(st) => st,
            None => {
                return Err(ArchiveError::io(
                    path(),
                    "open",
                    std::io::Error::from(ErrorKind::NotFound),
                ));
            }
        };
        self.refuse_special(name, &before)?;
        let fd = self.openat(name, flags)?;
        let after =
            rustix::fs::fstat(&fd).map_err(|e| ArchiveError::io(path(), "stat", e.into()))?;
        self.refuse_special(name, &after)?;
        if file_id(&after) != file_id(&before) {
            return Err(ArchiveError::FileReplaced { path: path() });
        }
        Ok(File::from(fd))
    }

    /// Creates `name`, which must not exist (`O_CREAT | O_EXCL`, which never follows a
    /// symbolic link), read-write with mode `mode`, plus `extra` flags.
    pub(crate) fn create_new(
        &self,
        name: &str,
        mode: u32,
        extra: OFlags,
    ) -> Result<File, ArchiveError> {
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | extra;
        rustix::fs::openat(
            &self.fd,
            name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map(File::from)
        .map_err(|e| ArchiveError::io(self.join(name), "create", e.into()))
    }

    /// `openat` with `O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC`; a symbolic link
    /// (`ELOOP`) is [`ArchiveError::NotARegularFile`].
    fn openat(&self, name: &str, flags: OFlags) -> Result<OwnedFd, ArchiveError> {
        let all = flags | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        match rustix::fs::openat(&self.fd, name, all, Mode::empty()) {
            Ok(fd) => Ok(fd),
            Err(Errno::LOOP) => Err(ArchiveError::NotARegularFile {
                path: self.join(name),
                kind: "a symbolic link",
            }),
            Err(Errno::ISDIR) => Err(ArchiveError::NotARegularFile {
                path: self.join(name),
                kind: "a directory",
            }),
            Err(e) => Err(ArchiveError::io(self.join(name), "open", e.into())),
        }
    }

    /// The whole content of the regular file `name`, or `None` if there is none; a file
    /// larger than `limit` bytes is [`ArchiveError::FileTooLarge`] (nothing walsink
    /// writes is that large, and reading it must not exhaust memory).
    pub(crate) fn read_capped(
        &self,
        name: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, ArchiveError> {
        let f = match self.open_file(name, OFlags::RDONLY) {
            Ok(f) => f,
            Err(ArchiveError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let too_large = || ArchiveError::FileTooLarge {
            path: self.join(name),
            limit,
        };
        let len = f
            .metadata()
            .map_err(|e| ArchiveError::io(self.join(name), "stat", e))?
            .len();
        if len > limit {
            return Err(too_large());
        }
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        f.take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|e| ArchiveError::io(self.join(name), "read", e))?;
        if buf.len() as u64 > limit {
            return Err(too_large());
        }
        Ok(Some(buf))
    }

    /// Checks that `name` is (still) the file `id`: [`ArchiveError::FileReplaced`] if
    /// the name is gone or leads to another file.
    pub(crate) fn verify_is(&self, name: &str, id: FileId) -> Result<(), ArchiveError> {
        match self.lstat(name)? {
            Some(st) if file_id(&st) == id => Ok(()),
            _ => Err(ArchiveError::FileReplaced {
                path: self.join(name),
            }),
        }
    }

    /// The names of all entries that are valid UTF-8 (`.` and `..` excluded).
    pub(crate) fn entry_names(&self) -> Result<Vec<String>, ArchiveError> {
        let err = |e: Errno| ArchiveError::io(&self.path, "read directory", e.into());
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.fd).map_err(err)? {
            let entry = entry.map_err(err)?;
            if let Ok(name) = entry.file_name().to_str()
                && name != "."
                && name != ".."
            {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }
}

/// Which file an open handle is.
pub(crate) fn id_of(file: &File, path: &Path) -> Result<FileId, ArchiveError> {
    rustix::fs::fstat(file)
        .map(|st| file_id(&st))
        .map_err(|e| ArchiveError::io(path, "stat", e.into()))
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What a non-regular file is, as a phrase for messages; `None` for a regular file.
pub(crate) fn kind_of(st: &Stat) -> Option<&'static str> {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => None,
        FileType::Symlink => Some("a symbolic link"),
        FileType::Directory => Some("a directory"),
        FileType::Fifo => Some("a FIFO"),
        FileType::Socket => Some("a socket"),
        FileType::CharacterDevice => Some("a character device"),
        FileType::BlockDevice => Some("a block device"),
        FileType::Unknown => Some("of unknown type"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn only_regular_files_are_opened() {
        let d = tempdir();
        let outside = tempdir();
        let target = outside.path().join("secret");
        std::fs::write(&target, "keep").unwrap();
        symlink(&target, d.path().join("link")).unwrap();
        symlink(outside.path().join("missing"), d.path().join("dangling")).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            d.path().join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        put(d.path(), "plain", 3);
        let dir = Dir::open(d.path()).unwrap();
        for (name, kind) in [
            ("link", "a symbolic link"),
            ("dangling", "a symbolic link"),
            ("sub", "a directory"),
            ("fifo", "a FIFO"),
        ] {
            for flags in [OFlags::RDONLY, OFlags::RDWR] {
                let e = dir.open_file(name, flags).unwrap_err();
                assert!(
                    matches!(&e, ArchiveError::NotARegularFile { kind: k, .. } if *k == kind),
                    "{name}: {e:?}"
                );
                let msg = e.to_string();
                assert!(
                    msg.contains(&d.path().join(name).display().to_string()),
                    "{msg}"
                );
                assert!(
                    msg.contains(&format!("is {kind}, not a regular file")),
                    "{msg}"
                );
            }
            assert!(matches!(
                dir.read_capped(name, 100),
                Err(ArchiveError::NotARegularFile { .. })
            ));
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert!(!outside.path().join("missing").exists());
        assert_eq!(
            dir.open_file("plain", OFlags::RDWR)
                .unwrap()
                .metadata()
                .unwrap()
                .len(),
            3
        );
        let e = dir.open_file("nope", OFlags::RDONLY).unwrap_err();
        assert!(
            matches!(&e, ArchiveError::Io { source, .. } if source.kind() == ErrorKind::NotFound)
        );
        assert_eq!(dir.read_capped("nope", 10).unwrap(), None);
    }

    #[test]
    fn creating_never_follows_a_link() {
        let d = tempdir();
        let outside = tempdir();
        let missing = outside.path().join("created");
        symlink(&missing, d.path().join("new")).unwrap();
        let dir = Dir::open(d.path()).unwrap();
        assert!(dir.create_new("new", 0o600, OFlags::empty()).is_err());
        assert!(!missing.exists());
        let f = dir.create_new("fresh", 0o600, OFlags::empty()).unwrap();
        assert!(f.metadata().unwrap().is_file());
        assert_eq!(mode(&d.path().join("fresh")), 0o600);
    }

    #[test]
    fn reads_are_capped() {
        let d = tempdir();
        put(d.path(), "small", 10);
        put(d.path(), "big", 11);
        let dir = Dir::open(d.path()).unwrap();
        assert_eq!(dir.read_capped("small", 10).unwrap().unwrap().len(), 10);
        let e = dir.read_capped("big", 10).unwrap_err();
        assert!(
            matches!(e, ArchiveError::FileTooLarge { limit: 10, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("is larger than 10 bytes"), "{e}");
    }

    #[test]
    fn entries_are_listed() {
        let d = tempdir();
        put(d.path(), "a", 0);
        std::fs::create_dir(d.path().join("b")).unwrap();
        let mut names = Dir::open(d.path()).unwrap().entry_names().unwrap();
        names.sort();
        assert_eq!(names, ["a", "b"]);
    }
}
