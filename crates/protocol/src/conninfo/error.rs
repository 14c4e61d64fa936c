//! Why a connection string or the options it resolves to are unusable.

/// Why a connection string or the options it resolves to are unusable.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnInfoError {
    /// A keyword libpq does not know.
    #[error(
        "invalid connection option \"{keyword}\"; check its spelling against the libpq connection keywords (host, port, user, dbname, sslmode, ...)"
    )]
    InvalidOption {
        /// The unknown keyword.
        keyword: String,
    },
    /// A `keyword=value` string had a word not followed by `=`.
    #[error(
        "missing \"=\" after \"{keyword}\" in connection info string; write options as keyword=value and quote values containing spaces, as in keyword='some value'"
    )]
    MissingEquals {
        /// The word that lacks its `=`.
        keyword: String,
    },
    /// A single-quoted value ran to the end of the string.
    #[error(
        "unterminated quoted string in connection info string; close the value with a single quote, and write \\' for a quote inside it"
    )]
    UnterminatedQuote,
    /// A `[` in a URI host list without its `]`.
    #[error(
        "end of string reached when looking for matching \"]\" in IPv6 host address in URI; write IPv6 hosts as [address]"
    )]
    UnterminatedIpv6,
    /// `[]` in a URI host list.
    #[error("IPv6 host address may not be empty in URI; put an address between the brackets")]
    EmptyIpv6,
    /// Something other than `:port`, `/`, `?` or `,` after a bracketed IPv6 host.
    #[error(
        "unexpected character \"{found}\" at position {position} in URI (expected \":\" or \"/\"); a bracketed IPv6 host may only be followed by :port, /dbname, ?parameters or a comma"
    )]
    UnexpectedUriChar {
        /// The offending character.
        found: char,
        /// Its 1-based byte position in the whole URI.
        position: usize,
    },
    /// A `%` not followed by two hexadecimal digits.
    #[error(
        "invalid percent-encoded token in URI {component}: \"{value}\"; a '%' must be followed by two hex digits (write a literal '%' as %25)"
    )]
    InvalidPercentEncoding {
        /// Which part of the URI (user, password, host, port, dbname, query parameter).
        component: String,
        /// The raw text (redacted for passwords).
        value: String,
    },
    /// `%00` in a URI.
    #[error(
        "forbidden value %00 in percent-encoded URI {component}; NUL bytes cannot be passed to the server, remove it"
    )]
    PercentEncodedNul {
        /// Which part of the URI.
        component: String,
    },
    /// Percent-decoding produced bytes that are not UTF-8.
    #[error(
        "percent-decoded URI {component} is not valid UTF-8; percent-encode the UTF-8 bytes of the text"
    )]
    PercentDecodedNotUtf8 {
        /// Which part of the URI.
        component: String,
    },
    /// A URI query parameter without `=`.
    #[error(
        "missing key/value separator \"=\" in URI query parameter: \"{param}\"; write parameters as ?keyword=value&keyword2=value2"
    )]
    MissingQuerySeparator {
        /// The parameter text.
        param: String,
    },
    /// A URI query parameter with two `=`.
    #[error(
        "extra key/value separator \"=\" in URI query parameter: \"{keyword}\"; percent-encode an '=' inside a value as %3D"
    )]
    ExtraQuerySeparator {
        /// The parameter's keyword.
        keyword: String,
    },
    /// A URI query parameter that is not a libpq keyword.
    #[error(
        "invalid URI query parameter: \"{keyword}\"; query parameters must be libpq connection keywords such as host, port, sslmode or application_name"
    )]
    InvalidUriQueryParameter {
        /// The unknown keyword.
        keyword: String,
    },
    /// `host` and `hostaddr` list different numbers of entries.
    #[error(
        "could not match {hosts} host names to {hostaddrs} hostaddr values; give as many comma-separated host names as hostaddr values"
    )]
    HostCountMismatch {
        /// Entries in `host`.
        hosts: usize,
        /// Entries in `hostaddr`.
        hostaddrs: usize,
    },
    /// `port` lists neither one port nor one per host.
    #[error(
        "could not match {ports} port numbers to {hosts} hosts; give one port for all hosts or one per host (an empty entry means 5432)"
    )]
    PortCountMismatch {
        /// Entries in `port`.
        ports: usize,
        /// Number of hosts.
        hosts: usize,
    },
    /// A port that is not an integer in 1..=65535.
    #[error("invalid port number: \"{value}\"; a port must be an integer from 1 to 65535")]
    InvalidPort {
        /// The port text.
        value: String,
    },
    /// A `hostaddr` entry that is not a numeric IP address.
    #[error(
        "could not parse network address \"{value}\"; hostaddr takes numeric IPv4 or IPv6 addresses only (put host names in host)"
    )]
    InvalidHostaddr {
        /// The entry text.
        value: String,
    },
    /// An integer option that is not an integer.
    #[error(
        "invalid integer value \"{value}\" for connection option \"{keyword}\"; give a whole number"
    )]
    InvalidInteger {
        /// The option.
        keyword: String,
        /// Its text.
        value: String,
    },
    /// An unknown `sslmode`.
    #[error(
        "invalid sslmode value: \"{value}\"; use disable, allow, prefer, require, verify-ca or verify-full"
    )]
    InvalidSslMode {
        /// The value given.
        value: String,
    },
    /// An unknown `channel_binding`.
    #[error("invalid channel_binding value: \"{value}\"; use disable, prefer or require")]
    InvalidChannelBinding {
        /// The value given.
        value: String,
    },
    /// An unknown `gssencmode`.
    #[error("invalid gssencmode value: \"{value}\"; use disable, prefer or require")]
    InvalidGssEncMode {
        /// The value given.
        value: String,
    },
    /// An unknown method in `require_auth`.
    #[error(
        "invalid require_auth value: \"{value}\"; use a comma-separated list of password, md5, gss, sspi, scram-sha-256 and none, or a list of them each preceded by ! to allow all others"
    )]
    InvalidRequireAuth {
        /// The method given.
        value: String,
    },
    /// `require_auth` mixes `!method` and `method`.
    #[error(
        "{}require_auth method \"{method}\" cannot be mixed with {} methods; list either the methods to allow or, each preceded by !, the methods to refuse",
        if *negated { "negative " } else { "" },
        if *negated { "non-negative" } else { "negative" }
    )]
    RequireAuthMixed {
        /// The element that does not fit the ones before it.
        method: String,
        /// Whether that element is the negated one.
        negated: bool,
    },
    /// A method named twice in `require_auth`.
    #[error(
        "require_auth method \"{method}\" is specified more than once; a duplicate probably hides a typo, name each method once"
    )]
    RequireAuthDuplicate {
        /// The element named again.
        method: String,
    },
    /// An option asks for a protection walsink cannot give (TLS, channel binding,
    /// GSSAPI encryption). walsink refuses rather than connect with less.
    #[error("{option}={value} {why}; {fix}")]
    Unsupported {
        /// The option.
        option: &'static str,
        /// Its value.
        value: String,
        /// What it needs that walsink lacks.
        why: &'static str,
        /// What to do instead.
        fix: &'static str,
    },
    /// An option with a fixed set of values got another one.
    #[error("invalid {option} value: \"{value}\"; use {allowed}")]
    InvalidValue {
        /// The option.
        option: &'static str,
        /// The value given.
        value: String,
        /// The values it takes.
        allowed: &'static str,
    },
    /// An `sslmode` too weak for another option (libpq's wording).
    #[error("weak sslmode \"{sslmode}\" may not be used with {with} (use {stronger})")]
    WeakSslMode {
        /// The sslmode in effect.
        sslmode: &'static str,
        /// The option that needs more (`sslrootcert=system`, `sslnegotiation=direct`).
        with: &'static str,
        /// The modes that would do.
        stronger: &'static str,
    },
    /// `ssl_min_protocol_version` above `ssl_max_protocol_version`.
    #[error(
        "invalid SSL protocol version range: ssl_min_protocol_version={min} is above ssl_max_protocol_version={max}; lower the minimum or raise the maximum"
    )]
    InvalidTlsRange {
        /// The minimum given.
        min: &'static str,
        /// The maximum given.
        max: &'static str,
    },
    /// `channel_binding=require` with `sslmode=disable`: every connection would fail.
    #[error(
        "channel_binding=require needs TLS (SCRAM-SHA-256-PLUS binds to the TLS channel), but sslmode=disable never uses it; use sslmode=require or stronger, or channel_binding=prefer"
    )]
    ChannelBindingWithoutTls,
    /// An unknown `target_session_attrs`.
    #[error(
        "invalid target_session_attrs value: \"{value}\"; use any, read-write, read-only, primary, standby or prefer-standby"
    )]
    InvalidTargetSessionAttrs {
        /// The value given.
        value: String,
    },
    /// No `user`, no `PGUSER`, and the operating-system user is unknown.
    #[error(
        "could not determine the user name to connect as; set user= in the connection options or the PGUSER environment variable"
    )]
    NoUser,
    /// `service=` was given; walsink does not read `pg_service.conf`.
    #[error(
        "connection service files are not supported (service=\"{service}\"); write the service's options into the connection string instead"
    )]
    ServiceNotSupported {
        /// The service name.
        service: String,
    },
}
