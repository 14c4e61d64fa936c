//! The PostgreSQL physical streaming-replication protocol, without I/O.
//!
//! This crate owns everything walsink says to and hears from a server, as pure
//! functions and state machines over byte buffers:
//!
//! * [`conninfo`]: connection options as libpq takes them (key=value strings, URIs,
//!   `PG*` environment variables, `.pgpass`), resolved into an ordered list of
//!   targets to try.
//! * [`frame`]: splitting the backend byte stream into messages, with a size ceiling.
//! * [`startup`]: the startup packet and the authentication exchange (trust, password,
//!   md5, SCRAM-SHA-256).
//! * [`query`]: simple-query result collection, the replication commands and their
//!   typed results (`IDENTIFY_SYSTEM`, `READ_REPLICATION_SLOT`, `TIMELINE_HISTORY`, ...).
//! * [`copy`]: the copy-both payloads: XLogData, primary keepalive, standby status update.
//! * [`session`]: one `START_REPLICATION` session as a state machine
//!   ([`session::ReplicationSession`]): the rules of the copy-both exchange (contiguity,
//!   `--endpos`, keepalives, status updates, the receive timeout, which flush position may
//!   be reported, both ends of the copy).
//! * [`notice`]: rate limiting for logging server notices.
//!
//! The contract: the protocol logic is deterministic, and it does no I/O and reads no
//! timestamps. It has no tokio dependency, opens no sockets and reads no clock: callers
//! pass time in (an [`std::time::Instant`] for deadlines, a wall-clock time only to stamp
//! status updates with). The thin async driver around it lives in `walsink-receiver`.
#![deny(missing_docs)]

pub mod conninfo;
pub mod copy;
mod error;
pub mod frame;
pub mod notice;
pub mod query;
pub mod session;
pub mod startup;
pub mod tls;

pub use error::{Escaped, ProtocolError, ServerError};
