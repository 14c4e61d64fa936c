//! `walsink verify` against archives that real PostgreSQL servers and walsink made, and against
//! corrupted copies of them: a flipped byte, a truncated segment, a missing segment, a segment of the
//! wrong timeline, a missing history file. Exit 0 only for a valid archive, 20 with each problem named.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::harness::{PgCluster, Walsink, format_lsn, parse_lsn};

/// The exit code for an archive with problems (README, "Exit codes").
const PROBLEMS: i32 = 20;
const TIMEOUT: Duration = Duration::from_secs(120);
const SLOT: &str = "verify";

/// `walsink verify -D dir [extra]`: (exit code, stdout, stderr).
fn verify(dir: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Walsink::cmd(["verify", "-D"]);
    cmd.arg(dir).args(extra);
    let out = Walsink::run_command(cmd, TIMEOUT);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn verify_json(dir: &Path) -> (Option<i32>, serde_json::Value) {
    let (code, stdout, stderr) = verify(dir, &["--json"]);
    let v = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\nstderr: {stderr}"));
    (code, v)
}

/// Asserts `walsink verify` finds the archive in `dir` valid, and returns its JSON report.
pub(crate) fn assert_valid(dir: &Path) -> serde_json::Value {
    let (code, v) = verify_json(dir);
    assert_eq!(code, Some(0), "walsink verify: {v:#}");
    assert_eq!(v["valid"], true, "{v:#}");
    v
}

/// Asserts `walsink verify` exits 20 and names `needles` in one problem line.
fn assert_problem(dir: &Path, what: &str, needles: &[&str]) {
    let (code, stdout, stderr) = verify(dir, &[]);
    assert_eq!(
        code,
        Some(PROBLEMS),
        "{what}: stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("problem: ") && needles.iter().all(|n| l.contains(n))),
        "{what}: no problem line with {needles:?}:\n{stdout}"
    );
    assert!(stdout.contains("FAILED: "), "{what}: {stdout}");
    assert!(
        stderr.is_empty(),
        "{what}: no progress bar when not on a terminal: {stderr}"
    );
}

/// A copy of the archive in `dir`.
fn copy_of(dir: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
        }
    }
    copy
}

/// The completed segments in `dir`, sorted.
fn completed(dir: &Path) -> Vec<String> {
    let mut v = crate::harness::archive::completed_segments(dir);
    v.sort();
    v
}

/// A cluster, and an archive walsink streamed from it: several completed segments (one ended by a
/// switch), a `.partial`, records of every size; walsink stopped at the end of the WAL generated.
fn streamed_archive() -> (PgCluster, tempfile::TempDir, u64) {
    let pg = PgCluster::builder().setting("wal_keep_size", "1GB").start();
    pg.execute(&format!(
        "SELECT pg_create_physical_replication_slot('{SLOT}', true)"
    ));
    pg.execute("CREATE TABLE t (id int PRIMARY KEY, v text)");
    pg.execute("INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 20000) i");
    pg.switch_wal();
    pg.execute("CHECKPOINT");
    pg.execute("UPDATE t SET v = v || 'x' WHERE id % 7 = 0");
    pg.generate_wal(2 << 20);
    pg.execute("INSERT INTO t SELECT i, md5(i::text) FROM generate_series(20001, 22000) i");
    let end = parse_lsn(&pg.current_lsn());
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Walsink::cmd(["receive", "-n", "-S", SLOT, "-D"]);
    cmd.arg(dir.path())
        .args(["-d", &pg.conninfo(), "-E", &format_lsn(end)]);
    let out = Walsink::run_command(cmd, TIMEOUT);
    assert_eq!(
        out.status.code(),
        Some(0),
        "walsink receive: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (pg, dir, end)
}

#[test]
fn a_streamed_archive_is_valid_to_its_last_record() {
    let (pg, dir, end) = streamed_archive();
    let v = assert_valid(dir.path());
    assert_eq!(v["system_identifier"], pg.system_identifier().to_string());
    let tls = v["timelines"].as_array().unwrap();
    assert_eq!(tls.len(), 1, "{v:#}");
    let last = parse_lsn(tls[0]["end"].as_str().unwrap());
    assert!(
        last <= end && end - last < 8,
        "the last valid record ends at {}, the WAL at {}",
        format_lsn(last),
        format_lsn(end)
    );
    assert!(v["records"].as_u64().unwrap() > 20_000, "{v:#}");
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);
    let (code, stdout, stderr) = verify(dir.path(), &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("OK: the archive is valid from its first to its last record"),
        "{stdout}"
    );
    // --from/--to: only the segments in range are read.
    let names = completed(dir.path());
    let second = &names[1];
    let segno = u64::from_str_radix(&second[16..], 16).unwrap();
    let seg = pg.wal_segsize_bytes();
    let from = format_lsn(segno * seg + 1);
    let to = format_lsn(segno * seg + 2);
    let (code, v) = {
        let (code, stdout, _) = verify(dir.path(), &["--json", "--from", &from, "--to", &to]);
        (
            code,
            serde_json::from_str::<serde_json::Value>(&stdout).unwrap(),
        )
    };
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["files"], 1, "{v:#}");
}

#[test]
fn damaged_copies_of_a_streamed_archive_are_refused_naming_the_problem() {
    let (_pg, dir, _) = streamed_archive();
    let names = completed(dir.path());
    assert!(names.len() >= 3, "{names:?}");

    // A flipped byte in the middle of a segment.
    let c = copy_of(dir.path());
    let path = c.path().join(&names[1]);
    let mut b = fs::read(&path).unwrap();
    b[300_001] ^= 0x04;
    fs::write(&path, b).unwrap();
    assert_problem(c.path(), "flipped byte", &[&names[1], " at "]);

    // A page header damaged: the page address.
    let c = copy_of(dir.path());
    let path = c.path().join(&names[1]);
    let mut b = fs::read(&path).unwrap();
    b[8192 * 5 + 9] ^= 0x01;
    fs::write(&path, b).unwrap();
    assert_problem(c.path(), "page header", &[&names[1], "page address"]);

    // A truncated segment.
    let c = copy_of(dir.path());
    let path = c.path().join(&names[2]);
    let b = fs::read(&path).unwrap();
    fs::write(&path, &b[..b.len() / 3]).unwrap();
    assert_problem(c.path(), "truncated", &[&names[2], "completed segment has"]);

    // A missing segment.
    let c = copy_of(dir.path());
    fs::remove_file(c.path().join(&names[1])).unwrap();
    assert_problem(
        c.path(),
        "missing segment",
        &[&format!("missing segment(s) {}", names[1])],
    );

    // A segment of the wrong timeline (renamed to timeline 2, which has no history file).
    let c = copy_of(dir.path());
    let last = names.last().unwrap();
    fs::rename(
        c.path().join(last),
        c.path().join(format!("00000002{}", &last[8..])),
    )
    .unwrap();
    assert_problem(
        c.path(),
        "wrong timeline",
        &["timeline 2 has WAL but its history file 00000002.history is missing"],
    );

    // --json says the same.
    let c = copy_of(dir.path());
    fs::remove_file(c.path().join(&names[1])).unwrap();
    let (code, v) = verify_json(c.path());
    assert_eq!(code, Some(PROBLEMS));
    assert_eq!(v["valid"], false);
    let p = &v["problems"][0];
    assert!(
        p["problem"]
            .as_str()
            .unwrap()
            .contains("missing segment(s)"),
        "{v:#}"
    );
    assert_eq!(p["timeline"], 1);
}

#[test]
fn an_archive_across_a_promotion_is_valid_and_needs_its_history_file() {
    let p = crate::timeline::stream_through_promotion();
    let v = assert_valid(p.dir.path());
    let tls: Vec<u64> = v["timelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["timeline"].as_u64().unwrap())
        .collect();
    assert_eq!(tls, [1, 2], "{v:#}");

    let c = copy_of(p.dir.path());
    fs::remove_file(c.path().join("00000002.history")).unwrap();
    assert_problem(
        c.path(),
        "no history file",
        &["00000002.history is missing"],
    );

    // A page of timeline 2 claiming a later timeline.
    let c = copy_of(p.dir.path());
    let tl2: Vec<String> = completed(c.path())
        .into_iter()
        .filter(|n| n.starts_with("00000002"))
        .collect();
    let path = c.path().join(&tl2[0]);
    let mut b = fs::read(&path).unwrap();
    b[8192 * 3 + 4] = 7;
    fs::write(&path, b).unwrap();
    assert_problem(c.path(), "later timeline", &[&tl2[0], "timeline 7"]);
}

/// On a terminal (a pseudo-terminal made by util-linux's `script`) `walsink verify` draws its progress bar
/// on stderr, and still prints its verdict; with `--json`, even on a terminal, only the JSON report comes
/// out (a machine reads it). Piped, stderr stays empty: every `assert_problem` above checks that.
#[test]
fn the_progress_bar_is_drawn_on_a_terminal_only() {
    let (_pg, dir, _) = streamed_archive();
    let on_a_terminal = |extra: &str| {
        // `script -e` exits with the command's exit code; `-f` flushes every write. Everything the command
        // writes to the terminal (stdout and stderr alike) comes out of script's stdout.
        let shell = format!(
            "'{}' verify -D '{}'{extra}",
            Walsink::bin().display(),
            dir.path().display()
        );
        let mut cmd = crate::harness::clean_command("script");
        cmd.args(["-qfec", &shell, "/dev/null"])
            .env("TERM", "xterm");
        let out = Walsink::run_command(cmd, TIMEOUT);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };

    let (code, tty) = on_a_terminal("");
    assert_eq!(code, Some(0), "{tty}");
    assert!(
        tty.contains("checking WAL"),
        "no progress bar on a terminal: {tty:?}"
    );
    assert!(
        tty.contains("OK: the archive is valid from its first to its last record"),
        "{tty:?}"
    );

    let (code, tty) = on_a_terminal(" --json");
    assert_eq!(code, Some(0), "{tty}");
    assert!(
        !tty.contains("checking WAL"),
        "a progress bar with --json: {tty:?}"
    );
    let v: serde_json::Value = serde_json::from_str(tty.trim())
        .unwrap_or_else(|e| panic!("not only JSON on a terminal ({e}): {tty:?}"));
    assert_eq!(v["valid"], true, "{v:#}");

    // The same run piped: the verdict, nothing on stderr.
    let (code, stdout, stderr) = verify(dir.path(), &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stderr.is_empty(), "a progress bar when piped: {stderr:?}");
}
