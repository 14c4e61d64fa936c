//! [`ReceiveConfig`]: everything a run of the receiver is told by its caller.

use std::path::PathBuf;
use std::time::Duration;

use walsink_archive::WriterOptions;
use walsink_protocol::conninfo::ConnConfig;
use walsink_wal::Lsn;

use crate::observe::SourceState;

#[cfg(doc)]
use crate::{run::SLOT_IN_USE_GRACE, writer::default_options};

/// Everything `walsink receive` needs.
#[derive(Clone, Debug)]
pub struct ReceiveConfig {
    /// Where and how to connect.
    pub conn: ConnConfig,
    /// A password obtained by prompting, overriding the configured ones.
    pub password: Option<String>,
    /// The archive directory.
    pub dir: PathBuf,
    /// Physical replication slot.
    pub slot: Option<String>,
    /// `--create-slot-if-missing`: create `slot` (reserving WAL) on a server that does
    /// not have it, e.g. a promoted standby, instead of stopping.
    pub create_slot_if_missing: bool,
    /// Stop at this position.
    pub endpos: Option<Lsn>,
    /// Periodic status update interval; `None` disables them.
    pub status_interval: Option<Duration>,
    /// Reconnect when the server has sent nothing for this long; `None` disables it.
    pub receive_timeout: Option<Duration>,
    /// `--synchronous`: flush when the queue drains and report at once.
    pub synchronous: bool,
    /// `--no-sync`: no fsync at all.
    pub no_sync: bool,
    /// `--no-loop`: exit on the first lost connection.
    pub no_loop: bool,
    /// Flush once this many bytes are unsynced.
    pub flush_bytes: u64,
    /// Flush once the oldest unsynced byte is this old.
    pub flush_interval: Duration,
    /// `--allow-gap`: when the server no longer has the WAL the archive needs, record
    /// the gap in `.walsink.meta` and continue from the oldest WAL it still has.
    pub allow_gap: bool,
    /// How long "slot in use" is retried before it counts as needing a human (after a
    /// crash of a previous walsink, its walsender may hold the slot for a moment longer).
    /// [`SLOT_IN_USE_GRACE`] unless a test shortens it.
    pub slot_in_use_grace: Duration,
    /// How segment files are prepared and written; `None`: the measured choice for
    /// the mode ([`default_options`]). Other values are for benchmark comparisons.
    pub write_options: Option<WriterOptions>,
    /// Where the run publishes its positions, phase and writer progress for metrics,
    /// health checks and systemd ([`SourceState`]); a fresh one if nobody watches.
    pub observer: SourceState,
}
