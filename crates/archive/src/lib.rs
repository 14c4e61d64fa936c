//! The walsink archive directory: the files WAL is streamed into.
//!
//! This crate owns everything on disk under the archive directory: the lock that
//! keeps a second walsink out (`walsink.lock`), the file that pins the directory to
//! one database cluster (`walsink.meta`), the scan that finds where to resume
//! streaming, timeline history files, and the segment files themselves, written as
//! `NAME.partial` and renamed to `NAME` once complete. It must not touch the network,
//! know about the replication protocol, spawn threads or use async I/O: callers hand
//! it bytes at absolute LSNs and it tells them what is durable.
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
//! * new segment: create `NAME.partial` (0600), write zeros to the full size,
//!   `fdatasync` it, `fsync` the directory;
//! * reused `NAME.partial`: fix its size if needed (extend with zeros, never drop
//!   bytes of the segment), `fdatasync` it, `fsync` the directory;
//! * `flush`: `fdatasync` the open `.partial` if it has unsynced bytes;
//! * segment end: `fdatasync` `NAME.partial`, rename it to `NAME` (moving a differing
//!   existing `NAME` aside first), `fsync` the directory; only then does `flushed()`
//!   move to the segment end;
//! * `walsink.meta` and history files: write `*.tmp`, `fsync`, rename, `fsync` the
//!   directory.
//!
//! [`SyncMode::NoSync`] skips every `fsync`/`fdatasync` (like `pg_receivewal
//! --no-sync`) and reports everything written as flushed. A failed sync is returned
//! and never retried: the writer then refuses further work.
#![deny(missing_docs)]

mod archive;
mod error;
mod fsops;
mod meta;
mod scan;
#[cfg(test)]
mod testutil;
mod writer;

pub use archive::{Archive, LOCK_FILE, META_FILE};
pub use error::ArchiveError;
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
