//! Following the primary through a failover: several hosts with `target_session_attrs`, the slot on a
//! promoted server (`--create-slot-if-missing`), an archive whose old timeline ran past the new timeline's
//! fork point, START_REPLICATION landing exactly on a switch point, and an archive of another branch.
//! (Promotions of the server walsink streams from, restarts across a switch and double promotion are in
//! `timeline`; its archive checks are reused here.)

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::harness::{
    PgCluster, StopMode, WAIT, Walsink, WalsinkProcess, archive, format_lsn, generate_past,
    parse_lsn, switch_point, wait_for,
};
use crate::timeline::{
    WalFile, assert_archive_follows, sources, wait_flushed, wait_received, wal_files,
};

const SLOT: &str = "walsink_fo";

/// A cluster that keeps its WAL (so `pg_wal` can be compared with the archive after the fact).
fn keeping_cluster() -> PgCluster {
    PgCluster::builder().setting("wal_keep_size", "1GB").start()
}

/// `host=127.0.0.1,127.0.0.1 port=P1,P2 user=postgres [target_session_attrs=...]`.
fn multi_host(servers: &[&PgCluster], attrs: Option<&str>) -> String {
    let hosts: Vec<&str> = servers.iter().map(|s| s.host()).collect();
    let ports: Vec<String> = servers.iter().map(|s| s.port().to_string()).collect();
    let mut c = format!(
        "host={} port={} user=postgres",
        hosts.join(","),
        ports.join(",")
    );
    if let Some(a) = attrs {
        c.push_str(&format!(" target_session_attrs={a}"));
    }
    c
}

/// What walsink's "connected to server" line says of the server's role: `, a primary` or `, a standby`
/// from PostgreSQL 14 on, which reports `in_hot_standby` at connection start; nothing for older servers.
fn role(server: &PgCluster, what: &str) -> String {
    if server.major_version() >= 14 {
        format!(", {what}")
    } else {
        String::new()
    }
}

/// How walsink names a server in messages.
fn named(server: &PgCluster) -> String {
    format!("at \"127.0.0.1\", port {}", server.port())
}

/// Starts `walsink receive -v -D dir -d conninfo [extra]` and waits until it streams.
fn spawn_streaming(dir: &Path, conninfo: &str, extra: &[&str]) -> WalsinkProcess {
    let mut cmd = Walsink::cmd(["receive", "-v", "-D"]);
    cmd.arg(dir).args(["-d", conninfo]).args(extra);
    let mut ws = WalsinkProcess::spawn_command(cmd);
    assert!(
        ws.wait_for_stderr("starting log streaming", WAIT),
        "walsink did not start streaming ({conninfo}); running: {}\n{}",
        ws.is_running(),
        ws.stderr_text()
    );
    ws
}

/// Runs `walsink receive -n -D dir -d conninfo` to its end; returns (exit code, stderr).
fn run_no_loop(dir: &Path, conninfo: &str) -> (Option<i32>, String) {
    let mut cmd = Walsink::cmd(["receive", "-n", "-D"]);
    cmd.arg(dir).args(["-d", conninfo]);
    let out = Walsink::run_command(cmd, WAIT);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether walsink has a walsender on `server` (application_name `walsink`).
fn walsink_attached(server: &PgCluster) -> bool {
    server.sql_one(
        "SELECT count(*)::text FROM pg_stat_replication WHERE application_name = 'walsink'",
    ) == Some("1".into())
}

/// Waits until walsink streams from `server` and from none of `others`.
fn assert_streams_from(ws: &mut WalsinkProcess, server: &PgCluster, others: &[&PgCluster]) {
    assert!(
        wait_for(
            || walsink_attached(server) && others.iter().all(|o| !walsink_attached(o)),
            WAIT
        ),
        "walsink does not stream from port {} (alone); running: {}\n{}",
        server.port(),
        ws.is_running(),
        ws.stderr_text()
    );
}

/// An LSN `bytes` past the current position of `server`, deliberately not on a page or segment boundary.
fn lsn_ahead(server: &PgCluster, bytes: u64) -> u64 {
    parse_lsn(&server.current_lsn()) + bytes + 0x1238
}

/// Waits for walsink to exit by itself and asserts `code`.
fn expect_exit(ws: &mut WalsinkProcess, code: i32) {
    let status = ws.wait_timeout(WAIT);
    assert_eq!(
        status.code(),
        Some(code),
        "walsink exited with {status:?}:\n{}",
        ws.stderr_text()
    );
}

/// The physical slot's restart_lsn on `server`, if the slot exists.
fn slot_restart_lsn(server: &PgCluster) -> Option<Option<String>> {
    server
        .sql(&format!(
            "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = '{SLOT}'"
        ))
        .into_iter()
        .next()
        .map(|row| row[0].clone())
}

/// (inode, size, mtime, content) of every file in `dir` whose name starts with `prefix`.
type Stamp = (u64, u64, SystemTime, Vec<u8>);
fn stamps(dir: &Path, prefix: &str) -> Vec<(String, Stamp)> {
    archive::list(dir)
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .map(|n| {
            let md = fs::metadata(dir.join(&n)).unwrap();
            let content = fs::read(dir.join(&n)).unwrap();
            let s = (md.ino(), md.len(), md.modified().unwrap(), content);
            (n, s)
        })
        .collect()
}

/// Checks timeline `tli`'s files: contiguous from `first_segno` up to the segment holding `end`, only the
/// last one `.partial`, completed ones byte-identical to `server`'s pg_wal, the `.partial` up to `end`.
fn assert_timeline_identical(
    dir: &Path,
    server: &PgCluster,
    tli: u32,
    first_segno: u64,
    end: u64,
) -> Vec<WalFile> {
    let seg = server.wal_segsize_bytes();
    let mine: Vec<WalFile> = wal_files(dir, seg)
        .into_iter()
        .filter(|f| f.tli == tli)
        .collect();
    let names = archive::list(dir);
    let segnos: Vec<u64> = mine.iter().map(|f| f.segno).collect();
    assert_eq!(
        segnos,
        (first_segno..=end / seg).collect::<Vec<_>>(),
        "timeline {tli} should run from segment {first_segno:X} to the one holding {}: {names:?}",
        format_lsn(end)
    );
    for (i, f) in mine.iter().enumerate() {
        let last = i == mine.len() - 1;
        assert_eq!(f.partial, last, "{}: {names:?}", f.name);
        let base = f.name.trim_end_matches(".partial");
        let original = server.pg_wal_dir().join(base);
        if last {
            archive::assert_partial_prefix_identical(
                &dir.join(&f.name),
                &original,
                usize::try_from(end % seg).unwrap(),
            );
        } else {
            let a = fs::read(dir.join(&f.name)).unwrap();
            let o = fs::read(&original)
                .unwrap_or_else(|e| panic!("{} ({e}): {names:?}", original.display()));
            assert!(a == o, "{} differs from {}", f.name, original.display());
        }
    }
    mine
}

/// Asserts that every completed segment of timeline `tli` in the archive is byte-identical to `server`'s;
/// returns how many there are.
fn assert_completed_identical(dir: &Path, server: &PgCluster, tli: u32) -> usize {
    let files: Vec<WalFile> = wal_files(dir, server.wal_segsize_bytes())
        .into_iter()
        .filter(|f| f.tli == tli && !f.partial)
        .collect();
    for f in &files {
        let a = fs::read(dir.join(&f.name)).unwrap();
        let o = fs::read(server.pg_wal_dir().join(&f.name)).unwrap();
        assert!(a == o, "{} differs from port {}'s", f.name, server.port());
    }
    files.len()
}

/// Proves walsink follows a failover with a two-host connection string and `target_session_attrs=read-write`:
/// it streams from the primary (the first host), and after the primary stops and the standby (the second
/// host) is promoted it connects to the new primary by itself, fetches `00000002.history` and continues on
/// timeline 2 until `-E`. The archive is gapless across the switch and byte-identical to the servers; the
/// slot, missing on both servers at first, was created on each with `--create-slot-if-missing` and on the
/// new primary it ends exactly at the end position walsink reported.
#[test]
fn two_hosts_read_write_follow_the_promotion_to_the_new_primary() {
    let primary = keeping_cluster();
    let standby = primary.make_standby();
    let dir = tempfile::tempdir().unwrap();
    let end = lsn_ahead(&primary, 5 << 20);
    let conninfo = multi_host(&[&primary, &standby], Some("read-write"));
    let mut ws = spawn_streaming(
        dir.path(),
        &conninfo,
        &[
            "-S",
            SLOT,
            "--create-slot-if-missing",
            "-E",
            &format_lsn(end),
        ],
    );
    assert!(
        ws.stderr_text().contains(&format!(
            "connected to server {} (timeline 1{})",
            named(&primary),
            role(&primary, "a primary")
        )),
        "{}",
        ws.stderr_text()
    );
    assert!(
        slot_restart_lsn(&primary).is_some(),
        "no slot on the primary"
    );
    assert!(slot_restart_lsn(&standby).is_none());

    let before = parse_lsn(&primary.generate_wal(2 << 20));
    wait_received(&standby, before);
    wait_flushed(&primary, &mut ws, before);

    primary.stop(StopMode::Fast);
    standby.promote();
    assert_eq!(standby.timeline(), 2);
    let reconnected = format!(
        "connected to server {} (timeline 2{}); the previous connection was to server {}",
        named(&standby),
        role(&standby, "a primary"),
        named(&primary)
    );
    assert!(
        ws.wait_for_stderr(&reconnected, WAIT),
        "walsink did not connect to the promoted standby; running: {}\n{}",
        ws.is_running(),
        ws.stderr_text()
    );
    assert!(end > parse_lsn(&standby.current_lsn()));
    generate_past(&standby, end);
    expect_exit(&mut ws, 0);
    let stderr = ws.stderr_text();
    assert!(stderr.contains("switched to timeline 2"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "replication slot \"{SLOT}\" did not exist on server {}; created it",
            named(&standby)
        )),
        "{stderr}"
    );

    assert_archive_follows(
        dir.path(),
        standby.wal_segsize_bytes(),
        2,
        end,
        &standby.pg_wal_dir(),
        &sources(&[(1, &primary), (1, &standby), (2, &standby)]),
    );
    assert_eq!(
        slot_restart_lsn(&standby),
        Some(Some(format_lsn(end))),
        "the slot on the new primary should be where walsink stopped"
    );
}

/// Proves host selection by `target_session_attrs` with a primary and a standby both up: the default `any`
/// keeps the listed order (a standby listed first is used), `standby` skips the primary listed first,
/// `prefer-standby` picks the standby listed second and falls back to the primary once the standby is down.
/// Each choice is checked on the servers (`pg_stat_replication`), not only in walsink's log.
#[test]
fn standby_and_prefer_standby_pick_the_right_host() {
    let primary = keeping_cluster();
    let standby = primary.make_standby();

    let dir = tempfile::tempdir().unwrap();
    let mut ws = spawn_streaming(dir.path(), &multi_host(&[&standby, &primary], None), &[]);
    assert_streams_from(&mut ws, &standby, &[&primary]);
    assert_eq!(ws.interrupt_and_wait(WAIT).code(), Some(0));

    let dir = tempfile::tempdir().unwrap();
    let mut ws = spawn_streaming(
        dir.path(),
        &multi_host(&[&primary, &standby], Some("standby")),
        &[],
    );
    assert_streams_from(&mut ws, &standby, &[&primary]);
    assert!(
        ws.stderr_text().contains(&format!(
            "connected to server {} (timeline 1{})",
            named(&standby),
            role(&standby, "a standby")
        )),
        "{}",
        ws.stderr_text()
    );
    assert_eq!(ws.interrupt_and_wait(WAIT).code(), Some(0));

    let dir = tempfile::tempdir().unwrap();
    let mut ws = spawn_streaming(
        dir.path(),
        &multi_host(&[&primary, &standby], Some("prefer-standby")),
        &[],
    );
    assert_streams_from(&mut ws, &standby, &[&primary]);
    standby.stop(StopMode::Fast);
    assert_streams_from(&mut ws, &primary, &[]);
    let fallback = format!(
        "connected to server {} (timeline 1{}); the previous connection was to server {}",
        named(&primary),
        role(&primary, "a primary"),
        named(&standby)
    );
    assert!(ws.wait_for_stderr(&fallback, WAIT), "{}", ws.stderr_text());
    assert_eq!(ws.interrupt_and_wait(WAIT).code(), Some(0));
}

/// Proves that when no host qualifies, `-n` exits 3 with one line per host naming it and saying why (libpq's
/// words) and a hint naming the setting; and that without `-n` walsink keeps trying and streams as soon as a
/// host qualifies (the standby is promoted). Nothing is written to the archive meanwhile.
#[test]
fn no_qualifying_host_names_each_host_and_why() {
    let primary = keeping_cluster();
    let standby = primary.make_standby();
    let dir = tempfile::tempdir().unwrap();

    let (code, stderr) = run_no_loop(dir.path(), &multi_host(&[&primary], Some("standby")));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "connection to server {} failed: server is not in hot standby mode",
            named(&primary)
        )),
        "{stderr}"
    );

    primary.stop(StopMode::Fast);
    let both = |attrs| multi_host(&[&primary, &standby], Some(attrs));
    let (code, stderr) = run_no_loop(dir.path(), &both("read-write"));
    assert_eq!(code, Some(3), "{stderr}");
    for needle in [
        format!("connection to server {} failed: ", named(&primary)),
        format!(
            "connection to server {} failed: session is read-only",
            named(&standby)
        ),
        "no server qualifies for target_session_attrs=read-write".to_owned(),
    ] {
        assert!(stderr.contains(&needle), "no \"{needle}\" in:\n{stderr}");
    }
    let (code, stderr) = run_no_loop(dir.path(), &both("primary"));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "connection to server {} failed: server is in hot standby mode",
            named(&standby)
        )),
        "{stderr}"
    );
    let wal: Vec<String> = archive::list(dir.path())
        .into_iter()
        .filter(|n| n.starts_with('0'))
        .collect();
    assert!(wal.is_empty(), "{wal:?}");

    // Without -n: waits for a qualifying host, then streams from it.
    let mut cmd = Walsink::cmd(["receive", "-v", "-D"]);
    cmd.arg(dir.path()).args(["-d", &both("read-write")]);
    let mut ws = WalsinkProcess::spawn_command(cmd);
    assert!(
        ws.wait_for_stderr("session is read-only", WAIT),
        "{}",
        ws.stderr_text()
    );
    assert!(ws.is_running(), "{}", ws.stderr_text());
    standby.promote();
    assert!(
        ws.wait_for_stderr("starting log streaming", WAIT),
        "walsink did not stream once the standby was promoted; running: {}\n{}",
        ws.is_running(),
        ws.stderr_text()
    );
    assert_streams_from(&mut ws, &standby, &[]);
    assert_eq!(ws.interrupt_and_wait(WAIT).code(), Some(0));
}

/// pg_receivewal's weakness #13. walsink archives WAL from the primary that the standby never received (the
/// standby was down); the standby is then promoted, so its timeline 2 forks from timeline 1 *before* the
/// archive's end. Proves that walsink against the promoted standby does not fail ("requested starting point
/// ... is not in this server's history") but warns and continues on timeline 2 at the segment holding the
/// fork point; timeline 2 is byte-identical to the new primary's, the old timeline-1 files are untouched;
/// the slot created on the promoted server (`--create-slot-if-missing`) retains only later WAL, which walsink
/// says, and streaming still works because the server has the WAL; and a restart resumes on timeline 2 where
/// its archive ends, not at the fork again.
#[test]
fn archive_past_the_fork_point_continues_on_the_new_timeline() {
    let primary = keeping_cluster();
    let standby = primary.make_standby();
    let seg = primary.wal_segsize_bytes();
    let dir = tempfile::tempdir().unwrap();

    let end1 = lsn_ahead(&primary, 4 << 20);
    let mut ws = spawn_streaming(
        dir.path(),
        &primary.conninfo(),
        &["-n", "-E", &format_lsn(end1)],
    );
    let lsn = parse_lsn(&primary.generate_wal(1 << 20));
    wait_received(&standby, lsn);
    standby.stop(StopMode::Fast);
    generate_past(&primary, end1);
    expect_exit(&mut ws, 0);
    primary.stop(StopMode::Fast);

    standby.start();
    standby.promote();
    assert_eq!(standby.timeline(), 2);
    let fork = switch_point(&standby, 1);
    let fork_seg_start = fork / seg * seg;
    assert!(
        fork_seg_start + 2 * seg <= end1 / seg * seg,
        "scenario: the fork point {} should be segments before the archive's end {}",
        format_lsn(fork),
        format_lsn(end1)
    );
    // Move the new primary's redo pointer segments past the fork: a slot created now retains WAL from there.
    standby.execute("CHECKPOINT");
    standby.generate_wal(3 << 19);
    standby.execute("CHECKPOINT");
    let tli1_before = stamps(dir.path(), "00000001");
    assert!(tli1_before.len() >= 5, "{tli1_before:?}");
    std::thread::sleep(Duration::from_millis(20)); // mtime granularity

    let end2 = lsn_ahead(&standby, 2 << 20);
    let mut ws = spawn_streaming(
        dir.path(),
        &standby.conninfo(),
        &[
            "-n",
            "-S",
            SLOT,
            "--create-slot-if-missing",
            "-E",
            &format_lsn(end2),
        ],
    );
    generate_past(&standby, end2);
    expect_exit(&mut ws, 0);
    let stderr = ws.stderr_text();
    for needle in [
        format!(
            "the archive holds WAL of timeline 1 past {}, where timeline 2 forked from it",
            format_lsn(fork)
        ),
        "is not part of timeline 2's history".to_owned(),
        format!(
            "keeping those files, and continuing on timeline 2 at {}",
            format_lsn(fork_seg_start)
        ),
        format!(
            "starting log streaming at {} (timeline 2)",
            format_lsn(fork_seg_start)
        ),
        format!(
            "replication slot \"{SLOT}\" did not exist on server {}; created it (--create-slot-if-missing)",
            named(&standby)
        ),
    ] {
        assert!(stderr.contains(&needle), "no \"{needle}\" in:\n{stderr}");
    }
    // Where the new slot's WAL starts, and that it does not cover the start, needs READ_REPLICATION_SLOT.
    if standby.has_read_replication_slot() {
        for needle in [
            "; created it (--create-slot-if-missing): it retains WAL from ",
            "the slot does not protect the WAL in between",
        ] {
            assert!(stderr.contains(needle), "no \"{needle}\" in:\n{stderr}");
        }
    }
    assert!(!stderr.contains("(timeline 1)"), "{stderr}");
    assert!(!stderr.contains("not in this server's history"), "{stderr}");

    assert_eq!(stamps(dir.path(), "00000001"), tli1_before);
    assert_eq!(
        archive::assert_history_identical(dir.path(), &standby.pg_wal_dir()),
        1
    );
    let tli2 = assert_timeline_identical(dir.path(), &standby, 2, fork / seg, end2);
    assert!(tli2.len() >= 3, "{tli2:?}");
    assert_eq!(slot_restart_lsn(&standby), Some(Some(format_lsn(end2))));

    // A restart resumes on timeline 2 at its newest file, although timeline 1 has higher segment numbers.
    let resume = tli2.last().unwrap().segno * seg;
    let end3 = lsn_ahead(&standby, 1 << 20);
    let mut ws = spawn_streaming(
        dir.path(),
        &standby.conninfo(),
        &["-n", "-S", SLOT, "-E", &format_lsn(end3)],
    );
    generate_past(&standby, end3);
    expect_exit(&mut ws, 0);
    let stderr = ws.stderr_text();
    assert!(
        stderr.contains(&format!(
            "starting log streaming at {} (timeline 2)",
            format_lsn(resume)
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("forked from it"), "{stderr}");
    assert!(!stderr.contains("does not protect"), "{stderr}");
    assert_eq!(stamps(dir.path(), "00000001"), tli1_before);
    assert_timeline_identical(dir.path(), &standby, 2, fork / seg, end3);
}

/// The no-copy case of START_REPLICATION (pg_receivewal's weakness #14): the archive ends exactly at a
/// segment-aligned switch point, so START_REPLICATION on timeline 1 there gets the next timeline at once.
/// Built by ending timeline 1 with pg_switch_wal: the primary is stopped with `-m immediate` (no shutdown
/// checkpoint) once the standby has the switch, so the standby's timeline 1 ends on the segment boundary.
/// Proves walsink takes that answer once (no loop), opens no timeline-1 file at the switch point, and
/// continues on timeline 2 byte-identically to the new primary.
#[test]
fn start_exactly_at_a_segment_aligned_switch_point() {
    // The server may write a WAL record after the switch (the background writer logs running transactions
    // at most every 15 s); then the switch point is not aligned and the setup is tried again.
    for attempt in 1..=3 {
        if aligned_switch_point_scenario() {
            return;
        }
        eprintln!("attempt {attempt}: the switch point was not segment aligned; trying again");
    }
    panic!("could not make the server end timeline 1 on a segment boundary in 3 attempts");
}

/// One attempt of [`start_exactly_at_a_segment_aligned_switch_point`]; false if the switch point was not
/// aligned (nothing was checked then).
fn aligned_switch_point_scenario() -> bool {
    let primary = keeping_cluster();
    let standby = primary.make_standby();
    let seg = primary.wal_segsize_bytes();
    let dir = tempfile::tempdir().unwrap();

    primary.generate_wal(3 << 19);
    // The end of the current segment: the switch record goes into this segment.
    let boundary = (parse_lsn(&primary.current_lsn()) / seg + 1) * seg;
    let mut ws = spawn_streaming(
        dir.path(),
        &primary.conninfo(),
        &["-n", "-E", &format_lsn(boundary)],
    );
    let switched = parse_lsn(&primary.switch_wal());
    assert_eq!(
        (switched / seg + 1) * seg,
        boundary,
        "the switch record {} is not in the segment before {}",
        format_lsn(switched),
        format_lsn(boundary)
    );
    expect_exit(&mut ws, 0);
    assert!(
        wait_for(
            || {
                standby
                    .sql_one("SELECT pg_last_wal_replay_lsn()::text")
                    .is_some_and(|l| parse_lsn(&l) >= boundary)
            },
            WAIT
        ),
        "standby did not replay the switch"
    );
    primary.stop(StopMode::Immediate);
    standby.promote();
    if switch_point(&standby, 1) != boundary {
        return false;
    }
    let names = archive::list(dir.path());
    let tli1_last = wal_files(dir.path(), seg).pop().unwrap();
    assert!(
        tli1_last.tli == 1 && !tli1_last.partial && (tli1_last.segno + 1) * seg == boundary,
        "the archive should end with the completed segment before {}: {names:?}",
        format_lsn(boundary)
    );

    let end = lsn_ahead(&standby, 2 << 20);
    let mut ws = spawn_streaming(
        dir.path(),
        &standby.conninfo(),
        &["-n", "-E", &format_lsn(end)],
    );
    generate_past(&standby, end);
    expect_exit(&mut ws, 0);
    let stderr = ws.stderr_text();
    let b = format_lsn(boundary);
    let expected = [
        format!("starting log streaming at {b} (timeline 1)"),
        format!(
            "timeline 1 ends exactly at {b}: the server answered with the next timeline 2 at once"
        ),
        format!("switched to timeline 2 at {b}"),
        format!("starting log streaming at {b} (timeline 2)"),
    ];
    let mut from = 0;
    for needle in &expected {
        let at = stderr[from..]
            .find(needle.as_str())
            .unwrap_or_else(|| panic!("no \"{needle}\" (in this order) in:\n{stderr}"));
        from += at + needle.len();
    }
    assert_eq!(
        stderr.matches("starting log streaming").count(),
        2,
        "{stderr}"
    );

    let names = archive::list(dir.path());
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("00000001") && n.ends_with(".partial")),
        "a timeline-1 .partial was opened at the switch point: {names:?}"
    );
    assert_eq!(
        archive::assert_history_identical(dir.path(), &standby.pg_wal_dir()),
        1
    );
    assert_timeline_identical(dir.path(), &standby, 2, boundary / seg, end);
    assert!(assert_completed_identical(dir.path(), &primary, 1) >= 1);
    true
}

/// Proves an archive that followed another branch is refused: it holds timeline 2 of one promoted standby
/// (s1), and the server is another standby of the same primary (s2, which received more before the primary
/// stopped), promoted to timeline 3 straight from timeline 1 (it saw timeline 2's history file, as with a
/// shared WAL archive). walsink exits 1 naming both timelines and the server's history, and leaves the
/// archive untouched.
#[test]
fn archive_of_another_branch_is_refused() {
    let primary = keeping_cluster();
    let s1 = primary.make_standby();
    let s2 = primary.make_standby();
    let lsn = parse_lsn(&primary.generate_wal(1 << 19));
    wait_received(&s1, lsn);
    s1.stop(StopMode::Fast);
    let lsn = parse_lsn(&primary.generate_wal(1 << 19));
    wait_received(&s2, lsn);
    primary.stop(StopMode::Fast);
    s1.start();
    s1.promote();
    assert_eq!(s1.timeline(), 2);

    let dir = tempfile::tempdir().unwrap();
    let end = lsn_ahead(&s1, 1 << 20);
    let mut ws = spawn_streaming(dir.path(), &s1.conninfo(), &["-n", "-E", &format_lsn(end)]);
    generate_past(&s1, end);
    expect_exit(&mut ws, 0);
    let files = wal_files(dir.path(), s1.wal_segsize_bytes());
    assert!(
        !files.is_empty() && files.iter().all(|f| f.tli == 2),
        "{files:?}"
    );

    // s2 sees timeline 2's history file, so its promotion picks timeline 3, branching from timeline 1
    // further on than timeline 2 did (s2 ignores timeline 2: it forked before s2's position).
    let history = fs::read(s1.pg_wal_dir().join("00000002.history")).unwrap();
    fs::write(s2.pg_wal_dir().join("00000002.history"), history).unwrap();
    s2.promote();
    assert_eq!(s2.timeline(), 3);
    let s2_history = fs::read_to_string(s2.pg_wal_dir().join("00000003.history")).unwrap();
    assert!(
        s2_history.starts_with("1\t") && !s2_history.contains("\n2\t"),
        "scenario: timeline 3 should fork from timeline 1 directly:\n{s2_history}"
    );
    let before = stamps(dir.path(), "0");

    let (code, stderr) = run_no_loop(dir.path(), &s2.conninfo());
    assert_eq!(code, Some(1), "{stderr}");
    let needle = format!(
        "the archive continues timeline 2, which is not in the history of timeline 3 of server {} (timeline 1 until ",
        named(&s2)
    );
    assert!(stderr.contains(&needle), "no \"{needle}\" in:\n{stderr}");
    assert!(stderr.contains("then timeline 3)"), "{stderr}");
    assert_eq!(stamps(dir.path(), "0"), before);
}
