use super::*;
use crate::META_FILE;
use crate::testutil::*;
use std::fs;
use walsink_wal::synth::{PG18, SynthParams, SynthWal};

const SYSID: u64 = 7_000_000_000_000_000_077;

fn params(tli: u32) -> SynthParams {
    SynthParams {
        seg: seg1m(),
        format: PG18,
        system_id: SYSID,
        tli,
    }
}

/// Writes segments 3, 4, 5 (completed) and 6 (`.partial`, half full, zeros after) of
/// timeline 1, records crossing every segment boundary, and a `walsink.meta`.
fn archive() -> tempfile::TempDir {
    let d = tempdir();
    let mut w = SynthWal::new(params(1), Lsn(3 * SEG));
    w.fill(Lsn(6 * SEG + SEG / 2), &[100, 7000, 30_000, 10]);
    let bytes = w.bytes();
    for (i, segno) in (3..=6u64).enumerate() {
        let from = i * SEG as usize;
        let to = (from + SEG as usize).min(bytes.len());
        let mut img = bytes[from..to].to_vec();
        let name = SegmentName::new(tli(1), SegNo(segno)).file_name(seg1m());
        if segno == 6 {
            img.resize(SEG as usize, 0);
            fs::write(d.path().join(format!("{name}.partial")), img).unwrap();
        } else {
            fs::write(d.path().join(name), img).unwrap();
        }
    }
    write_meta(d.path(), "");
    d
}

fn write_meta(dir: &Path, extra: &str) {
    fs::write(
        dir.join(META_FILE),
        format!("system_identifier = {SYSID}\nwal_segment_size = {SEG}\n{extra}"),
    )
    .unwrap();
}

fn verify(dir: &Path) -> VerifyReport {
    verify_with(dir, VerifyOptions::default())
}

fn verify_with(dir: &Path, opts: VerifyOptions) -> VerifyReport {
    let v = Verifier::open(dir, opts).unwrap();
    let total = v.total_bytes();
    let mut seen = 0;
    let mut read = |f: &File| -> std::io::Result<Mapped> {
        use std::io::Read;
        let mut buf = Vec::new();
        (&*f).read_to_end(&mut buf)?;
        Ok(Box::new(buf))
    };
    let r = v.run(&mut read, &mut |n| seen += n);
    assert_eq!(seen, total, "progress adds up to the total");
    r
}

fn name(t: u32, segno: u64) -> String {
    SegmentName::new(tli(t), SegNo(segno)).file_name(seg1m())
}

#[test]
fn a_valid_archive_has_no_problems() {
    let d = archive();
    // Private files and unrelated ones are not WAL.
    fs::write(d.path().join(".walsink.lock"), "1").unwrap();
    fs::write(d.path().join("walsink.prepared.tmp"), vec![1u8; 100]).unwrap();
    fs::write(d.path().join("README"), "hello").unwrap();
    let r = verify(d.path());
    assert!(r.is_valid(), "{:#?}", r.problems);
    assert_eq!(r.files, 4);
    assert_eq!(r.timelines.len(), 1);
    let t = &r.timelines[0];
    assert_eq!(t.first, Lsn(3 * SEG));
    assert!(
        t.end > Lsn(6 * SEG + SEG / 2) && t.end < Lsn(7 * SEG),
        "{:?}",
        t.end
    );
    assert!(r.records > 100);
    assert_eq!(r.system_identifier, Some(SYSID));
}

#[test]
fn a_flipped_byte_is_found_with_file_and_lsn() {
    let d = archive();
    let path = d.path().join(name(1, 4));
    let mut b = fs::read(&path).unwrap();
    b[500_000] ^= 0x08;
    fs::write(&path, b).unwrap();
    let r = verify(d.path());
    assert_eq!(r.problems.len(), 1, "{:#?}", r.problems);
    let p = &r.problems[0];
    assert_eq!(p.file.as_deref(), Some(name(1, 4).as_str()));
    let lsn = p.lsn.unwrap();
    assert!(
        lsn <= Lsn(4 * SEG + 500_000) && lsn > Lsn(4 * SEG + 400_000),
        "{p}"
    );
    assert!(p.what.contains("CRC"), "{p}");
    // The next segment is still checked (it starts a new run).
    assert_eq!(r.files, 4);
}

#[test]
fn a_truncated_segment_is_found() {
    let d = archive();
    let path = d.path().join(name(1, 4));
    let b = fs::read(&path).unwrap();
    fs::write(&path, &b[..700_000]).unwrap();
    let r = verify(d.path());
    assert!(
        r.problems
            .iter()
            .any(|p| p.what.contains("completed segment has 700000 bytes")),
        "{:#?}",
        r.problems
    );
}

#[test]
fn a_missing_segment_is_a_problem_unless_a_gap_was_recorded() {
    let d = archive();
    fs::remove_file(d.path().join(name(1, 4))).unwrap();
    let r = verify(d.path());
    let missing: Vec<_> = r
        .problems
        .iter()
        .filter(|p| {
            p.what
                .contains("missing segment(s) 000000010000000000000004")
        })
        .collect();
    assert_eq!(missing.len(), 1, "{:#?}", r.problems);
    assert_eq!(missing[0].lsn, Some(Lsn(4 * SEG)));
    // Accepted with --allow-gap: a note.
    write_meta(
        d.path(),
        &format!("gap = {} {} 0 removed\n", Lsn(4 * SEG), Lsn(5 * SEG)),
    );
    let r = verify(d.path());
    assert!(r.is_valid(), "{:#?}", r.problems);
    assert!(
        r.notes.iter().any(|n| n.what.contains("--allow-gap")),
        "{:#?}",
        r.notes
    );
}

#[test]
fn a_partial_in_the_middle_is_a_problem() {
    let d = archive();
    let from = d.path().join(name(1, 4));
    fs::rename(&from, d.path().join(format!("{}.partial", name(1, 4)))).unwrap();
    let r = verify(d.path());
    assert!(
        r.problems.iter().any(|p| p
            .what
            .contains("incomplete (.partial) but the WAL continues")),
        "{:#?}",
        r.problems
    );
}

#[test]
fn wal_of_a_timeline_without_its_history_is_a_problem() {
    let d = archive();
    let mut w = SynthWal::new(params(2), Lsn(7 * SEG));
    w.fill(Lsn(7 * SEG + 1000), &[100]);
    let mut img = w.bytes().to_vec();
    img.resize(SEG as usize, 0);
    fs::write(d.path().join(format!("{}.partial", name(2, 7))), img).unwrap();
    let r = verify(d.path());
    assert!(
        r.problems
            .iter()
            .any(|p| p.what.contains("00000002.history is missing")),
        "{:#?}",
        r.problems
    );
    // With it: timeline 2 continues timeline 1 at 0/680000, but segment 6 of timeline
    // 2 is missing there.
    fs::write(d.path().join("00000002.history"), "1\t0/680000\tpromoted\n").unwrap();
    let r = verify(d.path());
    assert!(
        r.problems.iter().any(|p| p
            .what
            .contains("missing segment(s) 000000020000000000000006")),
        "{:#?}",
        r
    );
}

#[test]
fn pages_of_the_wrong_timeline_are_found() {
    let d = archive();
    // Segment 5's content renamed to timeline 2 with a history saying timeline 1 ends at
    // segment 5: its pages say timeline 1 (fine, a parent), but the timeline 2 copy of
    // segment 6 says timeline 3.
    fs::write(d.path().join("00000002.history"), "1\t0/500000\tpromoted\n").unwrap();
    fs::rename(d.path().join(name(1, 5)), d.path().join(name(2, 5))).unwrap();
    let mut w = SynthWal::new(params(3), Lsn(6 * SEG));
    w.fill(Lsn(6 * SEG + 1000), &[100]);
    let mut img = w.bytes().to_vec();
    img.resize(SEG as usize, 0);
    fs::write(d.path().join(format!("{}.partial", name(2, 6))), img).unwrap();
    let r = verify(d.path());
    assert!(
        r.problems.iter().any(
            |p| p.file.as_deref() == Some(&format!("{}.partial", name(2, 6)))
                && p.what.contains("beyond the timeline 2")
        ),
        "{:#?}",
        r.problems
    );
}

#[test]
fn from_and_to_limit_what_is_read() {
    let d = archive();
    let path = d.path().join(name(1, 3));
    let mut b = fs::read(&path).unwrap();
    b[100_000] ^= 1;
    fs::write(&path, b).unwrap();
    let r = verify_with(
        d.path(),
        VerifyOptions {
            from: Some(Lsn(4 * SEG + 10)),
            to: Some(Lsn(5 * SEG + 10)),
        },
    );
    assert!(r.is_valid(), "{:#?}", r.problems);
    assert_eq!(r.files, 2);
}

#[test]
fn an_empty_directory_is_valid_and_has_no_timelines() {
    let d = tempdir();
    let r = verify(d.path());
    assert!(r.is_valid());
    assert!(r.timelines.is_empty());
}

#[test]
fn a_partial_may_end_inside_a_record_but_a_damaged_last_record_is_found() {
    let d = archive();
    let path = d.path().join(format!("{}.partial", name(1, 6)));
    let img = fs::read(&path).unwrap();
    let used = img.len() - img.iter().rev().take_while(|&&b| b == 0).count();
    // Cut: the last 3000 bytes of WAL were never received (zeros).
    let mut cut = img.clone();
    cut[used - 3000..used].fill(0);
    fs::write(&path, &cut).unwrap();
    let r = verify(d.path());
    assert!(r.is_valid(), "{:#?}", r.problems);
    // Damage in the last record, whose bytes are all there.
    let mut bad = img.clone();
    bad[used - 2] ^= 0x40;
    fs::write(&path, &bad).unwrap();
    let r = verify(d.path());
    assert_eq!(r.problems.len(), 1, "{:#?}", r.problems);
    assert!(r.problems[0].what.contains("CRC"), "{:#?}", r.problems);
}

#[test]
fn an_archive_without_walsink_meta_is_read_from_its_wal() {
    let d = archive();
    fs::remove_file(d.path().join(META_FILE)).unwrap();
    let r = verify(d.path());
    assert!(r.is_valid(), "{:#?}", r.problems);
    assert_eq!(
        r.system_identifier,
        Some(SYSID),
        "from the newest long page header"
    );
    assert_eq!(r.files, 4);
}

#[test]
fn duplicates_and_compressed_files_are_problems() {
    let d = archive();
    fs::copy(
        d.path().join(name(1, 4)),
        d.path().join(format!("{}.partial", name(1, 4))),
    )
    .unwrap();
    fs::write(d.path().join(format!("{}.gz", name(1, 7))), b"x").unwrap();
    let r = verify(d.path());
    assert!(
        r.problems.iter().any(|p| p.what.contains("there twice")),
        "{:#?}",
        r.problems
    );
    assert!(
        r.problems.iter().any(|p| p.what.contains("compressed")),
        "{:#?}",
        r.problems
    );
}

/// The check on `jobs` threads ([`Verifier::run_parallel`]).
fn verify_parallel(dir: &Path, jobs: usize) -> VerifyReport {
    let v = Verifier::open(dir, VerifyOptions::default()).unwrap();
    let total = v.total_bytes();
    let seen = std::sync::atomic::AtomicU64::new(0);
    let read = |f: &File| -> std::io::Result<Mapped> {
        use std::io::Read;
        let mut buf = Vec::new();
        (&*f).read_to_end(&mut buf)?;
        Ok(Box::new(buf))
    };
    let r = v.run_parallel(jobs, &read, &|n| {
        seen.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(seen.into_inner(), total, "progress adds up to the total");
    r
}

/// Segments 2 to 13 of timeline 1 (completed) and 14 (`.partial`, WAL up to 14/0x30000):
/// small and page-crossing records, records longer than a segment (one over three
/// segment boundaries), an `XLOG_SWITCH` in the middle of a segment and one whose record
/// crosses into the next segment (its padding fills that one), records ending exactly at a
/// segment end. Returns the directory and the WAL image from segment 2 (its end is the
/// end of the WAL).
fn long_archive() -> (tempfile::TempDir, Vec<u8>) {
    let d = tempdir();
    let mut w = SynthWal::new(params(1), Lsn(2 * SEG));
    let big = |n: usize| -> Vec<u8> { (0..n).map(|i| (i % 253) as u8).collect() };
    w.fill(Lsn(2 * SEG + 300_000), &[60, 100, 8000, 3]);
    w.record(11, 0, &big(2 * SEG as usize + 123_456)); // segment 2 into 4
    w.fill(Lsn(5 * SEG + 200_000), &[200, 40]);
    w.switch(); // padding to the end of segment 5
    w.fill(Lsn(7 * SEG - 40_000), &[1000, 24, 3000]);
    w.record(11, 0, &big(SEG as usize / 2)); // 6 into 7
    w.fill(Lsn(8 * SEG - 5000), &[100]);
    // A switch record that begins 16 bytes before the end of segment 8: crossing into 9,
    // whose rest is padding.
    records_to(&mut w, 9 * SEG - 16);
    w.switch();
    w.fill(Lsn(11 * SEG - 1000), &[300, 77, 9000]);
    // Records up to exactly the end of segment 11.
    records_to(&mut w, 12 * SEG);
    w.fill(Lsn(14 * SEG + 0x30000), &[50, 5000, 150, 20_000]);
    assert!(w.position().0 < 14 * SEG + 0x40000);
    let bytes = w.bytes().to_vec();
    for segno in 2..=14u64 {
        let from = ((segno - 2) * SEG) as usize;
        let to = (from + SEG as usize).min(bytes.len());
        let mut img = bytes[from..to].to_vec();
        if segno == 14 {
            img.resize(SEG as usize, 0);
            fs::write(d.path().join(format!("{}.partial", name(1, segno))), img).unwrap();
        } else {
            fs::write(d.path().join(name(1, segno)), img).unwrap();
        }
    }
    write_meta(d.path(), "");
    (d, bytes)
}

/// Adds records so that the last one ends exactly at `end` (in the page after the
/// position's, or later).
fn records_to(w: &mut SynthWal, end: u64) {
    while end - w.position().0 > 4000 {
        w.record(11, 0, &[5; 16]);
    }
    let left = (end - w.position().0) as usize;
    w.record(11, 0, &vec![6; left - 24]);
    assert_eq!(w.position().0, end);
}

/// Flips bit `bit` of the byte at LSN `at` in its file.
fn flip(dir: &Path, at: u64, bit: u8) {
    let segno = at / SEG;
    let mut path = dir.join(name(1, segno));
    if !path.exists() {
        path = dir.join(format!("{}.partial", name(1, segno)));
    }
    let mut b = fs::read(&path).unwrap();
    b[(at % SEG) as usize] ^= 1 << bit;
    fs::write(&path, b).unwrap();
}

fn assert_parallel_is_serial(dir: &Path) -> VerifyReport {
    let serial = verify(dir);
    for jobs in [2, 3, 16] {
        assert_eq!(verify_parallel(dir, jobs), serial, "{jobs} threads");
    }
    serial
}

#[test]
fn the_parallel_check_reports_what_the_serial_one_does_on_a_valid_archive() {
    let (d, bytes) = long_archive();
    let r = assert_parallel_is_serial(d.path());
    assert!(r.is_valid(), "{:#?}", r.problems);
    assert_eq!(r.files, 13);
    assert_eq!(r.timelines[0].end, Lsn(2 * SEG + bytes.len() as u64));
}

#[test]
fn the_parallel_check_reports_what_the_serial_one_does_on_a_damaged_archive() {
    let (d, bytes) = long_archive();
    // Several problems in different segments: a record's data in segment 3, inside the
    // record from segment 2 into 4 (found by the worker of segment 2, in the file where the
    // record ends), a page header in segment 5, the record that crosses from 6 into 7
    // (found in 7's file), a record right after the switch that crossed into 9 (segment
    // 10), a truncated segment (12), the last record of the .partial.
    flip(d.path(), 3 * SEG + 77_777, 2);
    flip(d.path(), 5 * SEG + 8 * 8192 + 9, 0);
    flip(d.path(), 7 * SEG + 100, 5);
    flip(d.path(), 10 * SEG + 40 + 3, 1);
    let p = d.path().join(name(1, 12));
    let b = fs::read(&p).unwrap();
    fs::write(&p, &b[..500_000]).unwrap();
    let used = 2 * SEG + bytes.len() as u64;
    flip(d.path(), used - 3, 3);
    let r = assert_parallel_is_serial(d.path());
    let files: Vec<&str> = r
        .problems
        .iter()
        .filter_map(|p| p.file.as_deref())
        .collect();
    let want: Vec<String> = [4, 5, 7, 10, 12]
        .iter()
        .map(|s| name(1, *s))
        .chain([format!("{}.partial", name(1, 14))])
        .collect();
    for w in &want {
        assert!(files.contains(&w.as_str()), "{w}: {:#?}", r.problems);
    }
}

#[test]
fn the_parallel_check_reports_what_the_serial_one_does_for_any_single_damage() {
    let (d, bytes) = long_archive();
    // Bytes near every segment boundary (page headers, records crossing them) and spread
    // over the rest, a different bit each time.
    let mut spots: Vec<u64> = Vec::new();
    for segno in 3..=14u64 {
        for delta in [-9i64, -1, 0, 17, 41, 8200] {
            spots.push((segno * SEG).wrapping_add_signed(delta));
        }
    }
    let mut x = 12345u64;
    for _ in 0..24 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        spots.push(2 * SEG + (x >> 20) % bytes.len() as u64);
    }
    for (i, at) in spots.into_iter().enumerate() {
        let (d2, _) = (tempdir(), ());
        for e in fs::read_dir(d.path()).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), d2.path().join(e.file_name())).unwrap();
        }
        flip(d2.path(), at, (i % 8) as u8);
        let serial = verify(d2.path());
        assert_eq!(
            verify_parallel(d2.path(), 3),
            serial,
            "damage at {}",
            Lsn(at)
        );
    }
}
