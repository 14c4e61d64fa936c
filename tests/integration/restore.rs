//! `walsink restore` as PostgreSQL's `restore_command`, end to end: what a DBA does after losing the primary
//! (zero data loss with a synchronous walsink and `--partial`), recovery without `--partial` (up to the last
//! completed segment), and point-in-time recovery to an LSN and to a time in the middle of the archive.
//!
//! Every recovery starts from a base backup taken without WAL (`pg_basebackup -X none`), so every byte of
//! WAL it replays comes through `walsink restore`. `restore_command` runs as the server's OS user, so
//! walsink streams as that user too (the archive is the server's to read), and runs a copy of the binary
//! that user can execute.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tempfile::TempDir;

use crate::harness::{
    PgCluster, WAIT, Walsink, WalsinkProcess, archive, archive_dir, create_slot, format_lsn,
    parse_lsn, switch_point, wait_for,
};

/// A copy of the walsink binary in a directory every user can traverse, for `restore_command` (the test
/// binary's target directory may not be reachable by the server's OS user).
fn walsink_for_server() -> (TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("wsk-bin")
        .tempdir_in("/tmp")
        .expect("temp dir for the walsink binary");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod 755");
    let bin = dir.path().join("walsink");
    fs::copy(Walsink::bin(), &bin).expect("copy the walsink binary");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod 755");
    (dir, bin)
}

/// An archive directory that belongs to the server's OS user, and `walsink receive` streaming into it as
/// that user from slot `walsink` with `extra` flags.
fn start_receiver(pg: &PgCluster, extra: &[&str]) -> (TempDir, WalsinkProcess) {
    let dir = archive_dir();
    PgCluster::give_to_server_user(dir.path());
    let ws = start_receiver_into(pg, dir.path(), extra);
    (dir, ws)
}

/// `walsink receive` streaming into `dir` (the server user's) as that user from a new slot `walsink`.
fn start_receiver_into(pg: &PgCluster, dir: &Path, extra: &[&str]) -> WalsinkProcess {
    create_slot(pg, "walsink");
    let mut cmd = Walsink::cmd(["receive", "-D"]);
    cmd.arg(dir)
        .args(["-d", &pg.conninfo(), "-S", "walsink", "-n"])
        .args(extra);
    PgCluster::run_as_server_user(&mut cmd);
    let mut ws = WalsinkProcess::spawn_command(cmd);
    let streaming = wait_for(
        || {
            !ws.is_running()
                || pg
                    .sql("SELECT 1 FROM pg_stat_replication WHERE application_name = 'walsink' AND state = 'streaming'")
                    .len()
                    == 1
        },
        WAIT,
    );
    assert!(
        streaming && ws.is_running(),
        "walsink is not streaming:\n{}",
        ws.stderr_text()
    );
    ws
}

/// Waits until walsink (application_name `walsink`) has flushed everything `server` has written.
fn wait_flushed(server: &PgCluster, ws: &WalsinkProcess) {
    let lsn = parse_lsn(&server.current_lsn());
    let done = wait_for(
        || {
            server
                .sql_one(
                    "SELECT coalesce(max(flush_lsn)::text, '0/0') FROM pg_stat_replication \
                     WHERE application_name = 'walsink'",
                )
                .is_some_and(|l| parse_lsn(&l) >= lsn)
        },
        WAIT,
    );
    assert!(
        done,
        "walsink did not flush up to {lsn:#x}:\n{}",
        ws.stderr_text()
    );
}

/// Inserts rows `ids` into `t`, one transaction each, about 2 KiB of WAL per row.
fn insert(server: &PgCluster, ids: std::ops::RangeInclusive<i64>) {
    for id in ids {
        server.execute(&format!(
            "INSERT INTO t SELECT {id}, string_agg(md5(random()::text), '') FROM generate_series(1, 60)"
        ));
    }
}

/// `restore_command` for `walsink restore` from `dir`.
fn restore_command(bin: &Path, dir: &Path, partial: bool) -> String {
    format!(
        "{} restore{} -D {} %f %p",
        bin.display(),
        if partial { " --partial" } else { "" },
        dir.display()
    )
}

/// The ids in table `t`.
fn ids(pg: &PgCluster) -> BTreeSet<i64> {
    pg.sql("SELECT id FROM t")
        .into_iter()
        .map(|r| r[0].as_deref().expect("id").parse().expect("an integer"))
        .collect()
}

/// The lines `walsink restore` wrote into the server log.
fn restore_messages(pg: &PgCluster) -> Vec<String> {
    pg.log_text()
        .lines()
        .filter(|l| l.contains("walsink restore"))
        .map(str::to_owned)
        .collect()
}

/// Segment number of a WAL file name at 1 MiB segments (the harness's default).
fn segno(name: &str) -> u64 {
    let log = u64::from_str_radix(&name[8..16], 16).expect("hex");
    let seg = u64::from_str_radix(&name[16..24], 16).expect("hex");
    log * 4096 + seg
}

/// Inserts rows `1, 2, ...` into `t`, one transaction each, over one connection, until a statement fails
/// (the server is gone). `committed` gets each id once its COMMIT returned: what the client saw committed.
fn load(socket_dir: PathBuf, port: u16, committed: Arc<Mutex<Vec<i64>>>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&socket_dir)
            .port(port)
            .user("postgres")
            .dbname("postgres")
            .application_name("load");
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .expect("load connects");
        tokio::spawn(connection);
        for id in 1i64.. {
            // Random hex: pglz does not compress it, so each commit writes about 2 KiB of WAL.
            let insert = format!(
                "INSERT INTO t SELECT {id}, string_agg(md5(random()::text), '') FROM generate_series(1, 60)"
            );
            if client.simple_query(&insert).await.is_err() {
                return;
            }
            committed.lock().unwrap().push(id);
        }
    });
}

/// A primary whose synchronous standby is walsink (`--synchronous`), a base backup without WAL, a load that
/// records every commit the client saw; walsink killed with SIGKILL (so nothing a graceful stop would still
/// write can hide an acknowledgement given too early), then the primary killed with SIGKILL and its data
/// directory deleted. Recovery of the base backup with `walsink restore --partial` and `recovery_target_timeline = 'latest'`
/// has every transaction the client saw committed. The same without `--partial` recovers exactly a prefix
/// of them, ending in the last completed segment.
#[test]
fn synchronous_walsink_and_restore_partial_lose_no_committed_transaction() {
    let pg = PgCluster::builder()
        .setting("synchronous_standby_names", "walsink")
        .setting("synchronous_commit", "on")
        .start();
    let (bin_dir, bin) = walsink_for_server();
    let (dir, mut ws) = start_receiver(&pg, &["--synchronous"]);
    assert!(
        wait_for(
            || {
                pg
                .sql("SELECT 1 FROM pg_stat_replication WHERE application_name = 'walsink' AND sync_state = 'sync'")
                .len()
                == 1
            },
            WAIT
        ),
        "walsink did not become the synchronous standby:\n{}",
        ws.stderr_text()
    );
    pg.execute("CREATE TABLE t (id bigint PRIMARY KEY, filler text)");
    let mut with_partial = pg.base_backup_without_wal();
    let mut without_partial = pg.base_backup_without_wal();

    let committed = Arc::new(Mutex::new(Vec::new()));
    let loader = {
        let committed = committed.clone();
        let (socket, port) = (pg.socket_dir().to_path_buf(), pg.port());
        std::thread::spawn(move || load(socket, port, committed))
    };
    // About 2 KiB of WAL per commit: 1500 commits fill three 1 MiB segments.
    assert!(
        wait_for(
            || committed.lock().unwrap().len() >= 1500,
            Duration::from_secs(120)
        ),
        "the load committed only {} transactions",
        committed.lock().unwrap().len()
    );
    // walsink dies first, with SIGKILL: no final flush, no clean close of the `.partial`. What the archive
    // holds is exactly what walsink had written when it acknowledged its last flush position. From then on
    // the primary waits for its synchronous standby, so no commit the client sees can come later; then the
    // primary is lost as well.
    ws.kill9();
    let status = ws.wait_timeout(WAIT);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "walsink was not killed: {status:?}\n{}",
        ws.stderr_text()
    );
    pg.kill9_and_delete_data();
    loader.join().expect("load thread");
    let committed: Vec<i64> = committed.lock().unwrap().clone();
    let last = *committed.last().expect("commits");
    assert_eq!(committed, (1..=last).collect::<Vec<_>>());

    let partials = archive::partial_segments(dir.path());
    assert_eq!(partials.len(), 1, "{:?}", archive::list(dir.path()));
    let partial_seg = segno(&partials[0]);
    let partial_start = partial_seg << 20;

    // --partial: everything the client saw committed (and at most the one commit in flight, flushed by
    // walsink before the client heard of it).
    with_partial.start_archive_recovery(&[
        ("restore_command", &restore_command(&bin, dir.path(), true)),
        ("recovery_target_timeline", "latest"),
    ]);
    let got = ids(&with_partial);
    let want: BTreeSet<i64> = committed.iter().copied().collect();
    let missing: Vec<_> = want.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "{} committed transactions lost (first {:?}); recovered {} rows\n{}",
        missing.len(),
        missing.first(),
        got.len(),
        with_partial.log_tail(30)
    );
    let extra: Vec<_> = got.difference(&want).copied().collect();
    assert!(extra.is_empty() || extra == [last + 1], "{extra:?}");
    let end = switch_point(&with_partial, 1);
    assert!(
        end > partial_start,
        "recovery ended at {end:#x}, before the .partial"
    );
    let messages = restore_messages(&with_partial);
    assert_eq!(
        messages.len(),
        messages
            .iter()
            .filter(|m| m.contains(&format!("from \"{}\"", partials[0])))
            .count(),
        "walsink restore said more than which .partial it served: {messages:#?}"
    );
    assert!(!messages.is_empty(), "the .partial was never served");

    // Without --partial: a prefix of the commits, ending in the last completed segment.
    without_partial.start_archive_recovery(&[
        ("restore_command", &restore_command(&bin, dir.path(), false)),
        ("recovery_target_timeline", "latest"),
    ]);
    let got = ids(&without_partial);
    let k = got.len() as i64;
    assert_eq!(got, (1..=k).collect::<BTreeSet<_>>(), "not a prefix");
    assert!(k > 0 && k < last, "recovered {k} of {last} commits");
    let end = switch_point(&without_partial, 1);
    assert!(
        end <= partial_start && end > partial_start - (1 << 20),
        "recovery without --partial ended at {end:#x}, not in the last completed segment before {partial_start:#x}"
    );
    let messages = restore_messages(&without_partial);
    assert!(
        messages
            .iter()
            .all(|m| m.contains("only as") && m.contains(&partials[0])),
        "{messages:#?}"
    );
    drop(bin_dir);
}

/// Point-in-time recovery to a `recovery_target_lsn` and to a `recovery_target_time` in the middle of the
/// archive: exactly the transactions before the target exist.
#[test]
fn point_in_time_recovery_from_the_archive_stops_exactly_at_the_target() {
    let pg = PgCluster::start_default();
    let (bin_dir, bin) = walsink_for_server();
    let (dir, mut ws) = start_receiver(&pg, &[]);
    pg.execute("CREATE TABLE t (id bigint PRIMARY KEY, filler text)");
    let mut to_lsn = pg.base_backup_without_wal();
    let mut to_time = pg.base_backup_without_wal();

    let batch = |range: std::ops::RangeInclusive<i64>| {
        for id in range {
            pg.execute(&format!("INSERT INTO t VALUES ({id}, repeat('y', 3000))"));
        }
    };
    batch(1..=100);
    let target_lsn = pg
        .sql_one("SELECT pg_current_wal_insert_lsn()::text")
        .unwrap();
    batch(101..=200);
    let target_time = pg.sql_one("SELECT now()::text").unwrap();
    // Commit timestamps have microseconds; the next commit must be later than the target.
    std::thread::sleep(Duration::from_millis(20));
    batch(201..=300);
    // The targets are in the middle of the archive: more WAL after them, in completed segments.
    pg.generate_wal(2 << 20);
    let end = pg.switch_wal();
    let last_needed = pg.walfile_name(&format_lsn(parse_lsn(&end) - 1));
    assert!(
        wait_for(|| dir.path().join(&last_needed).exists(), WAIT),
        "walsink did not archive {last_needed}: {:?}",
        archive::list(dir.path())
    );
    ws.interrupt_and_wait(WAIT);
    let target_seg = pg.walfile_name(&target_lsn);
    assert!(
        archive::completed_segments(dir.path())
            .last()
            .unwrap()
            .as_str()
            > target_seg.as_str(),
        "the archive does not run past the target"
    );

    to_lsn.start_archive_recovery(&[
        ("restore_command", &restore_command(&bin, dir.path(), false)),
        ("recovery_target_lsn", &target_lsn),
        ("recovery_target_inclusive", "off"),
    ]);
    assert_eq!(ids(&to_lsn), (1..=100).collect::<BTreeSet<_>>());

    to_time.start_archive_recovery(&[
        ("restore_command", &restore_command(&bin, dir.path(), false)),
        ("recovery_target_time", &target_time),
    ]);
    assert_eq!(ids(&to_time), (1..=200).collect::<BTreeSet<_>>());
    drop(bin_dir);
}

/// `walsink restore` exits as PostgreSQL needs: 1 without creating the destination for a file the archive
/// does not have, 2 for a name that is not a WAL or history file name (a path, say), 128 (which makes
/// PostgreSQL stop recovery) for a file that is there but is not a segment.
#[test]
fn restore_exit_codes_tell_absent_from_broken() {
    let dir = archive_dir();
    let dest_dir = tempfile::tempdir().unwrap();
    let dest = dest_dir.path().join("RECOVERYXLOG");
    let run = |file: &str, partial: bool| {
        let mut cmd = Walsink::cmd(["restore"]);
        if partial {
            cmd.arg("--partial");
        }
        cmd.arg("-D").arg(dir.path()).arg(file).arg(&dest);
        Walsink::run_command(cmd, WAIT)
    };
    let out = run("00000002.history", true);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dest.exists());
    let out = run("../000000010000000000000001", false);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("is not a WAL segment or timeline history file name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(dir.path().join("000000010000000000000001"), b"short").unwrap();
    let out = run("000000010000000000000001", false);
    assert_eq!(out.status.code(), Some(128));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has 5 bytes, which is not the size of a WAL segment"),
        "{err}"
    );
    assert!(!dest.exists());
    assert_eq!(fs::read_dir(dest_dir.path()).unwrap().count(), 0);
}

/// After a failover the archive holds the old timeline's last segment as a `.partial` and the new timeline's
/// WAL. The new primary is lost as well. Recovery of a base backup taken on timeline 1, with `--partial` and
/// `recovery_target_timeline = 'latest'`, follows the history file to timeline 2 and replays its newest
/// `.partial`: every row written on either timeline is back. The old timeline's `.partial` is never served.
#[test]
fn restore_partial_after_a_failover_follows_the_new_timeline_to_its_newest_partial() {
    let primary = PgCluster::start_default();
    let standby = primary.make_standby();
    let (bin_dir, bin) = walsink_for_server();

    let dir = archive_dir();
    PgCluster::give_to_server_user(dir.path());
    let conninfo = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let mut cmd = Walsink::cmd(["receive", "-D"]);
    cmd.arg(dir.path()).args([
        "-d",
        &conninfo,
        "-S",
        "walsink",
        "--create-slot-if-missing",
        "-s",
        "1",
    ]);
    PgCluster::run_as_server_user(&mut cmd);
    let mut ws = WalsinkProcess::spawn_command(cmd);
    // walsink streams before the base backup starts, so the archive has the backup's WAL on every major
    // (before 15 an empty archive starts at the server's position when walsink connects).
    assert!(
        wait_for(
            || {
                primary
                .sql("SELECT 1 FROM pg_stat_replication WHERE application_name = 'walsink' AND state = 'streaming'")
                .len()
                == 1
            },
            WAIT
        ),
        "walsink is not streaming:\n{}",
        ws.stderr_text()
    );
    primary.execute("CREATE TABLE t (id bigint PRIMARY KEY, filler text)");
    let mut backup = primary.base_backup_without_wal();
    let flushed_on = |server: &PgCluster| {
        let lsn = parse_lsn(&server.current_lsn());
        let done = wait_for(
            || {
                server
                    .sql_one(
                        "SELECT coalesce(max(flush_lsn)::text, '0/0') FROM pg_stat_replication \
                         WHERE application_name = 'walsink'",
                    )
                    .is_some_and(|l| parse_lsn(&l) >= lsn)
            },
            WAIT,
        );
        assert!(
            done,
            "walsink did not flush up to {lsn:#x}:\n{}",
            ws.stderr_text()
        );
    };
    let insert = |server: &PgCluster, ids: std::ops::RangeInclusive<i64>| {
        for id in ids {
            server.execute(&format!(
                "INSERT INTO t SELECT {id}, string_agg(md5(random()::text), '') FROM generate_series(1, 60)"
            ));
        }
    };

    // Timeline 1: three segments' worth of rows, in the archive and on the standby.
    insert(&primary, 1..=1500);
    flushed_on(&primary);
    let end1 = parse_lsn(&primary.current_lsn());
    assert!(
        wait_for(
            || parse_lsn(
                &standby
                    .sql_one("SELECT pg_last_wal_replay_lsn()::text")
                    .unwrap()
            ) >= end1,
            WAIT
        ),
        "the standby did not replay up to {end1:#x}"
    );
    primary.stop(crate::harness::StopMode::Fast);
    standby.promote();
    // Timeline 2: more rows, then the new primary is lost too.
    insert(&standby, 1501..=2500);
    flushed_on(&standby);
    standby.kill9_and_delete_data();
    ws.interrupt_and_wait(WAIT);

    let partials = archive::partial_segments(dir.path());
    let old: Vec<_> = partials
        .iter()
        .filter(|n| n.starts_with("00000001"))
        .collect();
    let new: Vec<_> = partials
        .iter()
        .filter(|n| n.starts_with("00000002"))
        .collect();
    assert!(
        old.len() == 1 && new.len() == 1 && dir.path().join("00000002.history").exists(),
        "{:?}",
        archive::list(dir.path())
    );

    backup.start_archive_recovery(&[
        ("restore_command", &restore_command(&bin, dir.path(), true)),
        ("recovery_target_timeline", "latest"),
    ]);
    assert_eq!(ids(&backup), (1..=2500).collect::<BTreeSet<_>>());
    let messages = restore_messages(&backup);
    assert!(
        messages
            .iter()
            .any(|m| m.contains(&format!("from \"{}\"", new[0]))),
        "the new timeline's .partial was not served: {messages:#?}"
    );
    assert!(
        !messages
            .iter()
            .any(|m| m.contains(&format!("from \"{}\"", old[0]))),
        "the old timeline's .partial was served: {messages:#?}"
    );
    assert_eq!(backup.timeline(), 3);
    drop(bin_dir);
}

/// A standby promoted after the primary was lost, and lost itself before walsink streamed anything of the
/// new timeline: the archive has timeline 1's last segment only as a `.partial` that runs past the point
/// where timeline 2 forked (the old primary went on writing after the standby stopped receiving), and
/// timeline 2's history file (from the new primary's `archive_command`), but no timeline-2 segment.
/// Recovery with `--partial` and `recovery_target_timeline = 'latest'` replays timeline 1 exactly up to
/// the fork: the `.partial` is served cut there, so every row the new primary had is back and none that
/// only the old primary wrote after the fork.
#[test]
fn restore_partial_serves_the_old_timelines_partial_cut_at_the_fork() {
    let dir = archive_dir();
    PgCluster::give_to_server_user(dir.path());
    // Only history files reach the archive this way (walsink archives the WAL), as with Barman.
    let archive_command = format!(
        "case %f in *.history) cp %p {}/%f ;; esac",
        dir.path().display()
    );
    let primary = PgCluster::builder()
        .setting("archive_mode", "on")
        .setting("archive_command", archive_command)
        .start();
    let standby = primary.make_standby();
    let (bin_dir, bin) = walsink_for_server();
    let mut ws = start_receiver_into(&primary, dir.path(), &[]);
    primary.execute("CREATE TABLE t (id bigint PRIMARY KEY, filler text)");
    let mut backup = primary.base_backup_without_wal();

    // Rows 1..=300, then a fresh segment that holds rows 301..=350 (about 110 KiB of its 1 MiB), all on
    // the standby too.
    insert(&primary, 1..=300);
    primary.switch_wal();
    insert(&primary, 301..=350);
    let shared = parse_lsn(&primary.current_lsn());
    let shared_file = primary.walfile_name(&format_lsn(shared));
    assert!(
        wait_for(
            || parse_lsn(
                &standby
                    .sql_one("SELECT pg_last_wal_replay_lsn()::text")
                    .unwrap()
            ) >= shared,
            WAIT
        ),
        "the standby did not replay up to {shared:#x}"
    );
    // The standby stops receiving; the primary writes rows 351..=400 that only walsink gets, into the
    // same segment, and is lost.
    standby.stop(crate::harness::StopMode::Fast);
    insert(&primary, 351..=400);
    wait_flushed(&primary, &ws);
    let last = primary.walfile_name(&primary.current_lsn());
    assert_eq!(shared_file, last, "rows 301..=400 are not in one segment");
    primary.kill9_and_delete_data();
    ws.interrupt_and_wait(WAIT);

    // The standby is promoted (timeline 2 forks where its WAL ends) and lost soon after; walsink never
    // streamed from it.
    standby.start();
    standby.promote();
    let fork = switch_point(&standby, 1);
    assert!(
        wait_for(|| dir.path().join("00000002.history").exists(), WAIT),
        "the new primary did not archive 00000002.history:\n{}",
        standby.log_tail(20)
    );
    standby.kill9_and_delete_data();

    let partial = format!("{last}.partial");
    let files = archive::list(dir.path());
    assert!(
        files.contains(&partial)
            && !files
                .iter()
                .any(|f| f.starts_with("00000002") && f.len() >= 24),
        "{files:?}"
    );
    // The fork is inside that segment, after the rows the standby had.
    let seg_start = segno(&last) << 20;
    assert!(
        shared <= fork && fork < seg_start + (1 << 20),
        "fork {fork:#x} is not in {last} after {shared:#x}"
    );

    backup.start_archive_recovery(&[
        ("restore_command", &restore_command(&bin, dir.path(), true)),
        ("recovery_target_timeline", "latest"),
    ]);
    assert_eq!(ids(&backup), (1..=350).collect::<BTreeSet<_>>());
    let messages = restore_messages(&backup);
    assert!(
        messages
            .iter()
            .any(|m| m.contains(&format!("from \"{partial}\""))
                && m.contains(&format!(
                    "up to {}, where timeline 2 forked",
                    format_lsn(fork)
                ))),
        "{partial} was not served cut at {}: {messages:#?}",
        format_lsn(fork)
    );
    assert_eq!(backup.timeline(), 3);
    drop(bin_dir);
}
