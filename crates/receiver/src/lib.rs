//! The walsink streaming loop.
//!
//! This crate drives the sans-IO protocol crate over real sockets and the archive crate
//! on a dedicated writer thread:
//!
//! * [`conn`]: a replication connection (TCP or Unix socket), startup and queries;
//! * [`env`]: the process facts the connection options take (environment, password
//!   database, the password file);
//! * [`writer`]: the writer thread, which owns the segment files and runs fdatasync by
//!   policy, publishing the durable position;
//! * [`stream`]: the tokio driver of one `START_REPLICATION` session, whose rules live in
//!   the sans-IO `walsink_protocol::session::ReplicationSession`;
//! * `failover`: continuing on the server's timeline after a promotion, and the slot
//!   on a new server;
//! * [`receive`]: the daemon loop: start position, timeline following, reconnects with
//!   backoff, shutdown;
//! * `gap`: WAL the server no longer has: the missing range, and `--allow-gap`.
//!
//! It does no argument parsing and never exits the process; the binary maps
//! [`ReceiverError::kind`] to exit codes.
#![deny(missing_docs)]

pub mod conn;
pub mod env;
mod error;
mod failover;
mod gap;
pub mod run;
pub mod stream;
pub mod writer;

pub use env::process_env;
pub use error::{ErrorKind, ReceiverError};
pub use run::{ReceiveConfig, create_slot, drop_slot, receive};
