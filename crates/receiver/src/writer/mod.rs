//! The writer: the one owner of the archive directory's files.
//!
//! Every file in the archive directory is written by the writer: the segment files,
//! `.walsink.meta` ([`Writer::pin`], [`Writer::record_gap`]) and timeline history files
//! ([`Writer::write_history`]). The network side only reads the directory (where to
//! start, which history files exist) and, once the writer exists, only through it.
//!
//! The network task hands it WAL through a bounded queue ([`QUEUE_MESSAGES`] messages of
//! at most 128 KiB each, so at most 8 MiB in flight); when the queue is full the
//! network task stops reading the socket, so a slow disk slows the server down instead
//! of growing memory. The writer writes each message at its exact offset and runs
//! fdatasync by policy (group commit):
//!
//! * `--synchronous`: no thread and no queue: the network task writes each message itself
//!   and runs fdatasync whenever it has handled every whole message received (see
//!   [`Writer::idle`]), like pg_receivewal. Two thread wake-ups per commit cost the
//!   primary about a tenth of its TPS on a small machine (BENCHMARKS.md). A full disk
//!   then ends the session with the retried disk-full error instead of pausing;
//! * otherwise: when [`WriterConfig::flush_bytes`] unsynced bytes have gathered, or
//!   [`WriterConfig::flush_interval`] has passed since the oldest unsynced byte, or the
//!   network task asks (server reply request, shutdown);
//! * always at segment completion (inside the archive crate) and at close.
//!
//! # How the network side and the writer meet
//!
//! Two mechanisms, one per direction, and nothing else is shared:
//!
//! * **in: one bounded `mpsc` queue of commands** into the writer thread: WAL to write,
//!   "flush soon", "continue at this position", "close the segment", the archive's
//!   other writes (pin `.walsink.meta`, a history file, a gap), and "the sync thread made
//!   more durable". Bounded, because its fullness is the backpressure that stops the
//!   network task reading the socket when the disk is slow or full. In order, because a
//!   reset or a close must take effect after the WAL queued before it.
//! * **out: one `watch` channel of [`WriterState`]**: the durable position, the written
//!   position, the failure that stopped the writer, and how many requests (reset,
//!   close, pin, history, gap) it has answered, in order. A `watch` because the
//!   network task needs the latest state, never the history of it, and must never
//!   block the writer. A changed durable position, failure or answer wakes the network
//!   task (the flush position is reported at once); the written position is updated
//!   without a wake-up: it is only read when a status update goes out anyway.
//!
//! The durable position is published from one place, the writer thread, after every
//! command: the archive crate's sync thread (background `fdatasync` and segment
//! completion) does not publish; its flush listener only queues a wake-up (through a
//! weak sender, so it never keeps the writer alive), after which the writer reads
//! [`SegmentWriter::flushed`] and publishes it. That position is the only source of the
//! flush LSN the network task reports, which makes the reported flush position honest
//! by construction.
//!
//! The one exception is `--synchronous` (measured faster, BENCHMARKS.md): there the
//! network task is the writer (no thread, no queue; the same `watch` channel, which it
//! publishes to itself), so the one publisher of positions is the network task (a
//! small task waiting on the directory watch may publish a lost lock as the failure).
//!
//! "Flush soon" is best effort: when the queue is full it is dropped, and the flush
//! comes by size or interval (a full queue holds more than `--flush-bytes` of WAL
//! unless the messages are tiny); the server's reply request it answers has been
//! answered with the durable position already.
//!
//! While idle, the thread has no timer: it rechecks the archive's lock file when the
//! directory changes (inotify), or when the network task's timer tick found the lock
//! file gone ([`Writer::check_lock`], one `stat`), and stops with the error when it was
//! removed or replaced (`dirwatch`).
//!
//! # A full disk
//!
//! A full disk (`ENOSPC`, `EDQUOT`) while writing or preparing a segment pauses the
//! thread: it retries the same write every [`DISK_FULL_RETRY`] from where the data got
//! to, logs the condition once (again every [`DISK_FULL_REMINDER`] while it lasts), and
//! resumes on its own when space comes back. Meanwhile the flush position stays where
//! it was (so a slot keeps the WAL on the server), the queue fills up and the network
//! task stops reading the socket, but keeps sending status updates. Shutdown
//! (cancellation) while paused gives up on the unwritten WAL, which was never reported
//! flushed. A failed sync breaks the segment writer instead: the thread stops with the
//! error, and the session ends (as a transient error when the disk is full).
//!
//! # Files
//!
//! `mod.rs` the handle, `thread.rs` the writer thread, `inline.rs` the `--synchronous`
//! writer, `options.rs` the flush policy and write options.

mod dirwatch;
mod inline;
mod options;
mod thread;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use walsink_archive::{Archive, ArchiveError, Gap, LockWatch, SegmentWriter};
use walsink_wal::{Lsn, TimelineId};

pub use options::{WriterConfig, default_options};

use inline::Inline;

/// Capacity of the queue between the network task and the writer, in messages.
pub const QUEUE_MESSAGES: usize = 64;

/// How often a write that failed for lack of space is tried again.
pub const DISK_FULL_RETRY: Duration = Duration::from_secs(2);

/// How often a disk that stays full is logged again.
pub const DISK_FULL_REMINDER: Duration = Duration::from_secs(60);

/// What the writer has done, published after every command.
#[derive(Clone, Debug, Default)]
pub struct WriterState {
    /// End of the bytes durably on disk.
    pub flushed: Lsn,
    /// End of the bytes handed to the operating system (`pwrite` returned), not yet
    /// necessarily durable: the `write` position of status updates. Updated without
    /// waking the receivers.
    pub written: Lsn,
    /// Set when the writer failed; it stops accepting data.
    pub error: Option<Arc<ArchiveError>>,
    /// How many requests (reset, close, pin, history, gap) the writer has answered.
    pub answered: u64,
}

/// A command to the writer thread.
enum Cmd {
    /// WAL bytes starting at `start`.
    Data {
        tli: TimelineId,
        start: Lsn,
        data: Bytes,
    },
    /// Flush soon.
    Flush,
    /// The sync thread made more durable: publish it.
    Synced,
    /// The network task's tick found the lock file removed or replaced: check it (and
    /// stop with the error).
    CheckLock,
    /// A request, answered by counting it in [`WriterState::answered`].
    Request(Request),
}

/// What the network side waits for.
#[derive(Debug)]
enum Request {
    /// Continue at `lsn` on `tli` (a stream start, segment aligned).
    Reset { tli: TimelineId, lsn: Lsn },
    /// Flush and close the open segment (kept as `.partial` when incomplete).
    Close,
    /// Write `.walsink.meta` if [`Archive::verify_identity`] found none.
    Pin,
    /// Write the history file of `tli`.
    History { tli: TimelineId, content: Vec<u8> },
    /// Record a gap in `.walsink.meta`.
    Gap(Gap),
}

/// The network task's handle on the writer: a thread fed through a queue, or, with
/// `--synchronous`, the writer itself, driven inline by the network task.
pub struct Writer {
    mode: Mode,
    /// The archive directory, for reading which history files exist.
    dir: PathBuf,
    /// What the writer published last (see [`WriterState`]).
    pub state: watch::Receiver<WriterState>,
}

enum Mode {
    /// The writer thread owns the archive.
    Thread {
        tx: mpsc::Sender<Cmd>,
        /// Requests sent so far: the handle's own counter (the thread counts its
        /// answers in [`WriterState::answered`]); never shared with the thread.
        requests: AtomicU64,
        thread: Option<JoinHandle<Archive>>,
        /// Rechecks the lock file on the network task's ticks ([`Writer::check_lock`]).
        lock: LockWatch,
    },
    /// `--synchronous`: the network task writes each message as it is decoded and runs
    /// fdatasync itself at the group-commit point ([`Writer::idle`]), as pg_receivewal
    /// does, saving the two thread wake-ups per commit the queue and the `watch` cost.
    /// The lock is never contended (one task) and never held across an `await`.
    /// A full disk is not waited out here: it fails the writer, and the session ends
    /// with the retried disk-full error.
    Inline(Box<Mutex<Inline>>),
}

/// A permit to queue one message, reserved while waiting for queue space.
pub struct Permit<'a>(PermitKind<'a>);

enum PermitKind<'a> {
    Queue(mpsc::Permit<'a, Cmd>),
    Inline(&'a Writer),
}

impl Permit<'_> {
    /// Queues WAL bytes starting at `start` (inline: writes them at once; a failure is
    /// published as the writer's error).
    pub fn send(self, tli: TimelineId, start: Lsn, data: Bytes) {
        match self.0 {
            PermitKind::Queue(p) => {
                p.send(Cmd::Data { tli, start, data });
            }
            PermitKind::Inline(w) => w.lock_inline().write(tli, start, &data),
        }
    }
}

impl Writer {
    /// Starts the writer thread, which owns `archive` (until [`shutdown`](Self::shutdown)
    /// returns it) and `seg`, made from it. `rt` is the runtime whose timers the thread
    /// waits on; `cancel` (shutdown) ends a wait for disk space.
    pub fn spawn(
        archive: Archive,
        seg: SegmentWriter,
        cfg: WriterConfig,
        rt: tokio::runtime::Handle,
        cancel: CancellationToken,
    ) -> Writer {
        Writer::spawn_watching(archive, seg, cfg, rt, cancel, true)
    }

    /// [`spawn`](Self::spawn); `watch_dir` false: without the directory watch (tests
    /// of the tick path, as when inotify cannot be used).
    fn spawn_watching(
        archive: Archive,
        mut seg: SegmentWriter,
        cfg: WriterConfig,
        rt: tokio::runtime::Handle,
        cancel: CancellationToken,
        watch_dir: bool,
    ) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE_MESSAGES);
        let (state_tx, state) = watch::channel(WriterState {
            flushed: seg.flushed(),
            written: seg.written(),
            ..WriterState::default()
        });
        // The sync thread only wakes the writer thread, which publishes.
        let wake = tx.downgrade();
        seg.set_flush_listener(Arc::new(move |_| {
            if let Some(tx) = wake.upgrade() {
                // Full: the thread has commands to handle and publishes after each.
                let _ = tx.try_send(Cmd::Synced);
            }
        }));
        let dir = archive.path().to_path_buf();
        let lock = seg.lock_watch();
        // The caller's span (a daemon's source) goes with the thread's log lines.
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name("walsink-writer".into())
            .spawn(move || {
                span.in_scope(|| {
                    thread::run(archive, seg, cfg, rx, state_tx, rt, cancel, watch_dir)
                })
            })
            .expect("spawning the writer thread");
        Writer {
            mode: Mode::Thread {
                tx,
                requests: AtomicU64::new(0),
                thread: Some(thread),
                lock,
            },
            dir,
            state,
        }
    }

    /// The writer for `--synchronous` mode: no thread, the caller's task writes and
    /// flushes (see [`Mode::Inline`]).
    pub fn inline(archive: Archive, seg: SegmentWriter, cfg: WriterConfig) -> Writer {
        let (state_tx, state) = watch::channel(WriterState {
            flushed: seg.flushed(),
            written: seg.written(),
            ..WriterState::default()
        });
        // No thread rechecks the lock file here: a task waiting on the directory watch
        // does, and publishes its loss as the writer's failure; the network task's ticks
        // check too ([`Writer::check_lock`]).
        let lock_watch = tokio::runtime::Handle::try_current().ok().and_then(|rt| {
            let (watch, state) = (seg.lock_watch(), state_tx.clone());
            let mut dir = dirwatch::DirWatch::new(archive.path())?;
            Some(rt.spawn(async move {
                loop {
                    if dir.changed().await.is_err() {
                        return;
                    }
                    if let Err(e) = watch.check() {
                        let e = Arc::new(e);
                        state.send_modify(|s| {
                            s.error.get_or_insert(e);
                        });
                        return;
                    }
                }
            }))
        });
        let dir = archive.path().to_path_buf();
        Writer {
            mode: Mode::Inline(Box::new(Mutex::new(Inline::new(
                archive,
                seg,
                state_tx,
                cfg.flush_bytes,
                lock_watch,
            )))),
            dir,
            state,
        }
    }

    /// Starts the writer for `cfg`: inline with `--synchronous`, otherwise the thread.
    pub fn start(
        archive: Archive,
        seg: SegmentWriter,
        cfg: WriterConfig,
        rt: tokio::runtime::Handle,
        cancel: CancellationToken,
    ) -> Writer {
        if cfg.synchronous {
            Writer::inline(archive, seg, cfg)
        } else {
            Writer::spawn(archive, seg, cfg, rt, cancel)
        }
    }

    /// The inline writer. Panics on a thread writer (callers check the mode).
    fn lock_inline(&self) -> MutexGuard<'_, Inline> {
        let Mode::Inline(m) = &self.mode else {
            unreachable!("inline use of a writer thread");
        };
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failed(&self) -> bool {
        self.state.borrow().error.is_some()
    }

    /// Whether [`idle`](Self::idle) has something to flush: inline, unflushed bytes
    /// and no failure.
    pub fn idle_pending(&self) -> bool {
        match &self.mode {
            Mode::Inline(_) => !self.failed() && self.lock_inline().unflushed_bytes() > 0,
            Mode::Thread { .. } => false,
        }
    }

    /// The group-commit point, called by the network task when it has handled every
    /// whole message received and is about to wait: inline, makes everything written
    /// durable and publishes it (the session reports it at once). Nothing with the
    /// thread, which has its own.
    pub fn idle(&self) {
        if matches!(self.mode, Mode::Inline(_)) && !self.failed() {
            self.lock_inline().idle();
        }
    }

    /// Rechecks the archive's lock file, on the network task's timer ticks (status
    /// interval, receive timeout): one `stat`. Wakes the writer thread only when the
    /// file was removed or replaced; the thread then stops with
    /// [`ArchiveError::LockLost`] (inline, the failure is published at once). If the
    /// queue is full, the thread is busy writing, and its next write refuses.
    pub fn check_lock(&self) {
        match &self.mode {
            Mode::Thread { tx, lock, .. } => {
                if lock.check().is_err() {
                    let _ = tx.try_send(Cmd::CheckLock);
                }
            }
            Mode::Inline(_) if self.failed() => {}
            Mode::Inline(_) => self.lock_inline().check_lock(),
        }
    }

    /// Waits for room in the queue. Cancellation-safe.
    pub async fn reserve(&self) -> Result<Permit<'_>, ()> {
        match &self.mode {
            Mode::Thread { tx, .. } => tx
                .reserve()
                .await
                .map(|p| Permit(PermitKind::Queue(p)))
                .map_err(|_| ()),
            Mode::Inline(_) if self.failed() => Err(()),
            Mode::Inline(_) => Ok(Permit(PermitKind::Inline(self))),
        }
    }

    /// End of the bytes the writer has written to the operating system.
    pub fn written(&self) -> Lsn {
        self.state.borrow().written
    }

    /// Reserves queue space if there is some right now.
    pub fn reserve_now(&self) -> Option<Permit<'_>> {
        match &self.mode {
            Mode::Thread { tx, .. } => tx.try_reserve().ok().map(|p| Permit(PermitKind::Queue(p))),
            Mode::Inline(_) => Some(Permit(PermitKind::Inline(self))),
        }
    }

    /// Sends `req` to the thread (or runs it inline) and waits for its answer.
    /// Cancellation-safe: a request sent is answered (and counted) anyway. Requests
    /// come from one task at a time (the session's), so the queue's order is the
    /// count's.
    async fn request(&self, req: Request) -> Result<(), Arc<ArchiveError>> {
        let (tx, requests) = match &self.mode {
            Mode::Thread { tx, requests, .. } => (tx, requests),
            Mode::Inline(_) if self.failed() => return Err(self.failure()),
            Mode::Inline(_) => return self.lock_inline().request(req),
        };
        if tx.send(Cmd::Request(req)).await.is_err() {
            return Err(self.failure());
        }
        // Counted only once sent (no await in between), so a request cancelled while
        // waiting for queue space leaves the count matching the thread's.
        let seq = requests.fetch_add(1, Ordering::Relaxed) + 1;
        let mut rx = self.state.clone();
        let answered = rx
            .wait_for(|s| s.answered >= seq || s.error.is_some())
            .await
            .is_ok_and(|s| s.answered >= seq);
        if answered {
            Ok(())
        } else {
            Err(self.failure())
        }
    }

    /// Tells the writer to continue at `lsn` on `tli` (a stream start, segment aligned).
    /// Returns once the writer has taken the new position and published it.
    pub async fn reset(&self, tli: TimelineId, lsn: Lsn) -> Result<(), ()> {
        self.request(Request::Reset { tli, lsn })
            .await
            .map_err(|_| ())
    }

    /// Asks for a flush soon, without waiting for it. Best effort: dropped when the
    /// queue is full (see the module docs). (Inline, the next [`idle`](Self::idle)
    /// flushes anyway.)
    pub fn request_flush(&self) {
        if let Mode::Thread { tx, .. } = &self.mode {
            let _ = tx.try_send(Cmd::Flush);
        }
    }

    /// Writes out everything queued, flushes, leaves an incomplete segment as
    /// `.partial`, and returns the durable position.
    pub async fn close(&self) -> Result<Lsn, Arc<ArchiveError>> {
        self.request(Request::Close).await?;
        Ok(self.state.borrow().flushed)
    }

    /// Writes `.walsink.meta` if [`Archive::verify_identity`] found none (before the
    /// writer was started): the directory is pinned to the server's system.
    pub async fn pin(&self) -> Result<(), Arc<ArchiveError>> {
        self.request(Request::Pin).await
    }

    /// Writes the history file of `tli` durably ([`Archive::write_history`]).
    pub async fn write_history(
        &self,
        tli: TimelineId,
        content: Vec<u8>,
    ) -> Result<(), Arc<ArchiveError>> {
        self.request(Request::History { tli, content }).await
    }

    /// Records a gap in `.walsink.meta` durably ([`Archive::record_gap`]).
    pub async fn record_gap(&self, gap: Gap) -> Result<(), Arc<ArchiveError>> {
        self.request(Request::Gap(gap)).await
    }

    /// Whether the archive has the history file of `tli` (a read of the directory,
    /// as [`Archive::has_history`]).
    pub fn has_history(&self, tli: TimelineId) -> bool {
        std::fs::symlink_metadata(self.dir.join(tli.history_file_name())).is_ok_and(|m| m.is_file())
    }

    /// The error that stopped the writer.
    pub fn failure(&self) -> Arc<ArchiveError> {
        self.state.borrow().error.clone().unwrap_or_else(|| {
            Arc::new(ArchiveError::Io {
                path: Default::default(),
                op: "write WAL (writer thread ended)",
                source: std::io::Error::other("writer thread ended"),
            })
        })
    }

    /// Stops the writer (after a final flush), waits for it, and returns the archive
    /// it owned (`None` if the thread panicked).
    pub fn shutdown(mut self) -> Option<Archive> {
        self.stop()
    }

    fn stop(&mut self) -> Option<Archive> {
        match &mut self.mode {
            Mode::Thread { tx, thread, .. } => {
                let (closed, _) = mpsc::channel(1);
                drop(std::mem::replace(tx, closed));
                thread.take().and_then(|t| t.join().ok())
            }
            Mode::Inline(m) => m.get_mut().unwrap_or_else(|p| p.into_inner()).stop(),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Publishes the durable and written positions: the durable one only forward (a
/// status update must never report less than one before it), the written one without
/// waking anybody.
fn publish(seg: &SegmentWriter, state: &watch::Sender<WriterState>) {
    let (f, w) = (seg.flushed(), seg.written());
    state.send_if_modified(|s| {
        s.written = w;
        let newer = f > s.flushed;
        if newer {
            s.flushed = f;
        }
        newer
    });
}

/// Publishes the positions after a reset of the stream position, which may move them
/// back (a new timeline starting before the old one's end).
fn publish_reset(seg: &SegmentWriter, state: &watch::Sender<WriterState>) {
    let (f, w) = (seg.flushed(), seg.written());
    state.send_if_modified(|s| {
        s.written = w;
        let changed = s.flushed != f;
        s.flushed = f;
        changed
    });
}

/// Publishes a failure (and whatever became durable before it).
fn publish_failure(
    seg: &SegmentWriter,
    state: &watch::Sender<WriterState>,
    e: ArchiveError,
) -> Arc<ArchiveError> {
    let e = Arc::new(e);
    let (f, w) = (seg.flushed(), seg.written());
    state.send_modify(|s| {
        s.flushed = s.flushed.max(f);
        s.written = w;
        s.error = Some(e.clone());
    });
    e
}

/// Runs an archive request other than reset and close, on the writer's archive.
fn archive_request(archive: &mut Archive, req: Request) -> Result<(), ArchiveError> {
    match req {
        Request::Pin => archive.pin_identity(),
        Request::History { tli, content } => {
            archive.write_history(tli, &content)?;
            tracing::info!("wrote timeline history file {}", tli.history_file_name());
            Ok(())
        }
        Request::Gap(gap) => archive.record_gap(gap),
        Request::Reset { .. } | Request::Close => unreachable!("handled by the writer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walsink_archive::SyncMode;
    use walsink_wal::WalSegSize;

    #[test]
    fn publishing_never_moves_the_flush_position_back_except_on_a_reset() {
        let d = tempfile::tempdir().unwrap();
        let a = Archive::open(d.path(), SyncMode::Sync).unwrap();
        let mut seg = a.segment_writer(WalSegSize::new(1 << 20).unwrap()).unwrap();
        let start = Lsn(3 << 20);
        let tli = TimelineId::new(1).unwrap();
        seg.reset_position(tli, start);
        seg.write(tli, start, &[7; 100]).unwrap();
        let x = seg.flush().unwrap();
        assert_eq!(x, Lsn(start.0 + 100));
        let at = |flushed| {
            watch::channel(WriterState {
                flushed,
                ..WriterState::default()
            })
        };
        // Something newer was published already.
        let newer = Lsn(x.0 + 50);
        let (state, rx) = at(newer);
        publish(&seg, &state);
        assert_eq!(rx.borrow().flushed, newer, "a status update would go back");
        assert_eq!(rx.borrow().written, x);
        // Forward moves are published.
        let (state, rx) = at(start);
        publish(&seg, &state);
        assert_eq!(rx.borrow().flushed, x);
        // A reset may move it back (a new timeline starting earlier).
        let (state, rx) = at(newer);
        publish_reset(&seg, &state);
        assert_eq!(rx.borrow().flushed, x);
    }

    /// A writer thread on a fresh archive in `dir`, positioned at `start`.
    fn thread_writer(
        dir: &std::path::Path,
        flush_bytes: u64,
        start: Lsn,
    ) -> (tokio::runtime::Runtime, Writer) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let w = writer_on(&rt, dir, flush_bytes, start, true);
        (rt, w)
    }

    /// A writer thread on a fresh archive in `dir`, positioned at `start`, waiting on
    /// `rt`'s timers (and, if `watch_dir`, a directory watch on its reactor).
    fn writer_on(
        rt: &tokio::runtime::Runtime,
        dir: &std::path::Path,
        flush_bytes: u64,
        start: Lsn,
        watch_dir: bool,
    ) -> Writer {
        let mut a = Archive::open(dir, SyncMode::Sync).unwrap();
        let seg = WalSegSize::new(1 << 20).unwrap();
        a.verify_identity(42, seg).unwrap();
        // The tests write arbitrary bytes, not WAL.
        let opts = walsink_archive::WriterOptions {
            validate: false,
            ..default_options(false)
        };
        let segs = a.segment_writer_with(seg, opts).unwrap();
        let cfg = WriterConfig {
            synchronous: false,
            flush_bytes,
            // Never by time: only the size trigger and the sync thread move it.
            flush_interval: Duration::from_secs(3600),
            observer: Default::default(),
        };
        let w = Writer::spawn_watching(
            a,
            segs,
            cfg,
            rt.handle().clone(),
            CancellationToken::new(),
            watch_dir,
        );
        let tli = TimelineId::new(1).unwrap();
        rt.block_on(w.reset(tli, start)).unwrap();
        w
    }

    /// Waits (real time, on a runtime of its own) until the writer publishes a failure.
    fn wait_failed(w: &Writer) -> Arc<ArchiveError> {
        let mut rx = w.state.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| s.error.is_some()))
                .await
                .expect("the writer published a failure")
                .unwrap()
                .error
                .clone()
                .unwrap()
        })
    }

    /// A runtime whose clock is paused: it jumps to the next timer whenever idle, so
    /// any timer the idle writer waited on would fire within the day slept below.
    fn paused_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn an_idle_writer_has_no_timer_and_a_removed_lock_is_found_on_the_next_tick() {
        let d = tempfile::tempdir().unwrap();
        let rt = paused_runtime();
        // No directory watch (as without inotify, or a change on NFS it does not see):
        // only the network task's tick can find the lock gone.
        let w = writer_on(&rt, d.path(), 1 << 30, Lsn(3 << 20), false);
        std::fs::remove_file(d.path().join(walsink_archive::LOCK_FILE)).unwrap();
        rt.block_on(async { tokio::time::sleep(Duration::from_secs(86400)).await });
        assert!(
            w.state.borrow().error.is_none(),
            "the idle writer woke on a timer of its own"
        );
        // The tick: one stat, and the writer is woken to stop.
        w.check_lock();
        let e = wait_failed(&w);
        assert!(
            matches!(*e, ArchiveError::LockLost { how: "removed", .. }),
            "{e}"
        );
        assert!(
            rt.block_on(w.pin()).is_err(),
            "a writer that lost its lock answers nothing"
        );
        assert!(w.shutdown().is_some());
    }

    #[test]
    fn the_inline_writer_publishes_a_lock_removed_as_its_failure_on_the_tick() {
        let d = tempfile::tempdir().unwrap();
        let mut a = Archive::open(d.path(), SyncMode::Sync).unwrap();
        let seg = WalSegSize::new(1 << 20).unwrap();
        a.verify_identity(42, seg).unwrap();
        let segs = a.segment_writer_with(seg, default_options(true)).unwrap();
        let cfg = WriterConfig {
            synchronous: true,
            flush_bytes: 1 << 30,
            flush_interval: Duration::from_secs(3600),
            observer: Default::default(),
        };
        // Outside a runtime: no watch task, only the tick.
        let w = Writer::inline(a, segs, cfg);
        w.check_lock();
        assert!(w.state.borrow().error.is_none(), "the lock is in place");
        std::fs::remove_file(d.path().join(walsink_archive::LOCK_FILE)).unwrap();
        w.check_lock();
        let e = w.state.borrow().error.clone().expect("published at once");
        assert!(
            matches!(*e, ArchiveError::LockLost { how: "removed", .. }),
            "{e}"
        );
    }

    #[test]
    fn a_tick_with_the_lock_in_place_does_not_disturb_the_writer() {
        let d = tempfile::tempdir().unwrap();
        let rt = paused_runtime();
        let w = writer_on(&rt, d.path(), 1 << 30, Lsn(3 << 20), true);
        for _ in 0..100 {
            w.check_lock();
        }
        // Still working: a request is answered.
        rt.block_on(w.pin()).unwrap();
        assert!(w.state.borrow().error.is_none());
        assert_eq!(w.state.borrow().answered, 2, "the reset and the pin");
    }

    #[test]
    fn an_idle_writer_with_a_directory_watch_stops_at_once_when_the_lock_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let (_rt, w) = thread_writer(d.path(), 1 << 30, Lsn(3 << 20));
        let lock = d.path().join(walsink_archive::LOCK_FILE);
        let other = d.path().join("other");
        std::fs::write(&other, b"1\n").unwrap();
        std::fs::rename(&other, &lock).unwrap();
        // No tick: the watch wakes the writer.
        let e = wait_failed(&w);
        assert!(
            matches!(
                *e,
                ArchiveError::LockLost {
                    how: "replaced",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn what_the_sync_thread_makes_durable_is_published_by_the_writer_thread() {
        let d = tempfile::tempdir().unwrap();
        let start = Lsn(3 << 20);
        let (rt, w) = thread_writer(d.path(), 4096, start);
        let tli = TimelineId::new(1).unwrap();
        rt.block_on(async {
            // Over flush_bytes: the writer hands the fdatasync to the sync thread and
            // gets no further command; only the sync thread's wake-up can make the
            // writer publish it.
            w.reserve()
                .await
                .unwrap()
                .send(tli, start, Bytes::from(vec![7u8; 10_000]));
            let end = Lsn(start.0 + 10_000);
            let mut rx = w.state.clone();
            tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| s.flushed == end))
                .await
                .expect("the durable position is published without another command")
                .unwrap();
            assert_eq!(w.written(), end);
            assert!(w.state.borrow().error.is_none());
        });
        drop(w);
    }

    #[test]
    fn the_writer_writes_meta_history_and_gaps_and_gives_the_archive_back() {
        let d = tempfile::tempdir().unwrap();
        let meta = d.path().join(walsink_archive::META_FILE);
        let start = Lsn(3 << 20);
        let (rt, w) = thread_writer(d.path(), 1 << 30, start);
        assert!(!meta.exists(), "verify_identity writes nothing");
        let tli2 = TimelineId::new(2).unwrap();
        rt.block_on(async {
            w.pin().await.unwrap();
            assert!(meta.exists(), "pinned by the writer");
            assert!(!w.has_history(tli2));
            w.write_history(
                tli2,
                b"1\t0/3000000\tno recovery target specified\n".to_vec(),
            )
            .await
            .unwrap();
            assert!(w.has_history(tli2));
            w.record_gap(Gap::new(Lsn(1 << 20), start, 0, "test"))
                .await
                .unwrap();
            assert_eq!(w.close().await.unwrap(), start);
        });
        let a = w.shutdown().expect("the archive comes back");
        let seg = WalSegSize::new(1 << 20).unwrap();
        assert_eq!(a.gaps().len(), 1, "the writer's record is the caller's");
        assert!(a.gap_containing(Lsn(1 << 20), seg).is_some());
        assert!(std::fs::read_to_string(&meta).unwrap().contains("test"));
    }

    #[test]
    fn a_failed_archive_request_fails_the_writer_with_its_error() {
        let d = tempfile::tempdir().unwrap();
        let (rt, w) = thread_writer(d.path(), 1 << 30, Lsn(3 << 20));
        let tli2 = TimelineId::new(2).unwrap();
        std::fs::write(d.path().join(tli2.history_file_name()), b"other").unwrap();
        let e = rt
            .block_on(w.write_history(tli2, b"1\t0/3000000\tx\n".to_vec()))
            .unwrap_err();
        assert!(matches!(*e, ArchiveError::HistoryConflict { .. }), "{e}");
        assert!(w.state.borrow().error.is_some());
        assert!(
            rt.block_on(w.pin()).is_err(),
            "a failed writer answers nothing"
        );
        assert!(w.shutdown().is_some());
    }
}
