//! The writer thread: the only owner of the segment files.
//!
//! The network task hands it WAL through a bounded queue ([`QUEUE_MESSAGES`] messages of
//! at most 128 KiB each, so at most 8 MiB in flight); when the queue is full the
//! network task stops reading the socket, so a slow disk slows the server down instead
//! of growing memory. The thread writes each message at its exact offset and runs
//! fdatasync by policy (group commit):
//!
//! * `--synchronous`: whenever the queue is drained;
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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use walsink_archive::{ArchiveError, Prefill, SegmentWriter, WriterOptions};
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
/// For benchmark comparisons only, `WALSINK_BENCH_PREFILL` (`zeros`|`fallocate`),
/// `WALSINK_BENCH_DIRECT` (`0`|`1`) and `WALSINK_BENCH_WRITE_BEHIND` (bytes) override
/// the choices.
pub fn writer_options(cfg: &WriterConfig) -> WriterOptions {
    let mut o = WriterOptions {
        prefill: Prefill::Fallocate,
        prepare_ahead: true,
        direct_io: false,
        write_behind: if cfg.synchronous { 0 } else { 1 << 20 },
    };
    let env = |k: &str| std::env::var(k).ok();
    match env("WALSINK_BENCH_PREFILL").as_deref() {
        Some("zeros") => o.prefill = Prefill::Zeros,
        Some("fallocate") => o.prefill = Prefill::Fallocate,
        _ => {}
    }
    if let Some(v) = env("WALSINK_BENCH_DIRECT") {
        o.direct_io = v != "0";
    }
    if let Some(v) = env("WALSINK_BENCH_WRITE_BEHIND").and_then(|v| v.parse().ok()) {
        o.write_behind = v;
    }
    o
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

/// The network task's handle on the writer thread.
pub struct Writer {
    tx: mpsc::Sender<Cmd>,
    flush_requested: Arc<AtomicBool>,
    /// End of the bytes the thread has handed to the operating system (`pwrite`
    /// returned), not yet necessarily durable: the `write` position of status updates.
    written: Arc<AtomicU64>,
    /// Durable position and failure, as published by the thread.
    pub state: watch::Receiver<WriterState>,
    thread: Option<JoinHandle<()>>,
}

/// A permit to queue one message, reserved while waiting for queue space.
pub struct Permit<'a>(mpsc::Permit<'a, Cmd>);

impl Permit<'_> {
    /// Queues WAL bytes starting at `start`.
    pub fn send(self, tli: TimelineId, start: Lsn, data: Bytes) {
        self.0.send(Cmd::Data { tli, start, data });
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
            tx,
            flush_requested,
            written,
            state,
            thread: Some(thread),
        }
    }

    /// Waits for room in the queue. Cancellation-safe.
    pub async fn reserve(&self) -> Result<Permit<'_>, ()> {
        self.tx.reserve().await.map(Permit).map_err(|_| ())
    }

    /// End of the bytes the thread has written to the operating system.
    pub fn written(&self) -> Lsn {
        Lsn(self.written.load(Ordering::Acquire))
    }

    /// Reserves queue space if there is some right now.
    pub fn reserve_now(&self) -> Option<Permit<'_>> {
        self.tx.try_reserve().ok().map(Permit)
    }

    /// Tells the writer to continue at `lsn` on `tli` (a stream start, segment aligned).
    /// Returns once the thread has taken the new position and published it.
    pub async fn reset(&self, tli: TimelineId, lsn: Lsn) -> Result<(), ()> {
        let (done, ack) = oneshot::channel();
        self.tx
            .send(Cmd::Reset { tli, lsn, done })
            .await
            .map_err(|_| ())?;
        ack.await.map_err(|_| ())
    }

    /// Asks for a flush soon, without waiting for it.
    pub fn request_flush(&self) {
        if self.tx.try_send(Cmd::Flush).is_err() {
            // Queue full: the thread checks this flag after every command.
            self.flush_requested.store(true, Ordering::Release);
        }
    }

    /// Writes out everything queued, flushes, leaves an incomplete segment as
    /// `.partial`, and returns the durable position.
    pub async fn close(&self) -> Result<Lsn, Arc<ArchiveError>> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close(tx)).await.is_err() {
            return Err(self.failure());
        }
        rx.await.unwrap_or_else(|_| Err(self.failure()))
    }

    /// The error that stopped the thread.
    pub fn failure(&self) -> Arc<ArchiveError> {
        self.state.borrow().error.clone().unwrap_or_else(|| {
            Arc::new(ArchiveError::Io {
                path: Default::default(),
                op: "write WAL (writer thread ended)",
                source: std::io::Error::other("writer thread ended"),
            })
        })
    }

    /// Stops the thread (after a final flush) and waits for it.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let (tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
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

/// Publishes the durable position if it changed.
fn publish(seg: &SegmentWriter, state: &watch::Sender<WriterState>) {
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
                    rt.block_on(async { rx.recv().await })
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
                        if seg.unflushed_bytes() >= cfg.flush_bytes {
                            debug!(bytes = seg.unflushed_bytes(), "flushing on size");
                            flush(&mut seg, &mut oldest_unflushed, &mut abandoned, &mut disk)
                                .map(|_| publish(&seg, &state))
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
                publish(&seg, &state);
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
