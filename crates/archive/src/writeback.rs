//! Direct writes of full staging buffers on helper threads.
//!
//! A direct write returns only once the disk has the data, so written from the writer
//! thread it stops the pipeline for the disk's latency on every buffer. Full buffers
//! are handed to helper threads ([`crate::WriterOptions::io_threads`]) instead, and the writer thread goes on filling
//! the next one; before anything that must come after those writes (an `fdatasync`,
//! the write of a partial last block, a rename) it waits for all of them with
//! [`Writeback::drain`]. A failed write is reported by the next `drain` or
//! [`Writeback::spare`].

use std::collections::BTreeSet;
use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::ArchiveError;
use crate::fsops::SegmentFs;
use crate::stage::AlignedBuf;

/// One full buffer to write.
pub(crate) struct Job {
    pub(crate) file: Arc<File>,
    pub(crate) path: PathBuf,
    pub(crate) buf: AlignedBuf,
    pub(crate) offset: u64,
    /// Set by [`Writeback::submit`].
    pub(crate) seq: u64,
}

type Done = (AlignedBuf, Result<(), ArchiveError>);

/// Which jobs have finished, for waiting on all jobs submitted before some point
/// (they finish out of order on several threads). Job numbers start at 1.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    state: Mutex<ProgressState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct ProgressState {
    /// Every job up to this number has finished.
    prefix: u64,
    /// Finished jobs past `prefix`.
    later: BTreeSet<u64>,
    /// A job failed: the bytes it carried are not in the file.
    failed: bool,
}

impl Progress {
    fn finished(&self, seq: u64, ok: bool) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.failed |= !ok;
        s.later.insert(seq);
        loop {
            let next = s.prefix + 1;
            if !s.later.remove(&next) {
                break;
            }
            s.prefix = next;
        }
        drop(s);
        self.cv.notify_all();
    }

    /// Marks every job as failed: an I/O thread died while writing, so a job may never
    /// finish and nothing may wait for it.
    fn abandon(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).failed = true;
        self.cv.notify_all();
    }

    /// Waits until jobs `1..=upto` have all finished. `false` if any job failed (then
    /// nothing after the failed write may be called durable).
    pub(crate) fn wait(&self, upto: u64) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while s.prefix < upto && !s.failed {
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        !s.failed
    }
}

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
    /// Jobs submitted so far (the number of the last one).
    submitted: u64,
    /// Which of them have finished.
    progress: Arc<Progress>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({}, {})", self.path.display(), self.offset)
    }
}

impl Writeback {
    /// Starts `threads` threads (at least one), with as many spare buffers of
    /// `capacity` bytes. `None` if a thread cannot be started (the caller then
    /// writes inline).
    pub(crate) fn start(
        fs: Arc<dyn SegmentFs>,
        capacity: usize,
        threads: usize,
    ) -> Option<Writeback> {
        let n = threads.max(1);
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let (done_tx, done) = mpsc::channel::<Done>();
        let mut threads = Vec::new();
        let progress = Arc::new(Progress::default());
        for i in 0..n {
            let (rx, done_tx, fs) = (Arc::clone(&rx), done_tx.clone(), Arc::clone(&fs));
            let progress = Arc::clone(&progress);
            let span = tracing::Span::current();
            let t = std::thread::Builder::new()
                .name(format!("walsink-io-{i}"))
                .spawn(move || {
                    let _in_span = span.enter();
                    // A panic while writing must not leave a sync task waiting for ever.
                    struct OnPanic(Arc<Progress>);
                    impl Drop for OnPanic {
                        fn drop(&mut self) {
                            if std::thread::panicking() {
                                self.0.abandon();
                            }
                        }
                    }
                    let _guard = OnPanic(Arc::clone(&progress));
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let r = fs.write_at(&job.file, &job.path, job.buf.as_slice(), job.offset);
                        progress.finished(job.seq, r.is_ok());
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
            free: (0..n).map(|_| AlignedBuf::zeroed(capacity)).collect(),
            in_flight: 0,
            error: None,
            submitted: 0,
            progress,
        })
    }

    /// Queues a full buffer for writing.
    pub(crate) fn submit(&mut self, mut job: Job) {
        self.submitted += 1;
        job.seq = self.submitted;
        match &self.jobs {
            Some(jobs) => match jobs.send(job) {
                Ok(()) => self.in_flight += 1,
                Err(mpsc::SendError(job)) => self.fail_thread_gone(job.buf),
            },
            None => self.fail_thread_gone(job.buf),
        }
    }

    /// The number of the last job submitted.
    pub(crate) fn submitted(&self) -> u64 {
        self.submitted
    }

    /// Which jobs have finished.
    pub(crate) fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }

    fn fail_thread_gone(&mut self, buf: AlignedBuf) {
        self.progress.finished(self.submitted, false);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_waits_for_every_earlier_job_and_stops_on_failure() {
        let p = Arc::new(Progress::default());
        // Jobs finish out of order: 2 before 1.
        p.finished(2, true);
        let waiter = {
            let p = Arc::clone(&p);
            std::thread::spawn(move || p.wait(2))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished(), "job 1 has not finished yet");
        p.finished(1, true);
        assert!(waiter.join().unwrap());
        assert!(p.wait(2));
        // A job that never finishes because its thread died: waiting ends, as failed.
        let waiter = {
            let p = Arc::clone(&p);
            std::thread::spawn(move || p.wait(3))
        };
        p.abandon();
        assert!(!waiter.join().unwrap());
        // A failed write also fails every later wait.
        let q = Progress::default();
        q.finished(1, false);
        assert!(!q.wait(1));
    }
}
