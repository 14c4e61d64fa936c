//! Following the primary through a failover: continuing the archive on the server's
//! timeline when the archive's own timeline ran past the fork point, and making sure
//! the slot walsink streams from exists and covers what it needs.

use tracing::{debug, info, warn};
use walsink_archive::StartPoint;
use walsink_protocol::query::{
    SlotInfo, create_physical_slot_command, parse_read_replication_slot, parse_timeline_history,
    read_replication_slot_command, timeline_history_command,
};
use walsink_wal::{Lsn, SegmentName, TimelineHistory, TimelineId, WalSegSize};

use crate::conn::{Connection, describe};
use crate::error::{ErrorKind, ReceiverError};

/// Where streaming starts on a server, given where the archive ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Start where the archive ends: on the server's timeline, or on an ancestor of it
    /// at or before the point where the server's history left that ancestor (the
    /// server streams the rest of it, then switches).
    AsIs,
    /// The archive's timeline runs past the point where the server's history forked
    /// from it: start on the timeline that followed it, at the segment holding the fork.
    Fork {
        /// The timeline the server's history continued on.
        tli: TimelineId,
        /// Segment start of the fork point.
        start: Lsn,
        /// Where the archive's timeline ended in the server's history.
        fork: Lsn,
    },
    /// The archive's timeline is newer than the server's.
    Ahead,
    /// The archive's timeline is not in the server's history at all.
    NotInHistory,
}

/// Decides where to start on a server whose timeline has `history`, when the archive
/// would resume on `tli` at `start` (a segment start).
///
/// A start exactly at the fork point is left to the server: it answers
/// START_REPLICATION there with the next timeline at once.
pub(crate) fn plan(
    tli: TimelineId,
    start: Lsn,
    history: &TimelineHistory,
    seg: WalSegSize,
) -> Plan {
    if tli == history.tli {
        return Plan::AsIs;
    }
    if tli > history.tli {
        return Plan::Ahead;
    }
    let Some(i) = history.ancestors.iter().position(|e| e.tli == tli) else {
        return Plan::NotInHistory;
    };
    let fork = history.ancestors[i].switchpoint;
    if start <= fork {
        return Plan::AsIs;
    }
    let next = history.ancestors.get(i + 1).map_or(history.tli, |e| e.tli);
    Plan::Fork {
        tli: next,
        start: seg.segment_start(fork),
        fork,
    }
}

/// Whether timeline `archived.tli`, as the archive's history file describes it, is
/// the same timeline in `server`'s history: the same ancestors with the same switch
/// points. Two promotions can pick the same timeline number on different branches (two
/// standbys of one primary, each promoted); their WAL must not be mixed.
pub(crate) fn same_branch(archived: &TimelineHistory, server: &TimelineHistory) -> bool {
    let n = archived.ancestors.len();
    if archived.tli == server.tli {
        return archived.ancestors == server.ancestors;
    }
    server.ancestors.len() > n
        && server.ancestors[..n] == archived.ancestors[..]
        && server.ancestors[n].tli == archived.tli
}

/// Applies [`plan`] against the server of `conn` (on `server_tli`): returns the
/// timeline and position to start streaming at, or a fatal error when the archive
/// cannot continue on this server. `archive` is the archive's start point that `tli`
/// and `start` came from, if they came from the archive (for messages), and
/// `archived_history` the archive's history file of `tli`, if it has one.
pub(crate) async fn follow_history(
    conn: &mut Connection,
    tli: TimelineId,
    start: Lsn,
    server_tli: TimelineId,
    seg: WalSegSize,
    archive: Option<&StartPoint>,
    archived_history: Option<&[u8]>,
) -> Result<(TimelineId, Lsn), ReceiverError> {
    if tli == server_tli && tli == TimelineId::ONE {
        return Ok((tli, start));
    }
    if tli > server_tli {
        return Err(ReceiverError::fatal(format!(
            "the archive continues on timeline {tli}, which is not present on the server (its timeline is {server_tli}); the archive is ahead of this server"
        )));
    }
    let rs = conn.query(&timeline_history_command(server_tli)).await?;
    let file = parse_timeline_history(&rs, server_tli)?;
    let history = TimelineHistory::parse(server_tli, &file.content).map_err(|e| {
        ReceiverError::fatal(format!(
            "server sent an invalid history file {}: {e}",
            file.filename
        ))
    })?;
    let plan = plan(tli, start, &history, seg);
    if plan == Plan::NotInHistory {
        return Err(ReceiverError::fatal(format!(
            "the archive continues timeline {tli}, which is not in the history of timeline {server_tli} of server {} ({}); the archive followed another branch than this server: use a new archive directory for it, or connect to a server of the archive's branch",
            describe(&conn.target),
            describe_history(&history)
        )));
    }
    if let Some(content) = archived_history {
        match TimelineHistory::parse(tli, content) {
            Ok(mine) if !same_branch(&mine, &history) => {
                return Err(ReceiverError::fatal(format!(
                    "the archive's timeline {tli} ({}) is not timeline {tli} of server {} ({}): two different promotions created a timeline {tli}; the archive followed the other one. Use a new archive directory for this server",
                    describe_history(&mine),
                    describe(&conn.target),
                    describe_history(&history)
                )));
            }
            Ok(_) => {}
            Err(e) => warn!(
                "cannot compare the archive's history file of timeline {tli} with the server's: {e}"
            ),
        }
    }
    match plan {
        Plan::AsIs => Ok((tli, start)),
        Plan::Ahead | Plan::NotInHistory => unreachable!("handled above"),
        Plan::Fork {
            tli: next,
            start: next_start,
            fork,
        } => {
            let newest = archive.map_or_else(String::new, |sp| {
                format!(" (its newest file there is {})", newest_file_name(sp, seg))
            });
            warn!(
                "the archive holds WAL of timeline {tli} past {fork}, where timeline {next} forked from it on server {}{newest}: that WAL is not part of timeline {server_tli}'s history (the old primary wrote it after the promoted server stopped receiving); keeping those files, and continuing on timeline {next} at {next_start}",
                describe(&conn.target)
            );
            Ok((next, next_start))
        }
    }
}

/// `timeline 1 until 0/5000123, then timeline 2` for messages.
fn describe_history(h: &TimelineHistory) -> String {
    let mut parts: Vec<String> = h
        .ancestors
        .iter()
        .map(|e| format!("timeline {} until {}", e.tli, e.switchpoint))
        .collect();
    parts.push(format!("then timeline {}", h.tli));
    parts.join(", ")
}

/// The name of the archive file a start point was derived from.
fn newest_file_name(sp: &StartPoint, seg: WalSegSize) -> String {
    if sp.from_partial {
        SegmentName::containing(sp.tli, sp.lsn, seg).partial_file_name(seg)
    } else {
        let last = Lsn(sp.lsn.0.saturating_sub(seg.bytes()));
        SegmentName::containing(sp.tli, last, seg).file_name(seg)
    }
}

/// `--create-slot-if-missing`: creates the physical slot `slot`, reserving WAL, when
/// the server does not have it (a promoted standby has none of its primary's slots).
///
/// PostgreSQL 15 and later are asked with READ_REPLICATION_SLOT first; older servers
/// get CREATE_REPLICATION_SLOT at every connection, and "already exists" is fine.
pub(crate) async fn ensure_slot(conn: &mut Connection, slot: &str) -> Result<(), ReceiverError> {
    if conn.server.server_version_num().unwrap_or(0) >= 150000 {
        let rs = conn.query(&read_replication_slot_command(slot)).await?;
        if parse_read_replication_slot(&rs)? != SlotInfo::Missing {
            return Ok(());
        }
    }
    match conn.query(&create_physical_slot_command(slot, true)).await {
        Ok(_) => {
            // The command's consistent_point is 0/0 for physical slots: read the slot.
            let mut from = String::new();
            if conn.server.server_version_num().unwrap_or(0) >= 150000 {
                let rs = conn.query(&read_replication_slot_command(slot)).await?;
                if let SlotInfo::Physical {
                    restart_lsn: Some(lsn),
                    ..
                } = parse_read_replication_slot(&rs)?
                {
                    from = format!(": it retains WAL from {lsn} on");
                }
            }
            warn!(
                "replication slot \"{slot}\" did not exist on server {}; created it (--create-slot-if-missing){from}",
                describe(&conn.target)
            );
            Ok(())
        }
        Err(e) if e.sqlstate() == Some("42710") => {
            debug!("replication slot \"{slot}\" already exists");
            Ok(())
        }
        Err(e) => Err(e.context(format!(
            "could not create replication slot \"{slot}\" (--create-slot-if-missing)"
        ))),
    }
}

/// Before streaming from `start` through `slot`: says so loudly when the slot does not
/// retain the WAL walsink needs (its restart_lsn is in a later segment than `start`,
/// e.g. a slot just created on a promoted standby). Streaming then works only if the
/// server still has that WAL anyway; if it does not, START_REPLICATION fails with
/// "has already been removed". Needs READ_REPLICATION_SLOT (PostgreSQL 15+); says
/// nothing on older servers.
pub(crate) async fn check_slot_coverage(
    conn: &mut Connection,
    slot: &str,
    tli: TimelineId,
    start: Lsn,
    seg: WalSegSize,
) -> Result<(), ReceiverError> {
    if conn.server.server_version_num().unwrap_or(0) < 150000 {
        return Ok(());
    }
    let rs = conn.query(&read_replication_slot_command(slot)).await?;
    match parse_read_replication_slot(&rs)? {
        SlotInfo::Physical {
            restart_lsn: Some(restart),
            restart_tli,
        } if seg.segment_start(restart) > start => {
            let on = restart_tli.map_or_else(String::new, |t| format!(" (timeline {t})"));
            warn!(
                "replication slot \"{slot}\" on server {} retains WAL only from {restart}{on}, but walsink needs it from {start} (timeline {tli}): the slot does not protect the WAL in between; streaming works only while the server still has it in pg_wal",
                describe(&conn.target)
            );
        }
        SlotInfo::Physical {
            restart_lsn: None, ..
        } => info!(
            "replication slot \"{slot}\" on server {} has no restart_lsn: it has reserved no WAL yet (it will retain WAL from where walsink reports), or it was invalidated (PostgreSQL 18 and later then refuse to stream through it)",
            describe(&conn.target)
        ),
        // Refused here rather than by START_REPLICATION, before anything is written.
        SlotInfo::Missing => return Err(slot_missing(slot)),
        SlotInfo::Other(kind) => return Err(not_physical(slot, &kind)),
        SlotInfo::Physical { .. } => {}
    }
    Ok(())
}

/// The error for a replication slot the server does not have (exit 12).
pub(crate) fn slot_missing(slot: &str) -> ReceiverError {
    ReceiverError::new(
        ErrorKind::SlotMissing,
        format!(
            "replication slot \"{slot}\" does not exist\nHINT (walsink):  create it with --create-slot, or name an existing slot with -S"
        ),
    )
}

/// The error for a slot that is not a physical one.
pub(crate) fn not_physical(slot: &str, kind: &str) -> ReceiverError {
    ReceiverError::fatal(format!(
        "replication slot \"{slot}\" is a {kind} slot; walsink needs a physical slot"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tli(n: u32) -> TimelineId {
        TimelineId::new(n).unwrap()
    }

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    fn seg() -> WalSegSize {
        WalSegSize::new(1 << 20).unwrap()
    }

    fn history(t: u32, content: &str) -> TimelineHistory {
        TimelineHistory::parse(tli(t), content.as_bytes()).unwrap()
    }

    #[test]
    fn same_timeline_starts_as_is() {
        let h = history(2, "1\t0/5000123\tno recovery target specified\n");
        assert_eq!(plan(tli(2), lsn("0/7000000"), &h, seg()), Plan::AsIs);
    }

    #[test]
    fn old_timeline_before_the_fork_is_streamed_by_the_server() {
        let h = history(2, "1\t0/5000123\tx\n");
        // In the segment holding the fork, and exactly at the fork: the server handles it.
        assert_eq!(plan(tli(1), lsn("0/5000000"), &h, seg()), Plan::AsIs);
        assert_eq!(plan(tli(1), lsn("0/3000000"), &h, seg()), Plan::AsIs);
        let aligned = history(2, "1\t0/5000000\tx\n");
        assert_eq!(plan(tli(1), lsn("0/5000000"), &aligned, seg()), Plan::AsIs);
    }

    #[test]
    fn old_timeline_past_the_fork_continues_on_the_next_timeline() {
        let h = history(2, "1\t0/5000123\tx\n");
        assert_eq!(
            plan(tli(1), lsn("0/6000000"), &h, seg()),
            Plan::Fork {
                tli: tli(2),
                start: lsn("0/5000000"),
                fork: lsn("0/5000123")
            }
        );
        // Two promotions: timeline 1 ran past its fork; continue on 2, not 3.
        let h3 = history(3, "1\t0/5000123\tx\n2\t0/9000040\ty\n");
        assert_eq!(
            plan(tli(1), lsn("0/A000000"), &h3, seg()),
            Plan::Fork {
                tli: tli(2),
                start: lsn("0/5000000"),
                fork: lsn("0/5000123")
            }
        );
        assert_eq!(
            plan(tli(2), lsn("0/A000000"), &h3, seg()),
            Plan::Fork {
                tli: tli(3),
                start: lsn("0/9000000"),
                fork: lsn("0/9000040")
            }
        );
        // An aligned fork point: start there on the new timeline.
        let aligned = history(2, "1\t0/5000000\tx\n");
        assert_eq!(
            plan(tli(1), lsn("0/5100000"), &aligned, seg()),
            Plan::Fork {
                tli: tli(2),
                start: lsn("0/5000000"),
                fork: lsn("0/5000000")
            }
        );
    }

    #[test]
    fn foreign_and_newer_timelines_are_refused() {
        // Timeline 3 forked from 1: an archive on timeline 2 followed another branch.
        let h = history(3, "1\t0/5000123\tx\n");
        assert_eq!(
            plan(tli(2), lsn("0/6000000"), &h, seg()),
            Plan::NotInHistory
        );
        assert_eq!(plan(tli(4), lsn("0/6000000"), &h, seg()), Plan::Ahead);
        assert_eq!(
            describe_history(&h),
            "timeline 1 until 0/5000123, then timeline 3"
        );
    }

    #[test]
    fn branches_are_told_apart_by_their_history() {
        let server = history(3, "1\t0/5000123\tx\n2\t0/9000040\ty\n");
        // The same timelines, with or without the reason text.
        assert!(same_branch(
            &history(2, "1\t0/5000123\tother reason\n"),
            &server
        ));
        assert!(same_branch(
            &history(3, "1\t0/5000123\n2\t0/9000040\n"),
            &server
        ));
        // Timeline 2 of another promotion (another switch point).
        assert!(!same_branch(&history(2, "1\t0/5000200\tx\n"), &server));
        assert!(!same_branch(
            &history(3, "1\t0/5000123\tx\n2\t0/9000041\ty\n"),
            &server
        ));
        // A timeline the server's history does not have.
        assert!(!same_branch(
            &history(4, "1\t0/5000123\tx\n2\t0/9000040\ty\n3\t0/A000000\n"),
            &server
        ));
        let skipping = history(3, "1\t0/5000123\tx\n");
        assert!(!same_branch(&history(2, "1\t0/5000123\tx\n"), &skipping));
    }

    #[test]
    fn newest_file_names() {
        let partial = StartPoint {
            tli: tli(1),
            lsn: lsn("0/7000000"),
            from_partial: true,
        };
        assert_eq!(
            newest_file_name(&partial, seg()),
            "000000010000000000000070.partial"
        );
        let complete = StartPoint {
            tli: tli(1),
            lsn: lsn("0/7000000"),
            from_partial: false,
        };
        assert_eq!(
            newest_file_name(&complete, seg()),
            "00000001000000000000006F"
        );
    }
}
