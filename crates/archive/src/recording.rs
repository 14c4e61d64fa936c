//! Tests only: a [`SegmentFs`] that does the real operations and records them, and a
//! crash model that replays the record to check what the writer reported.
//!
//! The model keeps, per inode, the bytes written (volatile) and the bytes made durable
//! by the last `fdatasync`/`fsync`, and the directory's names (volatile) and the names
//! made durable by the last directory `fsync`. At every [`Op::Reported`] (pushed by the
//! test after each writer call) it "crashes": everything up to the reported flush
//! position must be readable from durable names and durable bytes alone, completed
//! segments under their final name. It also checks that no WAL-like name ever exists
//! for a segment past the one being written.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use walsink_wal::{Lsn, SegNo, SegmentFileKind, SegmentName, TimelineId, WalSegSize};

use crate::ArchiveError;
use crate::dir::Dir;
use crate::fsops::{RealFs, SegmentFs};

/// One recorded operation. Names are file names in the archive directory. Writes are
/// recorded when they have finished, syncs when they start, so that the model never
/// counts a write as covered by a sync that ran at the same time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Create {
        name: String,
        ino: u64,
    },
    Open {
        name: String,
        ino: u64,
    },
    Write {
        name: String,
        ino: u64,
        off: u64,
        data: Vec<u8>,
    },
    Extend {
        ino: u64,
        to: u64,
    },
    SetLen {
        ino: u64,
        len: u64,
    },
    Datasync {
        name: String,
        ino: u64,
    },
    Fsync {
        name: String,
        ino: u64,
    },
    FsyncDir,
    Rename {
        from: String,
        to: String,
    },
    Remove {
        name: String,
    },
    /// Pushed by the test: what the writer reported after its last call.
    Reported {
        flushed: Lsn,
        written: Lsn,
    },
}

/// Which operation to fail (once), with `EIO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailOn {
    Datasync,
    FsyncDir,
    Write,
}

#[derive(Debug, Default)]
pub(crate) struct RecordingFs {
    real: RealFs,
    pub(crate) log: Mutex<Vec<Op>>,
    fail: Mutex<Option<FailOn>>,
    /// Make every write take a while, so that writes on other threads finish late.
    slow_writes: std::sync::atomic::AtomicBool,
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_str().unwrap().to_owned()
}

fn ino(f: &File) -> u64 {
    f.metadata().unwrap().ino()
}

impl RecordingFs {
    fn push(&self, op: Op) {
        self.log.lock().unwrap().push(op);
    }

    pub(crate) fn ops(&self) -> Vec<Op> {
        self.log.lock().unwrap().clone()
    }

    pub(crate) fn report(&self, flushed: Lsn, written: Lsn) {
        self.push(Op::Reported { flushed, written });
    }

    pub(crate) fn slow_writes(&self) {
        self.slow_writes
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn fail_next(&self, what: FailOn) {
        *self.fail.lock().unwrap() = Some(what);
    }

    fn should_fail(&self, what: FailOn, path: &Path, op: &'static str) -> Result<(), ArchiveError> {
        let mut f = self.fail.lock().unwrap();
        if *f == Some(what) {
            *f = None;
            return Err(ArchiveError::io(
                path,
                op,
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        Ok(())
    }
}

impl SegmentFs for RecordingFs {
    fn open_existing(&self, dir: &Dir, name: &str) -> Result<File, ArchiveError> {
        let f = self.real.open_existing(dir, name)?;
        self.push(Op::Open {
            name: name.to_owned(),
            ino: ino(&f),
        });
        Ok(f)
    }
    fn create_fresh(
        &self,
        dir: &Dir,
        name: &str,
        direct: bool,
    ) -> Result<(File, bool), ArchiveError> {
        if self.real.exists(dir, name)? {
            self.push(Op::Remove {
                name: name.to_owned(),
            });
        }
        let (f, d) = self.real.create_fresh(dir, name, direct)?;
        self.push(Op::Create {
            name: name.to_owned(),
            ino: ino(&f),
        });
        Ok((f, d))
    }
    fn clear_direct(&self, file: &File, path: &Path) -> Result<(), ArchiveError> {
        self.real.clear_direct(file, path)
    }
    fn file_len(&self, file: &File, path: &Path) -> Result<u64, ArchiveError> {
        self.real.file_len(file, path)
    }
    fn fallocate(
        &self,
        file: &File,
        path: &Path,
        from: u64,
        to: u64,
    ) -> Result<bool, ArchiveError> {
        let r = self.real.fallocate(file, path, from, to)?;
        if r {
            self.push(Op::Extend { ino: ino(file), to });
        }
        Ok(r)
    }
    fn fill_zeros(&self, file: &File, path: &Path, from: u64, to: u64) -> Result<(), ArchiveError> {
        self.real.fill_zeros(file, path, from, to)?;
        // Zeros written over whatever was there (after invalid WAL), not only an extension.
        self.push(Op::Write {
            name: name(path),
            ino: ino(file),
            off: from,
            data: vec![0; usize::try_from(to.saturating_sub(from)).unwrap_or(0)],
        });
        Ok(())
    }
    fn set_len(&self, file: &File, path: &Path, len: u64) -> Result<(), ArchiveError> {
        self.real.set_len(file, path, len)?;
        self.push(Op::SetLen {
            ino: ino(file),
            len,
        });
        Ok(())
    }
    fn write_at(
        &self,
        file: &File,
        path: &Path,
        buf: &[u8],
        offset: u64,
    ) -> Result<(), ArchiveError> {
        self.should_fail(FailOn::Write, path, "write to")?;
        if self.slow_writes.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(3));
        }
        self.real.write_at(file, path, buf, offset)?;
        self.push(Op::Write {
            name: name(path),
            ino: ino(file),
            off: offset,
            data: buf.to_vec(),
        });
        Ok(())
    }
    fn datasync(&self, file: &File, path: &Path) -> Result<(), ArchiveError> {
        self.should_fail(FailOn::Datasync, path, "fdatasync")?;
        // Recorded when it starts: it covers only the writes finished by then.
        self.push(Op::Datasync {
            name: name(path),
            ino: ino(file),
        });
        self.real.datasync(file, path)
    }
    fn fsync(&self, file: &File, path: &Path) -> Result<(), ArchiveError> {
        self.push(Op::Fsync {
            name: name(path),
            ino: ino(file),
        });
        self.real.fsync(file, path)
    }
    fn fsync_dir(&self, dir: &Dir) -> Result<(), ArchiveError> {
        self.should_fail(FailOn::FsyncDir, dir.path(), "fsync directory")?;
        self.push(Op::FsyncDir);
        self.real.fsync_dir(dir)
    }
    fn rename(&self, dir: &Dir, from: &str, to: &str) -> Result<(), ArchiveError> {
        self.real.rename(dir, from, to)?;
        self.push(Op::Rename {
            from: from.to_owned(),
            to: to.to_owned(),
        });
        Ok(())
    }
    fn rename_noreplace(&self, dir: &Dir, from: &str, to: &str) -> Result<bool, ArchiveError> {
        let r = self.real.rename_noreplace(dir, from, to)?;
        if r {
            self.push(Op::Rename {
                from: from.to_owned(),
                to: to.to_owned(),
            });
        }
        Ok(r)
    }
    fn remove(&self, dir: &Dir, name: &str) -> Result<(), ArchiveError> {
        self.real.remove(dir, name)?;
        self.push(Op::Remove {
            name: name.to_owned(),
        });
        Ok(())
    }
    fn remove_if_exists(&self, dir: &Dir, name: &str) -> Result<(), ArchiveError> {
        if self.real.exists(dir, name)? {
            self.real.remove(dir, name)?;
            self.push(Op::Remove {
                name: name.to_owned(),
            });
        }
        Ok(())
    }
    fn exists(&self, dir: &Dir, name: &str) -> Result<bool, ArchiveError> {
        self.real.exists(dir, name)
    }
    fn files_identical(&self, dir: &Dir, a: &str, b: &str) -> Result<bool, ArchiveError> {
        self.real.files_identical(dir, a, b)
    }
    fn drop_cache(&self, file: &File) {
        self.real.drop_cache(file)
    }
}

/// Replays `log` and crashes at every [`Op::Reported`]: WAL `stream` (starting at
/// segment start `start` on `tli`) must be durable up to the reported flush position.
/// Panics with the first violation and the index of the op.
pub(crate) fn check_crash_consistency(
    log: &[Op],
    seg: WalSegSize,
    tli: TimelineId,
    start: Lsn,
    stream: &[u8],
) {
    let mut names: HashMap<String, u64> = HashMap::new();
    let mut durable_names: HashMap<String, u64> = HashMap::new();
    let mut content: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut durable: HashMap<u64, Vec<u8>> = HashMap::new();
    let resize = |v: &mut Vec<u8>, to: u64| {
        if (v.len() as u64) < to {
            v.resize(to as usize, 0)
        }
    };
    let mut checked = 0;
    for (i, op) in log.iter().enumerate() {
        match op {
            Op::Create { name, ino } => {
                names.insert(name.clone(), *ino);
                content.insert(*ino, Vec::new());
            }
            Op::Open { name, ino } => {
                names.insert(name.clone(), *ino);
                content.entry(*ino).or_default();
            }
            Op::Write { ino, off, data, .. } => {
                let v = content.entry(*ino).or_default();
                resize(v, off + data.len() as u64);
                v[*off as usize..*off as usize + data.len()].copy_from_slice(data);
            }
            Op::Extend { ino, to } => resize(content.entry(*ino).or_default(), *to),
            Op::SetLen { ino, len } => content.entry(*ino).or_default().resize(*len as usize, 0),
            Op::Datasync { ino, .. } | Op::Fsync { ino, .. } => {
                durable.insert(*ino, content.get(ino).cloned().unwrap_or_default());
            }
            Op::FsyncDir => durable_names = names.clone(),
            Op::Rename { from, to } => {
                // A segment's `.partial` appears only once the segment before it is
                // durably complete: after a crash, streaming restarts from the newest
                // segment, and an incomplete one before it would stay a hole.
                if let Some((sn, SegmentFileKind::Partial)) = SegmentName::parse_file_name(to, seg)
                    && sn.segno > seg.segno(start)
                {
                    let before = SegmentName {
                        segno: SegNo(sn.segno.0 - 1),
                        ..sn
                    };
                    assert!(
                        durable_names.contains_key(&before.file_name(seg)),
                        "op {i}: \"{to}\" created before \"{}\" was durably complete (durable names {durable_names:?})",
                        before.file_name(seg)
                    );
                }
                let ino = names
                    .remove(from)
                    .unwrap_or_else(|| panic!("op {i}: rename of unknown {from}"));
                names.insert(to.clone(), ino);
            }
            Op::Remove { name } => {
                names.remove(name);
            }
            Op::Reported { flushed, written } => {
                checked += 1;
                // No WAL-like name for a segment past the one being written.
                let current = seg.segno(Lsn(written.0.saturating_sub(1)).max(start));
                for n in names.keys() {
                    if let Some((sn, _)) = SegmentName::parse_file_name(n, seg) {
                        assert!(
                            sn.segno <= current,
                            "op {i}: \"{n}\" exists while writing segment {current:?}"
                        );
                    }
                }
                // Crash: everything before `flushed` is durable.
                let mut s = seg.segment_start(start);
                while flushed.is_valid() && s < *flushed {
                    let sn = SegmentName::containing(tli, s, seg);
                    let end = Lsn(s.0 + seg.bytes());
                    let (complete, partial) = (sn.file_name(seg), sn.partial_file_name(seg));
                    let ino = if end <= *flushed {
                        durable_names.get(&complete).unwrap_or_else(|| {
                            panic!("op {i}: flushed {flushed} reported, but \"{complete}\" is not durably named (durable names {durable_names:?})")
                        })
                    } else {
                        durable_names.get(&complete).or(durable_names.get(&partial)).unwrap_or_else(|| {
                            panic!("op {i}: flushed {flushed} reported, but neither \"{complete}\" nor \"{partial}\" is durably named (durable names {durable_names:?})")
                        })
                    };
                    let lo = s.max(start);
                    let hi = end.min(*flushed);
                    let bytes = durable.get(ino).map(Vec::as_slice).unwrap_or_default();
                    let (a, b) = (seg.offset(lo) as usize, (hi.0 - s.0) as usize);
                    let want = &stream[(lo.0 - start.0) as usize..(hi.0 - start.0) as usize];
                    assert!(
                        bytes.len() >= b && &bytes[a..b] == want,
                        "op {i}: flushed {flushed} reported, but bytes {lo}..{hi} of \"{complete}\" are not durable"
                    );
                    s = end;
                }
            }
        }
    }
    assert!(checked > 0, "nothing was reported");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::fsops::SegmentFs;
    use crate::testutil::*;
    use crate::{Archive, Prefill, SegmentWriter, SyncMode, WriterOptions};

    const S3: Lsn = Lsn(3 * SEG);

    fn setup(opts: WriterOptions) -> (tempfile::TempDir, Archive, SegmentWriter, Arc<RecordingFs>) {
        let d = tempdir();
        let a = Archive::open(d.path(), SyncMode::Sync).unwrap();
        let fs = Arc::new(RecordingFs::default());
        let w = a
            .segment_writer_fs(seg1m(), opts, fs.clone() as Arc<dyn SegmentFs>)
            .unwrap();
        (d, a, w, fs)
    }

    fn inline(direct_io: bool, write_behind: usize) -> WriterOptions {
        WriterOptions {
            prefill: Prefill::Zeros,
            prepare_ahead: false,
            direct_io,
            write_behind,
            ..WriterOptions::default()
        }
    }

    fn partial(segno: u64) -> String {
        SegmentName::new(tli(1), walsink_wal::SegNo(segno)).partial_file_name(seg1m())
    }

    fn complete(segno: u64) -> String {
        SegmentName::new(tli(1), walsink_wal::SegNo(segno)).file_name(seg1m())
    }

    fn report(fs: &RecordingFs, w: &SegmentWriter) {
        fs.report(w.flushed(), w.written());
    }

    /// Index of the first op at or after `from` that matches.
    fn find(ops: &[Op], from: usize, what: &str, f: impl Fn(&Op) -> bool) -> usize {
        ops[from..]
            .iter()
            .position(f)
            .map(|i| i + from)
            .unwrap_or_else(|| panic!("no {what} after op {from} in {ops:#?}"))
    }

    fn is_reported(op: &Op, lsn: Lsn) -> bool {
        matches!(op, Op::Reported { flushed, .. } if *flushed == lsn)
    }

    #[test]
    fn bytes_are_written_then_fdatasynced_then_reported() {
        for (direct, behind) in [(true, 0), (true, 64 << 10), (false, 0)] {
            let (_d, _a, mut w, fs) = setup(inline(direct, behind));
            let data = pattern(10_000, 1);
            w.write(tli(1), S3, &data).unwrap();
            report(&fs, &w);
            assert_eq!(w.flushed(), S3, "nothing is flushed before a sync");
            let f = w.flush().unwrap();
            report(&fs, &w);
            assert_eq!(f, Lsn(S3.0 + 10_000));

            let ops = fs.ops();
            let p = partial(3);
            let renamed = find(
                &ops,
                0,
                "rename",
                |o| matches!(o, Op::Rename { to, .. } if *to == p),
            );
            let written = find(
                &ops,
                renamed,
                "write",
                |o| matches!(o, Op::Write { name, .. } if *name == p),
            );
            let synced = find(
                &ops,
                written,
                "fdatasync",
                |o| matches!(o, Op::Datasync { name, .. } if *name == p),
            );
            let dir = find(&ops, renamed, "directory fsync", |o| *o == Op::FsyncDir);
            let reported = find(&ops, 0, "report", |o| is_reported(o, f));
            assert!(
                synced < reported && dir < reported,
                "direct {direct}, write-behind {behind}: {ops:#?}"
            );
            // Every write of the data comes before the sync that covers it.
            assert!(
                !ops[synced..]
                    .iter()
                    .any(|o| matches!(o, Op::Write { name, .. } if *name == p)),
                "{ops:#?}"
            );
            check_crash_consistency(&ops, seg1m(), tli(1), S3, &data);
        }
    }

    #[test]
    fn completion_syncs_renames_and_fsyncs_the_directory_before_reporting() {
        for direct in [true, false] {
            let (_d, _a, mut w, fs) = setup(inline(direct, 0));
            let data = pattern(SEG as usize + 100, 2);
            w.write(tli(1), S3, &data[..SEG as usize]).unwrap();
            report(&fs, &w);
            assert_eq!(w.flushed(), Lsn(4 * SEG));
            w.write(tli(1), w.written(), &data[SEG as usize..]).unwrap();
            report(&fs, &w);

            let ops = fs.ops();
            let (p, c) = (partial(3), complete(3));
            let last_write = ops
                .iter()
                .rposition(|o| matches!(o, Op::Write { name, .. } if *name == p))
                .unwrap();
            let synced = find(
                &ops,
                last_write,
                "fdatasync",
                |o| matches!(o, Op::Datasync { name, .. } if *name == p),
            );
            let renamed = find(&ops, synced, "rename", |o| {
                *o == Op::Rename {
                    from: p.clone(),
                    to: c.clone(),
                }
            });
            let dir = find(&ops, renamed, "directory fsync", |o| *o == Op::FsyncDir);
            let reported = find(&ops, 0, "report", |o| is_reported(o, Lsn(4 * SEG)));
            assert!(dir < reported, "{ops:#?}");
            // The next segment's file is taken only when its data arrives.
            let next = find(
                &ops,
                0,
                "next rename",
                |o| matches!(o, Op::Rename { to, .. } if *to == partial(4)),
            );
            assert!(next > reported, "{ops:#?}");
            check_crash_consistency(&ops, seg1m(), tli(1), S3, &data);
        }
    }

    #[test]
    fn a_new_partial_is_durably_named_before_a_flush_covers_it() {
        let (_d, _a, mut w, fs) = setup(inline(true, 0));
        w.write(tli(1), S3, b"abc").unwrap();
        report(&fs, &w);
        w.flush().unwrap();
        report(&fs, &w);
        let ops = fs.ops();
        let p = partial(3);
        // Prepared under a neutral name, synced, then renamed.
        let created = find(
            &ops,
            0,
            "create",
            |o| matches!(o, Op::Create { name, .. } if name == crate::PREPARED_FILE),
        );
        let prepared_sync = find(
            &ops,
            created,
            "fdatasync",
            |o| matches!(o, Op::Datasync { name, .. } if name == crate::PREPARED_FILE),
        );
        let renamed = find(&ops, prepared_sync, "rename", |o| {
            *o == Op::Rename {
                from: crate::PREPARED_FILE.into(),
                to: p.clone(),
            }
        });
        let dir = find(&ops, renamed, "directory fsync", |o| *o == Op::FsyncDir);
        let reported = find(&ops, 0, "report", |o| is_reported(o, Lsn(S3.0 + 3)));
        assert!(dir < reported, "{ops:#?}");
        check_crash_consistency(&ops, seg1m(), tli(1), S3, b"abc");
    }

    #[test]
    fn random_streams_are_crash_consistent_at_every_report() {
        let mut configs = Vec::new();
        for prepare_ahead in [false, true] {
            for direct_io in [false, true] {
                for prefill in [Prefill::Zeros, Prefill::Fallocate] {
                    for write_behind in [0, 300_000, 1 << 20] {
                        for background_sync in [false, true] {
                            configs.push(WriterOptions {
                                prefill,
                                prepare_ahead,
                                direct_io,
                                write_behind,
                                background_sync,
                                ..WriterOptions::default()
                            });
                        }
                    }
                }
            }
        }
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for opts in configs {
            let background = opts.background_sync;
            let (_d, _a, mut w, fs) = setup(opts);
            if background {
                // Reports from the sync thread too, the moment it publishes (the
                // position being written is unknown there: no check of names).
                let f = Arc::clone(&fs);
                w.set_flush_listener(Arc::new(move |at| f.report(at, Lsn(u64::MAX))));
            }
            // Writes handed to I/O threads finish late, unless waited for.
            fs.slow_writes();
            let data = pattern(3 * SEG as usize + 123_457, 3);
            let mut at = 0usize;
            while at < data.len() {
                let n = (1 + next(200_000) as usize).min(data.len() - at);
                w.write(tli(1), Lsn(S3.0 + at as u64), &data[at..at + n])
                    .unwrap();
                at += n;
                report(&fs, &w);
                match next(8) {
                    0 | 1 => {
                        w.flush().unwrap();
                    }
                    2 => w.close().unwrap(),
                    3 | 4 => w.flush_behind().unwrap(),
                    _ => {}
                }
                report(&fs, &w);
            }
            w.close().unwrap();
            report(&fs, &w);
            assert_eq!(w.flushed(), Lsn(S3.0 + data.len() as u64));
            check_crash_consistency(&fs.ops(), seg1m(), tli(1), S3, &data);
        }
    }

    #[test]
    fn failed_syncs_never_advance_flushed() {
        for what in [FailOn::Datasync, FailOn::FsyncDir] {
            let (_d, _a, mut w, fs) = setup(inline(true, 0));
            w.write(tli(1), S3, &[5; 5000]).unwrap();
            fs.fail_next(what);
            assert!(w.flush().is_err(), "{what:?}");
            assert_eq!(w.flushed(), S3, "{what:?}");
            assert!(w.is_broken());
            report(&fs, &w);
            check_crash_consistency(&fs.ops(), seg1m(), tli(1), S3, &[5; 5000]);
        }
        // A failed write is not fatal and reports nothing either.
        let (_d, _a, mut w, fs) = setup(inline(true, 0));
        w.write(tli(1), S3, &[5; 5000]).unwrap();
        fs.fail_next(FailOn::Write);
        assert!(w.write(tli(1), w.written(), &[6; 10]).is_err());
        assert_eq!(w.flushed(), S3);
        assert!(!w.is_broken());
    }

    #[test]
    fn failed_background_syncs_and_writes_never_advance_flushed() {
        for (direct_io, what) in [
            (false, FailOn::Datasync),
            (true, FailOn::Datasync),
            (true, FailOn::FsyncDir),
            (true, FailOn::Write),
        ] {
            let opts = WriterOptions {
                prefill: Prefill::Fallocate,
                prepare_ahead: false,
                direct_io,
                write_behind: 300_000,
                background_sync: true,
                ..WriterOptions::default()
            };
            let (_d, _a, mut w, fs) = setup(opts);
            let published = Arc::new(Mutex::new(Vec::new()));
            let p = Arc::clone(&published);
            w.set_flush_listener(Arc::new(move |at| p.lock().unwrap().push(at)));
            fs.slow_writes();
            // The segment is open (its file prepared and synced), then two full
            // staging buffers go to the I/O threads and a sync to the background; one
            // of their steps fails.
            let data = pattern(900_000, 9);
            w.write(tli(1), S3, &data[..10]).unwrap();
            fs.fail_next(what);
            w.write(tli(1), w.written(), &data[10..]).unwrap();
            w.flush_behind().unwrap();
            let r = w.flush();
            assert!(r.is_err(), "{direct_io} {what:?}");
            assert!(w.is_broken(), "{direct_io} {what:?}");
            assert_eq!(w.flushed(), S3, "{direct_io} {what:?}");
            assert!(
                published.lock().unwrap().is_empty(),
                "{direct_io} {what:?}: a position was published after a failure"
            );
            // Later calls keep failing; nothing is ever reported durable.
            assert!(w.flush_behind().is_err());
            assert!(w.write(tli(1), w.written(), &[1]).is_err());
            assert_eq!(w.flushed(), S3);
            report(&fs, &w);
            check_crash_consistency(&fs.ops(), seg1m(), tli(1), S3, &data);
        }
    }

    #[test]
    fn background_completion_renames_after_the_direct_writes_and_sync() {
        let opts = WriterOptions {
            prefill: Prefill::Fallocate,
            prepare_ahead: true,
            direct_io: true,
            write_behind: 1 << 20,
            background_sync: true,
            ..WriterOptions::default()
        };
        let (_d, _a, mut w, fs) = setup(opts);
        fs.slow_writes();
        // A segment and a half: the first completes in the background, and the next
        // one's name appears only once that completion is durable.
        let data = pattern(SEG as usize + SEG as usize / 2, 4);
        w.write(tli(1), S3, &data).unwrap();
        assert_eq!(w.written(), Lsn(S3.0 + data.len() as u64));
        w.flush().unwrap();
        assert_eq!(w.flushed(), w.written());
        let ops = fs.ops();
        let rename = find(
            &ops,
            0,
            "rename to complete",
            |o| matches!(o, Op::Rename { to, .. } if *to == complete(3)),
        );
        // Every write into segment 3 finished before its datasync, which came
        // before the rename, then the directory fsync.
        let sync = ops[..rename]
            .iter()
            .rposition(|o| matches!(o, Op::Datasync { name, .. } if *name == partial(3)))
            .expect("a datasync of segment 3 before its rename");
        assert!(
            !ops[sync..rename]
                .iter()
                .any(|o| matches!(o, Op::Write { name, .. } if *name == partial(3))),
            "{ops:#?}"
        );
        find(&ops, rename, "directory fsync", |o| {
            matches!(o, Op::FsyncDir)
        });
        report(&fs, &w);
        check_crash_consistency(&fs.ops(), seg1m(), tli(1), S3, &data);
    }

    #[test]
    fn a_failed_background_direct_write_breaks_the_writer() {
        let opts = WriterOptions {
            prefill: Prefill::Fallocate,
            prepare_ahead: false,
            direct_io: true,
            write_behind: 1 << 20,
            ..WriterOptions::default()
        };
        let (_d, _a, mut w, fs) = setup(opts);
        w.write(tli(1), S3, &[1; 10]).unwrap();
        fs.fail_next(FailOn::Write);
        // Fills the staging buffer, which goes to an I/O thread, whose write fails.
        let more = vec![2u8; 1_500_000 - 10];
        let r = w.write(tli(1), w.written(), &more);
        let r = r.and_then(|()| w.flush().map(|_| ()));
        assert!(r.is_err());
        assert!(
            w.is_broken(),
            "accepted bytes were lost: the writer must stop"
        );
        assert_eq!(w.flushed(), S3);
        report(&fs, &w);
        let mut data = vec![1u8; 10];
        data.extend_from_slice(&more);
        check_crash_consistency(&fs.ops(), seg1m(), tli(1), S3, &data);
    }

    #[test]
    fn a_leftover_prepared_file_is_never_taken_for_wal() {
        for prepare_ahead in [false, true] {
            let d = tempdir();
            // Junk left by a crash, full size.
            std::fs::write(
                d.path().join(crate::PREPARED_FILE),
                vec![0xEE; SEG as usize],
            )
            .unwrap();
            let a = Archive::open(d.path(), SyncMode::Sync).unwrap();
            assert_eq!(a.find_start(seg1m()).unwrap(), None);
            let opts = WriterOptions {
                prepare_ahead,
                ..WriterOptions::default()
            };
            let mut w = a.segment_writer_with(seg1m(), opts).unwrap();
            w.write(tli(1), S3, &[7; 10]).unwrap();
            w.close().unwrap();
            let f = std::fs::read(d.path().join(partial(3))).unwrap();
            assert_eq!(f.len() as u64, SEG);
            assert_eq!(&f[..10], &[7; 10]);
            assert!(f[10..].iter().all(|&b| b == 0), "no junk from the old file");
            drop(w);
            assert!(
                !d.path().join(crate::PREPARED_FILE).exists(),
                "the unused prepared file is removed with the writer"
            );
        }
    }
}
