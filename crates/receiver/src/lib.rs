//! The walsink streaming loop.
//!
//! This crate drives the sans-IO protocol crate over real sockets and the archive crate
//! on a dedicated writer thread:
//!
//! * [`conn`]: a replication connection (TCP or Unix socket), startup and queries;
//! * [`env`]: the process facts the connection options take (environment, password
//!   database, the password file);
//! * [`writer`]: the writer thread, which owns every file in the archive directory
//!   (segments, `.walsink.meta`, history files), runs fdatasync by policy and is the one
//!   publisher of the durable position; it meets the network side through one queue in
//!   and one `watch` channel out (see its docs for why these two, and the
//!   `--synchronous` exception);
//! * [`stream`]: the tokio driver of one `START_REPLICATION` session, whose rules live in
//!   the sans-IO `walsink_protocol::session::ReplicationSession`;
//! * `failover`: continuing on the server's timeline after a promotion, and the slot
//!   on a new server;
//! * [`receive`]: the daemon loop: start position, timeline following, reconnects with
//!   backoff, shutdown;
//! * `gap`: WAL the server no longer has: the missing range, and `--allow-gap`;
//! * `server`: connecting and identifying the server (shared by the daemon loop and
//!   `gap`'s probes; modules depend on it, never on each other in a circle);
//! * `config`: [`ReceiveConfig`], what the caller decides;
//! * [`daemon`]: many sources in one process (`walsink run`): one task per source,
//!   applied by difference on reload;
//! * [`position`]: the server's position and clock, for `walsink status -d`;
//! * [`observe`]: [`SourceState`], what a running source publishes for metrics, health
//!   checks and systemd.
//!
//! It does no argument parsing and never exits the process; the binary maps
//! [`ReceiverError::kind`] to exit codes.
#![deny(missing_docs)]

mod config;
pub mod conn;
pub mod daemon;
pub mod env;
mod error;
mod failover;
mod gap;
pub mod observe;
pub mod position;
pub mod run;
mod server;
pub mod stream;
mod tls;
pub mod writer;

pub use config::ReceiveConfig;
pub use env::process_env;
pub use error::{ErrorKind, ReceiverError};
pub use observe::{Health, Phase, SourceState};
pub use run::{create_slot, drop_slot, receive};
