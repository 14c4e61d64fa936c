//! Proves the harness works on this machine (also as root, where it creates the unprivileged server user):
//! clusters start, answer SQL, switch WAL, take password auth, make standbys that stream and promote.

use std::time::Duration;

use crate::harness::pg::{pg_receivewal, tool_major};
use crate::harness::{
    HostAuth, PgCluster, StopMode, Walsink, WalsinkProcess, archive, clean_command, parse_lsn,
    wait_for,
};

/// Proves every tool the scenarios use resolves for the server under test (from `WALSINK_PG_BINDIR`, or
/// `WALSINK_PG_CLIENT_BINDIR` for what that lacks), and that the tools that read the server's files
/// (pg_waldump, pg_controldata) are of the server's major: one of another major refuses its WAL.
#[test]
fn every_tool_resolves_and_file_readers_match_the_server_major() {
    let pg = PgCluster::start_default();
    let major = pg.major_version();
    for name in [
        "initdb",
        "pg_ctl",
        "postgres",
        "psql",
        "pg_receivewal",
        "pg_basebackup",
        "pg_waldump",
        "pg_controldata",
    ] {
        let path = pg.bin(name);
        let version = tool_major(&path);
        assert!(version.is_some(), "{} --version failed", path.display());
        if ["postgres", "pg_waldump", "pg_controldata"].contains(&name) {
            assert_eq!(
                version,
                Some(major),
                "{} is not of major {major}",
                path.display()
            );
        } else {
            assert!(
                version >= Some(major),
                "{} is older than the server ({major})",
                path.display()
            );
        }
    }
}

#[test]
fn cluster_starts_answers_sql_and_switches_wal() {
    let pg = PgCluster::builder()
        .setting("wal_keep_size", "64MB")
        .start();
    assert_eq!(pg.host(), "127.0.0.1");
    assert_ne!(pg.port(), 0);
    assert_eq!(
        pg.conninfo(),
        format!("host=127.0.0.1 port={} user=postgres", pg.port())
    );
    assert_eq!(pg.sql_one("SELECT 1 + 1").as_deref(), Some("2"));
    assert_eq!(pg.sql_one("SELECT NULL"), None);
    assert_eq!(pg.sql_one("SHOW wal_segment_size").as_deref(), Some("1MB"));
    assert_eq!(pg.sql_one("SHOW wal_level").as_deref(), Some("replica"));
    assert_eq!(pg.sql_one("SHOW fsync").as_deref(), Some("off"));
    assert_eq!(pg.sql_one("SHOW wal_keep_size").as_deref(), Some("64MB"));
    assert_eq!(pg.wal_segsize_bytes(), 1 << 20);
    assert!(pg.major_version() >= 13);
    assert_eq!(pg.timeline(), 1);
    assert!(pg.system_identifier() > 0);
    pg.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2)");
    assert_eq!(
        pg.sql("SELECT id FROM t ORDER BY id"),
        vec![vec![Some("1".to_owned())], vec![Some("2".to_owned())]]
    );

    // Every switch_wal moves to a new segment, even with nothing written in between. (After a switch the
    // position is exactly on a segment boundary, which pg_walfile_name() attributes to the previous segment.)
    let segment = |lsn: &str| parse_lsn(lsn) / pg.wal_segsize_bytes();
    let first = segment(&pg.current_lsn());
    pg.switch_wal();
    pg.switch_wal();
    assert_eq!(segment(&pg.current_lsn()), first + 2);
    assert_eq!(parse_lsn(&pg.current_lsn()) % pg.wal_segsize_bytes(), 0);

    let before = parse_lsn(&pg.current_lsn());
    let end = pg.generate_wal(3 << 20);
    assert!(
        parse_lsn(&end) - before >= 3 << 20,
        "generate_wal wrote too little: {before:X} -> {end}"
    );
    assert!(archive::completed_segments(&pg.pg_wal_dir()).len() >= 4);

    // Stop and start keep the port and the data.
    pg.stop(StopMode::Immediate);
    assert!(pg.try_sql("SELECT 1").is_err());
    pg.start();
    assert_eq!(pg.sql_one("SELECT count(*) FROM t").as_deref(), Some("2"));
    pg.restart();
    assert!(pg.is_running());
}

#[test]
fn password_auth_over_tcp_and_pg_receivewal_runs() {
    let pg = PgCluster::builder()
        .host_auth(HostAuth::ScramSha256("s3cret'pw".to_owned()))
        .wal_segsize_mb(2)
        .setting("wal_keep_size", "64MB")
        .start();
    assert_eq!(pg.password(), Some("s3cret'pw"));
    let stored = pg
        .sql_one("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'")
        .unwrap();
    assert!(stored.starts_with("SCRAM-SHA-256$"), "{stored}");

    // pg_receivewal as the reference client over TCP with the password; its archive must match pg_wal.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = clean_command(pg_receivewal());
    cmd.arg("-D")
        .arg(dir.path())
        .args(["-d", &pg.conninfo(), "-n", "--no-sync", "-v"])
        .env("PGPASSWORD", pg.password().unwrap());
    let mut receiver = WalsinkProcess::spawn_command(cmd);
    assert!(
        receiver.wait_for_stderr("starting log streaming", Duration::from_secs(30)),
        "pg_receivewal did not start: {}",
        receiver.stderr_text()
    );
    pg.generate_wal(5 << 20);
    pg.switch_wal();
    assert!(
        wait_for(
            || archive::completed_segments(dir.path()).len() >= 3,
            Duration::from_secs(30)
        ),
        "pg_receivewal archived only {:?}\n{}",
        archive::list(dir.path()),
        receiver.stderr_text()
    );
    receiver.interrupt_and_wait(Duration::from_secs(30));
    let compared = archive::assert_completed_identical(dir.path(), &pg.pg_wal_dir());
    assert!(compared >= 3, "only {compared} segments");
    for name in archive::completed_segments(dir.path()) {
        archive::assert_mode(&dir.path().join(name), 0o600);
    }
    assert!(archive::partial_segments(dir.path()).len() <= 1);

    // Wrong password fails.
    let mut cmd = clean_command(pg_receivewal());
    cmd.arg("-D")
        .arg(dir.path())
        .args(["-d", &pg.conninfo(), "-n", "-w"])
        .env("PGPASSWORD", "wrong");
    let out = Walsink::run_command(cmd, Duration::from_secs(30));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed"));
}

#[test]
fn standby_streams_and_promotes_to_a_new_timeline() {
    let primary = PgCluster::builder().start();
    let standby = primary.make_standby();
    assert_ne!(standby.port(), primary.port());
    assert!(standby.is_in_recovery());
    assert_eq!(standby.system_identifier(), primary.system_identifier());

    primary.execute("CREATE TABLE t AS SELECT 1 AS id");
    let target = parse_lsn(&primary.switch_wal());
    assert!(
        wait_for(
            || parse_lsn(&standby.current_lsn()) >= target,
            Duration::from_secs(30)
        ),
        "standby did not receive up to {target:X}"
    );
    assert!(wait_for(
        || standby.try_sql("SELECT id FROM t").is_ok(),
        Duration::from_secs(30)
    ));

    primary.stop(StopMode::Fast);
    standby.promote();
    assert!(!standby.is_in_recovery());
    assert_eq!(standby.timeline(), 2);
    assert!(archive::list(&standby.pg_wal_dir()).contains(&"00000002.history".to_owned()));
    standby.execute("INSERT INTO t VALUES (2)");
}

#[test]
fn walsink_binary_is_runnable_and_processes_are_reaped() {
    // The binary exists and exits by itself (whatever the CLI says about --help today).
    let out = Walsink::run(["--help"], Duration::from_secs(30));
    assert!(
        out.status.code().is_some(),
        "walsink --help died from a signal: {:?}",
        out.status
    );

    // A process handle: output is readable while running, signals work, wait_timeout reports the status.
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.args([
        "-c",
        "echo started >&2; trap 'echo got-int >&2; exit 3' INT; while :; do sleep 0.05; done",
    ]);
    let mut process = WalsinkProcess::spawn_command(cmd);
    assert!(process.wait_for_stderr("started", Duration::from_secs(10)));
    assert!(process.is_running());
    process.interrupt();
    let status = process.wait_timeout(Duration::from_secs(10));
    assert_eq!(status.code(), Some(3));
    assert!(process.stderr_text().contains("got-int"));
}

/// Children never inherit systemd's variables from the suite: run under journald (`JOURNAL_STREAM`) or
/// as a service (`NOTIFY_SOCKET`, `WATCHDOG_*`), walsink would drop its timestamps or notify the suite's
/// manager, and the tests of its defaults would fail. Tests that want them set them after this.
#[test]
fn commands_do_not_inherit_systemd_variables() {
    for cmd in [Walsink::cmd(["--help"]), clean_command("psql")] {
        let removed: Vec<String> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        for key in crate::harness::pg::SERVICE_VARS {
            assert!(
                removed.iter().any(|k| k == key),
                "{key} passes through: {cmd:?}"
            );
        }
    }
    let mut cmd = Walsink::cmd(["--help"]);
    cmd.env("JOURNAL_STREAM", "8:1");
    assert!(
        cmd.get_envs()
            .any(|(k, v)| k == "JOURNAL_STREAM" && v.is_some_and(|v| v == "8:1")),
        "a test can still set it"
    );
}

#[test]
fn dropping_a_cluster_stops_it_and_removes_its_files_even_on_panic() {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let pg = PgCluster::start_default();
        // SQL also works from inside an async context (the harness then queries from a helper thread).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(
            runtime
                .block_on(async { pg.sql_one("SELECT 42") })
                .as_deref(),
            Some("42")
        );
        let pid_file = std::fs::read_to_string(pg.data_dir().join("postmaster.pid")).unwrap();
        let postmaster: u32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
        tx.send((pg.data_dir().parent().unwrap().to_path_buf(), postmaster))
            .unwrap();
        panic!("deliberate panic: the harness must clean up while unwinding");
    })
    .join();
    assert!(outcome.is_err());
    let (root, postmaster) = rx.recv().unwrap();
    assert!(!root.exists(), "{} still exists", root.display());
    let gone = || {
        std::fs::read_to_string(format!("/proc/{postmaster}/stat"))
            .map(|stat| {
                stat.rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    };
    assert!(
        wait_for(gone, Duration::from_secs(10)),
        "postmaster {postmaster} still running"
    );
}

#[test]
fn every_host_auth_method_accepts_its_password_over_tcp() {
    for auth in [
        HostAuth::Trust,
        HostAuth::Password("pw1".to_owned()),
        HostAuth::Md5("pw2".to_owned()),
        HostAuth::ScramSha256("pw3".to_owned()),
    ] {
        let pg = PgCluster::builder()
            .host_auth(auth.clone())
            .allow_replication(false)
            .start();
        assert_eq!(pg.sql_one("SHOW wal_level").as_deref(), Some("minimal"));
        let hba = std::fs::read_to_string(pg.data_dir().join("pg_hba.conf")).unwrap();
        assert!(
            hba.contains(&format!("127.0.0.1/32  {}", auth.method())),
            "{hba}"
        );
        if let HostAuth::Md5(_) = auth {
            let stored = pg.sql_one("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'");
            assert!(stored.unwrap().starts_with("md5"));
        }
        let psql = |password: &str| {
            let mut cmd = clean_command(pg.bin("psql"));
            cmd.args(["-X", "-w", "-At", "-d", &pg.conninfo(), "-c", "SELECT 'in'"]);
            cmd.env("PGPASSWORD", password);
            Walsink::run_command(cmd, Duration::from_secs(30))
        };
        let ok = psql(auth.password().unwrap_or(""));
        assert!(
            ok.status.success(),
            "{auth:?}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "in");
        if auth != HostAuth::Trust {
            assert!(
                !psql("wrong").status.success(),
                "{auth:?} accepted a wrong password"
            );
        }
    }
}
