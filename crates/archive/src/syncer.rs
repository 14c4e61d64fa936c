//! Background syncing: `fdatasync` and segment completion off the writer's path.
//!
//! With [`WriterOptions::background_sync`](crate::WriterOptions::background_sync) the
//! writer hands "make everything up to here durable" and "this segment is full"
//! to one thread, in order, and goes on writing. The thread first waits for every
//! direct write submitted before the task (an `fdatasync` only covers writes that
//! have finished), then runs the `fdatasync` (or the completion: `fdatasync`,
//! rename, directory `fsync`), and only then publishes the task's end as durable.
//! Tasks run one at a time in the order given, so the published position only
//! grows. The writer waits for a queued completion before it names the next
//! segment's `.partial`, so a crash never leaves an incomplete segment before the
//! newest one. A failure is kept, and every later task is skipped: nothing after a failed
//! sync is ever called durable.

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use walsink_wal::Lsn;

use crate::ArchiveError;
use crate::dir::Dir;
use crate::fsops::SegmentFs;
use crate::writeback::Progress;

/// Called with each newly durable position, from the syncing thread.
pub type FlushListener = Arc<dyn Fn(Lsn) + Send + Sync>;

/// An optional [`FlushListener`], printable.
#[derive(Clone, Default)]
pub(crate) struct ListenerSlot(pub(crate) Option<FlushListener>);

impl std::fmt::Debug for ListenerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some(listener)"
        } else {
            "None"
        })
    }
}

/// Direct writes a task must wait for.
pub(crate) struct After {
    pub(crate) progress: Arc<Progress>,
    /// Jobs `1..=jobs` must have finished.
    pub(crate) jobs: u64,
}

/// What to make durable.
pub(crate) enum Work {
    /// `fdatasync` of the open segment's file (and the directory, if a rename in it is
    /// not durable yet).
    Sync {
        file: Arc<File>,
        path: PathBuf,
        dir: bool,
    },
    /// The segment is full: complete it.
    Complete(Box<dyn FnOnce() -> Result<(), ArchiveError> + Send>),
}

pub(crate) struct Task {
    pub(crate) work: Work,
    pub(crate) after: Option<After>,
    /// Durable once the work is done.
    pub(crate) upto: Lsn,
}

#[derive(Default)]
struct State {
    queued: u64,
    done: u64,
    /// End of what the finished tasks made durable.
    synced: Lsn,
    /// The first failure, and the file it concerns.
    error: Option<ArchiveError>,
    failed: bool,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The syncing thread.
pub(crate) struct Syncer {
    tx: Option<mpsc::Sender<Task>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.shared.lock();
        write!(
            f,
            "Syncer(queued {}, done {}, synced {})",
            s.queued, s.done, s.synced
        )
    }
}

impl Syncer {
    /// Starts the thread. `None` if it cannot be started (the writer then syncs
    /// inline).
    pub(crate) fn start(
        fs: Arc<dyn SegmentFs>,
        dir: Arc<Dir>,
        listener: ListenerSlot,
    ) -> Option<Syncer> {
        let (tx, rx) = mpsc::channel::<Task>();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        });
        let sh = Arc::clone(&shared);
        // The caller's span (a daemon's source) goes with the thread's log lines.
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name("walsink-sync".into())
            .spawn(move || {
                let _in_span = span.enter();
                for task in rx {
                    let skip = sh.lock().failed;
                    let r = if skip {
                        Ok(())
                    } else {
                        run(&*fs, &dir, task.work, task.after)
                    };
                    let mut s = sh.lock();
                    s.done += 1;
                    let published = match r {
                        Ok(()) if !s.failed => {
                            s.synced = s.synced.max(task.upto);
                            Some(s.synced)
                        }
                        Ok(()) => None,
                        Err(e) => {
                            s.failed = true;
                            s.error = Some(e);
                            None
                        }
                    };
                    drop(s);
                    sh.cv.notify_all();
                    if let (Some(at), Some(l)) = (published, &listener.0) {
                        l(at);
                    }
                }
            })
            .ok()?;
        Some(Syncer {
            tx: Some(tx),
            shared,
            thread: Some(thread),
        })
    }

    /// Queues a task. `false` if the thread is gone (the caller must then do the
    /// work itself).
    pub(crate) fn submit(&self, task: Task) -> Result<(), Task> {
        let Some(tx) = &self.tx else { return Err(task) };
        let mut s = self.shared.lock();
        match tx.send(task) {
            Ok(()) => {
                s.queued += 1;
                Ok(())
            }
            Err(mpsc::SendError(task)) => Err(task),
        }
    }

    /// End of what is durable so far.
    pub(crate) fn synced(&self) -> Lsn {
        self.shared.lock().synced
    }

    /// Whether a task failed (without waiting).
    pub(crate) fn failed(&self) -> bool {
        self.shared.lock().failed
    }

    /// Whether tasks are queued or running.
    pub(crate) fn busy(&self) -> bool {
        let s = self.shared.lock();
        s.done < s.queued
    }

    /// Waits until every queued task has run. Returns the durable position, or the
    /// first failure (taken: later calls only say that one happened).
    pub(crate) fn wait_idle(&self) -> Result<Lsn, Option<ArchiveError>> {
        let mut s = self.shared.lock();
        while s.done < s.queued && self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            // With a timeout: a thread that died without answering is noticed.
            s = match self
                .shared
                .cv
                .wait_timeout(s, std::time::Duration::from_millis(100))
            {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
        if s.failed {
            return Err(s.error.take());
        }
        if s.done < s.queued {
            return Err(Some(gone()));
        }
        Ok(s.synced)
    }

    /// Forgets the durable position (a new stream position starts; call when idle).
    pub(crate) fn reset(&self) {
        self.shared.lock().synced = Lsn::INVALID;
    }
}

fn run(
    fs: &dyn SegmentFs,
    dir: &Dir,
    work: Work,
    after: Option<After>,
) -> Result<(), ArchiveError> {
    if let Some(a) = after
        && !a.progress.wait(a.jobs)
    {
        // The writer thread reports the write's own error; this only makes sure
        // nothing is called durable past it.
        return Err(ArchiveError::Io {
            path: PathBuf::new(),
            op: "write WAL (an earlier direct write failed)",
            source: std::io::Error::other("an earlier direct write failed"),
        });
    }
    match work {
        Work::Sync {
            file,
            path,
            dir: sync_dir,
        } => {
            fs.datasync(&file, &path)?;
            if sync_dir {
                fs.fsync_dir(dir)?;
            }
            Ok(())
        }
        Work::Complete(f) => f(),
    }
}

fn gone() -> ArchiveError {
    ArchiveError::Io {
        path: PathBuf::new(),
        op: "sync WAL (sync thread ended)",
        source: std::io::Error::other("sync thread ended"),
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
