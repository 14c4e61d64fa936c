//! `walsink run --config FILE`: many sources in one daemon.
//!
//! The file ([`config`]) is read and validated before anything starts (exit 2 naming
//! every error). Then one [`Supervisor`] runs a task per source; SIGHUP re-reads the file
//! and applies it by difference (an invalid new file is logged and the running
//! configuration kept); SIGINT/SIGTERM stop every source (each flushes and sends its
//! final status update) and exit 0.
//!
//! A source that fails with an error needing a human stays down, is logged with its
//! name, and the daemon keeps running the others; a reload starts it again.

pub mod config;

use std::path::PathBuf;

use clap::{ArgAction, Args};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use walsink_monitor::Sources;
use walsink_monitor::notify::{self, Ready};
use walsink_receiver::daemon::{SourceDef, Supervisor, TaskState};

use crate::log::{self, LogFormat};

/// `walsink run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The configuration file (TOML; see README, "Running as a service").
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: PathBuf,

    /// Check the configuration file, print what it configures, and exit (0 if valid, 2 if not).
    #[arg(long = "check")]
    pub check: bool,

    /// Log format; overrides the file's log_format (default text).
    #[arg(long = "log-format", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// More output (repeat for more).
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,
}

/// Runs the daemon; returns the process's exit code.
pub fn main(args: RunArgs) -> u8 {
    let env = walsink_receiver::process_env();
    let cfg = match config::load(&args.config, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("walsink: error: invalid configuration:\n{e}");
            eprintln!("walsink: {} error(s); nothing was started", e.len());
            return crate::exit::USAGE;
        }
    };
    if args.check {
        println!(
            "{}: {} source(s): {}",
            args.config.display(),
            cfg.sources.len(),
            cfg.sources
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return crate::exit::OK;
    }
    let format = args.log_format.or(cfg.log_format).unwrap_or_default();
    log::init_daemon(args.verbose, format);

    // Worker threads, not one: a source in synchronous mode writes and fsyncs on the
    // runtime, which must not hold up the others.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let path = args.config.clone();
    let code = rt.block_on(async move {
        let (Ok(mut hup), Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            error!("cannot install the signal handlers");
            return crate::exit::ERROR;
        };
        let trim = tokio::spawn(trim_freed_memory());
        // Metrics, health and systemd notification watch every running source by name.
        let sources = Sources::new();
        let stop = CancellationToken::new();
        let server = match running_metrics(cfg.metrics_listen).await {
            Ok(m) => m.map(|m| tokio::spawn(m.serve(sources.clone(), stop.clone()))),
            Err(e) => {
                error!("{e}");
                return crate::exit::ERROR;
            }
        };
        let mut supervisor = Supervisor::new();
        let mut running = cfg;
        info!(
            "walsink daemon starting {} source(s) from {}",
            running.sources.len(),
            path.display()
        );
        supervisor
            .apply(observed(&sources, running.sources.clone()))
            .await;
        // After the first apply: READY=1 waits for every configured source's first attempt.
        let notifier = notify::spawn(sources.clone(), Ready::AllAttempted, stop.clone());
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    info!("SIGHUP: reloading {}", path.display());
                    // systemd: RELOADING=1 now, READY=1 once applied or refused.
                    let reload = notifier.as_ref().map(notify::Notifier::reloading);
                    match config::load(&path, &env) {
                        Ok(new) => {
                            if new.metrics_listen != running.metrics_listen {
                                warn!("metrics_listen changed; it takes effect when walsink restarts");
                            }
                            if new.log_format != running.log_format {
                                warn!("log_format changed; it takes effect when walsink restarts");
                            }
                            let applied = supervisor
                                .apply(observed(&sources, new.sources.clone()))
                                .await;
                            info!(
                                "reloaded: {} started, {} stopped, {} restarted, {} unchanged",
                                applied.started.len(),
                                applied.stopped.len(),
                                applied.restarted.len(),
                                applied.unchanged.len()
                            );
                            running = new;
                        }
                        Err(e) => {
                            for line in e.to_string().lines() {
                                error!("{line}");
                            }
                            error!("the new configuration is invalid; keeping the running one");
                        }
                    }
                    if let (Some(n), Some(r)) = (&notifier, reload) {
                        n.reloaded(r);
                    }
                }
                _ = int.recv() => break,
                _ = term.recv() => break,
            }
        }
        let failed = supervisor
            .states()
            .into_iter()
            .filter(|(_, s)| matches!(s, TaskState::Failed { .. }))
            .count();
        if failed > 0 {
            warn!("{failed} source(s) had stopped with an error");
        }
        info!("stopping every source");
        // STOPPING=1 (and the metrics server's end) as the shutdown begins.
        stop.cancel();
        if let Some(n) = notifier {
            let _ = n.await;
        }
        if let Some(s) = server {
            let _ = s.await;
        }
        // A second signal while shutting down: stop waiting.
        tokio::select! {
            () = supervisor.shutdown() => {}
            _ = int.recv() => std::process::exit(crate::exit::ERROR.into()),
            _ = term.recv() => std::process::exit(crate::exit::ERROR.into()),
        }
        trim.abort();
        crate::exit::OK
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

/// How often the daemon hands memory its allocator holds free back to the system.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Glibc's allocator keeps freed blocks in its heaps (its mmap threshold rises as large
/// blocks are freed, after which the connections' 1 MiB read buffers come from the
/// heaps): what an idle source frees (`Connection::idle_tick`) could stay in the process.
/// `malloc_trim` every [`TRIM_EVERY`] returns the free pages of every heap. A fixed mmap
/// threshold would do it too, but costs busy sources their buffer reuse (measured
/// slower, BENCHMARKS.md).
async fn trim_freed_memory() {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only returns free memory to the system; no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// The metrics server of `metrics_listen`, bound before any source starts (a busy or
/// forbidden address is an error at startup).
async fn running_metrics(
    addr: Option<std::net::SocketAddr>,
) -> Result<Option<walsink_monitor::MetricsServer>, String> {
    let Some(addr) = addr else { return Ok(None) };
    walsink_monitor::MetricsServer::bind(addr)
        .await
        .map(Some)
        .map_err(|e| format!("cannot serve metrics on {addr} (metrics_listen): {e}"))
}

/// `defs` with each source's observer: the one it already has in `sources` (an unchanged
/// or restarted source keeps its counters), else a new one; sources no longer configured
/// leave `sources`.
fn observed(sources: &Sources, mut defs: Vec<SourceDef>) -> Vec<SourceDef> {
    sources.retain(|n| defs.iter().any(|d| d.name == n));
    for d in &mut defs {
        d.config.observer = sources.get_or_insert(&d.name);
    }
    defs
}
