//! WAL validation at ingest: real WAL passes the validator however it is split into messages, and
//! invalid WAL from a (fake) server stops walsink with exit 21 at the last valid record, without a flush
//! reported past it.

use std::fs;
use std::path::Path;
use std::time::Duration;

use walsink_wal::Lsn;
use walsink_wal::synth::{PG18, SynthParams, SynthWal};
use walsink_wal::validate::{Problem, ValidatorConfig, WalInvalid, WalValidator};

use crate::harness::fake::{FakeServer, FakeSession, Step, WAL_SYSTEM_ID, wal_byte, wal_bytes};
use crate::harness::{
    PgCluster, WAIT, Walsink, WalsinkProcess, archive_dir, format_lsn, parse_lsn, tail, wait_for,
};

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

/// The `.partial` of segment 0x30 holds the fake's WAL up to `good_end` and zeros from there to its
/// end: bytes of the invalid record written before it showed invalid are overwritten.
fn assert_partial(dir: &Path, good_end: u64) {
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
    if let Some(i) = (good..bytes.len()).find(|&i| bytes[i] != 0) {
        panic!(
            "{name}: byte at {} (past the last valid record's end {}) is not zero",
            format_lsn(START + i as u64),
            format_lsn(good_end)
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
    assert_partial(dir.path(), good);
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
    // The first message was written before the problem showed: what it held of the record is zeroed.
    assert_partial(dir.path(), record);
}

// ---- invalid records over messages, pages and segments: the archive ends at the last valid record ----

/// Made-up WAL of the fake's system from `START` (1 MB segments, PostgreSQL 18's format).
fn synth() -> SynthWal {
    SynthWal::new(
        SynthParams {
            seg: walsink_wal::WalSegSize::new(SEG).unwrap(),
            format: PG18,
            system_id: WAL_SYSTEM_ID,
            tli: 1,
        },
        Lsn(START),
    )
}

/// Every flush position walsink reported is at most `valid_end`, and the last one is `valid_end` (the
/// write position is what it received).
fn assert_flush_stopped_at(fake: &FakeServer, valid_end: u64) {
    let statuses = fake.statuses();
    assert!(
        statuses.iter().all(|s| s.flush <= valid_end),
        "a flush past {}: {statuses:#?}",
        format_lsn(valid_end)
    );
    assert_eq!(max_flush(fake), valid_end, "{statuses:#?}");
}

/// XLogData steps sending `data` (WAL from `START`) cut at `cuts` (LSNs, ascending), in messages of at
/// most 128 KiB between them; a `wait_flush(flush)` after the message that ends at `pause_after`.
fn messages(data: &[u8], cuts: &[u64], pause_after: Option<(u64, u64)>) -> Vec<Step> {
    let end = START + data.len() as u64;
    let mut bounds: Vec<u64> = (START..end).step_by(128 << 10).skip(1).collect();
    bounds.extend(cuts.iter().copied());
    bounds.push(end);
    bounds.sort_unstable();
    bounds.dedup();
    let mut steps = Vec::new();
    let mut from = START;
    for to in bounds {
        steps.push(Step::XLogData {
            start: from,
            data: data[(from - START) as usize..(to - START) as usize].to_vec(),
        });
        if let Some((at, flush)) = pause_after
            && at == to
        {
            steps.push(Step::wait_flush(flush));
        }
        from = to;
    }
    steps
}

/// `walsink receive` as [`run`], with `extra` arguments.
fn run_with(fake: &FakeServer, dir: &Path, extra: &[&str]) -> crate::harness::walsink::RunOutcome {
    let mut cmd = Walsink::cmd(["receive", "-n", "-S", "walsink", "-s", "1", "-w", "-d"]);
    cmd.arg(fake.conninfo()).arg("-D").arg(dir).args(extra);
    crate::harness::walsink::RunOutcome::of(cmd, TIMEOUT)
}

/// The archive ends exactly at `valid_end`: its only WAL file is the `.partial` of segment 0x30, with
/// `data` (the WAL sent, from `START`) up to `valid_end` and zeros after it; `walsink status` (text and
/// JSON) says it is filled to `valid_end`, and `walsink verify` finds it valid up to there.
fn assert_archive_ends_at(dir: &Path, data: &[u8], valid_end: u64) {
    let partial = "000000010000000000000030.partial";
    let mut wal_files = crate::harness::archive::completed_segments(dir);
    wal_files.extend(crate::harness::archive::partial_segments(dir));
    assert_eq!(wal_files, [partial], "the archive's WAL files");
    let bytes = fs::read(dir.join(partial)).unwrap();
    assert_eq!(bytes.len() as u64, SEG);
    let good = (valid_end - START) as usize;
    if let Some(i) = (0..good).find(|&i| bytes[i] != data[i]) {
        panic!(
            "{partial}: byte at {} differs from the WAL sent",
            format_lsn(START + i as u64)
        );
    }
    if let Some(i) = (good..bytes.len()).find(|&i| bytes[i] != 0) {
        panic!(
            "{partial}: byte at {} (past the last valid record's end {}) is {:#04x}, not zero",
            format_lsn(START + i as u64),
            format_lsn(valid_end),
            bytes[i]
        );
    }

    let mut cmd = Walsink::cmd(["status", "--json", "-D"]);
    cmd.arg(dir);
    let out = Walsink::run_command(cmd, TIMEOUT);
    assert!(out.status.success(), "{out:?}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &s["timelines"][0];
    assert_eq!(t["partial"]["file"].as_str(), Some(partial), "{s:#}");
    assert_eq!(
        t["partial"]["end_lsn"].as_str(),
        Some(format_lsn(valid_end).as_str()),
        "{s:#}"
    );
    assert_eq!(
        t["end_lsn"].as_str(),
        Some(format_lsn(valid_end).as_str()),
        "{s:#}"
    );
    assert_eq!(t["segments"].as_u64(), Some(0), "{s:#}");
    let mut cmd = Walsink::cmd(["status", "-D"]);
    cmd.arg(dir);
    let out = Walsink::run_command(cmd, TIMEOUT);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{partial}: filled {good} of {SEG} bytes"))
            && text.contains(&format!("to {}", format_lsn(valid_end))),
        "{text}"
    );

    // (verify names the end of the last record without its padding.)
    let v = crate::verify::assert_valid(dir);
    let end = parse_lsn(v["timelines"][0]["end"].as_str().unwrap());
    assert!(end <= valid_end && valid_end - end < 8, "{v:#}");
}

/// A walsink started again on the archive streams segment 0x30 from its start (where the archive's
/// newest `.partial` starts), and with the good WAL (`good`, from `START`) this time, archives it whole
/// to `-E end`: the archive is valid, past `record_end` (the end of the record that was invalid).
fn restart_with_good_wal(dir: &Path, good: &[u8], end: u64, record_end: u64) {
    let fake = FakeServer::start(vec![
        FakeSession::new(WAL_SYSTEM_ID, 1, START).steps(messages(good, &[], None)),
    ]);
    let r = run_with(&fake, dir, &["-E", &format_lsn(end)]);
    r.expect("restart", 0, &["stopped log streaming at end position"]);
    let queries: Vec<String> = fake.queries().into_iter().map(|(_, q)| q).collect();
    assert!(
        queries.contains(&format!(
            "START_REPLICATION SLOT \"walsink\" PHYSICAL {} TIMELINE 1",
            format_lsn(START)
        )),
        "the restart streams segment 0x30 again: {queries:?}"
    );
    let v = crate::verify::assert_valid(dir);
    assert!(
        parse_lsn(v["timelines"][0]["end"].as_str().unwrap()) >= record_end,
        "{v:#}"
    );
    let archived = fs::read(dir.join("000000010000000000000030"))
        .or_else(|_| fs::read(dir.join("000000010000000000000030.partial")))
        .unwrap();
    let n = ((end - START) as usize).min(SEG as usize);
    assert!(
        archived[..n] == good[..n],
        "segment 0x30 holds the good WAL"
    );
}

/// A flipped byte in the body of a 12 kB record that starts on page 3 and runs over page 4 into page 5,
/// past the end of the first message: the first message is written (its flush reported up to the record's
/// start only), the second shows the CRC wrong. Exit 21 naming the record; what the first message held of
/// the record is zeroed, so status and verify see the archive end at the record before, and a restart
/// streams the segment again from its start.
#[test]
fn a_corrupted_record_over_two_messages_and_a_page_boundary_is_zeroed_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = synth();
    w.fill(Lsn(START + 3 * PAGE + 5000), &[100, 300]);
    let record = w.record(10, 0, &[7; 12_000]).0;
    let record_end = w.position().0;
    w.fill(Lsn(START + 8 * PAGE), &[100, 300]);
    let good = w.bytes().to_vec();
    let split = record + 9000;
    assert!(
        record < START + 4 * PAGE && split > START + 4 * PAGE && record_end > START + 5 * PAGE,
        "the record spans page boundaries and the split"
    );
    let mut bad = good.clone();
    // In the first message, on page 4.
    bad[(START + 4 * PAGE + 300 - START) as usize] ^= 0x08;
    let fake = FakeServer::start(vec![
        FakeSession::new(WAL_SYSTEM_ID, 1, START).steps(messages(
            &bad,
            &[split],
            Some((split, record)),
        )),
    ]);
    let r = run(&fake, dir.path());
    r.expect(
        "bad record data",
        INVALID_WAL,
        &[
            "invalid WAL from the server in segment 000000010000000000000030",
            &format!("at {}: record CRC mismatch", format_lsn(record)),
            &format!("the archive holds the WAL up to {}", format_lsn(record)),
        ],
    );
    assert_flush_stopped_at(&fake, record);
    assert_archive_ends_at(dir.path(), &good, record);
    restart_with_good_wal(dir.path(), &good, START + 8 * PAGE, record_end);
}

/// A record that starts on page 3 and continues on page 4, whose page header is wrong (a stale page
/// address): the first message ends in the record on page 3 and is written; the second brings page 4's
/// header. Exit 21 naming the page; the record's bytes on page 3 are zeroed.
#[test]
fn a_corrupted_page_header_inside_a_record_zeroes_the_record_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = synth();
    w.fill(Lsn(START + 3 * PAGE + 5000), &[100, 300]);
    let record = w.record(10, 0, &[7; 6000]).0;
    let record_end = w.position().0;
    w.fill(Lsn(START + 6 * PAGE), &[100, 300]);
    let good = w.bytes().to_vec();
    let page = START + 4 * PAGE;
    let split = record + 1000;
    assert!(record < split && split < page);
    let mut bad = good.clone();
    bad[(page - START) as usize + 9] ^= 0x40; // xlp_pageaddr
    let fake = FakeServer::start(vec![
        FakeSession::new(WAL_SYSTEM_ID, 1, START).steps(messages(
            &bad,
            &[split],
            Some((split, record)),
        )),
    ]);
    let r = run(&fake, dir.path());
    r.expect(
        "bad page address",
        INVALID_WAL,
        &[
            &format!("at {}: page header has page address", format_lsn(page)),
            &format!("the archive holds the WAL up to {}", format_lsn(record)),
        ],
    );
    assert_flush_stopped_at(&fake, record);
    assert_archive_ends_at(dir.path(), &good, record);
    restart_with_good_wal(dir.path(), &good, START + 6 * PAGE, record_end);
}

/// A record that starts near the end of segment 0x30 and ends in 0x31, with a flipped byte in its part in
/// 0x30: 0x30 fills and is completed (renamed) and 0x31's `.partial` begins before the rest of the record
/// shows its CRC wrong. Then 0x30 is a `.partial` again, zeroed from the record, and 0x31 is removed: the
/// archive ends at the record before, and a restart streams 0x30 again, so the good WAL replaces the
/// corrupt byte (resuming at 0x31, as the archive's newest file said before, left it in a completed
/// segment for good). With the writer thread and with `--synchronous` (the writer inline).
#[test]
fn a_corrupted_record_crossing_into_the_next_segment_leaves_its_first_segment_partial() {
    let mut w = synth();
    w.fill(Lsn(START + SEG - 20_000), &[3000, 100, 300]);
    let record = w.record(10, 0, &[7; 60_000]).0;
    let record_end = w.position().0;
    w.fill(Lsn(START + SEG + 4 * 8192 * 8), &[100, 300]);
    let good = w.bytes().to_vec();
    let next = START + SEG;
    let split = next + 10_000;
    assert!(record < next && split < record_end);
    let mut bad = good.clone();
    bad[(record + 2000 - START) as usize] ^= 0x08;
    // With the writer thread, and with --synchronous (the writer inline in the network task).
    for extra in [&[][..], &["--synchronous"][..]] {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeServer::start(vec![
            FakeSession::new(WAL_SYSTEM_ID, 1, START).steps(messages(
                &bad,
                &[split],
                Some((split, record)),
            )),
        ]);
        let r = run_with(&fake, dir.path(), extra);
        r.expect(
            &format!("bad record data over a segment boundary {extra:?}"),
            INVALID_WAL,
            &[
                "invalid WAL from the server in segment 000000010000000000000030",
                &format!("at {}: record CRC mismatch", format_lsn(record)),
                &format!("the archive holds the WAL up to {}", format_lsn(record)),
            ],
        );
        for line in [
            "renaming completed segment",
            "removing",
            "000000010000000000000031.partial",
        ] {
            assert!(r.stderr.contains(line), "{extra:?}: {line}: {}", r.stderr);
        }
        assert_flush_stopped_at(&fake, record);
        assert_archive_ends_at(dir.path(), &good, record);
        restart_with_good_wal(dir.path(), &good, record_end + 1000, record_end);
    }
}

// ---- a restart after a completed segment whose last record runs on -------------------------------------

/// `walsink receive -n -s 1 -d <pg> -S resume -D dir`, started in the background (after an empty
/// archive's first connection before PostgreSQL 15, as integrity.rs does, so it starts at the slot).
fn spawn_receive(pg: &PgCluster, dir: &Path) -> WalsinkProcess {
    let empty = crate::harness::archive::list(dir)
        .iter()
        .all(|f| !f.starts_with(|c: char| c.is_ascii_hexdigit()));
    let mut cmd = Walsink::cmd(["receive", "-n", "-s", "1", "-d", &pg.conninfo(), "-S"]);
    cmd.args(["resume", "-D"]).arg(dir);
    let mut w = WalsinkProcess::spawn_command(cmd);
    if empty && !pg.has_read_replication_slot() {
        let _streaming = w.wait_for_stderr("starting log streaming", WAIT);
    }
    w
}

/// Waits for `w` to exit, asserts the exit code, returns its stderr.
fn exit_code(w: &mut WalsinkProcess, code: i32) -> String {
    let status = w.wait_timeout(WAIT);
    let stderr = w.stderr_text();
    assert_eq!(status.code(), Some(code), "{status}\n{}", tail(&stderr, 60));
    stderr
}

/// Waits until the server has seen walsink write up to `lsn`.
fn wait_written(pg: &PgCluster, w: &mut WalsinkProcess, lsn: u64) {
    let written = || {
        pg.sql_one("SELECT max(write_lsn)::text FROM pg_stat_replication")
            .is_some_and(|s| parse_lsn(&s) >= lsn)
    };
    assert!(
        wait_for(|| !w.is_running() || written(), WAIT) && w.is_running(),
        "walsink did not write up to {}\n{}",
        format_lsn(lsn),
        tail(&w.stderr_text(), 60)
    );
}

/// Streaming restarts at a segment start, so the new stream often begins with the rest of a record that
/// began in the completed segment before it. walsink reads that segment where it starts, so the record's
/// CRC is checked once its rest arrives: with a byte of the record's first part flipped in the archived
/// file (disk corruption while walsink was stopped), the restart exits 21 naming the record and the
/// file and leaves the file as it is; with the byte restored, the restart streams on (logging the record
/// it checks) and `walsink verify` finds the archive valid.
#[test]
fn a_restart_checks_the_record_that_began_in_the_completed_segment_before_it() {
    let pg = PgCluster::builder().setting("wal_keep_size", "1GB").start();
    let seg = pg.wal_segsize_bytes();
    let dir = archive_dir();
    pg.execute("SELECT pg_create_physical_replication_slot('resume', true)");
    let mut w = spawn_receive(&pg, dir.path());

    // A 200 kB record that begins 30 to 150 kB before a segment end.
    loop {
        let off = parse_lsn(&pg.current_lsn()) % seg;
        if (seg - 150_000..=seg - 30_000).contains(&off) {
            break;
        }
        if off < seg - 150_000 {
            pg.generate_wal(seg - 100_000 - off);
        } else {
            pg.generate_wal(seg - off + 10_000);
        }
    }
    let before = parse_lsn(&pg.current_lsn());
    pg.execute("SELECT pg_logical_emit_message(true, 'resume', repeat('y', 200000))");
    pg.generate_wal(300_000);
    let target = parse_lsn(&pg.current_lsn());
    let (s_start, next) = (before - before % seg, before - before % seg + seg);
    assert!(target > next + 200_000 && target < next + seg);
    wait_written(&pg, &mut w, target);
    w.terminate();
    exit_code(&mut w, 0);

    let seg_size = walsink_wal::WalSegSize::new(seg).unwrap();
    let tli1 = walsink_wal::TimelineId::ONE;
    let s_name =
        walsink_wal::SegmentName::containing(tli1, Lsn(s_start), seg_size).file_name(seg_size);
    let next_partial = format!(
        "{}.partial",
        walsink_wal::SegmentName::containing(tli1, Lsn(next), seg_size).file_name(seg_size)
    );
    let files = crate::harness::archive::list(dir.path());
    assert!(
        files.contains(&s_name) && files.contains(&next_partial),
        "{files:?}"
    );
    let s_path = dir.path().join(&s_name);
    let good = fs::read(&s_path).unwrap();
    // The record running on into the next segment: where a validator fed the whole segment stands.
    let mut v = validator(pg.system_identifier(), s_start);
    v.feed(&good).unwrap();
    let record = v.checked_end().0;
    assert!(
        record >= before && record < next - 4000,
        "record at {}",
        format_lsn(record)
    );
    assert_eq!(good, fs::read(pg.pg_wal_dir().join(&s_name)).unwrap());

    // 4000 bytes before the segment end: inside the record, mid-page (not a page header).
    let mut bad = good.clone();
    bad[(seg - 4000) as usize] ^= 0x01;
    fs::write(&s_path, &bad).unwrap();
    let mut w = spawn_receive(&pg, dir.path());
    let stderr = exit_code(&mut w, INVALID_WAL);
    for needle in [
        format!(
            "the record at {} began in the already archived segment",
            format_lsn(record)
        ),
        s_name.clone(),
        "walsink verify -D".to_string(),
    ] {
        assert!(stderr.contains(&needle), "{needle}:\n{}", tail(&stderr, 40));
    }
    assert_eq!(
        fs::read(&s_path).unwrap(),
        bad,
        "the archived segment is left as it is"
    );
    let files = crate::harness::archive::list(dir.path());
    assert!(!files.contains(&format!("{s_name}.partial")), "{files:?}");

    // The byte restored: the restart streams on and checks the record.
    fs::write(&s_path, &good).unwrap();
    let mut w = spawn_receive(&pg, dir.path());
    let checked = format!(
        "the record at {} that runs on into the WAL streamed from {}",
        format_lsn(record),
        format_lsn(next)
    );
    assert!(
        w.wait_for_stderr(&checked, WAIT),
        "{checked}:\n{}",
        tail(&w.stderr_text(), 40)
    );
    let end = parse_lsn(&pg.generate_wal(10_000));
    wait_written(&pg, &mut w, end);
    w.terminate();
    exit_code(&mut w, 0);
    let mut cmd = Walsink::cmd(["verify", "--json", "-D"]);
    cmd.arg(dir.path());
    let out = Walsink::run_command(cmd, WAIT);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["valid"], true, "{text}");
    assert!(report["records"].as_u64().unwrap() > 100, "{text}");
    assert_eq!(fs::read(&s_path).unwrap(), good);
}
