//! Unit tests of WAL validation in the segment writer ([`WriterOptions::validate`]).

use super::*;
use crate::testutil::*;
use crate::{Archive, META_FILE};
use std::fs;
use walsink_wal::synth::{PG18, SynthParams, SynthWal};

const SYSID: u64 = 7_000_000_000_000_000_042;
const S3: Lsn = Lsn(3 * SEG);

fn params() -> SynthParams {
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
    let mut v = walsink_wal::validate::WalValidator::new(
        walsink_wal::validate::ValidatorConfig {
            seg: seg1m(),
            system_id: Some(SYSID),
            format: Some(PG18),
        },
        1,
        S3,
    );
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
    assert_eq!(w.flushed(), invalid.valid_end);
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
        assert!(invalid.valid_end.0 <= S3.0 + off as u64, "{what}: {e}");
        assert!(invalid.valid_end > S3, "{what}");
        assert_eq!(w.flushed(), invalid.valid_end, "{what}: flushed up to it");
        assert_eq!(
            w.written(),
            invalid.valid_end,
            "{what}: nothing written after it"
        );
        let file = fs::read(d.path().join("000000010000000000000003.partial")).unwrap();
        let good = (invalid.valid_end.0 - S3.0) as usize;
        assert_eq!(file[..good], data[..good], "{what}");
        assert!(
            file[good..].iter().all(|&b| b == 0),
            "{what}: bytes after it"
        );
        assert!(
            e.to_string().contains(&invalid.valid_end.to_string()),
            "{e}"
        );
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
