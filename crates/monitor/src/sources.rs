//! [`Sources`]: the named sources of a process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use walsink_receiver::SourceState;

/// The named sources a process runs, shared by the metrics server, the health check
/// and the systemd notifier, and changed by the process as sources start and stop
/// (a reload). Cloning shares the set. Names sort the output.
#[derive(Clone, Debug, Default)]
pub struct Sources(Arc<Mutex<BTreeMap<String, SourceState>>>);

impl Sources {
    /// An empty set.
    pub fn new() -> Sources {
        Sources::default()
    }

    /// A set of one source.
    pub fn single(name: impl Into<String>, state: SourceState) -> Sources {
        let s = Sources::new();
        s.insert(name, state);
        s
    }

    /// Adds `name`, or replaces its state.
    pub fn insert(&self, name: impl Into<String>, state: SourceState) {
        self.lock().insert(name.into(), state);
    }

    /// Removes `name` (a source stopped for good).
    pub fn remove(&self, name: &str) {
        self.lock().remove(name);
    }

    /// The state of `name`, a fresh one added if it has none.
    pub fn get_or_insert(&self, name: &str) -> SourceState {
        self.lock().entry(name.to_owned()).or_default().clone()
    }

    /// Keeps only the sources `keep` says yes to.
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        self.lock().retain(|n, _| keep(n));
    }

    /// The sources now, by name.
    pub fn list(&self) -> Vec<(String, SourceState)> {
        self.lock()
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SourceState>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
