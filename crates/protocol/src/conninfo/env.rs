//! The process facts connection options default to, passed in by the caller.
//!
//! This crate reads no environment and no password database: the driver gathers the
//! values (walsink's receiver crate does it from the real process) and passes them as an
//! [`Env`].

use std::collections::HashMap;
use std::path::PathBuf;

/// Process environment and user facts, injected: this crate never reads them itself.
#[derive(Clone, Debug, Default)]
pub struct Env {
    /// Environment variables (only the `PG*` ones listed on [`super::ConnConfig::resolve`] are read).
    pub vars: HashMap<String, String>,
    /// The home directory, for the default `~/.pgpass`.
    pub home: Option<PathBuf>,
    /// The operating-system user name, the last-resort default user.
    pub os_user: Option<String>,
    /// Where the server's Unix socket lives by default (libpq's compiled-in
    /// `DEFAULT_PGSOCKET_DIR`). An empty path means `/tmp`.
    pub default_socket_dir: PathBuf,
}

impl Env {
    pub(super) fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    pub(super) fn socket_dir(&self) -> PathBuf {
        if self.default_socket_dir.as_os_str().is_empty() {
            PathBuf::from("/tmp")
        } else {
            self.default_socket_dir.clone()
        }
    }
}
