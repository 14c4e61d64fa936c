//! The `.pgpass` file format, matched exactly as libpq's `passwordFromFile` does.
//!
//! Each non-comment line is `hostname:port:database:username:password`. A field that
//! is exactly `*` matches anything; `\` escapes the next character (so `\:` and `\\`
//! are a literal colon and backslash). Lines starting with `#` are comments. The first
//! matching line wins. Trailing `\r`/`\n` are stripped, so CRLF files work.

/// Pure `.pgpass` matcher over file content: the password of the first line whose
/// host, port, database and user fields match, or `None`.
///
/// `host` is compared literally; callers map Unix-socket connections to `"localhost"`
/// (see [`super::ConnConfig::password_for`]).
pub fn pgpass_match(
    content: &str,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    match_any_host(content, &[host], port, dbname, user)
}

/// Like [`pgpass_match`], but a line's host field may match any of `hosts`.
pub(super) fn match_any_host(
    content: &str,
    hosts: &[&str],
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    let port = port.to_string();
    content.split('\n').find_map(|raw| {
        let line = raw.trim_end_matches(['\r', '\n']).as_bytes();
        if line.is_empty() || line[0] == b'#' {
            return None;
        }
        let rest = hosts
            .iter()
            .find_map(|h| field_matches(line, h.as_bytes()))?;
        let rest = field_matches(rest, port.as_bytes())?;
        let rest = field_matches(rest, dbname.as_bytes())?;
        let rest = field_matches(rest, user.as_bytes())?;
        Some(unescape_password(rest))
    })
}

/// libpq's `pwdfMatchesString`: if the field at the start of `buf` matches `token`,
/// return the remainder after the field's terminating `:`.
fn field_matches<'a>(buf: &'a [u8], token: &[u8]) -> Option<&'a [u8]> {
    if buf.starts_with(b"*:") {
        return Some(&buf[2..]);
    }
    let mut i = 0;
    let mut t = 0;
    while i < buf.len() {
        let escaped = buf[i] == b'\\';
        if escaped {
            i += 1;
        }
        let c = buf.get(i).copied();
        if c == Some(b':') && t == token.len() && !escaped {
            return Some(&buf[i + 1..]);
        }
        if t == token.len() || c != Some(token[t]) {
            return None;
        }
        i += 1;
        t += 1;
    }
    // A line that ends before the password field never matches.
    None
}

/// The password field: up to the first unescaped `:`, with `\x` turned into `x`
/// (a trailing lone backslash is kept, as libpq does).
fn unescape_password(rest: &[u8]) -> String {
    let mut out = Vec::with_capacity(rest.len());
    let mut i = 0;
    while i < rest.len() && rest[i] != b':' {
        if rest[i] == b'\\' && i + 1 < rest.len() {
            i += 1;
        }
        out.push(rest[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
