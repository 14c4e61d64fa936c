//! pg_receivewal's own TAP scenarios (`src/bin/pg_basebackup/t/020_pg_receivewal.pl`), run against walsink.
//!
//! The numbers in the comments are the scenario numbers of the reference (`pg_receivewal.md` §5). Scenarios
//! 10, 14 and 15 test compression (`--compress`), which walsink does not implement yet; they come with that
//! feature. Where walsink deliberately differs from pg_receivewal the test says so:
//!
//! - `--create-slot` reserves WAL at once (restart_lsn is set), pg_receivewal's slot starts without one;
//! - `--endpos` stops exactly at the end position: the bytes after it in the last `.partial` stay zero,
//!   where pg_receivewal writes the whole message that crosses it.
//!
//! Every run that streams also checks that each completed segment is byte-identical to the server's.
//!
//! The last test runs the scenarios' message checks with walsink called as `pg_receivewal` (a symbolic
//! link), where its messages take pg_receivewal's form (`pg_receivewal: error: ...`).

use std::fs;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::harness::{
    PgCluster, PgReceivewalLink, WAIT, Walsink, archive, archive_dir, format_lsn, parse_lsn,
    switch_point, wait_for,
};

/// Upper bound for one walsink run that must end by itself (usage errors, slot commands, `--endpos`).
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

// ---- helpers --------------------------------------------------------------------------------------------

/// Runs `walsink <args>`; a hang fails the test with walsink's stderr (see [`Walsink::run`]).
fn walsink(args: &[&str]) -> Output {
    Walsink::run(args, RUN_TIMEOUT)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the exit code, showing both outputs when it differs.
fn assert_exit(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit code {code}, got {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

/// A usage error: exit code 2 (README), and stderr holds every one of `needles`.
fn assert_usage_error(args: &[&str], needles: &[&str]) {
    let out = walsink(args);
    assert_exit(&out, 2, &format!("walsink {}", args.join(" ")));
    let err = stderr(&out);
    for needle in needles {
        assert!(
            err.contains(needle),
            "walsink {}: stderr does not mention {needle:?}:\n{err}",
            args.join(" ")
        );
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// `walsink receive -D dir -d <conninfo> --endpos <endpos> --no-loop --verbose <extra>`, which must reach
/// the end position and exit 0 on its own.
fn stream_to_endpos(pg: &PgCluster, dir: &Path, endpos: &str, extra: &[&str]) -> Output {
    let conninfo = pg.conninfo();
    let mut args = vec![
        "receive",
        "-D",
        path_str(dir),
        "-d",
        &conninfo,
        "--endpos",
        endpos,
        "--no-loop",
        "--verbose",
    ];
    args.extend_from_slice(extra);
    let out = walsink(&args);
    assert_exit(&out, 0, &format!("walsink {}", args.join(" ")));
    out
}

/// Checks that `name.partial` is walsink's segment stopped exactly at `endpos`: full size, identical to the
/// server's segment up to `endpos`, zeros after it (while the server did write past `endpos` in that segment,
/// so the zeros are walsink stopping and not the server having nothing yet).
fn assert_partial_stops_at(pg: &PgCluster, dir: &Path, name: &str, endpos: u64) {
    let seg = pg.wal_segsize_bytes();
    let upto = usize::try_from((endpos - 1) % seg + 1).expect("segment offset fits usize");
    let partial = dir.join(format!("{name}.partial"));
    let original = pg.pg_wal_dir().join(name);
    archive::assert_partial_prefix_identical(&partial, &original, upto);
    let bytes = fs::read(&partial).unwrap_or_else(|e| panic!("read {}: {e}", partial.display()));
    assert_eq!(
        bytes.len() as u64,
        seg,
        "{name}.partial is not a full-size (preallocated) segment"
    );
    if let Some(i) = bytes[upto..].iter().position(|&b| b != 0) {
        panic!(
            "{name}.partial has data after the end position {} (offset {:#x} is {:#04x}): walsink must stop \
             exactly at --endpos",
            format_lsn(endpos),
            upto + i,
            bytes[upto + i]
        );
    }
    let server = fs::read(&original).unwrap_or_else(|e| panic!("read {}: {e}", original.display()));
    assert!(
        server[upto..].iter().any(|&b| b != 0),
        "the server's {name} has nothing after {}: the test did not write WAL past the end position",
        format_lsn(endpos)
    );
}

/// The WAL file name of `segno` on `tli` (`TTTTTTTTXXXXXXXXYYYYYYYY`).
fn segment_name(tli: u32, segno: u64, seg_size: u64) -> String {
    let per_id = 0x1_0000_0000 / seg_size;
    format!("{tli:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

/// One row of pg_replication_slots for `slot`: (slot_type, restart_lsn), or `None` if there is no such slot.
fn slot_row(pg: &PgCluster, slot: &str) -> Option<(String, Option<String>)> {
    pg.sql(&format!(
        "SELECT slot_type, restart_lsn::text FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ))
    .into_iter()
    .next()
    .map(|row| {
        (
            row[0].clone().expect("slot_type is never NULL"),
            row[1].clone(),
        )
    })
}

/// The insert position (as TAP's `nextlsn`).
fn insert_lsn(pg: &PgCluster) -> String {
    pg.sql_one("SELECT pg_current_wal_insert_lsn()::text")
        .expect("NULL insert position")
}

// ---- 1-9: command line -----------------------------------------------------------------------------------

/// Scenario 1: `--help` exits 0 with help on stdout, nothing on stderr, and no line longer than 95
/// characters (PostgreSQL's `program_help_ok`), for the top-level help and for `walsink receive`.
#[test]
fn help_exits_zero_and_fits_95_columns() {
    for args in [&["--help"][..], &["receive", "--help"][..]] {
        let out = walsink(args);
        let what = format!("walsink {}", args.join(" "));
        assert_exit(&out, 0, &what);
        let text = stdout(&out);
        assert!(!text.trim().is_empty(), "{what}: empty stdout");
        assert!(stderr(&out).is_empty(), "{what}: stderr:\n{}", stderr(&out));
        let long: Vec<String> = text
            .lines()
            .filter(|l| l.chars().count() > 95)
            .map(|l| format!("{:>3}: {l}", l.chars().count()))
            .collect();
        assert!(
            long.is_empty(),
            "{what}: {} help lines are longer than 95 characters:\n{}",
            long.len(),
            long.join("\n")
        );
    }
    let out = walsink(&["receive", "--help"]);
    for flag in [
        "--directory",
        "--endpos",
        "--slot",
        "--synchronous",
        "--no-sync",
    ] {
        assert!(stdout(&out).contains(flag), "receive --help lacks {flag}");
    }
}

/// Scenario 2: `--version` exits 0 with the version on stdout and nothing on stderr.
#[test]
fn version_exits_zero_and_prints_the_version() {
    for args in [&["--version"][..], &["receive", "--version"][..]] {
        let out = walsink(args);
        let what = format!("walsink {}", args.join(" "));
        assert_exit(&out, 0, &what);
        assert!(
            stdout(&out).contains(env!("CARGO_PKG_VERSION")),
            "{what}: stdout lacks the version {}: {:?}",
            env!("CARGO_PKG_VERSION"),
            stdout(&out)
        );
        assert!(stderr(&out).is_empty(), "{what}: stderr:\n{}", stderr(&out));
    }
}

/// Scenario 3: an unknown option fails with a message on stderr.
#[test]
fn invalid_option_fails_with_a_message() {
    let out = walsink(&["receive", "--not-a-valid-option"]);
    assert_exit(&out, 2, "walsink receive --not-a-valid-option");
    assert!(
        stderr(&out).contains("--not-a-valid-option"),
        "stderr does not name the option:\n{}",
        stderr(&out)
    );
}

/// Scenario 4: without a target directory walsink fails, and the message names the missing flag.
#[test]
fn no_directory_fails_naming_the_directory_flag() {
    assert_usage_error(&["receive"], &["-D", "--directory"]);
    let dir = archive_dir();
    // A connection string alone is not enough either; nothing is written anywhere.
    assert_usage_error(
        &["receive", "-d", "host=127.0.0.1 port=1 user=postgres"],
        &["--directory"],
    );
    assert!(archive::list(dir.path()).is_empty());
}

/// Scenarios 5, 6: an end position that is not an LSN (too many digits, trailing garbage) fails.
#[test]
fn unparsable_endpos_fails() {
    let dir = archive_dir();
    for endpos in ["123456789/0", "1/2/3"] {
        assert_usage_error(
            &["receive", "-D", path_str(dir.path()), "--endpos", endpos],
            &["could not parse end position"],
        );
    }
}

/// Scenarios 7, 8, 9: conflicting or incomplete flags fail before connecting, naming the flags.
#[test]
fn conflicting_flags_fail_naming_them() {
    let dir = archive_dir();
    let d = path_str(dir.path());
    // 7. --create-slot with --drop-slot.
    assert_usage_error(
        &["receive", "-D", d, "--create-slot", "--drop-slot"],
        &["--create-slot", "--drop-slot"],
    );
    // 8. --create-slot without --slot.
    assert_usage_error(
        &["receive", "-D", d, "--create-slot"],
        &["--create-slot", "--slot"],
    );
    // 9. --synchronous with --no-sync.
    assert_usage_error(
        &["receive", "-D", d, "--synchronous", "--no-sync"],
        &["--synchronous", "--no-sync"],
    );
    assert!(archive::list(dir.path()).is_empty());
    // Scenario 10 (`--compress none:1` is refused) comes with compression, which walsink does not have yet.
}

// ---- 11, 12: slots -------------------------------------------------------------------------------------

/// Scenario 11: `--create-slot` creates a physical slot and exits 0; scenario 12: `--drop-slot` drops it and
/// exits 0.
#[test]
fn create_slot_then_drop_slot() {
    let pg = PgCluster::start_default();
    let conninfo = pg.conninfo();

    let out = walsink(&[
        "receive",
        "--slot",
        "test",
        "--create-slot",
        "-d",
        &conninfo,
    ]);
    assert_exit(&out, 0, "--create-slot");
    let (slot_type, restart_lsn) = slot_row(&pg, "test").expect("slot test was not created");
    assert_eq!(slot_type, "physical");
    // Deliberate difference: pg_receivewal's --create-slot leaves restart_lsn NULL (no WAL reserved until it
    // first streams), so WAL written between creating the slot and starting the receiver is not kept. walsink
    // reserves WAL at once, so the slot protects everything from the moment it exists.
    let restart_lsn =
        restart_lsn.expect("walsink's --create-slot must reserve WAL (restart_lsn set)");
    assert!(parse_lsn(&restart_lsn) <= parse_lsn(&pg.current_lsn()));

    // Creating it again fails, unless --if-not-exists.
    let again = walsink(&[
        "receive",
        "--slot",
        "test",
        "--create-slot",
        "-d",
        &conninfo,
    ]);
    assert_ne!(
        again.status.code(),
        Some(0),
        "creating an existing slot succeeded"
    );
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    let out = walsink(&[
        "receive",
        "--slot",
        "test",
        "--create-slot",
        "--if-not-exists",
        "-d",
        &conninfo,
    ]);
    assert_exit(&out, 0, "--create-slot --if-not-exists on an existing slot");

    let out = walsink(&["receive", "--slot", "test", "--drop-slot", "-d", &conninfo]);
    assert_exit(&out, 0, "--drop-slot");
    assert_eq!(slot_row(&pg, "test"), None, "slot test still exists");
}

// ---- 13, 16, 17: end position and .partial, then file modes --------------------------------------------

/// Scenario 13: `--endpos --synchronous --no-loop` exits 0 leaving exactly one `.partial`, stopped exactly
/// at the end position. Scenario 16: a second run resumes from that `.partial` and completes it
/// (byte-identical to pg_wal's), leaving the next segment as the only `.partial`. Scenario 17: the directory
/// keeps mode 0700 and every file walsink wrote is 0600.
#[test]
fn endpos_runs_leave_one_partial_then_complete_it_with_private_modes() {
    let pg = PgCluster::builder()
        .setting("wal_keep_size", "64MB")
        .start();
    let dir = archive_dir();

    // 13.
    pg.execute("CREATE TABLE test_table (x integer PRIMARY KEY)");
    pg.execute("SELECT pg_switch_wal()");
    let nextlsn = insert_lsn(&pg);
    pg.execute("INSERT INTO test_table VALUES (1)");
    stream_to_endpos(&pg, dir.path(), &nextlsn, &["--synchronous"]);
    let first = pg.walfile_name(&nextlsn);
    assert_eq!(
        archive::partial_segments(dir.path()),
        vec![format!("{first}.partial")],
        "after the first --endpos run: {:?}",
        archive::list(dir.path())
    );
    assert_partial_stops_at(&pg, dir.path(), &first, parse_lsn(&nextlsn));
    archive::assert_completed_identical(dir.path(), &pg.pg_wal_dir());

    // (14 and 15 run the same step with --compress gzip and lz4: not implemented by walsink yet.)

    // 16.
    pg.execute("SELECT pg_switch_wal()");
    let nextlsn = insert_lsn(&pg);
    pg.execute("INSERT INTO test_table VALUES (2)");
    stream_to_endpos(&pg, dir.path(), &nextlsn, &[]);
    let second = pg.walfile_name(&nextlsn);
    assert_ne!(first, second);
    // The second run resumed at the partial's segment start and completed it: the previous partial's base
    // name is now the only completed segment (the first run started at that segment, nothing earlier).
    assert_eq!(
        archive::completed_segments(dir.path()),
        vec![first.clone()],
        "the previous partial {first} was not completed: {:?}",
        archive::list(dir.path())
    );
    assert_eq!(
        archive::partial_segments(dir.path()),
        vec![format!("{second}.partial")],
        "after the second --endpos run: {:?}",
        archive::list(dir.path())
    );
    assert_partial_stops_at(&pg, dir.path(), &second, parse_lsn(&nextlsn));
    assert_eq!(
        archive::assert_completed_identical(dir.path(), &pg.pg_wal_dir()),
        1
    );

    // 17.
    archive::assert_mode(dir.path(), 0o700);
    for name in archive::list(dir.path()) {
        let path = dir.path().join(&name);
        assert!(
            path.is_file(),
            "{name} in the archive is not a regular file"
        );
        archive::assert_mode(&path, 0o600);
    }
}

// ---- 18, 19: start from a slot -------------------------------------------------------------------------

/// Scenario 18: a slot that does not exist fails with the server's words and exit code 12 (README).
/// Scenario 19: with an existing slot and an empty directory the stream starts at the slot's restart_lsn, so
/// the segment holding it is archived (not the one of the server's current position).
#[test]
fn missing_slot_fails_and_existing_slot_sets_the_start() {
    let pg = PgCluster::builder()
        .setting("wal_keep_size", "64MB")
        .start();
    let dir = archive_dir();
    let d = path_str(dir.path());
    let conninfo = pg.conninfo();

    pg.execute("CHECKPOINT");
    pg.execute("SELECT pg_create_physical_replication_slot('archive_slot', true)");
    let restart_lsn = slot_row(&pg, "archive_slot")
        .and_then(|(_, lsn)| lsn)
        .expect("archive_slot has a restart_lsn");
    let walfile = pg.walfile_name(&restart_lsn);
    pg.execute("CREATE TABLE test_table (x integer); INSERT INTO test_table VALUES (1)");
    pg.execute("SELECT pg_switch_wal()");
    let nextlsn = insert_lsn(&pg);
    pg.execute("INSERT INTO test_table VALUES (2)");
    assert_ne!(walfile, pg.walfile_name(&nextlsn));

    // 18.
    let out = walsink(&[
        "receive",
        "-D",
        d,
        "-d",
        &conninfo,
        "--slot",
        "nonexistentslot",
        "--no-loop",
        "--no-sync",
        "--verbose",
        "--endpos",
        &nextlsn,
    ]);
    assert_exit(&out, 12, "streaming from a nonexistent slot");
    assert!(
        stderr(&out).contains("replication slot \"nonexistentslot\" does not exist"),
        "{}",
        stderr(&out)
    );
    assert!(archive::completed_segments(dir.path()).is_empty());
    assert!(archive::partial_segments(dir.path()).is_empty());

    // 19.
    stream_to_endpos(
        &pg,
        dir.path(),
        &nextlsn,
        &["--slot", "archive_slot", "--no-sync"],
    );
    let completed = archive::completed_segments(dir.path());
    let last = pg.walfile_name(&nextlsn);
    if pg.has_read_replication_slot() {
        assert_eq!(
            completed.first(),
            Some(&walfile),
            "the stream did not start at the slot's restart_lsn {restart_lsn}: {:?}",
            archive::list(dir.path())
        );
    } else {
        // Before 15 there is no READ_REPLICATION_SLOT: like pg_receivewal, the stream starts at the server's
        // current position (020_pg_receivewal.pl runs this case on 15 and later only).
        assert!(
            completed.is_empty(),
            "the stream should start in {last}, the server's current segment: {:?}",
            archive::list(dir.path())
        );
    }
    archive::assert_completed_identical(dir.path(), &pg.pg_wal_dir());
    assert_eq!(
        archive::partial_segments(dir.path()),
        vec![format!("{last}.partial")]
    );
    assert_partial_stops_at(&pg, dir.path(), &last, parse_lsn(&nextlsn));
}

// ---- 20: a standby that is promoted --------------------------------------------------------------------

/// Scenario 20: streaming through a slot on a standby that gets promoted, the archive holds the segment of
/// the slot's restart_lsn on timeline 1, the first segment written on timeline 2, and `00000002.history`;
/// the last timeline-1 segment stays `.partial`.
#[test]
fn stream_from_a_promoted_standby_follows_the_new_timeline() {
    let primary = PgCluster::builder()
        .setting("wal_keep_size", "64MB")
        .start();
    if !primary.has_read_replication_slot() {
        // The scenario starts an empty archive at the slot's restart_lsn, which needs READ_REPLICATION_SLOT;
        // 020_pg_receivewal.pl runs it on 15 and later only.
        eprintln!(
            "skipped: PostgreSQL {} has no READ_REPLICATION_SLOT",
            primary.major_version()
        );
        return;
    }
    primary.execute("CREATE TABLE test_table (x integer)");
    let standby = primary.make_standby();
    let dir = archive_dir();

    // As TAP: CREATE_REPLICATION_SLOT ... RESERVE_WAL on the standby (here through walsink --create-slot).
    let out = walsink(&[
        "receive",
        "--slot",
        "archive_slot",
        "--create-slot",
        "-d",
        &standby.conninfo(),
    ]);
    assert_exit(&out, 0, "--create-slot on the standby");
    // Move the primary on by a segment so the slot's segment is complete on timeline 1, then catch up.
    primary.execute("INSERT INTO test_table VALUES (1)");
    primary.execute("SELECT pg_switch_wal()");
    primary.execute("INSERT INTO test_table VALUES (2)");
    let target = parse_lsn(&primary.current_lsn());
    assert!(
        wait_for(
            || {
                standby
                    .sql_one("SELECT pg_last_wal_replay_lsn()::text")
                    .is_some_and(|l| parse_lsn(&l) >= target)
            },
            WAIT
        ),
        "standby did not replay up to {}",
        format_lsn(target)
    );
    let restart_lsn = slot_row(&standby, "archive_slot")
        .and_then(|(_, lsn)| lsn)
        .expect("the standby's slot reserves WAL");
    let walfile_before = primary.walfile_name(&restart_lsn);

    standby.promote();
    assert_eq!(standby.timeline(), 2);
    let walfile_after = standby.walfile_name(&insert_lsn(&standby));
    standby.execute("INSERT INTO test_table VALUES (3)");
    standby.execute("SELECT pg_switch_wal()");
    let nextlsn = insert_lsn(&standby);
    standby.execute("INSERT INTO test_table VALUES (4)");

    stream_to_endpos(
        &standby,
        dir.path(),
        &nextlsn,
        &["--slot", "archive_slot", "--no-sync"],
    );
    let names = archive::list(dir.path());
    assert!(walfile_before.starts_with("00000001"));
    assert!(walfile_after.starts_with("00000002"));
    for expected in [
        &walfile_before,
        &walfile_after,
        &"00000002.history".to_owned(),
    ] {
        assert!(names.contains(expected), "{expected} missing: {names:?}");
    }
    assert_eq!(
        archive::completed_segments(dir.path()).first(),
        Some(&walfile_before)
    );
    archive::assert_completed_identical(dir.path(), &standby.pg_wal_dir());
    assert_eq!(
        archive::assert_history_identical(dir.path(), &standby.pg_wal_dir()),
        1
    );

    // The timeline-1 segment holding the switch point stays .partial (as with pg_receivewal); the only other
    // .partial is the one stopped at the end position on timeline 2.
    let switchpoint = switch_point(&standby, 1);
    let seg = standby.wal_segsize_bytes();
    let last = standby.walfile_name(&nextlsn);
    let mut expected = vec![format!("{last}.partial")];
    if !switchpoint.is_multiple_of(seg) {
        expected.push(format!(
            "{}.partial",
            segment_name(1, switchpoint / seg, seg)
        ));
    }
    expected.sort();
    assert_eq!(archive::partial_segments(dir.path()), expected);
    assert_partial_stops_at(&standby, dir.path(), &last, parse_lsn(&nextlsn));
}

// ---- walsink called as pg_receivewal ---------------------------------------------------------------------

/// The second word of a version line once parenthesised text is removed, as Barman reads pg_receivewal's
/// `--version` (barman/command_wrappers.py, `get_version_info`), and its major.
fn barman_client_major(line: &str) -> Option<u32> {
    let mut text = String::new();
    let mut depth = 0;
    for c in line.trim().chars() {
        match c {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => text.push(c),
            _ => {}
        }
    }
    let version = text.split_whitespace().nth(1)?;
    let (major, minor) = version.split_once('.')?;
    if minor.is_empty() || !minor.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    major.parse().ok()
}

/// Called as `pg_receivewal`, walsink is `walsink receive` with pg_receivewal's messages: the TAP scenarios'
/// message checks (1-9, 18) pass through the link, the version line is one Barman accepts for every major
/// walsink supports, `--verbose` logs information but no debug lines (those need `-v -v`), and a streaming
/// run (scenario 13) archives the same as `walsink receive`.
#[test]
fn called_as_pg_receivewal_it_passes_the_tap_message_checks() {
    let link = PgReceivewalLink::new();
    let run = |args: &[&str]| link.run(args, RUN_TIMEOUT);
    let what = |args: &[&str]| format!("pg_receivewal {}", args.join(" "));

    // 1. --help.
    let out = run(&["--help"]);
    assert_exit(&out, 0, "pg_receivewal --help");
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Usage: pg_receivewal"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("--directory"), "{}", stdout(&out));
    assert!(
        stdout(&out).lines().all(|l| l.chars().count() <= 95),
        "help lines longer than 95 characters:\n{}",
        stdout(&out)
    );

    // 2. --version (and -V): one line, pg_receivewal's shape, walsink's version in parentheses.
    for flag in ["--version", "-V"] {
        let out = run(&[flag]);
        assert_exit(&out, 0, &what(&[flag]));
        assert!(stderr(&out).is_empty(), "{}", stderr(&out));
        let line = stdout(&out);
        assert_eq!(
            line,
            format!(
                "pg_receivewal (PostgreSQL) 18.0 (walsink {})\n",
                env!("CARGO_PKG_VERSION")
            )
        );
        // Barman accepts a client for servers with 9.2 < major <= the client's major: every major walsink
        // supports (README: 13 to 18).
        assert_eq!(barman_client_major(&line), Some(18), "{line:?}");
    }
    // walsink receive --version says the same; walsink --version keeps walsink's own.
    let out = walsink(&["receive", "--version"]);
    assert_exit(&out, 0, "walsink receive --version");
    assert_eq!(barman_client_major(&stdout(&out)), Some(18));
    let out = walsink(&["--version"]);
    assert_eq!(
        stdout(&out),
        format!("walsink {}\n", env!("CARGO_PKG_VERSION"))
    );

    // 3-9: usage errors, each a `pg_receivewal: error:` line and a hint, nothing written.
    let dir = archive_dir();
    let d = path_str(dir.path());
    for (args, message) in [
        (&["--not-a-valid-option"][..], "--not-a-valid-option"),
        (&[][..], "no target directory specified"),
        (
            &["-D", d, "--endpos", "123456789/0"][..],
            "could not parse end position",
        ),
        (
            &["-D", d, "--endpos", "1/2/3"][..],
            "could not parse end position",
        ),
        (
            &["-D", d, "--create-slot", "--drop-slot"][..],
            "cannot use --create-slot together with --drop-slot",
        ),
        (
            &["-D", d, "--create-slot"][..],
            "--create-slot needs a slot to be specified using --slot",
        ),
        (
            &["-D", d, "--synchronous", "--no-sync"][..],
            "cannot use --synchronous together with --no-sync",
        ),
    ] {
        let out = run(args);
        assert_exit(&out, 2, &what(args));
        let err = stderr(&out);
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("pg_receivewal: error: ") && first.contains(message),
            "{}: expected \"pg_receivewal: error: ...{message}...\":\n{err}",
            what(args)
        );
        assert_eq!(
            err.lines().nth(1),
            Some("pg_receivewal: hint: Try \"pg_receivewal --help\" for more information."),
            "{err}"
        );
    }
    assert!(archive::list(dir.path()).is_empty());

    // 18: a missing slot, in pg_receivewal's words (020_pg_receivewal.pl's regular expression), exit 12.
    let pg = PgCluster::builder()
        .setting("wal_keep_size", "64MB")
        .start();
    let conninfo = pg.conninfo();
    pg.execute("CREATE TABLE test_table (x integer PRIMARY KEY)");
    pg.execute("SELECT pg_switch_wal()");
    let nextlsn = insert_lsn(&pg);
    pg.execute("INSERT INTO test_table VALUES (1)");
    let args = [
        "-D",
        d,
        "-d",
        &conninfo,
        "--slot",
        "nonexistentslot",
        "-n",
        "--no-sync",
        "--verbose",
        "--endpos",
        &nextlsn,
    ];
    let out = run(&args);
    assert_exit(&out, 12, &what(&args));
    let err = stderr(&out);
    let wanted = "replication slot \"nonexistentslot\" does not exist";
    assert!(
        err.lines()
            .any(|l| l.starts_with("pg_receivewal: error: ") && l.contains(wanted)),
        "no \"pg_receivewal: error: ...{wanted}\" line:\n{err}"
    );
    if pg.has_read_replication_slot() {
        assert!(
            err.contains(&format!("pg_receivewal: error: {wanted}")),
            "{err}"
        );
    }
    // walsink's advice follows as pg_receivewal's hint line.
    assert!(
        err.lines()
            .any(|l| l.starts_with("pg_receivewal: hint: create it with --create-slot")),
        "no hint line:\n{err}"
    );
    assert!(
        err.lines().all(|l| l.starts_with("pg_receivewal: ")),
        "a line not in pg_receivewal's form:\n{err}"
    );

    // 13 through the link, --verbose: pg_receivewal's information lines, no debug lines.
    let args = [
        "-D",
        d,
        "-d",
        &conninfo,
        "--endpos",
        &nextlsn,
        "--synchronous",
        "--no-loop",
        "--verbose",
    ];
    let out = run(&args);
    assert_exit(&out, 0, &what(&args));
    let err = stderr(&out);
    assert!(
        err.contains("pg_receivewal: starting log streaming at "),
        "{err}"
    );
    assert!(
        err.lines().all(|l| l.starts_with("pg_receivewal: ")),
        "a line not in pg_receivewal's form:\n{err}"
    );
    // A debug line of the archive (walsink's "opened and locked archive directory") appears with -v -v only.
    let debug_line = "opened and locked archive directory";
    assert!(
        !err.contains(debug_line),
        "debug output with a single -v:\n{err}"
    );
    let first = pg.walfile_name(&nextlsn);
    assert_eq!(
        archive::partial_segments(dir.path()),
        vec![format!("{first}.partial")]
    );
    assert_partial_stops_at(&pg, dir.path(), &first, parse_lsn(&nextlsn));
    let args = [
        "-D",
        d,
        "-d",
        &conninfo,
        "--endpos",
        &nextlsn,
        "--no-loop",
        "-v",
        "-v",
    ];
    let out = run(&args);
    assert_exit(&out, 0, &what(&args));
    assert!(stderr(&out).contains(debug_line), "{}", stderr(&out));
    // Without --verbose a successful run prints nothing, as pg_receivewal.
    let args = ["-D", d, "-d", &conninfo, "--endpos", &nextlsn, "--no-loop"];
    let out = run(&args);
    assert_exit(&out, 0, &what(&args));
    assert_eq!(stderr(&out), "", "a quiet run printed something");
}
