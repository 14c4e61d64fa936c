//! WAL validation at ingest: real WAL passes the validator however it is split into messages, and
//! invalid WAL from a (fake) server stops walsink with exit 21 at the last valid record, without a flush
//! reported past it.

use std::fs;
use std::path::Path;
use std::time::Duration;

use walsink_wal::Lsn;
use walsink_wal::validate::{Problem, ValidatorConfig, WalInvalid, WalValidator};

use crate::harness::fake::{FakeServer, FakeSession, Step, WAL_SYSTEM_ID, wal_byte, wal_bytes};
use crate::harness::{PgCluster, Walsink, format_lsn, parse_lsn};

/// The exit code for invalid WAL (README, "Exit codes").
const INVALID_WAL: i32 = 21;
const SEG: u64 = 1 << 20;
const PAGE: u64 = 8192;
/// Where the fake's stream starts: segment 0x30 of timeline 1.
const START: u64 = 0x300_0000;
const TIMEOUT: Duration = Duration::from_secs(60);

// ---- real WAL through the validator --------------------------------------------------------------------

/// A validator for WAL of system `sysid` (1 MiB segments) from `start` (a segment start), learning the
/// format.
fn validator(sysid: u64, start: u64) -> WalValidator {
    WalValidator::new(
        ValidatorConfig {
            seg: walsink_wal::WalSegSize::new(SEG).unwrap(),
            system_id: Some(sysid),
            format: None,
        },
        1,
        Lsn(start),
    )
}

fn feed_in(v: &mut WalValidator, data: &[u8], size: usize) -> Result<(), WalInvalid> {
    data.chunks(size).try_for_each(|c| v.feed(c))
}

/// A completed segment of real WAL with records of every shape: one record over thirteen pages right at
/// the segment start, full-page images, small heap records, commits, and the segment's `XLOG_SWITCH`
/// with the zero padding after it. Its first 128 KiB go through the validator split at every message
/// size from 1 byte to two pages and more, the whole segment at a range of sizes; each must validate
/// to the segment end with the same record count. A flipped bit in the big record is found at its start.
#[test]
fn real_wal_is_valid_split_at_every_message_size() {
    let pg = PgCluster::builder()
        .setting("wal_keep_size", "1GB")
        .setting("full_page_writes", "on")
        .start();
    pg.switch_wal();
    let start = parse_lsn(&pg.current_lsn());
    assert_eq!(
        start % SEG,
        0,
        "a switch leaves the position at a segment start"
    );
    // (pg_walfile_name names the previous segment for a segment start.)
    let seg = walsink_wal::WalSegSize::new(SEG).unwrap();
    let name = walsink_wal::SegmentName::containing(walsink_wal::TimelineId::ONE, Lsn(start), seg)
        .file_name(seg);
    pg.execute(
        "SELECT pg_logical_emit_message(true, 'validation', \
           (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 3200) i))",
    );
    pg.execute("CREATE TABLE t (id int PRIMARY KEY, v text)");
    pg.execute("INSERT INTO t SELECT i, repeat('v', i % 100) FROM generate_series(1, 1000) i");
    pg.execute("CHECKPOINT");
    // After a checkpoint the first change to each page logs a full-page image.
    pg.execute("UPDATE t SET v = v || 'w' WHERE id % 20 = 0");
    let end = parse_lsn(&pg.switch_wal());
    assert!(
        end < start + SEG,
        "the WAL did not fit in one segment: {}",
        format_lsn(end)
    );
    let data = fs::read(pg.pg_wal_dir().join(&name)).unwrap();
    let sysid = pg.system_identifier();
    assert_eq!(data.len() as u64, SEG);

    let mut whole = validator(sysid, start);
    whole.feed(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        whole.checked_end(),
        Lsn(start + SEG),
        "the switch's padding is skipped"
    );
    assert!(whole.records() > 1000, "{} records", whole.records());
    let format = whole.format().expect("learned");
    assert_eq!(format.blcksz, 8192);

    let head = &data[..128 << 10];
    let mut reference = validator(sysid, start);
    reference.feed(head).unwrap();
    for size in 1..=(2 * PAGE as usize + 100) {
        let mut v = validator(sysid, start);
        feed_in(&mut v, head, size).unwrap_or_else(|e| panic!("message size {size}: {e}"));
        assert_eq!(
            v.checked_end(),
            reference.checked_end(),
            "message size {size}"
        );
        assert_eq!(v.records(), reference.records(), "message size {size}");
    }
    for size in [1, 3, 24, 40, 4096, 8191, 8193, 65536, 128 << 10, 1 << 20] {
        let mut v = validator(sysid, start);
        feed_in(&mut v, &data, size).unwrap_or_else(|e| panic!("message size {size}: {e}"));
        assert_eq!(v.checked_end(), Lsn(start + SEG), "message size {size}");
        assert_eq!(v.records(), whole.records(), "message size {size}");
    }

    // The 100 kB message begins right after the long page header.
    let mut bad = data.clone();
    bad[50_000] ^= 0x01;
    let mut v = validator(sysid, start);
    let e = feed_in(&mut v, &bad, 8192).unwrap_err();
    assert!(matches!(e.problem, Problem::Checksum { .. }), "{e}");
    assert_eq!(e.at, Lsn(start + 40), "{e}");
    assert_eq!(e.valid_end, Lsn(start), "{e}");
}

// ---- invalid WAL from a server ----------------------------------------------------------------------

/// `walsink receive -n -S walsink -s 1 -w -d <fake> -D dir`.
fn run(fake: &FakeServer, dir: &Path) -> crate::harness::walsink::RunOutcome {
    let mut cmd = Walsink::cmd(["receive", "-n", "-S", "walsink", "-s", "1", "-w", "-d"]);
    cmd.arg(fake.conninfo()).arg("-D").arg(dir);
    crate::harness::walsink::RunOutcome::of(cmd, TIMEOUT)
}

/// The `.partial` of segment 0x30 holds the fake's WAL up to `good_end` and nothing after `written_end`.
fn assert_partial(dir: &Path, good_end: u64, written_end: u64) {
    let name = "000000010000000000000030.partial";
    let bytes = fs::read(dir.join(name)).unwrap();
    assert_eq!(bytes.len() as u64, SEG);
    let good = (good_end - START) as usize;
    if let Some(i) = (0..good).find(|&i| bytes[i] != wal_byte(START + i as u64)) {
        panic!(
            "{name}: byte at {} differs from the WAL sent",
            format_lsn(START + i as u64)
        );
    }
    let written = (written_end - START) as usize;
    if let Some(i) = (written..bytes.len()).find(|&i| bytes[i] != 0) {
        panic!(
            "{name}: byte at {} (past {}) was written",
            format_lsn(START + i as u64),
            format_lsn(written_end)
        );
    }
    let completed: Vec<String> = crate::harness::archive::completed_segments(dir);
    assert!(completed.is_empty(), "segments completed: {completed:?}");
}

/// The highest flush position walsink reported.
fn max_flush(fake: &FakeServer) -> u64 {
    fake.statuses().iter().map(|s| s.flush).max().unwrap_or(0)
}

/// A page header with a wrong page address (a stale page, as a recycled segment would have): exit 21
/// naming the page's LSN, segment and what is wrong; the archive holds the three good pages, and the
/// flush reported never passes them.
#[test]
fn a_corrupted_page_header_stops_walsink_with_exit_21() {
    let dir = tempfile::tempdir().unwrap();
    let good = START + 3 * PAGE;
    let mut bad = wal_bytes(good, 2 * PAGE as usize);
    bad[9] ^= 0x40; // xlp_pageaddr
    let fake = FakeServer::start(vec![FakeSession::new(WAL_SYSTEM_ID, 1, START).steps([
        Step::wal(START, 3 * PAGE as usize),
        Step::wait_flush(good),
        Step::XLogData {
            start: good,
            data: bad,
        },
    ])]);
    let r = run(&fake, dir.path());
    r.expect(
        "bad page address",
        INVALID_WAL,
        &[
            "invalid WAL from the server in segment 000000010000000000000030 at offset 0x6000 (timeline 1)",
            &format!("at {}: page header has page address", format_lsn(good)),
            &format!("the archive holds the WAL up to {}", format_lsn(good)),
        ],
    );
    assert_partial(dir.path(), good, good);
    assert_eq!(fake.assert_reports_within(good), good);
    let meta = fs::read_to_string(dir.path().join(walsink_archive::META_FILE)).unwrap();
    assert!(
        meta.contains("wal_page_magic = D118\n"),
        "the format is pinned: {meta}"
    );
}

/// A flipped byte in the data of a record that arrives in two messages: walsink reports the first part's
/// flush only up to the record's start (its CRC is not known yet), and when the second part shows the
/// CRC wrong, exits 21 naming the record; the archive keeps the WAL up to the end of the record before.
#[test]
fn a_corrupted_record_stops_walsink_with_exit_21_at_the_record_before() {
    let dir = tempfile::tempdir().unwrap();
    // The records of each fake page end at 100, 512, 8064 and 8192: the one at 512 is split.
    let record = START + 5 * PAGE + 512;
    let split = START + 5 * PAGE + 4000;
    let mut second = wal_bytes(split, (START + 7 * PAGE - split) as usize);
    second[(START + 5 * PAGE + 6000 - split) as usize] ^= 0x20;
    let fake = FakeServer::start(vec![FakeSession::new(WAL_SYSTEM_ID, 1, START).steps([
        Step::wal(START, (split - START) as usize),
        Step::wait_flush(record),
        Step::XLogData {
            start: split,
            data: second,
        },
    ])]);
    let r = run(&fake, dir.path());
    r.expect(
        "bad record data",
        INVALID_WAL,
        &[
            &format!("at {}: record CRC mismatch", format_lsn(record)),
            &format!("the archive holds the WAL up to {}", format_lsn(record)),
        ],
    );
    assert_eq!(
        max_flush(&fake),
        record,
        "the flush reported stops at the record whose rest had not come"
    );
    // The first message was written before the problem showed; nothing of the second.
    assert_partial(dir.path(), record, split);
}
