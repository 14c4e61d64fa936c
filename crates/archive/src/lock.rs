//! The archive directory's lock, shared by the [`Archive`](crate::Archive) and its
//! [`SegmentWriter`](crate::SegmentWriter).

use std::fs::File;
use std::sync::atomic::AtomicBool;

/// State shared between the [`Archive`](crate::Archive) and its
/// [`SegmentWriter`](crate::SegmentWriter).
#[derive(Debug)]
pub(crate) struct Shared {
    /// The locked `walsink.lock`. The `flock` lives as long as this file is open, so
    /// it is held until the archive and every writer are dropped.
    pub(crate) _lock: File,
    /// Whether a [`SegmentWriter`](crate::SegmentWriter) exists; there may be only one.
    pub(crate) writer_active: AtomicBool,
}
