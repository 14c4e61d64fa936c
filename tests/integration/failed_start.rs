//! A start that fails leaves the archive directory as it was: walsink changes nothing in it before the server,
//! the timeline and the slot have been checked.
//!
//! The one exception is `.walsink.lock`: taking the lock may create it and writes walsink's pid into it (it is
//! lock state, not archive data; README "Archive layout"). Everything else (every name, type, mode and byte)
//! is compared.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::errors::{receive, run};
use crate::harness::pg::free_port;
use crate::harness::{
    HostAuth, PgCluster, WAIT, WalsinkProcess, archive, archive_dir, format_lsn, parse_lsn,
    remove_needed_segment, wait_for,
};

const PASSWORD: &str = "pw";
const LOCK_FILE: &str = ".walsink.lock";

/// One entry of a directory tree: its type and mode, and a file's bytes or a link's target.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    File {
        mode: u32,
        bytes: Vec<u8>,
    },
    Dir {
        mode: u32,
    },
    Link {
        target: String,
    },
    /// `.walsink.lock`, compared by presence only.
    Lock,
}

/// Every entry below `dir`, by relative path, with its type, mode and content; `.walsink.lock` only by its
/// presence.
fn snapshot(dir: &Path) -> BTreeMap<String, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let md = fs::symlink_metadata(&path).unwrap();
            let mode = md.permissions().mode() & 0o7777;
            let entry = if md.file_type().is_symlink() {
                Entry::Link {
                    target: fs::read_link(&path).unwrap().to_string_lossy().into_owned(),
                }
            } else if md.is_dir() {
                walk(root, &path, out);
                Entry::Dir { mode }
            } else if rel == LOCK_FILE {
                Entry::Lock
            } else {
                Entry::File {
                    mode,
                    bytes: fs::read(&path).unwrap(),
                }
            };
            out.insert(rel, entry);
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Asserts that running `cmd` exits with `code` and leaves `dir` as it was (but for a `.walsink.lock` it may
/// create).
fn assert_untouched(what: &str, dir: &Path, cmd: Command, code: i32) {
    let mut before = snapshot(dir);
    run(cmd).expect(what, code, &[]);
    let after = snapshot(dir);
    if !before.contains_key(LOCK_FILE) && after.contains_key(LOCK_FILE) {
        before.insert(LOCK_FILE.to_owned(), Entry::Lock);
    }
    if before != after {
        let changed: Vec<_> = before
            .keys()
            .chain(after.keys())
            .filter(|k| before.get(*k) != after.get(*k))
            .collect();
        panic!("{what}: the archive directory changed: {changed:?}");
    }
}

/// Proves that starts failing because the slot is missing (exit 12), the archive belongs to another
/// database system (15), the password is wrong (10) or the server is unreachable (3) change nothing in the
/// archive directory: not a fresh one (only `.walsink.lock` may appear), not one walsink archived into
/// before, and not one written by another tool that walsink has not pinned yet (no `.walsink.meta`: the
/// failed start must not pin it).
#[test]
fn a_failed_start_leaves_the_archive_directory_as_it_was() {
    let pg = PgCluster::builder()
        .host_auth(HostAuth::ScramSha256(PASSWORD.to_owned()))
        .start();
    let other = PgCluster::start_default();
    assert_ne!(pg.system_identifier(), other.system_identifier());

    // A directory walsink archived into (segments, a .partial, .walsink.meta), one without .walsink.meta (as
    // pg_receivewal leaves it), and a fresh one.
    let used = archive_dir();
    // Twice: the first run starts at the server's position, the second from the archive's end, past which
    // the server has written a few segments by then.
    for _ in 0..2 {
        let end = parse_lsn(&pg.generate_wal(3 << 20));
        let mut seed = receive([
            "-n",
            "-w",
            "--no-sync",
            "-E",
            &format_lsn(end),
            "-d",
            &pg.conninfo(),
        ]);
        seed.env("PGPASSWORD", PASSWORD).arg("-D").arg(used.path());
        run(seed).expect("seeding the archive", 0, &[]);
    }
    assert!(!archive::completed_segments(used.path()).is_empty());
    assert!(used.path().join(".walsink.meta").exists());
    let foreign = archive_dir();
    for name in archive::list(used.path()) {
        if name != ".walsink.meta" && name != LOCK_FILE {
            fs::copy(used.path().join(&name), foreign.path().join(&name)).unwrap();
        }
    }
    let fresh = archive_dir();

    for (kind, dir) in [("used", &used), ("foreign", &foreign), ("fresh", &fresh)] {
        let cmd = |conninfo: &str, password: &str, args: &[&str]| {
            let mut cmd = receive(["-w", "-d", conninfo]);
            cmd.args(args)
                .arg("-D")
                .arg(dir.path())
                .env("PGPASSWORD", password);
            cmd
        };
        assert_untouched(
            &format!("{kind}: missing slot"),
            dir.path(),
            cmd(&pg.conninfo(), PASSWORD, &["-S", "no_such_slot"]),
            12,
        );
        assert_untouched(
            &format!("{kind}: wrong password"),
            dir.path(),
            cmd(&pg.conninfo(), "wrong", &[]),
            10,
        );
        assert_untouched(
            &format!("{kind}: unreachable server"),
            dir.path(),
            cmd(
                &format!("host=127.0.0.1 port={} user=postgres", free_port()),
                PASSWORD,
                &["-n"],
            ),
            3,
        );
        if kind != "fresh" {
            assert_untouched(
                &format!("{kind}: another database system"),
                dir.path(),
                cmd(&other.conninfo(), "", &[]),
                15,
            );
        }
    }
    // The fresh directory stays empty but for the lock file.
    let left: Vec<_> = archive::list(fresh.path());
    assert!(
        left.iter().all(|n| n == LOCK_FILE),
        "a failed start wrote into a fresh directory: {left:?}"
    );
}

/// Proves that the failures only START_REPLICATION itself reveals change nothing either: a slot another
/// receiver streams from (exit 13), and WAL the server has already removed (exit 14), for a fresh directory
/// and for one another tool wrote (no `.walsink.meta`). Before, walsink pinned `.walsink.meta` (and wrote the
/// timeline's history file) just before START_REPLICATION; now both wait until the server has accepted it.
#[test]
fn a_start_refused_by_start_replication_leaves_the_archive_directory_as_it_was() {
    let pg = PgCluster::start_default();
    let cmd = |dir: &Path, args: &[&str]| {
        let mut cmd = receive(["-w", "--no-sync", "-d", &pg.conninfo()]);
        cmd.args(args).arg("-D").arg(dir);
        cmd
    };

    // A directory as pg_receivewal leaves it: segments and a .partial, no .walsink.meta.
    let seeded = archive_dir();
    let end = parse_lsn(&pg.generate_wal(3 << 20));
    run(cmd(seeded.path(), &["-n", "-E", &format_lsn(end)])).expect("seeding", 0, &[]);
    let foreign = archive_dir();
    for name in archive::list(seeded.path()) {
        if name != ".walsink.meta" && name != LOCK_FILE {
            fs::copy(seeded.path().join(&name), foreign.path().join(&name)).unwrap();
        }
    }
    let fresh = archive_dir();

    // Exit 13: the slot is in use by another walsink.
    let slot = "busy_slot";
    run(cmd(fresh.path(), &["-S", slot, "--create-slot"])).expect("--create-slot", 0, &[]);
    let holder_dir = archive_dir();
    let mut holder = WalsinkProcess::spawn_command(cmd(holder_dir.path(), &["-S", slot]));
    assert!(
        wait_for(
            || pg
                .sql_one(&format!(
                    "SELECT active::text FROM pg_replication_slots WHERE slot_name = '{slot}'"
                ))
                .as_deref()
                == Some("true"),
            WAIT
        ),
        "the first walsink did not take the slot:\n{}",
        holder.stderr_text()
    );
    for (kind, dir) in [("fresh", &fresh), ("foreign", &foreign)] {
        assert_untouched(
            &format!("{kind}: slot in use"),
            dir.path(),
            cmd(dir.path(), &["-n", "--slot-in-use-grace", "1s", "-S", slot]),
            13,
        );
    }
    assert_eq!(holder.interrupt_and_wait(WAIT).code(), Some(0));
    pg.execute(&format!("SELECT pg_drop_replication_slot('{slot}')"));

    // Exit 14: the segment the foreign directory needs next is gone from the server.
    remove_needed_segment(&pg, foreign.path());
    assert_untouched(
        "foreign: WAL removed",
        foreign.path(),
        cmd(foreign.path(), &["-n"]),
        14,
    );
    let left: Vec<_> = archive::list(fresh.path());
    assert!(
        left.iter().all(|n| n == LOCK_FILE),
        "a failed start wrote into a fresh directory: {left:?}"
    );
}
