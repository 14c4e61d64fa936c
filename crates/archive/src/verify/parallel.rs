//! The content check on several threads, with the same report as the check on one.
//!
//! Each segment is checked by a worker of its own, with a validator started at the
//! segment's start (which skips the tail of a record begun in the previous segment). A
//! worker that reaches the end of its segment goes on into the following files, as the
//! check on one thread would, until the first record that starts after its segment is
//! complete: there its validator's state is the one-thread check's state, and so is the
//! state of the worker of the segment that record starts in (both stand at a record
//! start; that worker's checks before it are weaker, never stronger, than the ones the
//! first worker made). The worker of that segment takes over from there. So every byte is
//! checked with the same state as on one thread, and the results are merged along that
//! chain in LSN order: the same problems, in the same order, the same ends and record
//! counts. A record that crosses segments is finished by the worker that started it; a
//! segment holding only the middle of a long record or the padding after `XLOG_SWITCH`
//! is covered by the worker before it, and its own worker's result is not used.
//!
//! Workers take segments from a shared queue (one worker per thread); each holds at most
//! its own file and one following file at a time.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use walsink_wal::validate::{ValidatorConfig, WalInvalid, WalValidator};
use walsink_wal::{Lsn, SegNo, TimelineId, WalSegSize};

use super::{
    CHUNK, Mapped, SegmentFiles, TimelineReport, Verifier, VerifyReport, end_of_wal, invalid_wal,
    problem,
};

/// Provides the content of an open WAL file (a memory map in the binary); called from
/// several threads at once.
pub type MapFileShared<'a> = &'a (dyn Fn(&File) -> std::io::Result<Mapped> + Sync);

/// What the worker of one segment found.
#[derive(Debug)]
struct SegCheck {
    /// Why its file cannot be read (worded as the one-thread check words it).
    unreadable: Option<String>,
    /// Bytes of WAL checked in its file (at most a segment).
    bytes: u64,
    /// Records complete that start in this segment (before a failure, if any).
    records: u64,
    /// How far the WAL is known good: the checked end after each whole file fed, the
    /// valid end at a failure.
    end: Lsn,
    /// The problem the worker stopped at.
    failure: Option<Failure>,
    /// The segment in which the record the worker stopped after begins: that segment's
    /// worker takes over from that record on.
    handoff: Option<SegNo>,
    /// The last segment whose file the worker read.
    last: SegNo,
}

#[derive(Debug)]
struct Failure {
    /// The segment of the file being fed when the problem was found.
    segno: SegNo,
    name: String,
    e: WalInvalid,
    /// The problem is where the WAL received ends in a `.partial`: not a problem.
    end_of_wal: bool,
}

/// The WAL file checked for a segment: the completed one, else the `.partial`.
fn file_of(files: &SegmentFiles) -> Option<&super::WalFile> {
    files.0.as_ref().or(files.1.as_ref())
}

impl Verifier {
    /// [`run`](Self::run) with the content checked by `jobs` threads (one: as `run`);
    /// the report is the same as `run`'s. `map` and `progress` are called from the
    /// threads.
    pub fn run_parallel(
        mut self,
        jobs: usize,
        map: MapFileShared<'_>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> VerifyReport {
        let Some(seg) = self.seg else {
            return self.report;
        };
        self.check_names(seg);
        self.check_chain(seg);
        let tasks: Vec<(TimelineId, SegNo)> = self
            .files
            .iter()
            .flat_map(|(tli, segs)| segs.keys().map(|s| (*tli, *s)))
            .collect();
        let next = AtomicUsize::new(0);
        let results = Mutex::new(BTreeMap::new());
        let this = &self;
        std::thread::scope(|scope| {
            for _ in 0..jobs.clamp(1, tasks.len().max(1)) {
                scope.spawn(|| {
                    while let Some(&(tli, segno)) = tasks.get(next.fetch_add(1, Ordering::Relaxed))
                    {
                        let r = this.check_segment(tli, seg, segno, map, progress);
                        results
                            .lock()
                            .expect("no worker panics holding it")
                            .insert((tli, segno), r);
                    }
                });
            }
        });
        let mut by_timeline: BTreeMap<TimelineId, BTreeMap<SegNo, SegCheck>> = BTreeMap::new();
        for ((tli, segno), r) in results.into_inner().expect("no worker panicked") {
            by_timeline.entry(tli).or_default().insert(segno, r);
        }
        for (tli, results) in by_timeline {
            self.merge(tli, seg, results);
        }
        self.report
    }

    /// The worker of segment `segno` of timeline `tli` (see the module docs).
    fn check_segment(
        &self,
        tli: TimelineId,
        seg: WalSegSize,
        segno: SegNo,
        map: MapFileShared<'_>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> SegCheck {
        let segs = &self.files[&tli];
        let f = file_of(&segs[&segno]).expect("listed with a file");
        let start = seg.start_of(segno);
        let own_end = Lsn(start.0 + seg.bytes());
        let mut out = SegCheck {
            unreadable: None,
            bytes: 0,
            records: 0,
            end: Lsn::INVALID,
            failure: None,
            handoff: None,
            last: segno,
        };
        let mut map = |file: &File| map(file);
        let bytes = match self.read_wal(f, &mut map) {
            Ok(b) => b,
            Err(what) => {
                out.unreadable = Some(what);
                return out;
            }
        };
        let data = &bytes[..(bytes.len() as u64).min(seg.bytes()) as usize];
        out.bytes = data.len() as u64;
        let cfg = ValidatorConfig {
            seg,
            system_id: self.report.system_identifier,
            format: self.format,
        };
        let mut v = WalValidator::new(cfg, tli.get(), start);
        let mut done = 0;
        let mut failed = None;
        for chunk in data.chunks(CHUNK) {
            if let Err(e) = v.feed(chunk) {
                failed = Some(e);
                break;
            }
            progress(chunk.len() as u64);
            done += chunk.len();
        }
        progress((bytes.len() - done) as u64);
        if let Some(e) = failed {
            out.end = e.valid_end;
            out.records = v.records();
            out.failure = Some(Failure {
                segno,
                name: f.name.clone(),
                end_of_wal: !f.complete && end_of_wal(data, start, &e, v.position()),
                e,
            });
            return out;
        }
        out.end = v.checked_end();
        drop(bytes);
        // On into the following files, as long as the one-thread check would go on.
        let (mut complete, mut full) = (f.complete, out.bytes == seg.bytes());
        let mut cur = segno;
        while complete && full {
            let next = cur.next();
            let Some(nf) = segs.get(&next).and_then(file_of) else {
                break;
            };
            let Ok(bytes) = self.read_wal(nf, &mut map) else {
                break; // reported by that segment's worker
            };
            out.last = next;
            let data = &bytes[..(bytes.len() as u64).min(seg.bytes()) as usize];
            for chunk in data.chunks(CHUNK) {
                match v.feed_until_record_from(chunk, own_end) {
                    Ok(None) => {}
                    Ok(Some(_)) => {
                        let last = v.last_record().expect("a record completed");
                        out.handoff = Some(seg.segno(last));
                        out.records = v.records() - 1;
                        return out;
                    }
                    Err(e) => {
                        out.end = out.end.max(e.valid_end);
                        out.records = v.records();
                        out.failure = Some(Failure {
                            segno: next,
                            name: nf.name.clone(),
                            end_of_wal: !nf.complete
                                && end_of_wal(data, seg.start_of(next), &e, v.position()),
                            e,
                        });
                        return out;
                    }
                }
            }
            out.end = out.end.max(v.checked_end());
            (complete, full) = (nf.complete, data.len() as u64 == seg.bytes());
            cur = next;
        }
        out.records = v.records();
        out
    }

    /// Merges the workers' results of timeline `tli` into the report, as the one-thread
    /// check would have found them.
    fn merge(&mut self, tli: TimelineId, seg: WalSegSize, results: BTreeMap<SegNo, SegCheck>) {
        let segs = self.files.get(&tli).cloned().unwrap_or_default();
        let mut tl = TimelineReport {
            tli: tli.get(),
            first: Lsn::INVALID,
            end: Lsn::INVALID,
            files: 0,
            records: 0,
        };
        let order: Vec<SegNo> = segs
            .iter()
            .filter(|(_, f)| file_of(f).is_some())
            .map(|(s, _)| *s)
            .collect();
        for segno in &order {
            if tl.files == 0 {
                tl.first = seg.start_of(*segno);
            }
            tl.files += 1;
            self.report.files += 1;
            self.report.bytes += results[segno].bytes;
        }
        let name = |s: SegNo| file_of(&segs[&s]).map(|f| f.name.clone());
        let mut k = 0;
        while k < order.len() {
            // A validator starts afresh at this segment; follow the workers that take
            // over from one another to where it would stop.
            let mut w = order[k];
            let stop = loop {
                let r = &results[&w];
                if let Some(what) = &r.unreadable {
                    self.report.problems.push(problem(
                        name(w).as_deref(),
                        Some(tli),
                        Some(seg.start_of(w)),
                        what.clone(),
                    ));
                    break w;
                }
                tl.records += r.records;
                tl.end = tl.end.max(r.end);
                if let Some(f) = &r.failure {
                    if !f.end_of_wal {
                        self.report
                            .problems
                            .push(invalid_wal(&f.name, tli, seg, &f.e));
                    }
                    break f.segno;
                }
                match r.handoff {
                    Some(next) => w = next,
                    None => break r.last,
                }
            };
            k = order.partition_point(|s| *s <= stop);
        }
        self.report.records += tl.records;
        if tl.files > 0 {
            self.report.timelines.push(tl);
        }
    }
}
