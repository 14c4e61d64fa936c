//! Archive integrity: what walsink writes is the server's WAL, byte for byte, whatever happens to walsink,
//! the server or the directory in between.
//!
//! Every cluster here keeps its whole `pg_wal` for the test (`wal_keep_size = 1GB`: the slot alone would let
//! a checkpoint, e.g. the shutdown checkpoint of a server restart, remove segments walsink already has), so
//! every archived byte can be compared with the server's own file. The archive checks are strict: the
//! completed segments are exactly the contiguous run from the slot's first segment to the one before the end
//! position, each identical to `pg_wal`'s; the one `.partial` holds `pg_wal`'s bytes up to the end position
//! (and, where walsink wrote it, zeros after); no other files.

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::harness::pg::pg_receivewal;
use crate::harness::{
    PgCluster, StopMode, WAIT, Walsink, WalsinkProcess, archive, archive_dir, clean_command,
    format_lsn, generate_past, parse_lsn, restart_lsn, tail, wait_for,
};

/// How long a walsink (or pg_receivewal) may take to reach an end position or exit after a signal before the
/// test fails with its stderr.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long streamed WAL may take to show up on the server as received.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);
/// "Promptly": SIGINT/SIGTERM must end walsink within this.
const PROMPT_EXIT: Duration = Duration::from_secs(5);
/// The slot every scenario streams through.
const SLOT: &str = "integrity";

// ---- helpers -------------------------------------------------------------------------------------------

/// Segment arithmetic for one segment size (timeline 1 only: nothing here switches timelines).
#[derive(Clone, Copy, Debug)]
struct Seg(u64);

impl Seg {
    fn of(pg: &PgCluster) -> Seg {
        Seg(pg.wal_segsize_bytes())
    }

    fn bytes(self) -> u64 {
        self.0
    }

    fn no(self, lsn: u64) -> u64 {
        lsn / self.0
    }

    fn offset(self, lsn: u64) -> u64 {
        lsn % self.0
    }

    fn start(self, lsn: u64) -> u64 {
        lsn - self.offset(lsn)
    }

    /// The file name of segment number `segno` on timeline 1.
    fn name(self, segno: u64) -> String {
        let per_xlogid = 0x1_0000_0000 / self.0;
        format!(
            "00000001{:08X}{:08X}",
            segno / per_xlogid,
            segno % per_xlogid
        )
    }
}

/// A cluster that keeps all its WAL for the test, so the archive can be compared with `pg_wal`.
fn cluster(seg_mb: u32) -> PgCluster {
    PgCluster::builder()
        .wal_segsize_mb(seg_mb)
        .setting("wal_keep_size", "1GB")
        .start()
}

/// Creates a physical slot that reserves WAL at once; returns its restart_lsn (where streaming starts).
fn create_slot(pg: &PgCluster) -> u64 {
    pg.execute(&format!(
        "SELECT pg_create_physical_replication_slot('{SLOT}', true)"
    ));
    slot_restart_lsn(pg).expect("a reserving slot has a restart_lsn")
}

fn slot_restart_lsn(pg: &PgCluster) -> Option<u64> {
    restart_lsn(pg, SLOT)
}

/// The write position the (only) streaming client last reported to the server.
fn reported_write_lsn(pg: &PgCluster) -> Option<u64> {
    pg.sql_one("SELECT max(write_lsn)::text FROM pg_stat_replication")
        .map(|s| parse_lsn(&s))
}

fn current_lsn(pg: &PgCluster) -> u64 {
    parse_lsn(&pg.current_lsn())
}

/// Writes WAL until the current position is in the middle of a segment (at least 64 KiB from both ends), so
/// that a stop there leaves a `.partial`; returns that position.
fn mid_segment(pg: &PgCluster) -> u64 {
    let seg = Seg::of(pg);
    loop {
        let lsn = current_lsn(pg);
        let off = seg.offset(lsn);
        if off >= 64 << 10 && off <= seg.bytes() - (64 << 10) {
            return lsn;
        }
        pg.generate_wal(64 << 10);
    }
}

/// A position in the middle of the segment `segments` after the one holding `lsn`: far enough inside it
/// that a receiver which overshoots an end position by a whole message stays in that segment.
fn end_position(seg: Seg, lsn: u64, segments: u64) -> u64 {
    seg.start(lsn) + segments * seg.bytes() + seg.bytes() / 2 + 123
}

/// `walsink receive -D dir -d <conninfo> -S integrity <extra>`, started in the background.
fn spawn_walsink(pg: &PgCluster, dir: &Path, extra: &[&str]) -> WalsinkProcess {
    let empty = dir.is_dir()
        && !archive::list(dir)
            .iter()
            .any(|f| f.starts_with(|c: char| c.is_ascii_hexdigit()));
    let mut cmd = Walsink::cmd(["receive", "-d", &pg.conninfo(), "-S", SLOT, "-D"]);
    cmd.arg(dir).args(extra);
    let mut w = WalsinkProcess::spawn_command(cmd);
    if empty && !pg.has_read_replication_slot() {
        // Before 15 (no READ_REPLICATION_SLOT) an empty archive starts at the server's position when walsink
        // connects, not at the slot's restart_lsn (README, "Start position"): WAL the scenario generated
        // before that would never be streamed. Let it connect first (or fail, for the scenarios that expect
        // that, which then assert it); the server's position is then still in the slot's segment.
        let _streaming = w.wait_for_stderr("starting log streaming", EXIT_TIMEOUT);
    }
    w
}

/// `pg_receivewal -D dir -d <conninfo> -S integrity -n -s 1 -v <extra>`, started in the background.
fn spawn_pg_receivewal(pg: &PgCluster, dir: &Path, extra: &[&str]) -> WalsinkProcess {
    let mut cmd = clean_command(pg_receivewal());
    cmd.arg("-D")
        .arg(dir)
        .args(["-d", &pg.conninfo(), "-S", SLOT, "-n", "-s", "1", "-v"])
        .args(extra);
    WalsinkProcess::spawn_command(cmd)
}

/// Waits for the process to exit (failing with its stderr after `timeout`), asserts the exit code, and
/// returns its stderr.
fn expect_exit(p: &mut WalsinkProcess, timeout: Duration, code: i32) -> String {
    let status = p.wait_timeout(timeout);
    let stderr = p.stderr_text();
    assert_eq!(
        status.code(),
        Some(code),
        "{} ended with {status}, expected exit code {code}\n--- stderr ---\n{}",
        p.description(),
        tail(&stderr, 80)
    );
    stderr
}

/// Waits until the server has seen the client receive everything up to `lsn`; fails with the client's
/// stderr if it does not, or if the client exits.
fn wait_received(pg: &PgCluster, p: &mut WalsinkProcess, lsn: u64) {
    let ok = wait_for(
        || !p.is_running() || reported_write_lsn(pg).is_some_and(|w| w >= lsn),
        RECEIVE_TIMEOUT,
    );
    let running = p.is_running();
    assert!(
        ok && running,
        "{} did not report receiving up to {} within {RECEIVE_TIMEOUT:?} (reported {:?}, running: {})\n\
         --- stderr ---\n{}\n--- server log ---\n{}",
        p.description(),
        format_lsn(lsn),
        reported_write_lsn(pg).map(format_lsn),
        running,
        tail(&p.stderr_text(), 80),
        pg.log_tail(20)
    );
}

/// The LSN in walsink's "received interrupt signal, stopping at X/X" line.
fn stopped_at(stderr: &str) -> u64 {
    let needle = "received interrupt signal, stopping at ";
    let line = stderr
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in walsink's stderr:\n{}", tail(stderr, 40)));
    let rest = &line[line.find(needle).expect("found above") + needle.len()..];
    parse_lsn(rest.split_whitespace().next().unwrap_or(rest))
}

/// Asserts the whole archive of a stream on timeline 1 from `first` (the slot's start) to `end`:
///
/// - the completed segments are exactly those from `first`'s up to the one before `end`'s: contiguous,
///   none missing at either end, each byte-identical to `pg_wal`'s;
/// - if `end` is inside a segment, that segment is the one `.partial`: full size, identical to `pg_wal` up
///   to `end`, and (with `zeros_after_end`, when walsink wrote it) all zeros after `end`;
/// - nothing else but `.walsink.meta` / `.walsink.lock` (no leftover temp files, no `.replaced-*`).
fn assert_archive(pg: &PgCluster, dir: &Path, first: u64, end: u64, zeros_after_end: bool) {
    let seg = Seg::of(pg);
    let files = archive::list(dir);
    let expected: Vec<String> = (seg.no(first)..seg.no(end)).map(|n| seg.name(n)).collect();
    let completed = archive::completed_segments(dir);
    assert_eq!(
        completed,
        expected,
        "completed segments for {}..{} are not the contiguous run expected; archive holds {files:?}",
        format_lsn(first),
        format_lsn(end)
    );
    let compared = archive::assert_completed_identical(dir, &pg.pg_wal_dir());
    assert_eq!(compared, expected.len());

    let partials = archive::partial_segments(dir);
    if seg.offset(end) == 0 {
        assert!(
            partials.is_empty(),
            "end {} is a segment boundary, yet there is a .partial: {files:?}",
            format_lsn(end)
        );
    } else {
        let name = seg.name(seg.no(end));
        let partial_name = format!("{name}.partial");
        assert_eq!(
            partials,
            vec![partial_name.clone()],
            "expected exactly the .partial of the end segment; archive holds {files:?}"
        );
        let partial = dir.join(&partial_name);
        let upto = seg.offset(end) as usize;
        archive::assert_partial_prefix_identical(&partial, &pg.pg_wal_dir().join(&name), upto);
        let bytes = fs::read(&partial).expect("read .partial");
        assert_eq!(
            bytes.len() as u64,
            seg.bytes(),
            "{partial_name} is not a full-size segment"
        );
        if zeros_after_end && let Some(i) = bytes[upto..].iter().position(|&b| b != 0) {
            panic!(
                "{partial_name} has data after the end position {} (offset {upto:#x}): first non-zero byte at offset {:#x}",
                format_lsn(end),
                upto + i
            );
        }
    }
    for name in &files {
        let known = archive::is_segment_name(name)
            || name
                .strip_suffix(".partial")
                .is_some_and(archive::is_segment_name)
            || name == ".walsink.meta"
            || name == ".walsink.lock";
        assert!(known, "unexpected file {name:?} in the archive: {files:?}");
    }
}

/// Every file of a directory with its content, except `.walsink.lock` (whose content is the pid of the last
/// walsink that opened the directory, by design).
fn snapshot(dir: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    archive::list(dir)
        .into_iter()
        .map(|name| {
            let content = (name != ".walsink.lock")
                .then(|| fs::read(dir.join(&name)).expect("read archive file"));
            (name, content)
        })
        .collect()
}

/// A small seeded PRNG (splitmix64): the kill test prints its seed so that a failure can be replayed with
/// `WALSINK_KILL_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
    )
}

/// Sets the flag when dropped, also while unwinding, so a background load thread always stops.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

// ---- 1. byte-identical archive -------------------------------------------------------------------------

/// Streams through a slot while WAL is generated (with a `pg_switch_wal` mid-segment), stops at an end
/// position `segments_to_end` segments on, checks the archive byte for byte and has `pg_waldump` read it.
fn byte_identical_scenario(seg_mb: u32, segments_to_end: u64) {
    let pg = cluster(seg_mb);
    let seg = Seg::of(&pg);
    let dir = archive_dir();
    let first = create_slot(&pg);
    let end = end_position(seg, first, segments_to_end);
    let mut w = spawn_walsink(&pg, dir.path(), &["-E", &format_lsn(end)]);

    pg.generate_wal(seg.bytes() * 3 / 10);
    let switched_from = mid_segment(&pg);
    let switch_record_end = parse_lsn(&pg.switch_wal());
    let after_switch = current_lsn(&pg);
    assert_eq!(
        (seg.no(switch_record_end), seg.no(after_switch)),
        (seg.no(switched_from), seg.no(switched_from) + 1),
        "pg_switch_wal at {} (record end {}) did not move to the next segment (now at {})",
        format_lsn(switched_from),
        format_lsn(switch_record_end),
        format_lsn(after_switch)
    );
    assert!(
        after_switch < end,
        "the switch must happen before the end position"
    );
    generate_past(&pg, end);
    expect_exit(&mut w, EXIT_TIMEOUT, 0);

    assert_archive(&pg, dir.path(), first, end, true);
    let completed = archive::completed_segments(dir.path());
    assert!(
        completed.len() >= 2,
        "too few segments to prove anything: {completed:?}"
    );
    // The segment that was switched away from mid-segment is archived complete (the switch record and the
    // unused rest, as the server has it).
    assert!(completed.contains(&seg.name(seg.no(switched_from))));
    for name in archive::list(dir.path()) {
        archive::assert_mode(&dir.path().join(name), 0o600);
    }

    // PostgreSQL's own WAL reader accepts every completed segment, through the switch.
    let mut cmd = clean_command(pg.bin("pg_waldump"));
    cmd.arg("--path")
        .arg(dir.path())
        .arg("--stats=record")
        .arg(&completed[0])
        .arg(completed.last().expect("not empty"));
    let out = Walsink::run_command(cmd, EXIT_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pg_waldump failed on the archive ({}):\n--- stderr ---\n{stderr}\n--- stdout ---\n{}",
        out.status,
        tail(&stdout, 40)
    );
    assert!(
        stdout.contains("XLOG/SWITCH") && stdout.contains("LogicalMessage/MESSAGE"),
        "pg_waldump did not see the switch and the generated records:\n{stdout}"
    );

    // An end position exactly on a segment boundary: the .partial is completed and nothing after it is
    // started (no new .partial, no prepared file left behind).
    let boundary = seg.start(end) + seg.bytes();
    let mut w = spawn_walsink(&pg, dir.path(), &["-E", &format_lsn(boundary)]);
    generate_past(&pg, boundary);
    expect_exit(&mut w, EXIT_TIMEOUT, 0);
    assert_archive(&pg, dir.path(), first, boundary, true);
}

#[test]
fn archive_is_byte_identical_to_pg_wal_and_readable_by_pg_waldump_1mib_segments() {
    byte_identical_scenario(1, 4);
}

#[test]
fn archive_is_byte_identical_to_pg_wal_and_readable_by_pg_waldump_16mib_segments() {
    byte_identical_scenario(16, 2);
}

// ---- 2. interchange with pg_receivewal ---------------------------------------------------------------------

#[test]
fn pg_receivewal_and_walsink_continue_each_others_partial_segments() {
    let pg = cluster(1);
    let seg = Seg::of(&pg);
    let dir = archive_dir();
    let first = create_slot(&pg);

    // pg_receivewal streams, and is interrupted mid-segment. Before PostgreSQL 15 it starts at the server's
    // current position, not at the slot's: no WAL is written until it streams.
    let mut theirs = spawn_pg_receivewal(&pg, dir.path(), &[]);
    assert!(
        wait_for(
            || pg
                .sql_one("SELECT count(*)::text FROM pg_stat_replication WHERE state = 'streaming'")
                .as_deref()
                == Some("1"),
            WAIT
        ),
        "pg_receivewal did not start streaming"
    );
    pg.generate_wal(2 * seg.bytes());
    let target = mid_segment(&pg);
    wait_received(&pg, &mut theirs, target);
    theirs.interrupt();
    expect_exit(&mut theirs, EXIT_TIMEOUT, 0);
    assert_archive(&pg, dir.path(), first, target, false);
    let their_partial = seg.name(seg.no(target));
    assert!(!dir.path().join(".walsink.meta").exists());

    // walsink resumes on the same directory (adopting it: same cluster), completes pg_receivewal's
    // .partial and stops mid-segment at an end position.
    let end = end_position(seg, target, 1);
    let mut ours = spawn_walsink(&pg, dir.path(), &["-E", &format_lsn(end)]);
    generate_past(&pg, end);
    expect_exit(&mut ours, EXIT_TIMEOUT, 0);
    assert_archive(&pg, dir.path(), first, end, true);
    assert!(archive::completed_segments(dir.path()).contains(&their_partial));
    assert!(dir.path().join(".walsink.meta").exists());

    // And back: pg_receivewal resumes on walsink's directory and completes walsink's .partial.
    let our_partial = seg.name(seg.no(end));
    let end2 = end_position(seg, end, 1);
    let mut theirs = spawn_pg_receivewal(&pg, dir.path(), &["-E", &format_lsn(end2)]);
    generate_past(&pg, end2);
    expect_exit(&mut theirs, EXIT_TIMEOUT, 0);
    // pg_receivewal writes whole messages, possibly past its end position: only the prefix is compared.
    assert_archive(&pg, dir.path(), first, end2, false);
    assert!(archive::completed_segments(dir.path()).contains(&our_partial));
}

// ---- 3. kill -9 under load -------------------------------------------------------------------------------

#[test]
fn sigkill_at_random_moments_under_load_leaves_a_gapless_identical_archive() {
    let iterations = env_u64("WALSINK_KILL_ITERATIONS").unwrap_or(8);
    let seed = env_u64("WALSINK_KILL_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    eprintln!(
        "kill test: seed {seed} ({iterations} iterations; replay with WALSINK_KILL_SEED={seed})"
    );
    let mut rng = Rng(seed);

    let pg = cluster(1);
    let dir = archive_dir();
    let first = create_slot(&pg);
    if !pg.has_read_replication_slot() {
        // Before PostgreSQL 15 (no READ_REPLICATION_SLOT) a start on an empty archive begins at the server's
        // current position, not at the slot's restart_lsn (README, "Start position"), and the load below
        // moves that on: pin the archive's start to the slot's first.
        generate_past(&pg, first);
        let mut w = spawn_walsink(&pg, dir.path(), &["-E", &format_lsn(first + 1)]);
        expect_exit(&mut w, EXIT_TIMEOUT, 0);
    }
    pg.execute("CREATE TABLE load (id int, filler text)");

    let stop = AtomicBool::new(false);
    let batches = std::thread::scope(|s| {
        let load = s.spawn(|| {
            // A mix of table inserts (heap + index-less WAL, full-page images after checkpoints) and large
            // logical messages (records spanning pages), throttled to a few MB/s.
            let mut batches = 0u64;
            while !stop.load(Ordering::SeqCst) {
                pg.execute(
                    "INSERT INTO load SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 300) g",
                );
                if batches.is_multiple_of(4) {
                    pg.execute("SELECT pg_logical_emit_message(true, 'load', repeat('y', 150000))");
                }
                batches += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            batches
        });
        let _stop_load = SetOnDrop(&stop);
        for i in 0..iterations {
            let mut w = spawn_walsink(&pg, dir.path(), &[]);
            let ms = rng.range(50, 700);
            std::thread::sleep(Duration::from_millis(ms));
            assert!(
                w.is_running(),
                "walsink exited on its own in iteration {i}:\n{}",
                tail(&w.stderr_text(), 60)
            );
            w.kill9();
            w.wait_timeout(EXIT_TIMEOUT);
            eprintln!(
                "kill test: iteration {i}: SIGKILL after {ms} ms at server position {}; archive: {} completed, {:?}",
                pg.current_lsn(),
                archive::completed_segments(dir.path()).len(),
                archive::partial_segments(dir.path())
            );
        }
        stop.store(true, Ordering::SeqCst);
        load.join().expect("load thread panicked")
    });
    assert!(batches > 0, "the load generator did not run");

    // However short the random sleeps were, the archive spans at least a few segments; then a final,
    // undisturbed run catches up to where the server is now and stops there.
    let seg = Seg::of(&pg);
    generate_past(&pg, seg.start(first) + 3 * seg.bytes());
    let end = current_lsn(&pg);
    let mut w = spawn_walsink(&pg, dir.path(), &["-E", &format_lsn(end)]);
    expect_exit(&mut w, EXIT_TIMEOUT, 0);
    assert_archive(&pg, dir.path(), first, end, true);
    let segments = archive::completed_segments(dir.path()).len();
    eprintln!("kill test: {batches} load batches, {segments} completed segments, all identical");
}

// ---- 4. SIGINT and SIGTERM ---------------------------------------------------------------------------------

#[test]
fn sigint_and_sigterm_mid_segment_exit_promptly_keep_the_partial_and_advance_the_slot() {
    let pg = cluster(1);
    let seg = Seg::of(&pg);
    let dir = archive_dir();
    let first = create_slot(&pg);

    for (signal, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
        // No timed flush: mid-segment, only the shutdown path flushes and reports, so the slot position
        // afterwards is its doing. Status updates every second still tell the server what was received.
        let mut w = spawn_walsink(&pg, dir.path(), &["--flush-interval", "3600s", "-s", "1"]);
        pg.generate_wal(seg.bytes());
        let target = mid_segment(&pg);
        wait_received(&pg, &mut w, target);
        let slot_before = slot_restart_lsn(&pg).expect("slot has a restart_lsn");
        assert!(
            slot_before < target,
            "{name}: the slot is already at {} before the signal; the scenario needs unflushed WAL",
            format_lsn(slot_before)
        );

        let sent = Instant::now();
        w.signal(signal);
        let stderr = expect_exit(&mut w, EXIT_TIMEOUT, 0);
        let took = sent.elapsed();
        assert!(
            took < PROMPT_EXIT,
            "walsink took {took:?} to exit after {name}\n{}",
            tail(&stderr, 40)
        );

        let received = stopped_at(&stderr);
        assert!(
            received >= target,
            "{name}: walsink says it stopped at {}, but had reported receiving {}",
            format_lsn(received),
            format_lsn(target)
        );
        assert_ne!(
            seg.offset(received),
            0,
            "{name}: stopped on a segment boundary; the scenario needs a mid-segment stop"
        );
        // The .partial is kept as such, holds exactly what was received, and nothing is lost before it.
        assert_archive(&pg, dir.path(), first, received, true);
        // The last status update reported it all as flushed: the slot moved up to the received position.
        let advanced = wait_for(
            || slot_restart_lsn(&pg) == Some(received),
            Duration::from_secs(5),
        );
        assert!(
            advanced,
            "{name}: slot restart_lsn is {:?}, expected the received position {}",
            slot_restart_lsn(&pg).map(format_lsn),
            format_lsn(received)
        );
    }
}

// ---- 5. short and oversized .partial ---------------------------------------------------------------------

#[test]
fn short_and_oversized_partials_are_repaired_and_completed() {
    let pg = cluster(1);
    let seg = Seg::of(&pg);
    let dir = archive_dir();
    let first = create_slot(&pg);

    let mut w = spawn_walsink(&pg, dir.path(), &[]);
    pg.generate_wal(seg.bytes());
    let target = mid_segment(&pg);
    wait_received(&pg, &mut w, target);
    w.interrupt();
    let stderr = expect_exit(&mut w, EXIT_TIMEOUT, 0);
    let received = stopped_at(&stderr);
    let partial = dir
        .path()
        .join(format!("{}.partial", seg.name(seg.no(received))));
    assert!(partial.exists(), "{:?}", archive::list(dir.path()));

    // A disk-full during preallocation leaves a short file: keep half of what was written.
    let short = seg.offset(received) / 2;
    fs::OpenOptions::new()
        .write(true)
        .open(&partial)
        .and_then(|f| f.set_len(short))
        .expect("truncate the .partial");

    // pg_receivewal refuses such a directory (until a human intervenes).
    let copy = archive_dir();
    for name in archive::list(dir.path()) {
        fs::copy(dir.path().join(&name), copy.path().join(&name)).expect("copy archive");
    }
    let mut cmd = clean_command(pg_receivewal());
    cmd.arg("-D")
        .arg(copy.path())
        .args(["-d", &pg.conninfo(), "-n"]);
    let out = Walsink::run_command(cmd, EXIT_TIMEOUT);
    let their_err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && their_err.contains(&format!("has {short} bytes")),
        "pg_receivewal was expected to refuse the short .partial ({}):\n{their_err}",
        out.status
    );

    // walsink repairs it and completes the segment.
    let end = end_position(seg, received, 1);
    let mut w = spawn_walsink(&pg, dir.path(), &["-E", &format_lsn(end)]);
    generate_past(&pg, end);
    let stderr = expect_exit(&mut w, EXIT_TIMEOUT, 0);
    assert!(
        stderr.contains("extending it with zeros"),
        "no warning about the short .partial:\n{}",
        tail(&stderr, 40)
    );
    assert_archive(&pg, dir.path(), first, end, true);

    // An oversized .partial (garbage appended) is cut back to the segment size and completed.
    let partial = dir
        .path()
        .join(format!("{}.partial", seg.name(seg.no(end))));
    fs::OpenOptions::new()
        .append(true)
        .open(&partial)
        .and_then(|mut f| f.write_all(&[0xA5; 64 << 10]))
        .expect("append garbage");
    let end2 = end_position(seg, end, 1);
    let mut w = spawn_walsink(&pg, dir.path(), &["-E", &format_lsn(end2)]);
    generate_past(&pg, end2);
    let stderr = expect_exit(&mut w, EXIT_TIMEOUT, 0);
    assert!(
        stderr.contains("truncating it"),
        "no warning about the oversized .partial:\n{}",
        tail(&stderr, 40)
    );
    assert_archive(&pg, dir.path(), first, end2, true);
}

// ---- 6. directory lock ---------------------------------------------------------------------------------

#[test]
fn second_walsink_on_a_directory_is_refused_at_once_and_the_first_keeps_streaming() {
    let pg = cluster(1);
    let seg = Seg::of(&pg);
    let dir = archive_dir();
    let first = create_slot(&pg);

    let mut w = spawn_walsink(&pg, dir.path(), &[]);
    assert!(
        w.wait_for_stderr("starting log streaming", EXIT_TIMEOUT),
        "walsink did not start streaming:\n{}",
        w.stderr_text()
    );
    let lock = dir.path().join(".walsink.lock");
    let lock_before = fs::read_to_string(&lock).expect("read .walsink.lock");
    assert_eq!(lock_before.trim(), w.pid().to_string());

    // The second one needs no slot of its own to be refused: the directory lock comes first.
    let started = Instant::now();
    let mut cmd = Walsink::cmd(["receive", "-d", &pg.conninfo(), "-D"]);
    cmd.arg(dir.path());
    let mut second = WalsinkProcess::spawn_command(cmd);
    let stderr = expect_exit(&mut second, EXIT_TIMEOUT, 16);
    assert!(
        started.elapsed() < PROMPT_EXIT,
        "refusal took {:?}",
        started.elapsed()
    );
    let expected = format!(
        "archive directory \"{}\" is in use by another walsink (pid {})",
        dir.path().display(),
        w.pid()
    );
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in:\n{stderr}"
    );
    assert_eq!(
        fs::read_to_string(&lock).expect("read .walsink.lock"),
        lock_before,
        "the refused walsink changed .walsink.lock"
    );

    // The first one was not disturbed.
    pg.generate_wal(2 * seg.bytes());
    let target = mid_segment(&pg);
    wait_received(&pg, &mut w, target);
    w.interrupt();
    let stderr = expect_exit(&mut w, EXIT_TIMEOUT, 0);
    assert_archive(&pg, dir.path(), first, stopped_at(&stderr), true);
}

// ---- 7. pinned system identifier ------------------------------------------------------------------------

/// Points walsink at cluster `b` with an archive of another cluster; asserts exit 15, both identifiers in
/// the message, and an untouched directory.
fn assert_refused_for_other_cluster(dir: &Path, a_sysid: u64, b: &PgCluster) {
    let before = snapshot(dir);
    let mut cmd = Walsink::cmd(["receive", "-d", &b.conninfo(), "-D"]);
    cmd.arg(dir);
    let mut w = WalsinkProcess::spawn_command(cmd);
    let stderr = expect_exit(&mut w, EXIT_TIMEOUT, 15);
    let b_sysid = b.system_identifier();
    assert_ne!(a_sysid, b_sysid);
    let expected = format!(
        "holds WAL of database system {a_sysid}, but the server is database system {b_sysid}"
    );
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in:\n{stderr}"
    );
    let mut after = snapshot(dir);
    // .walsink.lock is the one file a refused walsink may leave (it is created before the server is asked).
    if !before.iter().any(|(n, _)| n == ".walsink.lock") {
        after.retain(|(n, _)| n != ".walsink.lock");
    }
    assert!(
        before == after,
        "the refused walsink changed the archive: before {:?}, after {:?}",
        before.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        after.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
}

#[test]
fn archive_of_another_cluster_is_refused_and_left_untouched() {
    let a = cluster(1);
    let b = cluster(1);
    let seg = Seg::of(&a);
    let a_sysid = a.system_identifier();
    let first = create_slot(&a);

    // Archived by walsink: pinned by .walsink.meta.
    let dir = archive_dir();
    let end = end_position(seg, first, 1);
    let mut w = spawn_walsink(&a, dir.path(), &["-E", &format_lsn(end)]);
    generate_past(&a, end);
    expect_exit(&mut w, EXIT_TIMEOUT, 0);
    assert!(dir.path().join(".walsink.meta").exists());
    assert_refused_for_other_cluster(dir.path(), a_sysid, &b);
    assert_archive(&a, dir.path(), first, end, true);

    // Archived by pg_receivewal: no .walsink.meta, walsink reads the segments' page headers.
    let dir = archive_dir();
    let start = current_lsn(&a);
    let end = end_position(seg, start, 1);
    let mut theirs = spawn_pg_receivewal(&a, dir.path(), &["-E", &format_lsn(end)]);
    generate_past(&a, end);
    expect_exit(&mut theirs, EXIT_TIMEOUT, 0);
    assert!(
        !archive::completed_segments(dir.path()).is_empty()
            && !archive::partial_segments(dir.path()).is_empty(),
        "{:?}",
        archive::list(dir.path())
    );
    assert_refused_for_other_cluster(dir.path(), a_sysid, &b);
    assert!(!dir.path().join(".walsink.meta").exists());
}

/// A directory written by walsink before its own files got dot-names (up to commit 7285866): the pin
/// `walsink.meta`, `walsink.lock` holding the pid of the walsink that last ran, the prepared next segment
/// `walsink.prepared.tmp` and a `walsink.meta.tmp` left by a crash, and a segment moved aside as
/// `NAME.replaced-<time>`. Started on it, walsink moves them to their dot-names (which Barman's archiver
/// skips), keeps the pin (another cluster is refused with exit 15, the same message as before) and streams on
/// from the archive's end: contiguous and byte-identical.
#[test]
fn an_archive_of_the_older_layout_is_migrated_keeping_its_pin_and_its_wal() {
    let a = cluster(1);
    let b = cluster(1);
    let seg = Seg::of(&a);
    let first = create_slot(&a);
    let dir = archive_dir();
    let d = dir.path();
    let end = end_position(seg, first, 2);
    let mut w = spawn_walsink(&a, d, &["-E", &format_lsn(end)]);
    generate_past(&a, end);
    expect_exit(&mut w, EXIT_TIMEOUT, 0);

    // The older layout's names, as that version left them.
    fs::rename(d.join(".walsink.meta"), d.join("walsink.meta")).unwrap();
    fs::rename(d.join(".walsink.lock"), d.join("walsink.lock")).unwrap();
    fs::write(
        d.join("walsink.prepared.tmp"),
        vec![0u8; seg.bytes() as usize],
    )
    .unwrap();
    fs::write(d.join("walsink.meta.tmp"), "system_identifier = 1\n").unwrap();
    let aside = format!("{}.replaced-1700000000", seg.name(seg.no(first)));
    fs::write(d.join(&aside), b"an older copy of the segment").unwrap();
    let pin = fs::read(d.join("walsink.meta")).unwrap();

    // Another cluster is still refused by the pin.
    let mut cmd = Walsink::cmd(["receive", "-d", &b.conninfo(), "-D"]);
    cmd.arg(d);
    let stderr = expect_exit(&mut WalsinkProcess::spawn_command(cmd), EXIT_TIMEOUT, 15);
    let expected = format!(
        "holds WAL of database system {}, but the server is database system {}",
        a.system_identifier(),
        b.system_identifier()
    );
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in:\n{stderr}"
    );
    // ... and the directory was migrated: WAL under WAL names, walsink's files under dot-names only.
    assert_eq!(fs::read(d.join(".walsink.meta")).unwrap(), pin);
    assert_eq!(
        fs::read(d.join(format!(".{aside}"))).unwrap(),
        b"an older copy of the segment"
    );
    let files = archive::list(d);
    for name in &files {
        assert!(
            name.starts_with('.')
                || archive::is_segment_name(name)
                || name
                    .strip_suffix(".partial")
                    .is_some_and(archive::is_segment_name),
            "{name:?} left in the WAL namespace: {files:?}"
        );
    }
    assert!(
        stderr.contains("out of the WAL file names (older layout)"),
        "{stderr}"
    );

    // The same cluster streams on from where the archive ended, with nothing to migrate any more.
    let end2 = end_position(seg, end, 2);
    let mut w = spawn_walsink(&a, d, &["-E", &format_lsn(end2)]);
    generate_past(&a, end2);
    let stderr = expect_exit(&mut w, EXIT_TIMEOUT, 0);
    assert!(!stderr.contains("older layout"), "{stderr}");
    fs::remove_file(d.join(format!(".{aside}"))).unwrap();
    assert_archive(&a, d, first, end2, true);
}

// ---- 8. missing directory ---------------------------------------------------------------------------------

#[test]
fn missing_archive_directory_exits_17_naming_it_and_is_not_created() {
    let parent = archive_dir();
    let missing = parent.path().join("no-such-archive");
    // No server at all: the directory is checked before connecting.
    let port = crate::harness::pg::free_port();
    let out = Walsink::run_command(
        {
            let mut cmd = Walsink::cmd([
                "receive",
                "-n",
                "-d",
                &format!("host=127.0.0.1 port={port} user=postgres"),
                "-D",
            ]);
            cmd.arg(&missing);
            cmd
        },
        EXIT_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(17), "{stderr}");
    let path = missing.display();
    let expected = format!(
        "archive directory \"{path}\" does not exist; create it with `mkdir -m 700 {path}`"
    );
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in:\n{stderr}"
    );
    assert!(!missing.exists(), "walsink created {path}");
}

// ---- 9. server restarts ------------------------------------------------------------------------------------

#[test]
fn walsink_reconnects_after_fast_and_immediate_server_restarts_without_a_gap() {
    let pg = cluster(1);
    let seg = Seg::of(&pg);
    let dir = archive_dir();
    let first = create_slot(&pg);
    let retries = |w: &WalsinkProcess| w.stderr_text().matches("retrying with backoff").count();

    let mut w = spawn_walsink(&pg, dir.path(), &[]);
    for mode in [StopMode::Fast, StopMode::Immediate] {
        pg.generate_wal(seg.bytes());
        let target = mid_segment(&pg);
        wait_received(&pg, &mut w, target);
        pg.stop(mode);
        pg.start();
        assert!(
            w.is_running(),
            "walsink exited after a {mode:?} server stop:\n{}",
            tail(&w.stderr_text(), 60)
        );
    }
    // It is streaming again (a received position past the restarts proves it), then the server goes away
    // for good and walsink is stopped while it waits to reconnect.
    pg.generate_wal(seg.bytes());
    let target = mid_segment(&pg);
    wait_received(&pg, &mut w, target);
    let retries_before = retries(&w);
    pg.stop(StopMode::Fast);
    assert!(
        wait_for(|| retries(&w) > retries_before, RECEIVE_TIMEOUT),
        "walsink did not log a retry after the server stopped:\n{}",
        tail(&w.stderr_text(), 60)
    );
    let sent = Instant::now();
    w.interrupt();
    let stderr = expect_exit(&mut w, EXIT_TIMEOUT, 0);
    assert!(
        sent.elapsed() < PROMPT_EXIT,
        "walsink took {:?} to exit after SIGINT while reconnecting",
        sent.elapsed()
    );
    let reconnects = stderr
        .lines()
        .filter(|l| l.contains("connected to server") && l.trim_end().ends_with("again"))
        .count();
    assert!(
        reconnects >= 2,
        "expected two reconnections in the log:\n{}",
        tail(&stderr, 60)
    );
    assert_archive(&pg, dir.path(), first, target, false);
    // A fast shutdown ends only once the receiver has confirmed all WAL, so the archive holds the server's
    // WAL to its very end, the shutdown checkpoint, although walsink was stopped during the outage.
    let end = shutdown_checkpoint_end(&pg);
    assert_eq!(
        seg.no(end),
        seg.no(target),
        "the shutdown checkpoint ends at {}, outside the segment of {}",
        format_lsn(end),
        format_lsn(target)
    );
    assert_archive(&pg, dir.path(), first, end, true);
}

/// The end of the WAL of a cleanly stopped server: where its shutdown checkpoint record ends (from
/// `pg_controldata` and `pg_waldump` on its `pg_wal`).
fn shutdown_checkpoint_end(pg: &PgCluster) -> u64 {
    let run = |cmd| {
        let out = Walsink::run_command(cmd, EXIT_TIMEOUT);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let mut cmd = clean_command(pg.bin("pg_controldata"));
    cmd.arg(pg.data_dir());
    let control = run(cmd);
    let field = |key: &str| {
        control
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {key:?} in pg_controldata output:\n{control}"))
    };
    assert_eq!(field("Database cluster state:"), "shut down");
    let checkpoint = field("Latest checkpoint location:");
    let mut cmd = clean_command(pg.bin("pg_waldump"));
    cmd.arg("--path")
        .arg(pg.pg_wal_dir())
        .args(["--start", &checkpoint, "--limit", "1"]);
    let record = run(cmd);
    // "rmgr: XLOG len (rec/tot): 114/ 114, tx: 0, lsn: 0/09013210, prev ..., desc: CHECKPOINT_SHUTDOWN ..."
    assert!(record.contains("CHECKPOINT_SHUTDOWN"), "{record}");
    let total: u64 = record
        .split_once("len (rec/tot):")
        .and_then(|(_, rest)| rest.split(',').next())
        .and_then(|lens| lens.split('/').nth(1))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no record length in pg_waldump output: {record}"));
    parse_lsn(&checkpoint) + total
}
