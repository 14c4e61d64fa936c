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

/// The fields are server text and are shown [`Escaped`]: a newline or other control
/// character the server put into them cannot start a line of walsink's log. The
/// `DETAIL` and `HINT` lines are walsink's own.
impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:  {}",
            Escaped(&self.severity),
            Escaped(&self.message)
        )?;
        if let Some(d) = &self.detail {
            write!(f, "\nDETAIL:  {}", Escaped(d))?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\nHINT:  {}", Escaped(h))?;
        }
        Ok(())
    }
}

/// Text from the server, shown so that it cannot forge a log line: control characters
/// (newline, carriage return, escape, the C1 controls) and the Unicode line and
/// paragraph separators are written as Rust escapes (`\n`, `\u{1b}`); a tab and
/// everything else is shown as it is.
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c != '\t' && (c.is_control() || c == '\u{2028}' || c == '\u{2029}') {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
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
        "server sent a message of type '{}' with invalid length {len} (limit {limit} bytes); the connection is not to a PostgreSQL server or is corrupted",
        tag.escape_default()
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
    #[error("malformed '{}' message from server: {reason}", tag.escape_default())]
    Malformed {
        /// Message type byte, as a char.
        tag: char,
        /// What was wrong.
        reason: String,
    },
    /// A message arrived that is not allowed in the current state.
    #[error("unexpected message '{}' from server while {state}", tag.escape_default())]
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
    /// The server asked for an authentication method (or let the client in without
    /// one) that `require_auth` or `channel_binding` does not allow. Nothing was sent.
    #[error(
        "authentication method requirement {option}=\"{requirement}\" failed: {reason}; nothing was sent to the server. If this server is the right one, allow its method in {option} (pg_hba.conf names it)"
    )]
    AuthNotAllowed {
        /// `require_auth` or `channel_binding`.
        option: &'static str,
        /// The option's value.
        requirement: String,
        /// What the server did, in libpq's words.
        reason: &'static str,
    },
    /// The server asked for an authentication method walsink does not implement.
    #[error(
        "the server requested an unsupported authentication method ({0}); use trust, password, md5 or scram-sha-256 for replication connections in pg_hba.conf"
    )]
    UnsupportedAuth(String),
    /// SCRAM failed on our side (bad server proof, bad message).
    #[error("SCRAM authentication failed: {0}")]
    Scram(String),
    /// The server sent more of something than walsink accepts: rows or bytes in a
    /// command's result, `ParameterStatus` messages during startup. PostgreSQL stays
    /// far below each limit; an endless reply must not exhaust memory.
    #[error(
        "the server sent {what} over walsink's limit of {limit}; the connection is not to a PostgreSQL server or it is broken"
    )]
    TooMuch {
        /// What was counted (`rows in a command's result`, ...).
        what: &'static str,
        /// The limit, with its unit.
        limit: String,
    },
    /// A replication command returned a result of the wrong shape.
    #[error("unexpected result from {command}: {reason}")]
    BadResult {
        /// The command.
        command: &'static str,
        /// What was wrong.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_text_cannot_start_a_log_line() {
        let e = ServerError {
            severity: "NOTICE".into(),
            code: "01000".into(),
            message: "a\nFORGED\r\u{1b}[31m\u{85}\u{2028}x\ty\\n".into(),
            detail: Some("d\ne".into()),
            hint: Some("h\n".into()),
        };
        assert_eq!(
            e.to_string(),
            "NOTICE:  a\\nFORGED\\r\\u{1b}[31m\\u{85}\\u{2028}x\ty\\n\nDETAIL:  d\\ne\nHINT:  h\\n"
        );
        assert_eq!(Escaped("plain ünïcode").to_string(), "plain ünïcode");
        let m = ProtocolError::Malformed {
            tag: '\n',
            reason: "x".into(),
        };
        assert_eq!(m.to_string(), "malformed '\\n' message from server: x");
    }
}
