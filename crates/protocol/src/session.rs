//! One `START_REPLICATION` session as a deterministic state machine.
//!
//! [`ReplicationSession`] holds every rule of the copy-both exchange: the reply to
//! `START_REPLICATION`, contiguity of XLogData, `--endpos`, keepalives that ask for a reply,
//! the status interval, the receive timeout and its half-way ping, which flush position may
//! be reported, our end of the copy (final status update, CopyDone, the server's
//! ReadyForQuery) and the server's (CopyDone both ways, the next-timeline result set,
//! CommandComplete). It does no I/O and reads no clock: bytes, positions and the current
//! [`Instant`] go in, events, bytes to send and the next deadline come out. The tokio
//! driver around it is `walsink_receiver::stream`.

mod timer;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use walsink_wal::{Lsn, TimelineId};

use crate::copy::{
    ReplicationMessage, StatusUpdate, encode_copy_done, encode_query, parse_replication_message,
    pg_timestamp,
};
use crate::error::{ProtocolError, ServerError};
use crate::frame::{self, BackendMessage};
use crate::query::{NextTimeline, QueryCollector, parse_next_timeline, start_replication_command};
use timer::{Timer, TimerTable};

/// How long the server may take to end the command after our CopyDone before the session
/// ends without its acknowledgement.
pub const END_COPY_TIMEOUT: Duration = Duration::from_secs(10);

/// The settings of one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Physical slot to stream from.
    pub slot: Option<String>,
    /// Timeline to stream.
    pub timeline: TimelineId,
    /// Where to start: the first XLogData must begin exactly here.
    pub start: Lsn,
    /// Stop once all WAL before this position is received and durable; nothing past it is
    /// handed out.
    pub endpos: Option<Lsn>,
    /// Interval of periodic status updates (`-s`); `None` disables them (`-s 0`).
    pub status_interval: Option<Duration>,
    /// Give up on a server that has sent nothing for this long, pinging it (a status update
    /// asking for a reply) after half of it; `None` disables both.
    pub receive_timeout: Option<Duration>,
    /// Report the flush position (with a slot or `--synchronous`, and not `--no-sync`);
    /// otherwise every status update reports it as invalid (0/0).
    pub report_flush: bool,
    /// The flush position the server already has from us (the slot's restart_lsn), or
    /// [`Lsn::INVALID`]. Flushes below it are not reported: after a restart walsink
    /// re-streams its `.partial` from the segment start, and reporting those would move the
    /// slot backwards.
    pub confirmed: Lsn,
}

/// Where a session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `START_REPLICATION` is sent; waiting for the server to enter copy-both mode (or to
    /// answer with the next timeline at once).
    StartReplication,
    /// Copy-both mode: WAL, keepalives, status updates.
    Streaming,
    /// We are stopping (`--endpos` or [`ReplicationSession::close`]): waiting for the
    /// writer to make everything durable ([`Event::CloseWriter`]).
    Closing,
    /// Final status update and CopyDone queued; waiting for the server to end the command.
    Ending,
    /// The server ended the timeline (CopyDone); reading the next-timeline result set.
    EndOfTimeline,
    /// Over: the final event is queued and further input is ignored.
    Done,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::StartReplication => "starting replication",
            Phase::Streaming => "streaming",
            Phase::Closing => "stopping",
            Phase::Ending => "ending the stream",
            Phase::EndOfTimeline => "ending the timeline",
            Phase::Done => "done",
        })
    }
}

/// What the driver has to act on, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The server entered copy-both mode.
    Started,
    /// WAL to write at `start`: a slice of the receive buffer, not a copy. Consecutive
    /// events are contiguous, and none reaches past `--endpos`.
    Wal {
        /// LSN of the first byte.
        start: Lsn,
        /// The bytes.
        data: Bytes,
    },
    /// The server asked for a reply: make what is written durable soon (the status update
    /// answering it is queued already; the flush is reported when it completes).
    FlushRequested,
    /// Write and make durable everything handed out, then call
    /// [`ReplicationSession::handle_writer_closed`].
    CloseWriter,
    /// A NoticeResponse from the server, for the log.
    Notice(ServerError),
    /// The server finished this (historic) timeline. Final.
    EndOfTimeline {
        /// The next timeline and where it begins (checked: after this one, and not past
        /// `received`).
        next: NextTimeline,
        /// Where this session's WAL ended.
        received: Lsn,
    },
    /// `--endpos` was reached and everything before it is durable and reported. Final.
    EndposReached {
        /// Whether the server acknowledged our CopyDone (else it timed out or was cut).
        acknowledged: bool,
    },
    /// Stopped on request ([`ReplicationSession::close`]). Final.
    Stopped {
        /// Whether the server acknowledged our CopyDone (false also when the session
        /// never entered copy mode).
        acknowledged: bool,
    },
    /// The session failed. Final; [`ReplicationSession::error`] keeps the error.
    Failed(SessionError),
}

/// What [`ReplicationSession::poll_transmit`] appended to the send buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// The `START_REPLICATION` query.
    StartReplication(String),
    /// A standby status update.
    Status(StatusUpdate),
    /// CopyDone: our end of the copy.
    CopyDone,
}

/// The server broke the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// A frame, CopyData payload or result that does not decode, or a message out of place
    /// in a result set.
    Malformed(ProtocolError),
    /// The first XLogData did not begin where `START_REPLICATION` asked.
    WrongStart {
        /// Where it began.
        got: Lsn,
        /// The requested start.
        expected: Lsn,
    },
    /// XLogData that skips ahead of what was received.
    Gap {
        /// Where it began.
        got: Lsn,
        /// The end of what was received.
        expected: Lsn,
    },
    /// XLogData that goes back into what was received.
    Overlap {
        /// Where it began.
        got: Lsn,
        /// The end of what was received.
        expected: Lsn,
    },
    /// XLogData whose end lies past the 64-bit WAL address space.
    LsnOverflow {
        /// Where it began.
        start: Lsn,
        /// Its length.
        len: usize,
    },
    /// A message the protocol does not allow in this phase.
    Unexpected {
        /// Its type byte.
        tag: char,
        /// Where the session was.
        phase: Phase,
    },
    /// The end-of-timeline result set has not the shape or values it must have.
    BadNextTimeline(ProtocolError),
    /// The next timeline is not after the current one.
    NextTimelineNotAfter {
        /// The timeline the server named.
        next: TimelineId,
        /// The timeline that ended.
        current: TimelineId,
    },
    /// The next timeline is said to begin past the end of what this one streamed, which
    /// would leave the WAL in between out of the archive.
    NextTimelinePastReceived {
        /// The next timeline and its start.
        next: NextTimeline,
        /// The timeline that ended.
        current: TimelineId,
        /// Where its WAL ended.
        received: Lsn,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wrong = |f: &mut fmt::Formatter<'_>, got, expected, what| {
            write!(
                f,
                "server sent WAL starting at {got}, but walsink expected {expected}: {what}"
            )
        };
        match self {
            Violation::Malformed(e) | Violation::BadNextTimeline(e) => write!(f, "{e}"),
            Violation::WrongStart { got, expected } => wrong(
                f,
                got,
                expected,
                "the stream must begin where START_REPLICATION asked",
            ),
            Violation::Gap { got, expected } => wrong(f, got, expected, "a gap in the stream"),
            Violation::Overlap { got, expected } => {
                wrong(f, got, expected, "an overlap in the stream")
            }
            Violation::LsnOverflow { start, len } => write!(
                f,
                "server sent {len} bytes of WAL starting at {start}, which end past the last possible WAL position"
            ),
            Violation::Unexpected { tag, phase } => match phase {
                Phase::StartReplication => write!(
                    f,
                    "unexpected message '{tag}' from server in reply to START_REPLICATION"
                ),
                Phase::EndOfTimeline => write!(
                    f,
                    "unexpected message '{tag}' from server after end of timeline"
                ),
                _ => write!(
                    f,
                    "unexpected message '{}' from server during streaming",
                    tag.escape_default()
                ),
            },
            Violation::NextTimelineNotAfter { next, current } => write!(
                f,
                "server reported unexpected next timeline {next}, following timeline {current}"
            ),
            Violation::NextTimelinePastReceived {
                next,
                current,
                received,
            } => write!(
                f,
                "server stopped streaming timeline {current} at {received}, but reported next timeline {} to begin at {}; the WAL of timeline {current} in between was never sent",
                next.tli, next.start
            ),
        }
    }
}

/// Why a session failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionError {
    /// The server sent an ErrorResponse.
    Server {
        /// The error, with its SQLSTATE.
        error: ServerError,
        /// What the session was doing: [`Phase::StartReplication`] (the command itself
        /// failed), [`Phase::Streaming`] (the stream was cut) or [`Phase::EndOfTimeline`].
        phase: Phase,
    },
    /// The server broke the protocol.
    Violation {
        /// What it did.
        violation: Violation,
        /// What the session was doing.
        phase: Phase,
        /// Where the WAL handed out ends: nothing of the offending message or after it was.
        received: Lsn,
        /// The timeline streamed.
        timeline: TimelineId,
    },
    /// The server ended the copy with CommandComplete (shutdown, or the upstream was
    /// promoted).
    Terminated {
        /// Where the WAL handed out ends.
        at: Lsn,
    },
    /// The server sent nothing for the receive timeout, not even after the ping.
    ReceiveTimeout {
        /// The timeout.
        after: Duration,
    },
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Server { error, .. } => write!(f, "{error}"),
            SessionError::Violation {
                violation,
                phase,
                received,
                timeline,
            } => {
                write!(f, "{violation}")?;
                if *phase != Phase::StartReplication {
                    write!(
                        f,
                        "; nothing after {received} (timeline {timeline}) was written"
                    )?;
                }
                Ok(())
            }
            SessionError::Terminated { at } => {
                write!(f, "replication stream was terminated by the server at {at}")
            }
            SessionError::ReceiveTimeout { after } => write!(
                f,
                "no message from the server for {} s (receive timeout); the server or the network is not responding",
                after.as_secs()
            ),
        }
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SessionError::Violation {
                violation: Violation::Malformed(e) | Violation::BadNextTimeline(e),
                ..
            } => Some(e),
            _ => None,
        }
    }
}

/// Why we end the copy ourselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopReason {
    Endpos,
    Requested,
}

/// Something queued for [`ReplicationSession::poll_transmit`]. Status updates are encoded
/// when polled, with the positions known then.
#[derive(Clone, Debug)]
enum Pending {
    Query(String),
    Status { reply_requested: bool },
    CopyDone,
}

/// One copy-both replication session, sans I/O.
///
/// # Methods
///
/// * Getters: [`phase`](Self::phase), [`received`](Self::received),
///   [`server_wal_end`](Self::server_wal_end),
///   [`error`](Self::error), [`timeline`](Self::timeline), [`start`](Self::start).
/// * Input (`handle_*`): [`handle_bytes`](Self::handle_bytes) (bytes read from the
///   socket; decodes every whole frame in the buffer) or
///   [`handle_message`](Self::handle_message) (one decoded message);
///   [`handle_written`](Self::handle_written) and [`handle_flushed`](Self::handle_flushed)
///   (the writer's positions: handed to the OS, durable);
///   [`handle_writer_closed`](Self::handle_writer_closed) (answer to
///   [`Event::CloseWriter`]); [`handle_timeout`](Self::handle_timeout) (a deadline from
///   [`poll_timeout`](Self::poll_timeout) passed).
/// * Commands: [`close`](Self::close) (stop on request: shutdown);
///   [`pause_reading`](Self::pause_reading) and [`resume_reading`](Self::resume_reading)
///   (the driver stopped reading the socket because the writer is full, and started again:
///   silence meanwhile is not the server's).
/// * Output (`poll_*`): [`poll_event`](Self::poll_event),
///   [`poll_transmit`](Self::poll_transmit), [`poll_timeout`](Self::poll_timeout).
///
/// # Call order
///
/// Create the session, then after every input or command: drain
/// [`poll_event`](Self::poll_event) (acting on each event in order: WAL goes to the writer
/// before anything that follows it; when the writer is full, keep the event, call
/// [`pause_reading`](Self::pause_reading), stop reading the socket until it fits, then
/// call [`resume_reading`](Self::resume_reading)), then give the writer's current
/// `written` position to [`handle_written`](Self::handle_written) and drain
/// [`poll_transmit`](Self::poll_transmit) into the socket, then arm one timer at
/// [`poll_timeout`](Self::poll_timeout) and call [`handle_timeout`](Self::handle_timeout)
/// when it passes (an early call is harmless). The first transmit is the
/// `START_REPLICATION` query. A final event ([`Event::EndOfTimeline`],
/// [`Event::EndposReached`], [`Event::Stopped`], [`Event::Failed`]) ends the session: it
/// then ignores all input, queues nothing, and has no deadline. A failed session keeps its
/// error ([`error`](Self::error)).
#[derive(Debug)]
pub struct ReplicationSession {
    cfg: SessionConfig,
    phase: Phase,
    stop: Option<StopReason>,
    error: Option<SessionError>,
    /// End of the WAL handed out in [`Event::Wal`] (the next XLogData must begin here).
    received: Lsn,
    /// The writer's `written` position: handed to the OS, not necessarily durable.
    written: Lsn,
    /// The writer's durable position.
    durable: Lsn,
    /// The flush position of the last status update sent.
    last_reported_flush: Lsn,
    /// The server's WAL end from its last keepalive or XLogData.
    server_wal_end: Lsn,
    /// When bytes last arrived while reading.
    last_heard: Option<Instant>,
    /// Whether the half-way ping went out since then.
    pinged: bool,
    /// Whether the driver reads the socket (false while the writer is full).
    reading: bool,
    timers: TimerTable,
    events: VecDeque<Event>,
    transmits: VecDeque<Pending>,
    /// Our CopyDone is queued: no status update may follow it.
    copy_done_queued: bool,
    /// The next-timeline result set, once its RowDescription has come.
    result: Option<QueryCollector>,
}

impl ReplicationSession {
    /// A session that will stream `cfg.timeline` from `cfg.start`. Its first transmit is
    /// the `START_REPLICATION` command.
    pub fn new(cfg: SessionConfig) -> ReplicationSession {
        let query = start_replication_command(cfg.slot.as_deref(), cfg.start, cfg.timeline);
        ReplicationSession {
            received: cfg.start,
            written: cfg.start,
            durable: Lsn::INVALID,
            cfg,
            phase: Phase::StartReplication,
            stop: None,
            error: None,
            last_reported_flush: Lsn::INVALID,
            server_wal_end: Lsn::INVALID,
            last_heard: None,
            pinged: false,
            reading: true,
            timers: TimerTable::default(),
            events: VecDeque::new(),
            transmits: VecDeque::from([Pending::Query(query)]),
            copy_done_queued: false,
            result: None,
        }
    }

    // ---- getters ------------------------------------------------------------------------

    /// Where the session is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// End of the WAL handed out so far.
    pub fn received(&self) -> Lsn {
        self.received
    }

    /// The server's WAL end, from its last keepalive or XLogData (`Lsn::INVALID` before
    /// either).
    pub fn server_wal_end(&self) -> Lsn {
        self.server_wal_end
    }

    /// The timeline streamed.
    pub fn timeline(&self) -> TimelineId {
        self.cfg.timeline
    }

    /// Where the session started.
    pub fn start(&self) -> Lsn {
        self.cfg.start
    }

    /// The error the session failed with, if it did.
    pub fn error(&self) -> Option<&SessionError> {
        self.error.as_ref()
    }

    /// Whether the session is over (its final event is queued or was polled).
    pub fn is_over(&self) -> bool {
        self.phase == Phase::Done || self.error.is_some()
    }

    // ---- input ----------------------------------------------------------------------------

    /// Bytes were read from the socket into `buf`: takes every whole frame off its front
    /// (CopyData bodies become [`Event::Wal`] slices of it, without copying) and leaves an
    /// incomplete one. Stops taking frames once the session stops reading (closing, over).
    pub fn handle_bytes(&mut self, now: Instant, buf: &mut BytesMut) {
        if self.is_over() {
            return;
        }
        self.heard(now);
        while matches!(
            self.phase,
            Phase::StartReplication | Phase::Streaming | Phase::Ending | Phase::EndOfTimeline
        ) && self.error.is_none()
        {
            match frame::decode(buf) {
                Ok(Some(msg)) => self.handle_message(now, msg),
                Ok(None) => break,
                // We are leaving anyway; everything is durable and reported.
                Err(_) if self.phase == Phase::Ending => self.finish(false),
                Err(e) => self.violation(Violation::Malformed(e)),
            }
        }
    }

    /// One message from the server.
    pub fn handle_message(&mut self, now: Instant, msg: BackendMessage) {
        if self.is_over() {
            return;
        }
        match self.phase {
            Phase::StartReplication => self.on_start_reply(now, msg),
            Phase::Streaming => self.on_streaming(msg),
            Phase::EndOfTimeline => self.on_end_of_timeline(msg),
            // Anything before ReadyForQuery (WAL sent before the server saw our CopyDone,
            // its CopyDone, CommandComplete, an error about the ending) needs no action.
            Phase::Ending => {
                if let BackendMessage::ReadyForQuery(_) = msg {
                    self.finish(true);
                }
            }
            Phase::Closing | Phase::Done => {}
        }
    }

    /// The connection ended (read error or end of file). Returns true when that is a
    /// normal end: after our CopyDone, where everything is durable and reported, the
    /// session then ends ([`Event::EndposReached`] or [`Event::Stopped`], not acknowledged).
    /// Otherwise nothing changes and the caller has the error to report.
    pub fn handle_connection_lost(&mut self) -> bool {
        if self.phase == Phase::Ending && self.error.is_none() {
            self.finish(false);
            true
        } else {
            false
        }
    }

    /// The writer has handed WAL up to `written` to the operating system (the `write`
    /// position of status updates).
    pub fn handle_written(&mut self, written: Lsn) {
        self.written = written;
    }

    /// The writer has made WAL up to `durable` durable. Queues a status update at once when
    /// that changes the flush position to report (group commit with `--synchronous`, and
    /// every flush with a slot).
    pub fn handle_flushed(&mut self, _now: Instant, durable: Lsn) {
        if self.is_over() {
            return;
        }
        self.durable = durable;
        if self.phase == Phase::Streaming && self.flush_to_report() != self.last_reported_flush {
            self.queue_status(false);
        }
    }

    /// Answer to [`Event::CloseWriter`]: everything handed out is written and durable up to
    /// `durable`. When stopping, queues the final status update and CopyDone.
    pub fn handle_writer_closed(&mut self, now: Instant, durable: Lsn) {
        if self.is_over() {
            return;
        }
        self.durable = durable;
        if self.phase == Phase::Closing {
            self.queue_status(false);
            self.transmits.push_back(Pending::CopyDone);
            self.copy_done_queued = true;
            self.phase = Phase::Ending;
            self.timers.set(Timer::EndCopy, now + END_COPY_TIMEOUT);
        }
    }

    /// A deadline from [`poll_timeout`](Self::poll_timeout) passed (calling early does
    /// nothing).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_over() {
            return;
        }
        for timer in Timer::ALL {
            if !self.timers.is_expired(timer, now) {
                continue;
            }
            match timer {
                Timer::Status => {
                    let interval = self.cfg.status_interval.expect("armed only with -s");
                    // The receive timeout's ping would fall before the next status update:
                    // this update is the ping (one wake-up instead of two; the server has
                    // longer to answer). Its give-up deadline stays where it was.
                    let ping = !self.pinged
                        && self
                            .timers
                            .get(Timer::Idle)
                            .is_some_and(|ping_at| ping_at < now + interval);
                    self.queue_status(ping);
                    if ping {
                        self.pinged = true;
                        let timeout = self.cfg.receive_timeout.expect("armed only with a timeout");
                        let since = self.last_heard.unwrap_or(now);
                        self.timers.set(Timer::Idle, since + timeout);
                    }
                    self.timers.set(Timer::Status, now + interval);
                }
                Timer::Idle => {
                    let timeout = self.cfg.receive_timeout.expect("armed only with a timeout");
                    if self.pinged {
                        self.fail(SessionError::ReceiveTimeout { after: timeout });
                        return;
                    }
                    self.queue_status(true);
                    self.pinged = true;
                    let since = self.last_heard.unwrap_or(now);
                    self.timers.set(Timer::Idle, since + timeout);
                }
                Timer::EndCopy => {
                    self.finish(false);
                    return;
                }
            }
        }
    }

    // ---- commands ---------------------------------------------------------------------------

    /// Stop on request (shutdown). While streaming, the session hands out nothing more,
    /// asks for the writer to be closed ([`Event::CloseWriter`]), then reports the final
    /// flush and ends the copy, ending with [`Event::Stopped`]. Before copy mode or after the
    /// server ended the timeline it ends at once. Returns false when the session was
    /// already stopping or over (nothing changes).
    pub fn close(&mut self, _now: Instant) -> bool {
        match self.phase {
            _ if self.is_over() => false,
            Phase::Streaming => {
                self.begin_close(StopReason::Requested);
                true
            }
            Phase::StartReplication | Phase::EndOfTimeline => {
                self.end(Event::Stopped {
                    acknowledged: false,
                });
                true
            }
            Phase::Closing | Phase::Ending | Phase::Done => false,
        }
    }

    /// The driver stopped reading the socket (the writer is full): the receive timeout
    /// does not run meanwhile.
    pub fn pause_reading(&mut self, _now: Instant) {
        self.reading = false;
        self.timers.stop(Timer::Idle);
    }

    /// The driver reads the socket again: silence is measured from `now`.
    pub fn resume_reading(&mut self, now: Instant) {
        self.reading = true;
        if !self.is_over() {
            self.heard(now);
        }
    }

    // ---- output -------------------------------------------------------------------------------

    /// The next thing to act on.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Appends the next message to send to `out` and says what it was. `wall` is the time
    /// to stamp a status update with (the protocol's `send_time`; the session reads no
    /// clock). Status updates carry the positions known when polled.
    pub fn poll_transmit(&mut self, wall: SystemTime, out: &mut BytesMut) -> Option<Transmit> {
        Some(match self.transmits.pop_front()? {
            Pending::Query(sql) => {
                encode_query(&sql, out);
                Transmit::StartReplication(sql)
            }
            Pending::Status { reply_requested } => {
                let flush = self.flush_to_report();
                let status = StatusUpdate {
                    // What the writer has handed to the OS, as PostgreSQL's own walreceiver
                    // reports it (remote_write relies on it), not what is only queued.
                    write: self.written.min(self.received),
                    flush,
                    apply: Lsn::INVALID,
                    send_time: pg_timestamp(wall),
                    reply_requested,
                };
                status.encode(out);
                self.last_reported_flush = flush;
                Transmit::Status(status)
            }
            Pending::CopyDone => {
                encode_copy_done(out);
                Transmit::CopyDone
            }
        })
    }

    /// The one next deadline, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_timeout()
    }

    // ---- rules ------------------------------------------------------------------------------

    /// The flush position a status update may carry: what the writer says is durable, and at
    /// least this session's start (everything before it is in the archive already, or not
    /// wanted: that is how the start was chosen), never past what was received; only when
    /// flush reporting is on and not below what the server already has; else invalid (not
    /// reported). So the first status update, right after `START_REPLICATION`, reports the
    /// start as flushed, as pg_receivewal's does: a slot gets its `restart_lsn` at once, even
    /// from an idle server.
    fn flush_to_report(&self) -> Lsn {
        let flushed = self.durable.max(self.cfg.start).min(self.received);
        if self.cfg.report_flush && flushed >= self.cfg.confirmed {
            flushed
        } else {
            Lsn::INVALID
        }
    }

    fn heard(&mut self, now: Instant) {
        self.last_heard = Some(now);
        self.pinged = false;
        if self.phase == Phase::Streaming
            && self.reading
            && let Some(t) = self.cfg.receive_timeout
        {
            self.timers.set(Timer::Idle, now + t / 2);
        }
    }

    fn queue_status(&mut self, reply_requested: bool) {
        if self.copy_done_queued {
            return;
        }
        match self.transmits.back_mut() {
            Some(Pending::Status { reply_requested: r }) => *r |= reply_requested,
            _ => self
                .transmits
                .push_back(Pending::Status { reply_requested }),
        }
    }

    fn endpos_reached(&self) -> bool {
        self.cfg.endpos.is_some_and(|e| self.received >= e)
    }

    fn on_start_reply(&mut self, now: Instant, msg: BackendMessage) {
        match msg {
            BackendMessage::CopyBothResponse => {
                self.phase = Phase::Streaming;
                self.events.push_back(Event::Started);
                if let Some(interval) = self.cfg.status_interval {
                    // The first status update goes out at once.
                    self.queue_status(false);
                    self.timers.set(Timer::Status, now + interval);
                }
                self.heard(now);
                if self.endpos_reached() {
                    self.begin_close(StopReason::Endpos);
                }
            }
            BackendMessage::ErrorResponse(error) => self.fail(SessionError::Server {
                error,
                phase: Phase::StartReplication,
            }),
            // A historic timeline whose end is exactly our start: the server answers with
            // the next timeline at once, without entering copy mode.
            m @ BackendMessage::RowDescription(_) => {
                self.phase = Phase::EndOfTimeline;
                self.collect_result(m);
            }
            BackendMessage::NoticeResponse(n) => self.events.push_back(Event::Notice(n)),
            BackendMessage::ParameterStatus { .. } => {}
            other => self.violation(Violation::Unexpected {
                tag: other.tag(),
                phase: Phase::StartReplication,
            }),
        }
    }

    fn on_streaming(&mut self, msg: BackendMessage) {
        match msg {
            BackendMessage::CopyData(payload) => match parse_replication_message(payload) {
                Ok(ReplicationMessage::XLogData {
                    start,
                    data,
                    wal_end,
                    ..
                }) => {
                    self.server_wal_end = wal_end;
                    self.on_xlogdata(start, data)
                }
                Ok(ReplicationMessage::Keepalive {
                    reply_requested,
                    wal_end,
                    ..
                }) => {
                    self.server_wal_end = wal_end;
                    if reply_requested {
                        // Answer at once with what is durable now; the flush the server is
                        // waiting for is reported the moment it completes.
                        self.events.push_back(Event::FlushRequested);
                        self.queue_status(false);
                    }
                }
                Err(e) => self.violation(Violation::Malformed(e)),
            },
            BackendMessage::CopyDone => {
                // The end of a historic timeline: CopyDone back, then the result set.
                self.timers.clear();
                self.transmits.push_back(Pending::CopyDone);
                self.copy_done_queued = true;
                self.phase = Phase::EndOfTimeline;
                self.events.push_back(Event::CloseWriter);
            }
            BackendMessage::CommandComplete(_) => {
                // The server ended the stream: shutdown or promotion of the upstream.
                self.fail(SessionError::Terminated { at: self.received });
            }
            BackendMessage::ErrorResponse(error) => self.fail(SessionError::Server {
                error,
                phase: Phase::Streaming,
            }),
            BackendMessage::NoticeResponse(n) => self.events.push_back(Event::Notice(n)),
            BackendMessage::ParameterStatus { .. } => {}
            other => self.violation(Violation::Unexpected {
                tag: other.tag(),
                phase: Phase::Streaming,
            }),
        }
    }

    fn on_xlogdata(&mut self, start: Lsn, mut data: Bytes) {
        if start != self.received {
            let (got, expected) = (start, self.received);
            self.violation(if self.received == self.cfg.start {
                Violation::WrongStart { got, expected }
            } else if start > self.received {
                Violation::Gap { got, expected }
            } else {
                Violation::Overlap { got, expected }
            });
            return;
        }
        let Some(end) = start.checked_add(data.len() as u64) else {
            self.violation(Violation::LsnOverflow {
                start,
                len: data.len(),
            });
            return;
        };
        if let Some(endpos) = self.cfg.endpos
            && end > endpos
        {
            data.truncate(endpos.saturating_sub(start) as usize);
        }
        if data.is_empty() {
            return;
        }
        self.received = Lsn(start.0 + data.len() as u64);
        self.events.push_back(Event::Wal { start, data });
        if self.endpos_reached() {
            self.begin_close(StopReason::Endpos);
        }
    }

    fn on_end_of_timeline(&mut self, msg: BackendMessage) {
        if self.result.is_some() {
            self.collect_result(msg);
            return;
        }
        match msg {
            m @ BackendMessage::RowDescription(_) => self.collect_result(m),
            BackendMessage::ErrorResponse(error) => self.fail(SessionError::Server {
                error,
                phase: Phase::EndOfTimeline,
            }),
            BackendMessage::NoticeResponse(n) => self.events.push_back(Event::Notice(n)),
            BackendMessage::ParameterStatus { .. } => {}
            other => self.violation(Violation::Unexpected {
                tag: other.tag(),
                phase: Phase::EndOfTimeline,
            }),
        }
    }

    /// Feeds the next-timeline result set up to ReadyForQuery, then checks it.
    fn collect_result(&mut self, msg: BackendMessage) {
        let collector = self.result.get_or_insert_with(QueryCollector::default);
        let rs = match collector.handle(msg) {
            Ok(None) => return,
            Ok(Some(Ok(rs))) => rs,
            Ok(Some(Err(ProtocolError::Server(error)))) => {
                return self.fail(SessionError::Server {
                    error,
                    phase: Phase::EndOfTimeline,
                });
            }
            Ok(Some(Err(e))) | Err(e) => return self.violation(Violation::Malformed(e)),
        };
        let next = match parse_next_timeline(&rs) {
            Ok(next) => next,
            Err(e) => return self.violation(Violation::BadNextTimeline(e)),
        };
        let current = self.cfg.timeline;
        if next.tli <= current {
            return self.violation(Violation::NextTimelineNotAfter {
                next: next.tli,
                current,
            });
        }
        // The server ends a historic timeline only once it has sent all of it (up to the
        // switch point, sometimes a little past it), so the next timeline cannot begin past
        // what was received: following it would leave this timeline's WAL between the two
        // missing from the archive.
        if next.start > self.received {
            return self.violation(Violation::NextTimelinePastReceived {
                next,
                current,
                received: self.received,
            });
        }
        self.end(Event::EndOfTimeline {
            next,
            received: self.received,
        });
    }

    fn begin_close(&mut self, reason: StopReason) {
        self.stop = Some(reason);
        self.phase = Phase::Closing;
        self.timers.clear();
        self.events.push_back(Event::CloseWriter);
    }

    /// Our end of the copy is complete (acknowledged by the server or not).
    fn finish(&mut self, acknowledged: bool) {
        self.end(match self.stop {
            Some(StopReason::Endpos) => Event::EndposReached { acknowledged },
            _ => Event::Stopped { acknowledged },
        });
    }

    /// A final event. Transmits already queued stay (the CopyDone answering the server's).
    fn end(&mut self, event: Event) {
        self.phase = Phase::Done;
        self.timers.clear();
        self.events.push_back(event);
    }

    fn violation(&mut self, violation: Violation) {
        self.fail(SessionError::Violation {
            violation,
            phase: self.phase,
            received: self.received,
            timeline: self.cfg.timeline,
        });
    }

    fn fail(&mut self, e: SessionError) {
        self.error = Some(e.clone());
        self.timers.clear();
        self.transmits.clear();
        self.events.push_back(Event::Failed(e));
    }
}
