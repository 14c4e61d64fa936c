//! What wakes an idle writer to recheck the archive's lock file at once.
//!
//! An idle writer has no timer of its own: polling the lock file cost every idle source
//! thread wake-ups (a runtime worker for the timer, then the writer), which add up in a
//! daemon with many sources. Two things recheck it instead:
//!
//! * an inotify watch on the archive directory wakes the writer when an entry there is
//!   created, removed or renamed, which is what removing or replacing the lock file
//!   does: noticed at once on a local file system;
//! * the network task's timer ticks (status interval, receive timeout; every 10 s when
//!   both are disabled), which happen anyway, stat the lock file ([`Writer::check_lock`](super::Writer::check_lock)) and
//!   wake the writer only when it is gone: the backstop for file systems whose changes
//!   by other hosts inotify does not see (NFS), and the only check without inotify (no
//!   kernel support, or `fs.inotify.max_user_instances` reached).
//!
//! A write checks the lock on its own ([`walsink_archive::LOCK_CHECK_INTERVAL`]), so no
//! WAL is ever written into a directory whose lock was found lost.

use std::path::Path;

use futures_util::StreamExt;
use inotify::{EventStream, Inotify, WatchMask};
use tracing::debug;

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
                    "cannot watch \"{}\" for changes ({e}); the lock file is rechecked on the status interval while idle",
                    dir.display(),
                );
                None
            }
        }
    }

    /// Waits until something in the directory changed; no timer. An error means the
    /// watch is unusable.
    pub(super) async fn changed(&mut self) -> std::io::Result<()> {
        match self.events.next().await {
            Some(Ok(_event)) => Ok(()),
            Some(Err(e)) => Err(e),
            None => Err(std::io::Error::other("the inotify stream ended")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_removed_file_wakes_the_watch_and_silence_never_does() {
        let d = tempfile::tempdir().unwrap();
        let lock = d.path().join(".walsink.lock");
        std::fs::write(&lock, b"1\n").unwrap();
        let mut w = DirWatch::new(d.path()).expect("inotify works here");

        // Nothing happens: a day of (paused, auto-advancing) time passes without a wake-up.
        let waited = tokio::time::timeout(Duration::from_secs(86400), w.changed()).await;
        assert!(waited.is_err(), "the watch woke with nothing changed");

        std::fs::remove_file(&lock).unwrap();
        w.changed().await.unwrap();
    }
}
