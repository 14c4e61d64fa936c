use std::path::PathBuf;

use thiserror::Error;
use walsink_wal::{Lsn, TimelineId, WalSegSize};

/// Everything that can go wrong in the archive directory.
///
/// Variants are split by cause: the directory is unusable (`NoDirectory`,
/// `NotADirectory`, `NotWritable`, `Locked`), something other than walsink put or
/// changed files in it (`NotARegularFile`, `FileTooLarge`, `FileReplaced`,
/// `LockLost`), it belongs to another cluster
/// (`SystemIdMismatch`, `SegSizeMismatch`, `BadMetadata`), archived data would be
/// overwritten (`HistoryConflict`), the WAL itself is invalid (`InvalidWal`), the caller broke the writer's rules
/// (`NotContiguous`, `TimelineMismatch`, `LsnOverflow`, `WriterBusy`), or local I/O
/// failed (`Io`, and `WriterFailed` after an fsync or a segment completion failed).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The archive directory does not exist. walsink never creates it, so a typo in
    /// the path cannot silently start a new, empty archive.
    #[error(
        "archive directory \"{}\" does not exist; create it with `mkdir -m 700 {}`",
        .path.display(),
        .path.display()
    )]
    NoDirectory {
        /// The path as given.
        path: PathBuf,
    },

    /// The archive path exists but is not a directory.
    #[error("archive path \"{}\" is not a directory", .path.display())]
    NotADirectory {
        /// The path as given.
        path: PathBuf,
    },

    /// The archive directory cannot be written to.
    #[error("archive directory \"{}\" is not writable: {source}", .path.display())]
    NotWritable {
        /// The archive directory.
        path: PathBuf,
        /// The error from trying to create a file in it.
        source: std::io::Error,
    },

    /// Another process holds the lock on the archive directory.
    #[error(
        "archive directory \"{}\" is in use by another walsink ({}); stop it or use another directory",
        .path.display(),
        match .pid { Some(p) => format!("pid {p}"), None => "pid unknown".to_owned() }
    )]
    Locked {
        /// The archive directory.
        path: PathBuf,
        /// The pid the holder wrote into `.walsink.lock`, if it could be read.
        pid: Option<u32>,
    },

    /// A name walsink uses in the archive directory is a symbolic link, FIFO,
    /// directory, device or socket. walsink opens only regular files there and never
    /// follows a link: a link planted by another user must not make it overwrite a
    /// file elsewhere, a FIFO must not make it hang.
    #[error(
        "\"{}\" is {kind}, not a regular file; walsink only uses regular files in the archive directory and never follows links there (another user or program may have put it there): remove it or move it out of the directory, and check who can write to the directory",
        .path.display()
    )]
    NotARegularFile {
        /// The file.
        path: PathBuf,
        /// What it is instead: "a symbolic link", "a FIFO", ...
        kind: &'static str,
    },

    /// A file walsink reads from the archive directory (`.walsink.meta`, a timeline
    /// history file) is far larger than any file walsink writes there.
    #[error(
        "\"{}\" is larger than {limit} bytes, which no file walsink writes ever is; it is not walsink's: move it out of the archive directory",
        .path.display()
    )]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// The largest size accepted.
        limit: u64,
    },

    /// A file walsink had open was replaced under the same name by another process
    /// (between two checks, or while walsink renamed it into place).
    #[error(
        "\"{}\" was replaced by another process while walsink was using it; another program is changing files in the archive directory: stop it, then start walsink again",
        .path.display()
    )]
    FileReplaced {
        /// The file.
        path: PathBuf,
    },

    /// walsink's lock file was removed or replaced while walsink was running: another
    /// program is changing the archive directory. walsink stops writing (what it
    /// reported flushed is durable) instead of sharing the directory with whatever
    /// comes next.
    #[error(
        "lock file \"{}\" was {how} while walsink was running; another program is changing the archive directory, so walsink stopped writing (all WAL reported flushed is durable); find out what touched the directory (a cleanup job, another archiver), then start walsink again",
        .path.display()
    )]
    LockLost {
        /// The lock file.
        path: PathBuf,
        /// "removed" or "replaced".
        how: &'static str,
    },

    /// The WAL to be written is not valid (a page header or a record's CRC-32C is
    /// wrong, see [`walsink_wal::validate`]): PostgreSQL never sends such WAL, so the
    /// server's storage or something between it and walsink corrupted it. Everything
    /// up to the end of the last valid record was written and flushed; nothing after
    /// it is reported flushed, and what earlier writes put in the files of the invalid
    /// record is overwritten with zeros (its segments after the one it starts in are
    /// removed), so the archive ends at that record.
    #[error(
        "invalid WAL from the server in segment {segment} at offset {offset:#X} (timeline {tli}), {invalid}; the archive holds the WAL up to {valid_end}, the end of the last valid record (what it held of the invalid record is zeroed), and walsink reported no flush beyond it. PostgreSQL does not send such WAL: check the server's copy (pg_waldump on its pg_wal) and whatever is between the server and walsink; with a replication slot the server keeps the WAL until walsink runs again",
        valid_end = .invalid.good_end
    )]
    InvalidWal {
        /// The timeline being streamed.
        tli: TimelineId,
        /// The segment file name of the problem's position.
        segment: String,
        /// The problem's offset in that segment.
        offset: u64,
        /// Where, what, and how far the WAL was valid.
        invalid: walsink_wal::validate::WalInvalid,
    },

    /// The WAL streamed from where streaming (re)started ends a record that began in
    /// the completed segment before that start, already archived (which the validator
    /// read, see [`WriterOptions::validate`](crate::WriterOptions::validate)), and the
    /// record is invalid (its CRC-32C, or its continuation, does not match): either that
    /// file's copy or the stream is damaged. That file is left as it is; what this
    /// stream wrote of the record is zeroed, and no flush beyond the start is reported.
    #[error(
        "invalid WAL {invalid}; the record at {record} began in the already archived segment \"{}\" and its continuation was streamed from {start}, so either that file's copy or the stream is damaged. walsink left that file as it is, kept nothing of the stream from {start} and reported no flush beyond it. Run `walsink verify -D {}` to check the archived copy, and check the server's copy (pg_waldump on its pg_wal); with a replication slot the server keeps the WAL until walsink runs again",
        .path.display(),
        .dir.display(),
        record = .invalid.good_end
    )]
    InvalidArchivedRecord {
        /// The timeline being streamed.
        tli: TimelineId,
        /// The completed segment the record began in.
        path: PathBuf,
        /// The archive directory.
        dir: PathBuf,
        /// Where streaming (re)started (that segment's end).
        start: Lsn,
        /// Where, what, and how far the WAL was valid.
        invalid: walsink_wal::validate::WalInvalid,
    },

    /// The archive holds WAL of another database system.
    #[error(
        "archive directory \"{}\" holds WAL of database system {archive}, but the server is database system {server}; use a separate archive directory for each cluster",
        .path.display()
    )]
    SystemIdMismatch {
        /// The archive directory.
        path: PathBuf,
        /// The system identifier recorded in (or found in WAL files of) the archive.
        archive: u64,
        /// The system identifier the server reported.
        server: u64,
    },

    /// The archive holds WAL with another segment size.
    #[error(
        "archive directory \"{}\" holds WAL segments of {archive}, but the server uses segments of {server}; use a separate archive directory for each cluster",
        .path.display()
    )]
    SegSizeMismatch {
        /// The archive directory.
        path: PathBuf,
        /// The segment size recorded in (or found in WAL files of) the archive.
        archive: WalSegSize,
        /// The segment size the server reported (or the caller asked for).
        server: WalSegSize,
    },

    /// `.walsink.meta` exists but cannot be understood.
    #[error(
        "archive metadata file \"{}\" is invalid: {reason}; check the directory and remove the file only if it belongs to this cluster",
        .path.display()
    )]
    BadMetadata {
        /// The metadata file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A WAL file asked for (`walsink restore`) does not have the size of a WAL
    /// segment, or its name is impossible at the size it has: it is damaged or not
    /// WAL, and restoring it would make recovery fail.
    #[error(
        "\"{}\" has {len} bytes, which is not the size of a WAL segment of this name (a power of two from 1 MiB to 1 GiB); the file is damaged or was not written by walsink or pg_receivewal: find out what truncated it, and recover from another copy",
        .path.display()
    )]
    NotASegment {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },

    /// A timeline history file already exists with other content. Archived data is
    /// never overwritten.
    #[error(
        "timeline history file \"{}\" already exists with different content; refusing to overwrite it",
        .path.display()
    )]
    HistoryConflict {
        /// The existing history file.
        path: PathBuf,
    },

    /// WAL handed to the writer does not continue where the last write ended.
    #[error(
        "WAL data at {got} does not continue the WAL written up to {expected}; refusing to leave a gap or overlap (a new start must be at a segment boundary)"
    )]
    NotContiguous {
        /// Where the next write must start (`Lsn::INVALID` if nothing was written yet
        /// and `got` is not a segment start).
        expected: Lsn,
        /// Where the rejected write started.
        got: Lsn,
    },

    /// WAL handed to the writer continues the position, but on another timeline.
    #[error(
        "WAL data at {at} is for timeline {got}, but timeline {open} is being written there; close the segment and restart at a segment start to switch timelines"
    )]
    TimelineMismatch {
        /// The timeline being written (of the open segment, or of the `.partial` a
        /// write at this position would continue).
        open: TimelineId,
        /// The timeline of the rejected write.
        got: TimelineId,
        /// Where the rejected write started.
        at: Lsn,
    },

    /// `start + data.len()` does not fit in an LSN.
    #[error("WAL data of {len} bytes at {start} runs past the end of the LSN space")]
    LsnOverflow {
        /// Where the rejected write started.
        start: Lsn,
        /// Its length.
        len: usize,
    },

    /// The archive's newest completed segment is the last one of the LSN space: no WAL
    /// can follow it.
    #[error(
        "the archive's newest segment {name} is the last one of the WAL address space: nothing can follow it; \
         archive this server into a new directory"
    )]
    EndOfWalSpace {
        /// The segment's file name.
        name: String,
    },

    /// A segment writer for this archive already exists.
    #[error("a segment writer for archive directory \"{}\" already exists", .path.display())]
    WriterBusy {
        /// The archive directory.
        path: PathBuf,
    },

    /// An earlier fsync or segment completion of this writer failed. A failed fsync
    /// is never retried (the kernel may have dropped the dirty pages), so the writer
    /// refuses all further work; drop it and restart streaming from
    /// [`Archive::find_start`](crate::Archive::find_start).
    #[error(
        "an earlier sync or rename of \"{}\" failed; this segment writer cannot continue and streaming must restart from the archive",
        .path.display()
    )]
    WriterFailed {
        /// The file whose sync or completion failed.
        path: PathBuf,
    },

    /// A file operation failed.
    #[error("could not {op} \"{}\": {source}", .path.display())]
    Io {
        /// The file or directory operated on.
        path: PathBuf,
        /// What was being done, as a verb phrase ("open", "fsync", "rename").
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

impl ArchiveError {
    /// Whether this is "no space left on device" or "disk quota exceeded", conditions
    /// a caller may wait out instead of failing.
    pub fn is_disk_full(&self) -> bool {
        match self {
            ArchiveError::Io { source, .. } | ArchiveError::NotWritable { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            }
            _ => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        ArchiveError::Io {
            path: path.into(),
            op,
            source,
        }
    }
}
