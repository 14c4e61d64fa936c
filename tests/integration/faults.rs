//! Faults a real server cannot produce on demand, injected by a TCP proxy in front of a
//! real one: a server that goes silent without closing the connection, and connections
//! cut at random byte offsets (inside message headers and inside payloads). After each,
//! walsink must reconnect on its own and the archive must end gapless and byte-identical.

use std::path::Path;
use std::time::Duration;

use crate::harness::proxy::FaultProxy;
use crate::harness::{
    PgCluster, Walsink, WalsinkProcess, archive, archive_dir, parse_lsn, wait_for,
};

/// Starts walsink through the proxy with a slot, so the server keeps every segment.
fn spawn_through(pg: &PgCluster, proxy: &FaultProxy, dir: &Path, extra: &[&str]) -> WalsinkProcess {
    pg.execute("SELECT pg_create_physical_replication_slot('faults', true)");
    let conn = format!("host=127.0.0.1 port={} user=postgres", proxy.port());
    let mut args = vec![
        "receive",
        "-D",
        dir.to_str().unwrap(),
        "-d",
        &conn,
        "-S",
        "faults",
        "-v",
    ];
    args.extend_from_slice(extra);
    Walsink::spawn(args)
}

/// Waits until the archive has the completed segment that ends at `lsn` (a segment boundary).
fn wait_for_segment_before(pg: &PgCluster, dir: &Path, lsn: &str, w: &mut WalsinkProcess) {
    let name = pg.walfile_name(lsn);
    assert!(
        wait_for(|| dir.join(&name).exists(), Duration::from_secs(60)),
        "segment {name} never arrived; walsink stderr:\n{}",
        w.stderr_text()
    );
}

/// Every completed segment is byte-identical to the server's, and there is no hole
/// between the first and the last.
fn assert_gapless_and_identical(pg: &PgCluster, dir: &Path) -> usize {
    let n = archive::assert_completed_identical(dir, &pg.pg_wal_dir());
    let segs = archive::completed_segments(dir);
    let numbers: Vec<u64> = segs
        .iter()
        .map(|s| u64::from_str_radix(&s[8..], 16).unwrap())
        .collect();
    for w in numbers.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "gap in the archive between {:X} and {:X}: {segs:?}",
            w[0],
            w[1]
        );
    }
    n
}

#[test]
fn silent_server_is_detected_by_the_receive_timeout_and_streaming_resumes() {
    let pg = PgCluster::builder().start();
    let proxy = FaultProxy::start(pg.port());
    let dir = archive_dir();
    let mut w = spawn_through(&pg, &proxy, dir.path(), &["--receive-timeout", "2s"]);
    // Before 15 an empty archive starts at the server's position when walsink connects (no
    // READ_REPLICATION_SLOT for the slot's): WAL generated before that is not streamed.
    assert!(
        w.wait_for_stderr("starting log streaming", Duration::from_secs(30)),
        "walsink did not start streaming; stderr:\n{}",
        w.stderr_text()
    );
    pg.generate_wal(2 << 20);
    let lsn = pg.switch_wal();
    wait_for_segment_before(&pg, dir.path(), &lsn, &mut w);

    // The network goes silent: nothing is closed, nothing arrives.
    proxy.stall();
    assert!(
        w.wait_for_stderr("receive timeout", Duration::from_secs(20)),
        "walsink did not notice the silent server; stderr:\n{}",
        w.stderr_text()
    );
    assert!(w.is_running(), "walsink must reconnect, not exit");
    proxy.resume();
    pg.generate_wal(2 << 20);
    let lsn = pg.switch_wal();
    wait_for_segment_before(&pg, dir.path(), &lsn, &mut w);
    assert!(
        proxy.accepted() >= 2,
        "walsink should have opened a new connection"
    );
    assert!(
        w.interrupt_and_wait(Duration::from_secs(10)).success(),
        "{}",
        w.stderr_text()
    );
    assert!(assert_gapless_and_identical(&pg, dir.path()) >= 4);
}

#[test]
fn connections_cut_at_random_offsets_leave_a_gapless_identical_archive() {
    let seed: u64 = std::env::var("WALSINK_CUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64
        });
    let cuts: usize = std::env::var("WALSINK_CUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    eprintln!("cut seed {seed} (WALSINK_CUT_SEED), {cuts} cuts (WALSINK_CUTS)");
    let mut rng = Rng(seed.max(1));

    let pg = PgCluster::builder().start();
    let proxy = FaultProxy::start(pg.port());
    let dir = archive_dir();
    let mut w = spawn_through(&pg, &proxy, dir.path(), &[]);
    for i in 0..cuts {
        // Small offsets land in the startup exchange and message headers, large ones
        // inside 128 KiB XLogData payloads.
        let at = match i % 3 {
            0 => rng.below(64),
            1 => rng.below(4096),
            _ => rng.below(600 * 1024),
        };
        let accepted = proxy.accepted();
        assert!(
            wait_for(
                || proxy.accepted() > accepted || i == 0,
                Duration::from_secs(30)
            ),
            "walsink did not reconnect after cut {i}; stderr:\n{}",
            w.stderr_text()
        );
        let before = proxy.cuts();
        proxy.cut_after(at);
        // Feed WAL until the cut has happened.
        assert!(
            wait_for(
                || {
                    if proxy.cuts() > before {
                        return true;
                    }
                    pg.generate_wal(64 << 10);
                    false
                },
                Duration::from_secs(60)
            ),
            "cut {i} at {at} bytes never happened; stderr:\n{}",
            w.stderr_text()
        );
        assert!(
            w.is_running(),
            "walsink exited after cut {i}:\n{}",
            w.stderr_text()
        );
    }
    pg.generate_wal(1 << 20);
    let lsn = pg.switch_wal();
    wait_for_segment_before(&pg, dir.path(), &lsn, &mut w);
    assert!(
        w.interrupt_and_wait(Duration::from_secs(10)).success(),
        "{}",
        w.stderr_text()
    );
    let n = assert_gapless_and_identical(&pg, dir.path());
    let first = u64::from_str_radix(&archive::completed_segments(dir.path())[0][8..], 16).unwrap();
    // pg_switch_wal() returns the end of the switch record, inside the segment it ends.
    let last_needed = parse_lsn(&lsn) / pg.wal_segsize_bytes();
    assert_eq!(
        first + n as u64 - 1,
        last_needed,
        "the archive must reach the last switched segment"
    );
}

/// xorshift64: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
