//! Log formats: `--log-format json` writes one JSON object per line, for `walsink receive` as for
//! `walsink run`; under journald (`JOURNAL_STREAM` set, as systemd sets it for a service whose
//! stderr is the journal) no line carries a timestamp of walsink's own, in either format, because
//! the journal stamps every line. As `pg_receivewal`, walsink keeps pg_receivewal's message form
//! and refuses `--log-format`.

use std::process::Command;

use serde_json::Value;

use crate::harness::{PgCluster, WAIT, Walsink, WalsinkProcess, archive_dir};

/// What systemd puts in `JOURNAL_STREAM` (device:inode of the journal's stream socket).
const JOURNAL: &str = "8:12345";

/// Runs `cmd` until it has logged that streaming started, stops it with SIGINT (exit 0), and
/// returns its stderr.
fn log_of_a_stream(cmd: Command) -> String {
    let mut w = WalsinkProcess::spawn_command(cmd);
    assert!(
        w.wait_for_stderr("starting log streaming", WAIT),
        "{}",
        w.stderr_text()
    );
    let status = w.interrupt_and_wait(WAIT);
    assert!(status.success(), "{status}: {}", w.stderr_text());
    w.stderr_text()
}

/// Every line of `log` as a JSON object with a level and a message; at least `min` lines.
fn json_lines(log: &str, min: usize) -> Vec<serde_json::Map<String, Value>> {
    let lines: Vec<_> = log
        .lines()
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(o)) => o,
            other => panic!("not a JSON object ({other:?}): {l}\nin:\n{log}"),
        })
        .collect();
    assert!(lines.len() >= min, "{} lines:\n{log}", lines.len());
    for o in &lines {
        assert!(
            o.get("level").is_some_and(Value::is_string)
                && o.get("fields")
                    .and_then(|f| f.get("message"))
                    .is_some_and(Value::is_string),
            "a line without level or fields.message: {o:?}"
        );
    }
    lines
}

/// `walsink receive` from `pg` into a fresh archive with `extra` flags, `-v`, and `JOURNAL_STREAM`
/// set to `journal` (removed when `None`, whatever the tests' own environment has).
fn receive(pg: &PgCluster, extra: &[&str], journal: Option<&str>) -> (Command, tempfile::TempDir) {
    let dir = archive_dir();
    let mut cmd = Walsink::cmd(["receive", "-v", "-d", &pg.conninfo(), "-D"]);
    cmd.arg(dir.path()).args(extra);
    match journal {
        Some(j) => cmd.env("JOURNAL_STREAM", j),
        None => cmd.env_remove("JOURNAL_STREAM"),
    };
    (cmd, dir)
}

#[test]
fn receive_writes_json_lines_and_no_timestamps_under_journald() {
    let pg = PgCluster::start_default();

    // JSON under journald: every line an object, none with a timestamp.
    let (cmd, _dir) = receive(&pg, &["--log-format", "json"], Some(JOURNAL));
    let log = log_of_a_stream(cmd);
    let lines = json_lines(&log, 2);
    for o in &lines {
        assert!(
            !o.contains_key("timestamp"),
            "a timestamp under journald: {o:?}"
        );
    }
    let message =
        |o: &serde_json::Map<String, Value>| o["fields"]["message"].as_str().unwrap().to_owned();
    assert!(
        lines
            .iter()
            .any(|o| message(o).starts_with("starting log streaming at ") && o["level"] == "INFO"),
        "{log}"
    );

    // The same without journald: each line has its timestamp.
    let (cmd, _dir) = receive(&pg, &["--log-format", "json"], None);
    let log = log_of_a_stream(cmd);
    for o in json_lines(&log, 2) {
        assert!(
            o.get("timestamp").is_some_and(Value::is_string),
            "no timestamp outside journald: {o:?}"
        );
    }

    // Text under journald, the default format: each line starts with its level, no timestamp.
    for extra in [&[][..], &["--log-format", "text"][..]] {
        let (cmd, _dir) = receive(&pg, extra, Some(JOURNAL));
        let log = log_of_a_stream(cmd);
        assert!(log.lines().count() >= 2, "{log}");
        for line in log.lines() {
            let first = line.split_whitespace().next().unwrap_or_default();
            assert!(
                ["INFO", "WARN", "ERROR", "DEBUG", "TRACE"].contains(&first),
                "{extra:?}: a line that does not start with its level: {line}\n{log}"
            );
        }
    }
    // Outside journald, text lines start with a timestamp (so the check above can fail).
    let (cmd, _dir) = receive(&pg, &[], None);
    let log = log_of_a_stream(cmd);
    assert!(
        log.lines().all(|l| l
            .split_whitespace()
            .next()
            .is_some_and(|t| t.contains('T') && t.ends_with('Z'))),
        "{log}"
    );
}

/// `walsink run --log-format json` under journald: JSON lines with the source's name, no timestamps.
#[test]
fn the_daemon_writes_json_lines_without_timestamps_under_journald() {
    let pg = PgCluster::start_default();
    let dir = archive_dir();
    let conf = tempfile::Builder::new()
        .prefix("wsk-conf")
        .tempdir_in("/tmp")
        .unwrap();
    let path = conf.path().join("walsink.toml");
    std::fs::write(
        &path,
        format!(
            "[[source]]\nname = \"db1\"\nconninfo = \"{}\"\ndirectory = \"{}\"\n",
            pg.conninfo(),
            dir.path().display()
        ),
    )
    .unwrap();
    let mut cmd = Walsink::cmd([
        "run",
        "-v",
        "-c",
        path.to_str().unwrap(),
        "--log-format",
        "json",
    ]);
    cmd.env("JOURNAL_STREAM", JOURNAL);
    let mut w = WalsinkProcess::spawn_command(cmd);
    assert!(
        w.wait_for_stderr("starting log streaming", WAIT),
        "{}",
        w.stderr_text()
    );
    w.terminate();
    assert!(w.wait_timeout(WAIT).success(), "{}", w.stderr_text());
    let log = w.stderr_text();
    let lines = json_lines(&log, 3);
    for o in &lines {
        assert!(
            !o.contains_key("timestamp"),
            "a timestamp under journald: {o:?}"
        );
    }
    assert!(
        lines.iter().any(|o| o["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("starting log streaming at "))
            && o["span"]["source"] == "db1"),
        "{log}"
    );
}

/// As pg_receivewal, walsink writes pg_receivewal's message form only: `--log-format` is refused
/// with a usage error (exit 2) and is not in its help.
#[test]
fn pg_receivewal_refuses_log_format() {
    let link = crate::harness::PgReceivewalLink::new();
    let dir = archive_dir();
    let out = link.run(
        ["-D", dir.path().to_str().unwrap(), "--log-format", "json"],
        WAIT,
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "pg_receivewal: error: --log-format is a flag of walsink receive: as pg_receivewal, walsink writes pg_receivewal's message form\n\
         pg_receivewal: hint: Try \"pg_receivewal --help\" for more information.\n"
    );
    let help = link.run(["--help"], WAIT);
    assert!(help.status.success());
    assert!(!String::from_utf8_lossy(&help.stdout).contains("--log-format"));
    let help = Walsink::run(["receive", "--help"], WAIT);
    assert!(String::from_utf8_lossy(&help.stdout).contains("--log-format <FORMAT>"));
}
