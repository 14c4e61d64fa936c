//! The writer thread: the only owner of the segment files (except with
//! `--synchronous`, see below).
//!
//! The network task hands it WAL through a bounded queue ([`QUEUE_MESSAGES`] messages of
//! at most 128 KiB each, so at most 8 MiB in flight); when the queue is full the
//! network task stops reading the socket, so a slow disk slows the server down instead
//! of growing memory. The thread writes each message at its exact offset and runs
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
//! After each flush it publishes the durable position through a `watch` channel. That
//! channel is the only source of the flush LSN the network task reports, which is what
//! makes the reported flush position honest by construction.
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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use walsink_archive::{ArchiveError, LOCK_CHECK_INTERVAL, Prefill, SegmentWriter, WriterOptions};
use walsink_wal::{Lsn, TimelineId};

/// Capacity of the queue between the network task and the writer, in messages.
pub const QUEUE_MESSAGES: usize = 64;

/// How often a write that failed for lack of space is tried again.
pub const DISK_FULL_RETRY: Duration = Duration::from_secs(2);

/// How often a disk that stays full is logged again.
pub const DISK_FULL_REMINDER: Duration = Duration::from_secs(60);

/// Flush policy.
#[derive(Clone, Copy, Debug)]
pub struct WriterConfig {
    /// Flush as soon as the queue drains.
    pub synchronous: bool,
    /// Flush when this many bytes are unsynced.
    pub flush_bytes: u64,
    /// Flush when the oldest unsynced byte is this old.
    pub flush_interval: Duration,
}

/// How the segment files are prepared and written, per mode, chosen by measurement
/// (BENCHMARKS.md): new segments are `fallocate`d (pre-writing zeros doubled the disk
/// writes and cost more than the extent conversions it saves) and prepared ahead on a
/// helper thread, and written through the page cache: `O_DIRECT` cut the CPU per GiB
/// by about a quarter in the default mode but, as each write then waits for the disk,
/// also cut throughput by a third on the reference machine.
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
        ..WriterOptions::default()
    }
}

/// What the writer has made durable, published after every flush.
#[derive(Clone, Debug)]
pub struct WriterState {
    /// End of the bytes durably on disk.
    pub flushed: Lsn,
    /// Set when the writer failed; it stops accepting data.
    pub error: Option<Arc<ArchiveError>>,
}

enum Cmd {
    Data {
        tli: TimelineId,
        start: Lsn,
        data: Bytes,
    },
    Reset {
        tli: TimelineId,
        lsn: Lsn,
        /// Answered once the new position is published, so nothing reads the old
        /// timeline's flushed position as this stream's.
        done: oneshot::Sender<()>,
    },
    Flush,
    Close(oneshot::Sender<Result<Lsn, Arc<ArchiveError>>>),
}

/// The network task's handle on the writer: a thread fed through a queue, or, with
/// `--synchronous`, the segment writer itself, driven inline by the network task.
pub struct Writer {
    mode: Mode,
    /// End of the bytes handed to the operating system (`pwrite` returned), not yet
    /// necessarily durable: the `write` position of status updates.
    written: Arc<AtomicU64>,
    /// Durable position and failure, as published after every flush.
    pub state: watch::Receiver<WriterState>,
}

enum Mode {
    /// The writer thread owns the segment files.
    Thread {
        tx: mpsc::Sender<Cmd>,
        flush_requested: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    },
    /// `--synchronous`: the network task writes each message as it is decoded and runs
    /// fdatasync itself at the group-commit point ([`Writer::idle`]), as pg_receivewal
    /// does, saving the two thread wake-ups per commit the queue and the `watch` cost.
    /// The lock is never contended (one task) and never held across an `await`.
    /// A full disk is not waited out here: it fails the writer, and the session ends
    /// with the retried disk-full error.
    Inline {
        seg: Box<Mutex<SegmentWriter>>,
        state: watch::Sender<WriterState>,
        flush_bytes: u64,
        /// Rechecks the archive's lock file every second while no WAL arrives (no
        /// thread does here); publishes its loss as the writer's failure.
        lock_watch: Option<tokio::task::JoinHandle<()>>,
    },
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
            PermitKind::Inline(w) => w.write_inline(tli, start, &data),
        }
    }
}

impl Writer {
    /// Starts the writer thread. `rt` is the runtime whose timers the thread waits on;
    /// `cancel` (shutdown) ends a wait for disk space.
    pub fn spawn(
        seg: SegmentWriter,
        cfg: WriterConfig,
        rt: tokio::runtime::Handle,
        cancel: CancellationToken,
    ) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE_MESSAGES);
        let flushed = seg.flushed();
        let (state_tx, state) = watch::channel(WriterState {
            flushed,
            error: None,
        });
        let flush_requested = Arc::new(AtomicBool::new(false));
        let req = flush_requested.clone();
        let written = Arc::new(AtomicU64::new(seg.written().0));
        let thread_written = written.clone();
        let thread = std::thread::Builder::new()
            .name("walsink-writer".into())
            .spawn(move || run(seg, cfg, rx, state_tx, req, thread_written, rt, cancel))
            .expect("spawning the writer thread");
        Writer {
            mode: Mode::Thread {
                tx,
                flush_requested,
                thread: Some(thread),
            },
            written,
            state,
        }
    }

    /// The writer for `--synchronous` mode: no thread, the caller's task writes and
    /// flushes (see [`Mode::Inline`]).
    pub fn inline(seg: SegmentWriter, cfg: WriterConfig) -> Writer {
        let (state_tx, state) = watch::channel(WriterState {
            flushed: seg.flushed(),
            error: None,
        });
        let written = Arc::new(AtomicU64::new(seg.written().0));
        let lock_watch = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let (watch, state) = (seg.lock_watch(), state_tx.clone());
            rt.spawn(async move {
                let mut tick = tokio::time::interval(LOCK_CHECK_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if let Err(e) = watch.check() {
                        let e = Arc::new(e);
                        state.send_modify(|s| {
                            s.error.get_or_insert(e);
                        });
                        return;
                    }
                }
            })
        });
        Writer {
            mode: Mode::Inline {
                seg: Box::new(Mutex::new(seg)),
                state: state_tx,
                flush_bytes: cfg.flush_bytes,
                lock_watch,
            },
            written,
            state,
        }
    }

    /// Starts the writer for `cfg`: inline with `--synchronous`, otherwise the thread.
    pub fn start(
        seg: SegmentWriter,
        cfg: WriterConfig,
        rt: tokio::runtime::Handle,
        cancel: CancellationToken,
    ) -> Writer {
        if cfg.synchronous {
            Writer::inline(seg, cfg)
        } else {
            Writer::spawn(seg, cfg, rt, cancel)
        }
    }

    fn lock(m: &Mutex<SegmentWriter>) -> MutexGuard<'_, SegmentWriter> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failed(&self) -> bool {
        self.state.borrow().error.is_some()
    }

    fn write_inline(&self, tli: TimelineId, start: Lsn, data: &[u8]) {
        let Mode::Inline {
            seg,
            state,
            flush_bytes,
            ..
        } = &self.mode
        else {
            unreachable!("inline permit of a writer thread");
        };
        if self.failed() {
            return;
        }
        let mut seg = Self::lock(seg);
        let before = seg.flushed();
        let r = seg.write(tli, start, data);
        self.written.store(seg.written().0, Ordering::Release);
        let r = r.and_then(|()| {
            if seg.unflushed_bytes() >= *flush_bytes {
                debug!(bytes = seg.unflushed_bytes(), "flushing on size");
                seg.flush().map(|_| ())
            } else {
                Ok(())
            }
        });
        match r {
            // A completed segment (renamed, directory synced) may have moved it.
            Ok(()) if seg.flushed() != before => publish(&seg, state),
            Ok(()) => {}
            Err(e) => fail_inline(&seg, state, e),
        }
    }

    /// Whether [`idle`](Self::idle) has something to flush: inline, unflushed bytes
    /// and no failure.
    pub fn idle_pending(&self) -> bool {
        match &self.mode {
            Mode::Inline { seg, .. } => !self.failed() && Self::lock(seg).unflushed_bytes() > 0,
            Mode::Thread { .. } => false,
        }
    }

    /// The group-commit point, called by the network task when it has handled every
    /// whole message received and is about to wait: inline, makes everything written
    /// durable and publishes it (the session reports it at once). Nothing with the
    /// thread, which has its own.
    pub fn idle(&self) {
        let Mode::Inline { seg, state, .. } = &self.mode else {
            return;
        };
        if self.failed() {
            return;
        }
        let mut seg = Self::lock(seg);
        if seg.unflushed_bytes() == 0 {
            return;
        }
        match seg.flush() {
            Ok(_) => publish(&seg, state),
            Err(e) => fail_inline(&seg, state, e),
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
            Mode::Inline { .. } if self.failed() => Err(()),
            Mode::Inline { .. } => Ok(Permit(PermitKind::Inline(self))),
        }
    }

    /// End of the bytes the writer has written to the operating system.
    pub fn written(&self) -> Lsn {
        Lsn(self.written.load(Ordering::Acquire))
    }

    /// Reserves queue space if there is some right now.
    pub fn reserve_now(&self) -> Option<Permit<'_>> {
        match &self.mode {
            Mode::Thread { tx, .. } => tx.try_reserve().ok().map(|p| Permit(PermitKind::Queue(p))),
            Mode::Inline { .. } => Some(Permit(PermitKind::Inline(self))),
        }
    }

    /// Tells the writer to continue at `lsn` on `tli` (a stream start, segment aligned).
    /// Returns once the thread has taken the new position and published it.
    pub async fn reset(&self, tli: TimelineId, lsn: Lsn) -> Result<(), ()> {
        match &self.mode {
            Mode::Thread { tx, .. } => {
                let (done, ack) = oneshot::channel();
                tx.send(Cmd::Reset { tli, lsn, done })
                    .await
                    .map_err(|_| ())?;
                ack.await.map_err(|_| ())
            }
            Mode::Inline { .. } if self.failed() => Err(()),
            Mode::Inline { seg, state, .. } => {
                let mut seg = Self::lock(seg);
                seg.reset_position(tli, lsn);
                self.written.store(seg.written().0, Ordering::Release);
                if seg.is_broken() {
                    // Closing the segment still open failed (and was logged).
                    let e = seg.flush().expect_err("a broken writer fails");
                    fail_inline(&seg, state, e);
                    return Err(());
                }
                publish_reset(&seg, state);
                Ok(())
            }
        }
    }

    /// Asks for a flush soon, without waiting for it. (Inline, the next
    /// [`idle`](Self::idle) flushes anyway.)
    pub fn request_flush(&self) {
        if let Mode::Thread {
            tx,
            flush_requested,
            ..
        } = &self.mode
            && tx.try_send(Cmd::Flush).is_err()
        {
            // Queue full: the thread checks this flag after every command.
            flush_requested.store(true, Ordering::Release);
        }
    }

    /// Writes out everything queued, flushes, leaves an incomplete segment as
    /// `.partial`, and returns the durable position.
    pub async fn close(&self) -> Result<Lsn, Arc<ArchiveError>> {
        match &self.mode {
            Mode::Thread { tx, .. } => {
                let (tx2, rx) = oneshot::channel();
                if tx.send(Cmd::Close(tx2)).await.is_err() {
                    return Err(self.failure());
                }
                rx.await.unwrap_or_else(|_| Err(self.failure()))
            }
            Mode::Inline { seg, state, .. } => {
                let mut seg = Self::lock(seg);
                // After a failed write (not a failed sync) what did get written is still
                // made durable, as the thread does before waiting for disk space.
                if seg.is_broken() {
                    return Err(self.failure());
                }
                match seg.close() {
                    Ok(()) => {
                        publish(&seg, state);
                        match self.state.borrow().error.clone() {
                            Some(e) => Err(e),
                            None => Ok(seg.flushed()),
                        }
                    }
                    Err(e) => {
                        fail_inline(&seg, state, e);
                        Err(self.failure())
                    }
                }
            }
        }
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

    /// Stops the writer (after a final flush) and waits for it.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        match &mut self.mode {
            Mode::Thread { tx, thread, .. } => {
                let (closed, _) = mpsc::channel(1);
                drop(std::mem::replace(tx, closed));
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
            Mode::Inline {
                seg,
                state,
                lock_watch,
                ..
            } => {
                if let Some(t) = lock_watch.take() {
                    t.abort();
                }
                let mut seg = Self::lock(seg);
                if !seg.is_broken() {
                    match seg.close() {
                        Ok(()) => publish(&seg, state),
                        Err(e) => fail_inline(&seg, state, e),
                    }
                }
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Publishes an inline failure (and whatever became durable before it).
fn fail_inline(seg: &SegmentWriter, state: &watch::Sender<WriterState>, e: ArchiveError) {
    let e = Arc::new(e);
    let f = seg.flushed();
    state.send_modify(|s| {
        s.flushed = f;
        s.error = Some(e);
    });
}

/// Whether the disk is full, for logging it once and then at a low rate.
#[derive(Default)]
struct DiskFull {
    /// When the condition was last logged at warn level.
    announced_at: Option<Instant>,
}

/// How [`DiskFull::retry`] ended.
enum Retried<T> {
    /// The operation succeeded.
    Done(T),
    /// It failed for another reason, or the writer broke.
    Failed(ArchiveError),
    /// Shutdown was requested while waiting for space.
    Abandoned,
}

impl DiskFull {
    /// Runs `op` until it succeeds, fails other than for a full disk (or breaks the
    /// writer), or shutdown is requested while waiting for space.
    fn retry<T>(
        &mut self,
        seg: &mut SegmentWriter,
        state: &watch::Sender<WriterState>,
        cancel: &CancellationToken,
        rt: &tokio::runtime::Handle,
        mut op: impl FnMut(&mut SegmentWriter) -> Result<T, ArchiveError>,
    ) -> Retried<T> {
        // (when the pause began, whether it was logged at warn level, where)
        let mut paused: Option<(Instant, bool, Lsn)> = None;
        loop {
            let e = match op(seg) {
                Ok(v) => {
                    if let Some((since, announced, at)) = paused {
                        let secs = since.elapsed().as_secs();
                        if announced {
                            info!(
                                "disk space is available again: resumed writing WAL at {at} after {secs} s"
                            );
                        } else {
                            debug!("resumed writing WAL at {at} after {secs} s");
                        }
                    }
                    return Retried::Done(v);
                }
                Err(e) if e.is_disk_full() && !seg.is_broken() => e,
                Err(e) => return Retried::Failed(e),
            };
            if paused.is_none() && seg.unflushed_bytes() > 0 {
                // Make what did get written durable (and reported) before waiting.
                match seg.flush() {
                    Ok(_) => {}
                    Err(e) if e.is_disk_full() && !seg.is_broken() => {}
                    Err(e) => return Retried::Failed(e),
                }
            }
            // A segment may also have been completed before the failure.
            publish(seg, state);
            let now = Instant::now();
            let due = self
                .announced_at
                .is_none_or(|t| now.duration_since(t) >= DISK_FULL_REMINDER);
            match &mut paused {
                None => {
                    paused = Some((now, due, seg.written()));
                    if due {
                        self.announced_at = Some(now);
                        warn!(
                            "disk full: pausing WAL writes at {} ({e}); WAL is durable up to {} and the flush position reported to the server stays there, so with a replication slot the server keeps the rest; retrying every {} s",
                            seg.written(),
                            seg.flushed(),
                            DISK_FULL_RETRY.as_secs()
                        );
                    } else {
                        debug!("disk full again at {}: {e}", seg.written());
                    }
                }
                Some((since, announced, _)) => {
                    if due {
                        self.announced_at = Some(now);
                        *announced = true;
                        warn!(
                            "disk still full after {} s: WAL writes paused at {} ({e})",
                            since.elapsed().as_secs(),
                            seg.written()
                        );
                    } else {
                        debug!("disk still full: {e}");
                    }
                }
            }
            let cancelled = rt.block_on(async {
                tokio::select! {
                    _ = cancel.cancelled() => true,
                    _ = tokio::time::sleep(DISK_FULL_RETRY) => false,
                }
            });
            if cancelled {
                warn!(
                    "stopping while the disk is full: WAL received after {} was not written (it was never reported flushed; the next start streams it again)",
                    seg.written()
                );
                return Retried::Abandoned;
            }
        }
    }
}

/// Publishes the durable position if it moved forward. Only forward: the sync thread's
/// listener may have published a newer position after `seg.flushed()` was read here,
/// and a status update must never report less than one before it.
fn publish(seg: &SegmentWriter, state: &watch::Sender<WriterState>) {
    let f = seg.flushed();
    state.send_if_modified(|s| {
        let newer = f > s.flushed;
        if newer {
            s.flushed = f;
        }
        newer
    });
}

/// Publishes the durable position after a reset of the stream position, which may
/// move it back (a new timeline starting before the old one's end).
fn publish_reset(seg: &SegmentWriter, state: &watch::Sender<WriterState>) {
    let f = seg.flushed();
    state.send_if_modified(|s| {
        let changed = s.flushed != f;
        s.flushed = f;
        changed
    });
}

#[allow(clippy::too_many_arguments)]
fn run(
    mut seg: SegmentWriter,
    cfg: WriterConfig,
    mut rx: mpsc::Receiver<Cmd>,
    state: watch::Sender<WriterState>,
    flush_requested: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    rt: tokio::runtime::Handle,
    cancel: CancellationToken,
) {
    // Positions the sync thread makes durable are published the moment it does.
    let state = Arc::new(state);
    let listener_state = Arc::clone(&state);
    seg.set_flush_listener(Arc::new(move |at| {
        listener_state.send_if_modified(|s| {
            let newer = at > s.flushed;
            if newer {
                s.flushed = at;
            }
            newer
        });
    }));
    let mut oldest_unflushed: Option<Instant> = None;
    let mut disk = DiskFull::default();
    // Set when shutdown came while waiting for space: WAL still arriving is dropped.
    let mut abandoned = false;
    let fail = |e: ArchiveError, state: &watch::Sender<WriterState>| {
        let e = Arc::new(e);
        state.send_modify(|s| s.error = Some(e.clone()));
        e
    };
    // A flush, retried while the disk is full. `Err` is the error that stops the thread.
    let flush = |seg: &mut SegmentWriter,
                 oldest: &mut Option<Instant>,
                 abandoned: &mut bool,
                 disk: &mut DiskFull|
     -> Result<(), ArchiveError> {
        if *abandoned {
            // One attempt: whatever fits is made durable.
            return match seg.flush() {
                Err(e) if e.is_disk_full() && !seg.is_broken() => Ok(()),
                r => r.map(|_| *oldest = None),
            };
        }
        match disk.retry(seg, &state, &cancel, &rt, |seg| seg.flush()) {
            Retried::Done(_) => {
                *oldest = None;
                Ok(())
            }
            Retried::Failed(e) => Err(e),
            Retried::Abandoned => {
                *abandoned = true;
                Ok(())
            }
        }
    };
    loop {
        let cmd = match rx.try_recv() {
            Ok(c) => Some(c),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            Err(mpsc::error::TryRecvError::Empty) => {
                // The queue is drained: a group-commit point.
                let unflushed = seg.unflushed_bytes();
                if unflushed > 0 {
                    let due = cfg.synchronous
                        || flush_requested.swap(false, Ordering::AcqRel)
                        || oldest_unflushed.is_some_and(|t| t.elapsed() >= cfg.flush_interval);
                    if due {
                        if let Err(e) =
                            flush(&mut seg, &mut oldest_unflushed, &mut abandoned, &mut disk)
                        {
                            fail(e, &state);
                            return;
                        }
                        publish(&seg, &state);
                        continue;
                    }
                    let deadline =
                        oldest_unflushed.unwrap_or_else(Instant::now) + cfg.flush_interval;
                    match rt.block_on(async {
                        tokio::time::timeout_at(deadline.into(), rx.recv()).await
                    }) {
                        Ok(c) => c,
                        Err(_) => continue, // deadline passed: flush on the next turn
                    }
                } else {
                    // Idle: recheck the archive's lock file now and then (another
                    // program may remove it while no WAL arrives).
                    match rt.block_on(async {
                        tokio::time::timeout(LOCK_CHECK_INTERVAL, rx.recv()).await
                    }) {
                        Ok(c) => c,
                        Err(_) => {
                            if let Err(e) = seg.check_lock() {
                                fail(e, &state);
                                return;
                            }
                            continue;
                        }
                    }
                }
            }
        };
        let Some(cmd) = cmd else {
            // Channel closed: final flush, keep the .partial.
            if let Err(e) = seg.close() {
                fail(e, &state);
            } else {
                publish(&seg, &state);
            }
            return;
        };
        let result = match cmd {
            Cmd::Data { .. } if abandoned => Ok(()),
            Cmd::Data { tli, start, data } => {
                let before = seg.flushed();
                // After a failed write, the retry continues where the data got to.
                let end = start.0 + data.len() as u64;
                let mut from = start;
                let r = disk.retry(&mut seg, &state, &cancel, &rt, |seg| {
                    let skip = usize::try_from(from.0 - start.0).expect("within the data");
                    let r = seg.write(tli, from, &data[skip..]);
                    let w = seg.written();
                    written.store(w.0, Ordering::Release);
                    if r.is_err() && w > from && w.0 <= end {
                        from = w;
                    }
                    r
                });
                match r {
                    Retried::Done(()) => {
                        if seg.unflushed_bytes() > 0 && oldest_unflushed.is_none() {
                            oldest_unflushed = Some(Instant::now());
                        }
                        if seg.unflushed_bytes() == 0 {
                            oldest_unflushed = None;
                        }
                        if seg.flushed() != before {
                            publish(&seg, &state);
                        }
                        if seg.unrequested_bytes() >= cfg.flush_bytes {
                            // With background sync this only starts the fdatasync: the
                            // sync thread publishes its position when it returns.
                            debug!(bytes = seg.unrequested_bytes(), "flushing on size");
                            match seg.flush_behind() {
                                Ok(()) => {
                                    publish(&seg, &state);
                                    Ok(())
                                }
                                Err(e) if e.is_disk_full() && !seg.is_broken() => flush(
                                    &mut seg,
                                    &mut oldest_unflushed,
                                    &mut abandoned,
                                    &mut disk,
                                )
                                .map(|_| publish(&seg, &state)),
                                Err(e) => Err(e),
                            }
                        } else {
                            Ok(())
                        }
                    }
                    Retried::Failed(e) => Err(e),
                    Retried::Abandoned => {
                        abandoned = true;
                        Ok(())
                    }
                }
            }
            Cmd::Reset { tli, lsn, done } => {
                seg.reset_position(tli, lsn);
                written.store(seg.written().0, Ordering::Release);
                oldest_unflushed = None;
                publish_reset(&seg, &state);
                let _ = done.send(());
                Ok(())
            }
            Cmd::Flush => flush(&mut seg, &mut oldest_unflushed, &mut abandoned, &mut disk)
                .map(|_| publish(&seg, &state)),
            Cmd::Close(reply) => {
                let closed = if abandoned {
                    seg.close()
                } else {
                    match disk.retry(&mut seg, &state, &cancel, &rt, |seg| seg.close()) {
                        Retried::Done(()) => Ok(()),
                        Retried::Failed(e) => Err(e),
                        Retried::Abandoned => {
                            abandoned = true;
                            seg.close()
                        }
                    }
                };
                match closed {
                    Ok(()) => {
                        oldest_unflushed = None;
                        publish(&seg, &state);
                        let _ = reply.send(Ok(seg.flushed()));
                        Ok(())
                    }
                    Err(e) => {
                        let e = fail(e, &state);
                        let _ = reply.send(Err(e));
                        return;
                    }
                }
            }
        };
        if let Err(e) = result {
            fail(e, &state);
            return;
        }
        if flush_requested.swap(false, Ordering::AcqRel) && seg.unflushed_bytes() > 0 {
            if let Err(e) = flush(&mut seg, &mut oldest_unflushed, &mut abandoned, &mut disk) {
                fail(e, &state);
                return;
            }
            publish(&seg, &state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walsink_archive::{Archive, SyncMode};
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
        // The sync thread's listener already published a newer position.
        let newer = Lsn(x.0 + 50);
        let (state, rx) = watch::channel(WriterState {
            flushed: newer,
            error: None,
        });
        publish(&seg, &state);
        assert_eq!(rx.borrow().flushed, newer, "a status update would go back");
        // Forward moves are published.
        let (state, rx) = watch::channel(WriterState {
            flushed: start,
            error: None,
        });
        publish(&seg, &state);
        assert_eq!(rx.borrow().flushed, x);
        // A reset may move it back (a new timeline starting earlier).
        let (state, rx) = watch::channel(WriterState {
            flushed: newer,
            error: None,
        });
        publish_reset(&seg, &state);
        assert_eq!(rx.borrow().flushed, x);
    }
}
