//! Running as a service: Prometheus metrics and the health check (`--metrics-listen`), checked
//! against the server's own view, by `promtool` and by a real Prometheus server; the systemd notify
//! protocol, against a datagram socket playing systemd; and the units in contrib/systemd, checked by
//! `systemd-analyze verify`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::proxy::FaultProxy;
use crate::harness::{
    PgCluster, StopMode, WAIT, Walsink, WalsinkProcess, archive_dir, parse_lsn, wait_for,
};

/// `GET path` from `addr`; the status code and the body.
pub(crate) fn http_get(addr: &str, path: &str) -> (u16, String) {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// `GET path` from `addr`, or why not.
fn try_http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {raw:?}")))?;
    Ok((code, body.to_string()))
}

/// The value of `metric{source="NAME"}` in Prometheus text.
pub(crate) fn metric(text: &str, metric: &str, source: &str) -> Option<f64> {
    let prefix = format!("{metric}{{source=\"{source}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
}

/// Starts `walsink receive` from `pg` (slot `svc`, see [`receive_args`]) into `dir` with
/// `--metrics-listen 127.0.0.1:0` and returns it with the address it serves.
fn receive_with_metrics(pg: &PgCluster, dir: &Path) -> (WalsinkProcess, String) {
    let conn = pg.conninfo();
    let mut args = receive_args(&conn, dir, "4s");
    args.extend(["--metrics-listen", "127.0.0.1:0"]);
    let mut w = Walsink::spawn(args);
    let addr = metrics_addr(&mut w);
    (w, addr)
}

/// The address walsink serves metrics at (host:port), once it has logged it.
pub(crate) fn metrics_addr(w: &mut WalsinkProcess) -> String {
    assert!(
        w.wait_for_stderr("serving metrics at http://", WAIT),
        "no metrics address logged; stderr:\n{}",
        w.stderr_text()
    );
    w.stderr_text()
        .split("serving metrics at http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap()
        .to_string()
}

/// A server with the physical replication slot `svc` that [`receive_args`] names.
fn server_with_slot(pg: PgCluster) -> PgCluster {
    pg.execute("SELECT pg_create_physical_replication_slot('svc', true)");
    pg
}

/// The source name `walsink receive` gives an archive directory in metrics and statuses: its
/// last component.
pub(crate) fn source_name(dir: &Path) -> String {
    dir.file_name().unwrap().to_str().unwrap().to_string()
}

fn receive_args<'a>(conn: &'a str, dir: &'a Path, receive_timeout: &'a str) -> Vec<&'a str> {
    vec![
        "receive",
        "-D",
        dir.to_str().unwrap(),
        "-d",
        conn,
        "-S",
        "svc",
        "-s",
        "1",
        "--receive-timeout",
        receive_timeout,
        "-v",
    ]
}

/// The server's view of walsink's walsender: (sent_lsn, flush_lsn).
pub(crate) fn server_view(pg: &PgCluster) -> Option<(u64, u64)> {
    let rows = pg.sql(
        "SELECT sent_lsn::text, flush_lsn::text FROM pg_stat_replication WHERE flush_lsn IS NOT NULL",
    );
    let row = rows.into_iter().next()?;
    Some((parse_lsn(row[0].as_deref()?), parse_lsn(row[1].as_deref()?)))
}

/// Waits until the server sees everything it sent, up to at least its current position,
/// reported flushed by a status update (and nothing more is coming); the flush position.
fn wait_all_sent_reported_flushed(pg: &PgCluster, w: &WalsinkProcess) -> u64 {
    let target = parse_lsn(&pg.current_lsn());
    assert!(
        wait_for(
            || server_view(pg).is_some_and(|(sent, flush)| flush >= target && flush == sent),
            WAIT
        ),
        "the server never saw the flush reach {target:X}: {:?}; stderr:\n{}",
        server_view(pg),
        w.stderr_text()
    );
    server_view(pg).unwrap().1
}

#[test]
fn metrics_match_the_servers_view_promtool_accepts_them_and_health_follows_the_server() {
    let pg = server_with_slot(PgCluster::start_default());
    let dir = archive_dir();
    let name = source_name(dir.path());
    let (mut w, addr) = receive_with_metrics(&pg, dir.path());

    pg.generate_wal(3 << 20);
    pg.switch_wal();
    pg.generate_wal(100_000);
    let server_flush = wait_all_sent_reported_flushed(&pg, &w);
    let (code, text) = http_get(&addr, "/metrics");
    assert_eq!(code, 200, "{text}");
    let m = |k: &str| {
        metric(&text, k, &name).unwrap_or_else(|| panic!("no {k} for {name} in:\n{text}"))
    };
    assert_eq!(
        m("walsink_flushed_lsn") as u64,
        server_flush,
        "walsink_flushed_lsn is what pg_stat_replication.flush_lsn shows"
    );
    assert_eq!(m("walsink_received_lsn") as u64, server_flush);
    assert!(m("walsink_server_wal_end_lsn") as u64 >= server_flush);
    assert_eq!(m("walsink_up"), 1.0);
    assert!(m("walsink_segments_completed_total") >= 1.0, "{text}");
    assert!(
        m("walsink_bytes_received_total") >= (3 << 20) as f64,
        "{text}"
    );
    assert!(m("walsink_disk_free_bytes") > 0.0, "{text}");
    assert!(m("walsink_last_message_age_seconds") < 10.0, "{text}");
    assert_eq!(m("walsink_reconnects_total"), 0.0);
    let fsyncs = m("walsink_fsync_duration_seconds_count");
    assert!(
        fsyncs >= 1.0,
        "every completed segment was fdatasync'ed: {text}"
    );

    // promtool, as Prometheus' own linter, accepts the exposition.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus, scripts/install-deps.sh)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let (code, body) = http_get(&addr, "/health");
    assert_eq!((code, body.as_str()), (200, "ok\n"));

    // The server goes away: walsink reconnects, which /health reports as failing.
    pg.stop(StopMode::Immediate);
    let mut last = (0, String::new());
    assert!(
        wait_for(
            || {
                last = http_get(&addr, "/health");
                last.0 == 503
            },
            WAIT
        ),
        "health stayed {last:?}"
    );
    assert!(
        last.1.starts_with(&format!("{name}: reconnecting: ")) && last.1.lines().count() == 1,
        "one line naming the source and why: {:?}",
        last.1
    );
    let (_, text) = http_get(&addr, "/metrics");
    assert_eq!(metric(&text, "walsink_up", &name), Some(0.0), "{text}");
    // Anything but GET/HEAD on a known path is refused; unknown paths are 404.
    assert_eq!(http_get(&addr, "/nope").0, 404);
    assert!(w.interrupt_and_wait(WAIT).success(), "{}", w.stderr_text());
}

#[test]
fn hostile_metrics_clients_do_not_stall_streaming() {
    let pg = server_with_slot(PgCluster::start_default());
    let dir = archive_dir();
    let (mut w, addr) = receive_with_metrics(&pg, dir.path());
    assert!(wait_for(|| server_view(&pg).is_some(), WAIT));

    // More silent connections than are served at once, and one with an endless header.
    let silent: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let mut flood = TcpStream::connect(&addr).unwrap();
    flood
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Long: ")
        .unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut refused = false;
    for _ in 0..64 {
        if flood.write_all(&chunk).is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused, "a 4 MiB header was accepted");

    // Meanwhile WAL keeps streaming and is reported flushed.
    let target = parse_lsn(&pg.generate_wal(2 << 20));
    assert!(
        wait_for(|| server_view(&pg).is_some_and(|(_, f)| f >= target), WAIT),
        "streaming stalled behind hostile metrics clients; stderr:\n{}",
        w.stderr_text()
    );
    // The silent ones are dropped after the header timeout, and scrapes work again.
    let start = Instant::now();
    let mut code = 0;
    assert!(
        wait_for(
            || {
                code = try_http_get(&addr, "/health").map_or(0, |r| r.0);
                code == 200
            },
            WAIT
        ),
        "/health never answered 200 again (last {code}) after {:?}",
        start.elapsed()
    );
    drop(silent);
    assert!(w.interrupt_and_wait(WAIT).success(), "{}", w.stderr_text());
}

#[test]
fn a_real_prometheus_server_scrapes_walsink() {
    let pg = server_with_slot(PgCluster::start_default());
    let dir = archive_dir();
    let name = source_name(dir.path());
    let (mut w, addr) = receive_with_metrics(&pg, dir.path());
    pg.generate_wal(1 << 20);
    let flush = wait_all_sent_reported_flushed(&pg, &w);

    let prom = tempfile::Builder::new()
        .prefix("wsk-prom")
        .tempdir_in("/tmp")
        .unwrap();
    let config = prom.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: walsink\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", crate::harness::pg::free_port());
    let mut server = WalsinkProcess::spawn_command({
        let mut c = Command::new("prometheus");
        c.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null());
        c
    });
    let query = "/api/v1/query?query=walsink_flushed_lsn";
    let mut last = String::new();
    let found = wait_for(
        || {
            last = try_http_get(&web, query).map(|r| r.1).unwrap_or_default();
            last.contains(&format!("\"source\":\"{name}\""))
                && last.contains(&format!("\"{flush}\""))
        },
        Duration::from_secs(60),
    );
    server.terminate();
    assert!(
        found,
        "Prometheus never returned walsink_flushed_lsn = {flush} for {name}: {last}\nprometheus log:\n{}",
        server.stderr_text()
    );
    assert!(w.interrupt_and_wait(WAIT).success(), "{}", w.stderr_text());
}

/// Datagrams received on a socket playing systemd's notify socket, with arrival times.
#[derive(Clone, Default)]
pub(crate) struct Notes(Arc<Mutex<Vec<(Instant, String)>>>);

impl Notes {
    /// Listens on a socket `notify` in a fresh directory under `/tmp` (a short path: a
    /// socket's is at most 107 bytes); returns the notes, the directory (removed when
    /// dropped) and the socket's path, for `NOTIFY_SOCKET`.
    pub(crate) fn listen_fresh() -> (Notes, tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("wsk-sd")
            .tempdir_in("/tmp")
            .unwrap();
        let socket = dir.path().join("notify");
        (Notes::listen(&socket), dir, socket)
    }

    pub(crate) fn listen(path: &Path) -> Notes {
        let sock = UnixDatagram::bind(path).unwrap();
        let notes = Notes::default();
        let n = notes.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            while let Ok(len) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                n.0.lock().unwrap().push((Instant::now(), text));
            }
        });
        notes
    }

    pub(crate) fn all(&self) -> Vec<(Instant, String)> {
        self.0.lock().unwrap().clone()
    }

    pub(crate) fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The index of the first datagram from `from` on with a line satisfying `pred`.
    pub(crate) fn find(&self, from: usize, pred: impl Fn(&str) -> bool) -> Option<usize> {
        self.all()
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, (_, d))| d.lines().any(&pred))
            .map(|(i, _)| i)
    }

    pub(crate) fn wait(
        &self,
        w: &WalsinkProcess,
        from: usize,
        what: &str,
        pred: impl Fn(&str) -> bool + Copy,
    ) -> usize {
        let mut at = None;
        assert!(
            wait_for(
                || {
                    at = self.find(from, pred);
                    at.is_some()
                },
                WAIT
            ),
            "no {what} after datagram {from}: {:#?}\nwalsink stderr:\n{}",
            self.all().iter().map(|(_, d)| d).collect::<Vec<_>>(),
            w.stderr_text()
        );
        at.unwrap()
    }
}

pub(crate) fn has_watchdog(d: &str) -> bool {
    d.lines().any(|l| l == "WATCHDOG=1")
}

#[test]
fn systemd_notify_ready_status_watchdog_only_while_healthy_and_stopping() {
    let pg = server_with_slot(PgCluster::start_default());
    let proxy = FaultProxy::start(pg.port());
    let dir = archive_dir();
    let name = source_name(dir.path());
    let (notes, _sockdir, socket) = Notes::listen_fresh();
    let conn = format!("host=127.0.0.1 port={} user=postgres", proxy.port());
    // Pings every 250 ms while healthy; a silent server is given up on after 2 s.
    let mut cmd = Walsink::cmd(receive_args(&conn, dir.path(), "2s"));
    cmd.env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "500000");
    let mut w = WalsinkProcess::spawn_command(cmd);

    let ready = notes.wait(&w, 0, "READY=1", |l| l == "READY=1");
    let streaming = format!("STATUS={name}: streaming, flushed ");
    assert!(
        notes
            .find(0, |l| l.starts_with(&streaming))
            .is_some_and(|i| i <= ready),
        "READY=1 comes once streaming, with the status: {:#?}",
        notes.all()
    );
    let first_ping = notes.wait(&w, ready, "WATCHDOG=1", |l| l == "WATCHDOG=1");
    pg.generate_wal(1 << 20);
    let flushed = parse_lsn(&pg.current_lsn());
    // STATUS= carries the flushed position as it advances.
    notes.wait(&w, first_ping, "STATUS with the new flush position", |l| {
        l.strip_prefix(&streaming)
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|lsn| parse_lsn(lsn) >= flushed)
    });

    // The server goes silent: once the receive timeout passes, pings stop.
    let stalled_at = notes.count();
    proxy.stall();
    // A healthy source's status is "NAME: streaming, flushed LSN"; anything else carries the
    // phase or the problem ("(no message from the server for ...)", "reconnecting, ... (why)").
    let healthy = |l: &str| l.starts_with(&streaming) && !l.contains('(');
    let unhealthy = notes.wait(&w, stalled_at, "a status showing the dead stream", |l| {
        l.starts_with("STATUS=") && !healthy(l)
    });
    // Several watchdog periods pass (each sends a STATUS=) without a ping.
    let mut quiet = 0;
    assert!(
        wait_for(
            || {
                let all = notes.all();
                quiet = all[unhealthy..]
                    .iter()
                    .take_while(|(_, d)| !has_watchdog(d))
                    .count();
                quiet >= 6
            },
            WAIT
        ),
        "pings went on while the server was stalled: {:#?}",
        notes.all()[stalled_at..]
            .iter()
            .map(|(_, d)| d)
            .collect::<Vec<_>>()
    );
    // No datagram that pinged showed an unhealthy source.
    for (_, d) in notes.all() {
        if has_watchdog(&d) {
            assert!(
                d.lines().any(healthy),
                "a ping with an unhealthy status: {d:?}"
            );
        }
    }

    // The server answers again: streaming resumes and so do the pings.
    let resumed_at = notes.count();
    proxy.resume();
    let back = notes.wait(&w, resumed_at, "a ping after the stall", |l| {
        l == "WATCHDOG=1"
    });
    assert!(
        notes.all()[back]
            .1
            .lines()
            .any(|l| l.starts_with(&streaming)),
        "{:?}",
        notes.all()[back]
    );

    let before_stop = notes.count();
    w.terminate();
    assert!(w.wait_timeout(WAIT).success(), "{}", w.stderr_text());
    notes.wait(&w, before_stop, "STOPPING=1", |l| l == "STOPPING=1");
    drop(proxy);
}

/// `walsink run`: READY=1 once every source has made its first attempt, STATUS= and /health name each
/// source, metrics carry every source's label, STOPPING=1 on SIGTERM.
#[test]
fn the_daemon_notifies_and_serves_metrics_for_every_source() {
    let pg = server_with_slot(PgCluster::start_default());
    let (good, dead) = (archive_dir(), archive_dir());
    let dead_port = crate::harness::pg::free_port();
    let conf = tempfile::Builder::new()
        .prefix("wsk-conf")
        .tempdir_in("/tmp")
        .unwrap();
    let path = conf.path().join("walsink.toml");
    std::fs::write(
        &path,
        format!(
            "metrics_listen = \"127.0.0.1:0\"\n\
             [[source]]\nname = \"good\"\nconninfo = \"{}\"\ndirectory = \"{}\"\nslot = \"svc\"\nstatus_interval = \"1s\"\n\
             [[source]]\nname = \"dead\"\nconninfo = \"host=127.0.0.1 port={dead_port} user=postgres\"\ndirectory = \"{}\"\n",
            pg.conninfo(),
            good.path().display(),
            dead.path().display()
        ),
    )
    .unwrap();
    let (notes, _sockdir, socket) = Notes::listen_fresh();
    let mut cmd = Walsink::cmd(["run", "-c", path.to_str().unwrap()]);
    cmd.env("NOTIFY_SOCKET", &socket);
    let mut w = WalsinkProcess::spawn_command(cmd);
    let ready = notes.wait(&w, 0, "READY=1", |l| l == "READY=1");
    let status = notes.all()[..=ready]
        .iter()
        .rev()
        .find_map(|(_, d)| {
            d.lines()
                .find(|l| l.starts_with("STATUS="))
                .map(str::to_owned)
        })
        .unwrap_or_default();
    assert!(
        status.starts_with("STATUS=dead: reconnecting, flushed 0/0 (")
            && !status.contains("good: connecting"),
        "READY=1 once both made their first attempt: {status:?}"
    );
    let addr = metrics_addr(&mut w);
    let target = parse_lsn(&pg.generate_wal(1 << 20));
    assert!(wait_for(
        || server_view(&pg).is_some_and(|(_, f)| f >= target),
        WAIT
    ));
    let (code, body) = http_get(&addr, "/health");
    assert_eq!(code, 503);
    assert!(
        body.starts_with("dead: reconnecting: ") && body.lines().count() == 1,
        "only the dead source fails: {body:?}"
    );
    let (_, text) = http_get(&addr, "/metrics");
    assert_eq!(metric(&text, "walsink_up", "good"), Some(1.0), "{text}");
    assert_eq!(metric(&text, "walsink_up", "dead"), Some(0.0), "{text}");
    assert!(metric(&text, "walsink_flushed_lsn", "good").unwrap() as u64 >= target);
    let before_stop = notes.count();
    w.terminate();
    assert!(w.wait_timeout(WAIT).success(), "{}", w.stderr_text());
    notes.wait(&w, before_stop, "STOPPING=1", |l| l == "STOPPING=1");
}

/// A full disk fails the health check but does not stop the watchdog: the writer waits for space and
/// resumes by itself (a restart would find the disk as full).
#[test]
fn a_full_disk_fails_health_but_the_watchdog_keeps_pinging() {
    let Some(small) = crate::gaps::small_fs_or_skip(12) else {
        return;
    };
    let pg = server_with_slot(PgCluster::builder().setting("wal_keep_size", "1GB").start());
    let dir = small.mount_point.join("archive");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let (notes, _sockdir, socket) = Notes::listen_fresh();
    let conn = pg.conninfo();
    let mut args = receive_args(&conn, &dir, "10s");
    args.extend(["--metrics-listen", "127.0.0.1:0"]);
    let mut cmd = Walsink::cmd(args);
    cmd.env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "500000");
    let mut w = WalsinkProcess::spawn_command(cmd);
    let addr = metrics_addr(&mut w);
    notes.wait(&w, 0, "READY=1", |l| l == "READY=1");

    let filler = small.mount_point.join("filler");
    assert!(crate::gaps::fill(&filler) > 0);
    pg.generate_wal(4 << 20);
    assert!(
        w.wait_for_stderr("disk full: pausing WAL writes", WAIT),
        "{}",
        w.stderr_text()
    );
    let mut last = (0, String::new());
    assert!(
        wait_for(
            || {
                last = http_get(&addr, "/health");
                last.0 == 503
            },
            WAIT
        ),
        "health stayed {last:?}"
    );
    assert_eq!(last.1, "archive: disk full: WAL writes paused\n");
    // Pings go on, with the status saying why the source is not healthy.
    let paused = notes.count();
    let disk_full_ping = |d: &str| {
        has_watchdog(d)
            && d.lines().any(|l| {
                l.starts_with("STATUS=archive: streaming, flushed ")
                    && l.ends_with("(disk full: WAL writes paused)")
            })
    };
    assert!(
        wait_for(
            || notes.all()[paused..].iter().any(|(_, d)| disk_full_ping(d)),
            WAIT
        ),
        "no ping while the disk is full: {:#?}",
        notes.all()[paused..]
            .iter()
            .map(|(_, d)| d)
            .collect::<Vec<_>>()
    );

    std::fs::remove_file(&filler).unwrap();
    assert!(
        wait_for(|| http_get(&addr, "/health").0 == 200, WAIT),
        "{}",
        w.stderr_text()
    );
    assert!(w.interrupt_and_wait(WAIT).success(), "{}", w.stderr_text());
}

/// The units shipped in contrib/systemd pass `systemd-analyze verify`, with the binary and the
/// files they name present in a root directory made for it.
#[test]
fn contrib_systemd_units_pass_systemd_analyze_verify() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let units = repo.join("contrib/systemd");
    let root = tempfile::Builder::new()
        .prefix("wsk-root")
        .tempdir_in("/tmp")
        .unwrap();
    let r = root.path();
    for d in [
        "usr/bin",
        "usr/lib/systemd",
        "bin",
        "etc/systemd/system",
        "etc/walsink",
    ] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    // The units they depend on (sysinit.target, ...): a copy of the host's.
    let cp = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(r.join("usr/lib/systemd/system"))
        .status()
        .unwrap();
    assert!(cp.success(), "copying /usr/lib/systemd/system");
    std::fs::copy(Walsink::bin(), r.join("usr/bin/walsink")).unwrap();
    std::fs::copy("/bin/kill", r.join("bin/kill")).unwrap();
    let mut names = Vec::new();
    for e in std::fs::read_dir(&units).unwrap() {
        let p = e.unwrap().path();
        let n = p.file_name().unwrap().to_str().unwrap().to_string();
        if n.ends_with(".service") {
            std::fs::copy(&p, r.join("etc/systemd/system").join(&n)).unwrap();
            names.push(n);
        }
    }
    names.sort();
    assert_eq!(names, ["walsink.service", "walsink@.service"]);
    let mut env = HashMap::new();
    env.insert("SYSTEMD_LOG_LEVEL", "notice");
    for n in ["walsink.service", "walsink@db1.service"] {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", r.display()))
            .arg(n)
            .envs(&env)
            .output()
            .expect("systemd-analyze (scripts/install-deps.sh installs systemd)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "systemd-analyze verify {n}: {}\n{stderr}",
            out.status
        );
    }
}
