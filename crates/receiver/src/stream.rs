//! One `START_REPLICATION` session: the copy-both loop.
//!
//! The network side of the pipeline. It reads the socket in large chunks, splits
//! CopyData frames without copying, checks that each XLogData message continues exactly
//! where the previous one ended, and queues the WAL for the writer thread (with
//! `--synchronous` it writes it itself and flushes when the receive buffer holds no
//! whole message, the group-commit point: [`Writer::idle`]). It answers
//! keepalives and sends standby status updates on its own timers, so (but for that
//! fdatasync) neither ever waits on the disk; when the writer's queue is full it stops
//! reading the socket (backpressure) but keeps its timers running.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use walsink_protocol::ProtocolError;
use walsink_protocol::copy::{
    ReplicationMessage, StatusUpdate, encode_copy_done, encode_query, parse_replication_message,
    pg_timestamp,
};
use walsink_protocol::frame::BackendMessage;
use walsink_protocol::query::{
    NextTimeline, QueryCollector, SlotInfo, parse_next_timeline, parse_read_replication_slot,
    read_replication_slot_command, start_replication_command,
};
use walsink_wal::{Lsn, TimelineId};

use crate::conn::Connection;
use crate::error::ReceiverError;
use crate::writer::Writer;

/// How long to wait for the server to acknowledge the end of streaming.
const END_COPY_TIMEOUT: Duration = Duration::from_secs(10);

/// A deadline for a timer with nothing to time.
const FAR: Duration = Duration::from_secs(24 * 3600);

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
    /// Send a status update the moment the writer's flush position advances.
    pub synchronous: bool,
}

/// Why a session ended without an error.
#[derive(Debug)]
pub enum StreamEnd {
    /// The server finished a historic timeline; streaming continues on the next one.
    EndOfTimeline {
        /// The next timeline and its start.
        next: NextTimeline,
        /// Where this session's WAL ended.
        received: Lsn,
    },
    /// `--endpos` was reached.
    EndposReached,
    /// Shutdown was requested (SIGINT/SIGTERM).
    Cancelled,
}

struct Session<'a> {
    conn: &'a mut Connection,
    writer: &'a Writer,
    opts: &'a StreamOptions,
    tli: TimelineId,
    /// End of the WAL received and queued for writing (the `write` position).
    received: Lsn,
    /// Where this session started; no flush is reported until the writer is past it, so
    /// a reconnect never moves a slot's restart_lsn backwards.
    start: Lsn,
    /// The slot's restart_lsn when the session began: the flush walsink confirmed last.
    /// After a restart walsink re-streams the `.partial` from its segment start; flushes
    /// below this are not reported, or the slot would move backwards.
    confirmed: Lsn,
    last_reported_flush: Lsn,
}

/// Streams `tli` from `start` until the timeline ends, `--endpos`, cancellation or an
/// error. The writer must already be positioned at `start`.
/// `streaming` is set once the server has entered copy mode, so the caller can tell a
/// connection that streamed (and then broke) from one that never got that far.
pub async fn stream(
    conn: &mut Connection,
    writer: &Writer,
    tli: TimelineId,
    start: Lsn,
    opts: &StreamOptions,
    cancel: &CancellationToken,
    streaming: &std::cell::Cell<bool>,
) -> Result<StreamEnd, ReceiverError> {
    let confirmed = slot_confirmed_flush(conn, opts).await?;
    let cmd = start_replication_command(opts.slot.as_deref(), start, tli);
    debug!("{cmd}");
    encode_query(&cmd, conn.send_buf());
    conn.flush().await?;
    match conn.read_message().await? {
        BackendMessage::CopyBothResponse => streaming.set(true),
        BackendMessage::ErrorResponse(e) => {
            drain_until_ready(conn).await;
            return Err(ReceiverError::from_server(
                &e,
                "could not start WAL streaming",
            ));
        }
        // A historic timeline whose end is exactly our start: the server answers with
        // the next timeline at once, without entering copy mode.
        m @ BackendMessage::RowDescription(_) => {
            let next = finish_result(conn, m).await?;
            info!(
                "timeline {tli} ends exactly at {start}: the server answered with the next timeline {} at once",
                next.tli
            );
            return Ok(StreamEnd::EndOfTimeline {
                next,
                received: start,
            });
        }
        other => {
            return Err(ReceiverError::fatal(format!(
                "unexpected message '{}' from server in reply to START_REPLICATION",
                other.tag()
            )));
        }
    }
    let mut s = Session {
        conn,
        writer,
        opts,
        tli,
        received: start,
        start,
        confirmed,
        last_reported_flush: Lsn::INVALID,
    };
    s.run(cancel).await
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

/// Reads a result set that began with `first` up to ReadyForQuery and parses the next
/// timeline from it.
async fn finish_result(
    conn: &mut Connection,
    first: BackendMessage,
) -> Result<NextTimeline, ReceiverError> {
    let mut c = QueryCollector::default();
    let mut msg = first;
    loop {
        if let Some(out) = c.handle(msg)? {
            let rs = out.map_err(|e| match e {
                ProtocolError::Server(se) => {
                    ReceiverError::from_server(&se, "error at end of timeline")
                }
                other => other.into(),
            })?;
            return Ok(parse_next_timeline(&rs)?);
        }
        msg = conn.read_message().await?;
    }
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

impl Session<'_> {
    fn flush_to_report(&self) -> Lsn {
        let flushed = self.writer.state.borrow().flushed;
        if self.opts.report_flush && flushed > self.start && flushed >= self.confirmed {
            flushed
        } else {
            Lsn::INVALID
        }
    }

    async fn send_status(&mut self, reply_requested: bool) -> Result<(), ReceiverError> {
        let flush = self.flush_to_report();
        StatusUpdate {
            // What the writer has handed to the OS, as PostgreSQL's own walreceiver
            // reports it (remote_write relies on it), not what is only queued in memory.
            write: self.writer.written().min(self.received),
            flush,
            apply: Lsn::INVALID,
            send_time: pg_timestamp(SystemTime::now()),
            reply_requested,
        }
        .encode(self.conn.send_buf());
        self.last_reported_flush = flush;
        self.conn.flush().await
    }

    /// A protocol violation by the server, saying where the archive stands: everything
    /// received before it is written, nothing of it or after it.
    fn violation(&self, e: ReceiverError) -> ReceiverError {
        ReceiverError::new(
            e.kind(),
            format!(
                "{e}; nothing after {} (timeline {}) was written",
                self.received, self.tli
            ),
        )
    }

    fn writer_error(&self) -> ReceiverError {
        ReceiverError::from(ArcArchiveError(self.writer.failure()))
    }

    async fn run(&mut self, cancel: &CancellationToken) -> Result<StreamEnd, ReceiverError> {
        let mut flush_rx = self.writer.state.clone();
        let interval = self.opts.status_interval;
        let mut next_status = Instant::now();
        let mut last_heard = Instant::now();
        let mut pinged = false;
        // WAL decoded but not yet queued for the writer (at most one message).
        let mut pending: Option<(Lsn, Bytes)> = None;
        // One timer for the status interval and the receive timeout, re-armed only
        // when it fires or its deadline moves earlier: the silence deadline moves
        // later with every message, and arming timers per message was a measurable
        // part of the per-commit CPU with `--synchronous`. Fired early, it just checks.
        let timer = sleep_until(Instant::now() + FAR);
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            if self.opts.endpos.is_some_and(|e| self.received >= e) && pending.is_none() {
                return self.finish(StreamEnd::EndposReached).await;
            }
            // Handle every whole message already buffered before waiting again.
            if pending.is_none()
                && let Some(msg) = self.conn.try_decode().map_err(|e| self.violation(e))?
            {
                if let Some(end) = self.handle_message(msg, &mut pending).await? {
                    return Ok(end);
                }
                continue;
            }
            // Nothing whole is left to handle: the group-commit point of the inline writer.
            // Reads stop at frame ends, so first see whether the socket already holds
            // more (one non-blocking attempt; `fill` is cancellation-safe): everything
            // that has arrived goes into one fdatasync, as with pg_receivewal.
            if pending.is_none() && self.writer.idle_pending() {
                let more = tokio::select! {
                    biased;
                    r = self.conn.fill() => Some(r),
                    _ = std::future::ready(()) => None,
                };
                if let Some(r) = more {
                    r?;
                    last_heard = Instant::now();
                    pinged = false;
                    continue;
                }
                self.writer.idle();
                // Report it now rather than on the next turn through the watch channel
                // (one wake-up less per commit); a failure is seen there.
                let failed = flush_rx.borrow_and_update().error.is_some();
                if failed {
                    return Err(self.writer_error());
                }
                if self.flush_to_report() != self.last_reported_flush {
                    self.send_status(false).await?;
                }
            }
            let status_due = interval.map(|_| next_status);
            // Dead-peer detection: ping at half the timeout, give up at the timeout. Only
            // while the socket is being read: waiting for room in the writer's queue (a
            // slow or full disk) is silence of our own making.
            let silence_due = self
                .opts
                .receive_timeout
                .filter(|_| pending.is_none())
                .map(|t| {
                    if pinged {
                        last_heard + t
                    } else {
                        last_heard + t / 2
                    }
                });
            let due = match (status_due, silence_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if armed.is_none_or(|at| due.is_some_and(|d| d < at)) {
                let at = due.unwrap_or_else(|| Instant::now() + FAR);
                timer.as_mut().reset(at);
                armed = Some(at);
            }
            tokio::select! {
                biased;
                _ = &mut cancelled => {
                    if let Some((start, data)) = pending.take() {
                        let permit = self.writer.reserve().await.map_err(|_| self.writer_error())?;
                        permit.send(self.tli, start, data);
                    }
                    info!("received interrupt signal, stopping at {}", self.received);
                    return self.finish(StreamEnd::Cancelled).await;
                }
                changed = flush_rx.changed() => {
                    if changed.is_err() || flush_rx.borrow().error.is_some() {
                        return Err(self.writer_error());
                    }
                    let f = self.flush_to_report();
                    if f != self.last_reported_flush && (self.opts.synchronous || self.opts.report_flush) {
                        self.send_status(false).await?;
                    }
                }
                permit = self.writer.reserve(), if pending.is_some() => {
                    let permit = permit.map_err(|_| self.writer_error())?;
                    let (start, data) = pending.take().expect("pending checked");
                    permit.send(self.tli, start, data);
                    // Listening again: the silence is measured from now.
                    last_heard = Instant::now();
                    pinged = false;
                }
                _ = &mut timer => {
                    armed = None;
                    let now = Instant::now();
                    if status_due.is_some_and(|d| d <= now) {
                        self.send_status(false).await?;
                        next_status = Instant::now() + interval.expect("interval set");
                    }
                    if silence_due.is_none_or(|d| d > now) {
                        continue;
                    }
                    let t = self.opts.receive_timeout.expect("timeout set");
                    if pinged {
                        return Err(ReceiverError::transient(format!(
                            "no message from the server for {} s (receive timeout); the server or the network is not responding",
                            t.as_secs()
                        )));
                    }
                    debug!("no message from the server for {} ms; asking for a reply", (t / 2).as_millis());
                    self.send_status(true).await?;
                    pinged = true;
                }
                r = self.conn.fill(), if pending.is_none() => {
                    r?;
                    last_heard = Instant::now();
                    pinged = false;
                }
            }
        }
    }

    /// Handles one message during streaming. Returns `Some` when the session is over.
    async fn handle_message(
        &mut self,
        msg: BackendMessage,
        pending: &mut Option<(Lsn, Bytes)>,
    ) -> Result<Option<StreamEnd>, ReceiverError> {
        match msg {
            BackendMessage::CopyData(payload) => match parse_replication_message(payload)
                .map_err(|e| self.violation(ReceiverError::from(e)))?
            {
                ReplicationMessage::XLogData {
                    start, mut data, ..
                } => {
                    if start != self.received {
                        let what = if self.received == self.start {
                            "the stream must begin where START_REPLICATION asked"
                        } else if start > self.received {
                            "a gap in the stream"
                        } else {
                            "an overlap in the stream"
                        };
                        return Err(self.violation(ReceiverError::fatal(format!(
                            "server sent WAL starting at {start}, but walsink expected {}: {what}",
                            self.received
                        ))));
                    }
                    if let Some(end) = self.opts.endpos
                        && start.0 + data.len() as u64 > end.0
                    {
                        data.truncate(end.saturating_sub(start) as usize);
                    }
                    if data.is_empty() {
                        return Ok(None);
                    }
                    self.received = Lsn(start.0 + data.len() as u64);
                    // Queue at once if there is room; otherwise park it and stop reading.
                    match self.writer.reserve_now() {
                        Some(permit) => permit.send(self.tli, start, data),
                        None => *pending = Some((start, data)),
                    }
                }
                ReplicationMessage::Keepalive {
                    reply_requested, ..
                } => {
                    if reply_requested {
                        // Answer at once with what is durable now; the flush the server
                        // is waiting for is reported the moment it completes.
                        self.writer.request_flush();
                        self.send_status(false).await?;
                    }
                }
            },
            BackendMessage::CopyDone => {
                // End of a historic timeline.
                encode_copy_done(self.conn.send_buf());
                self.conn.flush().await?;
                self.writer
                    .close()
                    .await
                    .map_err(|e| ReceiverError::from(ArcArchiveError(e)))?;
                let first = self.conn.read_message().await?;
                let next = match first {
                    m @ BackendMessage::RowDescription(_) => finish_result(self.conn, m).await?,
                    BackendMessage::ErrorResponse(e) => {
                        return Err(ReceiverError::from_server(&e, "error at end of timeline"));
                    }
                    other => {
                        return Err(ReceiverError::fatal(format!(
                            "unexpected message '{}' from server after end of timeline",
                            other.tag()
                        )));
                    }
                };
                return Ok(Some(StreamEnd::EndOfTimeline {
                    next,
                    received: self.received,
                }));
            }
            BackendMessage::CommandComplete(_) => {
                // The server ended the stream: shutdown or promotion of the upstream.
                return Err(ReceiverError::transient(format!(
                    "replication stream was terminated by the server at {}",
                    self.received
                )));
            }
            BackendMessage::ErrorResponse(e) => {
                return Err(ReceiverError::from_server(
                    &e,
                    "unexpected termination of replication stream",
                ));
            }
            BackendMessage::NoticeResponse(n) => info!("server notice: {n}"),
            BackendMessage::ParameterStatus { .. } => {}
            other => {
                return Err(self.violation(ReceiverError::fatal(format!(
                    "unexpected message '{}' from server during streaming",
                    other.tag().escape_default()
                ))));
            }
        }
        Ok(None)
    }

    /// Ends the session from our side: everything received is written and flushed,
    /// a final status update reports it, then CopyDone, then wait for the server's end.
    async fn finish(&mut self, end: StreamEnd) -> Result<StreamEnd, ReceiverError> {
        self.writer
            .close()
            .await
            .map_err(|e| ReceiverError::from(ArcArchiveError(e)))?;
        self.send_status(false).await?;
        encode_copy_done(self.conn.send_buf());
        self.conn.flush().await?;
        let done = tokio::time::timeout(END_COPY_TIMEOUT, async {
            loop {
                match self.conn.read_message().await? {
                    BackendMessage::ReadyForQuery(_) => return Ok::<_, ReceiverError>(()),
                    BackendMessage::ErrorResponse(e) => {
                        debug!("server error while ending the stream: {e}");
                    }
                    _ => {}
                }
            }
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!("connection ended while finishing the stream: {e}"),
            Err(_) => debug!("server did not acknowledge the end of streaming in time"),
        }
        Ok(end)
    }
}

/// Adapts the writer's shared error into a classified [`ReceiverError`].
pub(crate) struct ArcArchiveError(pub std::sync::Arc<walsink_archive::ArchiveError>);

impl From<ArcArchiveError> for ReceiverError {
    fn from(e: ArcArchiveError) -> Self {
        // A full disk that broke the writer (a failed fsync): the session ends and the
        // reconnect loop starts over from the archive, once there is space again.
        let kind = if e.0.is_disk_full() {
            crate::error::ErrorKind::DiskFull
        } else {
            crate::error::ErrorKind::Archive
        };
        ReceiverError::new(kind, format!("could not write WAL: {}", e.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use walsink_archive::ArchiveError;

    #[test]
    fn a_writer_broken_by_a_full_disk_ends_the_session_as_retryable() {
        let io = |errno| {
            ReceiverError::from(ArcArchiveError(std::sync::Arc::new(ArchiveError::Io {
                path: "x".into(),
                op: "fdatasync",
                source: std::io::Error::from_raw_os_error(errno),
            })))
        };
        let full = io(libc::ENOSPC);
        assert_eq!(full.kind(), ErrorKind::DiskFull);
        assert!(full.is_transient());
        assert!(
            full.to_string()
                .starts_with("could not write WAL: could not fdatasync")
        );
        let other = io(libc::EIO);
        assert_eq!(other.kind(), ErrorKind::Archive);
        assert!(!other.is_transient());
    }
}
