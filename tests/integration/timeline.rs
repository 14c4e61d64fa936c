//! Timeline switches walsink streams through: the promotion of the standby it streams from, a restart on an
//! archive that already crossed a switch, an archive left behind on an old timeline, and two promotions in a
//! row. Every scenario ends with `-E` (walsink exits 0 by itself) and then checks the archive against the
//! servers' `pg_wal`: history files, the old timeline's `.partial` up to the switch point, every completed
//! segment byte for byte, and no gap in segment numbers across the switch.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tempfile::TempDir;

use crate::harness::{
    PgCluster, StopMode, WAIT, Walsink, WalsinkProcess, archive, create_slot, format_lsn,
    generate_past, parse_lsn, switch_points, wait_for,
};

const SLOT: &str = "walsink_tl";

/// A cluster that keeps its WAL (so `pg_wal` can be compared with the archive after the fact).
fn keeping_cluster() -> PgCluster {
    PgCluster::builder().setting("wal_keep_size", "1GB").start()
}

/// Starts `walsink receive -D dir -d server -E end [extra]` in the background.
fn spawn_walsink(dir: &Path, server: &PgCluster, end: u64, extra: &[&str]) -> WalsinkProcess {
    let mut cmd = Walsink::cmd(["receive", "-v", "-D"]);
    cmd.arg(dir)
        .args(["-d", &server.conninfo(), "-E", &format_lsn(end)])
        .args(extra);
    let mut ws = WalsinkProcess::spawn_command(cmd);
    assert!(
        ws.wait_for_stderr("starting log streaming", WAIT),
        "walsink did not start streaming from port {}:\n{}",
        server.port(),
        ws.stderr_text()
    );
    ws
}

/// Waits until the walsink connected to `server` has reported `lsn` as flushed (pg_stat_replication).
pub(crate) fn wait_flushed(server: &PgCluster, ws: &mut WalsinkProcess, lsn: u64) {
    let flushed = || {
        server
            .sql_one(
                "SELECT coalesce(max(flush_lsn), '0/0')::text FROM pg_stat_replication \
                 WHERE application_name = 'walsink'",
            )
            .map_or(0, |l| parse_lsn(&l))
    };
    assert!(
        wait_for(|| flushed() >= lsn, WAIT),
        "walsink did not report {} flushed to port {} (it reports {}); running: {}\n{}",
        format_lsn(lsn),
        server.port(),
        format_lsn(flushed()),
        ws.is_running(),
        ws.stderr_text()
    );
}

/// Waits for walsink to exit by itself (it was given `-E`) and asserts exit code 0.
fn expect_exit_0(ws: &mut WalsinkProcess) {
    let status = ws.wait_timeout(WAIT);
    assert_eq!(
        status.code(),
        Some(0),
        "walsink exited with {status:?}:\n{}",
        ws.stderr_text()
    );
}

/// Waits until a standby has received (and flushed) WAL up to `lsn`.
pub(crate) fn wait_received(standby: &PgCluster, lsn: u64) {
    assert!(
        wait_for(|| parse_lsn(&standby.current_lsn()) >= lsn, WAIT),
        "standby on port {} did not receive up to {}",
        standby.port(),
        format_lsn(lsn)
    );
}

/// An LSN `bytes` past the current position of `server`, deliberately not on a page or segment boundary.
fn lsn_ahead(server: &PgCluster, bytes: u64) -> u64 {
    parse_lsn(&server.current_lsn()) + bytes + 0x1238
}

/// One WAL file in the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WalFile {
    pub(crate) tli: u32,
    pub(crate) segno: u64,
    pub(crate) partial: bool,
    pub(crate) name: String,
}

/// Every uncompressed WAL segment file (completed or `.partial`) in `dir`, by (segno, tli).
pub(crate) fn wal_files(dir: &Path, seg_size: u64) -> Vec<WalFile> {
    let per_id = 0x1_0000_0000 / seg_size;
    let mut files: Vec<WalFile> = archive::list(dir)
        .into_iter()
        .filter_map(|name| {
            let (base, partial) = match name.strip_suffix(".partial") {
                Some(b) => (b.to_owned(), true),
                None => (name.clone(), false),
            };
            if !archive::is_segment_name(&base) {
                return None;
            }
            let hex = |r: std::ops::Range<usize>| u64::from_str_radix(&base[r], 16).unwrap();
            Some(WalFile {
                tli: u32::try_from(hex(0..8)).unwrap(),
                segno: hex(8..16) * per_id + hex(16..24),
                partial,
                name,
            })
        })
        .collect();
    files.sort_by_key(|f| (f.segno, f.tli, !f.partial));
    files
}

/// Checks an archive that streamed timelines `1..=last_tli` and stopped at `end` on `last_tli`:
///
/// * `0000000N.history` for every N in 2..=last_tli, byte-identical to `history_source`'s pg_wal;
/// * per timeline a contiguous run of segment numbers; each timeline's run starts at the segment holding
///   the previous one's switch point (where the old timeline has a `.partial` and the new one the
///   completed segment), so the archive has no gap across a switch;
/// * every file is completed except the last of each timeline, which is `.partial`;
/// * every completed segment of timeline N is byte-identical to the same file in `sources[N]` (each pg_wal
///   listed there that holds the file is compared), every `.partial` up to the switch point (old timeline)
///   or `end` (last timeline).
///
/// Returns the archive's files.
pub(crate) fn assert_archive_follows(
    dir: &Path,
    seg_size: u64,
    last_tli: u32,
    end: u64,
    history_source: &Path,
    sources: &BTreeMap<u32, Vec<PathBuf>>,
) -> Vec<WalFile> {
    let names = archive::list(dir);
    for tli in 2..=last_tli {
        let name = format!("{tli:08X}.history");
        assert!(
            names.contains(&name),
            "{name} missing from the archive: {names:?}"
        );
    }
    assert_eq!(
        archive::assert_history_identical(dir, history_source),
        usize::try_from(last_tli - 1).unwrap(),
        "unexpected history files in {names:?}"
    );
    let points: BTreeMap<u32, u64> = if last_tli > 1 {
        let text = fs::read_to_string(dir.join(format!("{last_tli:08X}.history"))).unwrap();
        switch_points(&text).into_iter().collect()
    } else {
        BTreeMap::new()
    };
    assert_eq!(
        points.keys().copied().collect::<Vec<_>>(),
        (1..last_tli).collect::<Vec<_>>(),
        "switch points {points:?}"
    );

    let files = wal_files(dir, seg_size);
    let mut previous_switch: Option<u64> = None;
    for tli in 1..=last_tli {
        let mine: Vec<&WalFile> = files.iter().filter(|f| f.tli == tli).collect();
        assert!(!mine.is_empty(), "no segment of timeline {tli}: {names:?}");
        // Contiguous, one file per segment, only the last one partial.
        for (i, f) in mine.iter().enumerate() {
            assert_eq!(
                f.segno,
                mine[0].segno + i as u64,
                "gap or duplicate on timeline {tli}: {names:?}"
            );
            assert_eq!(
                f.partial,
                i == mine.len() - 1,
                "{} should {}be .partial: {names:?}",
                f.name,
                if i == mine.len() - 1 { "" } else { "not " }
            );
        }
        if let Some(sw) = previous_switch {
            assert_eq!(
                mine[0].segno,
                sw / seg_size,
                "timeline {tli} does not start at the segment holding the switch point {}: {names:?}",
                format_lsn(sw)
            );
        }
        let stop = points.get(&tli).copied().unwrap_or(end);
        let last = mine.last().unwrap();
        assert_eq!(
            last.segno,
            stop / seg_size,
            "timeline {tli} should end in the segment holding {}: {names:?}",
            format_lsn(stop)
        );
        assert_ne!(
            stop % seg_size,
            0,
            "test assumes the stop point is inside a segment"
        );
        let srcs = &sources[&tli];
        for f in &mine {
            let base = f.name.trim_end_matches(".partial");
            let mut compared = 0;
            for src in srcs {
                let original = src.join(base);
                if !original.exists() {
                    continue;
                }
                if f.partial {
                    archive::assert_partial_prefix_identical(
                        &dir.join(&f.name),
                        &original,
                        usize::try_from(stop % seg_size).unwrap(),
                    );
                } else {
                    let a = fs::read(dir.join(&f.name)).unwrap();
                    let o = fs::read(&original).unwrap();
                    assert!(a == o, "{} differs from {}", f.name, original.display());
                }
                compared += 1;
            }
            assert!(
                compared > 0,
                "{base} is in none of {srcs:?}: cannot compare {}",
                f.name
            );
        }
        previous_switch = points.get(&tli).copied();
    }
    assert_eq!(
        files.len(),
        files
            .iter()
            .filter(|f| f.tli >= 1 && f.tli <= last_tli)
            .count(),
        "segments of unexpected timelines: {names:?}"
    );
    let stray: Vec<&String> = names
        .iter()
        .filter(|n| n.contains(".replaced-") || n.ends_with(".tmp"))
        .collect();
    assert!(stray.is_empty(), "unexpected files {stray:?}");
    files
}

pub(crate) fn sources(list: &[(u32, &PgCluster)]) -> BTreeMap<u32, Vec<PathBuf>> {
    let mut map: BTreeMap<u32, Vec<PathBuf>> = BTreeMap::new();
    for (tli, pg) in list {
        map.entry(*tli).or_default().push(pg.pg_wal_dir());
    }
    map
}

/// The first scenario, shared by the restart test: walsink streams from a standby through its own slot;
/// the primary stops, the standby is promoted, and walsink follows it to timeline 2 until `-E`.
pub(crate) struct Promoted {
    primary: PgCluster,
    standby: PgCluster,
    pub(crate) dir: TempDir,
    end: u64,
    stderr: String,
}

pub(crate) fn stream_through_promotion() -> Promoted {
    let primary = keeping_cluster();
    let standby = primary.make_standby();
    create_slot(&standby, SLOT);
    let dir = tempfile::tempdir().unwrap();
    let end = lsn_ahead(&primary, 5 << 20);
    let mut ws = spawn_walsink(dir.path(), &standby, end, &["-S", SLOT]);

    let before_switch = parse_lsn(&primary.generate_wal(2 << 20));
    wait_received(&standby, before_switch);
    wait_flushed(&standby, &mut ws, before_switch);
    assert!(ws.is_running(), "{}", ws.stderr_text());

    primary.stop(StopMode::Fast);
    standby.promote();
    assert_eq!(standby.timeline(), 2);
    assert!(
        ws.is_running(),
        "walsink exited at the promotion:\n{}",
        ws.stderr_text()
    );
    assert!(
        end > parse_lsn(&standby.current_lsn()),
        "the switch point passed the planned end position {}",
        format_lsn(end)
    );
    generate_past(&standby, end);
    expect_exit_0(&mut ws);
    let stderr = ws.stderr_text();
    assert!(
        stderr.contains("switched to timeline 2"),
        "no switch logged:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "stopped log streaming at end position {}",
            format_lsn(end)
        )),
        "{stderr}"
    );
    Promoted {
        primary,
        standby,
        dir,
        end,
        stderr,
    }
}

/// Proves that walsink follows the promotion of the standby it streams from without exiting (within the
/// connection, or by reconnecting on its own), and that the archive then looks like pg_receivewal's:
/// `00000002.history`, timeline 1's last segment `.partial` with the server's bytes up to the switch point,
/// timeline 2 byte-identical to the promoted server and no gap in segment numbers.
#[test]
fn promotion_of_the_upstream_standby_is_followed_to_timeline_2() {
    let p = stream_through_promotion();
    let seg = p.standby.wal_segsize_bytes();
    let files = assert_archive_follows(
        p.dir.path(),
        seg,
        2,
        p.end,
        &p.standby.pg_wal_dir(),
        &sources(&[(1, &p.primary), (1, &p.standby), (2, &p.standby)]),
    );
    // At least one completed segment on each side of the switch, and the TLI 1 .partial was compared with
    // the stopped primary's segment (which still has the name without .partial).
    assert!(files.iter().any(|f| f.tli == 1 && !f.partial), "{files:?}");
    assert!(files.iter().any(|f| f.tli == 2 && !f.partial), "{files:?}");
    let tli1_partial = files.iter().find(|f| f.tli == 1 && f.partial).unwrap();
    assert!(
        p.primary
            .pg_wal_dir()
            .join(tli1_partial.name.trim_end_matches(".partial"))
            .exists()
    );
    // walsink either followed the switch on its connection or reconnected by itself; both are fine, but a
    // reconnect must have been logged as such.
    eprintln!(
        "walsink {} the switch",
        if p.stderr.contains("connected to server") && p.stderr.contains("again") {
            "reconnected across"
        } else {
            "followed, on one connection,"
        }
    );
}

/// Proves that a walsink restarted on an archive that crossed a switch resumes on timeline 2 at its last
/// `.partial`, leaves every completed segment, the history file and timeline 1's `.partial` untouched (same
/// inode, size and mtime), and stops at a new `-E`.
#[test]
fn restart_after_a_switch_resumes_on_timeline_2_without_rewriting() {
    let p = stream_through_promotion();
    let seg = p.standby.wal_segsize_bytes();
    let dir = p.dir.path();
    let before = wal_files(dir, seg);
    let last = before.last().unwrap().clone();
    assert!(last.partial && last.tli == 2, "{before:?}");
    let stamp = |name: &str| {
        let md = fs::metadata(dir.join(name)).unwrap();
        (md.ino(), md.len(), md.modified().unwrap())
    };
    let untouched: Vec<(String, (u64, u64, SystemTime))> = archive::list(dir)
        .into_iter()
        .filter(|n| {
            archive::is_segment_name(n) || archive::is_history_name(n) || n.starts_with("00000001")
        })
        .map(|n| {
            let s = stamp(&n);
            (n, s)
        })
        .collect();
    assert!(untouched.len() >= 4, "{untouched:?}");
    // mtime granularity: make any rewrite visible.
    std::thread::sleep(Duration::from_millis(20));

    let end = lsn_ahead(&p.standby, 3 << 20);
    let mut ws = spawn_walsink(dir, &p.standby, end, &["-S", SLOT]);
    let resume = format!(
        "starting log streaming at {} (timeline 2)",
        format_lsn(last.segno * seg)
    );
    assert!(
        ws.stderr_text().contains(&resume),
        "expected \"{resume}\":\n{}",
        ws.stderr_text()
    );
    generate_past(&p.standby, end);
    expect_exit_0(&mut ws);
    let stderr = ws.stderr_text();
    assert!(!stderr.contains("(timeline 1)"), "{stderr}");
    assert!(!stderr.contains("wrote timeline history"), "{stderr}");

    for (name, s) in &untouched {
        assert_eq!(&stamp(name), s, "{name} was rewritten by the restart");
    }
    let files = assert_archive_follows(
        dir,
        seg,
        2,
        end,
        &p.standby.pg_wal_dir(),
        &sources(&[(1, &p.primary), (1, &p.standby), (2, &p.standby)]),
    );
    // The old last .partial was completed, and the archive grew by at least two segments.
    assert!(
        files
            .iter()
            .any(|f| f.name == last.name.trim_end_matches(".partial")),
        "{files:?}"
    );
    assert!(files.len() >= before.len() + 2, "{files:?}");
}

/// Proves pg_receivewal's behaviour for an archive left on an old timeline: its newest segment is on
/// timeline 1 while the server is on 2, so walsink streams the rest of timeline 1 from the promoted server
/// (a historic timeline) up to the switch point, then switches to timeline 2 on its own.
#[test]
fn archive_on_the_old_timeline_streams_the_historic_part_then_switches() {
    let primary = keeping_cluster();
    let standby = primary.make_standby();
    let dir = tempfile::tempdir().unwrap();

    // Archive timeline 1 from the primary, up to a point well before the switch.
    let end1 = lsn_ahead(&primary, 1 << 20);
    let mut ws = spawn_walsink(dir.path(), &primary, end1, &["-n"]);
    generate_past(&primary, end1);
    expect_exit_0(&mut ws);
    let newest = wal_files(dir.path(), primary.wal_segsize_bytes());
    assert!(newest.iter().all(|f| f.tli == 1), "{newest:?}");

    // The primary goes on without walsink, then the standby takes over.
    let last = parse_lsn(&primary.generate_wal(2 << 20));
    wait_received(&standby, last);
    primary.stop(StopMode::Fast);
    standby.promote();
    assert_eq!(standby.timeline(), 2);
    let end2 = lsn_ahead(&standby, 2 << 20);
    let mut ws = spawn_walsink(dir.path(), &standby, end2, &["-n"]);
    assert!(
        ws.stderr_text().contains("(timeline 1)"),
        "walsink did not resume on timeline 1:\n{}",
        ws.stderr_text()
    );
    generate_past(&standby, end2);
    expect_exit_0(&mut ws);
    let stderr = ws.stderr_text();
    assert!(stderr.contains("switched to timeline 2"), "{stderr}");

    assert_archive_follows(
        dir.path(),
        standby.wal_segsize_bytes(),
        2,
        end2,
        &standby.pg_wal_dir(),
        &sources(&[(1, &primary), (1, &standby), (2, &standby)]),
    );
}

/// Proves walsink follows two promotions in a row while streaming from the last standby of a cascade
/// (primary → s1 → s2): s1 is promoted (timeline 2, s2 follows it), then s2 (timeline 3). The archive ends
/// with both history files and every timeline's segments identical to the server that wrote them.
#[test]
fn double_promotion_ends_with_both_history_files() {
    let primary = keeping_cluster();
    let s1 = primary.make_standby();
    let s2 = s1.make_standby();
    create_slot(&s2, SLOT);
    let dir = tempfile::tempdir().unwrap();
    let end = lsn_ahead(&primary, 5 << 20);
    let mut ws = spawn_walsink(dir.path(), &s2, end, &["-S", SLOT]);

    let lsn = parse_lsn(&primary.generate_wal(1 << 20));
    wait_received(&s2, lsn);
    wait_flushed(&s2, &mut ws, lsn);

    primary.stop(StopMode::Fast);
    s1.promote();
    assert_eq!(s1.timeline(), 2);
    assert!(
        wait_for(|| s2.timeline() == 2, WAIT),
        "s2 did not follow s1 to timeline 2\n{}",
        s2.log_tail(20)
    );
    let lsn = parse_lsn(&s1.generate_wal(3 << 19));
    wait_received(&s2, lsn);
    wait_flushed(&s2, &mut ws, lsn);
    assert!(ws.is_running(), "{}", ws.stderr_text());

    s1.stop(StopMode::Fast);
    s2.promote();
    assert_eq!(s2.timeline(), 3);
    assert!(
        ws.is_running(),
        "walsink exited at the second promotion:\n{}",
        ws.stderr_text()
    );
    assert!(end > parse_lsn(&s2.current_lsn()));
    generate_past(&s2, end);
    expect_exit_0(&mut ws);
    let stderr = ws.stderr_text();
    assert!(stderr.contains("switched to timeline 2"), "{stderr}");
    assert!(stderr.contains("switched to timeline 3"), "{stderr}");

    assert_archive_follows(
        dir.path(),
        s2.wal_segsize_bytes(),
        3,
        end,
        &s2.pg_wal_dir(),
        &sources(&[(1, &primary), (2, &s1), (2, &s2), (3, &s2)]),
    );
}
