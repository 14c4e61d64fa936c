//! No silent gaps: what happens when the server no longer has the WAL the archive needs.
//!
//! The server says so in two ways: `requested WAL segment X has already been removed`
//! (SQLSTATE 58P01) once streaming starts, and, from PostgreSQL 18 on, `can no longer
//! access replication slot` for a slot invalidated by `max_slot_wal_keep_size`. Either
//! way walsink finds out which WAL is gone, from where its archive ends (`from`) to the
//! oldest position the server can still stream, by asking the server to stream single
//! segments (a binary search over fresh connections, without the slot). Then:
//!
//! * without `--allow-gap` it stops with [`ErrorKind::WalRemoved`] (exit 14) and a
//!   message naming the missing range;
//! * with `--allow-gap` it records the gap in `.walsink.meta`
//!   (by the writer, [`Writer::record_gap`]) and the caller restarts: the start position
//!   then skips to the gap's end ([`walsink_archive::Archive::gap_containing`]). The record is written before any WAL
//!   past the gap, so a crash in between cannot leave an unrecorded gap.
//!
//! An invalidated slot on PostgreSQL 18 is refused from every position, so there
//! `--allow-gap` cannot continue either: walsink stops with exit 14, records nothing and
//! says to re-create the slot; the next run (with `--allow-gap`) then meets the server's
//! `has already been removed` and records the gap as above.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};
use walsink_archive::Gap;
use walsink_protocol::copy::{ReplicationMessage, encode_query, parse_replication_message};
use walsink_protocol::frame::BackendMessage;
use walsink_protocol::query::{
    IdentifySystem, SlotInfo, parse_read_replication_slot, parse_timeline_history,
    read_replication_slot_command, start_replication_command, timeline_history_command,
};
use walsink_wal::{Lsn, SegNo, SegmentName, TimelineHistory, TimelineId, WalSegSize};

use crate::config::ReceiveConfig;
use crate::conn::Connection;
use crate::error::{Context, ErrorKind, ReceiverError};
use crate::server::open;
use crate::writer::Writer;

/// How long one probe may wait for the server's first answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// The timeline that `lsn` belongs to on the server: its current timeline, or the
/// ancestor its history file gives for `lsn`.
pub(crate) async fn server_timeline_of(
    conn: &mut Connection,
    id: &IdentifySystem,
    lsn: Lsn,
) -> Result<TimelineId, ReceiverError> {
    Ok(match server_history(conn, id).await? {
        Some(h) => h.timeline_of(lsn),
        None => id.timeline,
    })
}

async fn server_history(
    conn: &mut Connection,
    id: &IdentifySystem,
) -> Result<Option<TimelineHistory>, ReceiverError> {
    if id.timeline == TimelineId::ONE {
        return Ok(None);
    }
    let rs = conn.query(&timeline_history_command(id.timeline)).await?;
    let h = parse_timeline_history(&rs, id.timeline)?;
    let history = TimelineHistory::parse(id.timeline, &h.content).map_err(|e| {
        ReceiverError::fatal(format!(
            "server sent an invalid history file {}: {e}",
            h.filename
        ))
    })?;
    Ok(Some(history))
}

/// What the server still has, as far as walsink could find out.
struct ServerWal {
    /// The oldest segment start at or after `from`'s segment that the server streams
    /// (by probing), or why probing failed.
    oldest: Result<Lsn, ReceiverError>,
    /// The slot's restart_lsn: `None` without a slot (or before PostgreSQL 15),
    /// `Some(None)` for a slot without one (invalidated, or never reserved WAL).
    slot_restart: Option<Option<Lsn>>,
    /// The segment start of the server's current flush position.
    current: Lsn,
    /// The server's timeline of a position.
    history: Option<TimelineHistory>,
    /// The server's current timeline.
    timeline: TimelineId,
}

impl ServerWal {
    fn timeline_of(&self, lsn: Lsn) -> TimelineId {
        self.history
            .as_ref()
            .map_or(self.timeline, |h| h.timeline_of(lsn))
    }
}

/// Asks the server what it still has, from `from` on.
async fn inspect(
    cfg: &ReceiveConfig,
    seg: WalSegSize,
    from: Lsn,
) -> Result<ServerWal, ReceiverError> {
    let (mut conn, id) = open(cfg).await?;
    let history = server_history(&mut conn, &id).await?;
    let slot_restart = match &cfg.slot {
        Some(slot) if conn.server.server_version_num().unwrap_or(0) >= 150000 => {
            let rs = conn.query(&read_replication_slot_command(slot)).await?;
            match parse_read_replication_slot(&rs)? {
                SlotInfo::Physical { restart_lsn, .. } => Some(restart_lsn),
                _ => None,
            }
        }
        _ => None,
    };
    conn.close().await;
    let mut wal = ServerWal {
        oldest: Err(ReceiverError::fatal("not probed")),
        slot_restart,
        current: seg.segment_start(id.xlogpos),
        history,
        timeline: id.timeline,
    };
    wal.oldest = oldest_available(cfg, seg, from, id.xlogpos, &wal).await;
    Ok(wal)
}

/// The start of the oldest segment at or after `from`'s that the server can stream,
/// by binary search: the server removes WAL oldest first, so "still there" holds from
/// some segment on up to its current one.
async fn oldest_available(
    cfg: &ReceiveConfig,
    seg: WalSegSize,
    from: Lsn,
    server_end: Lsn,
    wal: &ServerWal,
) -> Result<Lsn, ReceiverError> {
    if server_end <= from {
        return Err(ReceiverError::fatal(format!(
            "the server's WAL ends at {server_end}, before {from}"
        )));
    }
    let probe_seg = |n: u64| {
        let lsn = seg.start_of(SegNo(n));
        probe(cfg, wal.timeline_of(lsn), lsn)
    };
    let first = seg.segno(from).0;
    // The newest segment with WAL to send, so that the probe gets an answer at once.
    let last = seg.segno(Lsn(server_end.0 - 1)).0;
    if probe_seg(first).await? {
        return Ok(seg.start_of(SegNo(first)));
    }
    if !probe_seg(last).await? {
        return Err(ReceiverError::fatal(format!(
            "the server does not stream even its newest segment (at {})",
            seg.start_of(SegNo(last))
        )));
    }
    let (mut gone, mut there) = (first, last);
    while there - gone > 1 {
        let mid = gone + (there - gone) / 2;
        if probe_seg(mid).await? {
            there = mid;
        } else {
            gone = mid;
        }
    }
    Ok(seg.start_of(SegNo(there)))
}

/// Whether the server streams WAL from `lsn` on `tli`: `START_REPLICATION` (no slot) on
/// a fresh connection; the first WAL it sends means yes, "has already been removed"
/// means no.
async fn probe(cfg: &ReceiveConfig, tli: TimelineId, lsn: Lsn) -> Result<bool, ReceiverError> {
    let (mut conn, _) = open(cfg).await?;
    let cmd = start_replication_command(None, lsn, tli);
    let answer = tokio::time::timeout(PROBE_TIMEOUT, async {
        encode_query(&cmd, conn.send_buf());
        conn.flush().await?;
        loop {
            match conn.read_message().await? {
                BackendMessage::CopyBothResponse
                | BackendMessage::NoticeResponse(_)
                | BackendMessage::ParameterStatus { .. } => {}
                BackendMessage::CopyData(payload) => match parse_replication_message(payload)? {
                    ReplicationMessage::XLogData { .. } => return Ok(true),
                    ReplicationMessage::Keepalive { .. } => {}
                },
                // A historic timeline that ends exactly here: nothing is missing.
                BackendMessage::RowDescription(_) => return Ok(true),
                BackendMessage::ErrorResponse(e) => {
                    let err = ReceiverError::from_server_doing(
                        &e,
                        Context::StartReplication {
                            slot: false,
                            server_version: conn.server.server_version_num().unwrap_or(0),
                        },
                        format!("probing with \"{cmd}\""),
                    );
                    if err.kind() == ErrorKind::WalRemoved {
                        return Ok(false);
                    }
                    return Err(err);
                }
                other => {
                    return Err(ReceiverError::fatal(format!(
                        "unexpected message '{}' from server in reply to \"{cmd}\"",
                        other.tag()
                    )));
                }
            }
        }
    })
    .await;
    conn.close().await;
    let available = answer.unwrap_or_else(|_| {
        Err(ReceiverError::transient(format!(
            "no answer to \"{cmd}\" within {} s",
            PROBE_TIMEOUT.as_secs()
        )))
    })?;
    debug!(%lsn, %tli, available, "probed the server's WAL");
    Ok(available)
}

/// Handles a [`ErrorKind::WalRemoved`] failure `cause` of a session that needed WAL
/// from `from` on timeline `tli`.
///
/// Returns `Ok(())` when the gap was accepted (`--allow-gap`) and recorded: streaming
/// restarts at once and resumes after it. Otherwise returns the error to stop with,
/// naming the missing range.
pub(crate) async fn missing_wal(
    cfg: &ReceiveConfig,
    writer: &Writer,
    seg: WalSegSize,
    tli: TimelineId,
    from: Lsn,
    cause: ReceiverError,
) -> Result<(), ReceiverError> {
    let wal = match inspect(cfg, seg, from).await {
        Ok(w) => w,
        // Before accepting a gap, know how large it is: try again later.
        Err(e) if cfg.allow_gap && e.is_transient() => {
            return Err(e.context("could not ask the server which WAL it still has"));
        }
        Err(e) => {
            debug!("could not ask the server which WAL it still has: {e}");
            let err = missing_error(&cause, from, tli, seg, None, None, Some(&e), cfg.allow_gap);
            let err = if cause.is_slot_invalidated() {
                invalidated_slot_error(&err, cfg.slot.as_deref().unwrap_or(""), cfg.allow_gap)
            } else {
                err
            };
            return Err(err.because(cause));
        }
    };
    let slot_note = match (&cfg.slot, wal.slot_restart) {
        (Some(slot), Some(None)) => Some(format!(
            "replication slot \"{slot}\" has no restart_lsn: it was invalidated (the server removed the WAL it held back, for example because of max_slot_wal_keep_size)"
        )),
        _ => None,
    };
    let probed = wal.oldest.as_ref().ok().map(|&l| (l, wal.timeline_of(l)));
    if let Some((oldest, _)) = probed
        && oldest <= from
    {
        // The WAL is there: what failed is the slot (PostgreSQL 18 refuses an
        // invalidated one), or the server changed its mind; a gap would not help.
        let slot = cfg.slot.as_deref().unwrap_or("");
        return Err(ReceiverError::new(
            ErrorKind::WalRemoved,
            format!(
                "{}\nDETAIL (walsink): the server still has the WAL the archive needs (from {from} on){}\nHINT (walsink):  the replication slot cannot be used any more: drop and re-create it (walsink receive -S {slot} --drop-slot, then --create-slot), then start walsink again",
                cause.summary(),
                slot_note.map(|n| format!("; {n}")).unwrap_or_default(),
            ),
        )
        .because(cause));
    }
    // PostgreSQL 18 refuses an invalidated slot for good, from any position: neither a
    // new directory nor --allow-gap streams again until the slot is re-created, so no
    // gap is recorded then (the run after the re-creation records it with --allow-gap).
    let invalidated = cause.is_slot_invalidated();
    if invalidated || !cfg.allow_gap {
        let err = missing_error(
            &cause,
            from,
            tli,
            seg,
            probed,
            slot_note.as_deref(),
            wal.oldest.as_ref().err(),
            false,
        );
        let err = if invalidated {
            invalidated_slot_error(&err, cfg.slot.as_deref().unwrap_or(""), cfg.allow_gap)
        } else {
            err
        };
        return Err(err.because(cause));
    }

    // --allow-gap: continue from the oldest WAL the server still has, best known first.
    // A probe that failed for a passing reason (a lost connection, no free walsender)
    // is tried again later rather than settling for a later position.
    if let Err(e) = &wal.oldest
        && e.is_transient()
    {
        return Err(ReceiverError::transient(format!(
            "could not find out which WAL the server still has: {e}"
        )));
    }
    let (to, why) = match (&wal.oldest, wal.slot_restart) {
        (Ok(oldest), _) => (
            *oldest,
            "the oldest WAL the server still has (found by asking it to stream single segments)"
                .to_owned(),
        ),
        (Err(e), Some(Some(restart))) if restart > from => (
            seg.segment_start(restart),
            format!(
                "the replication slot's restart_lsn, the oldest WAL the server keeps for walsink (the server could not be probed for older WAL: {e})"
            ),
        ),
        (Err(e), _) => (
            wal.current,
            format!(
                "the server's current position, the only position known to be there: the server could not be probed ({e}) and the slot has no restart_lsn, so older WAL the server may still have is skipped too"
            ),
        ),
    };
    if to <= from {
        return Err(missing_error(
            &cause,
            from,
            tli,
            seg,
            None,
            slot_note.as_deref(),
            wal.oldest.as_ref().err(),
            true,
        )
        .because(cause));
    }
    let mut reason = cause
        .server_message()
        .map_or_else(|| cause.summary(), str::to_owned);
    if let Some(n) = &slot_note {
        reason.push_str("; ");
        reason.push_str(n);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let gap = Gap::new(from, to, now, &reason);
    warn!(
        "--allow-gap: accepting a gap in the archive: the server no longer has WAL {from}..{to} (segment {} up to {}); continuing at {to} (timeline {}), {why}",
        SegmentName::containing(tli, from, seg).file_name(seg),
        SegmentName::containing(wal.timeline_of(to), to, seg).file_name(seg),
        wal.timeline_of(to),
    );
    writer.record_gap(gap.clone()).await?;
    warn!(
        "recorded gap {gap} in {}",
        cfg.dir.join(walsink_archive::META_FILE).display()
    );
    info!("restarting at the end of the gap");
    Ok(())
}

/// The exit-14 error: names the missing range `from..oldest` (or `from` onward).
#[allow(clippy::too_many_arguments)]
fn missing_error(
    cause: &ReceiverError,
    from: Lsn,
    tli: TimelineId,
    seg: WalSegSize,
    oldest: Option<(Lsn, TimelineId)>,
    slot_note: Option<&str>,
    probe_error: Option<&ReceiverError>,
    allow_gap: bool,
) -> ReceiverError {
    let first = SegmentName::containing(tli, from, seg).file_name(seg);
    let range = match oldest {
        Some((to, to_tli)) => format!(
            "from {from} (segment {first}) to {to}: the oldest WAL it still has starts at {to} (segment {})",
            SegmentName::containing(to_tli, to, seg).file_name(seg)
        ),
        None => format!("from {from} (segment {first}) onward"),
    };
    let mut msg = format!(
        "the server no longer has WAL {range}; the archive needs it, and continuing would leave a gap in the archive\nDETAIL (walsink): {}",
        cause.summary()
    );
    if let Some(n) = slot_note {
        msg.push_str("; ");
        msg.push_str(n);
    }
    if let Some(e) = probe_error {
        msg.push_str(&format!(
            "; could not find out where the server's WAL starts now: {}",
            e.summary()
        ));
    }
    msg.push_str("\nHINT (walsink):  ");
    if allow_gap {
        msg.push_str("--allow-gap was given, but no position after the missing WAL is known to be on the server; start again later or start a new archive directory");
    } else {
        msg.push_str("start a new archive directory, or run again with --allow-gap to continue from the oldest WAL the server still has and record the gap in .walsink.meta; to keep this from happening, stream through a replication slot (-S) and give max_slot_wal_keep_size room for walsink's downtime");
    }
    ReceiverError::new(ErrorKind::WalRemoved, msg)
}

/// The exit-14 error for WAL that is gone behind a slot the server refuses because it
/// was invalidated (PostgreSQL 18 on): `missing` (from [`missing_error`]) with a hint to
/// re-create the slot first, and, with `--allow-gap`, why no gap was recorded.
fn invalidated_slot_error(missing: &ReceiverError, slot: &str, allow_gap: bool) -> ReceiverError {
    let mut msg = format!(
        "{}\nHINT (walsink):  the replication slot \"{slot}\" was invalidated, and the server refuses to stream through it from any position: drop and re-create it (walsink receive -S {slot} --drop-slot, then --create-slot), then ",
        missing.summary()
    );
    if allow_gap {
        msg.push_str("run again with --allow-gap; --allow-gap cannot continue through the invalidated slot, so no gap was recorded in .walsink.meta");
    } else {
        msg.push_str("start a new archive directory, or run again with --allow-gap to continue from the oldest WAL the server still has and record the gap in .walsink.meta; to keep this from happening, give max_slot_wal_keep_size room for walsink's downtime");
    }
    ReceiverError::new(ErrorKind::WalRemoved, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use walsink_protocol::ServerError;

    fn removed() -> ReceiverError {
        ReceiverError::from_server(
            &ServerError {
                severity: "ERROR".into(),
                code: "58P01".into(),
                message: "requested WAL segment 000000010000000000000003 has already been removed"
                    .into(),
                ..Default::default()
            },
            Context::Streaming { slot: false },
        )
    }

    fn seg16m() -> WalSegSize {
        WalSegSize::DEFAULT
    }

    #[test]
    fn the_error_names_the_missing_range() {
        let e = missing_error(
            &removed(),
            Lsn(0x300_0000),
            TimelineId::ONE,
            seg16m(),
            Some((Lsn(0x500_0000), TimelineId::ONE)),
            Some("replication slot \"s\" has no restart_lsn"),
            None,
            false,
        );
        assert_eq!(e.kind(), ErrorKind::WalRemoved);
        let m = e.to_string();
        assert!(
            m.starts_with("the server no longer has WAL from 0/3000000 (segment 000000010000000000000003) to 0/5000000: the oldest WAL it still has starts at 0/5000000 (segment 000000010000000000000005); the archive needs it"),
            "{m}"
        );
        assert!(
            m.contains("requested WAL segment 000000010000000000000003 has already been removed"),
            "{m}"
        );
        assert!(
            m.contains("replication slot \"s\" has no restart_lsn"),
            "{m}"
        );
        assert!(
            m.contains(
                "\nHINT (walsink):  start a new archive directory, or run again with --allow-gap"
            ),
            "{m}"
        );
        // Only one hint: the cause's own is replaced.
        assert_eq!(m.matches("HINT (walsink)").count(), 1, "{m}");
    }

    fn slot_refused() -> ReceiverError {
        ReceiverError::from_server(
            &ServerError {
                severity: "ERROR".into(),
                code: "55000".into(),
                message: "can no longer access replication slot \"s\"".into(),
                detail: Some(
                    "This replication slot has been invalidated due to \"wal_removed\".".into(),
                ),
                ..Default::default()
            },
            Context::StartReplication {
                slot: true,
                server_version: 180006,
            },
        )
    }

    #[test]
    fn an_invalidated_slot_says_to_recreate_it_and_records_no_gap() {
        assert!(slot_refused().is_slot_invalidated());
        assert_eq!(slot_refused().kind(), ErrorKind::WalRemoved);
        assert!(!removed().is_slot_invalidated());
        for allow_gap in [false, true] {
            let missing = missing_error(
                &slot_refused(),
                Lsn(0x300_0000),
                TimelineId::ONE,
                seg16m(),
                Some((Lsn(0x500_0000), TimelineId::ONE)),
                None,
                None,
                false,
            );
            let e = invalidated_slot_error(&missing, "s", allow_gap);
            assert_eq!(e.kind(), ErrorKind::WalRemoved);
            let m = e.to_string();
            assert!(
                m.starts_with("the server no longer has WAL from 0/3000000 (segment 000000010000000000000003) to 0/5000000"),
                "{m}"
            );
            assert!(
                m.contains("can no longer access replication slot \"s\""),
                "{m}"
            );
            assert!(
                m.contains("HINT (walsink):  the replication slot \"s\" was invalidated")
                    && m.contains("--drop-slot, then --create-slot"),
                "{m}"
            );
            assert_eq!(m.matches("HINT (walsink)").count(), 1, "{m}");
            assert_eq!(m.contains("no gap was recorded"), allow_gap, "{m}");
        }
    }

    #[test]
    fn an_unknown_end_is_said_so() {
        let probe = ReceiverError::transient("connection refused");
        let m = missing_error(
            &removed(),
            Lsn(0x312_3456),
            TimelineId::ONE,
            seg16m(),
            None,
            None,
            Some(&probe),
            false,
        )
        .to_string();
        assert!(
            m.starts_with("the server no longer has WAL from 0/3123456 (segment 000000010000000000000003) onward;"),
            "{m}"
        );
        assert!(
            m.contains("could not find out where the server's WAL starts now: connection refused"),
            "{m}"
        );
    }
}
