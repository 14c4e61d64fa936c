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
