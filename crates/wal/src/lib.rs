//! PostgreSQL write-ahead-log positions, segment naming and arithmetic, timeline
//! history files, WAL page headers, where the WAL in a segment image ends, and the
//! validation of WAL content (page headers and record CRCs, [`validate`]).
//!
//! This crate owns the vocabulary every other walsink crate speaks: [`Lsn`],
//! [`TimelineId`], [`WalSegSize`], [`SegNo`] and [`SegmentName`]. It does no I/O,
//! reads no clock and has no async dependency; everything is a pure function over
//! numbers and byte slices, so it can be unit-tested and fuzzed exhaustively.
#![deny(missing_docs)]

pub mod crc;
mod error;
pub mod history;
mod lsn;
pub mod page;
mod segment;
pub mod synth;
pub mod tail;
pub mod validate;

pub use error::WalError;
pub use history::{HistoryEntry, TimelineHistory};
pub use lsn::{Lsn, TimelineId};
pub use segment::{SegNo, SegmentFileKind, SegmentName, WalSegSize};
