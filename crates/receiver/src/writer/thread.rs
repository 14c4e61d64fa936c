//! The writer thread: owns the archive (segment files, `.walsink.meta`, history files)
//! and is the one place that publishes the durable position (see the module docs).

use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use walsink_archive::{Archive, ArchiveError, SegmentWriter};
use walsink_wal::Lsn;

use super::dirwatch::DirWatch;
use super::{
    Cmd, DISK_FULL_REMINDER, DISK_FULL_RETRY, Request, WriterConfig, WriterState, archive_request,
    publish, publish_failure, publish_reset,
};

/// The thread's state.
struct Thread {
    archive: Archive,
    seg: SegmentWriter,
    cfg: WriterConfig,
    state: watch::Sender<WriterState>,
    rt: tokio::runtime::Handle,
    cancel: CancellationToken,
    disk: DiskFull,
    /// When the oldest byte not yet durable was written.
    oldest_unflushed: Option<Instant>,
    /// Set when shutdown came while waiting for space: WAL still arriving is dropped.
    abandoned: bool,
    /// Requests answered.
    answered: u64,
    /// Wakes the idle thread when the directory changes (see `dirwatch`).
    watch: Option<DirWatch>,
}

/// Runs the writer thread until the queue closes or the writer fails; returns the
/// archive. `watch_dir`: wake on changes of the directory (inotify) while idle.
#[allow(
    clippy::too_many_arguments,
    reason = "the thread's inputs, handed over by Writer::spawn"
)]
pub(super) fn run(
    archive: Archive,
    seg: SegmentWriter,
    cfg: WriterConfig,
    mut rx: mpsc::Receiver<Cmd>,
    state: watch::Sender<WriterState>,
    rt: tokio::runtime::Handle,
    cancel: CancellationToken,
    watch_dir: bool,
) -> Archive {
    let disk = DiskFull {
        announced_at: None,
        observer: cfg.observer.clone(),
    };
    let watch = watch_dir
        .then(|| {
            let _in_runtime = rt.enter();
            DirWatch::new(archive.path())
        })
        .flatten();
    let mut t = Thread {
        archive,
        seg,
        cfg,
        state,
        rt,
        cancel,
        disk,
        oldest_unflushed: None,
        abandoned: false,
        answered: 0,
        watch,
    };
    loop {
        let cmd = match rx.try_recv() {
            Ok(c) => Some(c),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            Err(mpsc::error::TryRecvError::Empty) => {
                // The queue is drained: a group-commit point.
                if t.seg.unflushed_bytes() > 0 {
                    let due = t.cfg.synchronous
                        || t.oldest_unflushed
                            .is_some_and(|at| at.elapsed() >= t.cfg.flush_interval);
                    if due {
                        if let Err(e) = t.flush() {
                            t.fail(e);
                            break;
                        }
                        publish(&t.seg, &t.state);
                        continue;
                    }
                    let deadline =
                        t.oldest_unflushed.unwrap_or_else(Instant::now) + t.cfg.flush_interval;
                    match t.rt.block_on(async {
                        tokio::time::timeout_at(deadline.into(), rx.recv()).await
                    }) {
                        Ok(c) => c,
                        Err(_) => continue, // deadline passed: flush on the next turn
                    }
                } else {
                    // Idle, with no timer: recheck the archive's lock file (another
                    // program may remove it while no WAL arrives) when the directory
                    // changes; the network task's ticks check it too, and send
                    // `CheckLock` when it is gone (see `dirwatch`).
                    let rt = t.rt.clone();
                    let watch = &mut t.watch;
                    let woke = rt.block_on(async {
                        match watch.as_mut() {
                            Some(w) => tokio::select! {
                                c = rx.recv() => Ok(c),
                                r = w.changed() => Err(r.is_err()),
                            },
                            None => Ok(rx.recv().await),
                        }
                    });
                    match woke {
                        Ok(c) => c,
                        Err(broken) => {
                            if broken {
                                debug!(
                                    "the directory watch failed; the lock file is rechecked on the status interval"
                                );
                                t.watch = None;
                            }
                            if let Err(e) = t.seg.check_lock() {
                                t.fail(e);
                                break;
                            }
                            continue;
                        }
                    }
                }
            }
        };
        let Some(cmd) = cmd else {
            // Channel closed: final flush, keep the .partial.
            match t.seg.close() {
                Ok(()) => publish(&t.seg, &t.state),
                Err(e) => t.fail(e),
            }
            break;
        };
        if let Err(e) = t.handle(cmd) {
            t.fail(e);
            break;
        }
        // The one place the durable position is published (also what the sync
        // thread made durable meanwhile).
        publish(&t.seg, &t.state);
    }
    t.archive
}

impl Thread {
    fn fail(&self, e: ArchiveError) {
        publish_failure(&self.seg, &self.state, e);
    }

    /// Counts a request as answered, publishing the positions with the answer.
    fn answer(&mut self) {
        self.answered += 1;
        let n = self.answered;
        publish(&self.seg, &self.state);
        self.state.send_modify(|s| s.answered = n);
    }

    /// A flush, retried while the disk is full.
    fn flush(&mut self) -> Result<(), ArchiveError> {
        if self.abandoned {
            // One attempt: whatever fits is made durable.
            return match self.seg.flush() {
                Err(e) if e.is_disk_full() && !self.seg.is_broken() => Ok(()),
                r => r.map(|_| self.oldest_unflushed = None),
            };
        }
        match self.disk.retry(
            &mut self.seg,
            &self.state,
            &self.cancel,
            &self.rt,
            SegmentWriter::flush,
        ) {
            Retried::Done(_) => {
                self.oldest_unflushed = None;
                Ok(())
            }
            Retried::Failed(e) => Err(e),
            Retried::Abandoned => {
                self.abandoned = true;
                Ok(())
            }
        }
    }

    /// Handles one command. `Err` is the error that stops the thread.
    fn handle(&mut self, cmd: Cmd) -> Result<(), ArchiveError> {
        match cmd {
            Cmd::Data { .. } if self.abandoned => Ok(()),
            Cmd::Data { tli, start, data } => {
                // After a failed write, the retry continues where the data got to.
                let end = start.0 + data.len() as u64;
                let mut from = start;
                let r =
                    self.disk
                        .retry(&mut self.seg, &self.state, &self.cancel, &self.rt, |seg| {
                            let skip = usize::try_from(from.0 - start.0).expect("within the data");
                            let r = seg.write(tli, from, &data[skip..]);
                            let w = seg.written();
                            if r.is_err() && w > from && w.0 <= end {
                                from = w;
                            }
                            r
                        });
                match r {
                    Retried::Done(()) => {}
                    Retried::Failed(e) => return Err(e),
                    Retried::Abandoned => {
                        self.abandoned = true;
                        return Ok(());
                    }
                }
                if let Some(f) = self.seg.take_new_format() {
                    self.archive.pin_format(f)?;
                }
                if self.seg.unflushed_bytes() == 0 {
                    self.oldest_unflushed = None;
                } else if self.oldest_unflushed.is_none() {
                    self.oldest_unflushed = Some(Instant::now());
                }
                if self.seg.unrequested_bytes() < self.cfg.flush_bytes {
                    return Ok(());
                }
                // With background sync this only starts the fdatasync: the sync
                // thread wakes this thread when it returns.
                debug!(bytes = self.seg.unrequested_bytes(), "flushing on size");
                match self.seg.flush_behind() {
                    Err(e) if e.is_disk_full() && !self.seg.is_broken() => self.flush(),
                    r => r,
                }
            }
            Cmd::Flush if self.seg.unflushed_bytes() > 0 => self.flush(),
            Cmd::Flush | Cmd::Synced => Ok(()),
            Cmd::CheckLock => self.seg.check_lock(),
            Cmd::Request(Request::Reset { tli, lsn }) => {
                self.seg.reset_position(tli, lsn);
                if self.seg.is_broken() {
                    // Closing the segment still open failed (and was logged).
                    return Err(self.seg.flush().expect_err("a broken writer fails"));
                }
                self.oldest_unflushed = None;
                publish_reset(&self.seg, &self.state);
                self.answer();
                Ok(())
            }
            Cmd::Request(Request::Close) => {
                let closed = if self.abandoned {
                    self.seg.close()
                } else {
                    match self.disk.retry(
                        &mut self.seg,
                        &self.state,
                        &self.cancel,
                        &self.rt,
                        SegmentWriter::close,
                    ) {
                        Retried::Done(()) => Ok(()),
                        Retried::Failed(e) => Err(e),
                        Retried::Abandoned => {
                            self.abandoned = true;
                            self.seg.close()
                        }
                    }
                };
                closed?;
                self.oldest_unflushed = None;
                self.answer();
                Ok(())
            }
            Cmd::Request(req) => {
                archive_request(&mut self.archive, req)?;
                self.answer();
                Ok(())
            }
        }
    }
}

/// Whether the disk is full, for logging it once and then at a low rate.
struct DiskFull {
    /// When the condition was last logged at warn level.
    announced_at: Option<Instant>,
    /// Told while the writer waits for space.
    observer: crate::observe::SourceState,
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
                        self.observer.set_disk_full(false);
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
                Err(e) => {
                    self.observer.set_disk_full(false);
                    return Retried::Failed(e);
                }
            };
            if paused.is_none() && seg.unflushed_bytes() > 0 {
                // Make what did get written durable (and reported) before waiting.
                match seg.flush() {
                    Ok(_) => {}
                    Err(e) if e.is_disk_full() && !seg.is_broken() => {}
                    Err(e) => {
                        self.observer.set_disk_full(false);
                        return Retried::Failed(e);
                    }
                }
            }
            // A segment may also have been completed before the failure; and the
            // written position moved.
            publish(seg, state);
            let now = Instant::now();
            let due = self
                .announced_at
                .is_none_or(|t| now.duration_since(t) >= DISK_FULL_REMINDER);
            match &mut paused {
                None => {
                    self.observer.set_disk_full(true);
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
                self.observer.set_disk_full(false);
                warn!(
                    "stopping while the disk is full: WAL received after {} was not written (it was never reported flushed; the next start streams it again)",
                    seg.written()
                );
                return Retried::Abandoned;
            }
        }
    }
}
