//! Serving one file of the archive to PostgreSQL's `restore_command` (`walsink restore`).
//!
//! PostgreSQL asks for files by name, one at a time, and copies nothing itself: the
//! command must put the file at the path it names (`%p`, e.g. `pg_wal/RECOVERYXLOG`) and
//! exit 0, or exit non-zero when the archive does not have it. Three rules shape this
//! module:
//!
//! * **Open by name.** A request opens `DIR/NAME` directly (relative to the directory's
//!   handle, `O_NOFOLLOW`, regular files only, see `dir.rs`): its cost does not grow
//!   with the archive. Only a `.partial` that is served with `--partial` makes the
//!   directory be listed, once, to check that it is the archive's newest WAL.
//! * **Never half a file.** The copy goes to a temporary file next to the destination,
//!   is `fdatasync`ed and renamed into place: recovery sees the whole file or none, and
//!   whatever name the file has on disk after a crash, its bytes are all there. The
//!   destination directory is not `fsync`ed after the rename: PostgreSQL makes the name
//!   durable itself, at once. After `restore_command` exits 0 it renames the file
//!   (`KeepFileRestoredFromArchive` in `xlogarchive.c`, called from `XLogFileRead` in
//!   `xlogrecovery.c` for every segment, and from `timeline.c` for the history files it
//!   keeps) with `durable_rename`, which `fsync`s the file, renames it within `pg_wal` and
//!   `fsync`s `pg_wal`; a history file it only reads (`RECOVERYHISTORY`) is not kept. A
//!   crash before that makes PostgreSQL fetch the file again. A second directory `fsync`
//!   here would cost one more cache flush of the disk per file (BENCHMARKS.md).
//! * **Absent is normal.** PostgreSQL probes for files that do not exist (the history
//!   files of future timelines, the segment after the end of the archive); those are
//!   [`Outcome::Absent`] with [`Absent::Quiet`]. Only an absence that means something
//!   (the segment exists only as a `.partial`, or later WAL exists: a hole) carries a
//!   message. A file that exists but cannot be served (a link, the wrong size, an I/O
//!   error) is an [`ArchiveError`]: the caller should make PostgreSQL stop recovery
//!   rather than end it early.
//!
//! The `.partial` served with `--partial` is the archive's newest WAL file: the segment
//! walsink was writing when the primary was lost. It has the full segment size already
//! (walsink and pg_receivewal preallocate it; bytes past the received WAL read as zeros,
//! where recovery ends). A short one (a disk filled up while it was preallocated) is
//! padded with zeros to the segment size, which PostgreSQL requires of every restored
//! segment.
//!
//! An older timeline's last `.partial` (left by a failover) may hold WAL past the point
//! where a later timeline forked from it, which is not part of the later timeline's
//! history. PostgreSQL asks for it when the later timeline has no segment covering the
//! fork in the archive (the new primary was lost before walsink streamed from it, say):
//! recovery must replay the old timeline up to the fork. So it is served cut at the
//! earliest fork that a later timeline's history file records (everything after it reads
//! as zeros, where recovery on that segment ends and continues on the later timeline's
//! history), never with the WAL after the fork; not at all when the fork is before the
//! segment, when a later segment of its own timeline exists, or when a later timeline has
//! WAL but no history file to tell where it forked.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::Path;

use rustix::fs::OFlags;
use walsink_wal::history::TimelineHistory;
use walsink_wal::page::{LONG_HEADER_LEN, PageHeader};
use walsink_wal::{Lsn, SegmentFileKind, SegmentName, TimelineId, WalSegSize};

use crate::archive::HISTORY_LIMIT;
use crate::dir::Dir;
use crate::meta::Gap;
use crate::{ArchiveError, fsops, readonly};

/// What `restore_command` asked for: `%f`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreRequest {
    /// A WAL segment, by its 24-hex-digit name.
    Segment(String),
    /// A timeline history file, `%08X.history`.
    History(TimelineId),
}

impl RestoreRequest {
    /// Parses `%f`: a WAL segment name (24 upper-case hex digits, timeline not 0) or a
    /// timeline history file name. Anything else (a path, a `.partial`, a backup label)
    /// is `None`: PostgreSQL never asks for it.
    pub fn parse(file: &str) -> Option<RestoreRequest> {
        if let Some(tli) = TimelineId::from_history_file_name(file) {
            return Some(RestoreRequest::History(tli));
        }
        let hex = file.len() == 24 && file.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'));
        (hex && u32::from_str_radix(&file[..8], 16).is_ok_and(|t| t != 0))
            .then(|| RestoreRequest::Segment(file.to_owned()))
    }
}

/// What was put at the destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restored {
    /// A completed segment.
    Segment,
    /// The newest `.partial` of a timeline (with `--partial`), padded with zeros from
    /// `padded_from` to the segment size when it was shorter, and cut at `fork` when a
    /// later timeline forked from it.
    Partial {
        /// The file served.
        name: String,
        /// The `.partial`'s own size when it was shorter than a segment.
        padded_from: Option<u64>,
        /// Where the earliest later timeline (the second field) forked from the
        /// `.partial`'s timeline: the bytes from there on were served as zeros.
        fork: Option<(Lsn, TimelineId)>,
    },
    /// A timeline history file.
    History,
}

/// Why the archive does not have the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Absent {
    /// Nothing to report: PostgreSQL probes for such files routinely (future timelines'
    /// history files, the segment after the archive's end).
    Quiet,
    /// The segment exists only as the `.partial` named, and `--partial` was not given.
    OnlyPartial {
        /// The `.partial`'s name.
        partial: String,
    },
    /// The segment exists only as a `.partial` that is not the newest WAL of its
    /// timeline, or is followed by a later timeline's WAL whose history file (which
    /// says where it forked) the archive does not have: `newer` is that file.
    NotNewestPartial {
        /// The `.partial`'s name.
        partial: String,
        /// A newer file of the archive.
        newer: String,
    },
    /// The segment exists only as a `.partial` of a timeline that a later one forked from
    /// before this segment (at `at`): none of it is in the later timeline's history.
    PastFork {
        /// The `.partial`'s name.
        partial: String,
        /// The earliest later timeline that forked from the `.partial`'s timeline.
        child: TimelineId,
        /// Where it forked.
        at: Lsn,
    },
    /// The segment is missing, but the archive has the next one: a hole, which recovery
    /// cannot replay past.
    Hole {
        /// The next segment's file that exists.
        next: String,
        /// The gap recorded (`--allow-gap`) that covers the segment, if any.
        gap: Option<Gap>,
    },
}

/// How [`restore`] works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Serve the archive's newest `.partial` for a segment that has no completed file.
    pub partial: bool,
    /// `fdatasync` the copy before renaming it into place (the default; see the module
    /// docs for the directory). Without it the copy is still renamed into place whole, but
    /// a crash of the machine may leave it incomplete on disk; PostgreSQL fetches the file
    /// again after such a crash and `fsync`s restored files it keeps itself, so it does not
    /// depend on this.
    pub sync: bool,
}

/// The result of [`restore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The file is at the destination, whole (and its bytes on disk, with
    /// [`RestoreOptions::sync`]).
    Served(Restored),
    /// The archive does not have it; nothing was created at the destination.
    Absent(Absent),
}

/// Copies the file `request` names from the archive directory `dir` to `dest`
/// (temporary file, `fdatasync`, rename). With
/// [`RestoreOptions::partial`], a segment that exists only as the archive's newest
/// `.partial` is served too (see the module docs).
pub fn restore(
    dir: &Path,
    request: &RestoreRequest,
    dest: &Path,
    opts: RestoreOptions,
) -> Result<Outcome, ArchiveError> {
    let dir = Dir::open(dir)?;
    match request {
        RestoreRequest::History(tli) => {
            let name = tli.history_file_name();
            let Some(src) = open_if_exists(&dir, &name)? else {
                return Ok(Outcome::Absent(Absent::Quiet));
            };
            let len = fsops::file_len(&src, &dir.join(&name))?;
            if len > HISTORY_LIMIT {
                return Err(ArchiveError::FileTooLarge {
                    path: dir.join(&name),
                    limit: HISTORY_LIMIT,
                });
            }
            copy_to(&dir, &name, src, (len, len), dest, opts.sync)?;
            Ok(Outcome::Served(Restored::History))
        }
        RestoreRequest::Segment(name) => restore_segment(&dir, name, dest, opts),
    }
}

fn restore_segment(
    dir: &Dir,
    name: &str,
    dest: &Path,
    opts: RestoreOptions,
) -> Result<Outcome, ArchiveError> {
    if let Some(src) = open_if_exists(dir, name)? {
        let len = fsops::file_len(&src, &dir.join(name))?;
        let seg = WalSegSize::new(len)
            .ok()
            .filter(|&seg| SegmentName::parse_file_name(name, seg).is_some())
            .ok_or_else(|| ArchiveError::NotASegment {
                path: dir.join(name),
                len,
            })?;
        copy_to(dir, name, src, (len, seg.bytes()), dest, opts.sync)?;
        return Ok(Outcome::Served(Restored::Segment));
    }
    let pname = format!("{name}.partial");
    let Some(src) = open_if_exists(dir, &pname)? else {
        return Ok(Outcome::Absent(absent_reason(dir, name)?));
    };
    if !opts.partial {
        return Ok(Outcome::Absent(Absent::OnlyPartial { partial: pname }));
    }
    let ppath = dir.join(&pname);
    let len = fsops::file_len(&src, &ppath)?;
    let seg = match WalSegSize::new(len) {
        Ok(seg) => seg,
        Err(_) => partial_seg_size(dir, &src, &pname)?,
    };
    if len > seg.bytes() {
        return Err(ArchiveError::NotASegment { path: ppath, len });
    }
    let (sn, _) = SegmentName::parse_file_name(name, seg)
        .ok_or(ArchiveError::NotASegment { path: ppath, len })?;
    let start = sn.start_lsn(seg);
    let (keep, fork) = match partial_scope(dir, sn, seg)? {
        Scope::Whole => (len, None),
        Scope::Refused(absent) => {
            return Ok(Outcome::Absent(match absent {
                Refusal::Newer(newer) => Absent::NotNewestPartial {
                    partial: pname,
                    newer,
                },
                Refusal::PastFork { child, at } => Absent::PastFork {
                    partial: pname,
                    child,
                    at,
                },
            }));
        }
        // Cut only where the fork is within what the .partial holds.
        Scope::UpTo { at, child } if at.0 - start.0 < len => (at.0 - start.0, Some((at, child))),
        Scope::UpTo { .. } => (len, None),
    };
    copy_to(dir, &pname, src, (keep, seg.bytes()), dest, opts.sync)?;
    Ok(Outcome::Served(Restored::Partial {
        name: pname,
        padded_from: (len < seg.bytes()).then_some(len),
        fork,
    }))
}

/// Opens `name` for reading; `None` if there is no such file.
fn open_if_exists(dir: &Dir, name: &str) -> Result<Option<File>, ArchiveError> {
    match dir.open_file(name, OFlags::RDONLY) {
        Ok(f) => Ok(Some(f)),
        Err(ArchiveError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The segment size for a `.partial` shorter than any segment: the archive's pinned
/// size, else the one in the file's own long page header.
fn partial_seg_size(dir: &Dir, src: &File, pname: &str) -> Result<WalSegSize, ArchiveError> {
    if let Some(meta) = readonly::read_meta(dir)? {
        return Ok(meta.seg);
    }
    let head = fsops::read_prefix(dir, pname, LONG_HEADER_LEN)?;
    PageHeader::parse(&head)
        .and_then(|h| h.long)
        .and_then(|l| WalSegSize::new(u64::from(l.seg_size)).ok())
        .ok_or_else(|| ArchiveError::NotASegment {
            path: dir.join(pname),
            len: fsops::file_len(src, &dir.join(pname)).unwrap_or(0),
        })
}

/// How much of a timeline's last `.partial` later timelines share ([`partial_scope`]).
enum Scope {
    /// All of it: no later timeline forked from its timeline.
    Whole,
    /// The bytes before `at`, where timeline `child` (the earliest fork) forked from it.
    UpTo { at: Lsn, child: TimelineId },
    /// None.
    Refused(Refusal),
}

/// Why none of a `.partial` is served ([`Scope::Refused`]).
enum Refusal {
    /// A later segment of its timeline, or a later timeline's WAL file without a
    /// history file (or with one that cannot be parsed), named here.
    Newer(String),
    /// `child` forked from its timeline at `at`, before the `.partial`'s segment.
    PastFork { child: TimelineId, at: Lsn },
}

/// How much of the `.partial` of segment `sn` may be served: the part that every
/// later timeline forked from its timeline shares, from the history files of the later
/// timelines (module docs). Lists the directory and reads those history files.
fn partial_scope(dir: &Dir, sn: SegmentName, seg: WalSegSize) -> Result<Scope, ArchiveError> {
    let mut histories: Vec<TimelineId> = Vec::new();
    // A later timeline's WAL file, per timeline (only needed when it has no history).
    let mut later_wal: Vec<(TimelineId, String)> = Vec::new();
    for name in dir.entry_names()? {
        if let Some(tli) = TimelineId::from_history_file_name(&name) {
            if tli > sn.tli {
                histories.push(tli);
            }
        } else if let Some((other, SegmentFileKind::Complete | SegmentFileKind::Partial)) =
            SegmentName::parse_file_name(&name, seg)
        {
            if other.tli == sn.tli && other.segno > sn.segno {
                return Ok(Scope::Refused(Refusal::Newer(name)));
            }
            if other.tli > sn.tli && !later_wal.iter().any(|(t, _)| *t == other.tli) {
                later_wal.push((other.tli, name));
            }
        }
    }
    histories.sort();
    if let Some((_, name)) = later_wal
        .into_iter()
        .find(|(tli, _)| histories.binary_search(tli).is_err())
    {
        return Ok(Scope::Refused(Refusal::Newer(name)));
    }
    let mut fork: Option<(Lsn, TimelineId)> = None;
    for tli in histories {
        let name = tli.history_file_name();
        let Some(content) = dir.read_capped(&name, HISTORY_LIMIT)? else {
            continue;
        };
        let Ok(history) = TimelineHistory::parse(tli, &content) else {
            return Ok(Scope::Refused(Refusal::Newer(name)));
        };
        let mut entries = history.ancestors.iter();
        let Some(entry) = entries.find(|e| e.tli == sn.tli) else {
            continue; // a branch that does not descend from the .partial's timeline
        };
        // The timeline that forked from sn.tli on the way to `tli`.
        let child = entries.next().map_or(tli, |e| e.tli);
        if fork.is_none_or(|(at, _)| entry.switchpoint < at) {
            fork = Some((entry.switchpoint, child));
        }
    }
    Ok(match fork {
        None => Scope::Whole,
        Some((at, child)) if at <= sn.start_lsn(seg) => {
            Scope::Refused(Refusal::PastFork { child, at })
        }
        Some((at, child)) => Scope::UpTo { at, child },
    })
}

/// Why segment `name` is absent: a hole if the archive has the next segment (or the
/// segment lies in a recorded gap), else a routine probe. Needs the archive's segment
/// size (from its metadata); without it the absence is taken as routine.
fn absent_reason(dir: &Dir, name: &str) -> Result<Absent, ArchiveError> {
    let Some(meta) = readonly::read_meta(dir)? else {
        return Ok(Absent::Quiet);
    };
    let Some((sn, _)) = SegmentName::parse_file_name(name, meta.seg) else {
        return Ok(Absent::Quiet);
    };
    let start = sn.start_lsn(meta.seg);
    let end = start.checked_add(meta.seg.bytes());
    let gap = meta
        .gaps
        .iter()
        .find(|g| g.from < end.unwrap_or(walsink_wal::Lsn(u64::MAX)) && start < g.to)
        .cloned();
    let next = SegmentName::new(sn.tli, sn.segno.next());
    for next_name in [next.file_name(meta.seg), next.partial_file_name(meta.seg)] {
        if dir.lstat(&next_name)?.is_some() {
            return Ok(Absent::Hole {
                next: next_name,
                gap,
            });
        }
    }
    Ok(match gap {
        Some(gap) => Absent::Hole {
            next: String::new(),
            gap: Some(gap),
        },
        None => Absent::Quiet,
    })
}

/// Copies the first `len` bytes of `src` (the archive's `name`) to `dest`, zero-padded
/// to `size`: into a temporary file in `dest`'s directory, `fdatasync` (with `sync`),
/// rename (the directory is left to PostgreSQL's `durable_rename`, module docs). The
/// temporary file is removed if anything fails.
fn copy_to(
    dir: &Dir,
    name: &str,
    mut src: File,
    (len, size): (u64, u64),
    dest: &Path,
    sync: bool,
) -> Result<(), ArchiveError> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let file_name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ArchiveError::io(dest, "write", ErrorKind::InvalidInput.into()))?;
    let ddir = Dir::open(parent)?;
    let tmp = format!(".{file_name}.walsink-restore.tmp");
    let tmp_path = ddir.join(&tmp);
    let mut out = fsops::create_fresh(&ddir, &tmp)?;
    let result = (|| {
        let copied = copy_data(&mut src, &mut out, len, sync).map_err(|e| {
            if e.kind() == ErrorKind::WriteZero
                || e.raw_os_error().is_some_and(|c| c == libc::ENOSPC)
            {
                ArchiveError::io(&tmp_path, "write", e)
            } else {
                ArchiveError::io(dir.join(name), "copy", e)
            }
        })?;
        if copied != len {
            return Err(ArchiveError::FileReplaced {
                path: dir.join(name),
            });
        }
        if size > len {
            fsops::set_len(&out, &tmp_path, size)?;
        }
        if sync {
            fsops::datasync(&out, &tmp_path)?;
        }
        fsops::rename(&ddir, &tmp, file_name)
    })();
    if result.is_err() {
        let _ = fsops::remove_if_exists(&ddir, &tmp);
    }
    result
}

/// How much is copied before its writeback is started.
const WRITEBACK_CHUNK: usize = 2 << 20;

/// Copies all of `src` to `out` in the kernel (`copy_file_range`), starting the
/// writeback of each chunk as soon as it is copied (`posix_fadvise(DONTNEED)` does that
/// on Linux for dirty pages), so that the disk writes while the copy goes on and the
/// final `fdatasync` waits only for the last chunk (about 10% faster than copying first,
/// BENCHMARKS.md). Falls back to `std::io::copy` where `copy_file_range` does not work
/// between the two files. Copies at most `limit` bytes; returns the bytes copied.
fn copy_data(src: &mut File, out: &mut File, limit: u64, writeback: bool) -> std::io::Result<u64> {
    let mut off_in = 0u64;
    let mut off_out = 0u64;
    loop {
        let before = off_out;
        let want =
            usize::try_from(limit - off_out).map_or(WRITEBACK_CHUNK, |n| n.min(WRITEBACK_CHUNK));
        if want == 0 {
            return Ok(off_out);
        }
        match rustix::fs::copy_file_range(&*src, Some(&mut off_in), &*out, Some(&mut off_out), want)
        {
            Ok(0) => return Ok(off_out),
            Ok(n) => {
                if writeback {
                    let _ = rustix::fs::fadvise(
                        &*out,
                        before,
                        std::num::NonZeroU64::new(n as u64),
                        rustix::fs::Advice::DontNeed,
                    );
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::INVAL
                | rustix::io::Errno::OPNOTSUPP,
            ) if off_out == 0 => return std::io::copy(&mut Read::take(&*src, limit), out),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    const NAME: &str = "000000010000000000000003";

    /// Restores `file` from `d` into a fresh directory; the result, and the
    /// destination (whose directory lives as long as the returned guard).
    fn run(
        d: &Path,
        file: &str,
        partial: bool,
    ) -> (
        Result<Outcome, ArchiveError>,
        std::path::PathBuf,
        tempfile::TempDir,
    ) {
        let dest_dir = tempdir();
        let dest = dest_dir.path().join("RECOVERYXLOG");
        let req = RestoreRequest::parse(file).expect("a valid request");
        let opts = RestoreOptions {
            partial,
            sync: true,
        };
        (restore(d, &req, &dest, opts), dest, dest_dir)
    }

    #[test]
    fn requests_are_names_postgres_asks_for() {
        assert_eq!(
            RestoreRequest::parse(NAME),
            Some(RestoreRequest::Segment(NAME.into()))
        );
        assert_eq!(
            RestoreRequest::parse("00000002.history"),
            Some(RestoreRequest::History(tli(2)))
        );
        for bad in [
            "",
            "00000000000000000000000A", // timeline 0
            "00000001000000000000000a", // lower case: PostgreSQL never writes it
            "000000010000000000000003.partial",
            "000000010000000000000003.00000028.backup",
            "../000000010000000000000003",
            "/etc/passwd",
            "00000001000000000000000/3",
            "walsink.meta",
            "0000000100000000000000033",
        ] {
            assert_eq!(RestoreRequest::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn completed_segment_is_copied_whole() {
        let d = tempdir();
        put_segment(d.path(), NAME, 3, 42, SEG);
        let (out, dest, _g) = run(d.path(), NAME, false);
        assert_eq!(out.unwrap(), Outcome::Served(Restored::Segment));
        assert_eq!(
            fs::read(&dest).unwrap(),
            fs::read(d.path().join(NAME)).unwrap()
        );
        // Nothing else is left next to the destination.
        let left: Vec<_> = fs::read_dir(dest.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn history_files_are_served_and_future_ones_are_quietly_absent() {
        let d = tempdir();
        fs::write(
            d.path().join("00000002.history"),
            "1\t0/3000000\tno recovery target\n",
        )
        .unwrap();
        let (out, dest, _g) = run(d.path(), "00000002.history", false);
        assert_eq!(out.unwrap(), Outcome::Served(Restored::History));
        assert_eq!(
            fs::read(&dest).unwrap(),
            fs::read(d.path().join("00000002.history")).unwrap()
        );
        let (out, dest, _g) = run(d.path(), "00000003.history", true);
        assert_eq!(out.unwrap(), Outcome::Absent(Absent::Quiet));
        assert!(!dest.exists());
    }

    #[test]
    fn a_partial_is_served_only_with_partial() {
        let d = tempdir();
        put_segment(d.path(), "000000010000000000000002", 2, 42, SEG);
        put_segment(d.path(), &format!("{NAME}.partial"), 3, 42, SEG);
        let (out, dest, _g) = run(d.path(), NAME, false);
        assert_eq!(
            out.unwrap(),
            Outcome::Absent(Absent::OnlyPartial {
                partial: format!("{NAME}.partial")
            })
        );
        assert!(!dest.exists());
        let (out, dest, _g) = run(d.path(), NAME, true);
        assert_eq!(
            out.unwrap(),
            Outcome::Served(Restored::Partial {
                name: format!("{NAME}.partial"),
                padded_from: None,
                fork: None,
            })
        );
        assert_eq!(
            fs::read(&dest).unwrap(),
            fs::read(d.path().join(format!("{NAME}.partial"))).unwrap()
        );
        // A later timeline that does not descend from timeline 1 changes nothing.
        fs::write(d.path().join("00000003.history"), "2\t0/250000\tx\n").unwrap();
        put_segment(d.path(), "000000030000000000000004", 4, 42, SEG);
        let (out, _, _g) = run(d.path(), NAME, true);
        assert!(matches!(
            out.unwrap(),
            Outcome::Served(Restored::Partial { fork: None, .. })
        ));
    }

    /// An archive with timeline 1's last segment 3 as a `.partial` whose every byte is
    /// non-zero, and `files` (name, content).
    fn forked_archive(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempdir();
        let body: Vec<u8> = pattern(SEG as usize, 1).iter().map(|b| b | 1).collect();
        fs::write(d.path().join(format!("{NAME}.partial")), body).unwrap();
        for (name, content) in files {
            fs::write(d.path().join(name), content).unwrap();
        }
        d
    }

    #[test]
    fn an_older_timelines_partial_is_served_cut_at_the_earliest_fork() {
        // Timeline 2 forked from 1 at 0/31A2B8, inside segment 3 (0/300000-0/3FFFFF); its
        // child 3 repeats the entry.
        let d = forked_archive(&[
            (
                "00000002.history",
                "1\t0/31A2B8\tno recovery target specified\n",
            ),
            ("00000003.history", "1\t0/31A2B8\tx\n\n2\t0/5000000\ty\n"),
            ("000000030000000000000050.partial", ""),
        ]);
        let (out, dest, _g) = run(d.path(), NAME, true);
        assert_eq!(
            out.unwrap(),
            Outcome::Served(Restored::Partial {
                name: format!("{NAME}.partial"),
                padded_from: None,
                fork: Some((walsink_wal::Lsn(0x31A2B8), tli(2))),
            })
        );
        let src = fs::read(d.path().join(format!("{NAME}.partial"))).unwrap();
        let got = fs::read(&dest).unwrap();
        assert_eq!(got.len() as u64, SEG);
        assert_eq!(got[..0x1A2B8], src[..0x1A2B8]);
        assert!(got[0x1A2B8..].iter().all(|&b| b == 0));

        // Timeline 4 forked from 1 earlier (another branch): the cut is at the earliest fork.
        fs::write(d.path().join("00000004.history"), "1\t0/3100A0\tz\n").unwrap();
        let (out, dest, _g) = run(d.path(), NAME, true);
        assert!(matches!(
            out.unwrap(),
            Outcome::Served(Restored::Partial { fork: Some((walsink_wal::Lsn(0x3100A0), t)), .. })
                if t == tli(4)
        ));
        let got = fs::read(&dest).unwrap();
        assert_eq!(got[..0x100A0], src[..0x100A0]);
        assert!(got[0x100A0..].iter().all(|&b| b == 0));

        // A fork past the segment's end cuts nothing.
        let d = forked_archive(&[("00000002.history", "1\t0/400000\tx\n")]);
        let (out, dest, _g) = run(d.path(), NAME, true);
        assert!(matches!(
            out.unwrap(),
            Outcome::Served(Restored::Partial { fork: None, .. })
        ));
        assert_eq!(
            fs::read(&dest).unwrap(),
            fs::read(d.path().join(format!("{NAME}.partial"))).unwrap()
        );
    }

    #[test]
    fn an_older_timelines_partial_is_not_served_when_its_fork_is_unknown_or_earlier() {
        let partial = format!("{NAME}.partial");
        let cases: [(&[(&str, &str)], Absent); 4] = [
            // The fork is before the segment: none of it is on timeline 2.
            (
                &[("00000002.history", "1\t0/2FFFF8\tx\n")],
                Absent::PastFork {
                    partial: partial.clone(),
                    child: tli(2),
                    at: walsink_wal::Lsn(0x2FFFF8),
                },
            ),
            // A later timeline's WAL without its history file: where it forked is unknown.
            (
                &[("000000020000000000000003.partial", "")],
                Absent::NotNewestPartial {
                    partial: partial.clone(),
                    newer: "000000020000000000000003.partial".into(),
                },
            ),
            // A history file that cannot be read as one.
            (
                &[("00000002.history", "1\tnot-an-lsn\tx\n")],
                Absent::NotNewestPartial {
                    partial: partial.clone(),
                    newer: "00000002.history".into(),
                },
            ),
            // A later segment of its own timeline.
            (
                &[("000000010000000000000004", "")],
                Absent::NotNewestPartial {
                    partial: partial.clone(),
                    newer: "000000010000000000000004".into(),
                },
            ),
        ];
        for (files, absent) in cases {
            let d = forked_archive(files);
            let (out, dest, _g) = run(d.path(), NAME, true);
            assert_eq!(out.unwrap(), Outcome::Absent(absent), "{files:?}");
            assert!(!dest.exists());
        }
    }

    #[test]
    fn a_short_partial_is_padded_to_the_segment_size() {
        let d = tempdir();
        fs::write(
            d.path().join("walsink.meta"),
            format!("system_identifier = 42\nwal_segment_size = {SEG}\n"),
        )
        .unwrap();
        put_segment(d.path(), &format!("{NAME}.partial"), 3, 42, SEG);
        let short = 3 * 8192 + 100;
        fs::File::options()
            .write(true)
            .open(d.path().join(format!("{NAME}.partial")))
            .unwrap()
            .set_len(short)
            .unwrap();
        let (out, dest, _g) = run(d.path(), NAME, true);
        assert_eq!(
            out.unwrap(),
            Outcome::Served(Restored::Partial {
                name: format!("{NAME}.partial"),
                padded_from: Some(short),
                fork: None,
            })
        );
        let got = fs::read(&dest).unwrap();
        assert_eq!(got.len() as u64, SEG);
        let src = fs::read(d.path().join(format!("{NAME}.partial"))).unwrap();
        assert_eq!(&got[..short as usize], &src[..]);
        assert!(got[short as usize..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_missing_segment_is_quiet_past_the_end_and_a_hole_before_it() {
        let d = tempdir();
        fs::write(
            d.path().join("walsink.meta"),
            format!(
                "system_identifier = 42\nwal_segment_size = {SEG}\ngap = 0/100000 0/300000 1700000000 removed\n"
            ),
        )
        .unwrap();
        put_segment(d.path(), NAME, 3, 42, SEG);
        let (out, dest, _g) = run(d.path(), "000000010000000000000004", true);
        assert_eq!(out.unwrap(), Outcome::Absent(Absent::Quiet));
        assert!(!dest.exists());
        let (out, _, _g) = run(d.path(), "000000010000000000000002", true);
        match out.unwrap() {
            Outcome::Absent(Absent::Hole { next, gap }) => {
                assert_eq!(next, NAME);
                assert_eq!(gap.unwrap().to, walsink_wal::Lsn(0x300000));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn files_that_cannot_be_served_are_errors_and_leave_no_destination() {
        let d = tempdir();
        let outside = tempdir();
        put_segment(outside.path(), NAME, 3, 42, SEG);
        symlink(outside.path().join(NAME), d.path().join(NAME)).unwrap();
        let (out, dest, _g) = run(d.path(), NAME, false);
        assert!(
            matches!(out, Err(ArchiveError::NotARegularFile { .. })),
            "{out:?}"
        );
        assert!(!dest.exists());
        put(d.path(), "000000010000000000000004", SEG as usize - 1);
        let (out, dest, _g) = run(d.path(), "000000010000000000000004", false);
        let e = out.unwrap_err();
        assert!(matches!(e, ArchiveError::NotASegment { .. }), "{e:?}");
        assert!(e.to_string().contains("000000010000000000000004"), "{e}");
        assert!(!dest.exists());
        assert_eq!(fs::read_dir(dest.parent().unwrap()).unwrap().count(), 0);
    }

    #[test]
    fn the_destination_is_replaced_whole() {
        let d = tempdir();
        put_segment(d.path(), NAME, 3, 42, SEG);
        let dest_dir = tempdir();
        let dest = dest_dir.path().join("RECOVERYXLOG");
        fs::write(&dest, "old").unwrap();
        // A leftover temporary file from a crashed run is replaced, not appended to.
        fs::write(
            dest_dir.path().join(".RECOVERYXLOG.walsink-restore.tmp"),
            "junk",
        )
        .unwrap();
        let req = RestoreRequest::parse(NAME).unwrap();
        let opts = RestoreOptions {
            partial: false,
            sync: false,
        };
        restore(d.path(), &req, &dest, opts).unwrap();
        assert_eq!(fs::read(&dest).unwrap().len() as u64, SEG);
        assert_eq!(fs::read_dir(dest_dir.path()).unwrap().count(), 1);
    }
}
