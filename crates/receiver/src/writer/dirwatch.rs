//! When an idle writer rechecks the archive's lock file.
//!
//! Polling it every [`LOCK_CHECK_INTERVAL`] costs every idle source two thread wake-ups a
//! second (a runtime worker for the timer, then the writer), which adds up in a daemon
//! with many sources. Instead, an inotify watch on the archive directory wakes the
//! writer when an entry there is created, removed or renamed, which is what removing or
//! replacing the lock file does: it is still noticed at once on a local file system. A
//! slow poll every [`BACKSTOP_INTERVAL`] stays as a backstop for file systems whose
//! changes by other hosts inotify does not see (NFS). Without inotify (no kernel
//! support, or `fs.inotify.max_user_instances` reached) the writer polls every
//! [`LOCK_CHECK_INTERVAL`] as before.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use inotify::{EventStream, Inotify, WatchMask};
use tracing::debug;
use walsink_archive::LOCK_CHECK_INTERVAL;

/// How often an idle writer with a directory watch rechecks the lock file anyway.
pub const BACKSTOP_INTERVAL: Duration = Duration::from_secs(10);

/// An inotify watch on the archive directory's entries.
pub(super) struct DirWatch {
    events: EventStream<[u8; 1024]>,
}

impl DirWatch {
    /// Watches `dir`; `None` (logged at debug level) when inotify cannot be used. Must
    /// be called within the runtime whose reactor will wait on it.
    pub(super) fn new(dir: &Path) -> Option<DirWatch> {
        let open = || -> std::io::Result<DirWatch> {
            let inotify = Inotify::init()?;
            inotify.watches().add(
                dir,
                WatchMask::CREATE
                    | WatchMask::DELETE
                    | WatchMask::MOVED_FROM
                    | WatchMask::MOVED_TO
                    | WatchMask::ATTRIB
                    | WatchMask::DELETE_SELF
                    | WatchMask::MOVE_SELF
                    | WatchMask::ONLYDIR,
            )?;
            Ok(DirWatch {
                events: inotify.into_event_stream([0u8; 1024])?,
            })
        };
        match open() {
            Ok(w) => Some(w),
            Err(e) => {
                debug!(
                    "cannot watch \"{}\" for changes ({e}); rechecking the lock file every {} s while idle",
                    dir.display(),
                    LOCK_CHECK_INTERVAL.as_secs()
                );
                None
            }
        }
    }

    /// Waits until something in the directory changed (or [`BACKSTOP_INTERVAL`]
    /// passed). An error means the watch is unusable.
    pub(super) async fn changed(&mut self) -> std::io::Result<()> {
        match tokio::time::timeout(BACKSTOP_INTERVAL, self.events.next()).await {
            Err(_elapsed) => Ok(()),
            Ok(Some(Ok(_event))) => Ok(()),
            Ok(Some(Err(e))) => Err(e),
            Ok(None) => Err(std::io::Error::other("the inotify stream ended")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn a_removed_file_wakes_the_watch_at_once_and_silence_waits_for_the_backstop() {
        let d = tempfile::tempdir().unwrap();
        let lock = d.path().join(".walsink.lock");
        std::fs::write(&lock, b"1\n").unwrap();
        let mut w = DirWatch::new(d.path()).expect("inotify works here");
        let started = Instant::now();
        let remover = tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(200));
            std::fs::remove_file(&lock).unwrap();
        });
        w.changed().await.unwrap();
        let took = started.elapsed();
        remover.await.unwrap();
        assert!(
            took < BACKSTOP_INTERVAL / 2,
            "woke after {took:?}, not on the removal"
        );

        // Nothing happens: the watch waits the whole backstop interval (on tokio's clock).
        tokio::time::pause();
        let before = tokio::time::Instant::now();
        w.changed().await.unwrap();
        assert!(before.elapsed() >= BACKSTOP_INTERVAL);
    }
}
