//! Connection strings as libpq parses them: `keyword=value` lists and `postgresql://` URIs.

use std::collections::BTreeMap;
use std::fmt;

use super::REDACTED;
use super::error::ConnInfoError;

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
pub(super) fn is_c_space(b: u8) -> bool {
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
