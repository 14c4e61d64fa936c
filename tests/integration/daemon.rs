//! `walsink run --config FILE`: many sources in one daemon against real PostgreSQL.
//!
//! - isolation: a source that cannot connect, one whose archive is refused and one whose disk is full neither
//!   stall nor stop a good one, which streams byte-identical segments;
//! - SIGHUP: new sources start, removed ones stop, changed ones restart, an unchanged one keeps its
//!   walsender (same pid in `pg_stat_replication`), an invalid file is logged and the running one kept;
//! - logs: JSON lines carrying each source's name, no timestamps under journald, never a password;
//! - an invalid file exits 2 naming file, line and key, before connecting anywhere.

use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::gaps::{fill, small_fs_or_skip};
use crate::harness::pg::free_port;
use crate::harness::{
    HostAuth, PgCluster, WAIT, Walsink, WalsinkProcess, archive, archive_dir, create_slot,
    parse_lsn, wait_for,
};

/// A config file in its own temp dir.
struct ConfigFile {
    dir: TempDir,
}

impl ConfigFile {
    fn new(text: &str) -> ConfigFile {
        let dir = tempfile::Builder::new()
            .prefix("wsk-conf")
            .tempdir()
            .expect("temp dir");
        let c = ConfigFile { dir };
        c.write(text);
        c
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("walsink.toml")
    }

    /// Replaces the file's content atomically (a reload never reads half a file).
    fn write(&self, text: &str) {
        let tmp = self.dir.path().join("walsink.toml.new");
        fs::write(&tmp, text).expect("write config");
        fs::rename(&tmp, self.path()).expect("rename config");
    }

    fn spawn(&self, extra: &[&str]) -> WalsinkProcess {
        let path = self.path();
        let mut args = vec!["run", "-c", path.to_str().expect("UTF-8 path")];
        args.extend_from_slice(extra);
        Walsink::spawn(&args)
    }
}

/// A `[[source]]` table streaming from `pg` into `dir` with `application_name` = `name`.
fn source(name: &str, conninfo: &str, dir: &Path, slot: Option<&str>, extra: &str) -> String {
    let slot = slot
        .map(|s| format!("slot = \"{s}\"\n"))
        .unwrap_or_default();
    format!(
        "[[source]]\nname = \"{name}\"\nconninfo = \"{conninfo} application_name={name}\"\ndirectory = \"{}\"\n{slot}{extra}\n",
        dir.display()
    )
}

/// The pid of the walsender streaming to `application_name` = `app` (state streaming), if any.
fn walsender_pid(pg: &PgCluster, app: &str) -> Option<String> {
    pg.sql(&format!(
        "SELECT pid::text FROM pg_stat_replication WHERE application_name = '{app}' AND state = 'streaming'"
    ))
    .into_iter()
    .next()
    .and_then(|r| r[0].clone())
}

fn wait_streaming(pg: &PgCluster, ws: &mut WalsinkProcess, app: &str) -> String {
    let mut pid = None;
    let ok = wait_for(
        || {
            pid = walsender_pid(pg, app);
            pid.is_some() || !ws.is_running()
        },
        WAIT,
    );
    assert!(
        ok && pid.is_some(),
        "source {app} is not streaming (walsink running: {})\n--- stderr ---\n{}",
        ws.is_running(),
        ws.stderr_text()
    );
    pid.expect("checked")
}

fn stop_ok(ws: &mut WalsinkProcess) {
    let status = ws.interrupt_and_wait(WAIT);
    assert_eq!(
        status.code(),
        Some(0),
        "walsink run did not exit 0 on SIGINT\n--- stderr ---\n{}",
        ws.stderr_text()
    );
}

/// Sends SIGHUP and waits for the `n`th "reloaded" or "keeping the running one" line.
fn reload(ws: &mut WalsinkProcess, n: usize) {
    ws.signal(libc::SIGHUP);
    let ok = wait_for(
        || {
            let t = ws.stderr_text();
            t.matches("reloaded: ").count() + t.matches("keeping the running one").count() >= n
        },
        WAIT,
    );
    assert!(ok, "no reload #{n}\n--- stderr ---\n{}", ws.stderr_text());
}

/// One good source, one pointing at a port nobody listens on, one whose archive directory is locked by
/// another process: the good one streams byte-identical WAL while the others retry or fail.
#[test]
fn a_dead_server_and_a_refused_archive_do_not_stall_the_good_source() {
    let pg = PgCluster::start_default();
    create_slot(&pg, "good");
    let (good, dead, refused) = (archive_dir(), archive_dir(), archive_dir());
    // The archive lock is a flock on the directory: hold it as another walsink would.
    let held = fs::File::open(refused.path()).expect("open refused dir");
    rustix::fs::flock(&held, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .expect("flock the refused archive");
    let dead_port = free_port();
    let conf = ConfigFile::new(&format!(
        "metrics_listen = \"127.0.0.1:0\"\n{}{}{}",
        source(
            "dead",
            &format!("host=127.0.0.1 port={dead_port} user=postgres"),
            dead.path(),
            None,
            ""
        ),
        source("refused", &pg.conninfo(), refused.path(), None, ""),
        source("good", &pg.conninfo(), good.path(), Some("good"), ""),
    ));
    let mut ws = conf.spawn(&[]);
    wait_streaming(&pg, &mut ws, "good");
    assert!(
        ws.wait_for_stderr("archive directory", WAIT),
        "the refused source did not report its archive\n{}",
        ws.stderr_text()
    );
    // Three segments through the good source, while the dead one keeps retrying.
    for _ in 0..3 {
        pg.generate_wal(1 << 20);
        pg.switch_wal();
    }
    let target = parse_lsn(&pg.current_lsn());
    let ok = wait_for(|| archive::completed_segments(good.path()).len() >= 3, WAIT);
    assert!(
        ok,
        "the good source archived {:?}\n{}",
        archive::list(good.path()),
        ws.stderr_text()
    );
    let n = archive::assert_completed_identical(good.path(), &pg.pg_wal_dir());
    assert!(n >= 3);
    assert!(target > 0);
    let log = ws.stderr_text();
    assert!(ws.is_running(), "the daemon exited:\n{log}");
    // Each problem is reported under its source's name; the refused one stays down.
    assert!(
        log.lines()
            .any(|l| l.contains("source{source=dead}") && l.contains("retrying")),
        "{log}"
    );
    assert!(
        log.lines().any(
            |l| l.contains("source{source=refused}") && l.contains("in use by another walsink")
        ),
        "{log}"
    );
    assert!(log.contains("this source stays stopped"), "{log}");
    assert!(
        archive::completed_segments(dead.path()).is_empty()
            && archive::partial_segments(dead.path()).is_empty(),
        "{:?}",
        archive::list(dead.path())
    );
    // Metrics and health name each source: the good one streams and has its flush position; the other two
    // fail the health check, each with its reason.
    assert!(
        ws.wait_for_stderr("serving metrics at http://", WAIT),
        "{}",
        ws.stderr_text()
    );
    let text = ws.stderr_text();
    let addr = text
        .split("serving metrics at http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("metrics address")
        .to_string();
    let (code, body) = crate::service::http_get(&addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        crate::service::metric(&body, "walsink_up", "good"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        crate::service::metric(&body, "walsink_up", "refused"),
        Some(0.0),
        "{body}"
    );
    assert!(
        crate::service::metric(&body, "walsink_flushed_lsn", "good").is_some_and(|v| v > 0.0),
        "{body}"
    );
    let (code, body) = crate::service::http_get(&addr, "/health");
    assert_eq!(code, 503, "{body}");
    assert!(body.lines().any(|l| l.starts_with("refused: ")), "{body}");
    assert!(body.lines().any(|l| l.starts_with("dead: ")), "{body}");
    assert!(!body.contains("good: "), "{body}");
    stop_ok(&mut ws);
    drop(held);
}

/// A source whose disk is full pauses (its walsender stays, its slot holds the WAL) while another source of the
/// same daemon goes on archiving byte-identical segments; with space again it resumes by itself.
#[test]
fn a_full_disk_pauses_only_its_own_source() {
    let Some(small) = small_fs_or_skip(12) else {
        return;
    };
    let pg = PgCluster::builder().setting("wal_keep_size", "1GB").start();
    let seg = pg.wal_segsize_bytes();
    create_slot(&pg, "good");
    create_slot(&pg, "full");
    let good = archive_dir();
    let full = small.mount_point.join("archive");
    fs::create_dir(&full).unwrap();
    fs::set_permissions(&full, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let conf = ConfigFile::new(&format!(
        "{}{}",
        source(
            "good",
            &pg.conninfo(),
            good.path(),
            Some("good"),
            "status_interval = \"1s\""
        ),
        source(
            "full",
            &pg.conninfo(),
            &full,
            Some("full"),
            "status_interval = \"1s\""
        ),
    ));
    let mut ws = conf.spawn(&[]);
    wait_streaming(&pg, &mut ws, "good");
    let full_pid = wait_streaming(&pg, &mut ws, "full");
    let filler = small.mount_point.join("filler");
    assert!(fill(&filler) > 0);
    let wanted = parse_lsn(&pg.generate_wal(4 * seg));
    pg.switch_wal();
    assert!(
        ws.wait_for_stderr("disk full: pausing WAL writes", WAIT),
        "the full source did not report its disk\n{}",
        ws.stderr_text()
    );
    let log = ws.stderr_text();
    assert!(
        log.lines()
            .any(|l| l.contains("source{source=full}")
                && l.contains("disk full: pausing WAL writes")),
        "{log}"
    );
    // The good source archives everything meanwhile.
    let ok = wait_for(
        || {
            archive::completed_segments(good.path())
                .last()
                .is_some_and(|n| *n >= pg.walfile_name(&crate::harness::format_lsn(wanted - 1)))
        },
        WAIT,
    );
    assert!(
        ok,
        "the good source archived {:?}\n{}",
        archive::list(good.path()),
        ws.stderr_text()
    );
    assert!(archive::assert_completed_identical(good.path(), &pg.pg_wal_dir()) >= 4);
    // The full one is paused, not reconnecting, and its slot keeps the WAL it has not written.
    assert!(ws.is_running());
    assert_eq!(
        walsender_pid(&pg, "full").as_deref(),
        Some(full_pid.as_str())
    );
    let held = crate::harness::restart_lsn(&pg, "full").expect("restart_lsn");
    assert!(
        held < wanted,
        "the full source's slot moved past what it could write"
    );

    // Space again: it resumes and catches up on its own.
    fs::remove_file(&filler).unwrap();
    assert!(
        ws.wait_for_stderr("disk space is available again", WAIT),
        "{}",
        ws.stderr_text()
    );
    assert!(
        wait_for(
            || crate::harness::restart_lsn(&pg, "full").is_some_and(|r| r >= wanted),
            WAIT
        ),
        "the full source did not catch up\n{}",
        ws.stderr_text()
    );
    stop_ok(&mut ws);
}

/// SIGHUP: added, removed, changed and unchanged sources; then an invalid file.
#[test]
fn sighup_applies_the_file_by_difference_and_keeps_it_when_invalid() {
    let pg = PgCluster::start_default();
    for s in ["keep", "change", "remove", "add"] {
        create_slot(&pg, s);
    }
    let dirs: Vec<TempDir> = (0..4).map(|_| archive_dir()).collect();
    let conf_of = |names: &[(&str, &str)]| {
        names
            .iter()
            .map(|(n, extra)| {
                let i = ["keep", "change", "remove", "add"]
                    .iter()
                    .position(|x| x == n)
                    .unwrap();
                source(n, &pg.conninfo(), dirs[i].path(), Some(n), extra)
            })
            .collect::<String>()
    };
    let conf = ConfigFile::new(&conf_of(&[
        ("keep", ""),
        ("change", "status_interval = \"10s\""),
        ("remove", ""),
    ]));
    let mut ws = conf.spawn(&[]);
    let keep_pid = wait_streaming(&pg, &mut ws, "keep");
    let change_pid = wait_streaming(&pg, &mut ws, "change");
    wait_streaming(&pg, &mut ws, "remove");
    // WAL that "remove" must have flushed and reported before it stops.
    pg.generate_wal(256 << 10);
    let written = parse_lsn(&pg.current_lsn());

    conf.write(&conf_of(&[
        ("keep", ""),
        ("change", "status_interval = \"5s\""),
        ("add", ""),
    ]));
    reload(&mut ws, 1);
    let log = ws.stderr_text();
    assert!(
        log.contains("reloaded: 1 started, 1 stopped, 1 restarted, 1 unchanged"),
        "{log}"
    );
    let added = wait_streaming(&pg, &mut ws, "add");
    let changed = wait_streaming(&pg, &mut ws, "change");
    assert_ne!(
        changed, change_pid,
        "the changed source kept its connection"
    );
    assert_eq!(
        walsender_pid(&pg, "keep").as_deref(),
        Some(keep_pid.as_str()),
        "the unchanged source was reconnected"
    );
    // Removed: its walsender is gone, and what it received was flushed and reported at the stop.
    assert!(
        wait_for(|| walsender_pid(&pg, "remove").is_none(), WAIT),
        "the removed source still streams"
    );
    let restart = crate::harness::restart_lsn(&pg, "remove").expect("restart_lsn");
    assert!(
        restart >= written,
        "the removed source's slot is at {restart:X}, before {written:X}: not flushed and reported"
    );
    let partials = archive::partial_segments(dirs[2].path());
    assert_eq!(partials.len(), 1, "{:?}", archive::list(dirs[2].path()));
    let seg = pg.wal_segsize_bytes();
    let name = partials[0].trim_end_matches(".partial");
    archive::assert_partial_prefix_identical(
        &dirs[2].path().join(&partials[0]),
        &pg.pg_wal_dir().join(name),
        usize::try_from(written % seg).expect("fits"),
    );

    // An invalid file: logged, and nothing changes.
    conf.write(&format!("{}flush_byts = 1\n", conf_of(&[("keep", "")])));
    reload(&mut ws, 2);
    let log = ws.stderr_text();
    assert!(log.contains("flush_byts: unknown key"), "{log}");
    assert!(
        log.contains("the new configuration is invalid; keeping the running one"),
        "{log}"
    );
    assert_eq!(
        walsender_pid(&pg, "keep").as_deref(),
        Some(keep_pid.as_str())
    );
    assert_eq!(walsender_pid(&pg, "add").as_deref(), Some(added.as_str()));
    assert_eq!(
        walsender_pid(&pg, "change").as_deref(),
        Some(changed.as_str())
    );
    stop_ok(&mut ws);
}

/// JSON logs: every line of a source carries its name; a password in `conninfo` (right or wrong) never
/// appears; under journald no timestamps of our own.
#[test]
fn logs_name_the_source_and_never_the_password() {
    let secret = "s3cret-Pw-7781";
    let pg = PgCluster::builder()
        .host_auth(HostAuth::ScramSha256(secret.into()))
        .start();
    create_slot_with_password(&pg, "ok", secret);
    let (ok_dir, bad_dir) = (archive_dir(), archive_dir());
    let wrong = "wrong-Pw-5521";
    let conf = ConfigFile::new(&format!(
        "log_format = \"json\"\n{}{}",
        source(
            "ok",
            &format!("{} password={secret}", pg.conninfo()),
            ok_dir.path(),
            Some("ok"),
            ""
        ),
        source(
            "bad",
            &format!("{} password={wrong}", pg.conninfo()),
            bad_dir.path(),
            None,
            ""
        ),
    ));
    // Not under journald whatever runs the suite: the harness clears JOURNAL_STREAM (`SERVICE_VARS`), so
    // these lines carry timestamps.
    let mut ws = conf.spawn(&["-v"]);
    wait_streaming(&pg, &mut ws, "ok");
    assert!(
        ws.wait_for_stderr("this source stays stopped", WAIT),
        "{}",
        ws.stderr_text()
    );
    // A completed segment: its completion is logged (at debug level) by the archive's sync thread, and the
    // next one's preparation by the preparation thread; both must carry the source too.
    pg.generate_wal(64 << 10);
    pg.switch_wal();
    assert!(
        wait_for(
            || !archive::completed_segments(ok_dir.path()).is_empty(),
            WAIT
        ),
        "{}",
        ws.stderr_text()
    );
    stop_ok(&mut ws);
    let log = ws.stderr_text();
    assert!(log.contains("completed segment"), "{log}");
    assert!(
        !log.contains(secret) && !log.contains(wrong),
        "a password in the log:\n{log}"
    );
    let (mut ok_lines, mut bad_lines) = (0, 0);
    for line in log.lines() {
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "not a JSON line: {line}"
        );
        assert!(line.contains("\"timestamp\":"), "{line}");
        // The source's lines carry it in their span; the daemon's own lines name a source as a field.
        let of = |n: &str| line.contains(&format!("\"source\":\"{n}\""));
        ok_lines += usize::from(of("ok"));
        bad_lines += usize::from(of("bad"));
        let daemon_line = [
            "walsink daemon",
            "stopping every source",
            "source(s) had stopped",
        ]
        .iter()
        .any(|m| line.contains(m));
        assert!(
            of("ok") || of("bad") || daemon_line,
            "a line without its source: {line}"
        );
    }
    assert!(ok_lines >= 2 && bad_lines >= 2, "{log}");
    assert!(
        log.lines().any(|l| l.contains("\"source\":\"bad\"")
            && l.contains("password authentication failed")
            || l.contains("\"source\":\"bad\"") && l.contains("authentication")),
        "{log}"
    );

    // Under journald: text, no timestamps (the journal stamps lines).
    let mut cmd = Walsink::cmd([
        "run",
        "-c",
        conf.path().to_str().unwrap(),
        "--log-format",
        "text",
    ]);
    cmd.env("JOURNAL_STREAM", "8:12345");
    let mut ws = WalsinkProcess::spawn_command(cmd);
    wait_streaming(&pg, &mut ws, "ok");
    stop_ok(&mut ws);
    let log = ws.stderr_text();
    assert!(
        !log.contains(secret) && !log.contains(wrong),
        "a password in the log:\n{log}"
    );
    for line in log.lines() {
        let first = line.split_whitespace().next().unwrap_or_default();
        assert!(
            ["INFO", "WARN", "ERROR", "DEBUG"].contains(&first),
            "a line that does not start with its level: {line}"
        );
    }
    assert!(log.contains("INFO source{source=ok}: "), "{log}");
}

fn create_slot_with_password(pg: &PgCluster, slot: &str, password: &str) {
    let mut cmd = Walsink::cmd([
        "receive",
        "-d",
        &pg.conninfo(),
        "-S",
        slot,
        "--create-slot",
        "-w",
    ]);
    cmd.env("PGPASSWORD", password);
    let out = Walsink::run_command(cmd, WAIT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An invalid file exits 2 before anything starts: every error with file, line and key; no connection.
#[test]
fn an_invalid_file_exits_2_naming_file_line_and_key() {
    let pg = PgCluster::start_default();
    let dir = archive_dir();
    let conf = ConfigFile::new(&format!(
        "{}flush_interval = \"1 fortnight\"\n{}",
        source(
            "a",
            &format!("{} password=hunter2-x", pg.conninfo()),
            dir.path(),
            Some("a"),
            ""
        ),
        source("a", &pg.conninfo(), dir.path(), None, "mode = \"sync\""),
    ));
    let out = Walsink::run(["run", "-c", conf.path().to_str().unwrap()], WAIT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let f = conf.path().display().to_string();
    for needle in [
        format!("{f}:7:18: source \"a\": flush_interval: invalid duration \"1 fortnight\""),
        format!(
            "{f}:9:8: source \"a\": name: a second source named \"a\" (the first is on line 2)"
        ),
        format!("{f}:11:13: source \"a\": directory: "),
        format!("{f}:12:8: source \"a\": mode: invalid mode \"sync\""),
        "4 error(s); nothing was started".to_string(),
    ] {
        assert!(err.contains(&needle), "stderr lacks {needle:?}:\n{err}");
    }
    assert!(!err.contains("hunter2-x"), "{err}");
    assert!(archive::list(dir.path()).is_empty());
    assert_eq!(
        pg.sql_one("SELECT count(*)::text FROM pg_stat_replication")
            .as_deref(),
        Some("0")
    );
    // --check: the same verdict, and 0 with a list of sources for a good file.
    let out = Walsink::run(
        ["run", "--check", "-c", conf.path().to_str().unwrap()],
        WAIT,
    );
    assert_eq!(out.status.code(), Some(2));
    conf.write(&source("a", &pg.conninfo(), dir.path(), Some("a"), ""));
    let out = Walsink::run(
        ["run", "--check", "-c", conf.path().to_str().unwrap()],
        WAIT,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 source(s): a"));
}

/// Sources that cannot work side by side exit 2 before anything starts, with `run` and with `--check`:
/// one archive directory under another spelling (a symbolic link, a trailing slash), one archive inside
/// another, one replication slot on the same server (the second source's error names the first and the fix).
#[test]
fn sources_that_clash_exit_2_naming_the_other_source_and_the_fix() {
    let top = archive_dir();
    let real = top.path().join("db1");
    fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(top.path(), top.path().join("link")).unwrap();
    let port = free_port();
    let on = |host: &str| format!("{host} port={port} user=postgres");
    let conf = ConfigFile::new(&format!(
        "{}{}{}{}",
        source("a", &on("host=127.0.0.1"), &real, Some("walsink"), ""),
        source(
            "b",
            &on("hostaddr=127.0.0.1"),
            &top.path().join("link/db1/"),
            None,
            ""
        ),
        source("c", &on("host=db9"), &real.join("nested"), None, ""),
        source(
            "d",
            &on("host=myhost hostaddr=127.0.0.1"),
            &top.path().join("db4"),
            Some("walsink"),
            ""
        ),
    ));
    let path = conf.path();
    let f = path.display().to_string();
    for check in [false, true] {
        let mut args = vec!["run", "-c", path.to_str().unwrap()];
        if check {
            args.push("--check");
        }
        let out = Walsink::run(args, WAIT);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--check {check}: {err}");
        for needle in [
            format!(
                "{f}:10:13: source \"b\": directory: \"{}/link/db1\" is also the directory of source \"a\" (line 2), which names it \"{}\"",
                top.path().display(),
                real.display()
            ),
            format!(
                "{f}:15:13: source \"c\": directory: \"{}/nested\" is inside \"{}\", the directory of source \"a\" (line 2)",
                real.display(),
                real.display()
            ),
            format!(
                "{f}:21:8: source \"d\": slot: replication slot \"walsink\" of the server at \"myhost\" (127.0.0.1), port {port} is also the slot of source \"a\" (line 2)"
            ),
            "slot = \"d\" with create_slot_if_missing = true".to_string(),
            "3 error(s); nothing was started".to_string(),
        ] {
            assert!(
                err.contains(&needle),
                "--check {check}: stderr lacks {needle:?}:\n{err}"
            );
        }
        assert_eq!(archive::list(&real), Vec::<String>::new());
    }
}

/// The CLOCK_MONOTONIC time in µs, read as walsink reads it (the sd-notify crate).
fn monotonic_usec() -> i128 {
    match sd_notify::NotifyState::monotonic_usec_now().expect("CLOCK_MONOTONIC") {
        sd_notify::NotifyState::MonotonicUsec(us) => us,
        _ => unreachable!(),
    }
}

/// The value of `KEY=` in datagram `d`.
fn field<'a>(d: &'a str, key: &str) -> Option<&'a str> {
    d.lines().find_map(|l| l.strip_prefix(key))
}

/// systemd's reload protocol on SIGHUP: `RELOADING=1` with `MONOTONIC_USEC=` (CLOCK_MONOTONIC when the
/// reload began), then `READY=1` with a fresh `STATUS=` once the file is applied, or refused (here: a new
/// source on the slot of a running one; the running sources keep their connections). A SIGHUP before the
/// first `READY=1` (systemd still starting the service) is not announced.
#[test]
fn reload_tells_systemd_and_a_clashing_file_keeps_the_running_sources() {
    use crate::harness::proxy::FaultProxy;
    use crate::service::Notes;

    let pg = PgCluster::start_default();
    create_slot(&pg, "one");
    let proxy = FaultProxy::start(pg.port());
    // "one" cannot finish its first attempt while the proxy forwards nothing: no READY=1 yet.
    proxy.stall();
    let (d1, d2, d3) = (archive_dir(), archive_dir(), archive_dir());
    let via_proxy = format!(
        "host=127.0.0.1 port={} user=postgres connect_timeout=300",
        proxy.port()
    );
    let one = source("one", &via_proxy, d1.path(), Some("one"), "");
    let conf = ConfigFile::new(&one);
    let (notes, _sockdir, socket) = Notes::listen_fresh();
    let mut cmd = Walsink::cmd(["run", "-c", conf.path().to_str().unwrap()]);
    cmd.env("NOTIFY_SOCKET", &socket);
    let mut ws = WalsinkProcess::spawn_command(cmd);
    assert!(
        ws.wait_for_stderr("walsink daemon starting", WAIT),
        "{}",
        ws.stderr_text()
    );
    reload(&mut ws, 1);
    proxy.resume();
    let ready = notes.wait(&ws, 0, "READY=1", |l| l == "READY=1");
    assert!(
        notes.all()[..ready]
            .iter()
            .all(|(_, d)| !d.contains("RELOADING=1")),
        "a reload announced before the service was ready: {:#?}",
        notes.all()
    );
    let one_pid = wait_streaming(&pg, &mut ws, "one");

    // A new source: RELOADING=1 with the time the reload began, then READY=1 with it in STATUS=.
    conf.write(&format!(
        "{one}{}",
        source("two", &pg.conninfo(), d2.path(), None, "")
    ));
    let before = monotonic_usec();
    let at = notes.count();
    reload(&mut ws, 2);
    let reloading = notes.wait(&ws, at, "RELOADING=1", |l| l == "RELOADING=1");
    let after = monotonic_usec();
    let d = notes.all()[reloading].1.clone();
    let usec: i128 = field(&d, "MONOTONIC_USEC=")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("RELOADING=1 without a MONOTONIC_USEC: {d:?}"));
    assert!(
        before <= usec && usec <= after,
        "MONOTONIC_USEC={usec} is not between {before} and {after}, read before SIGHUP and after the datagram"
    );
    let ready = notes.wait(&ws, reloading + 1, "READY=1", |l| l == "READY=1");
    let d = notes.all()[ready].1.clone();
    assert!(
        field(&d, "STATUS=").is_some_and(|s| s.contains("one: streaming") && s.contains("two: ")),
        "READY=1 after a reload carries the new STATUS: {d:?}"
    );
    let two_pid = wait_streaming(&pg, &mut ws, "two");

    // A third source on the slot of "one" (the same server: same host and port): refused, logged, and
    // the running sources keep their connections; READY=1 all the same.
    conf.write(&format!(
        "{one}{}{}",
        source("two", &pg.conninfo(), d2.path(), None, ""),
        source("three", &via_proxy, d3.path(), Some("one"), "")
    ));
    let at = notes.count();
    reload(&mut ws, 3);
    let log = ws.stderr_text();
    let needle = format!(
        "source \"three\": slot: replication slot \"one\" of the server at \"127.0.0.1\", port {} is also the slot of source \"one\" (line 2)",
        proxy.port()
    );
    assert!(log.contains(&needle), "{log}");
    assert!(
        log.contains("the new configuration is invalid; keeping the running one"),
        "{log}"
    );
    let reloading = notes.wait(&ws, at, "RELOADING=1", |l| l == "RELOADING=1");
    let ready = notes.wait(&ws, reloading + 1, "READY=1", |l| l == "READY=1");
    assert!(
        field(&notes.all()[ready].1, "STATUS=").is_some_and(|s| !s.contains("three")),
        "{:#?}",
        notes.all()[ready]
    );
    assert_eq!(walsender_pid(&pg, "one").as_deref(), Some(one_pid.as_str()));
    assert_eq!(walsender_pid(&pg, "two").as_deref(), Some(two_pid.as_str()));
    assert!(archive::list(d3.path()).is_empty());
    stop_ok(&mut ws);
}
