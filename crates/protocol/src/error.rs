use std::fmt;

use thiserror::Error;

/// An `ErrorResponse` or `NoticeResponse` from the server, with the fields a user needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerError {
    /// `S`/`V`: ERROR, FATAL, PANIC, WARNING, ...
    pub severity: String,
    /// `C`: the five-character SQLSTATE.
    pub code: String,
    /// `M`: the primary message.
    pub message: String,
    /// `D`: optional detail.
    pub detail: Option<String>,
    /// `H`: optional hint.
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:  {}", self.severity, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, "\nDETAIL:  {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\nHINT:  {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {}

/// Everything that can go wrong while speaking the protocol, short of I/O.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The server reported an error.
    #[error("{0}")]
    Server(ServerError),
    /// A message header announced a length over [`crate::frame::MAX_MESSAGE_LEN`] or under 4.
    #[error(
        "server sent a message of type '{tag}' with invalid length {len} (limit {limit} bytes); the connection is not to a PostgreSQL server or is corrupted"
    )]
    BadLength {
        /// Message type byte, as a char.
        tag: char,
        /// The announced length.
        len: u64,
        /// The ceiling in force.
        limit: usize,
    },
    /// A message was shorter than its fields or otherwise malformed.
    #[error("malformed '{tag}' message from server: {reason}")]
    Malformed {
        /// Message type byte, as a char.
        tag: char,
        /// What was wrong.
        reason: String,
    },
    /// A message arrived that is not allowed in the current state.
    #[error("unexpected message '{tag}' from server while {state}")]
    Unexpected {
        /// Message type byte, as a char.
        tag: char,
        /// What the client was doing.
        state: &'static str,
    },
    /// The server asked for a password and none is available.
    #[error(
        "the server requested password authentication, but no password was supplied; set PGPASSWORD, add the password to ~/.pgpass, or use -W to be prompted"
    )]
    PasswordRequired,
    /// The server asked for an authentication method walsink does not implement.
    #[error(
        "the server requested an unsupported authentication method ({0}); use trust, password, md5 or scram-sha-256 for replication connections in pg_hba.conf"
    )]
    UnsupportedAuth(String),
    /// SCRAM failed on our side (bad server proof, bad message).
    #[error("SCRAM authentication failed: {0}")]
    Scram(String),
    /// A replication command returned a result of the wrong shape.
    #[error("unexpected result from {command}: {reason}")]
    BadResult {
        /// The command.
        command: &'static str,
        /// What was wrong.
        reason: String,
    },
}
