//! Watching walsink's sources from outside the receiver: Prometheus metrics and a health
//! check over HTTP, and the systemd notify protocol.
//!
//! Everything here reads [`SourceState`]s (the receiver updates them where the values
//! change) when asked, and never writes them:
//!
//! * [`Sources`]: the named sources a process runs (one for `walsink receive`, the
//!   configured ones for `walsink run`, changed on reload);
//! * [`metrics`]: the Prometheus text of a set of sources (prometheus-client);
//! * [`http`]: [`MetricsServer`], serving `/metrics` and `/health` (hyper), hardened
//!   against slow or hostile clients (bounded requests, timeouts, a connection limit);
//! * [`notify`]: `READY=1`, `STATUS=`, `WATCHDOG=1` only while healthy, `STOPPING=1`.
#![deny(missing_docs)]

pub mod disk;
pub mod http;
pub mod metrics;
pub mod notify;
mod sources;

pub use http::MetricsServer;
pub use sources::Sources;
pub use walsink_receiver::SourceState;
