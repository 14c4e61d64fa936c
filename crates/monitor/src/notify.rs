//! The systemd notify protocol (`Type=notify`), whenever `NOTIFY_SOCKET` is set:
//!
//! * `READY=1` once the sources are up: for `walsink receive` once the first stream is
//!   established ([`Ready::FirstStream`]); for the daemon once every source has made its
//!   first attempt ([`Ready::AllAttempted`]);
//! * `STATUS=` with each source's phase and flushed position, on every phase change
//!   and with every watchdog tick (or every [`STATUS_EVERY`] without a watchdog);
//! * `WATCHDOG=1` every `WATCHDOG_USEC`/2, but only while every source that should be
//!   streaming is healthy ([`Health::stops_watchdog`]): heard from its server within
//!   its receive timeout, writer progressing or idle. A silent stream, a reconnecting
//!   source or a stuck writer stops the pings, so systemd restarts the service after
//!   `WatchdogSec=`; failed and stopped sources do not (a restart would not help them);
//! * `STOPPING=1` when shutdown begins ([`stopping`]; also sent when the notifier's
//!   cancellation token fires);
//! * on a reload (the daemon's SIGHUP, [`Notifier::reloading`]): `RELOADING=1` with
//!   `MONOTONIC_USEC=` (the `CLOCK_MONOTONIC` time in µs, which systemd 253 and later
//!   require with it), then `READY=1` with a fresh `STATUS=` once the new configuration
//!   is applied or refused ([`Notifier::reloaded`]).

use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use walsink_receiver::observe::phase_changed;
use walsink_receiver::{Health, Phase};

use crate::Sources;

/// How often `STATUS=` is refreshed without a watchdog.
pub const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Longest `STATUS=` text (systemd shows one line).
const STATUS_MAX: usize = 1024;

/// When `READY=1` is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
    /// Once any source streams (`walsink receive`).
    FirstStream,
    /// Once every source has left [`Phase::Connecting`] (the daemon).
    AllAttempted,
}

/// Whether `NOTIFY_SOCKET` is set.
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty())
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!("systemd notification failed: {e}");
    }
}

/// Sends `STOPPING=1` (shutdown began).
pub fn stopping() {
    if enabled() {
        send(&[NotifyState::Stopping]);
    }
}

/// One source in `STATUS=`: `NAME: PHASE, flushed LSN`, with why it is not healthy.
fn source_status(name: &str, st: &walsink_receiver::SourceState) -> (bool, String) {
    let snap = st.snapshot();
    let mut s = format!("{name}: {}, flushed {}", snap.phase, snap.flushed);
    if !snap.health.is_ok() && !matches!(snap.health, Health::NotStreaming { .. } | Health::Stopped)
    {
        s.push_str(&format!(" ({})", snap.health));
    } else if let Some(r) = snap.reason.filter(|_| snap.phase != Phase::Streaming) {
        s.push_str(&format!(" ({r})"));
    }
    (snap.health.is_ok(), s)
}

/// The one-line `STATUS=` text: `NAME: PHASE, flushed LSN` per source. When that is
/// longer than systemd shows, how many are healthy, then the others.
pub fn status_line(sources: &Sources) -> String {
    let all: Vec<(bool, String)> = sources
        .list()
        .iter()
        .map(|(n, st)| source_status(n, st))
        .collect();
    let mut s = all
        .iter()
        .map(|(_, s)| s.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    if s.len() > STATUS_MAX {
        let healthy = all.iter().filter(|(ok, _)| *ok).count();
        s = format!("{healthy} of {} sources healthy", all.len());
        for (_, one) in all.iter().filter(|(ok, _)| !ok) {
            s.push_str("; ");
            s.push_str(one);
        }
    }
    let mut s = s.replace(['\n', '\r'], " ");
    if s.len() > STATUS_MAX {
        let mut cut = STATUS_MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Whether the watchdog may be pinged now: every source healthy, or failed/stopped (a
/// daemon without sources is healthy: there is nothing to be stuck).
pub fn watchdog_healthy(sources: &Sources) -> bool {
    sources
        .list()
        .iter()
        .all(|(_, s)| !s.health().stops_watchdog())
}

fn is_ready(sources: &Sources, ready: Ready) -> bool {
    let list = sources.list();
    match ready {
        Ready::FirstStream => list.iter().any(|(_, s)| s.phase() == Phase::Streaming),
        Ready::AllAttempted => list.iter().all(|(_, s)| s.phase() != Phase::Connecting),
    }
}

/// The running notifier task ([`spawn`]); awaiting it waits for the task's end.
pub struct Notifier {
    task: tokio::task::JoinHandle<()>,
    sources: Sources,
    /// Set once `READY=1` was sent.
    ready_sent: Arc<AtomicBool>,
}

/// A reload announced (or not) by [`Notifier::reloading`], to be ended by
/// [`Notifier::reloaded`].
#[must_use = "a reload announced to systemd must end with Notifier::reloaded"]
pub struct Reload {
    announced: bool,
}

impl Notifier {
    /// A reload begins: sends `RELOADING=1` with `MONOTONIC_USEC=`. Not before the first
    /// `READY=1`: systemd is then still starting the service, and that `READY=1` ends
    /// the start whatever was reloaded meanwhile.
    pub fn reloading(&self) -> Reload {
        let announced = self.ready_sent.load(Ordering::Acquire);
        if announced {
            match NotifyState::monotonic_usec_now() {
                Ok(now) => send(&[NotifyState::Reloading, now]),
                Err(e) => {
                    debug!("cannot read CLOCK_MONOTONIC for MONOTONIC_USEC: {e}");
                    send(&[NotifyState::Reloading]);
                }
            }
        }
        Reload { announced }
    }

    /// The reload is over (the new configuration applied, or refused and the running one
    /// kept): `READY=1` with the sources' `STATUS=` now.
    pub fn reloaded(&self, reload: Reload) {
        if reload.announced {
            let status = status_line(&self.sources);
            send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        }
    }
}

impl IntoFuture for Notifier {
    type Output = Result<(), tokio::task::JoinError>;
    type IntoFuture = tokio::task::JoinHandle<()>;

    fn into_future(self) -> Self::IntoFuture {
        self.task
    }
}

/// Starts the notifier task if `NOTIFY_SOCKET` is set (else does nothing). It runs
/// until `cancel`, then sends `STOPPING=1`.
pub fn spawn(sources: Sources, ready: Ready, cancel: CancellationToken) -> Option<Notifier> {
    enabled().then(|| {
        let ready_sent = Arc::new(AtomicBool::new(false));
        Notifier {
            task: tokio::spawn(run(sources.clone(), ready, cancel, ready_sent.clone())),
            sources,
            ready_sent,
        }
    })
}

async fn run(
    sources: Sources,
    ready: Ready,
    cancel: CancellationToken,
    ready_sent: Arc<AtomicBool>,
) {
    let watchdog = sd_notify::watchdog_enabled();
    if let Some(w) = watchdog {
        debug!("systemd watchdog every {} ms", w.as_millis());
    }
    let tick_every = watchdog.map_or(STATUS_EVERY, |w| (w / 2).max(Duration::from_millis(1)));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent_ready = false;
    let mut last_status = String::new();
    let mut was_healthy = true;
    loop {
        let ticked = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => true,
            _ = phase_changed() => false,
        };
        let status = status_line(&sources);
        let mut states = Vec::new();
        if status != last_status || ticked {
            states.push(NotifyState::Status(&status));
        }
        if !sent_ready && is_ready(&sources, ready) {
            sent_ready = true;
            states.push(NotifyState::Ready);
        }
        if ticked && watchdog.is_some() {
            let healthy = watchdog_healthy(&sources);
            if healthy {
                states.push(NotifyState::Watchdog);
            } else if was_healthy {
                warn!("not healthy ({status}): systemd watchdog pings stop until it is");
            }
            was_healthy = healthy;
        }
        if !states.is_empty() {
            send(&states);
            if sent_ready {
                ready_sent.store(true, Ordering::Release);
            }
        }
        last_status = status;
    }
    send(&[
        NotifyState::Stopping,
        NotifyState::Status(&status_line(&sources)),
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use walsink_receiver::SourceState;

    #[test]
    fn status_names_every_source_or_summarizes_many() {
        let sources = Sources::new();
        let ok = SourceState::new();
        ok.set_phase(Phase::Streaming, None);
        sources.insert("db1", ok);
        let down = SourceState::new();
        down.set_phase(
            Phase::Reconnecting,
            Some("connection refused\nagain".into()),
        );
        sources.insert("db2", down);
        assert_eq!(
            status_line(&sources),
            "db1: streaming, flushed 0/0; db2: reconnecting, flushed 0/0 (connection refused again)"
        );
        assert!(!watchdog_healthy(&sources));
        assert!(is_ready(&sources, Ready::AllAttempted));
        assert!(is_ready(&sources, Ready::FirstStream));
        for i in 0..100 {
            let s = SourceState::new();
            s.set_phase(Phase::Streaming, None);
            sources.insert(format!("a-long-source-name-{i:03}"), s);
        }
        assert_eq!(
            status_line(&sources),
            "101 of 102 sources healthy; db2: reconnecting, flushed 0/0 (connection refused again)"
        );
        let empty = Sources::new();
        assert!(watchdog_healthy(&empty), "nothing to be stuck");
    }
}
