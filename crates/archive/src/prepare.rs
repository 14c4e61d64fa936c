//! New segment files, prepared ahead of time by a helper thread.
//!
//! Creating a segment file and pre-filling it (16 MiB of zeros, or an `fallocate`) is
//! slow next to writing the WAL into it, so the writer does not do it when a segment
//! starts. A helper thread creates the next file under the neutral name
//! [`PREPARED_FILE`], pre-fills it, `fdatasync`s it (with [`SyncMode::Sync`]) and hands
//! it over; the writer renames it to `NAME.partial` only when that segment starts, and
//! makes the rename durable (directory `fsync`) before it reports any of its bytes as
//! flushed. The prepared file never has a WAL-like name, so the start-position scan
//! (walsink's and pg_receivewal's) can never mistake it for WAL; a leftover one (after
//! a crash) is removed by the next preparation, and the writer removes an unused one
//! when it is dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tracing::{debug, warn};

use crate::dir::Dir;
use crate::fsops::SegmentFs;
use crate::stage::AlignedBuf;
use crate::{ArchiveError, Prefill, SyncMode};

/// Name of the segment file being prepared, in the archive directory.
pub const PREPARED_FILE: &str = ".walsink.prepared";

/// Size of the zero blocks written to pre-fill a file.
const ZERO_BLOCK: usize = 1 << 20;

/// A pre-filled, synced file at [`PREPARED_FILE`], ready to become a segment.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) file: File,
    /// Whether the file is open with `O_DIRECT` (and direct writes were accepted).
    pub(crate) direct: bool,
}

/// What the helper needs to prepare files.
#[derive(Debug, Clone)]
struct Job {
    fs: Arc<dyn SegmentFs>,
    dir: Arc<Dir>,
    /// The prepared file's path, for messages.
    path: PathBuf,
    size: u64,
    prefill: Prefill,
    direct: bool,
    sync: SyncMode,
}

/// Hands out prepared files: from a helper thread (`ahead`), or made on the spot.
#[derive(Debug)]
pub(crate) struct Preparer {
    job: Job,
    /// Requests to the helper; `None` without a helper (or once shut down).
    req: Option<mpsc::Sender<()>>,
    done: Option<mpsc::Receiver<Result<Prepared, ArchiveError>>>,
    thread: Option<JoinHandle<()>>,
    /// A prepared file received and not used yet.
    ready: Option<Prepared>,
    /// A request was sent and its answer not received yet.
    in_flight: bool,
    /// Zeros for the inline preparation.
    zeros: Option<AlignedBuf>,
    /// [`shutdown`](Self::shutdown) ran.
    shut: bool,
}

impl Preparer {
    /// Starts preparing files of `size` bytes at `dir/`[`PREPARED_FILE`]. With `ahead`,
    /// a helper thread starts on the first one at once.
    pub(crate) fn new(
        fs: Arc<dyn SegmentFs>,
        dir: Arc<Dir>,
        size: u64,
        prefill: Prefill,
        direct: bool,
        sync: SyncMode,
        ahead: bool,
    ) -> Preparer {
        let job = Job {
            fs,
            path: dir.join(PREPARED_FILE),
            dir,
            size,
            prefill,
            direct,
            sync,
        };
        let mut p = Preparer {
            job: job.clone(),
            req: None,
            done: None,
            thread: None,
            ready: None,
            in_flight: false,
            zeros: None,
            shut: false,
        };
        if ahead {
            let (req_tx, req_rx) = mpsc::channel::<()>();
            let (done_tx, done_rx) = mpsc::channel();
            let span = tracing::Span::current();
            let spawned = std::thread::Builder::new()
                .name("walsink-prepare".into())
                .spawn(move || {
                    let _in_span = span.enter();
                    let mut zeros = None;
                    while req_rx.recv().is_ok() {
                        let r = prepare(&job, &mut zeros);
                        if done_tx.send(r).is_err() {
                            break;
                        }
                    }
                });
            match spawned {
                Ok(t) => {
                    p.req = Some(req_tx);
                    p.done = Some(done_rx);
                    p.thread = Some(t);
                    p.request();
                }
                Err(e) => warn!("could not start the segment preparation thread: {e}"),
            }
        }
        p
    }

    /// Path of the prepared file.
    pub(crate) fn path(&self) -> &Path {
        &self.job.path
    }

    /// Asks the helper for the next file, unless one is ready or on its way.
    pub(crate) fn request(&mut self) {
        if self.ready.is_some() || self.in_flight {
            return;
        }
        if let Some(req) = &self.req
            && req.send(()).is_ok()
        {
            self.in_flight = true;
        }
    }

    /// The prepared file: the ready one, or the one the helper is working on (waiting
    /// for it), or, without a helper, one made now.
    pub(crate) fn take(&mut self) -> Result<Prepared, ArchiveError> {
        if let Some(p) = self.ready.take() {
            return Ok(p);
        }
        self.request();
        if self.in_flight
            && let Some(done) = &self.done
        {
            self.in_flight = false;
            match done.recv() {
                Ok(r) => return r,
                Err(_) => warn!("the segment preparation thread ended; preparing inline"),
            }
        }
        prepare(&self.job, &mut self.zeros)
    }

    /// Returns a file [`take`](Self::take)n but not used; it is handed out next.
    pub(crate) fn put_back(&mut self, p: Prepared) {
        self.ready = Some(p);
    }

    /// Stops the helper, waits for it, and removes an unused prepared file.
    /// Idempotent: a later call does nothing (a new writer may own the name by then).
    pub(crate) fn shutdown(&mut self) {
        if std::mem::replace(&mut self.shut, true) {
            return;
        }
        self.req = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            warn!("the segment preparation thread panicked");
        }
        self.done = None;
        self.in_flight = false;
        self.ready = None;
        if let Err(e) = self.job.fs.remove_if_exists(&self.job.dir, PREPARED_FILE) {
            debug!("could not remove the unused prepared segment file: {e}");
        }
    }
}

impl Drop for Preparer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Creates, pre-fills and (with [`SyncMode::Sync`]) `fdatasync`s one file.
fn prepare(job: &Job, zeros: &mut Option<AlignedBuf>) -> Result<Prepared, ArchiveError> {
    let fs = &*job.fs;
    let path = &job.path;
    let (file, mut direct) = fs.create_fresh(&job.dir, PREPARED_FILE, job.direct)?;
    let allocated = job.prefill == Prefill::Fallocate && fs.fallocate(&file, path, 0, job.size)?;
    if allocated {
        if direct {
            // Probe that direct writes are accepted; the block is zeros anyway.
            let zeros = zeros.get_or_insert_with(|| AlignedBuf::zeroed(ZERO_BLOCK));
            let block = &zeros.as_slice()[..crate::fsops::DIRECT_ALIGN];
            if let Err(e) = fs.write_at(&file, path, block, 0) {
                if !is_einval(&e) {
                    return Err(e);
                }
                fs.clear_direct(&file, path)?;
                direct = false;
            }
        }
    } else {
        let zeros = zeros.get_or_insert_with(|| AlignedBuf::zeroed(ZERO_BLOCK));
        let mut off = 0u64;
        while off < job.size {
            let n = zeros
                .len()
                .min(usize::try_from(job.size - off).unwrap_or(usize::MAX));
            let r = fs.write_at(&file, path, &zeros.as_slice()[..n], off);
            match r {
                Ok(()) => off += n as u64,
                Err(e) if direct && is_einval(&e) => {
                    debug!("direct writes refused for \"{}\"", path.display());
                    fs.clear_direct(&file, path)?;
                    direct = false;
                }
                Err(e) => return Err(e),
            }
        }
    }
    if job.sync == SyncMode::Sync {
        fs.datasync(&file, path)?;
    }
    debug!(
        "prepared \"{}\" ({:?}, direct I/O {direct})",
        path.display(),
        job.prefill
    );
    Ok(Prepared { file, direct })
}

fn is_einval(e: &ArchiveError) -> bool {
    matches!(e, ArchiveError::Io { source, .. } if source.raw_os_error() == Some(libc::EINVAL))
}
