//! Connection options, authentication, and every error path: for each, the exact exit code (README, "Exit
//! codes") and the part of the message a user needs to act on.
//!
//! Successful connections are proved by a short real streaming session (`-E` just past the server's
//! position, `-n`), so "works" means: authenticated, identified the system and archived WAL up to `-E`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::pg::free_port;
use crate::harness::{
    HostAuth, PgCluster, StopMode, Walsink, WalsinkProcess, archive, archive_dir, clean_command,
    format_lsn, parse_lsn, remove_needed_segment, wait_for,
};

use crate::harness::WAIT as TIMEOUT;

/// A finished walsink run (exit code, stderr, elapsed time).
use crate::harness::walsink::RunOutcome as Run;

/// `walsink receive <args>` with a clean environment.
pub(crate) fn receive<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Walsink::cmd(["receive"]);
    cmd.args(args);
    cmd
}

pub(crate) fn run(cmd: Command) -> Run {
    Run::of(cmd, TIMEOUT)
}

/// `receive -D <fresh dir> -n -w --no-sync -E <just past pg's position>` plus whatever `configure` adds
/// (the connection options); asserts that it archived WAL up to `-E` and exited 0.
fn assert_streams(what: &str, pg: &PgCluster, configure: impl FnOnce(&mut Command)) {
    let dir = archive_dir();
    pg.generate_wal(16 << 10);
    let end = parse_lsn(&pg.current_lsn());
    let mut cmd = receive(["-n", "-w", "--no-sync", "-E", &format_lsn(end), "-D"]);
    cmd.arg(dir.path());
    configure(&mut cmd);
    let r = run(cmd);
    r.expect(
        what,
        0,
        &[&format!(
            "stopped log streaming at end position {}",
            format_lsn(end)
        )],
    );
    let partial = archive::partial_segments(dir.path());
    assert_eq!(partial.len(), 1, "{what}: {:?}", archive::list(dir.path()));
    let seg = pg.wal_segsize_bytes();
    archive::assert_partial_prefix_identical(
        &dir.path().join(&partial[0]),
        &pg.pg_wal_dir()
            .join(partial[0].trim_end_matches(".partial")),
        usize::try_from(end % seg).unwrap(),
    );
}

/// A conninfo value in single quotes, with `\` and `'` escaped.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Writes a password file for `pg` with `mode` and returns its path (inside `dir`).
fn pgpass(dir: &Path, pg: &PgCluster, password: &str, mode: u32) -> std::path::PathBuf {
    let path = dir.join("pgpass");
    let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
    fs::write(
        &path,
        format!(
            "# walsink test\nother.host:5432:*:postgres:nope\n127.0.0.1:{}:*:postgres:{escaped}\n",
            pg.port()
        ),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// Rewrites `pg_hba.conf` with `keep` deciding which lines stay, reloads, and waits until `probe` (a psql
/// replication connection over TCP) agrees.
pub(crate) fn rewrite_hba(pg: &PgCluster, keep: impl Fn(&str) -> bool) {
    let path = pg.data_dir().join("pg_hba.conf");
    let text = fs::read_to_string(&path).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| keep(l))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(kept, text, "nothing removed from pg_hba.conf");
    // Writing in place keeps the file's owner (the server user).
    fs::write(&path, kept).unwrap();
    assert_eq!(
        pg.sql_one("SELECT pg_reload_conf()::text").as_deref(),
        Some("true")
    );
}

/// Whether a psql replication connection over TCP gets through (IDENTIFY_SYSTEM).
pub(crate) fn replication_psql_works(pg: &PgCluster) -> bool {
    let mut cmd = clean_command(pg.bin("psql"));
    cmd.args([
        "-X",
        "-w",
        "-At",
        "-d",
        &format!("{} replication=true", pg.conninfo()),
        "-c",
        "IDENTIFY_SYSTEM",
    ]);
    Walsink::run_command(cmd, TIMEOUT).status.success()
}

// ---- connection options ---------------------------------------------------------------------------------

/// Proves every way of naming the server reaches it: a TCP conninfo (trust), `-h <socket dir> -p`,
/// `host=<socket dir>`, a `postgresql://` URI, `-h/-p/-U` overriding wrong values in `-d`, and a multi-host
/// list (key=value and URI) whose first entry is a closed port.
#[test]
fn every_connection_form_reaches_the_server() {
    let pg = PgCluster::start_default();
    let port = pg.port().to_string();
    let closed = free_port().to_string();
    let sock = pg.socket_dir().to_str().unwrap().to_owned();

    assert_streams("TCP conninfo, trust", &pg, |c| {
        c.args(["-d", &pg.conninfo()]);
    });
    assert_streams("-h <socket dir> -p -U", &pg, |c| {
        c.args(["-h", &sock, "-p", &port, "-U", "postgres"]);
    });
    assert_streams("host=<socket dir> in -d", &pg, |c| {
        c.args(["-d", &pg.socket_conninfo()]);
    });
    assert_streams("URI", &pg, |c| {
        c.args(["-d", &format!("postgresql://postgres@127.0.0.1:{port}/")]);
    });
    assert_streams("-h/-p/-U override -d", &pg, |c| {
        c.args([
            "-d",
            &format!("host=/nonexistent port={closed} user=nobody"),
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
        ]);
    });
    assert_streams("multi-host key=value", &pg, |c| {
        c.args([
            "-d",
            &format!("host=127.0.0.1,127.0.0.1 port={closed},{port} user=postgres"),
        ]);
    });
    assert_streams("multi-host URI", &pg, |c| {
        c.args([
            "-d",
            &format!("postgresql://postgres@127.0.0.1:{closed},127.0.0.1:{port}/"),
        ]);
    });
}

/// Proves bad command lines exit 2 before connecting, with a message naming what is wrong: malformed and
/// unknown conninfo (libpq's wording), an invalid slot name, bad --flush-bytes / --flush-interval values.
#[test]
fn bad_command_lines_exit_2_with_a_clear_message() {
    let dir = archive_dir();
    let d = dir.path().to_str().unwrap().to_owned();
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["-d", "host='unterminated"],
            &[
                "unterminated quoted string in connection info string",
                "-d/--dbname",
            ],
        ),
        (
            &["-d", "bogus=1"],
            &["invalid connection option \"bogus\"", "-d/--dbname"],
        ),
        (
            &["-d", "host=127.0.0.1 port"],
            &["missing \"=\" after \"port\" in connection info string"],
        ),
        (
            &["-d", "postgresql://[::1"],
            &["matching \"]\" in IPv6 host address in URI"],
        ),
        (&["-p", "99999999"], &["invalid port number", "99999999"]),
        (
            &["-S", "Bad-Name"],
            &["invalid replication slot name \"Bad-Name\"", "-S/--slot"],
        ),
        (
            &["--flush-bytes", "0"],
            &["--flush-bytes", "must be greater than zero"],
        ),
        (
            &["--flush-bytes", "4XB"],
            &["--flush-bytes", "unknown unit \"XB\""],
        ),
        (
            &["--flush-bytes", "lots"],
            &["--flush-bytes", "invalid size"],
        ),
        (
            &["--flush-interval", "0"],
            &["--flush-interval", "must be greater than zero"],
        ),
        (
            &["--flush-interval", "5h"],
            &["--flush-interval", "unknown unit \"h\""],
        ),
        (
            &["--flush-interval", "soon"],
            &["--flush-interval", "invalid duration"],
        ),
    ];
    for (args, needles) in cases {
        // No server is named: if validation let a case through, walsink would try the default socket and
        // fail differently (exit 3).
        let mut cmd = receive(["-n", "-w", "-D", &d, "-U", "postgres"]);
        cmd.args(*args);
        let r = run(cmd);
        r.expect(&format!("{args:?}"), 2, needles);
    }
    assert!(
        archive::list(dir.path()).is_empty(),
        "usage errors wrote files"
    );
}

/// Proves a refused connection with -n exits 3 at once, naming host and port.
#[test]
fn refused_connection_with_no_loop_exits_3_naming_host_and_port() {
    let dir = archive_dir();
    let port = free_port();
    let mut cmd = receive(["-n", "-w", "-d"]);
    cmd.arg(format!("host=127.0.0.1 port={port} user=postgres"))
        .arg("-D")
        .arg(dir.path());
    let r = run(cmd);
    r.expect(
        "connection refused with -n",
        3,
        &[&format!("\"127.0.0.1\", port {port}"), "refused"],
    );
    assert!(r.elapsed < Duration::from_secs(10), "took {:?}", r.elapsed);
}

/// Proves that without -n walsink keeps retrying a server that is down (even for the first connection,
/// unlike pg_receivewal), and connects and streams once the server is up on that port.
#[test]
fn refused_connection_without_no_loop_retries_until_the_server_starts() {
    let pg = PgCluster::start_default();
    let end = parse_lsn(&pg.current_lsn()) + (1 << 20) + 0x1238;
    pg.stop(StopMode::Fast);
    let dir = archive_dir();
    let mut cmd = receive(["-w", "--no-sync", "-E", &format_lsn(end), "-d"]);
    cmd.arg(pg.conninfo()).arg("-D").arg(dir.path());
    let mut ws = WalsinkProcess::spawn_command(cmd);
    assert!(
        ws.wait_for_stderr("retrying", Duration::from_secs(10)),
        "{}",
        ws.stderr_text()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(ws.is_running(), "gave up:\n{}", ws.stderr_text());
    let stderr = ws.stderr_text();
    assert!(
        stderr.contains(&format!("\"127.0.0.1\", port {}", pg.port()))
            && stderr.contains("refused"),
        "{stderr}"
    );

    pg.start();
    let again = format!(
        "connected to server at \"127.0.0.1\", port {} again",
        pg.port()
    );
    assert!(
        ws.wait_for_stderr(&again, TIMEOUT),
        "no reconnection:\n{}",
        ws.stderr_text()
    );
    let now = parse_lsn(&pg.current_lsn());
    assert!(now < end);
    pg.generate_wal(end - now + 1);
    let status = ws.wait_timeout(TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", ws.stderr_text());
    let stderr = ws.stderr_text();
    // The refusal is logged once, not once per attempt.
    assert_eq!(stderr.matches("refused").count(), 1, "{stderr}");
    assert!(!archive::completed_segments(dir.path()).is_empty());
    archive::assert_completed_identical(dir.path(), &pg.pg_wal_dir());
}

// ---- authentication -------------------------------------------------------------------------------------

/// For a password method: the password via PGPASSWORD, `password=` in the conninfo and a 0600 PGPASSFILE all
/// work; a wrong password, a 0644 password file (ignored with a warning) and no password at all exit 10.
fn password_sources(auth: HostAuth) {
    let pg = PgCluster::builder().host_auth(auth.clone()).start();
    let method = auth.method();
    let pw = auth.password().unwrap().to_owned();
    let files = tempfile::tempdir().unwrap();

    assert_streams(&format!("{method} via PGPASSWORD"), &pg, |c| {
        c.args(["-d", &pg.conninfo()]).env("PGPASSWORD", &pw);
    });
    assert_streams(&format!("{method} via password= in -d"), &pg, |c| {
        c.args(["-d", &format!("{} password={}", pg.conninfo(), quote(&pw))]);
    });
    let secure = pgpass(files.path(), &pg, &pw, 0o600);
    assert_streams(&format!("{method} via PGPASSFILE 0600"), &pg, |c| {
        c.args(["-d", &pg.conninfo()]).env("PGPASSFILE", &secure);
    });

    let dir = archive_dir();
    let attempt = |configure: &dyn Fn(&mut Command)| {
        let mut cmd = receive(["-n", "-w", "-d", &pg.conninfo(), "-D"]);
        cmd.arg(dir.path());
        configure(&mut cmd);
        run(cmd)
    };
    // A wrong password is not retried, even without -n.
    let mut cmd = receive(["-w", "-d", &pg.conninfo(), "-D"]);
    cmd.arg(dir.path()).env("PGPASSWORD", "wrong");
    run(cmd).expect(
        &format!("{method} wrong password"),
        10,
        &[
            "password authentication failed for user \"postgres\"",
            &format!("\"127.0.0.1\", port {}", pg.port()),
        ],
    );
    let open = pgpass(files.path(), &pg, &pw, 0o644);
    attempt(&|c| {
        c.env("PGPASSFILE", &open);
    })
    .expect(
        &format!("{method} PGPASSFILE 0644"),
        10,
        &["group or world access", "no password was supplied"],
    );
    attempt(&|_| {}).expect(
        &format!("{method} no password"),
        10,
        &["no password was supplied", "PGPASSWORD", ".pgpass", "-W"],
    );
    assert!(
        archive::partial_segments(dir.path()).is_empty()
            && archive::completed_segments(dir.path()).is_empty()
    );
}

#[test]
fn cleartext_password_from_env_conninfo_and_pgpass() {
    password_sources(HostAuth::Password("clear pw".to_owned()));
}

#[test]
fn md5_password_from_env_conninfo_and_pgpass() {
    password_sources(HostAuth::Md5("md5:pw\\x".to_owned()));
}

#[test]
fn scram_password_from_env_conninfo_and_pgpass() {
    password_sources(HostAuth::ScramSha256("scr'am pw:1".to_owned()));
}

// ---- not permitted --------------------------------------------------------------------------------------

/// Proves a server without a `host replication` line in pg_hba.conf gives exit 11 (not retried, even
/// without -n) with the server's message and walsink's hint about pg_hba.conf.
#[test]
fn no_pg_hba_entry_for_replication_exits_11_with_a_hint() {
    let pg = PgCluster::start_default();
    rewrite_hba(&pg, |l| !l.starts_with("host    replication"));
    assert!(
        wait_for(|| !replication_psql_works(&pg), TIMEOUT),
        "the server still accepts replication connections after the pg_hba.conf reload"
    );
    let dir = archive_dir();
    let mut cmd = receive(["-w", "-d", &pg.conninfo(), "-D"]);
    cmd.arg(dir.path());
    run(cmd).expect(
        "no pg_hba.conf entry",
        11,
        &[
            "no pg_hba.conf entry for replication connection",
            "HINT (walsink)",
            "\"host replication",
            "pg_hba.conf and reload",
        ],
    );
    // Normal connections still work: the failure really is the replication line.
    assert!(pg.try_sql("SELECT 1").is_ok());
}

/// Proves a role without the REPLICATION attribute gives exit 11 with the server's message.
#[test]
fn role_without_replication_exits_11() {
    let pg = PgCluster::start_default();
    pg.execute("CREATE ROLE plain LOGIN");
    let dir = archive_dir();
    let mut cmd = receive(["-w", "-d"]);
    cmd.arg(format!("host=127.0.0.1 port={} user=plain", pg.port()))
        .arg("-D")
        .arg(dir.path());
    // PostgreSQL 16 reworded the server's message (15: "must be superuser or replication role to start
    // walsender"; 16 on: "permission denied to start WAL sender" with a DETAIL naming the attribute).
    let server_message = if pg.major_version() >= 16 {
        "permission denied to start WAL sender"
    } else {
        "must be superuser or replication role"
    };
    run(cmd).expect(
        "role without REPLICATION",
        11,
        &[server_message, "REPLICATION attribute"],
    );
}

// ---- slots ----------------------------------------------------------------------------------------------

/// Proves a missing slot gives exit 12 with a message naming the slot and suggesting --create-slot: both
/// for an empty archive (walsink asks READ_REPLICATION_SLOT) and for an archive to continue
/// (START_REPLICATION fails), and also without -n.
#[test]
fn missing_slot_exits_12_naming_the_slot() {
    let pg = PgCluster::start_default();
    let dir = archive_dir();
    let mut cmd = receive(["-n", "-w", "-S", "no_such_slot", "-d", &pg.conninfo(), "-D"]);
    cmd.arg(dir.path());
    run(cmd).expect(
        "missing slot, empty archive",
        12,
        &[
            "replication slot \"no_such_slot\" does not exist",
            "--create-slot",
        ],
    );

    // Give the archive a segment, so walsink resumes from it and the slot is only checked by the server.
    let end = parse_lsn(&pg.generate_wal(16 << 10));
    let mut cmd = receive([
        "-n",
        "-w",
        "--no-sync",
        "-E",
        &format_lsn(end),
        "-d",
        &pg.conninfo(),
        "-D",
    ]);
    cmd.arg(dir.path());
    run(cmd).expect("seeding the archive", 0, &[]);
    pg.generate_wal(16 << 10);
    let mut cmd = receive(["-w", "-S", "no_such_slot", "-d", &pg.conninfo(), "-D"]);
    cmd.arg(dir.path());
    run(cmd).expect(
        "missing slot, archive to continue, no -n",
        12,
        &[
            "replication slot \"no_such_slot\" does not exist",
            "--create-slot",
        ],
    );
}

/// Proves a slot another receiver streams from gives exit 13 after the grace period (10 s by default,
/// shortened here with the hidden `--slot-in-use-grace` so the test does not sleep through it), retried
/// meanwhile even with -n, with a message saying the slot is active.
#[test]
fn slot_in_use_exits_13_after_the_grace_period() {
    let pg = PgCluster::start_default();
    let slot = "busy_slot";
    let mut cmd = receive(["-S", slot, "--create-slot", "-d", &pg.conninfo()]);
    cmd.arg("-w");
    run(cmd).expect("--create-slot", 0, &[]);
    let first_dir = archive_dir();
    let mut cmd = receive(["-w", "--no-sync", "-S", slot, "-d", &pg.conninfo(), "-D"]);
    cmd.arg(first_dir.path());
    let mut first = WalsinkProcess::spawn_command(cmd);
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

    let dir = archive_dir();
    let mut cmd = receive([
        "-n",
        "-w",
        "--no-sync",
        "--slot-in-use-grace",
        "2s",
        "-S",
        slot,
        "-d",
        &pg.conninfo(),
        "-D",
    ]);
    cmd.arg(dir.path());
    let r = run(cmd);
    r.expect(
        "slot in use",
        13,
        &[
            &format!("replication slot \"{slot}\" is active for PID"),
            "retrying for up to 2 s in case the slot's previous user is just going away",
            "another receiver is streaming from this slot",
        ],
    );
    assert!(
        r.elapsed >= Duration::from_secs(2) && r.elapsed < Duration::from_secs(30),
        "gave up after {:?}, expected a little over the 2 s grace",
        r.elapsed
    );
    assert!(first.is_running(), "{}", first.stderr_text());
    assert_eq!(first.interrupt_and_wait(TIMEOUT).code(), Some(0));
}

// ---- WAL removed ----------------------------------------------------------------------------------------

/// Proves that resuming an archive whose next segment the server has removed (no slot, no wal_keep_size,
/// checkpoints since) exits 14 at once, even without -n, with the server's message and walsink's hint.
#[test]
fn removed_wal_exits_14_with_a_hint() {
    let pg = PgCluster::builder()
        .setting("wal_keep_size", "0")
        .setting("min_wal_size", "2MB")
        .setting("max_wal_size", "4MB")
        .start();
    let dir = archive_dir();
    let end = parse_lsn(&pg.generate_wal(16 << 10));
    let mut cmd = receive([
        "-n",
        "-w",
        "--no-sync",
        "-E",
        &format_lsn(end),
        "-d",
        &pg.conninfo(),
        "-D",
    ]);
    cmd.arg(dir.path());
    run(cmd).expect("seeding the archive", 0, &[]);
    let needed = remove_needed_segment(&pg, dir.path());

    let mut cmd = receive(["-w", "-d", &pg.conninfo(), "-D"]);
    cmd.arg(dir.path());
    run(cmd).expect(
        "WAL removed",
        14,
        &[
            &format!("requested WAL segment {needed} has already been removed"),
            "HINT (walsink)",
            "replication slot",
        ],
    );
}
