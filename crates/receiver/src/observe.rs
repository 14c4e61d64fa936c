//! Observing a running source from outside: [`SourceState`], a cheap shared handle the
//! receiver updates where each value changes (the stream driver on every read, WAL
//! message and durable position; the daemon loop on every state change; the segment
//! writer's I/O through [`WriteObserver`]), and that metrics, health checks and systemd
//! notification read whenever they like.
//!
//! Everything is an atomic (the state's reason is behind a mutex taken only when the
//! state changes or is read), so updating costs a few relaxed stores per message and
//! nothing runs on a timer. Times are kept as nanoseconds since a process-wide monotonic
//! base ([`SourceState::now`]); ages are computed by the reader.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use walsink_archive::WriteObserver;
use walsink_wal::Lsn;

/// Upper bounds (seconds) of the `fdatasync` duration histogram's buckets; a last,
/// unbounded bucket follows. From 100 µs (a fast NVMe) to 10 s (a disk in trouble).
pub const FSYNC_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0,
];

/// How long the writer may have an I/O operation in flight without finishing any
/// before it counts as stuck ([`Health::WriterStuck`]), unless the handle was given
/// another limit ([`SourceState::with_limits`]).
pub const WRITER_STALL: Duration = Duration::from_secs(60);

/// What a source is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Connecting for the first time (nothing has streamed yet).
    Connecting = 0,
    /// A stream is established (the server entered copy mode).
    Streaming = 1,
    /// The connection was lost or refused: waiting to retry, or retrying (the reason is
    /// the error).
    Reconnecting = 2,
    /// Stopped on an error that needs a human (the reason is the error).
    Failed = 3,
    /// Stopped cleanly: end position reached, or shutdown.
    Stopped = 4,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::Streaming,
            2 => Phase::Reconnecting,
            3 => Phase::Failed,
            4 => Phase::Stopped,
            _ => Phase::Connecting,
        }
    }

    /// Lower-case name, as in STATUS= lines and health reasons.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Streaming => "streaming",
            Phase::Reconnecting => "reconnecting",
            Phase::Failed => "failed",
            Phase::Stopped => "stopped",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a source is not healthy ([`SourceState::health`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Streaming and heard from the server within its receive timeout (or reading is
    /// paused for a writer that progresses), the writer progressing or idle.
    Ok,
    /// Not streaming yet, or again: connecting or reconnecting (with the last error).
    NotStreaming {
        /// The phase.
        phase: Phase,
        /// The last error, if any.
        reason: Option<String>,
    },
    /// Streaming, but nothing from the server for longer than the receive timeout.
    Silent {
        /// Time since the last message.
        for_: Duration,
        /// The receive timeout.
        limit: Duration,
    },
    /// The writer has had an I/O operation in flight for longer than the limit
    /// without finishing any.
    WriterStuck {
        /// Since when nothing finished.
        for_: Duration,
    },
    /// The disk is full: the writer waits for space.
    DiskFull,
    /// Stopped on an error that needs a human.
    Failed(String),
    /// Stopped cleanly (end position or shutdown).
    Stopped,
}

impl Health {
    /// Whether this counts as healthy.
    pub fn is_ok(&self) -> bool {
        *self == Health::Ok
    }

    /// Whether the watchdog must stop pinging for this (see [`SourceState::health`]):
    /// everything but a healthy, failed or stopped source (those no longer stream: a
    /// failure needs a human, and a restart would not help it) and a full disk (the
    /// writer is alive, retrying, and resumes on its own when there is space; a restart
    /// would find the disk as full).
    pub fn stops_watchdog(&self) -> bool {
        !matches!(
            self,
            Health::Ok | Health::Failed(_) | Health::Stopped | Health::DiskFull
        )
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Ok => f.write_str("ok"),
            Health::NotStreaming {
                phase,
                reason: None,
            } => write!(f, "{phase}"),
            Health::NotStreaming {
                phase,
                reason: Some(r),
            } => write!(f, "{phase}: {r}"),
            Health::Silent { for_, limit } => write!(
                f,
                "no message from the server for {:.1} s (receive timeout {:.1} s)",
                for_.as_secs_f64(),
                limit.as_secs_f64()
            ),
            Health::WriterStuck { for_ } => write!(
                f,
                "the writer has made no progress for {:.1} s with I/O in flight",
                for_.as_secs_f64()
            ),
            Health::DiskFull => f.write_str("disk full: WAL writes paused"),
            Health::Failed(r) => write!(f, "failed: {r}"),
            Health::Stopped => f.write_str("stopped"),
        }
    }
}

/// A consistent-enough copy of a source's values at one moment (each value is read
/// once; they are not read under one lock).
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The phase.
    pub phase: Phase,
    /// The last error (reconnecting, failed), if any.
    pub reason: Option<String>,
    /// End of the WAL received from the server.
    pub received: Lsn,
    /// End of the WAL made durable (fdatasync'ed, completed segments renamed and the
    /// directory synced): the flush position reported to the server when it is reported.
    pub flushed: Lsn,
    /// The server's WAL end, from its last keepalive or WAL message.
    pub server_wal_end: Lsn,
    /// Time since the last bytes from the server (`None` before any).
    pub last_message_age: Option<Duration>,
    /// WAL bytes received, over the source's life.
    pub bytes_received: u64,
    /// Segments completed.
    pub segments_completed: u64,
    /// Connection attempts after a failure.
    pub reconnects: u64,
    /// `fdatasync` durations: count per bucket of [`FSYNC_BUCKETS`] (not cumulative;
    /// the last is the unbounded one).
    pub fsync_buckets: [u64; FSYNC_BUCKETS.len() + 1],
    /// Sum of the `fdatasync` durations.
    pub fsync_sum: Duration,
    /// The receive timeout the source runs with.
    pub receive_timeout: Option<Duration>,
    /// Its health.
    pub health: Health,
}

impl Snapshot {
    /// How far the durable position is behind the server's WAL end, in bytes (0 when
    /// either is unknown).
    pub fn lag_bytes(&self) -> u64 {
        if self.server_wal_end.is_valid() && self.flushed.is_valid() {
            self.server_wal_end.0.saturating_sub(self.flushed.0)
        } else {
            0
        }
    }

    /// Number of `fdatasync`s observed.
    pub fn fsync_count(&self) -> u64 {
        self.fsync_buckets.iter().sum()
    }
}

/// The process-wide monotonic base of the stored times.
static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Notified (one stored permit) whenever any source's phase changes.
static PHASE_CHANGED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Completes when any source's phase has changed since the last time this completed
/// (one waiter at a time: the systemd notifier). Phase changes are rare, so this costs
/// nothing on the streaming path.
pub async fn phase_changed() {
    PHASE_CHANGED.notified().await
}

#[derive(Debug, Default)]
struct Inner {
    phase: AtomicU8,
    /// The last error; changed with the phase.
    reason: Mutex<Option<String>>,
    received: AtomicU64,
    flushed: AtomicU64,
    /// Where the archive already had WAL when the stream started (its `.partial`'s end):
    /// the catch-up below it re-writes durable WAL, so neither position is shown lower.
    floor: AtomicU64,
    server_wal_end: AtomicU64,
    /// [`SourceState::now`] of the last bytes read from the server, 0 before any.
    last_message: AtomicU64,
    /// The driver stopped reading the socket because the writer is full.
    paused: AtomicBool,
    bytes_received: AtomicU64,
    segments_completed: AtomicU64,
    reconnects: AtomicU64,
    fsync_buckets: [AtomicU64; FSYNC_BUCKETS.len() + 1],
    fsync_sum_ns: AtomicU64,
    /// Writer I/O operations in flight.
    io_in_flight: AtomicU32,
    /// [`SourceState::now`] when an I/O operation last finished, or the first began
    /// while none was in flight.
    io_progress: AtomicU64,
    disk_full: AtomicBool,
    /// Receive timeout in nanoseconds, 0 for none.
    receive_timeout_ns: AtomicU64,
    /// Writer stall limit in nanoseconds.
    writer_stall_ns: AtomicU64,
    /// The archive directory.
    directory: OnceLock<PathBuf>,
}

/// A handle on one source's observable state (see the module docs). Cloning it shares
/// the state; [`Default`] makes a fresh one.
#[derive(Clone, Debug)]
pub struct SourceState(Arc<Inner>);

impl Default for SourceState {
    fn default() -> Self {
        SourceState::new()
    }
}

impl SourceState {
    /// A fresh state: connecting, nothing received.
    pub fn new() -> SourceState {
        let s = SourceState(Arc::new(Inner::default()));
        s.0.writer_stall_ns
            .store(WRITER_STALL.as_nanos() as u64, Relaxed);
        s
    }

    /// Sets the writer stall limit ([`WRITER_STALL`] by default).
    pub fn with_limits(self, writer_stall: Duration) -> SourceState {
        self.0
            .writer_stall_ns
            .store(writer_stall.as_nanos() as u64, Relaxed);
        self
    }

    /// Nanoseconds since the process-wide base (never 0).
    pub fn now() -> u64 {
        Self::at(Instant::now())
    }

    fn at(t: Instant) -> u64 {
        (t.saturating_duration_since(*BASE).as_nanos() as u64).max(1)
    }

    // ---- updated by the receiver --------------------------------------------------------

    /// The phase changes; `reason` is the error that caused it (kept until the next
    /// change).
    pub fn set_phase(&self, phase: Phase, reason: Option<String>) {
        *self.0.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason;
        self.0.phase.store(phase as u8, Relaxed);
        PHASE_CHANGED.notify_one();
    }

    /// The archive directory (for its free space); set once, later calls are ignored.
    pub fn set_directory(&self, dir: &Path) {
        let _ = self.0.directory.set(dir.to_path_buf());
    }

    /// The archive directory, once set.
    pub fn directory(&self) -> Option<&Path> {
        self.0.directory.get().map(PathBuf::as_path)
    }

    /// The receive timeout the source runs with (health: how long a streaming source
    /// may hear nothing).
    pub fn set_receive_timeout(&self, t: Option<Duration>) {
        self.0
            .receive_timeout_ns
            .store(t.map_or(0, |t| t.as_nanos() as u64), Relaxed);
    }

    /// Bytes arrived from the server at `now`; its WAL end is now `server_wal_end`.
    pub fn heard(&self, now: Instant, server_wal_end: Lsn) {
        self.0.last_message.store(Self::at(now), Relaxed);
        self.0.server_wal_end.store(server_wal_end.0, Relaxed);
    }

    /// WAL of `len` bytes was received, ending at `received`.
    pub fn wal_received(&self, received: Lsn, len: usize) {
        let floor = self.0.floor.load(Relaxed);
        self.0.received.store(received.0.max(floor), Relaxed);
        self.0.bytes_received.fetch_add(len as u64, Relaxed);
    }

    /// A stream starts at `start` (a segment start); the archive already has durable WAL
    /// up to `floor` (the end of its `.partial`, [`Lsn::INVALID`] for none), which the
    /// stream writes again: received and flushed are shown as at least `floor`.
    pub fn stream_started_at(&self, start: Lsn, floor: Lsn) {
        self.0.floor.store(floor.0, Relaxed);
        self.0.received.store(start.0.max(floor.0), Relaxed);
    }

    /// The writer's durable position.
    pub fn set_flushed(&self, flushed: Lsn) {
        let floor = self.0.floor.load(Relaxed);
        self.0.flushed.store(flushed.0.max(floor), Relaxed);
    }

    /// Reading the socket paused (the writer's queue is full) or resumed.
    pub fn set_paused(&self, paused: bool) {
        self.0.paused.store(paused, Relaxed);
    }

    /// A connection attempt after a failure.
    pub fn reconnecting(&self) {
        self.0.reconnects.fetch_add(1, Relaxed);
    }

    /// The writer is waiting for disk space, or not any more.
    pub fn set_disk_full(&self, full: bool) {
        self.0.disk_full.store(full, Relaxed);
    }

    // ---- read by observers -----------------------------------------------------------------

    /// The phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.0.phase.load(Relaxed))
    }

    /// The durable position.
    pub fn flushed(&self) -> Lsn {
        Lsn(self.0.flushed.load(Relaxed))
    }

    /// The received position.
    pub fn received(&self) -> Lsn {
        Lsn(self.0.received.load(Relaxed))
    }

    /// The last error, if any.
    pub fn reason(&self) -> Option<String> {
        self.0
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn receive_timeout(&self) -> Option<Duration> {
        match self.0.receive_timeout_ns.load(Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    fn age(now: u64, at: u64) -> Option<Duration> {
        (at != 0).then(|| Duration::from_nanos(now.saturating_sub(at)))
    }

    /// The source's health at `now` ([`SourceState::now`]):
    ///
    /// * failed or stopped: [`Health::Failed`], [`Health::Stopped`];
    /// * connecting or reconnecting: [`Health::NotStreaming`];
    /// * the writer has I/O in flight and has finished none for longer than its limit:
    ///   [`Health::WriterStuck`]; waiting for disk space: [`Health::DiskFull`];
    /// * streaming, reading (not paused by a full writer queue), and nothing heard from
    ///   the server for longer than the receive timeout (if there is one):
    ///   [`Health::Silent`];
    /// * otherwise [`Health::Ok`].
    pub fn health_at(&self, now: u64) -> Health {
        let phase = self.phase();
        match phase {
            Phase::Failed => return Health::Failed(self.reason().unwrap_or_default()),
            Phase::Stopped => return Health::Stopped,
            Phase::Connecting | Phase::Reconnecting => {
                return Health::NotStreaming {
                    phase,
                    reason: self.reason(),
                };
            }
            Phase::Streaming => {}
        }
        if self.0.io_in_flight.load(Relaxed) > 0 {
            let since = Self::age(now, self.0.io_progress.load(Relaxed)).unwrap_or_default();
            if since > Duration::from_nanos(self.0.writer_stall_ns.load(Relaxed)) {
                return Health::WriterStuck { for_: since };
            }
        }
        if self.0.disk_full.load(Relaxed) {
            return Health::DiskFull;
        }
        if !self.0.paused.load(Relaxed)
            && let Some(limit) = self.receive_timeout()
            && let Some(for_) = Self::age(now, self.0.last_message.load(Relaxed))
            && for_ > limit
        {
            return Health::Silent { for_, limit };
        }
        Health::Ok
    }

    /// The source's health now ([`health_at`](Self::health_at)).
    pub fn health(&self) -> Health {
        self.health_at(Self::now())
    }

    /// All values at once, with the health at `now`.
    pub fn snapshot_at(&self, now: u64) -> Snapshot {
        let i = &self.0;
        let mut fsync_buckets = [0; FSYNC_BUCKETS.len() + 1];
        for (b, a) in fsync_buckets.iter_mut().zip(&i.fsync_buckets) {
            *b = a.load(Relaxed);
        }
        Snapshot {
            phase: self.phase(),
            reason: self.reason(),
            received: self.received(),
            flushed: self.flushed(),
            server_wal_end: Lsn(i.server_wal_end.load(Relaxed)),
            last_message_age: Self::age(now, i.last_message.load(Relaxed)),
            bytes_received: i.bytes_received.load(Relaxed),
            segments_completed: i.segments_completed.load(Relaxed),
            reconnects: i.reconnects.load(Relaxed),
            fsync_buckets,
            fsync_sum: Duration::from_nanos(i.fsync_sum_ns.load(Relaxed)),
            receive_timeout: self.receive_timeout(),
            health: self.health_at(now),
        }
    }

    /// All values now.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_at(Self::now())
    }

    /// The handle the segment writer reports its I/O to.
    pub fn write_observer(&self) -> Arc<dyn WriteObserver> {
        Arc::new(WriterSide(self.clone()))
    }
}

/// The segment writer's side of a [`SourceState`].
#[derive(Debug)]
struct WriterSide(SourceState);

impl WriteObserver for WriterSide {
    fn io_started(&self) {
        let i = &(self.0).0;
        if i.io_in_flight.fetch_add(1, Relaxed) == 0 {
            // Nothing was in flight: the stall is measured from now.
            i.io_progress.store(SourceState::now(), Relaxed);
        }
    }

    fn io_finished(&self) {
        let i = &(self.0).0;
        i.io_progress.store(SourceState::now(), Relaxed);
        i.io_in_flight.fetch_sub(1, Relaxed);
    }

    fn synced(&self, took: Duration) {
        let i = &(self.0).0;
        let secs = took.as_secs_f64();
        let b = FSYNC_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(FSYNC_BUCKETS.len());
        i.fsync_buckets[b].fetch_add(1, Relaxed);
        i.fsync_sum_ns.fetch_add(took.as_nanos() as u64, Relaxed);
    }

    fn segment_completed(&self) {
        (self.0).0.segments_completed.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_follows_the_phase_the_server_and_the_writer() {
        let s = SourceState::new().with_limits(Duration::from_secs(5));
        let t0 = SourceState::now();
        let secs = |n: u64| t0 + n * 1_000_000_000;
        assert!(matches!(
            s.health_at(t0),
            Health::NotStreaming {
                phase: Phase::Connecting,
                ..
            }
        ));
        s.set_receive_timeout(Some(Duration::from_secs(10)));
        s.set_phase(Phase::Streaming, None);
        // Nothing heard yet: no age to judge.
        assert_eq!(s.health_at(secs(100)), Health::Ok);
        s.0.last_message.store(secs(0), Relaxed);
        assert_eq!(s.health_at(secs(10)), Health::Ok);
        assert!(matches!(s.health_at(secs(11)), Health::Silent { .. }));
        assert!(s.health_at(secs(11)).stops_watchdog());
        // Reading paused for a full writer: the silence is not the server's.
        s.set_paused(true);
        assert_eq!(s.health_at(secs(11)), Health::Ok);
        s.set_paused(false);
        // A writer with I/O in flight that finishes nothing.
        let w = s.write_observer();
        w.io_started();
        s.0.io_progress.store(secs(0), Relaxed);
        assert_eq!(s.health_at(secs(5)), Health::Ok, "within the limit");
        assert!(matches!(s.health_at(secs(6)), Health::WriterStuck { .. }));
        w.io_finished();
        s.0.last_message.store(secs(6), Relaxed);
        assert_eq!(s.health_at(secs(7)), Health::Ok, "idle again");
        s.set_phase(Phase::Reconnecting, Some("connection refused".into()));
        let h = s.health_at(secs(7));
        assert_eq!(h.to_string(), "reconnecting: connection refused");
        assert!(h.stops_watchdog());
        s.set_phase(Phase::Failed, Some("slot missing".into()));
        assert!(!s.health_at(secs(7)).stops_watchdog());
        assert!(!s.health_at(secs(7)).is_ok());
    }

    #[test]
    fn fsync_durations_land_in_their_buckets() {
        let s = SourceState::new();
        let w = s.write_observer();
        w.synced(Duration::from_micros(50));
        w.synced(Duration::from_millis(3));
        w.synced(Duration::from_secs(20));
        w.segment_completed();
        let snap = s.snapshot();
        assert_eq!(snap.fsync_buckets[0], 1);
        assert_eq!(snap.fsync_buckets[5], 1, "3 ms is in the 5 ms bucket");
        assert_eq!(snap.fsync_buckets[FSYNC_BUCKETS.len()], 1);
        assert_eq!(snap.fsync_count(), 3);
        assert_eq!(snap.segments_completed, 1);
        assert_eq!(
            snap.fsync_sum,
            Duration::from_micros(50) + Duration::from_millis(3) + Duration::from_secs(20)
        );
    }
}
