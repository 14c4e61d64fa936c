//! What an archive directory holds, per timeline: `walsink status`.
//!
//! Read-only and lock-free: it runs next to a streaming walsink. It lists the directory
//! once, `stat`s each WAL file (without following links) and reads only the newest
//! `.partial` of each timeline to find how far it is filled: first the whole pages from
//! the segment start whose headers carry their own address (read in 1 MiB chunks), then,
//! in those pages, where the last record ends by its page and record headers
//! ([`walsink_wal::tail::written_end`]; no CRC is checked). The second step holds those
//! pages in memory, at most [`EXACT_FILL_LIMIT`]; a larger fill (segments over 64 MiB)
//! stays page-granular.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::path::Path;
use std::time::SystemTime;

use rustix::fs::OFlags;
use walsink_wal::page::{DEFAULT_BLCKSZ, PageHeader};
use walsink_wal::{Lsn, SegNo, SegmentFileKind, SegmentName, TimelineId, WalSegSize};

use crate::dir::{Dir, kind_of};
use crate::meta::Gap;
use crate::{ArchiveError, readonly, scan};

/// Which database system the archive belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The system identifier.
    pub system_identifier: u64,
    /// The WAL segment size.
    pub seg: WalSegSize,
    /// Whether it is pinned in `.walsink.meta` (otherwise it was read from the newest WAL
    /// file's long page header, as in a directory pg_receivewal wrote).
    pub pinned: bool,
}

/// The newest `.partial` of a timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialStatus {
    /// Its file name.
    pub name: String,
    /// Its size in bytes (normally the segment size: it is preallocated).
    pub size: u64,
    /// Bytes from the segment start to where its last record ends: how far WAL was
    /// written into it (see the module docs).
    pub filled: u64,
    /// The LSN `filled` reaches.
    pub end: Lsn,
}

/// One timeline's WAL in the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineStatus {
    /// The timeline.
    pub tli: TimelineId,
    /// Whether its history file is in the archive (timeline 1 has none).
    pub history_file: bool,
    /// The start of its first WAL file.
    pub first: Lsn,
    /// The end of its WAL: the end of its newest completed segment, or how far its
    /// `.partial` is filled when that is newer.
    pub end: Lsn,
    /// Completed segments.
    pub segments: u64,
    /// Bytes its WAL files take on disk (allocated blocks).
    pub bytes_on_disk: u64,
    /// Segments missing between its first and its newest file, as `[from, to)` LSN ranges.
    pub missing: Vec<(Lsn, Lsn)>,
    /// Its newest `.partial`, when that is its newest file.
    pub partial: Option<PartialStatus>,
    /// When its newest WAL file was last modified.
    pub modified: Option<SystemTime>,
}

/// What [`archive_status`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveStatus {
    /// The database system, if the archive has `.walsink.meta` or a WAL file with a long
    /// page header.
    pub identity: Option<Identity>,
    /// Gaps recorded in `.walsink.meta` (`--allow-gap`).
    pub gaps: Vec<Gap>,
    /// Per timeline, in timeline order.
    pub timelines: Vec<TimelineStatus>,
    /// History files of timelines that have no WAL file in the archive.
    pub history_only: Vec<TimelineId>,
}

impl ArchiveStatus {
    /// The archive's newest timeline with WAL, whose end is where streaming continues.
    pub fn newest(&self) -> Option<&TimelineStatus> {
        self.timelines.last()
    }
}

/// Reads what the archive directory `dir` holds (see the module docs).
pub fn archive_status(dir: &Path) -> Result<ArchiveStatus, ArchiveError> {
    let dir = Dir::open(dir)?;
    let meta = readonly::read_meta(&dir)?;
    let identity = match &meta {
        Some(m) => Some(Identity {
            system_identifier: m.system_identifier,
            seg: m.seg,
            pinned: true,
        }),
        None => scan::probe_identity(&dir)?.0.and_then(|(_, long)| {
            Some(Identity {
                system_identifier: long.sysid,
                seg: WalSegSize::new(u64::from(long.seg_size)).ok()?,
                pinned: false,
            })
        }),
    };
    let gaps = meta.map(|m| m.gaps).unwrap_or_default();
    let Some(id) = identity else {
        return Ok(ArchiveStatus {
            identity,
            gaps,
            timelines: Vec::new(),
            history_only: Vec::new(),
        });
    };
    let seg = id.seg;

    // Per timeline: segment number -> (completed, partial) file facts.
    let mut files: BTreeMap<TimelineId, BTreeMap<SegNo, Files>> = BTreeMap::new();
    let mut histories = Vec::new();
    for name in dir.entry_names()? {
        if let Some(tli) = TimelineId::from_history_file_name(&name) {
            histories.push(tli);
            continue;
        }
        let Some((sn, kind)) = SegmentName::parse_file_name(&name, seg) else {
            continue;
        };
        let complete = match kind {
            SegmentFileKind::Complete => true,
            SegmentFileKind::Partial => false,
            _ => continue,
        };
        let Some(st) = dir.lstat(&name)? else {
            continue;
        };
        if kind_of(&st).is_some() {
            continue;
        }
        let fact = FileFacts {
            name,
            size: u64::try_from(st.st_size).unwrap_or(0),
            blocks: u64::try_from(st.st_blocks).unwrap_or(0) * 512,
            modified: SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::new(
                u64::try_from(st.st_mtime).unwrap_or(0),
                u32::try_from(st.st_mtime_nsec).unwrap_or(0),
            )),
        };
        let e = files
            .entry(sn.tli)
            .or_default()
            .entry(sn.segno)
            .or_default();
        if complete && fact.size == seg.bytes() {
            e.complete = Some(fact);
        } else if complete {
            // A completed file of the wrong size is not WAL walsink can use; it still
            // takes space.
            e.other_bytes += fact.blocks;
        } else {
            e.partial = Some(fact);
        }
    }

    let mut timelines = Vec::new();
    for (tli, segs) in files {
        let usable: Vec<(&SegNo, &Files)> = segs
            .iter()
            .filter(|(_, f)| f.complete.is_some() || f.partial.is_some())
            .collect();
        let bytes_on_disk = segs
            .values()
            .map(|f| {
                f.other_bytes
                    + f.complete.as_ref().map_or(0, |c| c.blocks)
                    + f.partial.as_ref().map_or(0, |p| p.blocks)
            })
            .sum();
        let (Some(&(&first_no, _)), Some(&(&last_no, last))) = (usable.first(), usable.last())
        else {
            continue;
        };
        let segments = usable.iter().filter(|(_, f)| f.complete.is_some()).count() as u64;
        let mut missing = Vec::new();
        let mut expect = first_no;
        for &(&no, _) in &usable {
            if no > expect {
                missing.push((seg.start_of(expect), seg.start_of(no)));
            }
            expect = no.next();
        }
        let (end, partial, modified) = match (&last.complete, &last.partial) {
            (Some(c), _) => (seg.start_of(last_no.next()), None, c.modified),
            (None, Some(p)) => {
                let start = seg.start_of(last_no);
                let filled = filled_bytes(&dir, &p.name, start, seg)?;
                let end = Lsn(start.0 + filled);
                let status = PartialStatus {
                    name: p.name.clone(),
                    size: p.size,
                    filled,
                    end,
                };
                (end, Some(status), p.modified)
            }
            (None, None) => unreachable!("usable files have one of the two"),
        };
        timelines.push(TimelineStatus {
            tli,
            history_file: histories.contains(&tli),
            first: seg.start_of(first_no),
            end,
            segments,
            bytes_on_disk,
            missing,
            partial,
            modified,
        });
    }
    histories.sort();
    let history_only = histories
        .into_iter()
        .filter(|t| !timelines.iter().any(|s| s.tli == *t))
        .collect();
    Ok(ArchiveStatus {
        identity,
        gaps,
        timelines,
        history_only,
    })
}

#[derive(Default)]
struct Files {
    complete: Option<FileFacts>,
    partial: Option<FileFacts>,
    other_bytes: u64,
}

struct FileFacts {
    name: String,
    size: u64,
    blocks: u64,
    modified: Option<SystemTime>,
}

/// The most of a `.partial` read into memory to find the exact end of its last record.
pub const EXACT_FILL_LIMIT: u64 = 64 << 20;

/// How far the `.partial` `name` (segment start `start`) is filled: where its last record
/// ends (see the module docs), or the end of its valid pages.
fn filled_bytes(dir: &Dir, name: &str, start: Lsn, seg: WalSegSize) -> Result<u64, ArchiveError> {
    let pages = valid_pages(dir, name, start, seg)?;
    if pages == 0 || pages > EXACT_FILL_LIMIT {
        return Ok(pages);
    }
    let f = match dir.open_file(name, OFlags::RDONLY) {
        Ok(f) => f,
        Err(ArchiveError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
            return Ok(0);
        }
        Err(e) => return Err(e),
    };
    let mut image = Vec::with_capacity(usize::try_from(pages).unwrap_or(0));
    f.take(pages)
        .read_to_end(&mut image)
        .map_err(|e| ArchiveError::io(dir.join(name), "read", e))?;
    Ok(match walsink_wal::tail::written_end(&image, start) {
        Some(end) => end.0.saturating_sub(start.0).min(pages),
        None => pages,
    })
}

/// How many bytes from the start of the `.partial` `name` (segment start `start`) are
/// whole pages with headers that carry their own address; read in 1 MiB chunks.
fn valid_pages(dir: &Dir, name: &str, start: Lsn, seg: WalSegSize) -> Result<u64, ArchiveError> {
    let f = match dir.open_file(name, OFlags::RDONLY) {
        Ok(f) => f,
        Err(ArchiveError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
            return Ok(0);
        }
        Err(e) => return Err(e),
    };
    let mut chunk = vec![0u8; 1 << 20];
    let mut reader = f.take(seg.bytes());
    let mut blcksz = DEFAULT_BLCKSZ;
    let mut off: u64 = 0;
    loop {
        let mut n = 0;
        while n < chunk.len() {
            match reader.read(&mut chunk[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(ArchiveError::io(dir.join(name), "read", e)),
            }
        }
        let mut at = 0;
        while at + blcksz <= n {
            let Some(h) = PageHeader::parse(&chunk[at..at + blcksz]) else {
                return Ok(off);
            };
            if !h.plausible_at(Lsn(start.0 + off), off == 0) {
                return Ok(off);
            }
            if off == 0
                && let Some(long) = h.long
                && long.blcksz.is_power_of_two()
                && (1024..=65536).contains(&long.blcksz)
                && (1u32 << 20).is_multiple_of(long.blcksz)
            {
                blcksz = long.blcksz as usize;
            }
            at += blcksz;
            off += blcksz as u64;
        }
        if n < chunk.len() {
            return Ok(off);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use std::fs;

    /// A `.partial` of segment `segno` whose first `pages` pages carry valid headers and
    /// whose first page holds `records` records of 48 bytes after its long header.
    fn put_partial(dir: &Path, name: &str, segno: u64, pages: usize, records: usize) {
        let mut img = first_page(segno, 42, SEG);
        img.resize(SEG as usize, 0);
        for r in 0..records {
            let at = 40 + r * 48;
            img[at..at + 4].copy_from_slice(&48u32.to_le_bytes()); // xl_tot_len
            let prev = if r == 0 {
                0
            } else {
                segno * SEG + at as u64 - 48
            };
            img[at + 8..at + 16].copy_from_slice(&prev.to_le_bytes()); // xl_prev
            img[at + 17] = 21; // xl_rmid: not XLOG (so never a switch record)
        }
        for i in 1..pages {
            let p = &mut img[i * 8192..];
            p[0..2].copy_from_slice(&0xD118u16.to_le_bytes());
            p[4..8].copy_from_slice(&1u32.to_le_bytes());
            p[8..16].copy_from_slice(&(segno * SEG + i as u64 * 8192).to_le_bytes());
        }
        fs::write(dir.join(name), img).unwrap();
    }

    #[test]
    fn timelines_segments_holes_and_the_partial_fill() {
        let d = tempdir();
        fs::write(
            d.path().join("walsink.meta"),
            format!(
                "system_identifier = 42\nwal_segment_size = {SEG}\ngap = 0/600000 0/800000 1700000000 removed\n"
            ),
        )
        .unwrap();
        for s in [3u64, 4, 5, 8] {
            put_segment(
                d.path(),
                &format!("0000000100000000000000{s:02X}"),
                s,
                42,
                SEG,
            );
        }
        put_partial(d.path(), "000000010000000000000009.partial", 9, 5, 3);
        put_segment(d.path(), "000000020000000000000009", 9, 42, SEG);
        put_partial(d.path(), "00000002000000000000000A.partial", 10, 1, 0);
        fs::write(d.path().join("00000002.history"), "1\t0/9000100\tx\n").unwrap();
        fs::write(d.path().join("00000003.history"), "2\t0/A000100\tx\n").unwrap();
        put(d.path(), "000000010000000000000007", 10); // wrong size: not a segment

        let s = archive_status(d.path()).unwrap();
        assert_eq!(
            s.identity,
            Some(Identity {
                system_identifier: 42,
                seg: seg1m(),
                pinned: true
            })
        );
        assert_eq!(s.gaps.len(), 1);
        assert_eq!(s.history_only, vec![tli(3)]);
        assert_eq!(s.timelines.len(), 2);
        let t1 = &s.timelines[0];
        assert_eq!(t1.tli, tli(1));
        assert!(!t1.history_file);
        assert_eq!(t1.first, Lsn(3 * SEG));
        assert_eq!(t1.segments, 4);
        assert_eq!(
            t1.missing,
            vec![(Lsn(6 * SEG), Lsn(8 * SEG))],
            "segments 6 and 7 are missing (7 has the wrong size)"
        );
        let p = t1.partial.as_ref().unwrap();
        assert_eq!(p.name, "000000010000000000000009.partial");
        // Five valid pages; the WAL in them ends after the third record.
        let dir = Dir::open(d.path()).unwrap();
        let valid = valid_pages(&dir, &p.name, Lsn(9 * SEG), seg1m()).unwrap();
        assert_eq!(valid, 5 * 8192);
        assert_eq!(p.filled, 40 + 3 * 48);
        assert_eq!(t1.end, Lsn(9 * SEG + 40 + 3 * 48));
        assert!(t1.bytes_on_disk > 0);
        let t2 = s.newest().unwrap();
        assert_eq!(t2.tli, tli(2));
        assert!(t2.history_file);
        assert_eq!((t2.first, t2.segments), (Lsn(9 * SEG), 1));
        // Nothing after the long header.
        assert_eq!(t2.end, Lsn(10 * SEG + 40));
        assert!(t2.missing.is_empty());
    }

    #[test]
    fn an_empty_or_unidentified_directory_has_no_timelines() {
        let d = tempdir();
        let s = archive_status(d.path()).unwrap();
        assert_eq!(s.identity, None);
        assert!(s.timelines.is_empty());
        // Without .walsink.meta the identity comes from the newest WAL file's header.
        put_segment(d.path(), "000000010000000000000003", 3, 77, SEG);
        let s = archive_status(d.path()).unwrap();
        assert_eq!(s.identity.unwrap().system_identifier, 77);
        assert!(!s.identity.unwrap().pinned);
        assert_eq!(s.timelines[0].end, Lsn(4 * SEG));
    }
}
