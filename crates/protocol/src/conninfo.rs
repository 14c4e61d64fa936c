//! Connection options as libpq takes them.
//!
//! * [`ConnOptions::parse`] reads a `keyword=value` connection string or a
//!   `postgresql://` URI into an ordered set of options, rejecting unknown keywords the
//!   way libpq's `conninfo_parse` and `conninfo_uri_parse` do.
//! * [`ConnConfig::resolve`] applies libpq's precedence (explicit options, then `PG*`
//!   environment variables, then defaults) and pairs hosts, `hostaddr`s and ports into
//!   an ordered list of [`Target`]s, as `connectOptions2` in `fe-connect.c` does.
//! * [`ConnConfig::password_for`] and [`pgpass_match`] implement `.pgpass` lookup.
//!
//! Everything here is pure except [`Env::from_process`] (reads the process
//! environment) and [`ConnConfig::password_for`] (reads the password file).
//!
//! Differences from libpq, all deliberate:
//!
//! * `service=` is accepted by [`ConnOptions::parse`] but [`ConnConfig::resolve`]
//!   refuses it (walsink does not read `pg_service.conf`); `PGSERVICE` is ignored.
//! * A `dbname` value that is itself a connection string is not expanded.
//! * `PGDATABASE` is ignored: physical replication connections use `dbname=replication`
//!   (as `pg_receivewal` forces) unless the options name a database explicitly.
//! * An empty value (`connect_timeout=''`, `PGSSLMODE=`) means "not given" for every
//!   option, where libpq rejects some empty values as malformed.

mod pgpass;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

pub use pgpass::pgpass_match;

/// Every connection keyword libpq (up to PostgreSQL 18) accepts, in the order of its
/// `PQconninfoOptions` table. [`ConnOptions`] accepts exactly these.
pub const KEYWORDS: &[&str] = &[
    "service",
    "user",
    "password",
    "passfile",
    "channel_binding",
    "connect_timeout",
    "dbname",
    "host",
    "hostaddr",
    "port",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslmode",
    "sslnegotiation",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslcertmode",
    "sslpassword",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslkeylogfile",
    "requirepeer",
    "require_auth",
    "min_protocol_version",
    "max_protocol_version",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "gssencmode",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "replication",
    "target_session_attrs",
    "load_balance_hosts",
    "scram_client_key",
    "scram_server_key",
    "oauth_issuer",
    "oauth_client_id",
    "oauth_client_secret",
    "oauth_scope",
];

/// Keywords whose values are secrets: `Debug` output shows them redacted.
const SECRET_KEYWORDS: &[&str] = &[
    "password",
    "sslpassword",
    "scram_client_key",
    "scram_server_key",
    "oauth_client_secret",
];

/// The default PostgreSQL port.
const DEFAULT_PORT: u16 = 5432;

/// The database physical replication connections name (`pg_receivewal` forces it).
const REPLICATION_DBNAME: &str = "replication";

/// What `Debug` prints in place of secrets.
const REDACTED: &str = "<redacted>";

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

/// Ordered keyword -> value options, as libpq's conninfo arrays hold them. Later set() wins.
///
/// Only libpq keywords (see [`KEYWORDS`]) can be stored; iteration follows libpq's
/// keyword order, so two option sets with the same values compare equal however they
/// were built. `Debug` redacts passwords and other secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnOptions {
    /// Index into [`KEYWORDS`] -> value.
    values: BTreeMap<usize, String>,
}

impl ConnOptions {
    /// Parse a libpq connection string, either
    ///
    /// * `keyword=value` pairs separated by whitespace: spaces around `=` allowed,
    ///   values single-quoted when they contain spaces, `\'` and `\\` escapes (also
    ///   outside quotes), unknown keywords rejected like libpq
    ///   (`invalid connection option "x"`); or
    /// * a `postgresql://` or `postgres://` URI:
    ///   `postgresql://[user[:password]@][host[:port][,host[:port]...]][/dbname][?keyword=value&...]`
    ///   with percent-decoding of every part, `[IPv6]` literals, a percent-encoded Unix
    ///   socket directory as host (`%2Ftmp`), and any keyword as a query parameter
    ///   (`?host=/tmp` for socket directories).
    ///
    /// As in libpq, backslash escapes also work in unquoted values, a repeated keyword
    /// keeps its last value, and the URI query parameter `ssl=true` means
    /// `sslmode=require`. A plain database name (see [`ConnOptions::is_conninfo`]) is
    /// not a connection string and fails with [`ConnInfoError::MissingEquals`].
    pub fn parse(s: &str) -> Result<ConnOptions, ConnInfoError> {
        match uri_prefix_len(s) {
            Some(n) => parse_uri(s, n),
            None => parse_keyword_value(s),
        }
    }

    /// True when `s` looks like a connection string rather than a plain database name (contains '=' or starts with postgresql:// or postgres://), as libpq's recognized_connection_string.
    pub fn is_conninfo(s: &str) -> bool {
        uri_prefix_len(s).is_some() || s.contains('=')
    }

    /// Set `key` to `value`, replacing any earlier value. Fails with
    /// [`ConnInfoError::InvalidOption`] if `key` is not a libpq keyword.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConnInfoError> {
        let idx = keyword_index(key).ok_or_else(|| ConnInfoError::InvalidOption {
            keyword: key.to_owned(),
        })?;
        self.values.insert(idx, value.to_owned());
        Ok(())
    }

    /// The value of `key`, if it was given (possibly as an empty string).
    pub fn get(&self, key: &str) -> Option<&str> {
        keyword_index(key)
            .and_then(|i| self.values.get(&i))
            .map(String::as_str)
    }

    /// Forget `key`, returning its value if it had one.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        keyword_index(key).and_then(|i| self.values.remove(&i))
    }

    /// The options that were given, in libpq's keyword order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        self.values.iter().map(|(&i, v)| (KEYWORDS[i], v.as_str()))
    }

    /// True when no option was given.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl fmt::Debug for ConnOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (k, v) in self.iter() {
            if SECRET_KEYWORDS.contains(&k) {
                map.entry(&k, &REDACTED);
            } else {
                map.entry(&k, &v);
            }
        }
        map.finish()
    }
}

fn keyword_index(key: &str) -> Option<usize> {
    KEYWORDS.iter().position(|k| *k == key)
}

fn uri_prefix_len(s: &str) -> Option<usize> {
    ["postgresql://", "postgres://"]
        .into_iter()
        .find(|p| s.starts_with(p))
        .map(str::len)
}

/// C's `isspace` in the C locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// libpq's `conninfo_parse`.
fn parse_keyword_value(s: &str) -> Result<ConnOptions, ConnInfoError> {
    let b = s.as_bytes();
    let n = b.len();
    let mut opts = ConnOptions::default();
    let mut i = 0;
    while i < n {
        if is_c_space(b[i]) {
            i += 1;
            continue;
        }
        let key_start = i;
        while i < n && b[i] != b'=' && !is_c_space(b[i]) {
            i += 1;
        }
        let key = &s[key_start..i];
        while i < n && is_c_space(b[i]) {
            i += 1;
        }
        if i == n || b[i] != b'=' {
            return Err(ConnInfoError::MissingEquals {
                keyword: key.to_owned(),
            });
        }
        i += 1;
        while i < n && is_c_space(b[i]) {
            i += 1;
        }
        // Only ASCII bytes are dropped below, so `value` stays valid UTF-8.
        let mut value = Vec::new();
        if i < n && b[i] == b'\'' {
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(ConnInfoError::UnterminatedQuote),
                    Some(b'\\') => {
                        i += 1;
                        if let Some(&c) = b.get(i) {
                            value.push(c);
                            i += 1;
                        }
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < n {
                let c = b[i];
                i += 1;
                if is_c_space(c) {
                    break;
                }
                if c == b'\\' {
                    if let Some(&e) = b.get(i) {
                        value.push(e);
                        i += 1;
                    }
                } else {
                    value.push(c);
                }
            }
        }
        opts.set(key, &String::from_utf8_lossy(&value))?;
    }
    Ok(opts)
}

/// libpq's `conninfo_uri_parse_options`; `prefix` is the length of the scheme.
fn parse_uri(s: &str, prefix: usize) -> Result<ConnOptions, ConnInfoError> {
    let b = s.as_bytes();
    let n = b.len();
    let mut opts = ConnOptions::default();
    let start = prefix;

    // Credentials: everything before an '@' that comes before any '/'.
    let mut p = start;
    while p < n && b[p] != b'@' && b[p] != b'/' {
        p += 1;
    }
    if p < n && b[p] == b'@' {
        let userinfo = &s[start..p];
        let (user, password) = match userinfo.find(':') {
            Some(c) => (&userinfo[..c], Some(&userinfo[c + 1..])),
            None => (userinfo, None),
        };
        if !user.is_empty() {
            opts.set("user", &uri_decode(user, "user")?)?;
        }
        if let Some(pw) = password.filter(|pw| !pw.is_empty()) {
            opts.set("password", &uri_decode(pw, "password")?)?;
        }
        p += 1;
    } else {
        p = start;
    }

    // host[:port] pairs separated by commas.
    let mut hosts = String::new();
    let mut ports = String::new();
    let mut terminator;
    loop {
        let host;
        if p < n && b[p] == b'[' {
            p += 1;
            let host_start = p;
            while p < n && b[p] != b']' {
                p += 1;
            }
            if p == n {
                return Err(ConnInfoError::UnterminatedIpv6);
            }
            if p == host_start {
                return Err(ConnInfoError::EmptyIpv6);
            }
            host = &s[host_start..p];
            p += 1;
            if p < n && !matches!(b[p], b':' | b'/' | b'?' | b',') {
                return Err(ConnInfoError::UnexpectedUriChar {
                    found: s[p..].chars().next().unwrap_or('\u{fffd}'),
                    position: p + 1,
                });
            }
        } else {
            let host_start = p;
            while p < n && !matches!(b[p], b':' | b'/' | b'?' | b',') {
                p += 1;
            }
            host = &s[host_start..p];
        }
        hosts.push_str(host);
        terminator = b.get(p).copied();
        if terminator == Some(b':') {
            p += 1;
            let port_start = p;
            while p < n && !matches!(b[p], b'/' | b'?' | b',') {
                p += 1;
            }
            ports.push_str(&s[port_start..p]);
            terminator = b.get(p).copied();
        }
        if terminator != Some(b',') {
            break;
        }
        p += 1;
        hosts.push(',');
        ports.push(',');
    }
    if !hosts.is_empty() {
        opts.set("host", &uri_decode(&hosts, "host")?)?;
    }
    if !ports.is_empty() {
        opts.set("port", &uri_decode(&ports, "port")?)?;
    }

    // "/dbname"; an empty one is not stored, so the default applies.
    if terminator == Some(b'/') {
        p += 1;
        let db_start = p;
        while p < n && b[p] != b'?' {
            p += 1;
        }
        let dbname = &s[db_start..p];
        if !dbname.is_empty() {
            opts.set("dbname", &uri_decode(dbname, "dbname")?)?;
        }
        terminator = b.get(p).copied();
    }

    if terminator.is_some() {
        parse_uri_params(&s[p + 1..], &mut opts)?;
    }
    Ok(opts)
}

/// libpq's `conninfo_uri_parse_params`: `key=value&key=value`.
fn parse_uri_params(params: &str, opts: &mut ConnOptions) -> Result<(), ConnInfoError> {
    let mut rest = params;
    while !rest.is_empty() {
        let (param, next) = rest.split_once('&').unwrap_or((rest, ""));
        rest = next;
        let Some((key, value)) = param.split_once('=') else {
            return Err(ConnInfoError::MissingQuerySeparator {
                param: param.to_owned(),
            });
        };
        if value.contains('=') {
            return Err(ConnInfoError::ExtraQuerySeparator {
                keyword: key.to_owned(),
            });
        }
        let key = uri_decode(key, "query parameter")?;
        let component = if SECRET_KEYWORDS.contains(&key.as_str()) {
            "password"
        } else {
            "query parameter"
        };
        let value = uri_decode(value, component)?;
        // JDBC compatibility, as in libpq.
        let (key, value) = if key == "ssl" && value == "true" {
            ("sslmode".to_owned(), "require".to_owned())
        } else {
            (key, value)
        };
        if opts.set(&key, &value).is_err() {
            return Err(ConnInfoError::InvalidUriQueryParameter { keyword: key });
        }
    }
    Ok(())
}

/// libpq's `conninfo_uri_decode` (no `+` to space), checked to be UTF-8.
fn uri_decode(s: &str, component: &str) -> Result<String, ConnInfoError> {
    if !s.contains('%') {
        return Ok(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let hex = |j: usize| b.get(j).and_then(|&c| (c as char).to_digit(16));
        let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
            return Err(ConnInfoError::InvalidPercentEncoding {
                component: component.to_owned(),
                value: if component == "password" {
                    REDACTED.to_owned()
                } else {
                    s.to_owned()
                },
            });
        };
        let c = (hi << 4 | lo) as u8;
        if c == 0 {
            return Err(ConnInfoError::PercentEncodedNul {
                component: component.to_owned(),
            });
        }
        out.push(c);
        i += 3;
    }
    String::from_utf8(out).map_err(|_| ConnInfoError::PercentDecodedNotUtf8 {
        component: component.to_owned(),
    })
}

/// Process environment and user facts, injected so tests need not touch the real environment.
#[derive(Clone, Debug, Default)]
pub struct Env {
    /// Environment variables (only the `PG*` ones listed on [`ConnConfig::resolve`] are read).
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
    /// Read the real process environment: all UTF-8 environment variables, `HOME`,
    /// the user name from `USER` or else `LOGNAME` (`None` if neither is set), and
    /// `/var/run/postgresql` as the socket directory if it exists, else `/tmp`.
    pub fn from_process() -> Env {
        let vars: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        // As libpq: the user name of the effective uid from the password database; the
        // home directory from $HOME, else from the password database.
        let passwd = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten();
        let home = vars
            .get("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .or_else(|| passwd.as_ref().map(|p| p.dir.clone()));
        let os_user = passwd.map(|p| p.name).or_else(|| {
            ["USER", "LOGNAME"]
                .iter()
                .find_map(|k| vars.get(*k).filter(|u| !u.is_empty()).cloned())
        });
        let run = Path::new("/var/run/postgresql");
        let default_socket_dir = if run.is_dir() {
            run.to_path_buf()
        } else {
            PathBuf::from("/tmp")
        };
        Env {
            vars,
            home,
            os_user,
            default_socket_dir,
        }
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    fn socket_dir(&self) -> PathBuf {
        if self.default_socket_dir.as_os_str().is_empty() {
            PathBuf::from("/tmp")
        } else {
            self.default_socket_dir.clone()
        }
    }
}

/// Where a [`Target`] lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A DNS name or IP literal (IPv6 without brackets), reached over TCP.
    Tcp(String),
    /// A Unix socket directory (a path starting with `/`, or `@name` for a Linux
    /// abstract-namespace socket).
    Unix(PathBuf),
}

/// One server to try, with its port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The host as given, or the default socket directory. When only `hostaddr` was
    /// given for this slot, `Host::Tcp` of the address text (libpq then uses the
    /// address wherever it needs a host name, e.g. for `.pgpass`).
    pub host: Host,
    /// When set, connect over TCP to this address without resolving `host` (which
    /// remains the name for `.pgpass`, messages and TLS).
    pub hostaddr: Option<IpAddr>,
    /// The port, also the Unix socket's `.s.PGSQL.<port>` suffix.
    pub port: u16,
}

impl Target {
    /// The host as libpq's `PQhost` prints it: the host name or address for TCP, the
    /// socket directory for Unix sockets. ([`ConnConfig::password_for`] additionally
    /// matches `.pgpass` lines for `localhost` against Unix-socket targets.)
    pub fn display_host(&self) -> String {
        match &self.host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(dir) => dir.display().to_string(),
        }
    }

    /// The socket file, `<dir>/.s.PGSQL.<port>`, for a Unix-socket target that has no
    /// `hostaddr`; `None` for TCP. A path starting with `@` names a Linux
    /// abstract-namespace socket (replace the `@` with a NUL byte when binding).
    pub fn socket_path(&self) -> Option<PathBuf> {
        match (&self.host, self.hostaddr) {
            (Host::Unix(dir), None) => Some(dir.join(format!(".s.PGSQL.{}", self.port))),
            _ => None,
        }
    }
}

/// libpq's way of naming a server in errors, to follow "connection to server ":
/// `on socket "/tmp/.s.PGSQL.5432"`, `at "db1" (10.0.0.1), port 5432` or
/// `at "db1", port 5432`.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = self.socket_path() {
            return write!(f, "on socket \"{}\"", path.display());
        }
        let host = self.display_host();
        match self.hostaddr {
            Some(addr) if addr.to_string() != host => {
                write!(f, "at \"{host}\" ({addr}), port {}", self.port)
            }
            _ => write!(f, "at \"{host}\", port {}", self.port),
        }
    }
}

/// `target_session_attrs`: which kind of server is acceptable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetSessionAttrs {
    /// `any`: every server.
    Any,
    /// `read-write`: a server that accepts writes.
    ReadWrite,
    /// `read-only`: a server that does not accept writes.
    ReadOnly,
    /// `primary`: a server not in recovery.
    Primary,
    /// `standby`: a server in recovery.
    Standby,
    /// `prefer-standby`: a standby if any, else any server.
    PreferStandby,
}

impl TargetSessionAttrs {
    /// The libpq spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::ReadWrite => "read-write",
            Self::ReadOnly => "read-only",
            Self::Primary => "primary",
            Self::Standby => "standby",
            Self::PreferStandby => "prefer-standby",
        }
    }
}

impl FromStr for TargetSessionAttrs {
    type Err = ConnInfoError;

    /// Parse the libpq spelling (case-sensitive, as libpq).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "any" => Self::Any,
            "read-write" => Self::ReadWrite,
            "read-only" => Self::ReadOnly,
            "primary" => Self::Primary,
            "standby" => Self::Standby,
            "prefer-standby" => Self::PreferStandby,
            _ => {
                return Err(ConnInfoError::InvalidTargetSessionAttrs {
                    value: s.to_owned(),
                });
            }
        })
    }
}

/// `sslmode`: whether and how to use TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// `disable`: never.
    Disable,
    /// `allow`: try without, then with.
    Allow,
    /// `prefer`: try with, then without (the default).
    Prefer,
    /// `require`: always, without certificate checks.
    Require,
    /// `verify-ca`: always, checking the certificate chain.
    VerifyCa,
    /// `verify-full`: always, checking the chain and the host name.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

impl FromStr for SslMode {
    type Err = ConnInfoError;

    /// Parse the libpq spelling (case-sensitive, as libpq).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => {
                return Err(ConnInfoError::InvalidSslMode {
                    value: s.to_owned(),
                });
            }
        })
    }
}

/// Everything needed to open a connection, after defaults and environment were applied.
///
/// `Debug` redacts the password.
#[derive(Clone)]
pub struct ConnConfig {
    /// One per host, in order; ports paired as libpq does (one port for all, or one
    /// per host, else error).
    pub targets: Vec<Target>,
    /// `user`, else `PGUSER`, else the operating-system user.
    pub user: String,
    /// `dbname` if given explicitly, else `"replication"` (`PGDATABASE` is ignored).
    pub dbname: String,
    /// `password`, else `PGPASSWORD`; `None` when empty.
    pub password: Option<String>,
    /// `passfile`, else `PGPASSFILE`, else `~/.pgpass` (`None` without a home).
    pub passfile: Option<PathBuf>,
    /// `application_name`, else `PGAPPNAME`, else `fallback_application_name`, else
    /// the fallback given to [`ConnConfig::resolve`].
    pub application_name: String,
    /// `connect_timeout` / `PGCONNECT_TIMEOUT` in seconds; 1 is raised to 2 as in
    /// libpq, 0 or negative means no timeout.
    pub connect_timeout: Option<Duration>,
    /// `options` / `PGOPTIONS`: command-line options for the server.
    pub options: Option<String>,
    /// `sslmode` / `PGSSLMODE`, default [`SslMode::Prefer`].
    pub sslmode: SslMode,
    /// `sslrootcert` / `PGSSLROOTCERT`.
    pub sslrootcert: Option<String>,
    /// `sslcert` / `PGSSLCERT`.
    pub sslcert: Option<String>,
    /// `sslkey` / `PGSSLKEY`.
    pub sslkey: Option<String>,
    /// `target_session_attrs` / `PGTARGETSESSIONATTRS`, default [`TargetSessionAttrs::Any`].
    pub target_session_attrs: TargetSessionAttrs,
    /// `keepalives`: TCP keepalives on (default) unless set to 0.
    pub keepalives: bool,
    /// `keepalives_idle` in seconds; `None` (system default) when unset or not positive.
    pub keepalives_idle: Option<Duration>,
    /// `keepalives_interval` in seconds; `None` when unset or not positive.
    pub keepalives_interval: Option<Duration>,
    /// `keepalives_count`; `None` when unset or not positive.
    pub keepalives_count: Option<u32>,
    /// `tcp_user_timeout` in milliseconds; `None` when unset or not positive.
    pub tcp_user_timeout: Option<Duration>,
}

impl fmt::Debug for ConnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnConfig")
            .field("targets", &self.targets)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("passfile", &self.passfile)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("options", &self.options)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("sslcert", &self.sslcert)
            .field("sslkey", &self.sslkey)
            .field("target_session_attrs", &self.target_session_attrs)
            .field("keepalives", &self.keepalives)
            .field("keepalives_idle", &self.keepalives_idle)
            .field("keepalives_interval", &self.keepalives_interval)
            .field("keepalives_count", &self.keepalives_count)
            .field("tcp_user_timeout", &self.tcp_user_timeout)
            .finish()
    }
}

/// The outcome of [`ConnConfig::password_for`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PasswordLookup {
    /// The password to send, if any was found.
    pub password: Option<String>,
    /// Something the caller should log as a warning (e.g. an insecure password file).
    pub warning: Option<String>,
}

impl fmt::Debug for PasswordLookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordLookup")
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("warning", &self.warning)
            .finish()
    }
}

/// The option's value, else the environment variable's: `None` if neither is given
/// or the one that wins is empty. An empty option still hides the variable, as in
/// libpq (`host=''` means the default socket directory, not `PGHOST`).
fn pick<'a>(opts: &'a ConnOptions, env: &'a Env, key: &str, var: Option<&str>) -> Option<&'a str> {
    opts.get(key)
        .or_else(|| var.and_then(|v| env.var(v)))
        .filter(|v| !v.is_empty())
}

/// libpq's `pqParseIntParam`: `strtol` semantics (surrounding whitespace, a sign),
/// range of a C `int`.
fn parse_c_int(s: &str) -> Option<i32> {
    let t = s.trim_matches(|c: char| c.is_ascii() && is_c_space(c as u8));
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'+') => (false, &t[1..]),
        Some(b'-') => (true, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut v: i64 = 0;
    for c in digits.bytes() {
        v = v * 10 + i64::from(c - b'0');
        if v > 1 << 32 {
            return None;
        }
    }
    i32::try_from(if negative { -v } else { v }).ok()
}

fn int_option(
    opts: &ConnOptions,
    key: &str,
    var: Option<&str>,
    env: &Env,
) -> Result<Option<i32>, ConnInfoError> {
    pick(opts, env, key, var)
        .map(|v| {
            parse_c_int(v).ok_or_else(|| ConnInfoError::InvalidInteger {
                keyword: key.to_owned(),
                value: v.to_owned(),
            })
        })
        .transpose()
}

fn positive(v: Option<i32>) -> Option<u32> {
    v.and_then(|v| u32::try_from(v).ok()).filter(|&v| v > 0)
}

fn parse_port(s: &str) -> Result<u16, ConnInfoError> {
    if s.is_empty() {
        return Ok(DEFAULT_PORT);
    }
    parse_c_int(s)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
        .ok_or_else(|| ConnInfoError::InvalidPort {
            value: s.to_owned(),
        })
}

fn is_unix_socket_path(host: &str) -> bool {
    host.starts_with('/') || host.starts_with('@')
}

/// libpq's `connectOptions2` host/hostaddr/port pairing.
fn resolve_targets(opts: &ConnOptions, env: &Env) -> Result<Vec<Target>, ConnInfoError> {
    let host_list = pick(opts, env, "host", Some("PGHOST"));
    let addr_list = pick(opts, env, "hostaddr", Some("PGHOSTADDR"));
    let port_list = pick(opts, env, "port", Some("PGPORT"));

    let hosts: Vec<&str> = host_list
        .map(|l| l.split(',').collect())
        .unwrap_or_default();
    let addrs: Vec<Option<IpAddr>> = match addr_list {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|a| {
                if a.is_empty() {
                    Ok(None)
                } else {
                    a.parse()
                        .map(Some)
                        .map_err(|_| ConnInfoError::InvalidHostaddr {
                            value: a.to_owned(),
                        })
                }
            })
            .collect::<Result<_, _>>()?,
    };
    let count = if addr_list.is_some() {
        addrs.len()
    } else if host_list.is_some() {
        hosts.len()
    } else {
        1
    };
    if addr_list.is_some() && host_list.is_some() && hosts.len() != count {
        return Err(ConnInfoError::HostCountMismatch {
            hosts: hosts.len(),
            hostaddrs: count,
        });
    }
    let ports: Vec<&str> = port_list
        .map(|l| l.split(',').collect())
        .unwrap_or_default();
    if ports.len() > 1 && ports.len() != count {
        return Err(ConnInfoError::PortCountMismatch {
            ports: ports.len(),
            hosts: count,
        });
    }

    (0..count)
        .map(|i| {
            let name = hosts.get(i).copied().unwrap_or("");
            let hostaddr = addrs.get(i).copied().flatten();
            let host = if !name.is_empty() {
                if is_unix_socket_path(name) {
                    Host::Unix(PathBuf::from(name))
                } else {
                    Host::Tcp(name.to_owned())
                }
            } else if let Some(addr) = hostaddr {
                Host::Tcp(addr.to_string())
            } else {
                Host::Unix(env.socket_dir())
            };
            let port = match ports.as_slice() {
                [one] => one,
                many => many.get(i).copied().unwrap_or(""),
            };
            Ok(Target {
                host,
                hostaddr,
                port: parse_port(port)?,
            })
        })
        .collect()
}

impl ConnConfig {
    /// Apply libpq precedence: explicit options > PG* env vars > defaults. `fallback_application_name` is used when neither the options nor PGAPPNAME give one (walsink passes "walsink").
    ///
    /// Environment variables read: `PGHOST PGHOSTADDR PGPORT PGUSER PGPASSWORD
    /// PGPASSFILE PGAPPNAME PGCONNECT_TIMEOUT PGOPTIONS PGSSLMODE PGSSLROOTCERT
    /// PGSSLCERT PGSSLKEY PGTARGETSESSIONATTRS`. Hosts default to `PGHOST`, else the
    /// socket directory; an empty entry in a host list means the socket directory and
    /// an empty port entry means 5432. Options walsink has no use for (e.g.
    /// `replication`, `gssencmode`) are accepted and ignored.
    pub fn resolve(
        opts: &ConnOptions,
        env: &Env,
        fallback_application_name: &str,
    ) -> Result<ConnConfig, ConnInfoError> {
        if let Some(service) = opts.get("service").filter(|s| !s.is_empty()) {
            return Err(ConnInfoError::ServiceNotSupported {
                service: service.to_owned(),
            });
        }
        let targets = resolve_targets(opts, env)?;
        let user = pick(opts, env, "user", Some("PGUSER"))
            .or(env.os_user.as_deref().filter(|u| !u.is_empty()))
            .ok_or(ConnInfoError::NoUser)?
            .to_owned();
        let dbname = pick(opts, env, "dbname", None)
            .unwrap_or(REPLICATION_DBNAME)
            .to_owned();
        let password = pick(opts, env, "password", Some("PGPASSWORD")).map(str::to_owned);
        let passfile = pick(opts, env, "passfile", Some("PGPASSFILE"))
            .map(PathBuf::from)
            .or_else(|| {
                env.home
                    .as_ref()
                    .filter(|h| !h.as_os_str().is_empty())
                    .map(|h| h.join(".pgpass"))
            });
        let application_name = pick(opts, env, "application_name", Some("PGAPPNAME"))
            .or_else(|| pick(opts, env, "fallback_application_name", None))
            .unwrap_or(fallback_application_name)
            .to_owned();
        let connect_timeout = int_option(opts, "connect_timeout", Some("PGCONNECT_TIMEOUT"), env)?
            .filter(|&t| t > 0)
            .map(|t| Duration::from_secs(u64::from(t.max(2).unsigned_abs())));
        let text = |key: &str, var: &str| pick(opts, env, key, Some(var)).map(str::to_owned);
        let sslmode = pick(opts, env, "sslmode", Some("PGSSLMODE"))
            .map(SslMode::from_str)
            .transpose()?
            .unwrap_or(SslMode::Prefer);
        let target_session_attrs = pick(
            opts,
            env,
            "target_session_attrs",
            Some("PGTARGETSESSIONATTRS"),
        )
        .map(TargetSessionAttrs::from_str)
        .transpose()?
        .unwrap_or(TargetSessionAttrs::Any);
        let secs = |v: Option<i32>| positive(v).map(|s| Duration::from_secs(u64::from(s)));
        Ok(ConnConfig {
            targets,
            user,
            dbname,
            password,
            passfile,
            application_name,
            connect_timeout,
            options: text("options", "PGOPTIONS"),
            sslmode,
            sslrootcert: text("sslrootcert", "PGSSLROOTCERT"),
            sslcert: text("sslcert", "PGSSLCERT"),
            sslkey: text("sslkey", "PGSSLKEY"),
            target_session_attrs,
            keepalives: int_option(opts, "keepalives", None, env)?.is_none_or(|v| v != 0),
            keepalives_idle: secs(int_option(opts, "keepalives_idle", None, env)?),
            keepalives_interval: secs(int_option(opts, "keepalives_interval", None, env)?),
            keepalives_count: positive(int_option(opts, "keepalives_count", None, env)?),
            tcp_user_timeout: positive(int_option(opts, "tcp_user_timeout", None, env)?)
                .map(|ms| Duration::from_millis(u64::from(ms))),
        })
    }

    /// The password to use for `target`: explicit password first, else the first matching .pgpass line (host, port, database, user; '*' wildcards; '\' escapes; for Unix-socket targets the host matches "localhost" or the socket dir, like libpq). Reads the passfile; if it is group- or world-readable (mode & 0o077 != 0) it is NOT used, and a warning string is returned for the caller to log (libpq: 'password file "%s" has group or world access; permissions should be u=rw (0600) or less'). Missing file = None silently.
    ///
    /// A password file that is not a regular file, or that cannot be read, is also
    /// skipped with a warning. A matching line with an empty password yields `None`. (libpq matches Unix-socket targets against `localhost`
    /// only for its compiled-in socket directory and against the directory otherwise;
    /// walsink accepts either for any socket directory.)
    pub fn password_for(&self, target: &Target) -> PasswordLookup {
        if let Some(password) = &self.password {
            return PasswordLookup {
                password: Some(password.clone()),
                warning: None,
            };
        }
        let Some(path) = &self.passfile else {
            return PasswordLookup::default();
        };
        let content = match read_passfile(path) {
            Ok(Some(content)) => content,
            Ok(None) => return PasswordLookup::default(),
            Err(warning) => {
                return PasswordLookup {
                    password: None,
                    warning: Some(warning),
                };
            }
        };
        let host = target.display_host();
        let hosts: Vec<&str> = match target.host {
            Host::Tcp(_) => vec![host.as_str()],
            Host::Unix(_) => vec!["localhost", host.as_str()],
        };
        PasswordLookup {
            password: pgpass::match_any_host(
                &content,
                &hosts,
                target.port,
                &self.dbname,
                &self.user,
            )
            // An empty password field means no password, like an empty `password=`.
            .filter(|p| !p.is_empty()),
            warning: None,
        }
    }
}

/// The password file's content; `Ok(None)` if it does not exist; `Err(warning)` if
/// it must not or cannot be used.
fn read_passfile(path: &Path) -> Result<Option<String>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "could not access password file \"{}\": {e}",
                path.display()
            ));
        }
    };
    if !meta.is_file() {
        return Err(format!(
            "password file \"{}\" is not a plain file",
            path.display()
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
                path.display()
            ));
        }
    }
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) => Err(format!(
            "could not read password file \"{}\": {e}",
            path.display()
        )),
    }
}

/// Fuzzing entry point: parse arbitrary bytes (as lossy UTF-8) as a connection string,
/// resolve it against a fixed environment, and run the `.pgpass` matcher over them.
/// Never panics and touches no files or environment.
pub fn fuzz_conninfo(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let _ = ConnOptions::is_conninfo(&s);
    if let Ok(opts) = ConnOptions::parse(&s) {
        let _ = format!("{opts:?}");
        let env = Env {
            os_user: Some("postgres".to_owned()),
            default_socket_dir: PathBuf::from("/tmp"),
            ..Env::default()
        };
        if let Ok(config) = ConnConfig::resolve(&opts, &env, "walsink") {
            for target in &config.targets {
                let _ = (
                    target.display_host(),
                    target.socket_path(),
                    target.to_string(),
                );
            }
        }
    }
    let _ = pgpass_match(&s, "localhost", 5432, "replication", "postgres");
}
