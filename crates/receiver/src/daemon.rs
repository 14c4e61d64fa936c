//! Many sources in one process: a [`Supervisor`] runs [`receive`] for each source on a
//! thread of its own, with its own current-thread tokio runtime, cancellation token and
//! tracing span, and applies a new set of sources (a reloaded configuration) by
//! difference.
//!
//! A thread and a runtime per source, as `walsink receive` runs its one source: a
//! source's network task, timers and socket are driven by its own thread, never handed
//! between the workers of a shared runtime (measured: BENCHMARKS.md, `walsink run`), and
//! an idle source's thread sleeps until its own socket or timer wakes it.
//!
//! Isolation: every source has its own thread and, in the default mode, its own writer
//! thread, so a source that cannot connect (retried with backoff), whose disk is full
//! (its writer pauses and its queue fills, which stops only its own socket reads), that
//! writes and fsyncs on its network thread (synchronous mode) or whose archive is
//! refused (its thread ends) never stalls another. A source whose [`receive`] ends with an error stays down and is reported
//! ([`TaskState::Failed`]); the others go on. [`Supervisor::apply`] starts it again
//! (an operator fixed the cause and reloaded).
//!
//! Applying a new set: sources whose name is new start; those no longer listed stop
//! (cancelled: the session flushes what it received and sends a final status update,
//! as on SIGTERM); those whose [fingerprint](SourceDef::fingerprint) changed stop and
//! start again with the new settings; unchanged running ones are not touched (their
//! connection stays).

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span};

use crate::config::ReceiveConfig;
use crate::error::{ErrorKind, ReceiverError};
use crate::run::receive;

/// One source of a daemon: a name and what to run.
#[derive(Clone)]
pub struct SourceDef {
    /// Unique within the daemon; every log line of the source carries it (the `source`
    /// field of its span).
    pub name: String,
    /// What [`receive`] is run with.
    pub config: ReceiveConfig,
    /// A digest of everything the source was configured with (including secrets read
    /// from files): a different value on [`Supervisor::apply`] restarts the source.
    pub fingerprint: u64,
}

/// Where a source is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// Its thread runs: streaming, connecting or waiting to reconnect.
    Running,
    /// Its thread ended without error (`endpos`, never in a daemon) or was stopped.
    Stopped,
    /// Its thread ended with an error that needs a human; it stays down until the next
    /// [`Supervisor::apply`].
    Failed {
        /// What kind of error (the exit code `walsink receive` would have had).
        kind: ErrorKind,
        /// The error, as logged.
        message: String,
    },
}

/// What [`Supervisor::apply`] did, by source name (sorted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// New sources, started.
    pub started: Vec<String>,
    /// Sources no longer configured, stopped.
    pub stopped: Vec<String>,
    /// Sources with changed settings, or that had stopped after an error: (re)started.
    pub restarted: Vec<String>,
    /// Running sources with the same settings, left alone.
    pub unchanged: Vec<String>,
}

/// How a source's thread ended: `Err` carries its panic.
type Ended = Result<(), Box<dyn Any + Send>>;

struct Entry {
    fingerprint: u64,
    cancel: CancellationToken,
    /// Answered by the source's thread once [`receive`] has returned (its session
    /// flushed and closed) and its runtime is shut down.
    ended: oneshot::Receiver<Ended>,
    thread: JoinHandle<()>,
    state: Arc<Mutex<TaskState>>,
}

impl Entry {
    fn state(&self) -> TaskState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Cancels the source at once; the future waits until its session has flushed
    /// and closed and its thread has ended (a panic there is resumed here).
    fn stop(self) -> impl Future<Output = ()> {
        self.cancel.cancel();
        async move {
            let ended = self.ended.await;
            // Answered as the thread's last act: the join does not wait.
            let joined = self.thread.join();
            match (ended, joined) {
                (Ok(Err(panic)), _) | (_, Err(panic)) => std::panic::resume_unwind(panic),
                _ => {}
            }
        }
    }
}

/// Runs many sources; see the [module docs](self).
#[derive(Default)]
pub struct Supervisor {
    sources: BTreeMap<String, Entry>,
}

impl Supervisor {
    /// A supervisor with no sources.
    pub fn new() -> Supervisor {
        Supervisor::default()
    }

    /// Makes the running sources those of `defs` (names must be unique): starts new
    /// ones, stops removed ones, restarts changed or failed ones, leaves the rest alone.
    /// Stops (which flush and close) run concurrently; returns when they are done and
    /// the new threads are started. Must be called within a tokio runtime (any: the
    /// sources run on runtimes of their own).
    pub async fn apply(&mut self, defs: Vec<SourceDef>) -> Applied {
        let mut applied = Applied::default();
        let mut wanted: BTreeMap<String, SourceDef> =
            defs.into_iter().map(|d| (d.name.clone(), d)).collect();
        let mut stopping = Vec::new();
        let names: Vec<String> = self.sources.keys().cloned().collect();
        for name in names {
            let keep = match wanted.get(&name) {
                Some(def) => {
                    let e = &self.sources[&name];
                    e.fingerprint == def.fingerprint && e.state() == TaskState::Running
                }
                None => false,
            };
            if keep {
                wanted.remove(&name);
                applied.unchanged.push(name);
                continue;
            }
            let entry = self.sources.remove(&name).expect("listed above");
            if wanted.contains_key(&name) {
                info!(source = %name, "restarting source {name:?} with its new settings");
                applied.restarted.push(name);
            } else {
                info!(source = %name, "stopping source {name:?}: no longer configured");
                applied.stopped.push(name);
            }
            stopping.push(entry.stop());
        }
        for stop in stopping {
            stop.await;
        }
        for (name, def) in wanted {
            if !applied.restarted.contains(&name) {
                applied.started.push(name.clone());
            }
            self.sources.insert(name, spawn(def));
        }
        applied
    }

    /// Each source's name and state, sorted by name.
    pub fn states(&self) -> Vec<(String, TaskState)> {
        self.sources
            .iter()
            .map(|(n, e)| (n.clone(), e.state()))
            .collect()
    }

    /// Stops every source (each flushes, sends its final status update and closes;
    /// concurrently) and waits for them.
    pub async fn shutdown(&mut self) {
        let entries = std::mem::take(&mut self.sources);
        let stopping: Vec<_> = entries.into_values().map(Entry::stop).collect();
        for stop in stopping {
            stop.await;
        }
    }
}

/// Starts one source's thread, running [`receive`] inside its span on a current-thread
/// runtime of its own.
fn spawn(def: SourceDef) -> Entry {
    let cancel = CancellationToken::new();
    let state = Arc::new(Mutex::new(TaskState::Running));
    let span = info_span!("source", source = %def.name);
    let (tx, ended) = oneshot::channel();
    let thread = {
        let (cancel, state) = (cancel.clone(), Arc::clone(&state));
        std::thread::Builder::new()
            .name("walsink-source".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name("walsink-blk")
                    .build()
                    .expect("building a source's tokio runtime");
                let run = async move {
                    info!("starting");
                    let r = receive(def.config, cancel).await;
                    let next = outcome(r);
                    *state.lock().unwrap_or_else(|e| e.into_inner()) = next;
                }
                .instrument(span);
                let r = std::panic::catch_unwind(AssertUnwindSafe(|| rt.block_on(run)));
                // Blocking work left behind by a cancelled step (a hung file system)
                // is not waited for.
                rt.shutdown_background();
                let _ = tx.send(r);
            })
            .expect("spawning a source's thread")
    };
    Entry {
        fingerprint: def.fingerprint,
        cancel,
        ended,
        thread,
        state,
    }
}

/// Logs how a source's task ended and what it means.
fn outcome(r: Result<(), ReceiverError>) -> TaskState {
    match r {
        Ok(()) => {
            info!("stopped");
            TaskState::Stopped
        }
        Err(e) => {
            let message = e.to_string();
            // One event per line (a DETAIL or HINT): each carries the source's name.
            for line in message.lines() {
                error!("{line}");
            }
            error!(
                "this source stays stopped (the other sources go on); fix the cause, then reload (SIGHUP) to start it again"
            );
            TaskState::Failed {
                kind: e.kind(),
                message,
            }
        }
    }
}
