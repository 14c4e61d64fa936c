//! Unit tests of the priming of the validator where streaming (re)starts ([`prime`]): the
//! record that began in the completed segment before the start and runs on into the stream
//! is checked.

use super::validation_tests::{SYSID, params};
use super::*;
use crate::testutil::*;
use crate::{Archive, WriterOptions};
use std::fs;
use walsink_wal::synth::{PG18, SynthWal};

/// The completed segment `S` (3) and the start `L` (segment 4's start).
const S3: Lsn = Lsn(3 * SEG);
const S4: Lsn = Lsn(4 * SEG);
const S3_NAME: &str = "000000010000000000000003";
const S4_PARTIAL: &str = "000000010000000000000004.partial";

/// WAL of segments 3 and 4 whose record at the returned position begins in segment 3 and
/// ends 20 kB into segment 4, and the position of a small record in segment 3 before it.
fn wal() -> (Vec<u8>, Lsn, Lsn) {
    let mut w = SynthWal::new(params(), S3);
    w.fill(Lsn(S3.0 + 100_000), &[100, 40, 3000]);
    let early = w.record(10, 0, &[5; 64]);
    w.fill(Lsn(S4.0 - 10_000), &[100, 40, 3000]);
    let crossing = w.record(10, 0, &[7; 30_000]);
    w.fill(Lsn(S4.0 + 60_000), &[200, 9000]);
    assert!(crossing < S4 && crossing.0 + 30_024 > S4.0 + 8192);
    (w.bytes().to_vec(), crossing, early)
}

/// An archive (system id and format pinned) holding `s3` as the completed segment 3, and a
/// validating writer.
fn setup(s3: Option<&[u8]>) -> (tempfile::TempDir, Archive, SegmentWriter) {
    let d = tempdir();
    let mut a = Archive::open(d.path(), SyncMode::Sync).unwrap();
    a.check_identity(SYSID, seg1m()).unwrap();
    a.pin_format(PG18).unwrap();
    if let Some(s3) = s3 {
        fs::write(d.path().join(S3_NAME), s3).unwrap();
    }
    let opts = WriterOptions {
        validate: true,
        ..WriterOptions::default()
    };
    let w = a.segment_writer_with(seg1m(), opts).unwrap();
    (d, a, w)
}

/// Writes `data` (from segment 4's start) in chunks of 4 KiB.
fn stream(w: &mut SegmentWriter, data: &[u8]) -> Result<(), ArchiveError> {
    let mut pos = S4;
    for c in data.chunks(4096) {
        w.write(tli(1), pos, c)?;
        pos = Lsn(pos.0 + c.len() as u64);
    }
    Ok(())
}

/// Runs `f` with the log (warnings and up, no colours) captured; returns its result and the log.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let out = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || out.clone())
        .finish();
    let r = tracing::subscriber::with_default(sub, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (r, text)
}

fn primed(w: &SegmentWriter) -> Option<String> {
    w.check.as_ref()?.primed.as_ref().map(|p| p.name.clone())
}

fn seg_bytes(data: &[u8], segno: u64) -> &[u8] {
    let from = ((segno - 3) * SEG) as usize;
    &data[from..from + SEG as usize]
}

#[test]
fn a_valid_continuation_of_the_record_begun_in_the_completed_segment_passes() {
    let (data, crossing, _) = wal();
    let (d, _a, mut w) = setup(Some(seg_bytes(&data, 3)));
    let rest = &data[SEG as usize..];
    // Inside the crossing record: the flush reported is the start, as without priming.
    w.write(tli(1), S4, &rest[..4096]).unwrap();
    assert_eq!(primed(&w).as_deref(), Some(S3_NAME));
    w.flush().unwrap();
    assert_eq!(w.flushed(), S4, "not below the start");
    assert!(crossing < S4);
    w.write(tli(1), Lsn(S4.0 + 4096), &rest[4096..])
        .unwrap_or_else(|e| panic!("{e}"));
    let end = Lsn(S3.0 + data.len() as u64);
    assert_eq!(w.flush().unwrap(), end);
    assert_eq!(w.flushed(), end);
    let v = w.check.as_ref().unwrap().v.as_ref().unwrap();
    assert!(v.last_record().unwrap() > S4);
    assert_eq!(
        fs::read(d.path().join(S3_NAME)).unwrap(),
        seg_bytes(&data, 3)
    );
}

/// A byte of the crossing record in segment 3's file flipped (disk corruption): caught once
/// the continuation has arrived, naming the record and the file; segment 3 is left as it
/// is, and only what this writer wrote (segment 4's start) is zeroed.
#[test]
fn a_corrupt_byte_in_the_completed_segments_part_of_the_crossing_record_is_caught() {
    let (data, crossing, _) = wal();
    let mut s3 = seg_bytes(&data, 3).to_vec();
    let at = (crossing.0 - S3.0 + 100) as usize;
    s3[at] ^= 0x10;
    let (d, _a, mut w) = setup(Some(&s3));
    let e = stream(&mut w, &data[SEG as usize..]).unwrap_err();
    let ArchiveError::InvalidArchivedRecord {
        invalid,
        path,
        start,
        ..
    } = &e
    else {
        panic!("{e}");
    };
    assert_eq!(invalid.at, crossing);
    assert_eq!(invalid.good_end, crossing);
    assert_eq!(*start, S4);
    assert_eq!(path, &d.path().join(S3_NAME));
    let msg = e.to_string();
    assert!(
        msg.contains(&format!(
            "the record at {crossing} began in the already archived segment"
        )),
        "{msg}"
    );
    assert!(
        msg.contains(S3_NAME) && msg.contains("walsink verify -D"),
        "{msg}"
    );
    // Segment 3 unchanged, still completed; nothing of it renamed back.
    assert_eq!(fs::read(d.path().join(S3_NAME)).unwrap(), s3);
    assert!(!d.path().join(format!("{S3_NAME}.partial")).exists());
    // What was written of segment 4 (the record's continuation) is zeros.
    let p4 = fs::read(d.path().join(S4_PARTIAL)).unwrap();
    assert_eq!(p4.len() as u64, SEG);
    assert!(p4.iter().all(|b| *b == 0), "segment 4 zeroed");
    assert_eq!(w.written(), S4);
    assert_eq!(w.flushed(), S4, "no flush beyond the start, none below it");
}

/// The same on a reconnect within a run: the writer completed segment 3 itself, the file
/// was damaged afterwards, and streaming restarts at segment 4.
#[test]
fn a_restart_within_a_run_checks_the_crossing_record_again() {
    let (data, crossing, _) = wal();
    let (d, _a, mut w) = setup(None);
    let mut pos = S3;
    for c in data[..SEG as usize + 4096].chunks(64 << 10) {
        w.write(tli(1), pos, c).unwrap();
        pos = Lsn(pos.0 + c.len() as u64);
    }
    w.flush().unwrap();
    assert!(d.path().join(S3_NAME).exists());
    let mut s3 = fs::read(d.path().join(S3_NAME)).unwrap();
    s3[(crossing.0 - S3.0 + 40) as usize] ^= 1;
    fs::write(d.path().join(S3_NAME), &s3).unwrap();
    w.reset_position(tli(1), S4);
    let e = stream(&mut w, &data[SEG as usize..]).unwrap_err();
    let ArchiveError::InvalidArchivedRecord { invalid, .. } = &e else {
        panic!("{e}");
    };
    assert_eq!(invalid.at, crossing);
    assert_eq!(fs::read(d.path().join(S3_NAME)).unwrap(), s3);
    assert_eq!(w.flushed(), S4);
}

/// No completed segment before the start (a fresh archive): unprimed, as before, and no warning.
#[test]
fn without_the_previous_segment_streaming_starts_unprimed() {
    let (data, _, _) = wal();
    let (_d, _a, mut w) = setup(None);
    let (r, log) = logged(|| stream(&mut w, &data[SEG as usize..]));
    r.unwrap();
    assert_eq!(log, "");
    assert_eq!(primed(&w), None);
    assert_eq!(w.flush().unwrap(), Lsn(S3.0 + data.len() as u64));
}

/// A short, invalid or symbolic-link previous segment is not used: one warning naming the file and
/// the start and advising `walsink verify`, never an error; the stream goes on, unprimed (a corrupt
/// byte in the crossing record then goes unnoticed, as before), and the file is left as it is.
#[test]
fn a_short_invalid_or_linked_previous_segment_is_not_used_and_stops_nothing() {
    let (data, crossing, early) = wal();
    let good = seg_bytes(&data, 3);
    let mut invalid = good.to_vec();
    invalid[(early.0 - S3.0 + 30) as usize] ^= 4;
    // (Also corrupt in the crossing record, which is then not checked.)
    invalid[(crossing.0 - S3.0 + 100) as usize] ^= 0x10;
    let short = &good[..SEG as usize - 8192];
    let long = [good, &[0u8; 8][..]].concat();
    for (what, s3, why) in [
        ("short", short, "bytes, a segment has"),
        ("long", &long[..], "bytes, a segment has"),
        ("invalid", &invalid[..], "holds invalid WAL"),
        ("link", good, "symbolic link"),
    ] {
        let (d, _a, mut w) = setup(None);
        if what == "link" {
            let elsewhere = d.path().join("elsewhere");
            fs::write(&elsewhere, &invalid).unwrap();
            std::os::unix::fs::symlink(&elsewhere, d.path().join(S3_NAME)).unwrap();
        } else {
            fs::write(d.path().join(S3_NAME), s3).unwrap();
        }
        let (r, log) = logged(|| stream(&mut w, &data[SEG as usize..]));
        r.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(log.lines().count(), 1, "{what}: {log}");
        for needle in [" WARN ", S3_NAME, why, &S4.to_string(), "walsink verify -D"] {
            assert!(log.contains(needle), "{what}: {needle}: {log}");
        }
        assert_eq!(primed(&w), None, "{what}");
        assert_eq!(w.flush().unwrap(), Lsn(S3.0 + data.len() as u64));
        if what != "link" {
            assert_eq!(fs::read(d.path().join(S3_NAME)).unwrap(), s3, "{what}");
        }
    }
}

/// Streaming timeline 2 from segment 4, which holds the switch from timeline 1 (the history
/// file says so): the segment before is timeline 1's, and the record crossing from it is
/// checked. The history file may be written after the reset (as a stream that follows a
/// switch writes it): the writer primes at the first write, not at the reset.
#[test]
fn on_a_new_timeline_the_parents_segment_before_the_switch_is_read() {
    let (data, crossing, _) = wal();
    let history = format!("1\t{}\tpromoted\n", Lsn(S4.0 + 70_000));
    let run = |s3: &[u8], with_history: bool| {
        let (d, a, mut w) = setup(Some(s3));
        w.reset_position(tli(2), S4);
        if with_history {
            a.write_history(tli(2), history.as_bytes()).unwrap();
        }
        let mut pos = S4;
        let mut r = Ok(());
        for c in data[SEG as usize..].chunks(4096) {
            r = w.write(tli(2), pos, c);
            if r.is_err() {
                break;
            }
            pos = Lsn(pos.0 + c.len() as u64);
        }
        (d, w, r)
    };
    // Valid: primed with timeline 1's segment 3.
    let (_d, w, r) = run(seg_bytes(&data, 3), true);
    r.unwrap();
    assert_eq!(primed(&w).as_deref(), Some(S3_NAME));
    // A flipped byte in timeline 1's part of the crossing record: caught, the file unchanged.
    let mut s3 = seg_bytes(&data, 3).to_vec();
    s3[(crossing.0 - S3.0 + 100) as usize] ^= 0x10;
    let (d, _w, r) = run(&s3, true);
    let e = r.unwrap_err();
    let ArchiveError::InvalidArchivedRecord { invalid, path, .. } = &e else {
        panic!("{e}");
    };
    assert_eq!(invalid.at, crossing);
    assert_eq!(path, &d.path().join(S3_NAME));
    assert_eq!(fs::read(d.path().join(S3_NAME)).unwrap(), s3);
    // Without the history file nothing says whose segment 3 is: unprimed, as before.
    let (_d, w, r) = run(&s3, false);
    r.unwrap();
    assert_eq!(primed(&w), None);
}
