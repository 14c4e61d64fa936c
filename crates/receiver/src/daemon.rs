//! Many sources in one process: a [`Supervisor`] runs one [`receive`] task per source,
//! each with its own cancellation token and its own tracing span, and applies a new set
//! of sources (a reloaded configuration) by difference.
//!
//! Isolation: every source is an independent task on the runtime and, in the default
//! mode, has its own writer thread, so a source that cannot connect (retried with
//! backoff), whose disk is full (its writer pauses and its queue fills, which stops only
//! its own socket reads) or whose archive is refused (its task ends) never stalls
//! another. A source whose [`receive`] ends with an error stays down and is reported
//! ([`TaskState::Failed`]); the others go on. [`Supervisor::apply`] starts it again
//! (an operator fixed the cause and reloaded).
//!
//! Applying a new set: sources whose name is new start; those no longer listed stop
//! (cancelled: the session flushes what it received and sends a final status update,
//! as on SIGTERM); those whose [fingerprint](SourceDef::fingerprint) changed stop and
//! start again with the new settings; unchanged running ones are not touched (their
//! connection stays).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
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
    /// Its task runs: streaming, connecting or waiting to reconnect.
    Running,
    /// Its task ended without error (`endpos`, never in a daemon) or was stopped.
    Stopped,
    /// Its task ended with an error that needs a human; it stays down until the next
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

struct Entry {
    fingerprint: u64,
    cancel: CancellationToken,
    task: JoinHandle<()>,
    state: Arc<Mutex<TaskState>>,
}

impl Entry {
    fn state(&self) -> TaskState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Cancels the source at once (not when the future is first polled: stops that
    /// are awaited one after another still run concurrently); the future waits until
    /// its session has flushed and closed.
    fn stop(self) -> impl Future<Output = ()> {
        self.cancel.cancel();
        async move {
            if let Err(e) = self.task.await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
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
    /// the new tasks are spawned. Must be called within a tokio runtime.
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

/// Starts one source's task inside its span.
fn spawn(def: SourceDef) -> Entry {
    let cancel = CancellationToken::new();
    let state = Arc::new(Mutex::new(TaskState::Running));
    let span = info_span!("source", source = %def.name);
    let task = {
        let (cancel, state) = (cancel.clone(), Arc::clone(&state));
        tokio::spawn(
            async move {
                info!("starting");
                let r = receive(def.config, cancel).await;
                let next = outcome(r);
                *state.lock().unwrap_or_else(|e| e.into_inner()) = next;
            }
            .instrument(span),
        )
    };
    Entry {
        fingerprint: def.fingerprint,
        cancel,
        task,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A source's entry whose task, once cancelled, takes a while to finish (its final
    /// flush and status update), and says when it saw the cancellation.
    fn slow_to_stop(seen: Arc<Mutex<Vec<&'static str>>>, name: &'static str) -> Entry {
        let cancel = CancellationToken::new();
        let task = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                cancel.cancelled().await;
                seen.lock().unwrap().push(name);
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            })
        };
        Entry {
            fingerprint: 0,
            cancel,
            task,
            state: Arc::new(Mutex::new(TaskState::Running)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stops_awaited_one_after_another_are_all_cancelled_at_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (a, b) = (
            slow_to_stop(seen.clone(), "a"),
            slow_to_stop(seen.clone(), "b"),
        );
        let (ca, cb) = (a.cancel.clone(), b.cancel.clone());
        let stopping = [a.stop(), b.stop()];
        assert!(ca.is_cancelled() && cb.is_cancelled());
        let started = tokio::time::Instant::now();
        for stop in stopping {
            stop.await;
        }
        assert_eq!(seen.lock().unwrap().len(), 2);
        // Both final flushes overlapped: 5 s, not 10 (tokio's paused clock).
        assert_eq!(started.elapsed(), std::time::Duration::from_secs(5));
    }
}
