//! The receiver's error type, and how a server error is classified.
//!
//! A server's messages are translated (`lc_messages`), so walsink never looks at their
//! text: a server error is classified by its SQLSTATE together with the [`Context`] it
//! answered (which command was running, or how far authentication had got), and for
//! one case the server's major version. The table is [`classify`]; the SQLSTATEs are
//! those PostgreSQL's sources use (`auth.c`, `slot.c`, `walsender.c`, `postinit.c`).
//!
//! [`ReceiverError`]'s `Display` is the whole message a user sees, the cause's text
//! included (as [`ArchiveError`]'s); `source()` gives the typed cause (a
//! [`ServerError`], [`ProtocolError`], [`ArchiveError`], `io::Error` or another
//! [`ReceiverError`]) for code that needs it. The binary maps [`ErrorKind`] to exit
//! codes; nothing here knows them.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;
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
    /// The server sent invalid WAL (a page header or a record CRC is wrong); nothing
    /// after the last valid record was reported flushed.
    InvalidWal,
    /// The archive directory is missing, unwritable or damaged, or a write or fsync
    /// failed.
    Archive,
    /// The archive's filesystem is full (`ENOSPC`) or the quota is exhausted
    /// (`EDQUOT`). Retried like [`ErrorKind::Transient`]: space may come back.
    DiskFull,
    /// TLS as the connection options require it could not be had: the server's
    /// certificate failed its check (unknown certificate authority, expired, revoked,
    /// host name not in it), the server refused TLS or the TLS handshake, or the
    /// certificate, key or revocation files are missing or unusable.
    Tls,
    /// The server is of an unsupported version or misbehaved; anything else.
    Fatal,
}

/// How far the startup exchange had got when the server refused the connection: the
/// same SQLSTATE means different things before and after walsink sent credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthStage {
    /// No credentials sent: the server has not asked for any (yet). A refusal here is
    /// `pg_hba.conf` (no entry, `reject`) or a method needing none (peer, ident, cert).
    NoCredentials,
    /// A password, md5 hash or SCRAM message was sent, and no `AuthenticationOk` came
    /// yet. A refusal here is the credentials (LDAP, PAM and RADIUS use SQLSTATE 28000
    /// rather than 28P01 for a wrong password).
    CredentialsSent,
    /// `AuthenticationOk` received: the server refuses the role itself (no LOGIN, no
    /// REPLICATION attribute) or has no room for it.
    Authenticated,
}

/// What the server's error answered: the connection phase or the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Context {
    /// The startup and authentication exchange.
    Startup(AuthStage),
    /// `IDENTIFY_SYSTEM`.
    IdentifySystem,
    /// `SHOW ...`.
    Show,
    /// `READ_REPLICATION_SLOT`.
    ReadReplicationSlot,
    /// `TIMELINE_HISTORY`.
    TimelineHistory,
    /// `CREATE_REPLICATION_SLOT`.
    CreateSlot,
    /// `DROP_REPLICATION_SLOT`.
    DropSlot,
    /// `START_REPLICATION`, before the server entered copy mode.
    StartReplication {
        /// Whether the command named a replication slot.
        slot: bool,
        /// The server's `server_version_num` (0 if unknown): PostgreSQL 18 refuses an
        /// invalidated slot here with SQLSTATE 55000, which earlier versions use only
        /// for a logical slot.
        server_version: u32,
    },
    /// The copy-both stream after `START_REPLICATION` succeeded.
    Streaming {
        /// Whether the stream runs through a replication slot.
        slot: bool,
    },
    /// The result set the server sends after the end of a historic timeline.
    EndOfTimeline,
    /// Any other command.
    Command,
}

impl Context {
    /// The context of a replication command walsink sends, from its keyword (walsink's
    /// own text, never the server's). `START_REPLICATION` needs more than its text:
    /// build [`Context::StartReplication`] directly.
    pub fn of_command(sql: &str) -> Context {
        let word = sql.split_ascii_whitespace().next().unwrap_or("");
        match word.to_ascii_uppercase().as_str() {
            "IDENTIFY_SYSTEM" => Context::IdentifySystem,
            "SHOW" => Context::Show,
            "READ_REPLICATION_SLOT" => Context::ReadReplicationSlot,
            "TIMELINE_HISTORY" => Context::TimelineHistory,
            "CREATE_REPLICATION_SLOT" => Context::CreateSlot,
            "DROP_REPLICATION_SLOT" => Context::DropSlot,
            _ => Context::Command,
        }
    }

    /// What walsink says it was doing, before the server's message.
    fn doing(self) -> &'static str {
        match self {
            Context::Startup(_) => "",
            Context::StartReplication { .. } => "could not start WAL streaming",
            Context::Streaming { .. } => "unexpected termination of replication stream",
            Context::EndOfTimeline => "error at end of timeline",
            _ => "server error",
        }
    }
}

/// First version that refuses an invalidated slot at `START_REPLICATION` (55000).
const REFUSES_INVALIDATED_SLOT: u32 = 180000;

/// The kind of a server error with SQLSTATE `code` answering `context`.
///
/// The SQLSTATEs, from PostgreSQL's sources:
/// * 28P01 `password authentication failed` (password, md5, SCRAM);
/// * 28000 everything else `auth.c` refuses with, before any credentials (no or a
///   rejecting `pg_hba.conf` entry, peer, ident, cert) or after them (LDAP, PAM,
///   RADIUS), and `postinit.c` after authentication (role cannot log in);
/// * 42501 a role without REPLICATION (`postinit.c`);
/// * 42704 / 55006 slot missing / active for another PID (`ReplicationSlotAcquire`);
/// * 55000 an invalidated slot (`ReplicationSlotAcquire`, PostgreSQL 18 on), but also
///   a logical slot given to physical replication and a stopping walsender;
/// * 58P01 `requested WAL segment ... has already been removed` (`errcode_for_file_access`
///   on ENOENT); the same code from `TIMELINE_HISTORY` is a missing history file.
pub fn classify(code: &str, context: Context) -> ErrorKind {
    use Context as C;
    match (code, context) {
        ("28P01", _) => ErrorKind::AuthFailed,
        ("28000", C::Startup(AuthStage::CredentialsSent)) => ErrorKind::AuthFailed,
        ("28000", _) => ErrorKind::NotPermitted,
        ("42501", C::Startup(_) | C::CreateSlot | C::DropSlot) => ErrorKind::NotPermitted,
        ("42704", C::StartReplication { slot: true, .. } | C::DropSlot) => ErrorKind::SlotMissing,
        ("55006", C::StartReplication { slot: true, .. } | C::DropSlot) => ErrorKind::SlotInUse,
        ("58P01", C::StartReplication { .. } | C::Streaming { .. }) => ErrorKind::WalRemoved,
        (
            "55000",
            C::StartReplication {
                slot: true,
                server_version,
            },
        ) if server_version >= REFUSES_INVALIDATED_SLOT => ErrorKind::WalRemoved,
        // Server going away: shutdown, crash, admin termination, too many connections
        // during restart, recovery in progress; internal errors without a code.
        (c, _) if c.starts_with("57") || c.starts_with("08") || c == "53300" || c == "XX000" => {
            ErrorKind::Transient
        }
        _ => ErrorKind::Fatal,
    }
}

/// Why connecting to one target failed.
#[derive(Debug)]
pub enum TargetFailure {
    /// The connection or the startup failed.
    Failed(ReceiverError),
    /// The server connected but does not qualify for `target_session_attrs`.
    Disqualified(&'static str),
}

/// Every target of a connection string failed or did not qualify.
#[derive(Debug)]
pub struct ConnectFailure {
    /// Each target, as named in messages, and why it failed, in the order tried.
    pub targets: Vec<(String, TargetFailure)>,
    /// What to say after the list, if anything (`HINT (walsink): ...`).
    pub hint: Option<String>,
}

impl ConnectFailure {
    /// The failure that decides the kind: the first that needs a human; else the last
    /// error (all transient).
    fn decisive(&self) -> Option<&ReceiverError> {
        let errors = || {
            self.targets.iter().filter_map(|(_, f)| match f {
                TargetFailure::Failed(e) => Some(e),
                TargetFailure::Disqualified(_) => None,
            })
        };
        errors()
            .find(|e| !e.is_transient())
            .or_else(|| errors().next_back())
    }
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (target, why)) in self.targets.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "connection to server {target} failed: ")?;
            match why {
                TargetFailure::Failed(e) => write!(f, "{e}")?,
                TargetFailure::Disqualified(w) => f.write_str(w)?,
            }
        }
        if let Some(h) = &self.hint {
            write!(f, "\nHINT (walsink):  {h}")?;
        }
        Ok(())
    }
}

/// An error of the receiver, with the context a user needs.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReceiverError {
    /// The server answered with an `ErrorResponse`.
    #[error("{}", server_text(.kind, .context, .doing, .error))]
    Server {
        /// The classification ([`classify`]).
        kind: ErrorKind,
        /// What the error answered.
        context: Context,
        /// What walsink says it was doing (`could not run "..."`), empty for none.
        doing: String,
        /// The server's error.
        #[source]
        error: Box<ServerError>,
    },
    /// The server asked for a password and none was available: the binary may prompt
    /// for one and try again.
    #[error("{}", ProtocolError::PasswordRequired)]
    PasswordRequired,
    /// The server's authentication request cannot be answered: a method walsink does
    /// not implement, or a SCRAM exchange that failed on walsink's side.
    #[error("{source}")]
    Authentication {
        /// [`ErrorKind::AuthFailed`] or [`ErrorKind::NotPermitted`].
        kind: ErrorKind,
        /// What the protocol layer reported.
        source: ProtocolError,
    },
    /// The server broke the protocol (malformed, oversized or misplaced message, or a
    /// result of the wrong shape). Never retried.
    #[error("{source}")]
    Protocol {
        /// What was wrong.
        source: ProtocolError,
    },
    /// The connection could not be made, or was lost. Retried.
    #[error("{message}")]
    Network {
        /// What happened, the OS error's text included.
        message: String,
        /// The OS error, if there was one.
        source: Option<std::io::Error>,
    },
    /// No target of the connection string connected and qualified.
    #[error("{0}")]
    Connect(Box<ConnectFailure>),
    /// The archive directory refused an operation.
    #[error("{source}")]
    Archive {
        /// The archive's error.
        #[from]
        source: ArchiveError,
    },
    /// The writer could not write `.walsink.meta` or a history file (the writer writes
    /// every file in the archive directory, and shares its errors).
    #[error("{source}")]
    ArchiveWrite {
        /// The archive's error, shared with the writer.
        source: Arc<ArchiveError>,
    },
    /// The writer thread failed (a write, fsync or segment completion).
    #[error("could not write WAL: {source}")]
    WriteFailed {
        /// The writer's error, shared with the writer thread.
        source: Arc<ArchiveError>,
    },
    /// Another error, with what walsink was doing.
    #[error("{context}: {source}")]
    Context {
        /// What walsink was doing.
        context: String,
        /// The error.
        source: Box<ReceiverError>,
    },
    /// Anything else: a kind and a message, and the error behind it if any.
    #[error("{message}")]
    Other {
        /// The kind.
        kind: ErrorKind,
        /// The message, complete.
        message: String,
        /// The error it came from.
        #[source]
        cause: Option<Box<ReceiverError>>,
    },
}

fn server_text(kind: &ErrorKind, context: &Context, doing: &str, e: &ServerError) -> String {
    let mut s = if doing.is_empty() {
        e.to_string()
    } else {
        format!("{doing}: {e}")
    };
    if let Some(h) = hint(*kind, *context, &e.code) {
        s.push_str("\nHINT (walsink):  ");
        s.push_str(h);
    }
    s
}

/// walsink's advice for a classified server error.
fn hint(kind: ErrorKind, context: Context, code: &str) -> Option<&'static str> {
    Some(match kind {
        ErrorKind::AuthFailed => "check the user name and password (PGPASSWORD, ~/.pgpass or -W)",
        ErrorKind::NotPermitted if code == "42501" => {
            "give the role the REPLICATION attribute: ALTER ROLE <user> REPLICATION"
        }
        ErrorKind::NotPermitted if context == Context::Startup(AuthStage::Authenticated) => {
            "the server accepted the credentials but refuses the role: check that it exists and has the LOGIN attribute"
        }
        ErrorKind::NotPermitted => {
            "add a \"host replication <user> <address> scram-sha-256\" line to pg_hba.conf and reload"
        }
        ErrorKind::SlotMissing => "create it with --create-slot, or name an existing slot with -S",
        ErrorKind::SlotInUse => {
            "another receiver is streaming from this slot; stop it or use another slot"
        }
        ErrorKind::WalRemoved if code == "55000" => {
            "the replication slot was invalidated and the server will not stream through it any more: drop and re-create it (walsink receive -S <slot> --drop-slot, then --create-slot)"
        }
        ErrorKind::WalRemoved => {
            "the server no longer has the WAL the archive needs; use a replication slot (-S) so it is kept, and start a new archive directory (this one has a gap)"
        }
        _ => return None,
    })
}

impl ReceiverError {
    /// Builds an error of a given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ReceiverError {
        ReceiverError::Other {
            kind,
            message: message.into(),
            cause: None,
        }
    }

    /// Builds an error of a given kind from `cause`, with a message of its own (which
    /// usually quotes the cause's [`summary`](Self::summary)).
    pub fn with_cause(
        kind: ErrorKind,
        message: impl Into<String>,
        cause: ReceiverError,
    ) -> ReceiverError {
        ReceiverError::Other {
            kind,
            message: message.into(),
            cause: Some(Box::new(cause)),
        }
    }

    /// Keeps `cause` as the source of an error whose message was built from it (a
    /// [`ReceiverError::Other`] without a cause yet); any other error is returned as is.
    pub fn because(self, cause: ReceiverError) -> ReceiverError {
        match self {
            ReceiverError::Other {
                kind,
                message,
                cause: None,
            } => ReceiverError::with_cause(kind, message, cause),
            other => other,
        }
    }

    /// A retryable error.
    pub fn transient(message: impl Into<String>) -> ReceiverError {
        ReceiverError::new(ErrorKind::Transient, message)
    }

    /// A non-retryable error.
    pub fn fatal(message: impl Into<String>) -> ReceiverError {
        ReceiverError::new(ErrorKind::Fatal, message)
    }

    /// A failed or lost connection (retried): `what` happened because of `source`.
    pub fn network(what: impl fmt::Display, source: std::io::Error) -> ReceiverError {
        let message = format!("{what}: {source}");
        ReceiverError::Network {
            message,
            source: Some(source),
        }
    }

    /// The writer thread failed.
    pub fn write_failed(source: Arc<ArchiveError>) -> ReceiverError {
        ReceiverError::WriteFailed { source }
    }

    /// A server error answering `context`, classified by SQLSTATE and context.
    pub fn from_server(e: &ServerError, context: Context) -> ReceiverError {
        ReceiverError::from_server_doing(e, context, context.doing())
    }

    /// [`from_server`](Self::from_server), saying what walsink was doing in its own
    /// words (`could not run "..."`).
    pub fn from_server_doing(
        e: &ServerError,
        context: Context,
        doing: impl Into<String>,
    ) -> ReceiverError {
        ReceiverError::Server {
            kind: classify(&e.code, context),
            context,
            doing: doing.into(),
            error: Box::new(e.clone()),
        }
    }

    /// The error that decides this one's kind: itself, or without the prefixes of
    /// [`context`](Self::context), or for a failed connection the target's error that
    /// needs a human most.
    pub fn primary(&self) -> &ReceiverError {
        match self {
            ReceiverError::Context { source, .. } => source.primary(),
            ReceiverError::Connect(c) => c.decisive().map_or(self, ReceiverError::primary),
            _ => self,
        }
    }

    /// The kind, for retry decisions and exit codes.
    pub fn kind(&self) -> ErrorKind {
        match self.primary() {
            ReceiverError::Server { kind, .. }
            | ReceiverError::Authentication { kind, .. }
            | ReceiverError::Other { kind, .. } => *kind,
            ReceiverError::PasswordRequired => ErrorKind::AuthFailed,
            ReceiverError::Protocol { .. } => ErrorKind::Fatal,
            ReceiverError::Network { .. } | ReceiverError::Connect(_) => ErrorKind::Transient,
            ReceiverError::Archive { source } => archive_kind(source),
            ReceiverError::WriteFailed { source } => archive_kind(source),
            ReceiverError::ArchiveWrite { source } => archive_kind(source),
            ReceiverError::Context { source, .. } => source.kind(),
        }
    }

    /// The server error behind this one, if any.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self.primary() {
            ReceiverError::Server { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The SQLSTATE of the server error behind this one, if any.
    pub fn sqlstate(&self) -> Option<&str> {
        self.server_error().map(|e| e.code.as_str())
    }

    /// The server's primary message behind this error (`requested WAL segment ... has
    /// already been removed`), if it came from the server. For showing, never for
    /// deciding: it is translated.
    pub fn server_message(&self) -> Option<&str> {
        self.server_error().map(|e| e.message.as_str())
    }

    /// Whether the server refused to use the replication slot because it was
    /// invalidated: SQLSTATE 55000 answering `START_REPLICATION` with a slot, from
    /// PostgreSQL 18 on (`can no longer access replication slot "..."`). Such a slot
    /// never works again: it must be dropped and created anew. Before 18 the server
    /// accepts an invalidated physical slot and fails later with 58P01 (`requested WAL
    /// segment ... has already been removed`), which is not this.
    pub fn is_slot_invalidated(&self) -> bool {
        matches!(
            self.primary(),
            ReceiverError::Server {
                kind: ErrorKind::WalRemoved,
                context: Context::StartReplication { slot: true, .. },
                error,
                ..
            } if error.code == "55000"
        )
    }

    /// The message without walsink's hint (everything before `HINT (walsink):`).
    pub fn summary(&self) -> String {
        let mut s = self.to_string();
        if let Some(at) = s.find("\nHINT (walsink):") {
            s.truncate(at);
        }
        s
    }

    /// Whether walsink should retry after this error (when looping).
    pub fn is_transient(&self) -> bool {
        matches!(self.kind(), ErrorKind::Transient | ErrorKind::DiskFull)
    }

    /// Prefixes the message with context.
    pub fn context(self, ctx: impl fmt::Display) -> ReceiverError {
        ReceiverError::Context {
            context: ctx.to_string(),
            source: Box::new(self),
        }
    }
}

fn archive_kind(e: &ArchiveError) -> ErrorKind {
    match e {
        _ if e.is_disk_full() => ErrorKind::DiskFull,
        ArchiveError::Locked { .. } => ErrorKind::ArchiveLocked,
        ArchiveError::LockLost { .. } => ErrorKind::ArchiveLockLost,
        ArchiveError::SystemIdMismatch { .. } | ArchiveError::SegSizeMismatch { .. } => {
            ErrorKind::SystemIdMismatch
        }
        ArchiveError::InvalidWal { .. } | ArchiveError::InvalidArchivedRecord { .. } => {
            ErrorKind::InvalidWal
        }
        _ => ErrorKind::Archive,
    }
}

/// A failed archive request to the writer (pin, history file, gap record).
impl From<Arc<ArchiveError>> for ReceiverError {
    fn from(source: Arc<ArchiveError>) -> Self {
        ReceiverError::ArchiveWrite { source }
    }
}

impl From<ProtocolError> for ReceiverError {
    fn from(e: ProtocolError) -> Self {
        match e {
            ProtocolError::Server(se) => ReceiverError::from_server(&se, Context::Command),
            ProtocolError::PasswordRequired => ReceiverError::PasswordRequired,
            ProtocolError::Scram(_) | ProtocolError::AuthNotAllowed { .. } => {
                ReceiverError::Authentication {
                    kind: ErrorKind::AuthFailed,
                    source: e,
                }
            }
            ProtocolError::UnsupportedAuth(_) => ReceiverError::Authentication {
                kind: ErrorKind::NotPermitted,
                source: e,
            },
            other => ReceiverError::Protocol { source: other },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str, message: &str) -> ServerError {
        ServerError {
            severity: "ERROR".into(),
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    const START_SLOT_15: Context = Context::StartReplication {
        slot: true,
        server_version: 150018,
    };
    const START_SLOT_18: Context = Context::StartReplication {
        slot: true,
        server_version: 180006,
    };
    const START_NO_SLOT: Context = Context::StartReplication {
        slot: false,
        server_version: 180006,
    };

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
            let e = ReceiverError::write_failed(Arc::new(io(errno)));
            assert_eq!(e.kind(), ErrorKind::DiskFull);
        }
        let e = ReceiverError::from(io(libc::EIO));
        assert_eq!(e.kind(), ErrorKind::Archive);
        assert!(!e.is_transient());
        assert!(std::error::Error::source(&e).is_some());
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
        // The writer thread's copy of the same error.
        let shared = ReceiverError::write_failed(Arc::new(ArchiveError::LockLost {
            path: "d/walsink.lock".into(),
            how: "removed",
        }));
        assert_eq!(shared.kind(), ErrorKind::ArchiveLockLost);
    }

    #[test]
    fn server_errors_keep_their_primary_message() {
        let se = server(
            "58P01",
            "requested WAL segment 000000010000000000000003 has already been removed",
        );
        let e = ReceiverError::from_server(&se, Context::Streaming { slot: false });
        assert_eq!(e.kind(), ErrorKind::WalRemoved);
        assert_eq!(e.server_message(), Some(se.message.as_str()));
        assert_eq!(
            e.summary(),
            "unexpected termination of replication stream: ERROR:  requested WAL segment 000000010000000000000003 has already been removed"
        );
        assert!(e.to_string().contains("\nHINT (walsink):  "));
        let source = std::error::Error::source(&e).expect("the server error is the source");
        assert_eq!(source.to_string(), se.to_string());
    }

    /// The classification never reads the message: a translated one (or none) gives
    /// the same kind and hint, and each SQLSTATE means what its context says.
    #[test]
    fn classification_uses_sqlstate_and_context_only() {
        use AuthStage::*;
        let cases: &[(&str, Context, ErrorKind)] = &[
            (
                "28P01",
                Context::Startup(CredentialsSent),
                ErrorKind::AuthFailed,
            ),
            (
                "28000",
                Context::Startup(CredentialsSent),
                ErrorKind::AuthFailed,
            ),
            (
                "28000",
                Context::Startup(NoCredentials),
                ErrorKind::NotPermitted,
            ),
            (
                "28000",
                Context::Startup(Authenticated),
                ErrorKind::NotPermitted,
            ),
            (
                "42501",
                Context::Startup(Authenticated),
                ErrorKind::NotPermitted,
            ),
            // A WAL file the server may not read is its problem, not the role's.
            ("42501", Context::Streaming { slot: true }, ErrorKind::Fatal),
            ("42704", START_SLOT_15, ErrorKind::SlotMissing),
            ("42704", Context::DropSlot, ErrorKind::SlotMissing),
            ("42704", Context::Command, ErrorKind::Fatal),
            ("55006", START_SLOT_15, ErrorKind::SlotInUse),
            ("55006", Context::DropSlot, ErrorKind::SlotInUse),
            ("58P01", START_NO_SLOT, ErrorKind::WalRemoved),
            (
                "58P01",
                Context::Streaming { slot: true },
                ErrorKind::WalRemoved,
            ),
            // A history file the server cannot open is not removed WAL.
            ("58P01", Context::TimelineHistory, ErrorKind::Fatal),
            ("55000", START_SLOT_18, ErrorKind::WalRemoved),
            // Before 18, 55000 here is a logical slot given to physical replication.
            ("55000", START_SLOT_15, ErrorKind::Fatal),
            ("55000", START_NO_SLOT, ErrorKind::Fatal),
            (
                "57P01",
                Context::Streaming { slot: true },
                ErrorKind::Transient,
            ),
            (
                "57P03",
                Context::Startup(NoCredentials),
                ErrorKind::Transient,
            ),
            (
                "53300",
                Context::Startup(Authenticated),
                ErrorKind::Transient,
            ),
            ("42710", Context::CreateSlot, ErrorKind::Fatal),
        ];
        for &(code, ctx, kind) in cases {
            for message in ["", "das angeforderte WAL-Segment wurde schon entfernt"] {
                let e = ReceiverError::from_server(&server(code, message), ctx);
                assert_eq!(e.kind(), kind, "{code} in {ctx:?}");
                assert_eq!(e.sqlstate(), Some(code));
            }
        }
        assert!(
            ReceiverError::from_server(&server("55000", "x"), START_SLOT_18).is_slot_invalidated()
        );
        assert!(
            !ReceiverError::from_server(&server("58P01", "x"), START_SLOT_18).is_slot_invalidated()
        );
    }

    #[test]
    fn hints_follow_the_classification() {
        let hint_of = |code, ctx| {
            let m = ReceiverError::from_server(&server(code, "x"), ctx).to_string();
            m.split_once("\nHINT (walsink):  ")
                .map(|(_, h)| h.to_owned())
        };
        let no_creds = Context::Startup(AuthStage::NoCredentials);
        assert!(
            hint_of("28000", no_creds)
                .unwrap()
                .contains("pg_hba.conf and reload")
        );
        assert!(
            hint_of("42501", Context::Startup(AuthStage::Authenticated))
                .unwrap()
                .contains("REPLICATION attribute")
        );
        assert!(hint_of("28P01", no_creds).unwrap().contains("PGPASSWORD"));
        assert!(
            hint_of("55000", START_SLOT_18)
                .unwrap()
                .contains("--drop-slot")
        );
        assert!(
            hint_of("58P01", START_NO_SLOT)
                .unwrap()
                .contains("replication slot (-S)")
        );
        assert_eq!(hint_of("XX000", START_NO_SLOT), None);
    }

    #[test]
    fn an_error_built_from_another_keeps_it_as_its_source() {
        let cause =
            ReceiverError::from_server(&server("58P01", "x"), Context::Streaming { slot: false });
        let e = ReceiverError::new(ErrorKind::WalRemoved, "the server no longer has WAL")
            .because(cause);
        assert_eq!(e.to_string(), "the server no longer has WAL");
        let source = std::error::Error::source(&e).expect("a source");
        assert!(
            source.to_string().starts_with("unexpected termination"),
            "{source}"
        );
        // And down to the server's error.
        assert!(source.source().is_some());
    }

    #[test]
    fn commands_name_their_context() {
        assert_eq!(
            Context::of_command("IDENTIFY_SYSTEM"),
            Context::IdentifySystem
        );
        assert_eq!(
            Context::of_command("DROP_REPLICATION_SLOT \"s\" WAIT"),
            Context::DropSlot
        );
        assert_eq!(
            Context::of_command("CREATE_REPLICATION_SLOT \"s\" PHYSICAL RESERVE_WAL"),
            Context::CreateSlot
        );
        assert_eq!(Context::of_command("SHOW wal_segment_size"), Context::Show);
        assert_eq!(
            Context::of_command("READ_REPLICATION_SLOT s"),
            Context::ReadReplicationSlot
        );
        assert_eq!(
            Context::of_command("TIMELINE_HISTORY 2"),
            Context::TimelineHistory
        );
        assert_eq!(Context::of_command("BASE_BACKUP"), Context::Command);
    }

    #[test]
    fn a_failed_connection_is_as_bad_as_its_worst_target() {
        let refused = || {
            ReceiverError::network(
                "could not connect",
                std::io::Error::from_raw_os_error(libc::ECONNREFUSED),
            )
        };
        let e = ReceiverError::Connect(Box::new(ConnectFailure {
            targets: vec![
                ("a".into(), TargetFailure::Failed(refused())),
                (
                    "b".into(),
                    TargetFailure::Failed(ReceiverError::PasswordRequired),
                ),
                (
                    "c".into(),
                    TargetFailure::Disqualified("session is read-only"),
                ),
            ],
            hint: None,
        }));
        assert_eq!(e.kind(), ErrorKind::AuthFailed);
        assert!(matches!(e.primary(), ReceiverError::PasswordRequired));
        let m = e.to_string();
        assert!(
            m.starts_with("connection to server a failed: could not connect: "),
            "{m}"
        );
        assert!(m.contains("\nconnection to server b failed: the server requested password authentication, but no password was supplied"), "{m}");
        assert!(
            m.ends_with("\nconnection to server c failed: session is read-only"),
            "{m}"
        );

        let e = ReceiverError::Connect(Box::new(ConnectFailure {
            targets: vec![(
                "c".into(),
                TargetFailure::Disqualified("session is read-only"),
            )],
            hint: Some("no server qualifies".into()),
        }));
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert!(
            e.to_string()
                .ends_with("\nHINT (walsink):  no server qualifies")
        );
        // Context keeps the kind.
        let e = ReceiverError::PasswordRequired.context("while trying");
        assert!(matches!(e.primary(), ReceiverError::PasswordRequired));
        assert_eq!(e.kind(), ErrorKind::AuthFailed);
    }
}
