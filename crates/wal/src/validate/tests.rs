use super::*;
use crate::synth::{PG18, SynthParams, SynthWal, fixed_page};

const SYSID: u64 = 7_312_345_678_901_234_567;
const MIB: u64 = 1 << 20;

fn seg() -> WalSegSize {
    WalSegSize::new(MIB).unwrap()
}

fn params() -> SynthParams {
    SynthParams {
        seg: seg(),
        format: PG18,
        system_id: SYSID,
        tli: 1,
    }
}

fn cfg() -> ValidatorConfig {
    ValidatorConfig {
        seg: seg(),
        system_id: Some(SYSID),
        format: Some(PG18),
    }
}

/// WAL from segment 3 with small records, records over page boundaries, a record
/// longer than a segment, a switch and more records after it.
fn sample() -> (Lsn, Vec<u8>, Lsn) {
    let start = Lsn(3 * MIB);
    let mut w = SynthWal::new(params(), start);
    w.fill(Lsn(start.0 + 20_000), &[10, 100, 3000, 0, 7, 8170, 8144]);
    // Longer than a segment: continued over a segment boundary.
    let big: Vec<u8> = (0..(MIB as usize + 50_000))
        .map(|i| (i % 251) as u8)
        .collect();
    w.record(11, 0, &big);
    w.fill(Lsn(w.position().0 + 30_000), &[60, 9000, 1]);
    w.switch();
    w.fill(Lsn(w.position().0 + 40_000), &[200, 5]);
    let end = w.position();
    (start, w.bytes().to_vec(), end)
}

fn feed_in(v: &mut WalValidator, data: &[u8], size: usize) -> Result<(), WalInvalid> {
    for c in data.chunks(size) {
        v.feed(c)?;
    }
    Ok(())
}

#[test]
fn synthetic_wal_is_valid_in_any_pieces() {
    let (start, data, end) = sample();
    for size in [
        1,
        2,
        3,
        7,
        8,
        23,
        24,
        25,
        39,
        40,
        41,
        100,
        4096,
        8192,
        8193,
        65536,
        1 << 30,
    ] {
        let mut v = WalValidator::new(cfg(), 1, start);
        feed_in(&mut v, &data, size).unwrap_or_else(|e| panic!("size {size}: {e}"));
        assert_eq!(v.position(), end);
        assert_eq!(v.checked_end(), end, "size {size}");
        assert_eq!(v.valid_end(), end);
    }
}

#[test]
fn learns_the_format_and_system_from_the_first_page() {
    let (start, data, end) = sample();
    let mut v = WalValidator::new(
        ValidatorConfig {
            seg: seg(),
            system_id: None,
            format: None,
        },
        1,
        start,
    );
    assert_eq!(v.format(), None);
    v.feed(&data).unwrap();
    assert_eq!(v.format(), Some(PG18));
    assert_eq!(v.system_id(), Some(SYSID));
    assert_eq!(v.checked_end(), end);
}

#[test]
fn checked_end_stays_at_the_start_of_an_unfinished_record() {
    let start = Lsn(3 * MIB);
    let mut w = SynthWal::new(params(), start);
    let a = w.record(10, 0, &[1; 50]);
    let b = w.record(10, 0, &[2; 20_000]);
    let end = w.position();
    let data = w.bytes().to_vec();
    let mut v = WalValidator::new(cfg(), 1, start);
    // Half a page header: nothing is known good yet.
    v.feed(&data[..30]).unwrap();
    assert_eq!(v.checked_end(), start);
    v.feed(&data[30..(b.0 - start.0) as usize + 100]).unwrap();
    assert!(a < b);
    assert_eq!(v.checked_end(), b, "inside b");
    v.feed(&data[(b.0 - start.0) as usize + 100..]).unwrap();
    assert_eq!(v.checked_end(), end);
}

/// Flips one bit at `off` of the sample; returns the validator's verdict.
fn corrupt_at(off: usize) -> WalInvalid {
    let (start, mut data, _) = sample();
    data[off] ^= 0x10;
    let mut v = WalValidator::new(cfg(), 1, start);
    let e = feed_in(&mut v, &data, 5000).expect_err("corruption must be found");
    assert_eq!(v.checked_end(), e.good_end);
    assert!(v.feed(&[0]).is_err(), "a failed validator stays failed");
    e
}

#[test]
fn every_page_header_field_is_checked() {
    let (start, _data, _) = sample();
    let page = 8192 * 3;
    let at = Lsn(start.0 + page as u64);
    let mut cases = vec![
        (0, "magic"),
        (2, "info bits"),
        (4, "timeline"),
        (8, "page address"),
        (16, "remaining"),
    ];
    // Page 3 is inside a record (the sample's first pages are full of them) or not; the
    // rem_len case needs a continued record: checked below on its own.
    cases.retain(|c| c.0 != 16);
    for (field, what) in cases {
        let e = corrupt_at(page + field);
        assert_eq!(e.at.0 / 8192, at.0 / 8192, "{what}: {e}");
        assert!(
            e.valid_end <= at,
            "{what}: valid end {} past the page",
            e.valid_end
        );
        assert!(e.valid_end.0 > start.0, "{what}");
    }
    // Long header fields: system identifier, segment size, block size (segment 4).
    let seg4 = (MIB * 4 - start.0) as usize;
    for (field, want) in [
        (24, "system identifier"),
        (32, "segment size"),
        (36, "block size"),
    ] {
        let e = corrupt_at(seg4 + field);
        assert!(e.to_string().contains(want), "{e}");
        assert_eq!(e.at, Lsn(4 * MIB));
    }
    let e = corrupt_at(0);
    assert_eq!(
        e.valid_end, start,
        "nothing before a bad first page is good"
    );
    assert!(matches!(e.problem, Problem::Magic { .. }), "{e}");
}

#[test]
fn record_body_header_and_crc_corruption_is_found_at_the_record() {
    let (start, data, _) = sample();
    // Find records by walking the sample with a validator and noting where each ends.
    let mut v = WalValidator::new(cfg(), 1, start);
    let mut ends = Vec::new();
    for (i, b) in data.iter().enumerate().take(20_000) {
        v.feed(std::slice::from_ref(b)).unwrap();
        if v.valid_end().0 == start.0 + i as u64 + 1 {
            ends.push(v.valid_end());
        }
    }
    assert!(ends.len() > 5);
    let rec_start = Lsn((ends[0].0 + 7) & !7);
    let off = (rec_start.0 - start.0) as usize;
    for (delta, kind) in [
        (0usize, "length"),
        (9, "prev"),
        (17, "rmid"),
        (21, "crc"),
        (30, "data"),
    ] {
        let e = corrupt_at(off + delta);
        assert_eq!(e.at, rec_start, "{kind}: {e}");
        assert_eq!(e.valid_end, ends[0], "{kind}");
        assert_eq!(e.good_end, rec_start, "{kind}: with the padding before it");
    }
}

#[test]
fn corruption_in_a_record_longer_than_a_segment_is_found() {
    let (start, _data, _) = sample();
    // The big record's data in segment 4, far from any header.
    let off = (4 * MIB - start.0) as usize + 30_000;
    let e = corrupt_at(off);
    assert!(matches!(e.problem, Problem::Checksum { .. }), "{e}");
    assert!(e.at.0 < 4 * MIB, "reported at the record's start {}", e.at);
    // A continuation header's remaining length in the middle of it.
    let e = corrupt_at(off - off % 8192 + 8192 + 16);
    assert!(matches!(e.problem, Problem::ContrecordLength { .. }), "{e}");
}

#[test]
fn the_padding_after_a_switch_is_not_read() {
    let start = Lsn(3 * MIB);
    let mut w = SynthWal::new(params(), start);
    w.fill(Lsn(start.0 + 10_000), &[100]);
    w.switch();
    w.fill(Lsn(4 * MIB + 100), &[100]);
    let mut data = w.bytes().to_vec();
    // Garbage where the padding is: ignored.
    let pad = (200_000 - start.0 % MIB) as usize;
    data[pad..pad + 16].copy_from_slice(b"not a page here!");
    let mut v = WalValidator::new(cfg(), 1, start);
    feed_in(&mut v, &data, 777).unwrap();
    assert_eq!(v.checked_end(), w.position());
}

#[test]
fn a_start_skips_the_tail_of_a_record_from_the_previous_segment() {
    let start = Lsn(3 * MIB);
    let mut w = SynthWal::new(params(), start);
    w.fill(Lsn(4 * MIB - 5000), &[100]);
    w.record(10, 0, &[5; 30_000]); // crosses into segment 4
    w.fill(Lsn(4 * MIB + 60_000), &[100, 9000]);
    let from = (MIB) as usize; // segment 4 only
    let mut v = WalValidator::new(cfg(), 1, Lsn(4 * MIB));
    assert_eq!(v.checked_end(), Lsn(4 * MIB));
    feed_in(&mut v, &w.bytes()[from..], 333).unwrap();
    assert_eq!(v.checked_end(), w.position());
    assert!(v.records() > 5);
}

#[test]
fn timelines_may_rise_from_page_to_page_but_never_fall_or_pass_the_stream() {
    let start = Lsn(3 * MIB);
    let mut w = SynthWal::new(params(), start);
    w.fill(Lsn(start.0 + 20_000), &[100]);
    w.set_timeline(2);
    w.fill(Lsn(start.0 + 40_000), &[100]);
    let data = w.bytes().to_vec();
    // Read as timeline 2: pages of the parent first, then its own.
    let mut v = WalValidator::new(cfg(), 2, start);
    v.feed(&data).unwrap();
    // Read as timeline 1: the pages of timeline 2 are beyond it.
    let mut v = WalValidator::new(cfg(), 1, start);
    let e = v.feed(&data).unwrap_err();
    assert!(
        matches!(
            e.problem,
            Problem::TimelineAhead {
                found: 2,
                timeline: 1
            }
        ),
        "{e}"
    );
    // Going back from 2 to 1 is refused.
    let mut w = SynthWal::new(params(), start);
    w.set_timeline(2);
    w.fill(Lsn(start.0 + 20_000), &[100]);
    w.set_timeline(1);
    w.fill(Lsn(start.0 + 40_000), &[100]);
    let mut v = WalValidator::new(cfg(), 2, start);
    let e = v.feed(w.bytes()).unwrap_err();
    assert!(
        matches!(e.problem, Problem::TimelineBackwards { found: 1, after: 2 }),
        "{e}"
    );
}

#[test]
fn pinned_identity_and_format_are_enforced() {
    let (start, data, _) = sample();
    for (cfg, want) in [
        (
            ValidatorConfig {
                system_id: Some(SYSID + 1),
                ..cfg()
            },
            "system identifier",
        ),
        (
            ValidatorConfig {
                format: Some(WalFormat {
                    magic: 0xD116,
                    blcksz: 8192,
                }),
                ..cfg()
            },
            "magic D118, expected D116",
        ),
        (
            ValidatorConfig {
                seg: WalSegSize::new(2 * MIB).unwrap(),
                ..cfg()
            },
            "segment size",
        ),
    ] {
        let s = Lsn(start.0 - start.0 % cfg.seg.bytes());
        if s != start {
            continue;
        }
        let mut v = WalValidator::new(cfg, 1, start);
        let e = v.feed(&data).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
        assert_eq!(e.valid_end, start);
    }
    let mut v = WalValidator::new(
        ValidatorConfig {
            seg: WalSegSize::new(2 * MIB).unwrap(),
            ..cfg()
        },
        1,
        Lsn(2 * MIB),
    );
    let mut w = SynthWal::new(params(), Lsn(2 * MIB));
    w.fill(Lsn(2 * MIB + 100), &[10]);
    let e = v.feed(w.bytes()).unwrap_err();
    assert!(e.to_string().contains("segment size 1048576"), "{e}");
}

#[test]
fn an_overwrite_contrecord_page_abandons_the_record_in_progress() {
    let p = params();
    let start = Lsn(3 * MIB);
    let mut w = SynthWal::new(p, start);
    w.fill(Lsn(start.0 + 7000), &[100]);
    let before = w.bytes().to_vec();
    let prev = w.record(10, 0, &[1; 50]);
    // A record that would continue on the next page, cut at the page end.
    let mut data = w.bytes().to_vec();
    let cut_start = data.len();
    let h = crate::synth::record_header(5000, prev.0, 10, 0, &[9; 4976]);
    data.extend_from_slice(&h);
    data.resize(8192, 9);
    assert!(cut_start > before.len());
    // The next page: overwrite flag, then a record linking back to `prev`.
    let page = start.0 + 8192;
    data.extend(crate::synth::page_header(&p, page, 0x0008, 0));
    let payload = [3u8; 40];
    data.extend(crate::synth::record_header(64, prev.0, 0, 0xD0, &payload));
    data.extend(payload);
    let mut v = WalValidator::new(cfg(), 1, start);
    feed_in(&mut v, &data, 100).unwrap();
    assert_eq!(v.checked_end(), Lsn(page + 24 + 64));
    // Without the flag the page must continue the record.
    let mut bad = data.clone();
    bad[8192 + 2] = 0;
    let mut v = WalValidator::new(cfg(), 1, start);
    let e = v.feed(&bad).unwrap_err();
    assert!(matches!(e.problem, Problem::NoContrecordFlag { .. }), "{e}");
    assert_eq!(e.at, Lsn(start.0 + cut_start as u64));
}

#[test]
fn a_new_record_where_a_continuation_is_claimed_is_refused() {
    let start = Lsn(3 * MIB);
    let mut w = SynthWal::new(params(), start);
    w.fill(Lsn(start.0 + 8192 + 100), &[8192 - 40 - 24]);
    let mut data = w.bytes().to_vec();
    // Page 1 begins with a new record; claim a continuation instead.
    data[8192 + 2] |= 1;
    data[8192 + 16] = 8;
    let mut v = WalValidator::new(cfg(), 1, start);
    let e = v.feed(&data).unwrap_err();
    assert_eq!(e.problem, Problem::UnexpectedContrecord);
}

#[test]
fn zero_fill_after_the_end_looks_like_the_end_of_wal() {
    let start = Lsn(3 * MIB);
    let mut w = SynthWal::new(params(), start);
    w.fill(Lsn(start.0 + 20_000), &[100]);
    let end = w.position();
    let mut data = w.bytes().to_vec();
    data.resize(3 * 8192 + 100, 0);
    let mut v = WalValidator::new(cfg(), 1, start);
    let e = v.feed(&data).unwrap_err();
    assert!(e.problem.looks_like_end_of_wal(), "{e}");
    assert_eq!(
        (e.valid_end.0 + 7) & !7,
        end.0,
        "the last record's end, before its padding"
    );
    // A zeroed page header likewise.
    let mut w = SynthWal::new(params(), start);
    w.fill(Lsn(start.0 + 1), &[8192 - 40 - 24]);
    let mut data = w.bytes().to_vec();
    assert_eq!(data.len(), 8192);
    data.resize(3 * 8192, 0);
    let mut v = WalValidator::new(cfg(), 1, start);
    let e = v.feed(&data).unwrap_err();
    assert!(e.problem.looks_like_end_of_wal(), "{e}");
    assert_eq!(e.at, Lsn(start.0 + 8192));
}

#[test]
fn fixed_pages_are_valid_wal_from_any_segment_start() {
    let p = params();
    for seg_start in [3 * MIB, u64::MAX - MIB + 1] {
        let mut v = WalValidator::new(cfg(), 1, Lsn(seg_start));
        for page in 0..8u64 {
            let bytes = fixed_page(&p, seg_start + page * 8192);
            v.feed(&bytes).unwrap();
        }
        assert_eq!(v.records(), 32);
        assert_eq!(v.checked_end(), Lsn(seg_start + 8 * 8192));
    }
}

#[test]
fn every_split_of_the_first_pages_gives_the_same_verdicts() {
    let (start, data, _) = sample();
    let data = &data[..4 * 8192 + 100];
    let mut whole = WalValidator::new(cfg(), 1, start);
    whole.feed(data).unwrap();
    for cut in 0..data.len() {
        let mut v = WalValidator::new(cfg(), 1, start);
        v.feed(&data[..cut]).unwrap();
        v.feed(&data[cut..]).unwrap();
        assert_eq!(v.checked_end(), whole.checked_end(), "cut at {cut}");
        assert_eq!(v.records(), whole.records());
    }
}

mod fuzz_like {
    use super::*;
    use proptest::prelude::*;

    /// WAL of system 7 from 0/300000 on timeline 2, as `fuzz_validate` reads it.
    fn wal() -> Vec<u8> {
        let p = SynthParams {
            seg: seg(),
            format: PG18,
            system_id: 7,
            tli: 2,
        };
        let mut w = SynthWal::new(p, Lsn(3 * MIB));
        w.fill(Lsn(3 * MIB + 30_000), &[0, 10, 100, 3000, 8150, 20_000]);
        w.bytes().to_vec()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Damaged WAL, any split: no panic, the same verdict whole and in pieces.
        #[test]
        fn damaged_wal_in_any_pieces(size in any::<u8>(), flags in 0u8..2,
                                     flips in proptest::collection::vec((0usize..30_000, any::<u8>()), 0..4),
                                     cut in 0usize..30_000) {
            let mut w = wal();
            for (at, x) in flips {
                let at = at % w.len();
                w[at] ^= x;
            }
            w.truncate(cut.max(1));
            fuzz_validate(&[&[size, flags][..], &w].concat());
        }
    }
}

#[test]
fn feeding_until_a_record_from_a_position_halts_right_after_it() {
    let (start, data, end) = sample();
    let mut whole = WalValidator::new(cfg(), 1, start);
    whole.feed(&data).unwrap();
    // Halt at each segment end the sample crosses (inside the long record, after the
    // switch), in pieces of several sizes: the record
    // that halts starts at or after the boundary, the one before it does not, and feeding
    // the rest gives what feeding everything at once gives.
    for boundary in [4 * MIB, 5 * MIB] {
        for size in [1, 1000, 8192, 1 << 20, data.len()] {
            let mut v = WalValidator::new(cfg(), 1, start);
            let mut used = 0;
            let mut halted_at = None;
            for c in data.chunks(size) {
                let fed = used;
                match v.feed_until_record_from(c, Lsn(boundary)).unwrap() {
                    Some(n) => {
                        used += n;
                        halted_at = Some(used);
                        break;
                    }
                    None => used += c.len(),
                }
                assert!(v.last_record().is_none_or(|r| r.0 < boundary), "{fed}");
            }
            let halted_at = halted_at.expect("a record after the boundary");
            let last = v.last_record().unwrap();
            assert!(last.0 >= boundary);
            assert_eq!(v.position().0, start.0 + halted_at as u64);
            assert_eq!(v.valid_end(), v.position(), "stopped at the record's end");
            let records = v.records();
            v.feed(&data[halted_at..]).unwrap();
            assert_eq!(v.records(), whole.records());
            assert_eq!(v.checked_end(), end);
            assert!(records < whole.records());
        }
    }
}

/// Where the invalid part begins ([`WalInvalid::good_end`]): the invalid record's start, after the
/// previous record's padding; the start of the record running into an invalid page header; an invalid
/// page after an `XLOG_SWITCH`'s padding, at the next segment's start.
#[test]
fn good_end_is_where_the_invalid_part_begins() {
    let start = Lsn(3 * MIB);
    let mut w = SynthWal::new(params(), start);
    w.fill(Lsn(start.0 + 5000), &[13]);
    let padded = w.record(10, 0, &[1; 13]);
    let bad = w.record(10, 0, &[2; 20_000]);
    assert_ne!(bad.0 % 8192, 0);
    w.switch();
    let next = w.position();
    assert_eq!(next.0, 4 * MIB);
    w.fill(Lsn(next.0 + 1000), &[100]);
    let data = w.bytes().to_vec();
    let check = |off: u64, size: usize| {
        let mut d = data.clone();
        d[(off - start.0) as usize] ^= 0x40;
        let mut v = WalValidator::new(cfg(), 1, start);
        let e = feed_in(&mut v, &d, size).unwrap_err();
        assert_eq!(v.checked_end(), e.good_end, "{e}");
        e
    };
    let record_end = padded.0 + 24 + 13;
    for size in [1, 100, 8192, 1 << 20] {
        // A byte of the record's data.
        let e = check(bad.0 + 3000, size);
        assert_eq!(
            (e.at, e.valid_end, e.good_end),
            (bad, Lsn(record_end), bad),
            "{e}"
        );
        // The page address of the second page the record runs into.
        let page = (bad.0 / 8192 + 2) * 8192;
        let e = check(page + 9, size);
        assert_eq!(
            (e.at, e.valid_end, e.good_end),
            (Lsn(page), Lsn(record_end), bad),
            "{e}"
        );
        // The next segment's page address, after the switch.
        let e = check(next.0 + 9, size);
        assert_eq!(e.at, next, "{e}");
        assert!(e.valid_end < next, "{e}");
        assert_eq!(e.good_end, next, "{e}");
    }
}
