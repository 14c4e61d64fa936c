//! What the writer is told: the flush policy and how segment files are written.

use std::time::Duration;

use walsink_archive::{Prefill, WriterOptions};

use crate::observe::SourceState;

/// Flush policy.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Flush as soon as the queue drains.
    pub synchronous: bool,
    /// Flush when this many bytes are unsynced.
    pub flush_bytes: u64,
    /// Flush when the oldest unsynced byte is this old.
    pub flush_interval: Duration,
    /// Told when the writer waits for disk space, and stops waiting.
    pub observer: SourceState,
}

/// How the segment files are prepared and written, per mode, chosen by measurement
/// (BENCHMARKS.md): new segments are `fallocate`d (pre-writing zeros doubled the disk
/// writes and cost more than the extent conversions it saves) and prepared ahead on a
/// helper thread, and written through the page cache: `O_DIRECT` cut the CPU per GiB
/// by about a quarter in the default mode but, as each write then waits for the disk,
/// also cut throughput by a third on the reference machine. The WAL is validated.
///
/// The library never reads the environment: a caller that wants other options (the
/// binary's benchmark-only `WALSINK_BENCH_*` switches) passes them in
/// [`ReceiveConfig::write_options`](crate::ReceiveConfig::write_options).
pub fn default_options(synchronous: bool) -> WriterOptions {
    WriterOptions {
        prefill: Prefill::Fallocate,
        prepare_ahead: true,
        direct_io: false,
        write_behind: if synchronous { 0 } else { 1 << 20 },
        // The thread of the default mode goes on writing while the size-triggered
        // fdatasync and segment completions run; `--synchronous` flushes inline at
        // its group-commit point and reports at once.
        background_sync: !synchronous,
        // Every page header and record CRC is checked before it is written (README,
        // "WAL validation"); BENCHMARKS.md has its cost.
        validate: true,
        ..WriterOptions::default()
    }
}
