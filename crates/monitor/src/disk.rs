//! Free space of the archive directories, measured off the runtime thread: a `statvfs`
//! on a hung file system (NFS) must not stall the receiver, so it runs on a blocking
//! thread with a deadline, and a probe still hanging from an earlier scrape is not
//! started again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long a scrape waits for the free space of the directories.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(1);

/// Bytes available to an unprivileged user on the file system of `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Measures free space, one probe at a time.
#[derive(Debug, Default, Clone)]
pub struct DiskProbe {
    busy: Arc<AtomicBool>,
}

impl DiskProbe {
    /// The free bytes of each directory that answered within [`PROBE_DEADLINE`]; empty
    /// when the previous probe still hangs.
    pub async fn probe(&self, dirs: Vec<PathBuf>) -> HashMap<PathBuf, u64> {
        if dirs.is_empty() || self.busy.swap(true, Ordering::AcqRel) {
            return HashMap::new();
        }
        let busy = Arc::clone(&self.busy);
        let task = tokio::task::spawn_blocking(move || {
            let r: HashMap<PathBuf, u64> = dirs
                .into_iter()
                .filter_map(|d| free_bytes(&d).ok().map(|b| (d, b)))
                .collect();
            busy.store(false, Ordering::Release);
            r
        });
        match tokio::time::timeout(PROBE_DEADLINE, task).await {
            Ok(Ok(r)) => r,
            _ => HashMap::new(),
        }
    }
}
