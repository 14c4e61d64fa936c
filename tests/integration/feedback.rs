//! Feedback: the standby status updates walsink sends tell the server the truth.
//!
//! What the server sees (`pg_stat_replication`, `pg_replication_slots`) per mode (README "Durability"):
//!
//! - no slot, no `--synchronous`: write advances, flush is never reported (NULL), as pg_receivewal;
//! - a slot: flush (and with it the slot's restart_lsn) follows what is `fdatasync`ed, within the flush
//!   interval, never past write, and never backwards across a SIGKILL and restart;
//! - `--synchronous`: walsink is a synchronous standby; commits wait for its flush;
//! - `--no-sync`: flush is never reported, so a slot does not advance;
//! - `-s N`: a status update at least every N seconds, also while idle;
//! - with a slot, the start position is reported flushed right after START_REPLICATION, so an idle
//!   server's slot gets its restart_lsn at once (Barman's `barman check` needs it set).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{
    PgCluster, WAIT, Walsink, WalsinkProcess, archive, archive_dir, create_slot, format_lsn,
    parse_lsn, restart_lsn, wait_for,
};

/// How soon a flush must be reported in the default mode (flush interval 1 s, plus slack for a busy machine).
const FLUSH_WAIT: Duration = Duration::from_secs(10);

// ---- helpers --------------------------------------------------------------------------------------------

/// walsink's row in pg_stat_replication.
#[derive(Debug, Clone)]
struct Sender {
    pid: String,
    state: String,
    write: Option<u64>,
    flush: Option<u64>,
    replay: Option<u64>,
    sync_state: String,
    /// `reply_time` as seconds since the epoch (the send time walsink put in its last status update).
    reply_time: Option<f64>,
}

/// The pg_stat_replication rows of `application_name = app`.
fn senders(pg: &PgCluster, app: &str) -> Vec<Sender> {
    let lsn = |v: &Option<String>| v.as_deref().map(parse_lsn);
    pg.sql(&format!(
        "SELECT pid::text, state, write_lsn::text, flush_lsn::text, replay_lsn::text, sync_state, \
         extract(epoch FROM reply_time)::text \
         FROM pg_stat_replication WHERE application_name = '{app}'"
    ))
    .into_iter()
    .map(|r| Sender {
        pid: r[0].clone().unwrap_or_default(),
        state: r[1].clone().unwrap_or_default(),
        write: lsn(&r[2]),
        flush: lsn(&r[3]),
        replay: lsn(&r[4]),
        sync_state: r[5].clone().unwrap_or_default(),
        reply_time: r[6]
            .as_deref()
            .map(|t| t.parse().expect("reply_time epoch")),
    })
    .collect()
}

/// The single walsender serving `app`, if any (panics if there are several).
fn sender(pg: &PgCluster, app: &str) -> Option<Sender> {
    let mut rows = senders(pg, app);
    assert!(rows.len() <= 1, "several walsenders for {app}: {rows:?}");
    rows.pop()
}

/// Starts `walsink receive -D dir -d <conninfo> <extra>` and waits until the server streams to it
/// (`application_name` `app`).
fn start_walsink(
    pg: &PgCluster,
    dir: &Path,
    conninfo: &str,
    app: &str,
    extra: &[&str],
) -> WalsinkProcess {
    let dir = dir.to_str().expect("UTF-8 temp path");
    let mut args = vec!["receive", "-D", dir, "-d", conninfo];
    args.extend_from_slice(extra);
    let mut ws = Walsink::spawn(&args);
    let streaming = wait_for(
        || {
            !ws.is_running()
                || sender(pg, app).is_some_and(|s| s.state == "streaming" && s.write.is_some())
        },
        WAIT,
    );
    assert!(
        streaming && ws.is_running(),
        "walsink {} is not streaming (running: {})\n--- stderr ---\n{}",
        args.join(" "),
        ws.is_running(),
        ws.stderr_text()
    );
    ws
}

/// Stops walsink with SIGINT; it must exit 0.
fn stop(ws: &mut WalsinkProcess) {
    let status = ws.interrupt_and_wait(WAIT);
    assert_eq!(
        status.code(),
        Some(0),
        "walsink did not exit 0 on SIGINT\n--- stderr ---\n{}",
        ws.stderr_text()
    );
}

/// Asserts that the archive holds the server's WAL up to `lsn` (exclusive): the segment holding byte
/// `lsn - 1`, completed or `.partial`, equals pg_wal's up to there. A flush position the server was told
/// must be backed by these bytes in the files.
fn assert_archived_through(pg: &PgCluster, dir: &Path, lsn: u64) {
    let seg = pg.wal_segsize_bytes();
    let name = pg.walfile_name(&format_lsn(lsn));
    let upto = usize::try_from((lsn - 1) % seg + 1).expect("offset fits usize");
    let completed = dir.join(&name);
    let partial = dir.join(format!("{name}.partial"));
    // The .partial may be renamed between the two reads; try the completed name again after it.
    let archived = fs::read(&completed)
        .or_else(|_| fs::read(&partial))
        .or_else(|_| fs::read(&completed))
        .unwrap_or_else(|e| {
            panic!(
                "flush reported up to {}, but the archive has no {name}: {e}; archive: {:?}",
                format_lsn(lsn),
                archive::list(dir)
            )
        });
    let original = fs::read(pg.pg_wal_dir().join(&name)).expect("read pg_wal segment");
    assert!(archived.len() >= upto && original.len() >= upto);
    if let Some(i) = (0..upto).find(|&i| archived[i] != original[i]) {
        panic!(
            "flush reported up to {}, but the archive's {name} differs from pg_wal at offset {i:#x}",
            format_lsn(lsn)
        );
    }
}

/// How long one psql run may take; a commit stuck waiting for a synchronous standby fails the test here.
/// (statement_timeout cannot bound it: PostgreSQL disables the statement timeout before it commits, so
/// the wait for the synchronous standby is never cancelled by it.)
const PSQL_TIMEOUT: Duration = Duration::from_secs(30);

/// A psql command against `pg` over TCP: each `-c` is its own transaction; it stops at the first error.
fn psql_command(pg: &PgCluster, commands: &[&str]) -> Command {
    let mut cmd = Command::new(pg.bin("psql"));
    crate::harness::pg::clean_env(&mut cmd);
    cmd.args([
        "-X",
        "-q",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        &pg.conninfo(),
    ]);
    for c in commands {
        cmd.arg("-c").arg(c);
    }
    cmd
}

/// Runs psql to completion (at most [`PSQL_TIMEOUT`]); it must succeed with nothing on stderr (a commit
/// whose wait for the synchronous standby was cancelled prints a WARNING). Returns stdout, trimmed.
fn psql_ok(pg: &PgCluster, commands: &[&str]) -> String {
    let out = Walsink::run_command(psql_command(pg, commands), PSQL_TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.is_empty(),
        "psql failed ({:?}):\n{err}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// How many psql sessions are waiting for a synchronous standby to confirm their commit.
fn commits_waiting_for_sync_standby(pg: &PgCluster) -> u32 {
    pg.sql_one(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'psql' AND wait_event = 'SyncRep'",
    )
    .expect("count")
    .parse()
    .expect("a number")
}

// ---- tests ----------------------------------------------------------------------------------------------

/// Without a slot and without `--synchronous`, walsink reports what it received (write) and never a flush
/// position, not even after it completed (and synced) a segment; apply is never reported.
#[test]
fn without_slot_write_advances_and_flush_stays_null() {
    let pg = PgCluster::builder()
        .setting("wal_keep_size", "64MB")
        .start();
    let dir = archive_dir();
    let mut ws = start_walsink(&pg, dir.path(), &pg.conninfo(), "walsink", &["-s", "1"]);
    let first = sender(&pg, "walsink").expect("walsink streams");
    let first_write = first.write.expect("write_lsn reported");

    let target = parse_lsn(&pg.generate_wal(1_500_000));
    let mut seen: Vec<Sender> = Vec::new();
    let sample = |seen: &mut Vec<Sender>| {
        let s = sender(&pg, "walsink").expect("walsink still streams");
        seen.push(s.clone());
        s
    };
    assert!(
        wait_for(
            || sample(&mut seen).write.is_some_and(|w| w >= target),
            WAIT
        ),
        "write_lsn did not reach {} (last: {:?})",
        format_lsn(target),
        seen.last()
    );
    assert!(target > first_write);
    assert!(
        wait_for(|| !archive::completed_segments(dir.path()).is_empty(), WAIT),
        "no segment completed: {:?}",
        archive::list(dir.path())
    );
    // Two more flush intervals and status updates, to give a wrong flush report time to show.
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        sample(&mut seen);
        std::thread::sleep(Duration::from_millis(100));
    }
    for s in &seen {
        assert_eq!(s.flush, None, "walsink reported a flush position: {s:?}");
        assert_eq!(s.replay, None, "walsink reported an apply position: {s:?}");
        assert_eq!(s.sync_state, "async");
    }
    stop(&mut ws);
    assert!(archive::assert_completed_identical(dir.path(), &pg.pg_wal_dir()) >= 1);
}

/// With a slot (default flush policy), flush_lsn reaches the server's position within seconds, never
/// exceeds write_lsn, is backed by the archive's bytes, and the slot's restart_lsn follows it. After a
/// SIGKILL and a restart, restart_lsn never moves backwards: the restarted walsink re-streams its `.partial`
/// from the segment start, and with PostgreSQL's default 16 MiB segments that `.partial` is larger than
/// `--flush-bytes` (4 MB), so it flushes below the old position on the way and must not report that.
#[test]
fn with_slot_flush_and_restart_lsn_advance_and_never_go_back() {
    let pg = PgCluster::builder()
        .wal_segsize_mb(16)
        .setting("wal_keep_size", "256MB")
        .start();
    let dir = archive_dir();
    let slot = "walsink_fb";
    create_slot(&pg, slot);
    let created = restart_lsn(&pg, slot).expect("--create-slot reserves WAL");
    // Default flags, status interval 10 s: flush reports must not wait for the periodic update.
    let args = ["-S", slot];
    let mut ws = start_walsink(&pg, dir.path(), &pg.conninfo(), "walsink", &args);

    let check = |pg: &PgCluster, at_least: u64| -> bool {
        let Some(s) = sender(pg, "walsink") else {
            return false;
        };
        if let (Some(f), Some(w)) = (s.flush, s.write) {
            assert!(f <= w, "flush_lsn is past write_lsn: {s:?}");
        }
        s.flush.is_some_and(|f| f >= at_least)
    };
    pg.switch_wal();
    let target = parse_lsn(&pg.generate_wal(9 << 20));
    assert!(
        wait_for(|| check(&pg, target), FLUSH_WAIT),
        "flush_lsn did not reach {} within {FLUSH_WAIT:?}: {:?}\n{}",
        format_lsn(target),
        sender(&pg, "walsink"),
        ws.stderr_text()
    );
    assert!(
        wait_for(
            || restart_lsn(&pg, slot).is_some_and(|r| r >= target),
            FLUSH_WAIT
        ),
        "restart_lsn did not follow the flush to {}: {:?}",
        format_lsn(target),
        restart_lsn(&pg, slot)
    );
    let flush = sender(&pg, "walsink").and_then(|s| s.flush).unwrap();
    assert_archived_through(&pg, dir.path(), flush);
    assert!(created < target);

    // SIGKILL: no final flush, no goodbye. The slot keeps what was confirmed.
    let before = restart_lsn(&pg, slot).expect("restart_lsn");
    assert!(
        before % pg.wal_segsize_bytes() > 4 << 20,
        "the .partial must hold more than --flush-bytes for this test"
    );
    let old_pid = sender(&pg, "walsink").expect("walsink streams").pid;
    ws.kill9();
    ws.wait_timeout(WAIT);
    assert!(
        wait_for(|| sender(&pg, "walsink").is_none(), WAIT),
        "the killed walsink's walsender did not go away"
    );
    assert_eq!(restart_lsn(&pg, slot), Some(before));

    // Restart, sampling from the moment it starts, as fast as the server answers, through the catch-up and
    // more than one flush interval; then new WAL, which the slot must follow.
    let dir_arg = dir.path().to_str().expect("UTF-8 temp path").to_owned();
    let conninfo = pg.conninfo();
    let mut restart_args = vec!["receive", "-D", &dir_arg, "-d", &conninfo];
    restart_args.extend_from_slice(&args);
    let mut ws = Walsink::spawn(&restart_args);
    let mut restarts: Vec<u64> = Vec::new();
    let mut flushes: Vec<u64> = Vec::new();
    let sample = |restarts: &mut Vec<u64>, flushes: &mut Vec<u64>| -> u64 {
        let r = restart_lsn(&pg, slot).expect("restart_lsn");
        restarts.push(r);
        flushes.extend(sender(&pg, "walsink").and_then(|s| s.flush));
        r
    };
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        sample(&mut restarts, &mut flushes);
    }
    assert!(
        ws.is_running(),
        "restarted walsink exited\n{}",
        ws.stderr_text()
    );
    let s = sender(&pg, "walsink").expect("the restarted walsink streams");
    assert_ne!(s.pid, old_pid);
    let target2 = parse_lsn(&pg.generate_wal(300 * 1024));
    assert!(
        wait_for(
            || sample(&mut restarts, &mut flushes) >= target2,
            FLUSH_WAIT
        ),
        "restart_lsn did not advance to {} after the restart: {:?}\n{}",
        format_lsn(target2),
        restarts.last().map(|r| format_lsn(*r)),
        ws.stderr_text()
    );
    let back: Vec<String> = restarts
        .iter()
        .chain(&flushes)
        .filter(|&&l| l < before)
        .map(|&l| format_lsn(l))
        .collect();
    assert!(
        back.is_empty(),
        "after the restart the server was told (and the slot moved to) positions below the restart_lsn {} \
         confirmed before the kill ({} of {} samples): first {:?}, last {:?}; restart_lsn samples {:?}\n{}",
        format_lsn(before),
        back.len(),
        restarts.len() + flushes.len(),
        back.first(),
        back.last(),
        restarts.iter().map(|&l| format_lsn(l)).collect::<Vec<_>>(),
        ws.stderr_text()
    );
    let flush = sender(&pg, "walsink").and_then(|s| s.flush).unwrap();
    assert_archived_through(&pg, dir.path(), flush);
    stop(&mut ws);
    archive::assert_completed_identical(dir.path(), &pg.pg_wal_dir());
}

/// The floor of the restart above is where the `.partial`'s WAL ends, read from its page and record headers
/// (`walsink_wal::tail::written_end`). On real WAL of the server's major (records from a header alone to
/// several pages, full-page images after a checkpoint, a switch and its padding): the segment cut at any
/// position a sender stops at (every record's start, or the page boundary before it, and every page
/// boundary) and zero-filled after it, as a receiver leaves its `.partial`, ends exactly there; once the
/// switch record is in, at the segment end.
#[test]
fn a_partial_written_to_any_record_end_or_page_boundary_ends_exactly_there() {
    use walsink_wal::Lsn;
    use walsink_wal::tail::written_end;

    let pg = PgCluster::builder().start();
    let seg = pg.wal_segsize_bytes();
    let start = parse_lsn(&pg.switch_wal());
    let start = start.div_ceil(seg) * seg;
    pg.execute("CREATE TABLE t (id int, pad text)");
    pg.execute("INSERT INTO t SELECT i, repeat('y', i % 700) FROM generate_series(1, 600) i");
    pg.execute("CHECKPOINT");
    pg.execute("UPDATE t SET pad = pad || 'z' WHERE id % 7 = 0");
    pg.execute("SELECT pg_logical_emit_message(false, 'walsink-test', repeat('m', 60000))");
    pg.execute("INSERT INTO t SELECT i, repeat('w', i % 40) FROM generate_series(1, 300) i");
    let end = parse_lsn(&pg.switch_wal());
    assert!(
        end < start + seg,
        "the records must fit in one segment (from {} to {})",
        format_lsn(start),
        format_lsn(end)
    );
    // (pg_walfile_name names the segment before a segment boundary.)
    let name = pg.walfile_name(&format_lsn(start + 1));
    let image = fs::read(pg.pg_wal_dir().join(&name)).expect("read the segment from pg_wal");
    assert_eq!(image.len() as u64, seg);

    let mut cmd = crate::harness::clean_command(pg.bin("pg_waldump"));
    cmd.arg("--path").arg(pg.pg_wal_dir()).arg(&name);
    let out = Walsink::run_command(cmd, WAIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let starts: Vec<u64> = stdout
        .lines()
        .filter_map(|l| l.split("lsn: ").nth(1)?.split(',').next())
        .map(parse_lsn)
        .collect();
    assert!(
        starts.len() > 900 && stdout.contains("FPI") && stdout.contains("SWITCH"),
        "pg_waldump listed too little, or no full-page image or switch:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    const BLCKSZ: u64 = 8192;
    let mut points: Vec<u64> = starts
        .iter()
        .map(|&s| match s % BLCKSZ {
            24 if s % seg != 40 => s - 24,
            40 if s % seg == 40 => s - 40,
            _ => s,
        })
        .collect();
    points.extend((1..seg / BLCKSZ).map(|i| start + i * BLCKSZ));
    points.push(start + seg);
    points.sort_unstable();
    points.dedup();
    // After the switch the rest of the segment is padding the server flushed with it: its end counts.
    let switch = starts.last().copied().expect("records");
    let mut checked = 0;
    for p in points.into_iter().filter(|&p| p > start) {
        let mut cut = image.clone();
        cut[(p - start) as usize..].fill(0);
        let want = if p > switch { start + seg } else { p };
        assert_eq!(
            written_end(&cut, Lsn(start)),
            Some(Lsn(want)),
            "{name} written up to {}",
            format_lsn(p)
        );
        checked += 1;
    }
    assert!(checked > 1000, "only {checked} positions checked");
}

/// `--synchronous` with `synchronous_standby_names = 'walsink'`: walsink is the synchronous standby, commits
/// complete as soon as it has flushed them, and flush_lsn covers each commit. Without walsink, a commit
/// waits (its backend sits in wait_event SyncRep); with walsink back, it completes and commits proceed.
#[test]
fn synchronous_walsink_is_a_sync_standby_that_commits_wait_for() {
    let pg = PgCluster::builder()
        .setting("wal_keep_size", "64MB")
        .start();
    let dir = archive_dir();
    pg.execute("CREATE TABLE t (id int)");
    let mut ws = start_walsink(
        &pg,
        dir.path(),
        &pg.conninfo(),
        "walsink",
        &["--synchronous"],
    );
    // Only now make the primary wait for walsink (the harness's own setup commits would otherwise hang).
    pg.execute("ALTER SYSTEM SET synchronous_standby_names = 'walsink'");
    pg.execute("ALTER SYSTEM SET synchronous_commit = 'on'");
    pg.execute("SELECT pg_reload_conf()");
    let is_sync = || sender(&pg, "walsink").is_some_and(|s| s.sync_state == "sync");
    assert!(
        wait_for(is_sync, WAIT),
        "walsink did not become the synchronous standby: {:?}\n{}",
        sender(&pg, "walsink"),
        ws.stderr_text()
    );

    // 50 commits; each returns only once walsink has confirmed its flush.
    let mut commands: Vec<String> = (1..=50)
        .map(|i| format!("INSERT INTO t VALUES ({i})"))
        .collect();
    commands.push("INSERT INTO t VALUES (51) RETURNING pg_current_wal_insert_lsn()".to_owned());
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let last_insert = parse_lsn(&psql_ok(&pg, &commands));
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(10), "51 commits took {took:?}");
    // The commit returned, so the server has walsink's confirmation of a flush past its commit record.
    let s = sender(&pg, "walsink").expect("walsink streams");
    assert_eq!(s.sync_state, "sync");
    assert!(
        s.flush.is_some_and(|f| f > last_insert),
        "flush_lsn {:?} is not past the last commit (insert position {})",
        s.flush.map(format_lsn),
        format_lsn(last_insert)
    );
    assert_eq!(
        s.replay, None,
        "walsink must never report an apply position"
    );
    assert_archived_through(&pg, dir.path(), s.flush.unwrap());
    assert_eq!(pg.sql_one("SELECT count(*) FROM t").as_deref(), Some("51"));
    assert_eq!(commits_waiting_for_sync_standby(&pg), 0);

    // Without walsink, a commit waits for it: after 2 s it still has not returned.
    stop(&mut ws);
    assert!(wait_for(|| sender(&pg, "walsink").is_none(), WAIT));
    let mut waiting = WalsinkProcess::spawn_command(psql_command(
        &pg,
        &["INSERT INTO t VALUES (52) RETURNING pg_current_wal_insert_lsn()"],
    ));
    assert!(
        wait_for(|| commits_waiting_for_sync_standby(&pg) == 1, WAIT),
        "the commit did not wait for the synchronous standby (psql running: {}):\n{}",
        waiting.is_running(),
        waiting.stderr_text()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        waiting.is_running() && commits_waiting_for_sync_standby(&pg) == 1,
        "the commit returned without walsink:\n{}",
        waiting.stderr_text()
    );

    // walsink back: the waiting commit completes, and new commits proceed.
    let mut ws = start_walsink(
        &pg,
        dir.path(),
        &pg.conninfo(),
        "walsink",
        &["--synchronous"],
    );
    let status = waiting.wait_timeout(PSQL_TIMEOUT);
    assert!(
        status.success() && waiting.stderr_text().is_empty(),
        "the waiting commit did not complete once walsink was back ({status:?}):\n{}",
        waiting.stderr_text()
    );
    let waited_insert = parse_lsn(waiting.stdout_text().trim());
    assert!(
        wait_for(is_sync, WAIT),
        "restarted walsink is not the synchronous standby: {:?}\n{}",
        sender(&pg, "walsink"),
        ws.stderr_text()
    );
    let t0 = Instant::now();
    let last_insert = parse_lsn(&psql_ok(
        &pg,
        &["INSERT INTO t VALUES (53) RETURNING pg_current_wal_insert_lsn()"],
    ));
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(5), "a commit took {took:?}");
    let s = sender(&pg, "walsink").expect("walsink streams");
    assert!(
        s.flush
            .is_some_and(|f| f > last_insert && f > waited_insert),
        "{s:?}"
    );
    assert_eq!(pg.sql_one("SELECT count(*) FROM t").as_deref(), Some("53"));

    // Stop waiting for walsink before it goes away, so the cluster's shutdown does not hang on it.
    pg.execute("ALTER SYSTEM RESET synchronous_standby_names");
    pg.execute("SELECT pg_reload_conf()");
    stop(&mut ws);
    archive::assert_completed_identical(dir.path(), &pg.pg_wal_dir());
}

/// `--no-sync` with a slot: nothing is fsynced, so no flush is ever reported and the slot stays where
/// `--create-slot` put it, even across completed segments.
#[test]
fn no_sync_with_slot_never_reports_a_flush() {
    let pg = PgCluster::builder()
        .setting("wal_keep_size", "64MB")
        .start();
    let dir = archive_dir();
    let slot = "walsink_nosync";
    create_slot(&pg, slot);
    let created = restart_lsn(&pg, slot).expect("--create-slot reserves WAL");
    let mut ws = start_walsink(
        &pg,
        dir.path(),
        &pg.conninfo(),
        "walsink",
        &["-S", slot, "--no-sync", "-s", "1"],
    );
    let target = parse_lsn(&pg.generate_wal(1_500_000));
    let mut seen: Vec<Sender> = Vec::new();
    assert!(
        wait_for(
            || {
                let s = sender(&pg, "walsink").expect("walsink streams");
                seen.push(s.clone());
                s.write.is_some_and(|w| w >= target)
            },
            WAIT
        ),
        "write_lsn did not reach {}: {:?}",
        format_lsn(target),
        seen.last()
    );
    assert!(!archive::completed_segments(dir.path()).is_empty());
    // Longer than the flush interval and two status updates.
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        seen.push(sender(&pg, "walsink").expect("walsink streams"));
        assert_eq!(restart_lsn(&pg, slot), Some(created), "the slot moved");
        std::thread::sleep(Duration::from_millis(100));
    }
    for s in &seen {
        assert_eq!(s.flush, None, "--no-sync reported a flush position: {s:?}");
    }
    stop(&mut ws);
    // Even the final status update at shutdown reports no flush: the slot still has not moved.
    assert_eq!(restart_lsn(&pg, slot), Some(created), "the slot moved");
    assert!(archive::assert_completed_identical(dir.path(), &pg.pg_wal_dir()) >= 1);
}

/// `-s 1`: status updates keep coming while idle (reply_time, walsink's own send time, keeps advancing),
/// while in the same time the default walsink (`-s 10`) on the same server sends at most one. The cadence
/// itself (exact intervals, `-s 0`) is unit-tested on a simulated clock in `walsink_protocol::session`;
/// this checks that the flag and its default reach it.
#[test]
fn status_interval_one_second_updates_while_idle() {
    let pg = PgCluster::start_default();
    let fast_dir = archive_dir();
    let slow_dir = archive_dir();
    let fast_conn = format!("{} application_name=walsink_s1", pg.conninfo());
    let slow_conn = format!("{} application_name=walsink_s10", pg.conninfo());
    let mut fast = start_walsink(&pg, fast_dir.path(), &fast_conn, "walsink_s1", &["-s", "1"]);
    let mut slow = start_walsink(&pg, slow_dir.path(), &slow_conn, "walsink_s10", &[]);

    // Idle: nothing writes WAL on purpose. Sample both until the -s 1 walsink has sent three more
    // status updates (at least two seconds, as walsink stamps them with its own clock).
    let mut fast_times: Vec<f64> = Vec::new();
    let mut slow_times: Vec<f64> = Vec::new();
    let three_more = wait_for(
        || {
            for (app, times) in [
                ("walsink_s1", &mut fast_times),
                ("walsink_s10", &mut slow_times),
            ] {
                let t = sender(&pg, app)
                    .and_then(|s| s.reply_time)
                    .unwrap_or_else(|| panic!("{app} has no reply_time"));
                if times.last() != Some(&t) {
                    times.push(t);
                }
            }
            fast_times.len() >= 4
        },
        WAIT,
    );
    assert!(
        three_more,
        "-s 1 sent only {} distinct status updates in {WAIT:?} idle: {fast_times:?}",
        fast_times.len()
    );
    let span = fast_times[3] - fast_times[0];
    assert!(
        span < 10.0,
        "three status updates of -s 1 spanned {span} s: {fast_times:?}"
    );
    assert!(
        slow_times.len() <= 2,
        "the default -s 10 walsink sent {} status updates while -s 1 sent 3: {slow_times:?}",
        slow_times.len()
    );
    stop(&mut fast);
    stop(&mut slow);
}

/// An idle server, and a slot that has reserved nothing yet (restart_lsn NULL, as pg_receivewal's
/// `--create-slot` and Barman's `create_slot = auto` leave it): within a second of walsink starting to
/// stream, the slot's restart_lsn is set, to exactly walsink's start position. The first status update,
/// right after START_REPLICATION, reports the start as flushed, as pg_receivewal's does (everything before
/// it is in the archive, or not wanted). Nothing else can have set it: periodic updates are an hour apart
/// (`-s 3600`) and the WAL the server sends from the start on is not flushed for an hour either
/// (`--flush-interval 60min --flush-bytes 1GB`), so a flush report would also be past the start.
#[test]
fn an_idle_servers_slot_gets_its_restart_lsn_within_a_second_of_the_start() {
    let pg = PgCluster::start_default();
    let slot = "idle_slot";
    pg.execute(&format!(
        "SELECT pg_create_physical_replication_slot('{slot}')"
    ));
    assert_eq!(
        restart_lsn(&pg, slot),
        None,
        "the slot reserved WAL at creation"
    );
    let dir = archive_dir();
    let d = dir.path().to_str().expect("UTF-8 temp path");
    let conninfo = pg.conninfo();
    let mut ws = Walsink::spawn([
        "receive",
        "-D",
        d,
        "-d",
        &conninfo,
        "-S",
        slot,
        "-s",
        "3600",
        "--flush-interval",
        "60min",
        "--flush-bytes",
        "1GB",
        "-v",
    ]);
    let marker = "starting log streaming at ";
    assert!(
        ws.wait_for_stderr(marker, WAIT),
        "walsink did not start streaming:\n{}",
        ws.stderr_text()
    );
    let streaming = Instant::now();
    let set = wait_for(|| restart_lsn(&pg, slot).is_some(), Duration::from_secs(1));
    let waited = streaming.elapsed();
    let stderr = ws.stderr_text();
    assert!(
        set,
        "the slot's restart_lsn is still NULL {waited:?} after walsink started streaming:\n{stderr}"
    );
    let start = stderr
        .split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(parse_lsn)
        .expect("the start position in walsink's log");
    assert_eq!(
        restart_lsn(&pg, slot),
        Some(start),
        "restart_lsn is not walsink's start position {}:\n{stderr}",
        format_lsn(start)
    );
    stop(&mut ws);
}
