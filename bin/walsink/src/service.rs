//! Running as a service: the metrics server and the systemd notifier around a run of
//! the receiver (`walsink receive`) or of the daemon's sources (`walsink run`).

use std::future::Future;

use tokio_util::sync::CancellationToken;
use walsink_monitor::notify::{self, Ready};
use walsink_monitor::{MetricsServer, Sources};

/// The name of a `walsink receive` source in metrics and STATUS=: the archive
/// directory's last component (`/srv/wal/db1` is `db1`).
pub fn source_name(dir: &std::path::Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "walsink".into())
}

/// Runs `work` with `metrics` (if any) serving `sources` and, when `NOTIFY_SOCKET` is
/// set, the systemd notifier (READY=1 by `ready`, STATUS=, WATCHDOG=1 while healthy).
/// Both stop when `work` ends or `cancel` fires; STOPPING=1 is sent at the first of
/// the two, and before this returns.
pub async fn observed<T>(
    sources: Sources,
    metrics: Option<MetricsServer>,
    ready: Ready,
    cancel: &CancellationToken,
    work: impl Future<Output = T>,
) -> T {
    let stop = cancel.child_token();
    let server = metrics.map(|m| tokio::spawn(m.serve(sources.clone(), stop.clone())));
    let notifier = notify::spawn(sources, ready, stop.clone());
    let out = work.await;
    stop.cancel();
    if let Some(n) = notifier {
        let _ = n.await;
    }
    if let Some(s) = server {
        let _ = s.await;
    }
    out
}
