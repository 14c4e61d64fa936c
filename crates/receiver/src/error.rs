use std::fmt;

use walsink_archive::ArchiveError;
use walsink_protocol::{ProtocolError, ServerError};

/// What kind of failure ended a run, which decides whether walsink retries and which
/// exit code it reports. Kinds other than [`ErrorKind::Transient`] need a human.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Worth retrying: connection refused or lost, server shut down, timeouts.
    Transient,
    /// Password or SCRAM authentication failed, or no password was available.
    AuthFailed,
    /// No `pg_hba.conf` entry allows the replication connection, or the role lacks
    /// the REPLICATION attribute.
    NotPermitted,
    /// The named replication slot does not exist.
    SlotMissing,
    /// The replication slot is in use by another connection.
    SlotInUse,
    /// The WAL walsink needs has already been removed from the server.
    WalRemoved,
    /// The archive holds WAL of another database system (or segment size).
    SystemIdMismatch,
    /// Another walsink holds the archive directory's lock.
    ArchiveLocked,
    /// The archive's lock file was removed or replaced while walsink ran: another
    /// program is changing the directory, so walsink stopped writing.
    ArchiveLockLost,
    /// The archive directory is missing, unwritable or damaged, or a write or fsync
    /// failed.
    Archive,
    /// The archive's filesystem is full (`ENOSPC`) or the quota is exhausted
    /// (`EDQUOT`). Retried like [`ErrorKind::Transient`]: space may come back.
    DiskFull,
    /// The server is of an unsupported version or misbehaved; anything else.
    Fatal,
}

/// An error from the streaming loop, with the context a user needs.
#[derive(Debug)]
pub struct ReceiverError {
    kind: ErrorKind,
    message: String,
    sqlstate: Option<String>,
    server_message: Option<String>,
}

impl ReceiverError {
    /// Builds an error of a given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ReceiverError {
        ReceiverError {
            kind,
            message: message.into(),
            sqlstate: None,
            server_message: None,
        }
    }

    /// The SQLSTATE of the server error behind this one, if any.
    pub fn sqlstate(&self) -> Option<&str> {
        self.sqlstate.as_deref()
    }

    /// A retryable error.
    pub fn transient(message: impl Into<String>) -> ReceiverError {
        ReceiverError::new(ErrorKind::Transient, message)
    }

    /// A non-retryable error.
    pub fn fatal(message: impl Into<String>) -> ReceiverError {
        ReceiverError::new(ErrorKind::Fatal, message)
    }

    /// The kind, for retry decisions and exit codes.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The server's primary message behind this error (`requested WAL segment ... has
    /// already been removed`), if it came from the server.
    pub fn server_message(&self) -> Option<&str> {
        self.server_message.as_deref()
    }

    /// Whether the server refused to use the replication slot because it was invalidated
    /// (PostgreSQL 18 on: `can no longer access replication slot "..."`, SQLSTATE 55000,
    /// with a DETAIL naming the cause such as `wal_removed`). Such a slot never works
    /// again: it must be dropped and created anew. Before 18 the server accepts an
    /// invalidated physical slot and fails later, with `requested WAL segment ... has
    /// already been removed`, which is not this.
    pub fn is_slot_invalidated(&self) -> bool {
        self.sqlstate.as_deref() == Some("55000")
            && self
                .server_message
                .as_deref()
                .is_some_and(slot_invalidated_message)
    }

    /// The message without walsink's hint (everything before `HINT (walsink):`).
    pub fn summary(&self) -> &str {
        self.message
            .split_once("\nHINT (walsink):")
            .map_or(self.message.as_str(), |(head, _)| head)
    }

    /// Whether walsink should retry after this error (when looping).
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, ErrorKind::Transient | ErrorKind::DiskFull)
    }

    /// Prefixes the message with context.
    pub fn context(mut self, ctx: impl fmt::Display) -> ReceiverError {
        self.message = format!("{ctx}: {}", self.message);
        self
    }

    /// Classifies a server error by SQLSTATE and message.
    pub fn from_server(e: &ServerError, doing: &str) -> ReceiverError {
        let kind = classify_server_error(e);
        let mut message = if doing.is_empty() {
            e.to_string()
        } else {
            format!("{doing}: {e}")
        };
        let advice = match kind {
            ErrorKind::AuthFailed => {
                Some("check the user name and password (PGPASSWORD, ~/.pgpass or -W)")
            }
            ErrorKind::NotPermitted if e.code == "42501" => {
                Some("give the role the REPLICATION attribute: ALTER ROLE <user> REPLICATION")
            }
            ErrorKind::NotPermitted => Some(
                "add a \"host replication <user> <address> scram-sha-256\" line to pg_hba.conf and reload",
            ),
            ErrorKind::SlotMissing => {
                Some("create it with --create-slot, or name an existing slot with -S")
            }
            ErrorKind::SlotInUse => {
                Some("another receiver is streaming from this slot; stop it or use another slot")
            }
            ErrorKind::WalRemoved if e.code == "55000" => Some(
                "the replication slot was invalidated and the server will not stream through it any more: drop and re-create it (walsink receive -S <slot> --drop-slot, then --create-slot)",
            ),
            ErrorKind::WalRemoved => Some(
                "the server no longer has the WAL the archive needs; use a replication slot (-S) so it is kept, and start a new archive directory (this one has a gap)",
            ),
            _ => None,
        };
        if let Some(a) = advice {
            message.push_str("\nHINT (walsink):  ");
            message.push_str(a);
        }
        ReceiverError {
            kind,
            message,
            sqlstate: Some(e.code.clone()),
            server_message: Some(e.message.clone()),
        }
    }
}

fn classify_server_error(e: &ServerError) -> ErrorKind {
    match e.code.as_str() {
        "28P01" => ErrorKind::AuthFailed,
        "28000" if e.message.contains("authentication failed") => ErrorKind::AuthFailed,
        "28000" => ErrorKind::NotPermitted,
        "42501" => ErrorKind::NotPermitted,
        "42704" if e.message.contains("replication slot") => ErrorKind::SlotMissing,
        "55006" if e.message.contains("replication slot") => ErrorKind::SlotInUse,
        "58P01" if e.message.contains("has already been removed") => ErrorKind::WalRemoved,
        "55000" if slot_invalidated_message(&e.message) => ErrorKind::WalRemoved,
        // Server going away: shutdown, crash, admin termination, too many connections
        // during restart, recovery in progress, etc.
        c if c.starts_with("57") || c.starts_with("08") || c == "53300" || c == "XX000" => {
            ErrorKind::Transient
        }
        _ => ErrorKind::Fatal,
    }
}

/// The primary message of a server error for an invalidated replication slot (SQLSTATE
/// 55000): PostgreSQL 18's `can no longer access replication slot "..."`, or any message
/// calling the slot invalidated (`This slot has been invalidated ...`).
fn slot_invalidated_message(message: &str) -> bool {
    message.contains("can no longer") || message.contains("invalidated")
}

impl fmt::Display for ReceiverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ReceiverError {}

impl From<ArchiveError> for ReceiverError {
    fn from(e: ArchiveError) -> Self {
        let kind = match &e {
            _ if e.is_disk_full() => ErrorKind::DiskFull,
            ArchiveError::Locked { .. } => ErrorKind::ArchiveLocked,
            ArchiveError::LockLost { .. } => ErrorKind::ArchiveLockLost,
            ArchiveError::SystemIdMismatch { .. } | ArchiveError::SegSizeMismatch { .. } => {
                ErrorKind::SystemIdMismatch
            }
            _ => ErrorKind::Archive,
        };
        ReceiverError::new(kind, e.to_string())
    }
}

impl From<ProtocolError> for ReceiverError {
    fn from(e: ProtocolError) -> Self {
        match &e {
            ProtocolError::Server(se) => ReceiverError::from_server(se, "server error"),
            ProtocolError::PasswordRequired | ProtocolError::Scram(_) => {
                ReceiverError::new(ErrorKind::AuthFailed, e.to_string())
            }
            ProtocolError::UnsupportedAuth(_) => {
                ReceiverError::new(ErrorKind::NotPermitted, e.to_string())
            }
            _ => ReceiverError::fatal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_is_retried_other_archive_errors_are_not() {
        let io = |errno| ArchiveError::Io {
            path: "x".into(),
            op: "write to",
            source: std::io::Error::from_raw_os_error(errno),
        };
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let e = ReceiverError::from(io(errno));
            assert_eq!(e.kind(), ErrorKind::DiskFull);
            assert!(e.is_transient());
        }
        let e = ReceiverError::from(io(libc::EIO));
        assert_eq!(e.kind(), ErrorKind::Archive);
        assert!(!e.is_transient());
    }

    #[test]
    fn a_lost_archive_lock_has_its_own_kind_and_is_not_retried() {
        let e = ReceiverError::from(ArchiveError::LockLost {
            path: "d/walsink.lock".into(),
            how: "removed",
        });
        assert_eq!(e.kind(), ErrorKind::ArchiveLockLost);
        assert!(!e.is_transient());
        assert!(
            e.to_string()
                .starts_with("lock file \"d/walsink.lock\" was removed while walsink was running"),
            "{e}"
        );
        let link = ReceiverError::from(ArchiveError::NotARegularFile {
            path: "d/walsink.meta".into(),
            kind: "a FIFO",
        });
        assert_eq!(link.kind(), ErrorKind::Archive);
    }

    #[test]
    fn server_errors_keep_their_primary_message() {
        let se = ServerError {
            severity: "ERROR".into(),
            code: "58P01".into(),
            message: "requested WAL segment 000000010000000000000003 has already been removed"
                .into(),
            detail: None,
            hint: None,
        };
        let e = ReceiverError::from_server(&se, "streaming");
        assert_eq!(e.kind(), ErrorKind::WalRemoved);
        assert_eq!(e.server_message(), Some(se.message.as_str()));
        assert_eq!(
            e.summary(),
            "streaming: ERROR:  requested WAL segment 000000010000000000000003 has already been removed"
        );
        assert!(e.to_string().contains("\nHINT (walsink):  "));
    }
}
