//! Protocol faults no PostgreSQL server produces, played by the scripted fake server
//! ([`crate::harness::fake`]): malformed, oversized, truncated, out-of-order and overlapping messages,
//! unknown message types, bogus end-of-timeline replies, and the server errors walsink must classify.
//!
//! Every case runs walsink in its default durable mode with a slot (`-S`), so it reports flush
//! positions, and asserts four things:
//!
//! - the exit code (README, "Exit codes");
//! - a message on stderr that names the problem;
//! - the archive holds nothing past the last good byte: the `.partial`'s bytes after it are still the
//!   preallocated zeros, and no segment past it was completed (the fake's record data is never zero);
//! - no standby status update reported a write or flush position past the last good byte, while
//!   (where the script waits for it) the flush of the good bytes was reported, so the check is not
//!   vacuous.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::harness::fake::{
    FakeServer, FakeSession, FakeSlot, StatusUpdate, Step, frame, wal_byte, wal_bytes,
};
use crate::harness::{Walsink, archive, format_lsn};

/// The fake cluster's system identifier.
const SYSID: u64 = 7_300_000_000_000_000_001;
/// The fake's WAL segment size ("1MB").
const SEG: u64 = 1 << 20;
/// Where every stream starts (the slot's restart_lsn): segment 0x30 of timeline 1.
const START: u64 = 0x300_0000;
/// WAL page size.
const PAGE: u64 = 8192;
/// A slot whose WAL starts at `START` on timeline 1, on a server that is on timeline 2 now.
const TL1_SLOT: FakeSlot = FakeSlot::Physical {
    restart_lsn: Some(START),
    restart_tli: 1,
};
use crate::harness::WAIT as TIMEOUT;

/// A finished walsink run (exit code, stderr, elapsed time).
use crate::harness::walsink::RunOutcome as Run;

/// `walsink receive -D dir -d <fake> -S walsink -s 1 -w <extra>`: durable mode, flush reported, a status
/// update every second.
fn run(fake: &FakeServer, dir: &Path, extra: &[&str]) -> Run {
    let mut cmd = Walsink::cmd(["receive", "-S", "walsink", "-s", "1", "-w", "-d"]);
    cmd.arg(fake.conninfo()).arg("-D").arg(dir).args(extra);
    Run::of(cmd, TIMEOUT)
}

/// One fake connection at `START` on timeline 1 playing `script`, walsink with `-n`.
fn run_script(dir: &Path, script: Vec<Step>) -> (FakeServer, Run) {
    let fake = FakeServer::start(vec![FakeSession::new(SYSID, 1, START).steps(script)]);
    let r = run(&fake, dir, &["-n"]);
    (fake, r)
}

/// The segment file name holding `lsn` (1 MB segments).
fn seg_name(tli: u32, lsn: u64) -> String {
    let segno = lsn / SEG;
    let per_xlogid = 0x1_0000_0000 / SEG;
    format!(
        "{tli:08X}{:08X}{:08X}",
        segno / per_xlogid,
        segno % per_xlogid
    )
}

/// XLogData steps of at most 128 KiB (a walsender's largest) covering `[start, end)`.
fn wal_chunks(start: u64, end: u64) -> Vec<Step> {
    (start..end)
        .step_by(128 << 10)
        .map(|s| Step::wal(s, (end - s).min(128 << 10) as usize))
        .collect()
}

/// XLogData at `start` whose bytes are all wrong for that position (and never zero): if any of it
/// reached the archive, the content check finds it.
fn bogus_wal(start: u64, len: usize) -> Step {
    Step::XLogData {
        start,
        data: (start..start + len as u64)
            .map(|l| wal_byte(l) ^ 0x80)
            .collect(),
    }
}

/// Asserts the archive holds exactly the fake's WAL from `START` up to `good_end` on timeline `tli`
/// and nothing after it: completed segments end at or before `good_end`, the `.partial` holds the
/// pattern up to `good_end` and zeros after it, and there is no other file but the metadata and lock.
fn assert_archive_ends_at(dir: &Path, tli: u32, good_end: u64) {
    let names = archive::list(dir);
    for name in &names {
        if name == ".walsink.meta" || name == ".walsink.lock" {
            continue;
        }
        let base = name.trim_end_matches(".partial");
        assert!(
            archive::is_segment_name(base),
            "unexpected file {name} in the archive: {names:?}"
        );
        assert_eq!(
            &base[..8],
            format!("{tli:08X}"),
            "file of another timeline: {names:?}"
        );
        let segno = u64::from_str_radix(&base[8..16], 16).unwrap() * (0x1_0000_0000 / SEG)
            + u64::from_str_radix(&base[16..], 16).unwrap();
        let seg_start = segno * SEG;
        assert!(
            seg_start >= START,
            "segment {name} is before the stream's start {}",
            format_lsn(START)
        );
        let bytes = fs::read(dir.join(name)).unwrap();
        assert_eq!(bytes.len() as u64, SEG, "{name} is not one segment long");
        let complete = !name.ends_with(".partial");
        if complete {
            assert!(
                seg_start + SEG <= good_end,
                "segment {name} was completed, but the last good byte is at {}: {names:?}",
                format_lsn(good_end)
            );
        } else {
            assert!(
                seg_start <= good_end,
                "{name} begins past the last good byte {}: {names:?}",
                format_lsn(good_end)
            );
        }
        let good = (good_end - seg_start).min(SEG) as usize;
        if let Some(i) = (0..good).find(|&i| bytes[i] != wal_byte(seg_start + i as u64)) {
            panic!(
                "{name}: byte at {} is {:#04x}, the server sent {:#04x}",
                format_lsn(seg_start + i as u64),
                bytes[i],
                wal_byte(seg_start + i as u64)
            );
        }
        if let Some(i) = (good..bytes.len()).find(|&i| bytes[i] != 0) {
            panic!(
                "{name}: byte at {} (past the last good byte {}) is {:#04x}, not zero",
                format_lsn(seg_start + i as u64),
                format_lsn(good_end),
                bytes[i]
            );
        }
    }
    if good_end > START {
        let last = seg_name(tli, good_end - 1);
        assert!(
            names.contains(&last) || names.contains(&format!("{last}.partial")),
            "the segment holding the last good byte is missing: {names:?}"
        );
    }
}

/// How walsink says where the archive stands after a protocol violation.
fn nothing_after(good_end: u64) -> String {
    format!(
        "nothing after {} (timeline 1) was written",
        format_lsn(good_end)
    )
}

/// Asserts the fake had nothing to complain about (every `WaitForStatus` saw its flush).
fn assert_no_problems(fake: &FakeServer) {
    let p = fake.problems();
    assert!(p.is_empty(), "the fake server reports: {p:#?}");
}

/// The common assertions of a fault after good WAL up to `good_end`: exit code and message, archive,
/// status updates, and that the flush of the good WAL was reported (the script waited for it).
fn assert_fault(
    what: &str,
    fake: &FakeServer,
    dir: &Path,
    r: &Run,
    code: i32,
    needles: &[&str],
    good_end: u64,
) {
    r.expect(what, code, needles);
    assert_archive_ends_at(dir, 1, good_end);
    let max_flush = fake.assert_reports_within(good_end);
    assert_eq!(
        max_flush, good_end,
        "{what}: the flush of the good WAL was not reported"
    );
    assert_no_problems(fake);
}

// ---- control: the fake streams like a server ---------------------------------------------------------

/// The fake is faithful enough for walsink to archive from it: to `-E` across a segment boundary, with
/// the completed segment and the `.partial` holding exactly the bytes sent, and the final flush
/// reported. Every fault below differs from this run only in its scripted fault.
#[test]
fn fake_server_streams_like_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let end = START + SEG + 3 * PAGE + 100;
    let fake = FakeServer::start(vec![
        FakeSession::new(SYSID, 1, START).steps(wal_chunks(START, end + 4 * PAGE)),
    ]);
    let r = run(&fake, dir.path(), &["-n", "-E", &format_lsn(end)]);
    r.expect(
        "streaming to -E from the fake",
        0,
        &[&format!(
            "stopped log streaming at end position {}",
            format_lsn(end)
        )],
    );
    assert_eq!(
        archive::completed_segments(dir.path()),
        [seg_name(1, START)]
    );
    assert_eq!(
        archive::partial_segments(dir.path()),
        [format!("{}.partial", seg_name(1, START + SEG))]
    );
    assert_archive_ends_at(dir.path(), 1, end);
    assert_eq!(
        fake.assert_reports_within(end),
        end,
        "final flush not reported"
    );
    let queries: Vec<String> = fake.queries().into_iter().map(|(_, q)| q).collect();
    assert!(
        queries.contains(&format!(
            "START_REPLICATION SLOT \"walsink\" PHYSICAL {} TIMELINE 1",
            format_lsn(START)
        )),
        "{queries:?}"
    );
    assert_no_problems(&fake);
}

// ---- malformed messages ----------------------------------------------------------------------------

/// An XLogData whose header is shorter than its 25 bytes: refused, nothing of it written.
#[test]
fn short_xlogdata_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = START + 2 * PAGE;
    let mut short = vec![b'w'];
    short.extend_from_slice(&good.to_be_bytes());
    short.extend_from_slice(&[0xAB; 6]);
    let (fake, r) = run_script(
        dir.path(),
        vec![
            Step::wal(START, 2 * PAGE as usize),
            Step::wait_flush(good),
            Step::CopyData(short),
        ],
    );
    assert_fault(
        "short XLogData",
        &fake,
        dir.path(),
        &r,
        1,
        &["XLogData header too small: 15 bytes", &nothing_after(good)],
        good,
    );
}

/// A CopyData message of a type physical replication does not have ('z').
#[test]
fn unknown_copydata_type_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = START + PAGE + 512;
    let mut z = vec![b'z'];
    z.extend_from_slice(&wal_bytes(good, 64));
    let (fake, r) = run_script(
        dir.path(),
        vec![
            Step::wal(START, (good - START) as usize),
            Step::wait_flush(good),
            Step::CopyData(z),
        ],
    );
    assert_fault(
        "CopyData of type 'z'",
        &fake,
        dir.path(),
        &r,
        1,
        &["unrecognized streaming header: \"z\"", &nothing_after(good)],
        good,
    );
}

/// A backend message type that does not exist ('Y'), and one that exists but has no place in copy
/// mode (DataRow), between XLogData messages.
#[test]
fn unknown_or_misplaced_message_type_during_streaming_is_refused() {
    for (tag, body) in [(b'Y', &b"\x01\x02\x03"[..]), (b'D', &b"\x00\x00"[..])] {
        let what = format!("message '{}' during streaming", tag as char);
        let dir = tempfile::tempdir().unwrap();
        let good = START + 3 * PAGE;
        let (fake, r) = run_script(
            dir.path(),
            vec![
                Step::wal(START, (good - START) as usize),
                Step::wait_flush(good),
                Step::Raw(frame(tag, body)),
                Step::wal(good, PAGE as usize),
            ],
        );
        assert_fault(
            &what,
            &fake,
            dir.path(),
            &r,
            1,
            &[
                &format!(
                    "unexpected message '{}' from server during streaming",
                    tag as char
                ),
                &nothing_after(good),
            ],
            good,
        );
    }
}

/// A frame header announcing an absurd length (over the 1 MiB cap, or under the 4 bytes of the length
/// itself) is refused from the header alone: the fake sends only the 5 header bytes and keeps the
/// connection open, so a walsink that waited for the body would hang until its receive timeout.
#[test]
fn absurd_frame_length_is_refused_from_the_header_alone() {
    for len in [u32::MAX, 0x7FFF_FFFF, (1 << 20) + 25, 3] {
        let what = format!("frame length {len}");
        let dir = tempfile::tempdir().unwrap();
        let good = START + PAGE;
        let mut header = vec![b'd'];
        header.extend_from_slice(&len.to_be_bytes());
        let (fake, r) = run_script(
            dir.path(),
            vec![
                Step::wal(START, PAGE as usize),
                Step::wait_flush(good),
                Step::Raw(header),
            ],
        );
        assert_fault(
            &what,
            &fake,
            dir.path(),
            &r,
            1,
            &[
                &format!("server sent a message of type 'd' with invalid length {len}"),
                &nothing_after(good),
            ],
            good,
        );
        assert!(
            r.elapsed < Duration::from_secs(20),
            "{what}: walsink took {:?}; it must refuse at the header, not wait for the body",
            r.elapsed
        );
    }
}

/// A frame cut short by the end of the connection is a lost connection (exit 3 with `-n`, retried
/// otherwise), and none of its bytes are written.
#[test]
fn truncated_frame_then_close_is_a_lost_connection() {
    let dir = tempfile::tempdir().unwrap();
    let good = START + 2 * PAGE;
    let mut cut = frame(
        b'd',
        &crate::harness::fake::xlogdata_payload(good, good + PAGE, &wal_bytes(good, PAGE as usize)),
    );
    cut.truncate(25 + 4000);
    let (fake, r) = run_script(
        dir.path(),
        vec![
            Step::wal(START, (good - START) as usize),
            Step::wait_flush(good),
            Step::Raw(cut),
            Step::Sleep(Duration::from_millis(200)),
            Step::Close,
        ],
    );
    assert_fault(
        "truncated frame",
        &fake,
        dir.path(),
        &r,
        3,
        &["server closed the connection unexpectedly, in the middle of a message"],
        good,
    );
}

// ---- XLogData at the wrong position ----------------------------------------------------------------

/// XLogData that skips ahead (start > expected) is refused: writing it would leave a hole. In loop mode
/// too: the same server would send the same bytes again, so walsink stops (exit 1) instead of retrying.
#[test]
fn gap_in_xlogdata_is_refused_and_not_retried() {
    for looping in [false, true] {
        let what = if looping { "gap (loop mode)" } else { "gap" };
        let dir = tempfile::tempdir().unwrap();
        let good = START + PAGE;
        let fake = FakeServer::start(vec![FakeSession::new(SYSID, 1, START).steps([
            Step::wal(START, PAGE as usize),
            Step::wait_flush(good),
            Step::wal(good + 2 * PAGE, PAGE as usize),
        ])]);
        let r = run(&fake, dir.path(), if looping { &[] } else { &["-n"] });
        assert_fault(
            what,
            &fake,
            dir.path(),
            &r,
            1,
            &[
                &format!(
                    "server sent WAL starting at {}, but walsink expected {}: a gap in the stream",
                    format_lsn(good + 2 * PAGE),
                    format_lsn(good)
                ),
                &nothing_after(good),
            ],
            good,
        );
        assert_eq!(fake.connections(), 1, "{what}: walsink reconnected");
    }
}

/// XLogData that goes back into what was already received (start < expected) is refused, even though
/// its end is past the expected position; none of its bytes, old or new, are written.
#[test]
fn overlapping_xlogdata_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = START + 2 * PAGE;
    let (fake, r) = run_script(
        dir.path(),
        vec![
            Step::wal(START, (good - START) as usize),
            Step::wait_flush(good),
            bogus_wal(good - PAGE, 3 * PAGE as usize),
        ],
    );
    assert_fault(
        "overlap",
        &fake,
        dir.path(),
        &r,
        1,
        &[
            &format!(
                "server sent WAL starting at {}, but walsink expected {}: an overlap in the stream",
                format_lsn(good - PAGE),
                format_lsn(good)
            ),
            &nothing_after(good),
        ],
        good,
    );
}

/// The first XLogData of a stream must begin where START_REPLICATION asked (a segment start); one that
/// begins elsewhere (inside the first page, or before the start) is refused and nothing is written.
#[test]
fn first_xlogdata_off_the_requested_start_is_refused() {
    for first in [START + 100, START + PAGE, START - 24] {
        let what = format!("first XLogData at {}", format_lsn(first));
        let dir = tempfile::tempdir().unwrap();
        let (fake, r) = run_script(dir.path(), vec![bogus_wal(first, PAGE as usize)]);
        r.expect(
            &what,
            1,
            &[
                &format!(
                    "server sent WAL starting at {}, but walsink expected {}: the stream must begin where START_REPLICATION asked",
                    format_lsn(first),
                    format_lsn(START)
                ),
                &nothing_after(START),
            ],
        );
        assert_archive_ends_at(dir.path(), 1, START);
        assert!(
            archive::completed_segments(dir.path()).is_empty(),
            "{what}: {:?}",
            archive::list(dir.path())
        );
        // At most the start itself, which the first status update reports as flushed (everything before it
        // is in the archive); nothing of the refused WAL.
        let flush = fake.assert_reports_within(START);
        assert!(
            flush == 0 || flush == START,
            "{what}: a flush past the start was reported with nothing received: {}",
            format_lsn(flush)
        );
        assert_no_problems(&fake);
    }
}

/// XLogData whose end lies past the last possible WAL position (2^64) is a protocol violation: exit 1,
/// as for any other, not an archive error (17) from a wrapped-around position; the WAL before it, to
/// 128 bytes short of 2^64 on the last segment there is, is archived and its flush reported.
#[test]
fn xlogdata_ending_past_2_pow_64_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let last_segment = u64::MAX - SEG + 1;
    let good = u64::MAX - 127;
    let mut script = wal_chunks(last_segment, good);
    script.extend([
        Step::wait_flush(good),
        Step::CopyData(crate::harness::fake::xlogdata_payload(
            good,
            u64::MAX,
            &[0x55; 256],
        )),
    ]);
    let fake = FakeServer::start(vec![FakeSession::new(SYSID, 1, last_segment).steps(script)]);
    let r = run(&fake, dir.path(), &["-n"]);
    r.expect(
        "XLogData past 2^64",
        1,
        &[
            &format!(
                "server sent 256 bytes of WAL starting at {}, which end past the last possible WAL position",
                format_lsn(good)
            ),
            &format!("nothing after {} (timeline 1) was written", format_lsn(good)),
        ],
    );
    let partial = format!("{}.partial", seg_name(1, last_segment));
    let bytes = fs::read(dir.path().join(&partial)).unwrap();
    let n = (good - last_segment) as usize;
    assert!(
        bytes[..n]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == wal_byte(last_segment + i as u64)),
        "{partial} does not hold the WAL sent"
    );
    assert!(
        bytes[n..].iter().all(|&b| b == 0),
        "bytes past {} written",
        format_lsn(good)
    );
    assert_eq!(fake.assert_reports_within(good), good);
    assert_no_problems(&fake);
}

// ---- end of timeline -------------------------------------------------------------------------------

/// Control for the bogus replies below: a valid end-of-timeline reply (next timeline 2 beginning inside
/// what was streamed) is followed: history file fetched, streaming restarts at the segment start on
/// timeline 2, and its WAL is archived.
#[test]
fn valid_end_of_timeline_reply_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let received = START + 4 * PAGE;
    let switch = START + 3 * PAGE + 40;
    let history = format!("1\t{}\tno recovery target specified\n", format_lsn(switch));
    let fake = FakeServer::start(vec![
        FakeSession::new(SYSID, 2, START + 8 * PAGE)
            .slot(TL1_SLOT)
            .history(2, &history)
            .steps([
                Step::wal(START, (received - START) as usize),
                Step::wait_flush(received),
                Step::EndOfTimeline {
                    next_tli: "2".into(),
                    next_start: format_lsn(switch),
                },
                Step::wal(START, 6 * PAGE as usize),
                Step::wait_flush(START + 6 * PAGE),
                Step::Close,
            ]),
    ]);
    let r = run(&fake, dir.path(), &["-n"]);
    r.expect(
        "valid end of timeline",
        3,
        &[&format!("switched to timeline 2 at {}", format_lsn(switch))],
    );
    let queries: Vec<String> = fake.queries().into_iter().map(|(_, q)| q).collect();
    assert!(
        queries.contains(&"TIMELINE_HISTORY 2".to_string())
            && queries.contains(&format!(
                "START_REPLICATION SLOT \"walsink\" PHYSICAL {} TIMELINE 2",
                format_lsn(START)
            )),
        "{queries:?}"
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("00000002.history")).unwrap(),
        history
    );
    let tl1 = fs::read(dir.path().join(format!("{}.partial", seg_name(1, START)))).unwrap();
    let tl2 = fs::read(dir.path().join(format!("{}.partial", seg_name(2, START)))).unwrap();
    assert_eq!(
        tl1[..4 * PAGE as usize],
        wal_bytes(START, 4 * PAGE as usize)[..]
    );
    assert!(tl1[4 * PAGE as usize..].iter().all(|&b| b == 0));
    assert_eq!(
        tl2[..6 * PAGE as usize],
        wal_bytes(START, 6 * PAGE as usize)[..]
    );
    assert!(tl2[6 * PAGE as usize..].iter().all(|&b| b == 0));
    fake.assert_reports_within(START + 6 * PAGE);
    assert_no_problems(&fake);
}

/// End-of-timeline replies no server sends: a next timeline that is not after the current one
/// (the same, or an earlier one), not a timeline at all (0, text), or a next timeline said to begin
/// past the end of what this timeline streamed (far past, or just past it in the next segment, which
/// would leave the rest of this timeline's segment missing from the archive). Each is refused with
/// exit 1, before anything of the next timeline is requested.
#[test]
fn bogus_end_of_timeline_replies_are_refused() {
    let received = START + SEG - 2 * PAGE;
    let cases: [(&str, String, &str); 6] = [
        (
            "1",
            format_lsn(START + PAGE),
            "server reported unexpected next timeline 1, following timeline 1",
        ),
        (
            "0",
            format_lsn(START + PAGE),
            "could not parse next timeline \"0\"",
        ),
        (
            "two",
            format_lsn(START + PAGE),
            "could not parse next timeline \"two\"",
        ),
        (
            "2",
            "0/XYZ".into(),
            "could not parse next timeline's start position \"0/XYZ\"",
        ),
        (
            "2",
            format_lsn(START + 3 * SEG),
            "server stopped streaming timeline 1 at 0/30FC000, but reported next timeline 2 to begin at 0/3300000",
        ),
        (
            "2",
            format_lsn(START + SEG + 100),
            "server stopped streaming timeline 1 at 0/30FC000, but reported next timeline 2 to begin at 0/3100064",
        ),
    ];
    for (next_tli, next_start, needle) in cases {
        let what = format!("next timeline {next_tli:?} at {next_start:?}");
        let dir = tempfile::tempdir().unwrap();
        let mut script = wal_chunks(START, received);
        script.extend([
            Step::wait_flush(received),
            Step::EndOfTimeline {
                next_tli: next_tli.into(),
                next_start: next_start.clone(),
            },
        ]);
        let fake = FakeServer::start(vec![
            FakeSession::new(SYSID, 2, START + 4 * SEG)
                .slot(TL1_SLOT)
                // A valid history (walsink reads it before streaming timeline 1); only
                // the end-of-timeline reply is bogus.
                .history(
                    2,
                    &format!(
                        "1\t{}\tno recovery target specified\n",
                        format_lsn(received)
                    ),
                )
                .steps(script),
        ]);
        let r = run(&fake, dir.path(), &["-n"]);
        assert_fault(&what, &fake, dir.path(), &r, 1, &[needle], received);
        let queries: Vec<String> = fake.queries().into_iter().map(|(_, q)| q).collect();
        // (walsink may read the server's history before streaming an older timeline, to
        // check for a fork; what must not happen is anything after the bogus reply.)
        let first_start = queries
            .iter()
            .position(|q| q.starts_with("START_REPLICATION"))
            .expect("START_REPLICATION was sent");
        assert!(
            queries.len() == first_start + 1,
            "{what}: walsink went on to the next timeline: {queries:?}"
        );
    }
}

// ---- server errors ---------------------------------------------------------------------------------

/// "requested WAL segment ... has already been removed" (58P01) mid-stream: exit 14 with the hint that
/// the archive has a gap.
#[test]
fn wal_removed_mid_stream_exits_14() {
    let dir = tempfile::tempdir().unwrap();
    let good = START + 5 * PAGE;
    let (fake, r) = run_script(
        dir.path(),
        vec![
            Step::wal(START, (good - START) as usize),
            Step::wait_flush(good),
            Step::Error {
                code: "58P01".into(),
                message: format!(
                    "requested WAL segment {} has already been removed",
                    seg_name(1, START + SEG)
                ),
            },
        ],
    );
    assert_fault(
        "WAL removed",
        &fake,
        dir.path(),
        &r,
        14,
        &[
            &format!(
                "requested WAL segment {} has already been removed",
                seg_name(1, START + SEG)
            ),
            "start a new archive directory",
        ],
        good,
    );
}

/// A keepalive asking for a reply is answered at once (within 1 s), and what walsink reports as flushed
/// is what it has made durable: with `--flush-interval 1h --flush-bytes 1GB`, WAL past the last
/// completed segment is not synced until the server asks, so until then every status update (one a
/// second) reports the segment end as flushed, not the WAL received after it; after the reply request
/// the flush of all of it follows.
#[test]
fn reply_requested_keepalive_is_answered_at_once_and_flush_stays_honest() {
    let dir = tempfile::tempdir().unwrap();
    let seg_end = START + SEG;
    let end = seg_end + 2 * PAGE;
    let mut script = wal_chunks(START, seg_end);
    script.extend([
        Step::wait_flush(seg_end),
        Step::wal(seg_end, 2 * PAGE as usize),
        Step::Sleep(Duration::from_millis(2500)),
    ]);
    let keepalive_step = script.len();
    script.extend([
        Step::Keepalive {
            wal_end: end,
            reply_requested: true,
        },
        Step::wait_flush(end),
        Step::Close,
    ]);
    let fake = FakeServer::start(vec![FakeSession::new(SYSID, 1, START).steps(script)]);
    let r = run(
        &fake,
        dir.path(),
        &["-n", "--flush-interval", "3600s", "--flush-bytes", "1GB"],
    );
    r.expect(
        "keepalive",
        3,
        &["server closed the connection unexpectedly"],
    );
    assert_no_problems(&fake);
    assert_archive_ends_at(dir.path(), 1, end);
    fake.assert_reports_within(end);

    let asked = fake
        .step_played_at(0, keepalive_step)
        .expect("keepalive sent");
    let statuses = fake.statuses();
    let (before, after): (Vec<&StatusUpdate>, Vec<&StatusUpdate>) =
        statuses.iter().partition(|s| s.at < asked);
    // Before the request: the received WAL is reported as written, never as flushed.
    assert!(
        before.iter().any(|s| s.write == end),
        "no status update reported the received WAL as written: {before:#?}"
    );
    for s in &before {
        assert!(
            s.flush <= seg_end,
            "flush {} reported before the WAL after {} was synced: {s:?}",
            format_lsn(s.flush),
            format_lsn(seg_end)
        );
    }
    let reply = after.first().expect("no status update after the keepalive");
    assert!(
        reply.at.duration_since(asked) < Duration::from_secs(1),
        "the reply came {:?} after the request",
        reply.at.duration_since(asked)
    );
    assert!(
        after.iter().any(|s| s.flush == end),
        "the flush of the WAL the server asked about was never reported: {after:#?}"
    );
}

/// On reconnect the server is a different database system: exit 15 at once (not retried), and the
/// archive pinned to the first system is exactly as the first connection left it.
#[test]
fn other_system_on_reconnect_exits_15_and_leaves_the_archive_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let good = START + 3 * PAGE;
    let other = SYSID + 1;
    let fake = FakeServer::start(vec![
        FakeSession::new(SYSID, 1, START).steps([
            Step::wal(START, (good - START) as usize),
            Step::wait_flush(good),
            Step::Close,
        ]),
        FakeSession::new(other, 1, START).steps(wal_chunks(START, START + SEG)),
    ]);
    // Loop mode: the first connection's end is retried, the second's mismatch is not.
    let r = run(&fake, dir.path(), &[]);
    assert_fault(
        "other system",
        &fake,
        dir.path(),
        &r,
        15,
        &[&SYSID.to_string(), &other.to_string()],
        good,
    );
    assert_eq!(fake.connections(), 2, "expected exactly one reconnect");
    let second: Vec<String> = fake
        .queries()
        .into_iter()
        .filter(|(c, _)| *c == 1)
        .map(|(_, q)| q)
        .collect();
    assert!(
        !second.iter().any(|q| q.starts_with("START_REPLICATION")),
        "walsink streamed from the other system: {second:?}"
    );
    let meta = fs::read_to_string(dir.path().join(".walsink.meta")).unwrap();
    assert!(
        meta.contains(&format!("system_identifier = {SYSID}")),
        ".walsink.meta changed: {meta}"
    );
}

/// `SHOW wal_segment_size` answering a size that is not a power of two: a clear error naming the value,
/// before anything is written to the archive.
#[test]
fn invalid_wal_segment_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeServer::start(vec![
        FakeSession::new(SYSID, 1, START)
            .segment_size("3MB")
            .steps(wal_chunks(START, START + SEG)),
    ]);
    let r = run(&fake, dir.path(), &["-n"]);
    r.expect(
        "wal_segment_size 3MB",
        1,
        &["SHOW wal_segment_size", "\"3MB\"", "power of two"],
    );
    let names: Vec<String> = archive::list(dir.path())
        .into_iter()
        .filter(|n| n != ".walsink.lock")
        .collect();
    assert!(names.is_empty(), "the archive was written to: {names:?}");
    assert!(fake.statuses().is_empty());
    assert_no_problems(&fake);
}
