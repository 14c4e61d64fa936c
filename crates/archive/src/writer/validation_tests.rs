//! Unit tests of WAL validation in the segment writer ([`WriterOptions::validate`]).

use super::*;
use crate::testutil::*;
use crate::{Archive, META_FILE};
use std::fs;
use walsink_wal::synth::{PG18, SynthParams, SynthWal};

pub(super) const SYSID: u64 = 7_000_000_000_000_000_042;
const S3: Lsn = Lsn(3 * SEG);

/// A validator of this WAL from `S3`, as the writer's.
fn validator() -> walsink_wal::validate::WalValidator {
    walsink_wal::validate::WalValidator::new(
        walsink_wal::validate::ValidatorConfig {
            seg: seg1m(),
            system_id: Some(SYSID),
            format: Some(PG18),
        },
        1,
        S3,
    )
}

pub(super) fn params() -> SynthParams {
    SynthParams {
        seg: seg1m(),
        format: PG18,
        system_id: SYSID,
        tli: 1,
    }
}

/// WAL from segment 3 into segment 4: small records, and one over several pages.
fn wal() -> Vec<u8> {
    let mut w = SynthWal::new(params(), S3);
    w.fill(Lsn(S3.0 + 50_000), &[100, 40, 3000]);
    w.record(10, 0, &[9; 40_000]);
    w.fill(Lsn(4 * SEG + 20_000), &[200, 9000]);
    w.bytes().to_vec()
}

/// An archive pinned to `SYSID` (with `format` pinned, if given) and a validating writer.
fn setup(format: Option<WalFormat>) -> (tempfile::TempDir, Archive, SegmentWriter) {
    let d = tempdir();
    let mut a = Archive::open(d.path(), SyncMode::Sync).unwrap();
    a.check_identity(SYSID, seg1m()).unwrap();
    if let Some(f) = format {
        a.pin_format(f).unwrap();
    }
    let opts = WriterOptions {
        validate: true,
        ..WriterOptions::default()
    };
    let w = a.segment_writer_with(seg1m(), opts).unwrap();
    (d, a, w)
}

fn write_in(w: &mut SegmentWriter, data: &[u8], size: usize) -> Result<(), ArchiveError> {
    let mut pos = S3;
    for c in data.chunks(size) {
        w.write(tli(1), pos, c)?;
        pos = Lsn(pos.0 + c.len() as u64);
    }
    Ok(())
}

#[test]
fn valid_wal_is_written_and_its_format_pinned() {
    let (d, mut a, mut w) = setup(None);
    let data = wal();
    write_in(&mut w, &data, 128 << 10).unwrap();
    let end = Lsn(S3.0 + data.len() as u64);
    assert_eq!(w.flush().unwrap(), end);
    assert_eq!(w.flushed(), end);
    assert_eq!(
        fs::read(d.path().join("000000010000000000000003")).unwrap(),
        data[..SEG as usize]
    );
    // The format is handed out once, for the archive to pin.
    assert_eq!(w.take_new_format(), Some(PG18));
    assert_eq!(w.take_new_format(), None);
    a.pin_format(PG18).unwrap();
    let meta = fs::read_to_string(d.path().join(META_FILE)).unwrap();
    assert!(meta.contains("wal_page_magic = D118\n"), "{meta}");
    assert_eq!(a.wal_format(), Some(PG18));
}

#[test]
fn the_flush_position_never_passes_a_record_not_yet_complete() {
    let (_d, _a, mut w) = setup(Some(PG18));
    let data = wal();
    // Up to the middle of the 40 kB record.
    let mut v = validator();
    let cut = 70_000;
    v.feed(&data[..cut]).unwrap();
    let record_start = v.checked_end();
    assert!(record_start < Lsn(S3.0 + cut as u64));
    w.write(tli(1), S3, &data[..cut]).unwrap();
    w.flush().unwrap();
    assert_eq!(w.flushed(), record_start, "not inside the record");
    assert_eq!(w.unflushed_bytes(), 0, "everything written is durable");
    // A stream that ends there (--endpos, shutdown) reports all of it once closed.
    w.close().unwrap();
    assert_eq!(w.flushed(), Lsn(S3.0 + cut as u64));
    w.write(tli(1), Lsn(S3.0 + cut as u64), &data[cut..cut + 100])
        .unwrap();
    w.flush().unwrap();
    assert_eq!(w.flushed(), record_start, "writing again caps again");
    w.write(tli(1), Lsn(S3.0 + cut as u64 + 100), &data[cut + 100..])
        .unwrap();
    w.flush().unwrap();
    assert_eq!(w.flushed(), Lsn(S3.0 + data.len() as u64));
}

#[test]
fn after_invalid_wal_even_a_close_reports_only_the_valid_part() {
    let (_d, _a, mut w) = setup(Some(PG18));
    let mut data = wal();
    data[3000] ^= 1;
    let e = write_in(&mut w, &data, 8192).unwrap_err();
    let ArchiveError::InvalidWal { invalid, .. } = e else {
        panic!("{e}")
    };
    let _ = w.close();
    assert_eq!(w.flushed(), invalid.good_end);
}

#[test]
fn invalid_wal_is_refused_after_the_last_valid_record_is_written_and_flushed() {
    for (what, off) in [("page header", 8192 * 2 + 9), ("record data", 3000)] {
        let (d, _a, mut w) = setup(Some(PG18));
        let mut data = wal();
        data[off] ^= 0x04;
        let e = write_in(&mut w, &data, 5000).expect_err(what);
        let ArchiveError::InvalidWal {
            invalid, segment, ..
        } = &e
        else {
            panic!("{what}: {e}");
        };
        assert_eq!(segment, "000000010000000000000003");
        assert!(invalid.good_end.0 <= S3.0 + off as u64, "{what}: {e}");
        assert!(invalid.good_end > S3, "{what}");
        assert_eq!(w.flushed(), invalid.good_end, "{what}: flushed up to it");
        assert_eq!(
            w.written(),
            invalid.good_end,
            "{what}: nothing written after it"
        );
        let file = fs::read(d.path().join("000000010000000000000003.partial")).unwrap();
        let good = (invalid.good_end.0 - S3.0) as usize;
        assert_eq!(file[..good], data[..good], "{what}");
        assert!(
            file[good..].iter().all(|&b| b == 0),
            "{what}: bytes after it"
        );
        assert!(e.to_string().contains(&invalid.good_end.to_string()), "{e}");
        // Nothing more is taken.
        assert!(
            w.write(tli(1), w.written(), &data[good..good + 10])
                .is_err()
        );
    }
}

#[test]
fn wal_of_another_format_than_the_pinned_one_is_refused() {
    let (_d, _a, mut w) = setup(Some(walsink_wal::validate::WalFormat {
        magic: 0xD116,
        blcksz: 8192,
    }));
    let e = write_in(&mut w, &wal(), 8192).unwrap_err();
    assert!(e.to_string().contains("magic D118, expected D116"), "{e}");
    assert_eq!(w.flushed(), S3);
}

/// A validating writer with `opts` (plus validation) on an archive pinned to `SYSID` and PG18.
fn setup_with(opts: WriterOptions) -> (tempfile::TempDir, Archive, SegmentWriter) {
    let d = tempdir();
    let mut a = Archive::open(d.path(), SyncMode::Sync).unwrap();
    a.check_identity(SYSID, seg1m()).unwrap();
    a.pin_format(PG18).unwrap();
    let opts = WriterOptions {
        validate: true,
        ..opts
    };
    let w = a.segment_writer_with(seg1m(), opts).unwrap();
    (d, a, w)
}

/// The writer options the tests of the discarding run under: buffered, direct I/O with
/// write-behind, background sync.
fn writer_variants() -> Vec<(&'static str, WriterOptions)> {
    vec![
        ("buffered", WriterOptions::default()),
        (
            "direct",
            WriterOptions {
                direct_io: true,
                write_behind: 64 << 10,
                ..WriterOptions::default()
            },
        ),
        (
            "background sync",
            WriterOptions {
                background_sync: true,
                ..WriterOptions::default()
            },
        ),
    ]
}

/// The start of the record that `lsn` falls in (of WAL `data` from `S3`).
fn record_start_at(data: &[u8], lsn: Lsn) -> Lsn {
    let mut v = validator();
    v.feed(&data[..(lsn.0 - S3.0) as usize]).unwrap();
    v.checked_end()
}

/// The WAL files of the archive (not walsink's own).
fn wal_files(d: &tempfile::TempDir) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// After invalid WAL, the archive is as if the stream had stopped at `valid_end`: one `.partial`
/// (segment 3) with `data` up to it and zeros after it, whose page and record headers end there, a
/// restart from it, and the writer's positions there.
fn assert_ends_at(
    what: &str,
    d: &tempfile::TempDir,
    a: &Archive,
    w: &SegmentWriter,
    data: &[u8],
    valid_end: Lsn,
) {
    assert_eq!(
        wal_files(d),
        ["000000010000000000000003.partial"],
        "{what}: the segment the valid WAL ends in is the newest file, and not completed"
    );
    let file = fs::read(d.path().join("000000010000000000000003.partial")).unwrap();
    assert_eq!(file.len() as u64, SEG, "{what}");
    let good = (valid_end.0 - S3.0) as usize;
    assert!(
        file[..good] == data[..good],
        "{what}: the valid WAL is kept"
    );
    if let Some(i) = file[good..].iter().position(|&b| b != 0) {
        panic!(
            "{what}: byte at {} after the valid end {valid_end} is not zero ({:?})",
            Lsn(valid_end.0 + i as u64),
            &file[good + i..good + i + 16]
        );
    }
    assert_eq!(
        a.partial_written_end(tli(1), S3, seg1m()).unwrap(),
        Some(valid_end),
        "{what}: a restart's flush floor"
    );
    let starts = a.find_starts(seg1m()).unwrap();
    assert_eq!(
        starts.last().map(|s| (s.lsn, s.from_partial)),
        Some((S3, true)),
        "{what}: a restart streams segment 3 again"
    );
    assert_eq!(w.written(), valid_end, "{what}");
    assert_eq!(w.flushed(), valid_end, "{what}");
    assert_eq!(w.unflushed_bytes(), 0, "{what}");
    assert!(w.open_segment_name().is_none(), "{what}");
}

/// A flipped byte early in a 40 kB record that arrives in 8 kB messages: the record's first
/// messages are written before its end shows the CRC wrong; then they are overwritten with zeros,
/// with every writer variant.
#[test]
fn the_written_bytes_of_an_invalid_record_are_zeroed() {
    for (what, opts) in writer_variants() {
        let (d, a, mut w) = setup_with(opts);
        let mut data = wal();
        let bad = 60_000;
        data[bad] ^= 0x10;
        let record = record_start_at(&data, Lsn(S3.0 + bad as u64));
        assert!(
            record.0 < S3.0 + bad as u64 - 8192,
            "{what}: a record of several messages"
        );
        let e = write_in(&mut w, &data, 8192).expect_err(what);
        let ArchiveError::InvalidWal { invalid, .. } = &e else {
            panic!("{what}: {e}")
        };
        assert_eq!(invalid.good_end, record, "{what}: {e}");
        assert_eq!(invalid.at, record, "{what}: {e}");
        assert_ends_at(what, &d, &a, &w, &data, record);
    }
}

/// WAL from segment 3 whose record at the returned position starts in segment 3 and ends past
/// `end` (`payload` bytes), with small records before and after it.
fn wal_crossing(payload: usize) -> (Vec<u8>, Lsn) {
    let mut w = SynthWal::new(params(), S3);
    w.fill(Lsn(S3.0 + SEG - 30_000), &[100, 40, 3000]);
    let at = w.record(10, 0, &vec![5; payload]);
    w.fill(Lsn(w.position().0 + 20_000), &[200]);
    (w.bytes().to_vec(), at)
}

/// A record that starts in segment 3 and is found invalid in segment 4 (and one over segments 4
/// and 5 into 6): segment 3 was completed when its end was reached, the later ones hold only the
/// record. Segment 3 is renamed back to `.partial` and zeroed from the record's start, the later
/// segments removed, so the archive ends at the record before and a restart streams segment 3.
#[test]
fn an_invalid_record_crossing_into_later_segments_leaves_its_first_segment_partial() {
    for (what, opts) in writer_variants() {
        for payload in [40_000, 2_200_000] {
            let what = &format!("{what}, {payload} bytes");
            let (d, a, mut w) = setup_with(opts);
            let (mut data, record) = wal_crossing(payload);
            // In segment 3, after the record's header.
            data[(record.0 - S3.0) as usize + 200] ^= 0x01;
            let e = write_in(&mut w, &data, 128 << 10).expect_err(what);
            let ArchiveError::InvalidWal { invalid, .. } = &e else {
                panic!("{what}: {e}")
            };
            assert_eq!(invalid.good_end, record, "{what}: {e}");
            assert_eq!(invalid.at, record, "{what}: {e}");
            assert_ends_at(what, &d, &a, &w, &data, record);
        }
    }
}

/// A record that ends exactly at a segment end and is valid is kept whole in its completed
/// segment; an invalid one right after it, running into the next segment, leaves that segment
/// `.partial` with only its (valid) long page header.
#[test]
fn an_invalid_record_at_a_segment_start_leaves_a_partial_of_its_page_header() {
    let (d, a, mut w) = setup(Some(PG18));
    let mut s = SynthWal::new(params(), S3);
    s.fill(Lsn(S3.0 + SEG - 10_000), &[100, 40, 3000]);
    // Ends at the segment end: 24-byte header, and the page headers of the pages it crosses.
    let pos = s.position().0;
    let pages = (4 * SEG).div_ceil(8192) - pos.div_ceil(8192);
    let payload = (4 * SEG - pos) as usize - 24 - 24 * pages as usize;
    s.record(10, 0, &vec![3; payload]);
    assert_eq!(
        s.position(),
        Lsn(4 * SEG),
        "the record ends at the segment end"
    );
    let at = s.record(10, 0, &[4; 30_000]);
    s.fill(Lsn(s.position().0 + 1000), &[100]);
    let mut data = s.bytes().to_vec();
    // The record starts after the long page header of segment 4.
    assert_eq!(at, Lsn(4 * SEG + 40));
    data[(at.0 - S3.0) as usize + 100] ^= 0x01;
    let e = write_in(&mut w, &data, 8192).unwrap_err();
    let ArchiveError::InvalidWal { invalid, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(invalid.good_end, at, "{e}: after the valid page header");
    assert_eq!(invalid.valid_end, Lsn(4 * SEG), "{e}");
    assert_eq!(
        wal_files(&d),
        [
            "000000010000000000000003",
            "000000010000000000000004.partial"
        ]
    );
    assert!(fs::read(d.path().join("000000010000000000000003")).unwrap() == data[..SEG as usize]);
    let file = fs::read(d.path().join("000000010000000000000004.partial")).unwrap();
    assert!(file[..40] == data[SEG as usize..SEG as usize + 40]);
    assert!(
        file[40..].iter().all(|&b| b == 0),
        "nothing of the invalid record is left"
    );
    assert_eq!(w.written(), at);
    assert_eq!(w.flushed(), at);
    assert_eq!(
        a.partial_written_end(tli(1), Lsn(4 * SEG), seg1m())
            .unwrap(),
        Some(at)
    );
    assert_eq!(
        a.find_starts(seg1m()).unwrap().last().map(|s| s.lsn),
        Some(Lsn(4 * SEG))
    );
}

/// After an `XLOG_SWITCH` the rest of the segment is padding: an invalid first page of the next
/// segment leaves the switch's segment completed (it is whole and valid), and nothing of the next.
#[test]
fn an_invalid_page_after_a_switch_keeps_the_switched_segment_complete() {
    for size in [8192, 100_000] {
        let (d, a, mut w) = setup(Some(PG18));
        let mut s = SynthWal::new(params(), S3);
        s.fill(Lsn(S3.0 + 30_000), &[100, 3000]);
        s.switch();
        s.fill(Lsn(4 * SEG + 20_000), &[100]);
        let mut data = s.bytes().to_vec();
        data[SEG as usize + 9] ^= 0x40; // the page address of segment 4's first page
        let e = write_in(&mut w, &data, size).unwrap_err();
        let ArchiveError::InvalidWal { invalid, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(invalid.at, Lsn(4 * SEG), "{e}");
        assert_eq!(invalid.good_end, Lsn(4 * SEG), "{e}");
        assert!(
            e.to_string()
                .contains("the archive holds the WAL up to 0/400000,"),
            "{e}"
        );
        assert_eq!(wal_files(&d), ["000000010000000000000003"], "size {size}");
        assert!(
            fs::read(d.path().join("000000010000000000000003")).unwrap() == data[..SEG as usize]
        );
        assert_eq!(w.flushed(), Lsn(4 * SEG));
        let start = a.find_starts(seg1m()).unwrap();
        assert_eq!(
            start.last().map(|s| (s.lsn, s.from_partial)),
            Some((Lsn(4 * SEG), false))
        );
    }
}

/// A validating writer on an archive pinned to `SYSID` and PG18, its file operations recorded.
fn recording_setup() -> (
    tempfile::TempDir,
    Archive,
    SegmentWriter,
    Arc<crate::recording::RecordingFs>,
) {
    let d = tempdir();
    let mut a = Archive::open(d.path(), SyncMode::Sync).unwrap();
    a.check_identity(SYSID, seg1m()).unwrap();
    a.pin_format(PG18).unwrap();
    let fs = Arc::new(crate::recording::RecordingFs::default());
    let opts = WriterOptions {
        validate: true,
        prepare_ahead: false,
        ..WriterOptions::default()
    };
    let w = a
        .segment_writer_fs(
            seg1m(),
            opts,
            fs.clone() as Arc<dyn crate::fsops::SegmentFs>,
        )
        .unwrap();
    (d, a, w, fs)
}

/// The order of the file operations after an invalid record that crossed from segment 3 into 4
/// (see `discard`): segment 4's file removed and segment 3 renamed back to `.partial`, then one
/// directory `fsync`, then the zeros over segment 3's tail and their `fdatasync`; nothing after.
#[test]
fn the_discarding_renames_and_removes_before_it_zeroes() {
    use crate::recording::Op;
    let (_d, _a, mut w, fs) = recording_setup();
    let (mut data, record) = wal_crossing(40_000);
    data[(record.0 - S3.0) as usize + 200] ^= 0x01;
    // In 8 kB writes: one goes into segment 4 before the record's end.
    write_in(&mut w, &data, 8192).unwrap_err();
    let ops = fs.ops();
    let (p3, c3, p4) = (
        "000000010000000000000003.partial",
        "000000010000000000000003",
        "000000010000000000000004.partial",
    );
    let at = |what: &str, f: &dyn Fn(&Op) -> bool| {
        ops.iter()
            .rposition(f)
            .unwrap_or_else(|| panic!("no {what} in {ops:#?}"))
    };
    let removed = at(
        "removal",
        &|o| matches!(o, Op::Remove { name } if name == p4),
    );
    let renamed = at(
        "rename back",
        &|o| matches!(o, Op::Rename { from, to } if from == c3 && to == p3),
    );
    let dir_sync = at("directory fsync", &|o| matches!(o, Op::FsyncDir));
    let off = record.0 - S3.0;
    let zeroed = at("zeros", &|o| {
        matches!(o, Op::Write { name, off: o_off, data, .. }
            if name == p3 && *o_off == off && data.len() as u64 == SEG - off && data.iter().all(|&b| b == 0))
    });
    let synced = at(
        "fdatasync",
        &|o| matches!(o, Op::Datasync { name, .. } if name == p3),
    );
    assert!(
        removed < renamed && renamed < dir_sync && dir_sync < zeroed && zeroed < synced,
        "removed {removed}, renamed {renamed}, directory fsync {dir_sync}, zeroed {zeroed}, synced {synced}: {:#?}",
        &ops[removed.min(renamed)..]
    );
    assert_eq!(synced, ops.len() - 1, "{:#?}", &ops[synced..]);
}

/// A failure while zeroing (here the `fdatasync` of the zeros) is logged, breaks the writer and
/// still returns the invalid WAL (exit 21 names the cause); nothing is reported past the record.
#[test]
fn a_failure_while_zeroing_breaks_the_writer_and_still_reports_the_invalid_wal() {
    let (_d, _a, mut w, fs) = recording_setup();
    let (mut data, record) = wal_crossing(40_000);
    data[(record.0 - S3.0) as usize + 200] ^= 0x01;
    let chunks: Vec<&[u8]> = data.chunks(8192).collect();
    let mut v = validator();
    let bad = chunks.iter().position(|c| v.feed(c).is_err()).unwrap();
    let mut pos = S3;
    for c in &chunks[..bad] {
        w.write(tli(1), pos, c).unwrap();
        pos = Lsn(pos.0 + c.len() as u64);
    }
    fs.fail_next(crate::recording::FailOn::Datasync);
    let e = w.write(tli(1), pos, chunks[bad]).unwrap_err();
    let ArchiveError::InvalidWal { invalid, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(invalid.good_end, record);
    assert!(w.is_broken());
    assert!(w.flushed() <= record, "{}", w.flushed());
    assert!(matches!(w.flush(), Err(ArchiveError::WriterFailed { .. })));
}
