//! One `START_REPLICATION` session: the tokio driver around
//! [`walsink_protocol::session::ReplicationSession`].
//!
//! The session (in the protocol crate) holds every rule of the copy-both exchange; this
//! driver only moves bytes, positions and time between it and the world:
//!
//! * the socket: it reads in large chunks ([`Connection::fill`] stops at frame ends, so
//!   CopyData frames are split off the read buffer without copying) and feeds them to
//!   [`ReplicationSession::handle_bytes`]; it writes what
//!   [`ReplicationSession::poll_transmit`] produces;
//! * the writer: WAL events go to its queue ([`Writer::reserve_now`]); when the queue is
//!   full the driver keeps the event, stops reading the socket (backpressure) and tells the
//!   session ([`ReplicationSession::pause_reading`]), whose timers keep running; the
//!   durable position (the writer's `watch` channel) goes to
//!   [`ReplicationSession::handle_flushed`], the written position to
//!   [`ReplicationSession::handle_written`]. With `--synchronous` the writer is inline and
//!   the driver calls [`Writer::idle`] when no whole message is left to handle: the
//!   group-commit point;
//! * time: one resettable sleep at [`ReplicationSession::poll_timeout`], re-armed only when
//!   the deadline moves earlier (re-arming per message was a measurable part of the
//!   per-commit CPU with `--synchronous`); a deadline already past is served without
//!   sleeping;
//!   The same tick rechecks the archive's lock file for an idle writer
//!   ([`Writer::check_lock`]), which has no timer of its own;
//! * cancellation (SIGINT/SIGTERM): [`ReplicationSession::close`].
//!
//! Errors of the session become [`ReceiverError`]s in one place, `session_error`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use walsink_protocol::frame::BackendMessage;
use walsink_protocol::query::{
    NextTimeline, SlotInfo, parse_read_replication_slot, read_replication_slot_command,
};
use walsink_protocol::session::{
    Event, Phase, ReplicationSession, SessionConfig, SessionError, Transmit,
};
use walsink_wal::{Lsn, TimelineId};

use crate::conn::Connection;
use crate::error::{Context, ReceiverError};
use crate::observe::{Phase as SourcePhase, SourceState};
use crate::writer::Writer;

/// A deadline for a timer with nothing to time.
const FAR: Duration = Duration::from_secs(24 * 3600);

/// How often the timer ticks while the session has nothing to time (status updates and
/// the receive timeout both disabled): the tick is also when an idle writer's lock file
/// is rechecked and idle read buffers are released.
const QUIET_TICK: Duration = Duration::from_secs(10);

/// Settings of one streaming session.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// Physical slot to stream from.
    pub slot: Option<String>,
    /// Stop once all WAL before this position is received and flushed.
    pub endpos: Option<Lsn>,
    /// Interval of periodic status updates; `None` disables them.
    pub status_interval: Option<Duration>,
    /// Give up on a server that has sent nothing for this long (it is pinged with a
    /// reply request after half of it); `None` disables the check.
    pub receive_timeout: Option<Duration>,
    /// Report the flush position (with a slot or `--synchronous`, and not `--no-sync`).
    pub report_flush: bool,
    /// `--synchronous`: the writer is inline, and every flush is reported at once (as with
    /// any flush reporting; the session reports every new durable position at once).
    pub synchronous: bool,
    /// No flush position below this is reported ([`Lsn::INVALID`]: no floor). After a
    /// restart the session re-streams the archive's `.partial` from its segment start, and
    /// the positions of that catch-up lie below the ones reported before the restart: the
    /// floor is where the `.partial`'s WAL ends (the slot's restart_lsn, where the server
    /// can tell it, is a second floor). Durability is unaffected: what is reported is still
    /// only what the writer made durable in this session.
    pub flush_floor: Lsn,
    /// Where the positions, the last message time and the phase are published.
    pub observer: SourceState,
}

/// Why a session ended without an error.
#[derive(Debug)]
pub enum StreamEnd {
    /// The server finished a historic timeline; streaming continues on the next one.
    EndOfTimeline {
        /// The next timeline and its start (checked by the session: after this timeline,
        /// and not past `received`).
        next: NextTimeline,
        /// Where this session's WAL ended.
        received: Lsn,
    },
    /// `--endpos` was reached.
    EndposReached,
    /// Shutdown was requested (SIGINT/SIGTERM).
    Cancelled,
}

/// What the archive must get before this session's first WAL: written only once the server
/// has sent WAL (or answered `START_REPLICATION` with the next timeline), so a start the
/// server refuses (slot in use, a missing slot on a server without READ_REPLICATION_SLOT,
/// or WAL already removed, which a walsender reports after entering copy mode) leaves the
/// archive directory as it was.
#[derive(Debug, Default)]
pub struct FirstWrites {
    /// Pin the directory to the server's system (`.walsink.meta`), if not pinned yet.
    pub pin: bool,
    /// The history file of the session's timeline, fetched before the session.
    pub history: Option<(TimelineId, Vec<u8>)>,
}

/// Streams `tli` from `start` until the timeline ends, `--endpos`, cancellation or an
/// error. The writer must already be positioned at `start`. `first` is written through
/// the writer before the session's first WAL.
/// `streaming` is set once the server has entered copy mode, so the caller can tell a
/// connection that streamed (and then broke) from one that never got that far.
#[allow(
    clippy::too_many_arguments,
    reason = "the session's inputs, each from a different owner in run.rs"
)]
pub async fn stream(
    conn: &mut Connection,
    writer: &Writer,
    tli: TimelineId,
    start: Lsn,
    opts: &StreamOptions,
    cancel: &CancellationToken,
    streaming: &AtomicBool,
    first: FirstWrites,
) -> Result<StreamEnd, ReceiverError> {
    let confirmed = slot_confirmed_flush(conn, opts)
        .await?
        .max(opts.flush_floor);
    let mut session = ReplicationSession::new(SessionConfig {
        slot: opts.slot.clone(),
        timeline: tli,
        start,
        endpos: opts.endpos,
        status_interval: opts.status_interval,
        receive_timeout: opts.receive_timeout,
        report_flush: opts.report_flush,
        confirmed,
    });
    opts.observer.stream_started_at(start, opts.flush_floor);
    opts.observer.set_paused(false);
    let mut driver = Driver {
        obs: &opts.observer,
        conn,
        writer,
        held: None,
        streaming,
        slot: opts.slot.is_some(),
        first: Some(first),
    };
    let result = driver.run(&mut session, cancel).await;
    // Whatever follows (the next timeline's commands, draining) is a command phase again.
    driver.conn.begin_command_phase();
    if let Some(SessionError::Server {
        phase: Phase::StartReplication,
        ..
    }) = session.error()
    {
        // The command failed: read up to ReadyForQuery so the connection ends cleanly.
        drain_until_ready(driver.conn).await;
    }
    result
}

/// The flush position the slot has already confirmed (its restart_lsn), read with
/// READ_REPLICATION_SLOT (PostgreSQL 15+); `Lsn::INVALID` when there is no slot, nothing is
/// reported, or the server is older. A missing slot is left to START_REPLICATION to report.
async fn slot_confirmed_flush(
    conn: &mut Connection,
    opts: &StreamOptions,
) -> Result<Lsn, ReceiverError> {
    let Some(slot) = opts.slot.as_deref() else {
        return Ok(Lsn::INVALID);
    };
    if !opts.report_flush || conn.server.server_version_num().unwrap_or(0) < 150000 {
        return Ok(Lsn::INVALID);
    }
    let rs = conn.query(&read_replication_slot_command(slot)).await?;
    Ok(match parse_read_replication_slot(&rs)? {
        SlotInfo::Physical {
            restart_lsn: Some(lsn),
            ..
        } => lsn,
        _ => Lsn::INVALID,
    })
}

async fn drain_until_ready(conn: &mut Connection) {
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(m) = conn.read_message().await {
            if matches!(m, BackendMessage::ReadyForQuery(_)) {
                break;
            }
        }
    })
    .await;
}

/// The one place where the session's errors become [`ReceiverError`]s: server errors are
/// classified with the command they answered, violations are fatal (the same server would
/// send the same bytes again), a stream the server ended or went silent on is retried.
/// `slot` says whether the session streams through a replication slot, `server_version`
/// is the server's `server_version_num`: with the SQLSTATE they classify a server error.
fn session_error(e: SessionError, slot: bool, server_version: u32) -> ReceiverError {
    match &e {
        SessionError::Server { error, phase } => ReceiverError::from_server(
            error,
            match phase {
                Phase::StartReplication => Context::StartReplication {
                    slot,
                    server_version,
                },
                Phase::EndOfTimeline => Context::EndOfTimeline,
                _ => Context::Streaming { slot },
            },
        ),
        SessionError::Terminated { .. } | SessionError::ReceiveTimeout { .. } => {
            ReceiverError::transient(e.to_string())
        }
        _ => ReceiverError::fatal(e.to_string()),
    }
}

/// The I/O side of one session.
struct Driver<'a> {
    /// The replication connection: its read buffer feeds the session, its send buffer takes
    /// the session's transmits.
    conn: &'a mut Connection,
    /// Where WAL goes, and where the written and durable positions come from.
    writer: &'a Writer,
    /// A WAL event the writer had no room for: while it is held, the socket is not read.
    held: Option<(Lsn, Bytes)>,
    /// Set once the server entered copy mode.
    streaming: &'a AtomicBool,
    /// Whether the session streams through a replication slot (classifies server errors).
    slot: bool,
    /// Archive writes waiting for the server to accept the start ([`FirstWrites`]).
    first: Option<FirstWrites>,
    /// Where progress is published.
    obs: &'a SourceState,
}

impl Driver<'_> {
    /// Writes what waited for the server to accept the start ([`FirstWrites`]), once.
    async fn first_writes(&mut self) -> Result<(), ReceiverError> {
        let Some(first) = self.first.take() else {
            return Ok(());
        };
        if first.pin {
            self.writer.pin().await?;
        }
        if let Some((tli, content)) = first.history {
            self.writer.write_history(tli, content).await?;
        }
        Ok(())
    }

    fn writer_error(&self) -> ReceiverError {
        ReceiverError::from(ArcArchiveError(self.writer.failure()))
    }

    async fn run(
        &mut self,
        session: &mut ReplicationSession,
        cancel: &CancellationToken,
    ) -> Result<StreamEnd, ReceiverError> {
        let mut flush_rx = self.writer.state.clone();
        let flushed = flush_rx.borrow_and_update().flushed;
        self.obs.set_flushed(flushed);
        session.handle_flushed(std::time::Instant::now(), flushed);
        let timer = sleep_until(tokio::time::Instant::now() + FAR);
        tokio::pin!(timer);
        // The deadline the sleep is set to, while it is.
        let mut armed: Option<std::time::Instant> = None;
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        let mut cancel_seen = false;
        loop {
            if let Some(end) = self.process_events(session).await? {
                return Ok(end);
            }
            self.transmit(session).await?;
            // Nothing whole is left to handle (the session takes every whole frame): the
            // group-commit point of the inline writer. Reads stop at frame ends, so first
            // see whether the socket already holds more (one non-blocking attempt; `fill`
            // is cancellation-safe): everything that has arrived goes into one fdatasync,
            // as with pg_receivewal.
            if self.held.is_none() && self.writer.idle_pending() {
                let more = tokio::select! {
                    biased;
                    r = self.conn.fill() => Some(r),
                    _ = std::future::ready(()) => None,
                };
                if let Some(r) = more {
                    r?;
                    let now = std::time::Instant::now();
                    session.handle_bytes(now, self.conn.recv_buf());
                    self.obs.heard(now, session.server_wal_end());
                    continue;
                }
                self.writer.idle();
                // Report it now rather than on the next turn through the watch channel
                // (one wake-up less per commit); a failure is seen there.
                let state = flush_rx.borrow_and_update();
                if state.error.is_some() {
                    drop(state);
                    return Err(self.writer_error());
                }
                let flushed = state.flushed;
                drop(state);
                self.obs.set_flushed(flushed);
                session.handle_flushed(std::time::Instant::now(), flushed);
                continue;
            }
            // The tokio timer may fire late (cooperative budget) or have been set for a
            // later deadline: serve a deadline that has passed without sleeping.
            let now = std::time::Instant::now();
            let due = session.poll_timeout();
            if due.is_some_and(|d| d <= now) {
                session.handle_timeout(now);
                continue;
            }
            // Re-armed only when it fired or the deadline moved earlier; fired early, the
            // session just checks.
            if armed.is_none_or(|at| due.is_some_and(|d| d < at)) {
                let at = due.unwrap_or(now + QUIET_TICK);
                timer.as_mut().reset(at.into());
                armed = Some(at);
            }
            let writer = self.writer;
            let reading = self.held.is_none();
            // New durable positions matter only while streaming: once stopping, the writer
            // is closed and the final flush is reported from its answer.
            let watching = session.phase() == Phase::Streaming;
            tokio::select! {
                biased;
                _ = &mut cancelled, if !cancel_seen => {
                    cancel_seen = true;
                    info!("received interrupt signal, stopping at {}", session.received());
                    session.close(std::time::Instant::now());
                }
                changed = flush_rx.changed(), if watching => {
                    if changed.is_err() || flush_rx.borrow().error.is_some() {
                        return Err(self.writer_error());
                    }
                    let flushed = flush_rx.borrow().flushed;
                    self.obs.set_flushed(flushed);
                    session.handle_flushed(std::time::Instant::now(), flushed);
                }
                permit = writer.reserve(), if !reading => {
                    let permit = permit.map_err(|_| self.writer_error())?;
                    let (start, data) = self.held.take().expect("held checked");
                    permit.send(session.timeline(), start, data);
                    // Listening again: the silence is measured from now.
                    session.resume_reading(std::time::Instant::now());
                    self.obs.set_paused(false);
                }
                _ = &mut timer => {
                    armed = None;
                    self.conn.idle_tick();
                    // The idle writer's lock check rides on this tick (one stat; the
                    // writer wakes only when the lock file is gone).
                    writer.check_lock();
                    session.handle_timeout(std::time::Instant::now());
                }
                r = self.conn.fill(), if reading => match r {
                    Ok(()) => {
                        let now = std::time::Instant::now();
                        session.handle_bytes(now, self.conn.recv_buf());
                        self.obs.heard(now, session.server_wal_end());
                    }
                    Err(e) => {
                        if !session.handle_connection_lost() {
                            return Err(e);
                        }
                        debug!("connection ended while finishing the stream: {e}");
                    }
                },
            }
        }
    }

    /// Acts on the session's events in order, until it has none or the writer is full.
    /// Returns the end of the session when its final event comes.
    async fn process_events(
        &mut self,
        session: &mut ReplicationSession,
    ) -> Result<Option<StreamEnd>, ReceiverError> {
        if self.held.is_some() {
            return Ok(None);
        }
        while let Some(event) = session.poll_event() {
            match event {
                Event::Wal { start, data } => {
                    self.obs
                        .wal_received(Lsn(start.0 + data.len() as u64), data.len());
                    if self.first.is_some() {
                        // The session's first WAL: what waited for it goes first.
                        self.first_writes().await?;
                    }
                    match self.writer.reserve_now() {
                        Some(permit) => permit.send(session.timeline(), start, data),
                        None => {
                            // The writer's queue is full: stop reading until it has room.
                            self.held = Some((start, data));
                            session.pause_reading(std::time::Instant::now());
                            self.obs.set_paused(true);
                            return Ok(None);
                        }
                    }
                }
                Event::Started => {
                    self.streaming.store(true, Ordering::Relaxed);
                    self.obs.set_phase(SourcePhase::Streaming, None);
                    self.conn.end_command_phase();
                }
                Event::FlushRequested => self.writer.request_flush(),
                Event::CloseWriter => {
                    // Our CopyDone (answering the server's) goes out before the wait.
                    self.transmit(session).await?;
                    let durable = self
                        .writer
                        .close()
                        .await
                        .map_err(|e| ReceiverError::from(ArcArchiveError(e)))?;
                    self.obs.set_flushed(durable);
                    session.handle_writer_closed(std::time::Instant::now(), durable);
                }
                Event::Notice(n) => self.conn.log_notice(&n),
                Event::EndOfTimeline { next, received } => {
                    self.first_writes().await?;
                    if !self.streaming.load(Ordering::Relaxed) {
                        info!(
                            "timeline {} ends exactly at {received}: the server answered with the next timeline {} at once",
                            session.timeline(),
                            next.tli
                        );
                    }
                    return Ok(Some(StreamEnd::EndOfTimeline { next, received }));
                }
                Event::EndposReached { acknowledged } => {
                    if !acknowledged {
                        debug!("server did not acknowledge the end of streaming");
                    }
                    return Ok(Some(StreamEnd::EndposReached));
                }
                Event::Stopped { acknowledged } => {
                    if !acknowledged {
                        debug!("server did not acknowledge the end of streaming");
                    }
                    return Ok(Some(StreamEnd::Cancelled));
                }
                Event::Failed(e) => {
                    let version = self.conn.server.server_version_num().unwrap_or(0);
                    return Err(session_error(e, self.slot, version));
                }
            }
        }
        Ok(None)
    }

    /// Sends what the session has queued, with the writer's current written position.
    async fn transmit(&mut self, session: &mut ReplicationSession) -> Result<(), ReceiverError> {
        session.handle_written(self.writer.written());
        let wall = SystemTime::now();
        let mut any = false;
        while let Some(t) = session.poll_transmit(wall, self.conn.send_buf()) {
            match t {
                Transmit::StartReplication(cmd) => debug!("{cmd}"),
                Transmit::Status(s) if s.reply_requested => {
                    debug!("no message from the server for a while; asking for a reply")
                }
                _ => {}
            }
            any = true;
        }
        if any {
            self.conn.flush().await?;
        }
        Ok(())
    }
}

/// Adapts the writer's shared error into a classified [`ReceiverError`].
pub(crate) struct ArcArchiveError(pub std::sync::Arc<walsink_archive::ArchiveError>);

impl From<ArcArchiveError> for ReceiverError {
    fn from(e: ArcArchiveError) -> Self {
        // A full disk that broke the writer (a failed fsync) is ErrorKind::DiskFull: the
        // session ends and the reconnect loop starts over from the archive, once there is
        // space again.
        ReceiverError::write_failed(e.0)
    }
}
