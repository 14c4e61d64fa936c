//! The daemon loop: connect, decide where to start, stream, follow timelines, and
//! reconnect with capped, jittered backoff.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use walsink_archive::{Archive, StartPoint, SyncMode};
use walsink_protocol::conninfo::Target;
use walsink_protocol::query::{
    IdentifySystem, SlotInfo, create_physical_slot_command, drop_slot_command,
    parse_read_replication_slot, parse_timeline_history, parse_wal_segment_size,
    read_replication_slot_command, timeline_history_command,
};
use walsink_wal::{Lsn, TimelineId, WalSegSize};

pub use crate::config::ReceiveConfig;
use crate::conn::{Connection, describe};
use crate::error::{ErrorKind, ReceiverError};
use crate::failover;
use crate::gap;
use crate::observe::Phase;
use crate::server::open;
use crate::stream::{ArcArchiveError, FirstWrites, StreamEnd, StreamOptions, stream};
use crate::writer::{self, Writer, WriterConfig};

/// How a run that did not fail ended.
enum RunEnd {
    /// `--endpos` reached or shutdown requested.
    Finished,
    /// A gap was accepted and recorded: start again at once, after it.
    AfterGap,
}

/// Smallest and largest pause between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A stream that lasted this long resets the backoff.
const HEALTHY_STREAM: Duration = Duration::from_secs(30);
/// After a crash of a previous walsink, its walsender may hold the slot for a moment
/// longer; by default "slot in use" is retried this long before it counts as needing a
/// human ([`ReceiveConfig::slot_in_use_grace`]).
pub const SLOT_IN_USE_GRACE: Duration = Duration::from_secs(10);

/// Runs the receiver until `--endpos`, cancellation, or an error that needs a human
/// (or any error with `--no-loop`). Publishes its progress in `cfg.observer`, which ends
/// [`Phase::Stopped`] or [`Phase::Failed`] with the error.
pub async fn receive(cfg: ReceiveConfig, cancel: CancellationToken) -> Result<(), ReceiverError> {
    let obs = cfg.observer.clone();
    obs.set_receive_timeout(cfg.receive_timeout);
    obs.set_directory(&cfg.dir);
    obs.set_phase(Phase::Connecting, None);
    let r = receive_loop(cfg, cancel).await;
    match &r {
        Ok(()) => obs.set_phase(Phase::Stopped, None),
        Err(e) => obs.set_phase(Phase::Failed, Some(e.to_string())),
    }
    r
}

async fn receive_loop(cfg: ReceiveConfig, cancel: CancellationToken) -> Result<(), ReceiverError> {
    let sync = if cfg.no_sync {
        SyncMode::NoSync
    } else {
        SyncMode::Sync
    };
    // Lent to the writer while it runs (it writes every file in the directory).
    let mut archive = Some(Archive::open(&cfg.dir, sync)?);
    let mut backoff = BACKOFF_MIN;
    let mut failures: u32 = 0;
    let mut last_error: Option<String> = None;
    let mut first_failure_at: Option<Instant> = None;
    let mut last_kind: Option<ErrorKind> = None;
    let mut last_target: Option<Target> = None;
    loop {
        let started = Instant::now();
        let streamed = AtomicBool::new(false);
        // Announce each recovery; not while waiting for a busy slot, where every
        // attempt connects and then finds the slot still busy.
        let announce = failures > 0 && last_kind != Some(ErrorKind::SlotInUse);
        let result = run_once(
            &cfg,
            &mut archive,
            sync,
            &cancel,
            announce,
            &streamed,
            &mut last_target,
        )
        .await;
        last_kind = result.as_ref().err().map(|e| e.kind());
        match result {
            Ok(RunEnd::Finished) => return Ok(()),
            Ok(RunEnd::AfterGap) => {
                backoff = BACKOFF_MIN;
                failures = 0;
                first_failure_at = None;
                last_error = None;
            }
            Err(e) => {
                if cancel.is_cancelled() {
                    return Ok(());
                }
                // A connection that streamed before it broke proves the server is
                // reachable: start the backoff over.
                if streamed.load(Ordering::Relaxed) || started.elapsed() >= HEALTHY_STREAM {
                    backoff = BACKOFF_MIN;
                    failures = 0;
                    first_failure_at = None;
                    last_error = None;
                }
                let failing_since = *first_failure_at.get_or_insert_with(Instant::now);
                let slot_grace = e.kind() == ErrorKind::SlotInUse
                    && failing_since.elapsed() < cfg.slot_in_use_grace;
                if !slot_grace && (cfg.no_loop || !e.is_transient()) {
                    return Err(e);
                }
                failures += 1;
                // Each failure is logged once; the same failure again only at debug level.
                let msg = e.to_string();
                if last_error.as_deref() != Some(msg.as_str()) {
                    // One event per line (a server's DETAIL or HINT), so every line
                    // carries the daemon's source name and log formats stay one line each.
                    for line in msg.lines() {
                        warn!("{line}");
                    }
                    if slot_grace {
                        warn!(
                            "retrying for up to {} s in case the slot's previous user is just going away",
                            cfg.slot_in_use_grace.as_secs_f64()
                        );
                    } else {
                        info!(
                            "retrying with backoff (at most {} s between attempts) until it succeeds",
                            BACKOFF_MAX.as_secs()
                        );
                    }
                    last_error = Some(msg);
                }
                cfg.observer
                    .set_phase(Phase::Reconnecting, last_error.clone());
                // Full jitter between half and all of the current backoff.
                let pause = backoff.mul_f64(rand::rng().random_range(0.5..=1.0));
                debug!("retrying in {} ms (attempt {failures})", pause.as_millis());
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(pause) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                cfg.observer.reconnecting();
            }
        }
    }
}

/// Runs `f` on the archive on a blocking thread (it reads files: `.walsink.meta`, history
/// files), so the runtime thread keeps handling signals and timers whatever the file
/// system does. `None` when cancelled first (the archive is then not given back, and is
/// opened again if needed).
async fn off_runtime<T: Send + 'static>(
    archive: &mut Option<Archive>,
    cancel: &CancellationToken,
    f: impl FnOnce(&mut Archive) -> T + Send + 'static,
) -> Option<T> {
    let mut a = archive.take().expect("the archive is open between runs");
    let span = tracing::Span::current();
    let task = tokio::task::spawn_blocking(move || {
        let r = span.in_scope(|| f(&mut a));
        (a, r)
    });
    tokio::select! {
        joined = task => match joined {
            Ok((a, r)) => {
                *archive = Some(a);
                Some(r)
            }
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        },
        _ = cancel.cancelled() => None,
    }
}

async fn run_once(
    cfg: &ReceiveConfig,
    archive: &mut Option<Archive>,
    sync: SyncMode,
    cancel: &CancellationToken,
    announce_reconnect: bool,
    streamed: &AtomicBool,
    last_target: &mut Option<Target>,
) -> Result<RunEnd, ReceiverError> {
    let (mut conn, id) = tokio::select! {
        r = open(cfg) => r?,
        _ = cancel.cancelled() => return Ok(RunEnd::Finished),
    };
    let what = match conn.in_hot_standby() {
        Some(true) => ", a standby",
        Some(false) => ", a primary",
        None => "",
    };
    match last_target.replace(conn.target.clone()) {
        Some(previous) if previous != conn.target => info!(
            "connected to server {} (timeline {}{what}); the previous connection was to server {}",
            describe(&conn.target),
            id.timeline,
            describe(&previous)
        ),
        _ if announce_reconnect => info!("connected to server {} again", describe(&conn.target)),
        None if cfg.conn.targets.len() > 1 => info!(
            "connected to server {} (timeline {}{what})",
            describe(&conn.target),
            id.timeline
        ),
        _ => debug!("connected to server {}", describe(&conn.target)),
    }
    let seg = parse_wal_segment_size(&conn.query("SHOW wal_segment_size").await?)?;
    if archive.is_none() {
        // The previous writer did not give it back (its thread panicked).
        *archive = Some(Archive::open(&cfg.dir, sync)?);
    }
    // Read-only: nothing in the archive changes until the server, the timeline and the
    // slot have all been checked (the writer's pin below). Reading `.walsink.meta` runs
    // on a blocking thread, so signals are handled even if the file system hangs.
    let system_id = id.system_id;
    let Some(verified) =
        off_runtime(archive, cancel, move |a| a.verify_identity(system_id, seg)).await
    else {
        return Ok(RunEnd::Finished);
    };
    verified?;

    if cfg.create_slot_if_missing
        && let Some(slot) = &cfg.slot
    {
        failover::ensure_slot(&mut conn, slot).await?;
    }
    let (tli, start, from_archive) = {
        let arch = archive.as_mut().expect("given back above");
        start_position(cfg, arch, &mut conn, &id, seg).await?
    };
    // After a failover: the archive's timeline may have ended (or run past the fork
    // point) in the server's history.
    let archived_history = if tli == TimelineId::ONE {
        None
    } else {
        match off_runtime(archive, cancel, move |a| a.read_history(tli)).await {
            Some(h) => h?,
            None => return Ok(RunEnd::Finished),
        }
    };
    let (mut tli, mut start) = failover::follow_history(
        &mut conn,
        tli,
        start,
        id.timeline,
        seg,
        from_archive.as_ref(),
        archived_history.as_deref(),
    )
    .await?;
    if let Some(slot) = &cfg.slot {
        failover::check_slot_coverage(&mut conn, slot, tli, start, seg).await?;
    }
    let flush_floor = match from_archive {
        Some(sp) if sp.from_partial && sp.tli == tli && sp.lsn == start => {
            match off_runtime(archive, cancel, move |a| {
                a.partial_written_end(tli, start, seg)
            })
            .await
            {
                Some(end) => resume_floor(end?, id.xlogpos),
                None => return Ok(RunEnd::Finished),
            }
        }
        _ => Lsn::INVALID,
    };
    if let Some(end) = cfg.endpos
        && end <= start
    {
        info!("end position {end} reached before streaming started at {start}");
        conn.close().await;
        return Ok(RunEnd::Finished);
    }
    let mut opts = StreamOptions {
        slot: cfg.slot.clone(),
        endpos: cfg.endpos,
        status_interval: cfg.status_interval,
        receive_timeout: cfg.receive_timeout,
        report_flush: (cfg.slot.is_some() || cfg.synchronous) && !cfg.no_sync,
        synchronous: cfg.synchronous,
        flush_floor,
        observer: cfg.observer.clone(),
    };
    let writer_cfg = WriterConfig {
        synchronous: cfg.synchronous,
        flush_bytes: cfg.flush_bytes,
        flush_interval: cfg.flush_interval,
        observer: cfg.observer.clone(),
    };
    let arch = archive.as_mut().expect("given back above");
    let mut segments = arch.segment_writer_with(
        seg,
        cfg.write_options
            .unwrap_or_else(|| writer::default_options(cfg.synchronous)),
    )?;
    segments.set_observer(cfg.observer.write_observer());
    let writer = Writer::start(
        archive.take().expect("opened above"),
        segments,
        writer_cfg,
        tokio::runtime::Handle::current(),
        cancel.clone(),
    );
    let result: Result<(), ReceiverError> = async {
        // Nothing is written to the archive before the server has accepted
        // START_REPLICATION: the pin and the timeline's history file wait in
        // `FirstWrites` until it has (a slot in use, WAL already removed or a missing
        // slot only show there).
        let mut pin = true;
        loop {
            let mut first = FirstWrites {
                pin: std::mem::take(&mut pin),
                history: None,
            };
            if tli != TimelineId::ONE && !writer.has_history(tli) {
                let rs = conn.query(&timeline_history_command(tli)).await?;
                let h = parse_timeline_history(&rs, tli)?;
                walsink_wal::TimelineHistory::parse(tli, &h.content).map_err(|e| {
                    ReceiverError::fatal(format!(
                        "server sent an invalid history file {}: {e}",
                        h.filename
                    ))
                })?;
                first.history = Some((tli, h.content.to_vec()));
            }
            writer
                .reset(tli, start)
                .await
                .map_err(|_| ReceiverError::from(ArcArchiveError(writer.failure())))?;
            info!("starting log streaming at {start} (timeline {tli})");
            match stream(
                &mut conn, &writer, tli, start, &opts, cancel, streamed, first,
            )
            .await?
            {
                // The session checked the next timeline: after this one, and beginning
                // within what was received.
                StreamEnd::EndOfTimeline { next, .. } => {
                    info!("switched to timeline {} at {}", next.tli, next.start);
                    // The floor was for re-streaming the `.partial` of the first timeline.
                    opts.flush_floor = Lsn::INVALID;
                    tli = next.tli;
                    start = seg.segment_start(next.start);
                }
                StreamEnd::EndposReached => {
                    info!(
                        "stopped log streaming at end position {}",
                        cfg.endpos.unwrap_or_default()
                    );
                    return Ok(());
                }
                StreamEnd::Cancelled => return Ok(()),
            }
        }
    }
    .await;
    // Whatever happened, make what was received durable and keep the .partial.
    let closed = writer.close().await;
    conn.close().await;
    let flushed = closed.map_err(|e| ReceiverError::from(ArcArchiveError(e)));
    let end = match (result, flushed) {
        (Err(e), flushed) if e.kind() == ErrorKind::WalRemoved && !cancel.is_cancelled() => {
            // What the archive has now ends where this session's WAL ended (all of it
            // written by the close), or at the session's start.
            let from = match flushed {
                Ok(f) if f > start => f,
                _ => start,
            };
            tokio::select! {
                r = gap::missing_wal(cfg, &writer, seg, tli, from, e) => r.map(|()| RunEnd::AfterGap),
                _ = cancel.cancelled() => Ok(RunEnd::Finished),
            }
        }
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(_)) => Ok(RunEnd::Finished),
    };
    *archive = writer.shutdown();
    end
}

/// The floor for the flush positions reported while the archive's `.partial` is re-streamed
/// from its segment start (as pg_receivewal does; its bytes are rewritten and synced again,
/// so a torn write a crash left in it is repaired): where its WAL ends (`written_end`, from
/// its page and record headers), at or past every position reported flushed from it before
/// the restart, so the slot's restart_lsn never moves backwards. Capped at the server's
/// position (`xlogpos`), so it never waits for WAL the server does not have (a synchronous
/// standby that did would hold up commits).
fn resume_floor(written_end: Option<Lsn>, xlogpos: Lsn) -> Lsn {
    match written_end {
        Some(end) => {
            let floor = end.min(xlogpos);
            debug!(
                "the archive's .partial holds WAL up to {end}: no flush position below {floor} is reported"
            );
            floor
        }
        None => Lsn::INVALID,
    }
}

/// pg_receivewal's start-position rule: the archive's newest segment, else the slot's
/// restart_lsn (PostgreSQL 15+), else the server's flush position; segment aligned.
/// Unlike pg_receivewal, "newest" is on the archive's newest timeline: an older
/// timeline may hold higher segments, written by an old primary past the point where
/// the newer timeline forked from it. Also returns the archive's start point, if the
/// position came from the archive.
async fn start_position(
    cfg: &ReceiveConfig,
    archive: &Archive,
    conn: &mut Connection,
    id: &IdentifySystem,
    seg: WalSegSize,
) -> Result<(TimelineId, Lsn, Option<StartPoint>), ReceiverError> {
    let starts = archive.find_starts(seg)?;
    if let Some(&sp) = starts.last() {
        if let Some(g) = archive.gap_containing(sp.lsn, seg) {
            // Accepted with --allow-gap; nothing after the gap is archived yet. The
            // gap's end is on the server's timeline of that position.
            let to = seg.segment_start(g.to);
            let tli = gap::server_timeline_of(conn, id, to).await?;
            info!(
                "the archive ends in the recorded gap {}..{}; resuming after it at {to}",
                g.from, g.to
            );
            return Ok((tli, to, None));
        }
        debug!(?sp, "resuming from the archive");
        for old in starts.iter().filter(|o| o.lsn > sp.lsn) {
            debug!(
                "the archive's timeline {} reaches further ({}) than its newest timeline {}; that WAL is not on timeline {}",
                old.tli, old.lsn, sp.tli, sp.tli
            );
        }
        return Ok((sp.tli, sp.lsn, Some(sp)));
    }
    if let Some(slot) = &cfg.slot
        && conn.server.server_version_num().unwrap_or(0) >= 150000
    {
        let rs = conn.query(&read_replication_slot_command(slot)).await?;
        match parse_read_replication_slot(&rs)? {
            SlotInfo::Missing => return Err(failover::slot_missing(slot)),
            SlotInfo::Other(kind) => return Err(failover::not_physical(slot, &kind)),
            SlotInfo::Physical {
                restart_lsn: Some(lsn),
                restart_tli,
            } => {
                let tli = restart_tli.unwrap_or(id.timeline);
                return Ok((tli, seg.segment_start(lsn), None));
            }
            SlotInfo::Physical {
                restart_lsn: None, ..
            } => {}
        }
    }
    Ok((id.timeline, seg.segment_start(id.xlogpos), None))
}

/// `--create-slot`: creates a physical slot that reserves WAL at once, then returns.
pub async fn create_slot(cfg: &ReceiveConfig, if_not_exists: bool) -> Result<(), ReceiverError> {
    let slot = cfg
        .slot
        .as_deref()
        .ok_or_else(|| ReceiverError::fatal("no slot name given"))?;
    let (mut conn, _) = open(cfg).await?;
    info!("creating replication slot \"{slot}\"");
    let r = conn.query(&create_physical_slot_command(slot, true)).await;
    conn.close().await;
    match r {
        Ok(_) => Ok(()),
        Err(e) if if_not_exists && e.sqlstate() == Some("42710") => {
            info!("replication slot \"{slot}\" already exists");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// `--drop-slot`: drops a slot, then returns.
pub async fn drop_slot(cfg: &ReceiveConfig) -> Result<(), ReceiverError> {
    let slot = cfg
        .slot
        .as_deref()
        .ok_or_else(|| ReceiverError::fatal("no slot name given"))?;
    let (mut conn, _) = open(cfg).await?;
    info!("dropping replication slot \"{slot}\"");
    let r = conn.query(&drop_slot_command(slot)).await;
    conn.close().await;
    r.map(|_| ())
}
