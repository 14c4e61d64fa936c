//! Direct writes of full staging buffers on helper threads.
//!
//! A direct write returns only once the disk has the data, so written from the writer
//! thread it stops the pipeline for the disk's latency on every buffer. Full buffers
//! are handed to [`IO_THREADS`] threads instead, and the writer thread goes on filling
//! the next one; before anything that must come after those writes (an `fdatasync`,
//! the write of a partial last block, a rename) it waits for all of them with
//! [`Writeback::drain`]. A failed write is reported by the next `drain` or
//! [`Writeback::spare`].

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::ArchiveError;
use crate::fsops::SegmentFs;
use crate::stage::AlignedBuf;

/// Threads writing full buffers; also the number of buffers in flight at most.
pub(crate) const IO_THREADS: usize = 2;

/// One full buffer to write.
pub(crate) struct Job {
    pub(crate) file: Arc<File>,
    pub(crate) path: PathBuf,
    pub(crate) buf: AlignedBuf,
    pub(crate) offset: u64,
}

type Done = (AlignedBuf, Result<(), ArchiveError>);

/// The helper threads and the buffers they give back.
#[derive(Debug)]
pub(crate) struct Writeback {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
    /// Buffers free for the stage to swap in.
    free: Vec<AlignedBuf>,
    in_flight: usize,
    /// The first failed write not reported yet.
    error: Option<ArchiveError>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({}, {})", self.path.display(), self.offset)
    }
}

impl Writeback {
    /// Starts the threads, with `IO_THREADS` spare buffers of `capacity` bytes.
    /// `None` if a thread cannot be started (the caller then writes inline).
    pub(crate) fn start(fs: Arc<dyn SegmentFs>, capacity: usize) -> Option<Writeback> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let (done_tx, done) = mpsc::channel::<Done>();
        let mut threads = Vec::new();
        for i in 0..IO_THREADS {
            let (rx, done_tx, fs) = (Arc::clone(&rx), done_tx.clone(), Arc::clone(&fs));
            let t = std::thread::Builder::new()
                .name(format!("walsink-io-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let r = fs.write_at(&job.file, &job.path, job.buf.as_slice(), job.offset);
                        if done_tx.send((job.buf, r)).is_err() {
                            return;
                        }
                    }
                })
                .ok()?;
            threads.push(t);
        }
        Some(Writeback {
            jobs: Some(jobs),
            done,
            threads,
            free: (0..IO_THREADS)
                .map(|_| AlignedBuf::zeroed(capacity))
                .collect(),
            in_flight: 0,
            error: None,
        })
    }

    /// Queues a full buffer for writing.
    pub(crate) fn submit(&mut self, job: Job) {
        match &self.jobs {
            Some(jobs) => match jobs.send(job) {
                Ok(()) => self.in_flight += 1,
                Err(mpsc::SendError(job)) => self.fail_thread_gone(job.buf),
            },
            None => self.fail_thread_gone(job.buf),
        }
    }

    fn fail_thread_gone(&mut self, buf: AlignedBuf) {
        self.free.push(buf);
        self.error.get_or_insert_with(gone);
    }

    /// Takes one answer from the threads, blocking.
    fn reap_one(&mut self) {
        match self.done.recv() {
            Ok((buf, r)) => {
                self.in_flight -= 1;
                self.free.push(buf);
                if let Err(e) = r
                    && self.error.is_none()
                {
                    self.error = Some(e);
                }
            }
            Err(_) => {
                self.in_flight = 0;
                self.error.get_or_insert_with(gone);
            }
        }
    }

    fn take_error(&mut self) -> Result<(), ArchiveError> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A free buffer for the stage, waiting for a write to finish if all are in
    /// flight. Fails with the error of an earlier write.
    pub(crate) fn spare(&mut self) -> Result<AlignedBuf, ArchiveError> {
        while self.free.is_empty() && self.in_flight > 0 {
            self.reap_one();
        }
        self.take_error()?;
        self.free.pop().ok_or_else(gone)
    }

    /// Waits until every queued write has finished. Fails with the first error.
    pub(crate) fn drain(&mut self) -> Result<(), ArchiveError> {
        while self.in_flight > 0 {
            self.reap_one();
        }
        self.take_error()
    }
}

/// The error for threads that are gone.
fn gone() -> ArchiveError {
    ArchiveError::Io {
        path: PathBuf::new(),
        op: "write WAL (I/O thread ended)",
        source: std::io::Error::other("I/O thread ended"),
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
