//! `walsink status`: what an archive holds, against what walsink streamed from a real server, and with `-d`
//! the server's position and the archive's lag.

use std::time::SystemTime;

use serde_json::Value;

use crate::harness::{
    PgCluster, WAIT, Walsink, archive, archive_dir, create_slot, parse_lsn, wait_for,
};

/// `walsink status --json` (plus `extra`) of `dir`; panics unless it exits 0.
fn status_json(dir: &std::path::Path, extra: &[&str]) -> Value {
    let mut cmd = Walsink::cmd(["status", "--json", "-D"]);
    cmd.arg(dir).args(extra);
    let out = Walsink::run_command(cmd, WAIT);
    assert!(
        out.status.success(),
        "walsink status failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "walsink status --json printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn lsn(v: &Value) -> u64 {
    parse_lsn(
        v.as_str()
            .unwrap_or_else(|| panic!("not an LSN string: {v}")),
    )
}

/// A streaming walsink's archive: one timeline from the first segment streamed, every completed segment
/// counted, the `.partial` filled to the end of the WAL walsink flushed; then, with walsink stopped
/// and more WAL on the server, the lag in bytes is exactly the server's position minus the archive's end.
#[test]
fn status_reports_timeline_partial_fill_and_lag_behind_the_server() {
    let pg = PgCluster::start_default();
    let dir = archive_dir();
    create_slot(&pg, "walsink");
    let mut ws = Walsink::spawn([
        "receive",
        "-D",
        dir.path().to_str().unwrap(),
        "-d",
        &pg.conninfo(),
        "-S",
        "walsink",
        "-s",
        "1",
    ]);
    let streamed_at = std::time::Instant::now();
    pg.generate_wal(3 << 20);
    let target = parse_lsn(&pg.current_lsn());
    let flushed = || {
        pg.sql_one(
            "SELECT flush_lsn::text FROM pg_stat_replication WHERE application_name = 'walsink'",
        )
        .is_some_and(|l| parse_lsn(&l) >= target)
    };
    assert!(
        wait_for(flushed, WAIT),
        "walsink did not flush up to the server's position:\n{}",
        ws.stderr_text()
    );

    let s = status_json(dir.path(), &["-d", &pg.conninfo()]);
    assert_eq!(
        s["system_identifier"].as_str(),
        Some(pg.system_identifier().to_string().as_str())
    );
    assert_eq!(s["pinned"], Value::Bool(true));
    assert_eq!(s["wal_segment_size"].as_u64(), Some(1 << 20));
    let tls = s["timelines"].as_array().unwrap();
    assert_eq!(tls.len(), 1, "{s:#}");
    let t = &tls[0];
    assert_eq!(t["timeline"].as_u64(), Some(1));
    assert_eq!(
        t["segments"].as_u64(),
        Some(archive::completed_segments(dir.path()).len() as u64)
    );
    assert!(t["missing"].as_array().unwrap().is_empty());
    // The first LSN is the start of the oldest segment file; the size on disk is what the timeline's WAL
    // files take (allocated blocks, as `du` counts them).
    let mut wal_files: Vec<String> = archive::completed_segments(dir.path());
    wal_files.extend(archive::partial_segments(dir.path()));
    wal_files.sort();
    let first_seg = u64::from_str_radix(&wal_files[0][8..16], 16).unwrap() * 4096
        + u64::from_str_radix(&wal_files[0][16..24], 16).unwrap();
    assert_eq!(lsn(&t["first_lsn"]), first_seg << 20, "{s:#}");
    let on_disk: u64 = wal_files
        .iter()
        .map(|f| {
            std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(dir.path().join(f)).unwrap())
                * 512
        })
        .sum();
    assert_eq!(t["bytes_on_disk"].as_u64(), Some(on_disk), "{wal_files:?}");
    let partials = archive::partial_segments(dir.path());
    assert_eq!(t["partial"]["file"].as_str(), Some(partials[0].as_str()));
    let server = &s["server"];
    let pos = lsn(&server["lsn"]);
    let end = lsn(&t["end_lsn"]);
    // The archive's end is where its last record ends: at least what walsink reported flushed, at most
    // the server's position (which background WAL may have moved on since).
    assert!(
        end >= target && end <= pos,
        "archive end {end:#x}, flushed {target:#x}, server position {pos:#x}"
    );
    assert_eq!(server["lag_bytes"].as_u64(), Some(pos - end));
    if pos == end {
        assert_eq!(server["lag_seconds"].as_f64(), Some(0.0));
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let server_time = server["server_time_unix"]
        .as_f64()
        .expect("the server's clock");
    assert!(
        (server_time - now).abs() < 60.0,
        "server clock {server_time}, ours {now}"
    );

    // walsink stopped: the server moves on, the archive does not.
    ws.interrupt_and_wait(WAIT);
    let stopped = std::time::Instant::now();
    let before = parse_lsn(&pg.current_lsn());
    let after = parse_lsn(&pg.generate_wal(2 << 20));
    // A known time without WAL reaching the archive: the lag in seconds is at least that long.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let idle = stopped.elapsed().as_secs_f64();
    let s = status_json(dir.path(), &["-d", &pg.conninfo()]);
    let since_stream = streamed_at.elapsed().as_secs_f64();
    let server = &s["server"];
    let end = lsn(&s["timelines"][0]["end_lsn"]);
    let pos = lsn(&server["lsn"]);
    let lag = server["lag_bytes"].as_u64().expect("lag");
    // The archive holds nothing the server wrote after walsink stopped; the lag is all of that.
    assert!(
        end <= before && pos >= after,
        "archive end {end:#x}, server {before:#x} -> {pos:#x}"
    );
    assert_eq!(lag, pos - end);
    assert!(
        lag >= after - before,
        "lag {lag}, written since {}",
        after - before
    );
    // In seconds: the server's clock against the time the archive last advanced.
    let secs = server["lag_seconds"].as_f64().expect("lag in seconds");
    let server_time = server["server_time_unix"].as_f64().unwrap();
    let written = s["timelines"][0]["modified_unix"].as_f64().unwrap();
    assert!(
        secs > 0.0 && (secs - (server_time - written)).abs() < 0.001,
        "lag {secs} s; server time {server_time}, archive last written {written}"
    );
    // Against elapsed time measured here: the archive last changed before walsink stopped (at least
    // `idle` s before the status), and after the WAL streamed last began (at most `since_stream` s).
    assert!(
        secs >= idle - 0.05 && secs <= since_stream + 0.05,
        "lag {secs} s; walsink stopped {idle:.3} s before the status, the last WAL began {since_stream:.3} s before"
    );

    // The text form says the same, line by line: the archive and its pinned system, the timeline's first
    // and end LSN, completed segments and space on disk, the .partial's fill; then the server.
    let mut cmd = Walsink::cmd(["status", "-D"]);
    cmd.arg(dir.path()).args(["-d", &pg.conninfo()]);
    let out = Walsink::run_command(cmd, WAIT);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let t = &s["timelines"][0];
    let p = &t["partial"];
    let segments = t["segments"].as_u64().unwrap();
    let filled = p["filled_bytes"].as_u64().unwrap();
    assert_eq!(
        filled,
        lsn(&p["end_lsn"]) % (1 << 20),
        "filled to its end: {s:#}"
    );
    let expected = [
        format!("archive \"{}\"", dir.path().display()),
        format!(
            "  database system {}, 1.0 MiB segments (pinned in .walsink.meta)",
            pg.system_identifier()
        ),
        format!(
            "  timeline 1: {} .. {}, {segments} completed segment{}, {:.1} MiB on disk",
            t["first_lsn"].as_str().unwrap(),
            t["end_lsn"].as_str().unwrap(),
            if segments == 1 { "" } else { "s" },
            t["bytes_on_disk"].as_u64().unwrap() as f64 / f64::from(1 << 20)
        ),
        format!(
            "    {}: filled {filled} of 1048576 bytes ({:.1} %), to {}",
            partials[0],
            filled as f64 * 100.0 / 1048576.0,
            p["end_lsn"].as_str().unwrap()
        ),
        format!(
            "server {}: database system {}, timeline 1, position ",
            server["server"].as_str().unwrap(),
            pg.system_identifier()
        ),
        format!(
            "  archive behind by {lag} bytes ({:.1} MiB), ",
            lag as f64 / f64::from(1 << 20)
        ),
    ];
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{text}");
    for (line, want) in lines.iter().zip(&expected) {
        if want.ends_with(' ') {
            assert!(
                line.starts_with(want.as_str()),
                "{line:?} is not {want:?}...:\n{text}"
            );
        } else {
            assert_eq!(line, want, "{text}");
        }
    }
    assert!(lines[5].ends_with(" s"), "the lag in seconds: {text}");
}
