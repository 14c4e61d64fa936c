//! The walsink archive directory: the files WAL is streamed into.
//!
//! This crate owns everything on disk under the archive directory: the lock that
//! keeps a second walsink out (`.walsink.lock`), the file that pins the directory to
//! one database cluster (`.walsink.meta`), the scan that finds where to resume
//! streaming, timeline history files, and the segment files themselves, written as
//! `NAME.partial` and renamed to `NAME` once complete. It must not touch the network,
//! know about the replication protocol or use async I/O: callers hand it bytes at
//! absolute LSNs and it tells them what is durable. Its only threads are helpers of
//! the one writer: one prepares the next segment file ahead of time, and, with direct
//! I/O, two write full staging buffers (see below).
//!
//! The directory stays interchangeable with pg_receivewal's: the same file names, the
//! same zero pre-filled `.partial` segments, the same resume rule
//! (`FindStreamingStart`). A user can stop pg_receivewal and start walsink on its
//! directory, and the other way round, without losing WAL. Where pg_receivewal gives
//! up or loses data, walsink differs: a short `.partial` (left by a full disk) is
//! extended instead of failing forever, an existing completed segment with other
//! content is moved aside instead of being replaced, and WAL of another cluster is
//! refused.
//!
//! Other users and programs are not trusted with the directory (see `dir.rs` and
//! `lock.rs`): every file in it is opened relative to the directory's handle, never
//! through a symbolic link, and must be a regular file ([`ArchiveError::NotARegularFile`]);
//! files walsink reads whole are size-capped ([`ArchiveError::FileTooLarge`]); a renamed
//! file must be the one walsink wrote ([`ArchiveError::FileReplaced`]); the directory
//! itself is `flock`ed, and a removed or replaced `.walsink.lock` stops the writer
//! ([`ArchiveError::LockLost`], [`LockWatch`]).
//!
//! # Layout
//!
//! WAL under its own names (`NAME`, `NAME.partial`, `NNNNNNNN.history`), walsink's files
//! under dot-names, which programs that manage WAL directories skip (Barman's archiver
//! moves every other unknown name away): [`LOCK_FILE`] (`.walsink.lock`), [`META_FILE`]
//! (`.walsink.meta`, written through `.walsink.meta.tmp`), [`PREPARED_FILE`]
//! (`.walsink.prepared`), `.walsink.probe` (created and removed at open), and moved-aside
//! segments `.NAME.replaced-<unix time>[-N]`. Readers of an archive that do not open it as
//! an [`Archive`] (which migrates the older layout, see `migrate.rs`) should read
//! [`META_FILE`] and fall back to [`LEGACY_META_FILE`] (`walsink.meta`), and skip dot-names
//! when listing WAL.
//!
//! # Overview
//!
//! * [`Archive`] opens and locks the directory, pins its identity
//!   ([`Archive::check_identity`]), finds the start position ([`Archive::find_start`]),
//!   writes history files and hands out one [`SegmentWriter`].
//! * [`SegmentWriter`] takes contiguous WAL (`write`), makes it durable (`flush`,
//!   and at every segment end) and reports `written()` and `flushed()`. It never
//!   writes a gap or an overlap, and `flushed()` never runs ahead of an `fdatasync`.
//! * [`ArchiveError`] says what went wrong, naming the path.
//!
//! # Durability
//!
//! With [`SyncMode::Sync`]:
//! * new segment: a helper thread prepares the file ahead of time under the neutral
//!   name `.walsink.prepared` (0600): pre-filled to the full size ([`Prefill`]),
//!   `fdatasync`ed. When the segment starts the writer renames it to `NAME.partial`;
//!   the directory `fsync` that makes the rename durable is done with the next flush
//!   (or the segment's completion), before any of its bytes is reported flushed. A
//!   leftover `.walsink.prepared` is never taken for WAL; it is replaced by the
//!   next preparation and removed when the writer is dropped;
//! * optionally ([`WriterOptions::direct_io`]) new segment files are written with
//!   `O_DIRECT` where the filesystem allows it: whole 4 KiB blocks from an aligned
//!   buffer, the partial last block padded with the zeros the file holds there anyway
//!   and written again as more data arrives. `O_DIRECT` does not replace `fdatasync`:
//!   every rule here holds unchanged;
//! * reused `NAME.partial`: fix its size if needed (extend with zeros, never drop
//!   bytes of the segment), `fdatasync` it, `fsync` the directory;
//! * `flush`: `fdatasync` the open `.partial` if it has unsynced bytes;
//! * segment end: `fdatasync` `NAME.partial`, rename it to `NAME` (moving a differing
//!   existing `NAME` aside first), `fsync` the directory; only then does `flushed()`
//!   move to the segment end;
//! * `.walsink.meta` and history files: write `*.tmp`, `fsync`, rename, `fsync` the
//!   directory. `.walsink.meta` also records the gaps an operator accepted
//!   ([`Archive::record_gap`], [`Gap`]): WAL the server had removed before walsink
//!   could archive it.
//!
//! [`SyncMode::NoSync`] skips every `fsync`/`fdatasync` (like `pg_receivewal
//! --no-sync`) and reports everything written as flushed. A failed sync is returned
//! and never retried: the writer then refuses further work.
#![deny(missing_docs)]

mod archive;
mod dir;
mod error;
mod fsops;
#[cfg(test)]
mod hostile;
mod lock;
mod meta;
mod migrate;
mod observe;
mod prepare;
mod readonly;
#[cfg(test)]
mod recording;
pub mod restore;
mod scan;
mod stage;
pub mod status;
mod syncer;
#[cfg(test)]
mod testutil;
pub mod verify;
mod writeback;
mod writer;

pub use archive::{Archive, LOCK_CHECK_INTERVAL, LOCK_FILE, META_FILE};
pub use error::ArchiveError;
pub use lock::LockWatch;
pub use meta::{Gap, fuzz_meta};
pub use migrate::{LEGACY_LOCK_FILE, LEGACY_META_FILE};
pub use observe::WriteObserver;
pub use prepare::PREPARED_FILE;
pub use syncer::FlushListener;
pub use writer::SegmentWriter;

use walsink_wal::{Lsn, TimelineId};

/// Whether the archive makes its writes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// `fdatasync`/`fsync` files and the directory as described in the crate docs.
    Sync,
    /// Never sync; written bytes count as flushed. For tests and throwaway archives.
    NoSync,
}

/// Where streaming should resume, derived from the files in the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartPoint {
    /// The timeline of the newest WAL file.
    pub tli: TimelineId,
    /// A segment start: the segment after the newest completed one, or the start of
    /// the newest `.partial`.
    pub lsn: Lsn,
    /// Whether the newest file is a `.partial` (re-streamed from its start).
    pub from_partial: bool,
}

/// How new segment files are pre-filled before WAL is written into them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefill {
    /// Write zeros over the whole file, as pg_receivewal does (with direct I/O when
    /// [`WriterOptions::direct_io`] is set, which costs little CPU but still doubles
    /// the bytes the disk writes). Later `fdatasync`s of overwrites then commit no
    /// allocation metadata.
    Zeros,
    /// `fallocate` the file (unwritten extents; nothing is written). Cheapest to
    /// prepare, but the first write to each block converts its extent, so each
    /// `fdatasync` also commits metadata. Falls back to [`Prefill::Zeros`] where the
    /// filesystem does not support it. The default: it measured better than zeros in
    /// both modes (BENCHMARKS.md).
    Fallocate,
}

/// How a [`SegmentWriter`] prepares and writes segment files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterOptions {
    /// How new segment files are pre-filled.
    pub prefill: Prefill,
    /// Prepare the next new segment file on a helper thread, ahead of time; without
    /// it the file is prepared when its segment starts.
    pub prepare_ahead: bool,
    /// Write new segment files with `O_DIRECT`, bypassing the page cache, where the
    /// filesystem accepts it (others, like tmpfs on older kernels, get buffered
    /// writes). Segment files that already existed are always written buffered. Off
    /// by default: it saves CPU, but each write then waits for the disk, which cost
    /// a third of the throughput on the reference machine (BENCHMARKS.md).
    pub direct_io: bool,
    /// With direct I/O: the size of the writer's staging buffers. A full buffer is
    /// written by a helper thread while the next one fills; a partly filled one at the
    /// next flush, close or segment completion. So when [`SegmentWriter::write`]
    /// returns, up to three buffers of bytes may not be in the file yet (nothing is
    /// reported flushed before they are). 0 (the default): everything reaches the file
    /// before `write` returns. Larger values make fewer, larger writes.
    pub write_behind: usize,
    /// With direct I/O: helper threads writing full staging buffers, which is also
    /// how many buffers can be in flight at once (the disk's queue depth).
    pub io_threads: usize,
    /// Run the `fdatasync`s of [`SegmentWriter::flush_behind`] and the completion of
    /// full segments (sync, rename, directory `fsync`) on a sync thread, in order,
    /// while the writer goes on writing; the durable position moves when each
    /// finishes ([`SegmentWriter::flushed`], [`SegmentWriter::set_flush_listener`]).
    /// The next segment's `.partial` is named only after the previous completion is
    /// durable (the writer waits for it there). Off: they run inline, and the writer
    /// waits for each.
    pub background_sync: bool,
    /// Validate the WAL before writing it ([`walsink_wal::validate`]): every page
    /// header against the archive's system identifier, segment size and pinned format
    /// ([`Archive::pin_format`]), and every record's CRC-32C. Invalid WAL is refused
    /// with [`ArchiveError::InvalidWal`] after writing and flushing everything up to the
    /// end of the last valid record and zeroing what was written after it (the first
    /// bytes of the invalid record, written before its end showed it invalid; a segment
    /// completed meanwhile is `.partial` again), and [`SegmentWriter::flushed`] never
    /// passes the start of a record not validated yet. Off by default (the library's
    /// tests write arbitrary bytes); walsink turns it on.
    pub validate: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            prefill: Prefill::Fallocate,
            prepare_ahead: true,
            direct_io: false,
            write_behind: 0,
            io_threads: 2,
            background_sync: false,
            validate: false,
        }
    }
}
