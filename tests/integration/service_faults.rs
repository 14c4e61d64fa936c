//! Running as a service while the fault proxy (harness/proxy.rs) makes a real server's stream
//! stall or break: the metrics' lag, reconnect count and server WAL end; `/health` for a silent
//! server; and the systemd watchdog of `walsink run` when one of its sources goes silent.

use std::path::Path;

use crate::harness::proxy::FaultProxy;
use crate::harness::{
    PgCluster, WAIT, Walsink, WalsinkProcess, archive_dir, create_slot, parse_lsn, wait_for,
};
use crate::service::{Notes, has_watchdog, http_get, metric, metrics_addr, server_view};

/// `walsink receive` through `proxy` from slot `svc` into `dir` (status updates every second),
/// serving metrics; with its metrics address.
fn receive_through(
    proxy: &FaultProxy,
    dir: &Path,
    receive_timeout: &str,
) -> (WalsinkProcess, String) {
    let conn = format!("host=127.0.0.1 port={} user=postgres", proxy.port());
    let mut w = Walsink::spawn([
        "receive",
        "-D",
        dir.to_str().unwrap(),
        "-d",
        &conn,
        "-S",
        "svc",
        "-s",
        "1",
        "--receive-timeout",
        receive_timeout,
        "--metrics-listen",
        "127.0.0.1:0",
        "-v",
    ]);
    let addr = metrics_addr(&mut w);
    (w, addr)
}

/// One scrape's values of the source `name`: (server WAL end, flushed, lag, reconnects).
#[derive(Debug, Clone, Copy, Default)]
struct Scrape {
    wal_end: u64,
    flushed: u64,
    lag: u64,
    reconnects: u64,
    up: bool,
}

fn scrape(addr: &str, name: &str) -> Scrape {
    let (code, text) = http_get(addr, "/metrics");
    assert_eq!(code, 200, "{text}");
    let m = |k: &str| {
        metric(&text, k, name).unwrap_or_else(|| panic!("no {k} for {name} in:\n{text}")) as u64
    };
    Scrape {
        wal_end: m("walsink_server_wal_end_lsn"),
        flushed: m("walsink_flushed_lsn"),
        lag: m("walsink_lag_bytes"),
        reconnects: m("walsink_reconnects_total"),
        up: m("walsink_up") == 1,
    }
}

/// `walsink_lag_bytes` is the server's WAL end minus the flushed position in every scrape: 0 when
/// walsink has everything, more while the server has WAL walsink has heard of (the WAL end in the
/// first messages of a stream) but not received, because the proxy stalls the rest; 0 again once
/// it flows. `walsink_reconnects_total` counts the reconnection after the proxy cuts the
/// connection. Once idle, `walsink_server_wal_end_lsn` is exactly the server's
/// `pg_current_wal_lsn()`.
#[test]
fn lag_reconnects_and_the_servers_wal_end_in_the_metrics() {
    let pg = PgCluster::start_default();
    create_slot(&pg, "svc");
    let proxy = FaultProxy::start(pg.port());
    let dir = archive_dir();
    let name = crate::service::source_name(dir.path());
    // No receive timeout: the stall below must not end in a reconnection of walsink's own.
    let (mut w, addr) = receive_through(&proxy, dir.path(), "0");

    pg.generate_wal(1 << 20);
    let idle = |label: &str| {
        // Idle: everything the server wrote is flushed and the WAL end is the server's.
        let mut last = (Scrape::default(), 0);
        assert!(
            wait_for(
                || {
                    let s = scrape(&addr, &name);
                    let server = parse_lsn(&pg.current_lsn());
                    last = (s, server);
                    s.up && s.wal_end == server && s.flushed == server && s.lag == 0
                },
                WAIT
            ),
            "{label}: never idle at the server's position: (scrape, pg_current_wal_lsn) = {last:?}\n{}",
            w.stderr_text()
        );
        last.0
    };
    let before = idle("streaming");
    assert_eq!(before.reconnects, 0);

    // The connection is cut, and the proxy holds walsink's next one: a reconnection.
    proxy.stall();
    proxy.cut_now();
    let mut last = Scrape::default();
    assert!(
        wait_for(
            || {
                last = scrape(&addr, &name);
                last.reconnects >= 1
            },
            WAIT
        ),
        "no reconnection counted: {last:?}\n{}",
        w.stderr_text()
    );
    assert_eq!(last.reconnects, 1, "one attempt, held by the proxy");
    assert!(!last.up);

    // The server writes 4 MiB meanwhile. walsink's new stream then gets its first messages, whose
    // WAL end is the server's, and only those: lag.
    pg.generate_wal(4 << 20);
    let target = parse_lsn(
        &pg.sql_one("SELECT pg_current_wal_flush_lsn()::text")
            .unwrap(),
    );
    proxy.stall_after(192 << 10);
    assert!(
        wait_for(
            || {
                last = scrape(&addr, &name);
                last.wal_end >= target
            },
            WAIT
        ),
        "the server's WAL end never reached {target:X}: {last:?}\n{}",
        w.stderr_text()
    );
    assert!(
        last.up && last.flushed < target && last.lag == last.wal_end - last.flushed,
        "lag = WAL end - flushed while stalled: {last:?}"
    );
    assert!(last.lag > 0);
    assert_eq!(last.reconnects, 1, "{last:?}");

    // Everything flows again: no lag, and the WAL end is the server's once idle.
    proxy.resume();
    let after = idle("after the stall");
    assert!(after.flushed >= target);
    assert_eq!(after.reconnects, 1, "{after:?}");
    let (code, body) = http_get(&addr, "/health");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    assert!(w.interrupt_and_wait(WAIT).success(), "{}", w.stderr_text());
}

/// A server that goes silent (the proxy forwards nothing, the connection stays open) fails
/// `/health` once the receive timeout has passed: 503 and one line naming the source and the
/// silence. When it answers again, `/health` is 200 again.
#[test]
fn health_fails_for_a_silent_server_and_recovers() {
    let pg = PgCluster::start_default();
    create_slot(&pg, "svc");
    let proxy = FaultProxy::start(pg.port());
    let dir = archive_dir();
    let name = crate::service::source_name(dir.path());
    let (mut w, addr) = receive_through(&proxy, dir.path(), "2s");
    let target = parse_lsn(&pg.generate_wal(1 << 20));
    assert!(
        wait_for(
            || server_view(&pg).is_some_and(|(_, f)| f >= target)
                && http_get(&addr, "/health").0 == 200,
            WAIT
        ),
        "{}",
        w.stderr_text()
    );

    proxy.stall();
    let mut last = (0, String::new());
    assert!(
        wait_for(
            || {
                last = http_get(&addr, "/health");
                last.0 == 503
            },
            WAIT
        ),
        "health stayed {last:?} with a silent server"
    );
    assert!(
        last.1.starts_with(&format!("{name}: "))
            && last.1.contains("no message from the server for ")
            && last.1.ends_with('\n')
            && last.1.lines().count() == 1,
        "one line naming the source and the silence: {:?}",
        last.1
    );

    proxy.resume();
    let target = parse_lsn(&pg.generate_wal(1 << 20));
    assert!(
        wait_for(|| http_get(&addr, "/health") == (200, "ok\n".into()), WAIT),
        "health never recovered: {:?}\n{}",
        http_get(&addr, "/health"),
        w.stderr_text()
    );
    assert!(
        wait_for(|| server_view(&pg).is_some_and(|(_, f)| f >= target), WAIT),
        "{}",
        w.stderr_text()
    );
    assert!(w.interrupt_and_wait(WAIT).success(), "{}", w.stderr_text());
}

/// `walsink run` with `WATCHDOG_USEC`: READY=1 once both sources have made their first attempt;
/// pings while both stream; none while one source's server is stalled by the proxy past its
/// receive timeout (while the other keeps streaming); pings again once it answers; STOPPING=1 on
/// SIGTERM.
#[test]
fn the_daemons_watchdog_stops_while_one_source_is_silent_and_resumes() {
    let pg = PgCluster::start_default();
    create_slot(&pg, "steady");
    create_slot(&pg, "stalled");
    let proxy = FaultProxy::start(pg.port());
    let (steady, stalled) = (archive_dir(), archive_dir());
    let conf = tempfile::Builder::new()
        .prefix("wsk-conf")
        .tempdir_in("/tmp")
        .unwrap();
    let path = conf.path().join("walsink.toml");
    std::fs::write(
        &path,
        format!(
            "[[source]]\nname = \"steady\"\nconninfo = \"{} application_name=steady\"\ndirectory = \"{}\"\n\
             slot = \"steady\"\nstatus_interval = \"1s\"\n\
             [[source]]\nname = \"stalled\"\nconninfo = \"host=127.0.0.1 port={} user=postgres application_name=stalled\"\n\
             directory = \"{}\"\nslot = \"stalled\"\nstatus_interval = \"1s\"\nreceive_timeout = \"2s\"\n",
            pg.conninfo(),
            steady.path().display(),
            proxy.port(),
            stalled.path().display()
        ),
    )
    .unwrap();
    let (notes, _sockdir, socket) = Notes::listen_fresh();
    let mut cmd = Walsink::cmd(["run", "-c", path.to_str().unwrap()]);
    // Pings every 250 ms while healthy.
    cmd.env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "500000");
    let mut w = WalsinkProcess::spawn_command(cmd);

    let ready = notes.wait(&w, 0, "READY=1", |l| l == "READY=1");
    let status_at_ready = notes.all()[..=ready]
        .iter()
        .rev()
        .find_map(|(_, d)| {
            d.lines()
                .find(|l| l.starts_with("STATUS="))
                .map(str::to_owned)
        })
        .unwrap_or_default();
    assert!(
        !status_at_ready.contains(": connecting"),
        "READY=1 once every source made its first attempt: {status_at_ready:?}"
    );
    // Both stream: "STATUS=steady: streaming, flushed X; stalled: streaming, flushed Y".
    let both_streaming = |l: &str| {
        l.starts_with("STATUS=")
            && !l.contains('(')
            && [
                "steady: streaming, flushed ",
                "stalled: streaming, flushed ",
            ]
            .iter()
            .all(|s| l.contains(s))
    };
    let healthy_ping = notes.wait(&w, ready, "a ping with both sources streaming", |l| {
        l == "WATCHDOG=1"
    });
    assert!(
        wait_for(
            || notes.all()[healthy_ping..]
                .iter()
                .any(|(_, d)| has_watchdog(d) && d.lines().any(both_streaming)),
            WAIT
        ),
        "no ping while both stream: {:#?}",
        notes.all()
    );

    // The stalled source's server goes silent; the other keeps streaming.
    let stalled_at = notes.count();
    proxy.stall();
    let unhealthy = notes.wait(&w, stalled_at, "a status showing the silent source", |l| {
        l.starts_with("STATUS=") && l.contains("stalled: ") && !both_streaming(l)
    });
    let mut quiet = 0;
    assert!(
        wait_for(
            || {
                quiet = notes.all()[unhealthy..]
                    .iter()
                    .take_while(|(_, d)| !has_watchdog(d))
                    .count();
                quiet >= 6
            },
            WAIT
        ),
        "pings went on while a source's server was silent: {:#?}",
        notes.all()[stalled_at..]
            .iter()
            .map(|(_, d)| d)
            .collect::<Vec<_>>()
    );
    let target = parse_lsn(&pg.generate_wal(1 << 20));
    assert!(
        wait_for(
            || {
                pg
                .sql("SELECT flush_lsn::text FROM pg_stat_replication WHERE application_name = 'steady'")
                .first()
                .and_then(|r| r[0].as_deref().map(parse_lsn))
                .is_some_and(|f| f >= target)
            },
            WAIT
        ),
        "the steady source stopped streaming too: {}",
        w.stderr_text()
    );
    for (_, d) in notes.all() {
        if has_watchdog(&d) {
            assert!(
                d.lines().any(both_streaming),
                "a ping with an unhealthy status: {d:?}"
            );
        }
    }

    // The server answers again: both stream, and the pings resume.
    let resumed_at = notes.count();
    proxy.resume();
    notes.wait(&w, resumed_at, "a ping after the stall", |l| {
        l == "WATCHDOG=1"
    });

    let before_stop = notes.count();
    w.terminate();
    assert!(w.wait_timeout(WAIT).success(), "{}", w.stderr_text());
    notes.wait(&w, before_stop, "STOPPING=1", |l| l == "STOPPING=1");
}
