//! A server whose messages are translated (`lc_messages = 'de_DE.UTF-8'`) gets the same exit codes and the
//! same walsink hints as an English one, for every documented error a server reports: walsink classifies
//! by SQLSTATE and by what it was doing, never by the message text.
//!
//! Needs the `de_DE.UTF-8` locale (scripts/install-deps.sh generates it) and the server's German message
//! catalog (Debian's postgresql-NN package ships it). Without either the test fails; it never skips.

use std::path::Path;
use std::process::Command;

use crate::errors::{receive, replication_psql_works, rewrite_hba, run};
use crate::harness::{
    HostAuth, PgCluster, WAIT as TIMEOUT, WalsinkProcess, archive_dir, format_lsn, parse_lsn,
    remove_needed_segment, wait_for,
};

const PASSWORD: &str = "sekret pw";
const LOCALE: &str = "de_DE.UTF-8";

/// What one error scenario showed: the exit code and walsink's `HINT (walsink):` lines.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    code: Option<i32>,
    hints: Vec<String>,
}

fn hints(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.find("HINT (walsink):").map(|at| l[at..].to_owned()))
        .collect()
}

/// Runs every scenario against a fresh cluster with `lc_messages = lc`; returns each scenario's name and
/// outcome. `english` says whether the server's English messages are expected in walsink's output, or must
/// be absent (they are then German, and walsink cannot have matched them).
fn scenarios(lc: &str, english: bool) -> Vec<(&'static str, Outcome)> {
    let pg = PgCluster::builder()
        .host_auth(HostAuth::ScramSha256(PASSWORD.to_owned()))
        .setting("lc_messages", lc)
        .setting("wal_keep_size", "0")
        .setting("min_wal_size", "2MB")
        .setting("max_wal_size", "4MB")
        .start();
    // Proof that the server translates (or not): a division by zero in its words.
    let division = pg
        .try_sql("SELECT 1/0")
        .expect_err("1/0 must fail")
        .as_db_error()
        .expect("a server error")
        .message()
        .to_owned();
    assert_eq!(
        division == "division by zero",
        english,
        "lc_messages = {lc}: the server says {division:?}; is its message catalog installed (Debian: \
         /usr/share/locale/de/LC_MESSAGES/postgres-{}.mo)?",
        pg.major_version()
    );
    let mut out = Vec::new();
    let mut record = |name: &'static str,
                      cmd: Command,
                      code: i32,
                      needles: &[&str],
                      english_server_text: Option<&str>| {
        let r = run(cmd);
        r.expect(&format!("{name} (lc_messages = {lc})"), code, needles);
        if let Some(text) = english_server_text {
            assert_eq!(
                r.stderr.contains(text),
                english,
                "{name} (lc_messages = {lc}): the server's English text {text:?}:\n{}",
                r.stderr
            );
        }
        out.push((
            name,
            Outcome {
                code: r.code,
                hints: hints(&r.stderr),
            },
        ));
    };
    let with_password = |mut cmd: Command| {
        cmd.env("PGPASSWORD", PASSWORD);
        cmd
    };
    let cmd_in = |dir: &Path, args: &[&str]| {
        let mut cmd = receive(["-w", "-d", &pg.conninfo()]);
        cmd.args(args).arg("-D").arg(dir);
        cmd
    };

    // Exit 10: a wrong password (28P01).
    let dir = archive_dir();
    let mut cmd = cmd_in(dir.path(), &["-n"]);
    cmd.env("PGPASSWORD", "wrong");
    record(
        "wrong password",
        cmd,
        10,
        &["HINT (walsink):  check the user name and password"],
        Some("password authentication failed"),
    );

    // Exit 11: a role without the REPLICATION attribute (42501 after authentication).
    pg.execute(&format!("CREATE ROLE plain LOGIN PASSWORD '{PASSWORD}'"));
    let mut cmd = receive(["-n", "-w", "-d"]);
    cmd.arg(format!("host=127.0.0.1 port={} user=plain", pg.port()))
        .arg("-D")
        .arg(dir.path());
    record(
        "no REPLICATION attribute",
        with_password(cmd),
        11,
        &["REPLICATION attribute: ALTER ROLE <user> REPLICATION"],
        Some(if pg.major_version() >= 16 {
            "permission denied to start WAL sender"
        } else {
            "must be superuser or replication role"
        }),
    );

    // Exit 12: a missing slot, for an archive to continue (walsink finds it with READ_REPLICATION_SLOT from
    // PostgreSQL 15 on, the server at START_REPLICATION before: 42704), and for --drop-slot (42704 at
    // DROP_REPLICATION_SLOT).
    let end = parse_lsn(&pg.generate_wal(16 << 10));
    let cmd = cmd_in(dir.path(), &["-n", "--no-sync", "-E", &format_lsn(end)]);
    run(with_password(cmd)).expect("seeding the archive", 0, &[]);
    pg.generate_wal(16 << 10);
    record(
        "missing slot, archive to continue",
        with_password(cmd_in(dir.path(), &["-S", "no_such_slot"])),
        12,
        &["HINT (walsink):  create it with --create-slot"],
        (pg.major_version() < 15).then_some("replication slot \"no_such_slot\" does not exist"),
    );
    let mut cmd = receive([
        "-w",
        "-S",
        "no_such_slot",
        "--drop-slot",
        "-d",
        &pg.conninfo(),
    ]);
    cmd.env("PGPASSWORD", PASSWORD);
    record(
        "missing slot at --drop-slot",
        cmd,
        12,
        &["HINT (walsink):  create it with --create-slot"],
        Some("replication slot \"no_such_slot\" does not exist"),
    );

    // Exit 13: a slot another receiver streams from (55006), after the grace period.
    let slot = "busy_slot";
    let mut cmd = receive(["-w", "-S", slot, "--create-slot", "-d", &pg.conninfo()]);
    cmd.env("PGPASSWORD", PASSWORD);
    run(cmd).expect("--create-slot", 0, &[]);
    let first_dir = archive_dir();
    let mut first = WalsinkProcess::spawn_command(with_password(cmd_in(
        first_dir.path(),
        &["--no-sync", "-S", slot],
    )));
    assert!(
        wait_for(
            || pg
                .sql_one(&format!(
                    "SELECT active::text FROM pg_replication_slots WHERE slot_name = '{slot}'"
                ))
                .as_deref()
                == Some("true"),
            TIMEOUT
        ),
        "the first walsink did not take the slot:\n{}",
        first.stderr_text()
    );
    let busy_dir = archive_dir();
    record(
        "slot in use",
        with_password(cmd_in(
            busy_dir.path(),
            &["-n", "--no-sync", "--slot-in-use-grace", "2s", "-S", slot],
        )),
        13,
        &["HINT (walsink):  another receiver is streaming from this slot"],
        Some("is active for PID"),
    );
    assert_eq!(first.interrupt_and_wait(TIMEOUT).code(), Some(0));
    // The slot would keep the WAL the next scenario needs removed.
    pg.execute(&format!("SELECT pg_drop_replication_slot('{slot}')"));

    // Exit 14: the segment the archive needs next is gone (58P01), with the missing range.
    let needed = remove_needed_segment(&pg, dir.path());
    record(
        "WAL removed",
        with_password(cmd_in(dir.path(), &[])),
        14,
        &[
            "the server no longer has WAL from ",
            &format!("(segment {needed}) to "),
            "the oldest WAL it still has starts at",
            "HINT (walsink):  start a new archive directory, or run again with --allow-gap",
        ],
        Some("has already been removed"),
    );

    // Exit 11: no pg_hba.conf line for replication (28000 before any credentials were asked for).
    rewrite_hba(&pg, |l| !l.starts_with("host    replication"));
    assert!(
        wait_for(|| !replication_psql_works(&pg), TIMEOUT),
        "the server still accepts replication connections after the pg_hba.conf reload"
    );
    record(
        "no pg_hba.conf entry",
        with_password(cmd_in(dir.path(), &[])),
        11,
        &[
            "HINT (walsink):  add a \"host replication <user> <address> scram-sha-256\" line to pg_hba.conf and reload",
        ],
        Some("no pg_hba.conf entry"),
    );
    out
}

/// Proves that a German server gives every documented server-reported error (wrong password, no REPLICATION
/// attribute, missing slot at START_REPLICATION and at --drop-slot, slot in use, removed WAL with the
/// missing range, no pg_hba.conf entry) the same exit code and the same walsink hints as an English server,
/// while none of the server's English texts appear (so walsink cannot have matched them).
#[test]
fn a_translated_server_gets_the_same_exit_codes_and_hints() {
    let locales = Command::new("locale")
        .arg("-a")
        .output()
        .expect("run locale -a");
    let locales = String::from_utf8_lossy(&locales.stdout).to_lowercase();
    assert!(
        locales
            .lines()
            .any(|l| l == "de_de.utf8" || l == "de_de.utf-8"),
        "the {LOCALE} locale is missing (locale -a: {locales:?}); scripts/install-deps.sh generates it"
    );
    let english = scenarios("C", true);
    let german = scenarios(LOCALE, false);
    assert_eq!(german, english);
}
