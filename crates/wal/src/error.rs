use thiserror::Error;

/// Errors from parsing or validating WAL-level values.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WalError {
    /// An LSN string was not of the form `X/X` with two hexadecimal halves.
    #[error(
        "invalid LSN \"{0}\": expected two hexadecimal numbers separated by a slash, like 0/16B3748"
    )]
    InvalidLsn(String),
    /// A timeline ID was zero or not a number.
    #[error("invalid timeline ID \"{0}\": expected a positive integer")]
    InvalidTimeline(String),
    /// A WAL segment size was not a power of two between 1 MiB and 1 GiB.
    #[error("invalid WAL segment size {0} bytes: must be a power of two between 1 MiB and 1 GiB")]
    InvalidSegSize(u64),
    /// A timeline history file could not be parsed.
    #[error("invalid timeline history file, line {line}: {reason}")]
    InvalidHistory {
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
}
