//! Reading the directory: where to resume streaming, and whose WAL is already there.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::PathBuf;

use tracing::{debug, warn};
use walsink_wal::page::{LONG_HEADER_LEN, LongHeader, PageHeader};
use walsink_wal::{Lsn, SegNo, SegmentFileKind, SegmentName, TimelineId, WalSegSize};

use crate::dir::{Dir, kind_of};
use crate::{ArchiveError, StartPoint, fsops};

/// pg_receivewal's `FindStreamingStart`: the position after the newest usable WAL
/// file, or `None` if the directory has none.
///
/// Only uncompressed files count. A completed segment counts only if its size is
/// exactly the segment size; a `.partial` is never checked (it is re-streamed from its
/// start). The newest file is the maximum by (segment number, timeline, completed over
/// partial).
pub(crate) fn find_start(dir: &Dir, seg: WalSegSize) -> Result<Option<StartPoint>, ArchiveError> {
    let best = usable_files(dir, seg)?.into_iter().max();
    best.map(|key| start_point(key, seg)).transpose()
}

/// [`find_start`] per timeline: for each timeline that has a usable WAL file, the
/// position after its newest one, by the same rules. Sorted by timeline.
pub(crate) fn find_starts(dir: &Dir, seg: WalSegSize) -> Result<Vec<StartPoint>, ArchiveError> {
    let mut newest: BTreeMap<TimelineId, (SegNo, TimelineId, bool)> = BTreeMap::new();
    for key in usable_files(dir, seg)? {
        let e = newest.entry(key.1).or_insert(key);
        if key > *e {
            *e = key;
        }
    }
    newest.into_values().map(|k| start_point(k, seg)).collect()
}

/// Where streaming continues after the newest file: after a completed segment, at the
/// start of a `.partial`. A completed last segment of the LSN space has nothing after it
/// ([`ArchiveError::EndOfWalSpace`]; the position would wrap to 0/0).
fn start_point(
    (segno, tli, complete): (SegNo, TimelineId, bool),
    seg: WalSegSize,
) -> Result<StartPoint, ArchiveError> {
    let lsn = if complete {
        seg.start_of(segno)
            .0
            .checked_add(seg.bytes())
            .map(Lsn)
            .ok_or_else(|| ArchiveError::EndOfWalSpace {
                name: SegmentName::new(tli, segno).file_name(seg),
            })?
    } else {
        seg.start_of(segno)
    };
    Ok(StartPoint {
        tli,
        lsn,
        from_partial: !complete,
    })
}

/// The usable WAL files of `dir` as (segment number, timeline, completed): uncompressed
/// regular files; completed ones only at exactly the segment size (others are skipped
/// with a warning).
fn usable_files(
    dir: &Dir,
    seg: WalSegSize,
) -> Result<Vec<(SegNo, TimelineId, bool)>, ArchiveError> {
    let mut files = Vec::new();
    for name in dir.entry_names()? {
        let Some((sn, kind)) = SegmentName::parse_file_name(&name, seg) else {
            continue;
        };
        let complete = match kind {
            SegmentFileKind::Complete => true,
            SegmentFileKind::Partial => false,
            SegmentFileKind::CompressedComplete | SegmentFileKind::CompressedPartial => {
                debug!("ignoring compressed WAL file \"{name}\"");
                continue;
            }
        };
        // Not following links: a link is not WAL of this archive.
        let Some(st) = dir.lstat(&name)? else {
            // Removed between readdir and stat: it is not there.
            continue;
        };
        if let Some(kind) = kind_of(&st) {
            warn!("WAL file \"{name}\" is {kind}, not a regular file, skipping");
            continue;
        }
        let len = u64::try_from(st.st_size).unwrap_or(0);
        if complete && len != seg.bytes() {
            warn!("segment file \"{name}\" has incorrect size {len}, skipping");
            continue;
        }
        files.push((sn.segno, sn.tli, complete));
    }
    Ok(files)
}

/// See [`Archive::partial_written_end`](crate::Archive::partial_written_end).
pub(crate) fn partial_written_end(
    dir: &Dir,
    tli: TimelineId,
    start: Lsn,
    seg: WalSegSize,
) -> Result<Option<Lsn>, ArchiveError> {
    let name = SegmentName::containing(tli, start, seg).partial_file_name(seg);
    let len = usize::try_from(seg.bytes()).expect("a segment fits in memory");
    let image = match fsops::read_prefix(dir, &name, len) {
        Ok(image) => image,
        Err(ArchiveError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    Ok(walsink_wal::tail::written_end(
        &image,
        seg.segment_start(start),
    ))
}

/// The long page header of the newest uncompressed WAL file (completed or `.partial`)
/// whose header is plausible, and that file's path (`None` if no file has one), and
/// the number of uncompressed WAL files there are.
///
/// Used when the directory has no `.walsink.meta` (for example it was written by
/// pg_receivewal) to learn which cluster and segment size its WAL belongs to. The
/// segment size is not known yet, so names are ordered at the smallest segment size,
/// which orders them the same way as any other size would.
pub(crate) fn probe_identity(
    dir: &Dir,
) -> Result<(Option<(PathBuf, LongHeader)>, usize), ArchiveError> {
    let min = WalSegSize::new(WalSegSize::MIN).expect("the minimum segment size is valid");
    let mut files: Vec<(SegNo, TimelineId, bool, String)> = dir
        .entry_names()?
        .into_iter()
        .filter_map(|name| {
            let (sn, kind) = SegmentName::parse_file_name(&name, min)?;
            let complete = match kind {
                SegmentFileKind::Complete => true,
                SegmentFileKind::Partial => false,
                _ => return None,
            };
            Some((sn.segno, sn.tli, complete, name))
        })
        .collect();
    files.sort_unstable_by(|a, b| b.cmp(a));
    let count = files.len();
    for (_, _, _, name) in files {
        let path = dir.join(&name);
        let head = match fsops::read_prefix(dir, &name, LONG_HEADER_LEN) {
            Ok(h) => h,
            Err(ArchiveError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                continue;
            }
            Err(e @ ArchiveError::NotARegularFile { .. }) => {
                warn!("skipping: {e}");
                continue;
            }
            Err(e) => return Err(e),
        };
        match plausible_long_header(&name, &head) {
            Some(long) => return Ok((Some((path, long)), count)),
            None => debug!("WAL file \"{name}\" has no plausible long page header"),
        }
    }
    Ok((None, count))
}

/// The long header at the start of `head` if it is believable for the file `name`:
/// the long-header flag is set, magic, timeline and system identifier are non-zero,
/// the segment and block sizes are valid, and the page address is the start of the
/// segment the name denotes at that segment size. Zero fill and stale bytes fail this.
fn plausible_long_header(name: &str, head: &[u8]) -> Option<LongHeader> {
    let h = PageHeader::parse(head)?;
    let long = h.long?;
    if h.magic == 0 || long.sysid == 0 {
        return None;
    }
    if !long.blcksz.is_power_of_two() || !(1024..=65536).contains(&long.blcksz) {
        return None;
    }
    let seg = WalSegSize::new(u64::from(long.seg_size)).ok()?;
    let (sn, _) = SegmentName::parse_file_name(name, seg)?;
    h.plausible_at(sn.start_lsn(seg), true).then_some(long)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use std::fs;
    use walsink_wal::Lsn;

    fn dir(d: &tempfile::TempDir) -> Dir {
        Dir::open(d.path()).unwrap()
    }

    #[test]
    fn empty_directory_has_no_start() {
        let d = tempdir();
        assert_eq!(find_start(&dir(&d), seg1m()).unwrap(), None);
    }

    #[test]
    fn completed_segment_resumes_at_the_next_one() {
        let d = tempdir();
        put(d.path(), "000000010000000000000003", SEG as usize);
        put(d.path(), "000000010000000000000004", SEG as usize);
        assert_eq!(
            find_start(&dir(&d), seg1m()).unwrap(),
            Some(StartPoint {
                tli: tli(1),
                lsn: Lsn(5 * SEG),
                from_partial: false
            })
        );
    }

    #[test]
    fn newest_partial_is_restreamed_from_its_start() {
        let d = tempdir();
        put(d.path(), "000000010000000000000003", SEG as usize);
        put(d.path(), "000000010000000000000004.partial", SEG as usize);
        assert_eq!(
            find_start(&dir(&d), seg1m()).unwrap(),
            Some(StartPoint {
                tli: tli(1),
                lsn: Lsn(4 * SEG),
                from_partial: true
            })
        );
        // A completed file of the same segment wins over its partial.
        put(d.path(), "000000010000000000000004", SEG as usize);
        assert_eq!(
            find_start(&dir(&d), seg1m()).unwrap().unwrap(),
            StartPoint {
                tli: tli(1),
                lsn: Lsn(5 * SEG),
                from_partial: false
            }
        );
    }

    #[test]
    fn the_written_end_of_a_partial_comes_from_its_headers() {
        let d = tempdir();
        let start = Lsn(4 * SEG);
        let none = |d: &tempfile::TempDir| partial_written_end(&dir(d), tli(1), start, seg1m());
        assert_eq!(none(&d).unwrap(), None, "no .partial");
        put(d.path(), "000000010000000000000004.partial", SEG as usize);
        assert_eq!(none(&d).unwrap(), None, "zero-filled");
        // One record of 100 bytes after the long header: it ends at 40 + 100, MAXALIGNed.
        let mut img = first_page(4, 42, SEG);
        img[40..44].copy_from_slice(&100u32.to_le_bytes());
        img[44..140].fill(7);
        img.resize(SEG as usize, 0);
        fs::write(d.path().join("000000010000000000000004.partial"), &img).unwrap();
        assert_eq!(none(&d).unwrap(), Some(Lsn(4 * SEG + 144)));
        // A link is not WAL of this archive.
        fs::remove_file(d.path().join("000000010000000000000004.partial")).unwrap();
        std::os::unix::fs::symlink(
            "/dev/zero",
            d.path().join("000000010000000000000004.partial"),
        )
        .unwrap();
        assert!(matches!(
            none(&d),
            Err(ArchiveError::NotARegularFile { .. })
        ));
    }

    #[test]
    fn wrong_size_completed_segment_is_skipped() {
        let d = tempdir();
        put(d.path(), "000000010000000000000003", SEG as usize);
        put(d.path(), "000000010000000000000004", SEG as usize - 1);
        put(d.path(), "000000010000000000000005", SEG as usize + 1);
        put(d.path(), "000000010000000000000006", 0);
        assert_eq!(
            find_start(&dir(&d), seg1m()).unwrap().unwrap().lsn,
            Lsn(4 * SEG)
        );
        // Partials are not size-checked, as in pg_receivewal.
        put(d.path(), "000000010000000000000007.partial", 17);
        assert_eq!(
            find_start(&dir(&d), seg1m()).unwrap().unwrap().lsn,
            Lsn(7 * SEG)
        );
    }

    #[test]
    fn multiple_timelines_order_by_segment_then_timeline() {
        let d = tempdir();
        put(d.path(), "000000010000000000000005", SEG as usize);
        put(d.path(), "000000020000000000000005.partial", SEG as usize);
        // Same segment: the higher timeline wins even though it is only partial.
        assert_eq!(
            find_start(&dir(&d), seg1m()).unwrap().unwrap(),
            StartPoint {
                tli: tli(2),
                lsn: Lsn(5 * SEG),
                from_partial: true
            }
        );
        // A higher segment wins over a higher timeline.
        put(d.path(), "000000010000000000000006.partial", SEG as usize);
        assert_eq!(
            find_start(&dir(&d), seg1m()).unwrap().unwrap(),
            StartPoint {
                tli: tli(1),
                lsn: Lsn(6 * SEG),
                from_partial: true
            }
        );
        // Segment numbers cross the xlogid boundary (4096 segments of 1 MiB each).
        put(d.path(), "000000020000000100000000", SEG as usize);
        assert_eq!(
            find_start(&dir(&d), seg1m()).unwrap().unwrap(),
            StartPoint {
                tli: tli(2),
                lsn: Lsn(4097 * SEG),
                from_partial: false
            }
        );
    }

    #[test]
    fn per_timeline_starts_ignore_other_timelines() {
        let d = tempdir();
        assert_eq!(find_starts(&dir(&d), seg1m()).unwrap(), vec![]);
        // Timeline 1 ran past the point where timeline 2 forked (in segment 5).
        put(d.path(), "000000010000000000000005", SEG as usize);
        put(d.path(), "000000010000000000000006", SEG as usize);
        put(d.path(), "000000010000000000000007.partial", SEG as usize);
        put(d.path(), "000000020000000000000005", SEG as usize);
        put(d.path(), "000000020000000000000006.partial", SEG as usize);
        // A wrong-size completed file is skipped here too.
        put(d.path(), "000000020000000000000006", 3);
        let starts = find_starts(&dir(&d), seg1m()).unwrap();
        assert_eq!(
            starts,
            vec![
                StartPoint {
                    tli: tli(1),
                    lsn: Lsn(7 * SEG),
                    from_partial: true
                },
                StartPoint {
                    tli: tli(2),
                    lsn: Lsn(6 * SEG),
                    from_partial: true
                },
            ]
        );
        // pg_receivewal's rule picks the higher segment on the old timeline.
        assert_eq!(find_start(&dir(&d), seg1m()).unwrap(), Some(starts[0]));
    }

    #[test]
    fn non_wal_files_are_ignored() {
        let d = tempdir();
        for name in [
            ".walsink.lock",
            ".walsink.meta",
            ".walsink.meta.tmp",
            ".walsink.prepared",
            ".000000010000000000000009.replaced-1700000000",
            "walsink.lock",
            "walsink.meta",
            "00000002.history",
            "00000002.history.tmp",
            "000000010000000000000009.gz",
            "00000001000000000000000A.zst.partial",
            "00000001000000000000000b",
            "00000001000000000000000C.tmp",
            "000000010000000000001000", // segment 0x1000 is impossible at 1 MiB
            "README",
        ] {
            put(d.path(), name, SEG as usize);
        }
        fs::create_dir(d.path().join("00000001000000000000000D")).unwrap();
        assert_eq!(find_start(&dir(&d), seg1m()).unwrap(), None);
        put(d.path(), "000000010000000000000002", SEG as usize);
        assert_eq!(
            find_start(&dir(&d), seg1m()).unwrap().unwrap().lsn,
            Lsn(3 * SEG)
        );
    }

    #[test]
    fn probe_takes_the_newest_plausible_header() {
        let d = tempdir();
        assert_eq!(probe_identity(&dir(&d)).unwrap(), (None, 0));
        // An older completed segment of system 111, a newer one of system 222 and a
        // newest all-zero partial (freshly pre-filled): the probe finds 222.
        put_segment(d.path(), "000000010000000000000003", 3, 111, SEG);
        put_segment(d.path(), "000000010000000000000004", 4, 222, SEG);
        put(d.path(), "000000010000000000000005.partial", SEG as usize);
        let (path, long) = probe_identity(&dir(&d)).unwrap().0.unwrap();
        assert_eq!(long.sysid, 222);
        assert!(path.ends_with("000000010000000000000004"));
        // A header whose page address does not match the file name is not believed.
        put_segment(d.path(), "000000010000000000000006", 9, 333, SEG);
        assert_eq!(probe_identity(&dir(&d)).unwrap().0.unwrap().1.sysid, 222);
    }

    #[test]
    fn probe_reads_headers_of_other_segment_sizes() {
        let d = tempdir();
        // 16 MiB segment 0/3000000 is "000000010000000000000003" at 16 MiB but
        // segment 0x30 at 1 MiB; the header's own size is used to check the address.
        put_segment(d.path(), "000000010000000000000003", 3, 111, 16 << 20);
        let (_, long) = probe_identity(&dir(&d)).unwrap().0.unwrap();
        assert_eq!(long.seg_size, 16 << 20);
    }
}
