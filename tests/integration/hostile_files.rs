//! Hostile and careless neighbours of the archive directory (issue 9): links planted by an unprivileged user,
//! a FIFO or an endless `.walsink.meta`, a lock file deleted under a running walsink. Real PostgreSQL; walsink
//! runs as the test's user (root in CI) and the "attacker" is the harness's unprivileged [`SERVER_USER`].

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::harness::pg::SERVER_USER;
use crate::harness::walsink::RunOutcome;
use crate::harness::{
    PgCluster, Walsink, WalsinkProcess, archive, clean_command, format_lsn, parse_lsn, tail,
    temp_base, wait_for,
};

/// walsink's exit code for archive errors (README).
const EXIT_ARCHIVE: i32 = 17;
/// ... for a directory another walsink holds.
const EXIT_LOCKED: i32 = 16;
/// ... for a lock file removed or replaced while walsink ran.
const EXIT_LOCK_LOST: i32 = 18;
const SLOT: &str = "hostile";
/// A refusal that needs no server answer must come at once.
const PROMPT: Duration = Duration::from_secs(20);

fn archive_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("wsk-arch")
        .tempdir_in(temp_base())
        .expect("create archive dir")
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs `cmd args` as the unprivileged [`SERVER_USER`] (as ourselves when not root).
fn run_as_other_user(args: &[&str]) {
    let mut cmd = if is_root() {
        let mut c = clean_command("runuser");
        c.args(["-u", SERVER_USER, "--"]);
        c
    } else {
        clean_command(args[0])
    };
    cmd.args(if is_root() { args } else { &args[1..] });
    let out = cmd.output().expect("run a command as the other user");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Hands `dir` to the unprivileged user, as when a root-run walsink archives into a service user's directory.
fn give_to_other_user(dir: &Path) {
    if is_root() {
        let out = clean_command("chown")
            .arg(SERVER_USER)
            .arg(dir)
            .output()
            .expect("chown");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A file only the test's user may read or write, outside every archive directory.
fn precious_file(outside: &TempDir) -> PathBuf {
    let p = outside.path().join("root-only");
    fs::write(&p, "precious\n").unwrap();
    p
}

fn receive(pg: &PgCluster, dir: &Path, extra: &[&str]) -> std::process::Command {
    let mut cmd = Walsink::cmd(["receive", "-d", &pg.conninfo(), "-D"]);
    cmd.arg(dir).args(extra);
    cmd
}

fn create_slot(pg: &PgCluster) -> u64 {
    pg.execute(&format!(
        "SELECT pg_create_physical_replication_slot('{SLOT}', true)"
    ));
    parse_lsn(
        &pg.sql_one(&format!(
            "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = '{SLOT}'"
        ))
        .expect("restart_lsn"),
    )
}

fn segment_name(pg: &PgCluster, lsn: u64) -> String {
    let seg = pg.wal_segsize_bytes();
    let segno = lsn / seg;
    let per_id = 0x1_0000_0000 / seg;
    format!("{:08X}{:08X}{:08X}", 1, segno / per_id, segno % per_id)
}

/// The flush position walsink last reported for the slot (its restart_lsn moves only with it).
fn slot_flush(pg: &PgCluster) -> u64 {
    parse_lsn(
        &pg.sql_one(&format!(
            "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = '{SLOT}'"
        ))
        .expect("restart_lsn"),
    )
}

#[test]
fn a_lock_file_link_planted_by_another_user_is_refused_and_its_target_untouched() {
    let pg = PgCluster::start_default();
    let dir = archive_dir();
    let outside = archive_dir();
    let target = precious_file(&outside);
    give_to_other_user(dir.path());
    let link = dir.path().join(".walsink.lock");
    run_as_other_user(&["ln", "-s", target.to_str().unwrap(), link.to_str().unwrap()]);
    // A dangling one would have been created as the target.
    let missing = outside.path().join("created-by-walsink");

    let out = RunOutcome::of(receive(&pg, dir.path(), &["-n"]), PROMPT);
    out.expect(
        "lock file link",
        EXIT_ARCHIVE,
        &[&format!(
            "\"{}\" is a symbolic link, not a regular file",
            link.display()
        )],
    );
    if is_root() {
        out.expect(
            "directory of another user",
            EXIT_ARCHIVE,
            &[&format!(
                "archive directory \"{}\" is owned by uid",
                dir.path().display()
            )],
        );
    }
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );

    fs::remove_file(&link).unwrap();
    run_as_other_user(&[
        "ln",
        "-s",
        missing.to_str().unwrap(),
        link.to_str().unwrap(),
    ]);
    // A directory its group may write to is warned about too.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o770)).unwrap();
    RunOutcome::of(receive(&pg, dir.path(), &["-n"]), PROMPT).expect(
        "dangling lock file link",
        EXIT_ARCHIVE,
        &[
            "is a symbolic link, not a regular file",
            &format!(
                "archive directory \"{}\" is writable by its group (mode 0770)",
                dir.path().display()
            ),
        ],
    );
    assert!(!missing.exists(), "walsink created the link's target");
}

#[test]
fn a_partial_link_planted_by_another_user_is_refused_and_its_target_untouched() {
    let pg = PgCluster::start_default();
    let dir = archive_dir();
    let outside = archive_dir();
    let target = precious_file(&outside);
    let before = fs::metadata(&target).unwrap();
    give_to_other_user(dir.path());
    let start = create_slot(&pg);
    // The .partial streaming will start in.
    let link = dir
        .path()
        .join(format!("{}.partial", segment_name(&pg, start)));
    run_as_other_user(&["ln", "-s", target.to_str().unwrap(), link.to_str().unwrap()]);
    pg.generate_wal(64 << 10);

    let out = RunOutcome::of(receive(&pg, dir.path(), &["-n", "-S", SLOT]), PROMPT * 3);
    out.expect(
        "partial link",
        EXIT_ARCHIVE,
        &[&format!(
            "\"{}\" is a symbolic link, not a regular file",
            link.display()
        )],
    );
    let after = fs::metadata(&target).unwrap();
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
    assert_eq!((after.len(), after.mtime()), (before.len(), before.mtime()));
    // Nothing reported flushed: the slot did not move.
    assert_eq!(slot_flush(&pg), start);
}

#[test]
fn a_fifo_metadata_file_fails_at_once_instead_of_hanging() {
    let pg = PgCluster::start_default();
    let dir = archive_dir();
    let meta = dir.path().join(".walsink.meta");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &meta,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let started = Instant::now();
    let mut w = WalsinkProcess::spawn_command(receive(&pg, dir.path(), &[]));
    // Without -n: the error needs a human, so it is not retried either.
    let status = w.wait_timeout(PROMPT);
    let stderr = w.stderr_text();
    assert_eq!(status.code(), Some(EXIT_ARCHIVE), "{}", tail(&stderr, 40));
    assert!(
        stderr.contains(&format!(
            "\"{}\" is a FIFO, not a regular file",
            meta.display()
        )),
        "{}",
        tail(&stderr, 40)
    );
    assert!(started.elapsed() < PROMPT);
}

#[test]
fn an_endless_or_huge_metadata_file_is_refused_without_reading_it() {
    let pg = PgCluster::start_default();
    let dir = archive_dir();
    let meta = dir.path().join(".walsink.meta");
    symlink("/dev/zero", &meta).unwrap();
    RunOutcome::of(receive(&pg, dir.path(), &["-n"]), PROMPT).expect(
        ".walsink.meta -> /dev/zero",
        EXIT_ARCHIVE,
        &[&format!("\"{}\" is a symbolic link", meta.display())],
    );
    fs::remove_file(&meta).unwrap();
    // 64 GiB (sparse): reading it whole would take minutes and all memory.
    fs::File::create(&meta).unwrap().set_len(64 << 30).unwrap();
    let out = RunOutcome::of(receive(&pg, dir.path(), &["-n"]), PROMPT);
    out.expect(
        "huge .walsink.meta",
        EXIT_ARCHIVE,
        &[&format!(
            "\"{}\" is larger than 1048576 bytes",
            meta.display()
        )],
    );
    assert!(out.elapsed < PROMPT);
}

#[test]
fn a_deleted_lock_keeps_a_second_walsink_out_and_stops_the_first_with_its_wal_intact() {
    deleted_lock_scenario(&[]);
}

/// The same with `--synchronous`, where the network task writes and no writer thread watches the lock.
#[test]
fn a_deleted_lock_stops_a_synchronous_walsink_too() {
    deleted_lock_scenario(&["--synchronous"]);
}

/// walsink streams through a slot; `.walsink.lock` is removed; a second walsink started before the first has
/// let go of the directory is refused (16); the first notices although no WAL arrives, exits 18, and
/// everything it reported flushed is in the archive, byte for byte; a successor then continues the archive
/// without a gap.
fn deleted_lock_scenario(mode: &[&str]) {
    let pg = PgCluster::builder().setting("wal_keep_size", "1GB").start();
    let dir = archive_dir();
    let mut start = create_slot(&pg);
    let mut args = vec!["-S", SLOT, "-s", "1"];
    args.extend_from_slice(mode);
    let mut first = WalsinkProcess::spawn_command(receive(&pg, dir.path(), &args));
    if !pg.has_read_replication_slot() {
        // Before 15 walsink starts at the server's position when it connects, not at the slot's: count the
        // segments from once it streams.
        assert!(
            wait_for(
                || pg
                    .sql_one(&format!(
                        "SELECT active::text FROM pg_replication_slots WHERE slot_name = '{SLOT}'"
                    ))
                    .as_deref()
                    == Some("true"),
                Duration::from_secs(60)
            ),
            "walsink did not start streaming:\n{}",
            tail(&first.stderr_text(), 40)
        );
        start = parse_lsn(&pg.sql_one("SELECT pg_current_wal_lsn()::text").unwrap());
    }
    let target = parse_lsn(&pg.generate_wal(3 * pg.wal_segsize_bytes() / 2));
    assert!(
        wait_for(
            || !first.is_running() || slot_flush(&pg) >= target,
            Duration::from_secs(60)
        ),
        "walsink did not report {} flushed:\n{}",
        format_lsn(target),
        tail(&first.stderr_text(), 40)
    );
    assert!(first.is_running(), "{}", tail(&first.stderr_text(), 40));

    // Another tool removes the lock file. The first walsink notices that at once (an inotify watch): to start
    // a second one while the first certainly still holds the directory, the first is stopped (SIGSTOP) around
    // the removal and the second's attempt. It keeps its directory lock while stopped.
    first.pause();
    fs::remove_file(dir.path().join(".walsink.lock")).unwrap();
    let second = RunOutcome::of(receive(&pg, dir.path(), &["-n", "-S", SLOT]), PROMPT);
    assert!(first.is_running(), "{}", tail(&first.stderr_text(), 40));
    second.expect(
        "second walsink",
        EXIT_LOCKED,
        &["is in use by another walsink (pid unknown)"],
    );
    assert!(
        !dir.path().join(".walsink.lock").exists(),
        "the refused walsink made a lock file"
    );

    // Once it continues, the first notices the removal without any new WAL arriving, and stops with its own code.
    first.resume();
    let resumed_at = Instant::now();
    let status = first.wait_timeout(Duration::from_secs(30));
    let stderr = first.stderr_text();
    assert_eq!(status.code(), Some(EXIT_LOCK_LOST), "{}", tail(&stderr, 40));
    eprintln!(
        "stopped {:?} after continuing with its lock file removed",
        resumed_at.elapsed()
    );
    assert!(
        stderr.contains(&format!(
            "lock file \"{}\" was removed while walsink was running",
            dir.path().join(".walsink.lock").display()
        )),
        "{}",
        tail(&stderr, 40)
    );

    // Everything it reported flushed is in the archive, byte for byte.
    let flushed = slot_flush(&pg);
    assert!(flushed >= target);
    let seg = pg.wal_segsize_bytes();
    let completed = archive::assert_completed_identical(dir.path(), &pg.pg_wal_dir());
    assert!(
        completed as u64 >= (flushed / seg) - (start / seg),
        "{completed} segments"
    );
    if !flushed.is_multiple_of(seg) {
        let name = segment_name(&pg, flushed);
        archive::assert_partial_prefix_identical(
            &dir.path().join(format!("{name}.partial")),
            &pg.pg_wal_dir().join(&name),
            (flushed % seg) as usize,
        );
    }

    // A successor takes over safely and continues the archive without a gap.
    let mut next = WalsinkProcess::spawn_command(receive(&pg, dir.path(), &args));
    let end = parse_lsn(&pg.generate_wal(2 * seg));
    pg.switch_wal();
    assert!(
        wait_for(
            || !next.is_running() || slot_flush(&pg) >= end,
            Duration::from_secs(60)
        ),
        "{}",
        tail(&next.stderr_text(), 40)
    );
    let status = next.interrupt_and_wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", tail(&next.stderr_text(), 40));
    let completed = archive::completed_segments(dir.path());
    let first_no = u64::from_str_radix(&completed[0][16..], 16).unwrap();
    for (i, name) in completed.iter().enumerate() {
        let no = u64::from_str_radix(&name[16..], 16).unwrap();
        assert_eq!(no, first_no + i as u64, "gap in {completed:?}");
    }
    assert!(
        end / seg <= first_no + completed.len() as u64,
        "{completed:?}"
    );
    archive::assert_completed_identical(dir.path(), &pg.pg_wal_dir());
}
