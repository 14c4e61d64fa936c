//! `walsink verify`: checks an archive directory, read-only and without its lock (a
//! walsink may be streaming into it).
//!
//! * **Files**: every WAL file name parses at the archive's segment size; a completed
//!   segment is exactly one segment long, a `.partial` at most that; a name that is not a
//!   regular file, a compressed file (not checked) and a segment present both completed and
//!   as `.partial` are problems. walsink's private files (dot-names, `walsink.*`,
//!   `*.replaced-*`) and unrelated files are skipped.
//! * **Continuity**: the newest timeline's history (its `.history` file, whose ancestors
//!   must have theirs) says which timeline each segment is read from during recovery, as
//!   PostgreSQL does (a segment holding a switch point is read from the new timeline).
//!   Along that chain, from the archive's first segment to its last, every segment must be
//!   there, completed (a `.partial` only at the very end); a missing range inside a gap
//!   recorded with `--allow-gap` is reported as a note, not a problem. WAL of timelines
//!   outside the chain (past a fork point, another branch) is checked but is not part of
//!   it.
//! * **Content**: each timeline's files are fed, in order, to the WAL validator
//!   ([`walsink_wal::validate`]): every page header and every record's CRC-32C, across
//!   segment boundaries. A `.partial` is read up to its last non-zero byte (the rest is
//!   preallocated zeros); its WAL may end inside a record. The first segment of a run (of
//!   consecutive segments of one timeline) may begin with the tail of a record whose start
//!   is not in that run: that tail is skipped.
//!
//! The content of each file is handed over by the caller ([`MapFile`]): the binary maps
//! it with `memmap2` (this crate has no `unsafe`), tests read it.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Deref;
use std::path::Path;

use rustix::fs::OFlags;
use walsink_wal::validate::{ValidatorConfig, WalValidator};
use walsink_wal::{
    Lsn, SegNo, SegmentFileKind, SegmentName, TimelineHistory, TimelineId, WalSegSize,
};

use crate::archive::HISTORY_LIMIT;
use crate::dir::{Dir, kind_of};
use crate::meta::Gap;
use crate::{ArchiveError, readonly, scan};

/// The bytes of a file, as the caller's [`MapFile`] provides them.
pub type Mapped = Box<dyn Deref<Target = [u8]>>;

/// Provides the content of an open WAL file (a memory map in the binary).
pub type MapFile<'a> = &'a mut dyn FnMut(&File) -> std::io::Result<Mapped>;

/// WAL is fed to the validator in pieces of this size (so the progress moves). The
/// parallel check feeds in the same pieces: where the validator stops on a problem can
/// depend on how its input is cut, and both must stop at the same place.
const CHUNK: usize = 4 << 20;

/// What to check.
#[derive(Clone, Copy, Debug, Default)]
pub struct VerifyOptions {
    /// Only segments that end after this position.
    pub from: Option<Lsn>,
    /// Only segments that begin before this position.
    pub to: Option<Lsn>,
}

/// One problem (or note) found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The file concerned, if any.
    pub file: Option<String>,
    /// The timeline concerned, if any.
    pub timeline: Option<u32>,
    /// The position concerned, if any.
    pub lsn: Option<Lsn>,
    /// What is wrong (or worth knowing).
    pub what: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.file, self.lsn) {
            (Some(file), Some(lsn)) => write!(f, "{file} at {lsn}: ")?,
            (Some(file), None) => write!(f, "{file}: ")?,
            (None, Some(lsn)) => write!(f, "at {lsn}: ")?,
            (None, None) => {}
        }
        f.write_str(&self.what)
    }
}

/// What was checked of one timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineReport {
    /// The timeline.
    pub tli: u32,
    /// The start of its first file checked.
    pub first: Lsn,
    /// The end of its last valid record checked.
    pub end: Lsn,
    /// Files checked.
    pub files: u64,
    /// Records validated.
    pub records: u64,
}

/// What [`Verifier::run`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// The system identifier (pinned, or from the WAL).
    pub system_identifier: Option<u64>,
    /// The segment size.
    pub seg: Option<WalSegSize>,
    /// Per timeline with WAL, in order.
    pub timelines: Vec<TimelineReport>,
    /// Gaps recorded with `--allow-gap`.
    pub gaps: Vec<Gap>,
    /// Problems: the archive is not valid from its first to its last record.
    pub problems: Vec<Finding>,
    /// Worth knowing, not a problem (recorded gaps, WAL past a fork point).
    pub notes: Vec<Finding>,
    /// WAL files checked.
    pub files: u64,
    /// Bytes of WAL checked.
    pub bytes: u64,
    /// Records validated.
    pub records: u64,
}

impl VerifyReport {
    /// Whether nothing is wrong.
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One WAL file to check.
#[derive(Clone, Debug)]
struct WalFile {
    name: String,
    complete: bool,
    size: u64,
}

/// The files of one segment: the completed one and the `.partial`, if any.
type SegmentFiles = (Option<WalFile>, Option<WalFile>);

/// A planned check: the directory listed, the identity and histories read.
#[derive(Debug)]
pub struct Verifier {
    dir: Dir,
    opts: VerifyOptions,
    report: VerifyReport,
    format: Option<walsink_wal::validate::WalFormat>,
    seg: Option<WalSegSize>,
    /// Per timeline, per segment: the completed file and the `.partial`, if any.
    files: BTreeMap<TimelineId, BTreeMap<SegNo, SegmentFiles>>,
    histories: BTreeMap<TimelineId, Option<TimelineHistory>>,
}

fn problem(file: Option<&str>, tli: Option<TimelineId>, lsn: Option<Lsn>, what: String) -> Finding {
    Finding {
        file: file.map(str::to_owned),
        timeline: tli.map(TimelineId::get),
        lsn,
        what,
    }
}

/// Whether `name` is one of walsink's own files (or another tool's private one), not WAL.
fn is_private(name: &str) -> bool {
    name.starts_with('.') || name.starts_with("walsink.") || name.contains(".replaced-")
}

impl Verifier {
    /// Lists `dir` and reads its metadata and history files.
    pub fn open(dir: &Path, opts: VerifyOptions) -> Result<Verifier, ArchiveError> {
        match std::fs::metadata(dir) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => return Err(ArchiveError::NotADirectory { path: dir.into() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ArchiveError::NoDirectory { path: dir.into() });
            }
            Err(e) => return Err(ArchiveError::io(dir, "stat", e)),
        }
        let d = Dir::open(dir)?;
        let mut report = VerifyReport::default();
        let meta = readonly::read_meta(&d)?;
        let (seg, format) = match &meta {
            Some(m) => {
                report.system_identifier = Some(m.system_identifier);
                report.gaps = m.gaps.clone();
                (Some(m.seg), m.format)
            }
            None => {
                let probed = scan::probe_identity(&d)?.0;
                let seg = probed
                    .as_ref()
                    .and_then(|(_, long)| WalSegSize::new(u64::from(long.seg_size)).ok());
                report.system_identifier = probed.map(|(_, long)| long.sysid);
                (seg, None)
            }
        };
        report.seg = seg;
        let mut v = Verifier {
            dir: d,
            opts,
            report,
            format,
            seg,
            files: BTreeMap::new(),
            histories: BTreeMap::new(),
        };
        v.list()?;
        Ok(v)
    }

    fn list(&mut self) -> Result<(), ArchiveError> {
        let mut names = self.dir.entry_names()?;
        names.sort();
        for name in names {
            if is_private(&name) {
                continue;
            }
            if let Some(tli) = TimelineId::from_history_file_name(&name) {
                let h = match self.dir.read_capped(&name, HISTORY_LIMIT) {
                    Ok(Some(bytes)) => match TimelineHistory::parse(tli, &bytes) {
                        Ok(h) => Some(h),
                        Err(e) => {
                            self.report.problems.push(problem(
                                Some(&name),
                                Some(tli),
                                None,
                                format!("history file is invalid: {e}"),
                            ));
                            None
                        }
                    },
                    Ok(None) => continue,
                    Err(e) => {
                        self.report.problems.push(problem(
                            Some(&name),
                            Some(tli),
                            None,
                            e.to_string(),
                        ));
                        None
                    }
                };
                self.histories.insert(tli, h);
                continue;
            }
            let Some(seg) = self.seg else {
                if SegmentName::parse_file_name(
                    &name,
                    WalSegSize::new(WalSegSize::MIN).expect("valid"),
                )
                .is_some()
                {
                    self.report.problems.push(problem(
                        Some(&name),
                        None,
                        None,
                        "no .walsink.meta and no WAL file with a valid long page header: the segment size is unknown, nothing can be checked".into(),
                    ));
                }
                continue;
            };
            let Some((sn, kind)) = SegmentName::parse_file_name(&name, seg) else {
                continue;
            };
            let complete = match kind {
                SegmentFileKind::Complete => true,
                SegmentFileKind::Partial => false,
                SegmentFileKind::CompressedComplete | SegmentFileKind::CompressedPartial => {
                    self.report.problems.push(problem(
                        Some(&name),
                        Some(sn.tli),
                        Some(sn.start_lsn(seg)),
                        "compressed WAL file: not checked (walsink verify reads uncompressed WAL only)"
                            .into(),
                    ));
                    continue;
                }
            };
            if !self.wanted(sn.segno) {
                continue;
            }
            let Some(st) = self.dir.lstat(&name)? else {
                continue;
            };
            if let Some(k) = kind_of(&st) {
                self.report.problems.push(problem(
                    Some(&name),
                    Some(sn.tli),
                    Some(sn.start_lsn(seg)),
                    format!("is {k}, not a regular file"),
                ));
                continue;
            }
            let size = u64::try_from(st.st_size).unwrap_or(0);
            let f = WalFile {
                name,
                complete,
                size,
            };
            let slot = self
                .files
                .entry(sn.tli)
                .or_default()
                .entry(sn.segno)
                .or_default();
            if complete {
                slot.0 = Some(f);
            } else {
                slot.1 = Some(f);
            }
        }
        Ok(())
    }

    /// Whether segment `segno` overlaps `--from`/`--to`.
    fn wanted(&self, segno: SegNo) -> bool {
        let Some(seg) = self.seg else { return false };
        let start = seg.start_of(segno);
        let end = start.0.saturating_add(seg.bytes());
        self.opts.from.is_none_or(|f| end > f.0) && self.opts.to.is_none_or(|t| start < t)
    }

    /// Bytes of WAL the check reads (for a progress bar).
    pub fn total_bytes(&self) -> u64 {
        self.files
            .values()
            .flat_map(|m| m.values())
            .filter_map(|(c, p)| c.as_ref().or(p.as_ref()))
            .map(|f| f.size)
            .sum()
    }

    /// Runs the check; `progress` is told how many more bytes were read, as it goes.
    pub fn run(mut self, map: MapFile<'_>, progress: &mut dyn FnMut(u64)) -> VerifyReport {
        let Some(seg) = self.seg else {
            return self.report;
        };
        self.check_names(seg);
        self.check_chain(seg);
        let timelines: Vec<TimelineId> = self.files.keys().copied().collect();
        for tli in timelines {
            self.check_content(tli, seg, map, progress);
        }
        self.report
    }

    /// Sizes and duplicates.
    fn check_names(&mut self, seg: WalSegSize) {
        for (tli, segs) in &self.files {
            for (segno, (c, p)) in segs {
                let at = Some(seg.start_of(*segno));
                if let Some(c) = c
                    && c.size != seg.bytes()
                {
                    self.report.problems.push(problem(
                        Some(&c.name),
                        Some(*tli),
                        at,
                        format!(
                            "completed segment has {} bytes, expected {} (truncated or damaged)",
                            c.size,
                            seg.bytes()
                        ),
                    ));
                }
                if let Some(p) = p
                    && p.size > seg.bytes()
                {
                    self.report.problems.push(problem(
                        Some(&p.name),
                        Some(*tli),
                        at,
                        format!(
                            "has {} bytes, more than a segment ({})",
                            p.size,
                            seg.bytes()
                        ),
                    ));
                }
                if let (Some(c), Some(p)) = (c, p) {
                    self.report.problems.push(problem(
                        Some(&p.name),
                        Some(*tli),
                        at,
                        format!(
                            "the segment is there twice: completed ({}) and as .partial",
                            c.name
                        ),
                    ));
                }
            }
        }
    }

    /// The recovery chain of the newest timeline: which timeline each segment is read
    /// from, and that every segment from the first to the last is there.
    fn check_chain(&mut self, seg: WalSegSize) {
        let Some(&newest) = self.files.keys().next_back() else {
            return;
        };
        // The timelines of the chain, oldest first, with the segment each begins at.
        let mut chain: Vec<(TimelineId, Option<SegNo>)> = vec![(TimelineId::ONE, None)];
        if newest != TimelineId::ONE {
            match self.histories.get(&newest) {
                Some(Some(h)) => {
                    chain = h.ancestors.iter().map(|e| (e.tli, None)).collect();
                    chain.push((newest, None));
                    // Each timeline begins at its parent's switch point.
                    for (c, e) in chain.iter_mut().skip(1).zip(&h.ancestors) {
                        c.1 = Some(seg.segno(e.switchpoint));
                    }
                }
                Some(None) => return, // reported: invalid history file
                None => {
                    self.report.problems.push(problem(
                        None,
                        Some(newest),
                        None,
                        format!(
                            "timeline {newest} has WAL but its history file {} is missing: which WAL of older timelines belongs to it cannot be told",
                            newest.history_file_name()
                        ),
                    ));
                    return;
                }
            }
        }
        for (tli, _) in &chain {
            if *tli != TimelineId::ONE && !self.histories.contains_key(tli) {
                self.report.problems.push(problem(
                    None,
                    Some(*tli),
                    None,
                    format!("history file {} is missing", tli.history_file_name()),
                ));
            }
        }
        let on_chain = |segno: SegNo| -> TimelineId {
            chain
                .iter()
                .rev()
                .find(|(_, begin)| begin.is_none_or(|b| segno >= b))
                .map_or(TimelineId::ONE, |(t, _)| *t)
        };
        // The chain's span: from the first segment any of its timelines has to the last.
        let mut first: Option<SegNo> = None;
        let mut last: Option<SegNo> = None;
        for (tli, segs) in &self.files {
            for segno in segs.keys() {
                if on_chain(*segno) == *tli {
                    first = Some(first.map_or(*segno, |f: SegNo| f.min(*segno)));
                    last = Some(last.map_or(*segno, |l: SegNo| l.max(*segno)));
                }
            }
        }
        let (Some(first), Some(last)) = (first, last) else {
            return;
        };
        let mut missing: Option<(SegNo, SegNo, TimelineId)> = None;
        let mut segno = first;
        loop {
            let tli = on_chain(segno);
            let entry = self.files.get(&tli).and_then(|m| m.get(&segno)).cloned();
            let present = entry
                .as_ref()
                .is_some_and(|(c, p)| c.is_some() || p.is_some());
            if !present {
                missing = Some(match missing {
                    Some((from, _, t)) => (from, segno, t),
                    None => (segno, segno, tli),
                });
            } else {
                if let Some((from, to, t)) = missing.take() {
                    self.report_missing(seg, from, to, t);
                }
                if let Some((None, Some(p))) = entry
                    && segno != last
                {
                    let start = seg.start_of(segno);
                    let end = Lsn(start.0 + seg.bytes());
                    let finding = problem(
                        Some(&p.name),
                        Some(tli),
                        Some(start),
                        "is incomplete (.partial) but the WAL continues after it: recovery cannot pass it".into(),
                    );
                    if self.in_recorded_gap(start, end) {
                        self.report.notes.push(Finding {
                            what: "ends where a gap recorded with --allow-gap begins".into(),
                            ..finding
                        });
                    } else {
                        self.report.problems.push(finding);
                    }
                }
            }
            if segno == last {
                break;
            }
            segno = segno.next();
        }
        // WAL of timelines off the chain.
        for (tli, segs) in &self.files {
            let off: Vec<&SegNo> = segs.keys().filter(|s| on_chain(**s) != *tli).collect();
            if let (Some(a), Some(b)) = (off.first(), off.last()) {
                self.report.notes.push(problem(
                    None,
                    Some(*tli),
                    Some(seg.start_of(**a)),
                    format!(
                        "{} segment(s) of timeline {tli} up to {} are not on the newest timeline {newest}'s history (WAL past a fork point, or another branch); checked, but recovery of timeline {newest} does not read them",
                        off.len(),
                        SegmentName::new(*tli, **b).file_name(seg)
                    ),
                ));
            }
        }
    }

    /// Whether a gap recorded with `--allow-gap` begins in `[from, to]` (the archive's WAL
    /// ended there when the gap was accepted).
    fn in_recorded_gap(&self, from: Lsn, to: Lsn) -> bool {
        self.report
            .gaps
            .iter()
            .any(|g| g.from >= from && g.from <= to)
    }

    fn report_missing(&mut self, seg: WalSegSize, from: SegNo, to: SegNo, tli: TimelineId) {
        let start = seg.start_of(from);
        let end = Lsn(seg.start_of(to).0 + seg.bytes());
        let names = if from == to {
            SegmentName::new(tli, from).file_name(seg)
        } else {
            format!(
                "{} to {}",
                SegmentName::new(tli, from).file_name(seg),
                SegmentName::new(tli, to).file_name(seg)
            )
        };
        let covered = self
            .report
            .gaps
            .iter()
            .any(|g| seg.segment_start(g.from) <= start && end <= g.to);
        let finding = problem(
            None,
            Some(tli),
            Some(start),
            format!("missing segment(s) {names}: no WAL from {start} to {end}"),
        );
        if covered {
            self.report.notes.push(Finding {
                what: format!("{} (a gap recorded with --allow-gap)", finding.what),
                ..finding
            });
        } else {
            self.report.problems.push(finding);
        }
    }

    /// Opens and maps WAL file `f`; what is wrong, if that fails.
    fn read_wal(
        &self,
        f: &WalFile,
        map: &mut dyn FnMut(&File) -> std::io::Result<Mapped>,
    ) -> Result<Mapped, String> {
        let file = self
            .dir
            .open_file(&f.name, OFlags::RDONLY)
            .map_err(|e| e.to_string())?;
        map(&file).map_err(|e| format!("cannot read it: {e}"))
    }

    /// Feeds timeline `tli`'s files to the validator, a run of consecutive segments at a
    /// time.
    fn check_content(
        &mut self,
        tli: TimelineId,
        seg: WalSegSize,
        map: MapFile<'_>,
        progress: &mut dyn FnMut(u64),
    ) {
        let cfg = ValidatorConfig {
            seg,
            system_id: self.report.system_identifier,
            format: self.format,
        };
        let segs = self.files.get(&tli).cloned().unwrap_or_default();
        let mut tl = TimelineReport {
            tli: tli.get(),
            first: Lsn::INVALID,
            end: Lsn::INVALID,
            files: 0,
            records: 0,
        };
        let mut v: Option<WalValidator> = None;
        let mut expect_next: Option<SegNo> = None;
        for (segno, (c, p)) in segs {
            // A completed file is read; a .partial only when there is no completed one.
            let Some(f) = c.or(p) else { continue };
            let start = seg.start_of(segno);
            let continues = expect_next == Some(segno)
                && v.as_ref()
                    .is_some_and(|v| v.failure().is_none() && v.position() == start);
            if !continues {
                if let Some(old) = v.take() {
                    tl.records += old.records();
                }
                v = Some(WalValidator::new(cfg, tli.get(), start));
            }
            let vv = v.as_mut().expect("set above");
            if tl.files == 0 {
                tl.first = start;
            }
            tl.files += 1;
            self.report.files += 1;
            let bytes = match self.read_wal(&f, map) {
                Ok(b) => b,
                Err(what) => {
                    self.report
                        .problems
                        .push(problem(Some(&f.name), Some(tli), Some(start), what));
                    expect_next = None;
                    continue;
                }
            };
            let len = (bytes.len() as u64).min(seg.bytes()) as usize;
            let data = &bytes[..len];
            // In pieces, so the progress moves.
            let mut failed = None;
            let mut done = 0;
            for chunk in data.chunks(CHUNK) {
                if let Err(e) = vv.feed(chunk) {
                    failed = Some(e);
                    break;
                }
                progress(chunk.len() as u64);
                done += chunk.len();
            }
            self.report.bytes += data.len() as u64;
            progress((bytes.len() - done) as u64);
            if let Some(e) = &failed
                && !f.complete
                && end_of_wal(data, start, e, vv.position())
            {
                // The WAL received ends here; the rest is the preallocated zeros.
                tl.end = tl.end.max(e.valid_end);
                expect_next = None;
                continue;
            }
            match failed {
                Some(e) => {
                    tl.end = tl.end.max(e.valid_end);
                    self.report
                        .problems
                        .push(invalid_wal(&f.name, tli, seg, &e));
                }
                None => tl.end = tl.end.max(vv.checked_end()),
            }
            expect_next = Some(segno.next());
            if !f.complete {
                // Nothing continues a .partial: the next file starts a new run.
                expect_next = None;
            }
        }
        if let Some(old) = v {
            tl.records += old.records();
        }
        self.report.records += tl.records;
        if tl.files > 0 {
            self.report.timelines.push(tl);
        }
    }
}

/// The problem of invalid WAL found in file `name`.
fn invalid_wal(
    name: &str,
    tli: TimelineId,
    seg: WalSegSize,
    e: &walsink_wal::validate::WalInvalid,
) -> Finding {
    problem(
        Some(name),
        Some(tli),
        Some(e.at),
        format!(
            "{} (offset {:#X}; the WAL before it is valid up to {})",
            e.problem,
            seg.offset(e.at),
            e.valid_end
        ),
    )
}

/// Whether a problem found in a `.partial` (`data`, from `start`) is where the WAL received
/// ends: every byte from there on is zero (the file is preallocated with zeros), the last
/// record possibly cut off (its tail is zeros too; a record whose every byte is there and
/// whose CRC is wrong is damage). `stopped` is where the validator stopped reading.
fn end_of_wal(
    data: &[u8],
    start: Lsn,
    e: &walsink_wal::validate::WalInvalid,
    stopped: Lsn,
) -> bool {
    let zeros_from = Lsn(start.0 + data_end(data) as u64);
    if e.problem.looks_like_end_of_wal() {
        zeros_from <= stopped.max(e.at)
    } else {
        zeros_from < stopped
    }
}

/// The length of `data` without its trailing zeros (a `.partial` is preallocated).
fn data_end(data: &[u8]) -> usize {
    let mut end = data.len();
    while end >= 64 && data[end - 64..end].iter().all(|&b| b == 0) {
        end -= 64;
    }
    while end > 0 && data[end - 1] == 0 {
        end -= 1;
    }
    end
}

mod parallel;
pub use parallel::MapFileShared;

#[cfg(test)]
mod tests;
