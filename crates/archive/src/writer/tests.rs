//! Unit tests of the segment writer against a real temporary directory.

use super::*;
use crate::testutil::*;
use crate::{Archive, StartPoint};
use std::fs;
use std::os::unix::fs::MetadataExt;

const S3: Lsn = Lsn(3 * SEG);

fn setup(sync: SyncMode) -> (tempfile::TempDir, Archive, SegmentWriter) {
    let d = tempdir();
    let a = Archive::open(d.path(), sync).unwrap();
    let w = a.segment_writer(seg1m()).unwrap();
    (d, a, w)
}

fn name(t: u32, segno: u64) -> String {
    SegmentName::new(tli(t), walsink_wal::SegNo(segno)).file_name(seg1m())
}

fn read(d: &tempfile::TempDir, file: &str) -> Vec<u8> {
    fs::read(d.path().join(file)).unwrap()
}

fn files(d: &tempfile::TempDir) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        // The lock, and the next segment being prepared ahead (never WAL).
        .filter(|n| n != ".walsink.lock" && n != crate::PREPARED_FILE)
        .collect();
    v.sort();
    v
}

fn at(l: Lsn, n: usize) -> Lsn {
    Lsn(l.0 + n as u64)
}

#[test]
fn contiguous_writes_across_a_segment_boundary() {
    for sync in [SyncMode::Sync, SyncMode::NoSync] {
        let (d, _a, mut w) = setup(sync);
        assert_eq!(w.written(), Lsn::INVALID);
        assert_eq!(w.flushed(), Lsn::INVALID);
        let data = pattern(1_400_000, 7);
        w.write(tli(1), S3, &data[..700_000]).unwrap();
        assert_eq!(w.written(), at(S3, 700_000));
        assert_eq!(w.flushed(), S3);
        assert_eq!(files(&d), [format!("{}.partial", name(1, 3))]);
        w.write(tli(1), at(S3, 700_000), &data[700_000..]).unwrap();
        assert_eq!(w.written(), at(S3, 1_400_000));
        assert_eq!(w.flushed(), Lsn(4 * SEG));
        assert_eq!(w.unflushed_bytes(), 1_400_000 - SEG);

        let complete = read(&d, &name(1, 3));
        assert_eq!(complete, &data[..SEG as usize]);
        let partial_name = format!("{}.partial", name(1, 4));
        let partial = read(&d, &partial_name);
        assert_eq!(partial.len() as u64, SEG);
        let rest = 1_400_000 - SEG as usize;
        assert_eq!(&partial[..rest], &data[SEG as usize..]);
        assert!(partial[rest..].iter().all(|&b| b == 0));
        assert_eq!(files(&d), [name(1, 3), partial_name.clone()]);
        assert_eq!(mode(&d.path().join(name(1, 3))), 0o600);
        assert_eq!(mode(&d.path().join(&partial_name)), 0o600);
    }
}

#[test]
fn one_write_can_span_several_segments() {
    let (d, _a, mut w) = setup(SyncMode::Sync);
    let data = pattern(2 * SEG as usize + 10, 1);
    w.write(tli(1), S3, &data).unwrap();
    assert_eq!(w.flushed(), Lsn(5 * SEG));
    assert_eq!(read(&d, &name(1, 3)), &data[..SEG as usize]);
    assert_eq!(read(&d, &name(1, 4)), &data[SEG as usize..2 * SEG as usize]);
    assert_eq!(
        &read(&d, &format!("{}.partial", name(1, 5)))[..10],
        &data[2 * SEG as usize..]
    );
    // A write that ends exactly at a segment end leaves no segment open.
    let tail = pattern(SEG as usize - 10, 2);
    w.write(tli(1), w.written(), &tail).unwrap();
    assert_eq!(w.open_segment_name(), None);
    assert_eq!(w.written(), Lsn(6 * SEG));
    assert_eq!(w.flushed(), Lsn(6 * SEG));
    assert_eq!(files(&d), [name(1, 3), name(1, 4), name(1, 5)]);
}

#[test]
fn non_contiguous_writes_are_refused_before_writing() {
    let (d, _a, mut w) = setup(SyncMode::NoSync);
    // Nothing written yet: only a segment start is acceptable.
    let e = w.write(tli(1), at(S3, 100), b"x").unwrap_err();
    assert!(
        matches!(e, ArchiveError::NotContiguous { expected: Lsn::INVALID, got } if got == at(S3, 100)),
        "{e:?}"
    );
    assert!(files(&d).is_empty());

    w.write(tli(1), S3, &pattern(1000, 3)).unwrap();
    for bad in [at(S3, 1001), at(S3, 999), S3, Lsn(4 * SEG)] {
        let e = w.write(tli(1), bad, &[0xFF; 10]).unwrap_err();
        match e {
            ArchiveError::NotContiguous { expected, got } => {
                assert_eq!(expected, at(S3, 1000));
                assert_eq!(got, bad);
            }
            e => panic!("{e:?}"),
        }
    }
    let e = w.write(tli(2), at(S3, 1000), &[0xFF; 10]).unwrap_err();
    assert!(
        matches!(e, ArchiveError::TimelineMismatch { open, got, at: a } if open == tli(1) && got == tli(2) && a == at(S3, 1000)),
        "{e:?}"
    );
    assert!(e.to_string().contains("timeline 2"), "{e}");
    assert_eq!(w.written(), at(S3, 1000));
    let f = read(&d, &format!("{}.partial", name(1, 3)));
    assert_eq!(&f[..1000], &pattern(1000, 3)[..]);
    assert!(
        f[1000..].iter().all(|&b| b == 0),
        "nothing past the last good byte"
    );
    assert_eq!(files(&d), [format!("{}.partial", name(1, 3))]);

    // After close, only the exact continuation on the same timeline or a segment
    // start is accepted.
    w.close().unwrap();
    let e = w.write(tli(1), at(S3, 1001), b"x").unwrap_err();
    assert!(matches!(e, ArchiveError::NotContiguous { .. }), "{e:?}");
    let e = w.write(tli(2), at(S3, 1000), b"x").unwrap_err();
    assert!(matches!(e, ArchiveError::TimelineMismatch { .. }), "{e:?}");
    assert_eq!(files(&d), [format!("{}.partial", name(1, 3))]);

    let e = w.write(tli(1), Lsn(u64::MAX - 5), &[0; 10]).unwrap_err();
    assert!(matches!(e, ArchiveError::LsnOverflow { .. }), "{e:?}");
}

#[test]
fn empty_write_creates_nothing() {
    let (d, _a, mut w) = setup(SyncMode::NoSync);
    w.write(tli(1), S3, &[]).unwrap();
    assert!(files(&d).is_empty());
    assert_eq!(w.written(), S3);
}

#[test]
fn close_keeps_the_partial_and_writing_continues_it() {
    let (d, a, mut w) = setup(SyncMode::Sync);
    let data = pattern(SEG as usize, 9);
    w.write(tli(1), S3, &data[..1000]).unwrap();
    w.close().unwrap();
    assert_eq!(w.flushed(), at(S3, 1000));
    assert_eq!(w.open_segment_name(), None);
    let partial = format!("{}.partial", name(1, 3));
    assert_eq!(files(&d), [partial]);
    w.close().unwrap(); // nothing open: no-op
    assert_eq!(
        a.find_start(seg1m()).unwrap(),
        Some(StartPoint {
            tli: tli(1),
            lsn: S3,
            from_partial: true
        })
    );
    w.write(tli(1), at(S3, 1000), &data[1000..]).unwrap();
    assert_eq!(read(&d, &name(1, 3)), data);
    assert_eq!(files(&d), [name(1, 3)]);
    assert_eq!(a.find_start(seg1m()).unwrap().unwrap().lsn, Lsn(4 * SEG));
}

#[test]
fn continuing_requires_the_partial_to_exist() {
    let (d, _a, mut w) = setup(SyncMode::NoSync);
    w.write(tli(1), S3, &[1; 1000]).unwrap();
    w.close().unwrap();
    fs::remove_file(d.path().join(format!("{}.partial", name(1, 3)))).unwrap();
    let e = w.write(tli(1), at(S3, 1000), &[2; 10]).unwrap_err();
    assert!(matches!(e, ArchiveError::Io { .. }), "{e:?}");
    assert!(files(&d).is_empty(), "no zero-filled gap was created");
}

#[test]
fn timeline_switch_leaves_the_old_partial() {
    let (d, _a, mut w) = setup(SyncMode::Sync);
    let old = pattern(500_000, 1);
    w.write(tli(1), S3, &old).unwrap();
    w.close().unwrap();
    // The new timeline's first segment holds the old WAL up to the switch point.
    let new = pattern(600_000, 2);
    w.write(tli(2), S3, &new).unwrap();
    assert_eq!(w.timeline(), Some(tli(2)));
    assert_eq!(
        &read(&d, &format!("{}.partial", name(1, 3)))[..500_000],
        &old[..]
    );
    assert_eq!(
        &read(&d, &format!("{}.partial", name(2, 3)))[..600_000],
        &new[..]
    );
}

#[test]
fn short_partial_is_extended_keeping_its_bytes() {
    let (d, _a, mut w) = setup(SyncMode::Sync);
    let partial = format!("{}.partial", name(1, 3));
    let old = pattern(300_000, 5);
    fs::write(d.path().join(&partial), &old).unwrap();
    let new = pattern(100_000, 6);
    w.write(tli(1), S3, &new).unwrap();
    let f = read(&d, &partial);
    assert_eq!(f.len() as u64, SEG);
    assert_eq!(&f[..100_000], &new[..]);
    assert_eq!(&f[100_000..300_000], &old[100_000..]);
    assert!(f[300_000..].iter().all(|&b| b == 0));
}

#[test]
fn oversized_partial_is_truncated() {
    let (d, _a, mut w) = setup(SyncMode::Sync);
    let partial = format!("{}.partial", name(1, 3));
    let old = pattern(SEG as usize + 5000, 5);
    fs::write(d.path().join(&partial), &old).unwrap();
    w.write(tli(1), S3, &[0xAA; 10]).unwrap();
    let f = read(&d, &partial);
    assert_eq!(f.len() as u64, SEG);
    assert_eq!(&f[..10], &[0xAA; 10]);
    assert_eq!(&f[10..], &old[10..SEG as usize]);
}

#[test]
fn full_size_partial_is_reused_in_place() {
    let (d, _a, mut w) = setup(SyncMode::Sync);
    let partial = format!("{}.partial", name(1, 3));
    let old = pattern(SEG as usize, 5);
    fs::write(d.path().join(&partial), &old).unwrap();
    let ino = fs::metadata(d.path().join(&partial)).unwrap().ino();
    w.write(tli(1), S3, &[0xAA; 10]).unwrap();
    let f = read(&d, &partial);
    assert_eq!(&f[..10], &[0xAA; 10]);
    assert_eq!(&f[10..], &old[10..]);
    assert_eq!(fs::metadata(d.path().join(&partial)).unwrap().ino(), ino);
}

#[test]
fn identical_completed_segment_is_kept() {
    let (d, _a, mut w) = setup(SyncMode::Sync);
    let data = pattern(SEG as usize, 4);
    fs::write(d.path().join(name(1, 3)), &data).unwrap();
    let ino = fs::metadata(d.path().join(name(1, 3))).unwrap().ino();
    w.write(tli(1), S3, &data).unwrap();
    assert_eq!(files(&d), [name(1, 3)]);
    assert_eq!(read(&d, &name(1, 3)), data);
    assert_eq!(fs::metadata(d.path().join(name(1, 3))).unwrap().ino(), ino);
    assert_eq!(w.flushed(), Lsn(4 * SEG));
}

#[test]
fn differing_completed_segment_is_moved_aside_not_lost() {
    let (d, _a, mut w) = setup(SyncMode::Sync);
    // A short (wrong-size) completed file, as find_start would have skipped.
    let old = pattern(1000, 1);
    fs::write(d.path().join(name(1, 3)), &old).unwrap();
    let data = pattern(SEG as usize, 2);
    w.write(tli(1), S3, &data[..500]).unwrap();
    // Untouched while the segment is being written.
    assert_eq!(read(&d, &name(1, 3)), old);
    w.write(tli(1), at(S3, 500), &data[500..]).unwrap();
    assert_eq!(read(&d, &name(1, 3)), data);
    let aside: Vec<String> = files(&d)
        .into_iter()
        .filter(|f| f.starts_with(&format!(".{}.replaced-", name(1, 3))))
        .collect();
    assert_eq!(aside.len(), 1, "{:?}", files(&d));
    assert_eq!(read(&d, &aside[0]), old);

    // Re-streaming the segment with other bytes again keeps both old versions,
    // even within the same second.
    let other = pattern(SEG as usize, 3);
    w.write(tli(1), S3, &other).unwrap();
    assert_eq!(read(&d, &name(1, 3)), other);
    let mut contents: Vec<Vec<u8>> = files(&d)
        .into_iter()
        .filter(|f| f.contains(".replaced-"))
        .map(|f| read(&d, &f))
        .collect();
    contents.sort();
    let mut expected = vec![old, data];
    expected.sort();
    assert_eq!(contents, expected);
    assert!(!files(&d).iter().any(|f| f.ends_with(".partial")));
}

#[test]
fn flushed_moves_only_on_flush_and_completion() {
    for sync in [SyncMode::Sync, SyncMode::NoSync] {
        let (_d, _a, mut w) = setup(sync);
        w.reset_position(tli(1), S3);
        assert_eq!((w.written(), w.flushed()), (S3, S3));
        let chunk = pattern(300_000, 8);
        let mut seen_flushed = S3;
        for i in 0..8 {
            let before = w.flushed();
            w.write(tli(1), w.written(), &chunk).unwrap();
            assert!(w.flushed() <= w.written());
            assert_eq!(w.unflushed_bytes(), w.written().0 - w.flushed().0);
            if w.flushed() != before {
                // Only a completed segment moves it, to that segment's end.
                assert_eq!(seg1m().offset(w.flushed()), 0);
                assert!(w.flushed() > before);
            }
            if i % 3 == 2 {
                let f = w.flush().unwrap();
                assert_eq!(f, w.written());
                assert_eq!(w.flushed(), w.written());
                assert_eq!(w.unflushed_bytes(), 0);
                // A second flush with nothing new is a no-op.
                assert_eq!(w.flush().unwrap(), f);
            }
            assert!(w.flushed() >= seen_flushed);
            seen_flushed = w.flushed();
        }
        w.close().unwrap();
        assert_eq!(w.flushed(), w.written());
    }
}

#[test]
fn reset_position_starts_anew_and_closes_an_open_segment() {
    let (d, _a, mut w) = setup(SyncMode::Sync);
    w.write(tli(1), S3, &[1; 100]).unwrap();
    w.reset_position(tli(2), Lsn(5 * SEG + 123));
    assert_eq!(w.open_segment_name(), None);
    assert_eq!(w.written(), Lsn(5 * SEG));
    assert_eq!(w.flushed(), Lsn(5 * SEG));
    assert_eq!(w.timeline(), Some(tli(2)));
    assert!(d.path().join(format!("{}.partial", name(1, 3))).exists());
    w.write(tli(2), Lsn(5 * SEG), &[2; 100]).unwrap();
    assert_eq!(
        w.open_segment_name(),
        Some(SegmentName::new(tli(2), walsink_wal::SegNo(5)))
    );
}

#[test]
fn failed_segment_open_can_be_retried() {
    let (d, _a, mut w) = setup(SyncMode::Sync);
    // Something in the way of the next segment's .partial.
    let blocker = d.path().join(format!("{}.partial", name(1, 4)));
    fs::create_dir(&blocker).unwrap();
    let data = pattern(SEG as usize + 100, 1);
    let e = w.write(tli(1), S3, &data).unwrap_err();
    assert!(
        matches!(
            e,
            ArchiveError::NotARegularFile {
                kind: "a directory",
                ..
            }
        ),
        "{e:?}"
    );
    // The first segment made it, and the position says so.
    assert_eq!(w.written(), Lsn(4 * SEG));
    assert_eq!(w.flushed(), Lsn(4 * SEG));
    assert_eq!(read(&d, &name(1, 3)), &data[..SEG as usize]);
    fs::remove_dir(&blocker).unwrap();
    w.write(tli(1), w.written(), &data[SEG as usize..]).unwrap();
    assert_eq!(w.written(), Lsn(4 * SEG + 100));
}

#[test]
fn a_failed_sync_breaks_the_writer_for_good() {
    let (d, _a, mut w) = setup(SyncMode::Sync);
    w.write(tli(1), S3, &[1; 100]).unwrap();
    let path = d.path().join("x");
    let r: Result<(), _> = w.fatal(
        &path,
        Err(ArchiveError::io(
            &path,
            "fdatasync",
            std::io::Error::from_raw_os_error(libc::EIO),
        )),
    );
    assert!(r.is_err());
    assert!(w.is_broken());
    for e in [
        w.write(tli(1), at(S3, 100), &[1]).unwrap_err(),
        w.flush().unwrap_err(),
        w.close().unwrap_err(),
    ] {
        assert!(matches!(e, ArchiveError::WriterFailed { .. }), "{e:?}");
    }
    // Nothing pretends the unsynced bytes are durable.
    w.reset_position(tli(1), Lsn(9 * SEG));
    assert_eq!(w.flushed(), S3);
    assert_eq!(w.written(), at(S3, 100));
    assert!(w.write(tli(1), Lsn(9 * SEG), &[1]).is_err());
}

#[test]
fn writer_is_send_but_not_shared() {
    fn send<T: Send>() {}
    send::<SegmentWriter>();
    send::<Archive>();
}

#[test]
fn new_partials_are_full_size_zero_filled_and_private() {
    let (d, _a, mut w) = setup(SyncMode::Sync);
    w.write(tli(1), S3, &[7; 3]).unwrap();
    let p = d.path().join(format!("{}.partial", name(1, 3)));
    assert_eq!(mode(&p), 0o600);
    let f = fs::read(&p).unwrap();
    assert_eq!(f.len() as u64, SEG);
    assert_eq!(&f[..3], &[7; 3]);
    assert!(f[3..].iter().all(|&b| b == 0));
    // Real zeros, not a hole.
    assert!(fs::metadata(&p).unwrap().blocks() * 512 >= SEG);
}
