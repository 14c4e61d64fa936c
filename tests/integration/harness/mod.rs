//! The integration-test harness: real PostgreSQL clusters, the walsink binary as a child process, and
//! assertions on archive directories.
//!
//! - [`pg`]: [`PgCluster`], a PostgreSQL cluster owned by a value (initdb, start on a free loopback port,
//!   SQL over its private Unix socket, standbys, promotion; stopped and deleted on drop).
//! - [`walsink`]: [`Walsink`], which builds `walsink` command lines with a clean environment, and
//!   [`WalsinkProcess`], a running child whose output can be read while it runs.
//! - [`archive`]: checks that what walsink wrote matches what the server has in `pg_wal`, byte for byte.
//! - [`fake`]: [`fake::FakeServer`], a scripted fake replication server for what PostgreSQL never sends.
//! - [`proxy`]: [`proxy::FaultProxy`], a TCP proxy in front of a real server that stalls and cuts.
//! - [`scenario`]: helpers many scenarios share (archive directory, slots, WAL past a position, [`WAIT`]).
//!
//! Everything here is parallel-safe: each value owns its temp directory and port, and the only global state
//! is the once-per-process lookup (or creation) of the unprivileged OS user that runs the servers when the
//! tests run as root.
//!
//! Scenario modules use different subsets of these helpers, hence the blanket `dead_code` allowance.
#![allow(dead_code)]

pub mod archive;
pub mod fake;
pub mod pg;
pub mod proxy;
pub mod scenario;
pub mod tls;
pub mod walsink;

use std::time::{Duration, Instant};

use walsink_wal::Lsn;

#[allow(unused_imports)] // re-exports for scenario modules
pub use pg::{HostAuth, PgCluster, PgClusterBuilder, StopMode};
#[allow(unused_imports)]
pub use scenario::{
    WAIT, archive_dir, create_slot, generate_past, remove_needed_segment, restart_lsn,
    switch_point, switch_points,
};
pub use walsink::{PgReceivewalLink, Walsink, WalsinkProcess, clean_command};

/// Polls `cond` every 50 ms until it returns true or `timeout` passes. Returns whether it became true;
/// use it as `assert!(wait_for(|| ..., Duration::from_secs(30)), "what we waited for")`.
#[must_use]
pub fn wait_for(mut cond: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Parses PostgreSQL's `X/X` LSN text into a number with walsink's own [`Lsn`] parser (panics on malformed
/// input: this is test code). Scenarios compute with plain `u64` byte positions.
pub fn parse_lsn(s: &str) -> u64 {
    s.trim()
        .parse::<Lsn>()
        .unwrap_or_else(|e| panic!("not an LSN: {s:?}: {e}"))
        .0
}

/// Formats a byte position as PostgreSQL's `X/X` LSN text ([`Lsn`]'s `Display`).
pub fn format_lsn(lsn: u64) -> String {
    Lsn(lsn).to_string()
}

/// The last `n` lines of a text, for failure messages.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Where test temp directories go: `/tmp` (short paths keep Unix socket paths under ~107 bytes), or the
/// system temp directory if `/tmp` is unusable.
pub(crate) fn temp_base() -> std::path::PathBuf {
    let tmp = std::path::Path::new("/tmp");
    if tmp.is_dir() {
        tmp.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Whether to keep temp directories after the test (set `WALSINK_KEEP_TEMP=1` to debug a failure).
pub(crate) fn keep_temp() -> bool {
    std::env::var_os("WALSINK_KEEP_TEMP").is_some_and(|v| !v.is_empty() && v != "0")
}
