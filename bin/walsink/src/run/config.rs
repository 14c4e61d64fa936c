//! The `walsink run` configuration file (TOML): parsing and validation into one
//! [`ReceiveConfig`] per source.
//!
//! Every error names the file, the line and column, and the key (`source "db1": flush_bytes`);
//! an unknown key is an error (a typo must not be silently ignored); semantic errors of
//! every source are collected, so one run shows them all. No message ever contains the
//! value of `conninfo` (it may hold a password) or a password file's content.

use std::collections::HashMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use walsink_protocol::conninfo::{ConnConfig, ConnOptions, Env, Host, TargetSessionAttrs};
use walsink_protocol::query::valid_slot_name;
use walsink_receiver::ReceiveConfig;
use walsink_receiver::daemon::SourceDef;

use crate::cli::{parse_duration, parse_size};
use crate::log::LogFormat;

/// The largest configuration or password file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// A validated configuration file.
pub struct DaemonConfig {
    /// `metrics_listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// `log_format`.
    pub log_format: Option<LogFormat>,
    /// The `[[source]]` tables, in file order.
    pub sources: Vec<SourceDef>,
}

/// Everything wrong with a configuration file.
#[derive(Debug)]
pub struct ConfigErrors {
    file: PathBuf,
    errors: Vec<ConfigError>,
}

#[derive(Debug)]
struct ConfigError {
    /// 1-based line and column; `None` for the whole file (it could not be read).
    at: Option<(usize, usize)>,
    /// The key, as `key` or `source "NAME": key` (`source #N` before the name is known).
    key: Option<String>,
    message: String,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file.display())?;
            if let Some((line, col)) = e.at {
                write!(f, ":{line}:{col}")?;
            }
            write!(f, ": ")?;
            if let Some(k) = &e.key {
                write!(f, "{k}: ")?;
            }
            write!(f, "{}", e.message)?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// How many errors.
    pub fn len(&self) -> usize {
        self.errors.len()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    metrics_listen: Option<Spanned<String>>,
    log_format: Option<Spanned<String>>,
    #[serde(default)]
    source: Vec<Spanned<RawSource>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: Spanned<String>,
    conninfo: Spanned<String>,
    directory: Spanned<String>,
    slot: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    flush_bytes: Option<Spanned<toml::Value>>,
    flush_interval: Option<Spanned<String>>,
    create_slot_if_missing: Option<Spanned<bool>>,
    status_interval: Option<Spanned<toml::Value>>,
    receive_timeout: Option<Spanned<toml::Value>>,
    password_file: Option<Spanned<String>>,
    allow_gap: Option<Spanned<bool>>,
}

/// The keys of a `[[source]]` table, for the unknown-key message.
const SOURCE_KEYS: &str = "name, conninfo, directory, slot, mode, flush_bytes, flush_interval, create_slot_if_missing, status_interval, receive_timeout, password_file, allow_gap";

/// Reads and validates `path`. Relative paths in it (`directory`, `password_file`) are
/// relative to the file's directory.
pub fn load(path: &Path, env: &Env) -> Result<DaemonConfig, ConfigErrors> {
    let whole = |message: String| ConfigErrors {
        file: path.to_path_buf(),
        errors: vec![ConfigError {
            at: None,
            key: None,
            message,
        }],
    };
    let text =
        read_small(path).map_err(|e| whole(format!("cannot read the configuration file: {e}")))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, &base, env).map_err(|errors| ConfigErrors {
        file: path.to_path_buf(),
        errors,
    })
}

fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut s = String::new();
    f.take(MAX_FILE_BYTES + 1).read_to_string(&mut s)?;
    if s.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {} KiB",
            MAX_FILE_BYTES >> 10
        )));
    }
    Ok(s)
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

struct Collector<'a> {
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Collector<'_> {
    fn push(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            at: Some(line_col(self.text, span.start)),
            key: Some(key.into()),
            message: message.into(),
        });
    }
}

/// Parses the file's text; `base` is where relative paths start.
fn parse(text: &str, base: &Path, env: &Env) -> Result<DaemonConfig, Vec<ConfigError>> {
    let raw: RawFile = toml::from_str(text).map_err(|e| vec![syntax_error(text, &e)])?;
    let mut c = Collector {
        text,
        errors: Vec::new(),
    };
    let metrics_listen = raw.metrics_listen.and_then(|v| {
        match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                c.push(
                    v.span(),
                    "metrics_listen",
                    format!(
                        "invalid address \"{}\": expected IP:PORT, e.g. \"127.0.0.1:9187\" or \"[::1]:9187\"",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    });
    let log_format = raw.log_format.and_then(|v| {
        let f = LogFormat::parse(v.get_ref());
        if f.is_none() {
            c.push(
                v.span(),
                "log_format",
                format!(
                    "invalid value \"{}\": use \"text\" or \"json\"",
                    v.get_ref()
                ),
            );
        }
        f
    });
    if raw.source.is_empty() {
        c.errors.push(ConfigError {
            at: None,
            key: None,
            message: "no [[source]] table: the daemon would have nothing to do".into(),
        });
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut placed: Vec<Placed> = Vec::new();
    let mut sources = Vec::new();
    for (i, table) in raw.source.into_iter().enumerate() {
        let src = table.into_inner();
        let name = src.name.get_ref().clone();
        let line = line_col(text, src.name.span().start).0;
        let key = |k: &str| format!("source \"{name}\": {k}");
        if !valid_source_name(&name) {
            c.push(
                src.name.span(),
                format!("source #{}: name", i + 1),
                format!(
                    "invalid source name \"{}\": use 1 to 64 letters, digits, '_', '-' and '.'",
                    name.escape_debug()
                ),
            );
        } else if let Some(first) = names.insert(name.clone(), line) {
            c.push(
                src.name.span(),
                key("name"),
                format!("a second source named \"{name}\" (the first is on line {first}); names must be unique"),
            );
        }
        let dir = normalize(&base.join(src.directory.get_ref()));
        let dir_span = src.directory.span();
        let empty_dir = src.directory.get_ref().is_empty();
        if empty_dir {
            c.push(dir_span.clone(), key("directory"), "must not be empty");
        }
        let slot_span = src.slot.as_ref().map(Spanned::span);
        let (def, server) = source(&mut c, &key, src, dir.clone(), base, env);
        if let Some(def) = def {
            sources.push(SourceDef {
                name: name.clone(),
                config: def.0,
                fingerprint: def.1,
            });
        }
        placed.push(Placed {
            name,
            line,
            at: (!empty_dir).then(|| (dir_span, Place::of(&dir), dir)),
            slot: slot_span.zip(server),
        });
    }
    clashes(&mut c, &placed);
    // In file order (errors without a position, about the whole file, first).
    c.errors.sort_by_key(|e| e.at);
    if c.errors.is_empty() {
        Ok(DaemonConfig {
            metrics_listen,
            log_format,
            sources,
        })
    } else {
        Err(c.errors)
    }
}

/// A syntax, type, missing-key or unknown-key error from the TOML deserializer. Its own
/// rendering quotes the offending line, which may hold a password: only the message
/// and position are used.
fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let span = e.span().unwrap_or(0..0);
    let at = Some(line_col(text, span.start));
    let message = e.message().trim().to_owned();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or_default().to_owned();
        let keys = if rest.contains("`conninfo`") {
            SOURCE_KEYS
        } else {
            "metrics_listen, log_format, [[source]]"
        };
        return ConfigError {
            at,
            key: Some(field),
            message: format!("unknown key; the keys here are: {keys}"),
        };
    }
    let key = if let Some(rest) = message.strip_prefix("missing field `") {
        rest.split('`').next().map(str::to_owned)
    } else {
        // The key whose value is wrong: the text at the error's span, back to its `=`.
        key_at(text, span.start)
    };
    let message = match message.strip_prefix("missing field `") {
        Some(_) => "missing in the [[source]] table starting here; every source needs name, conninfo and directory".to_owned(),
        None => message,
    };
    ConfigError { at, key, message }
}

/// The key of the `key = value` line containing `offset`, if it has one.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (k, _) = line.split_once('=')?;
    let k = k.trim().trim_matches('"');
    (!k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    .then(|| k.to_owned())
}

fn valid_source_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// `path` with `.` and `a/..` removed and no trailing slash (lexically).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// What the checks between sources ([`clashes`]) know of one source.
struct Placed {
    name: String,
    /// The line of its `name`.
    line: usize,
    /// Its `directory`: the key's span, where it physically is, and the path as
    /// configured (made absolute and normalised); `None` when empty.
    at: Option<(Range<usize>, Place, PathBuf)>,
    /// Its `slot` key's span and where that slot is; `None` without a (valid) slot or
    /// with an invalid `conninfo`.
    slot: Option<(Range<usize>, SlotPlace)>,
}

/// Where a directory physically is: symbolic links followed as far as the path exists
/// (the part not created yet taken as written), and the device and inode of it and of
/// each existing ancestor, so that neither a link nor a bind mount hides a duplicate.
struct Place {
    real: PathBuf,
    id: Option<(u64, u64)>,
    ancestors: Vec<(u64, u64)>,
}

impl Place {
    fn of(dir: &Path) -> Place {
        use std::os::unix::fs::MetadataExt;
        let real = resolve_existing(dir);
        let id_of = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
        Place {
            id: id_of(&real),
            ancestors: real.ancestors().skip(1).filter_map(id_of).collect(),
            real,
        }
    }

    fn same(&self, other: &Place) -> bool {
        self.real == other.real || self.id.is_some() && self.id == other.id
    }

    /// Whether `self` lies strictly inside `outer`.
    fn inside(&self, outer: &Place) -> bool {
        !self.same(outer)
            && (self.real.starts_with(&outer.real)
                || outer.id.is_some_and(|id| self.ancestors.contains(&id)))
    }
}

/// `path` with symbolic links resolved in its longest existing prefix; the rest (not
/// created yet, so no link) appended as it is.
fn resolve_existing(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        let probe = if existing.as_os_str().is_empty() {
            Path::new(".")
        } else {
            existing.as_path()
        };
        if let Ok(real) = std::fs::canonicalize(probe) {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match existing.file_name() {
            Some(n) => {
                rest.push(n.to_owned());
                existing.pop();
            }
            None => return path.to_path_buf(),
        }
    }
}

/// A server as a connection reaches it.
#[derive(PartialEq, Eq)]
enum Endpoint {
    /// `hostaddr`, or a host given as an IP address.
    Ip(IpAddr),
    /// A host name (compared without case, as DNS does).
    Name(String),
    /// A Unix socket directory.
    Socket(PathBuf),
}

/// A replication slot and the servers a source's connection string reaches, with the
/// environment and defaults applied exactly as when it connects (`PGHOST`, `PGPORT`,
/// the socket directory, port 5432; `hostaddr` before `host`).
struct SlotPlace {
    slot: String,
    servers: Vec<(Endpoint, u16)>,
    /// Which of several hosts is taken (with one host it does not matter).
    session_attrs: TargetSessionAttrs,
    /// The first server as messages name it: `at "db1", port 5432`.
    shown: String,
}

impl SlotPlace {
    fn of(conn: &ConnConfig, slot: &str) -> SlotPlace {
        let servers = conn
            .targets
            .iter()
            .map(|t| {
                let e = match (t.hostaddr, &t.host) {
                    (Some(a), _) => Endpoint::Ip(a),
                    (None, Host::Tcp(n)) => n
                        .parse()
                        .map_or_else(|_| Endpoint::Name(n.to_ascii_lowercase()), Endpoint::Ip),
                    (None, Host::Unix(d)) => Endpoint::Socket(normalize(d)),
                };
                (e, t.port)
            })
            .collect::<Vec<_>>();
        let mut shown = conn
            .targets
            .first()
            .map(ToString::to_string)
            .unwrap_or_default();
        if servers.len() > 1 {
            shown.push_str(&format!(" (and {} more hosts)", servers.len() - 1));
        }
        SlotPlace {
            slot: slot.to_owned(),
            servers,
            session_attrs: conn.target_session_attrs.clone(),
            shown,
        }
    }

    /// Whether both surely use one slot: the same name on the same servers, tried in the
    /// same order for the same kind of server. (`localhost` and `127.0.0.1`, or a name
    /// and its address, are not compared: they may well be different servers.)
    fn clashes(&self, other: &SlotPlace) -> bool {
        self.slot == other.slot
            && self.servers == other.servers
            && (self.servers.len() == 1 || self.session_attrs == other.session_attrs)
    }
}

/// A slot name for a source that needs its own: its name in lower case, other
/// characters than letters and digits as `_`.
fn slot_for(name: &str, taken: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if s == taken {
        s = format!("walsink_{s}");
    }
    s.truncate(63);
    s
}

/// The checks between sources, which no source shows alone: two archives in one
/// directory, one archive inside another, two sources on one replication slot. A
/// source's clash is reported at its own key, naming the first earlier source it
/// clashes with.
fn clashes(c: &mut Collector<'_>, placed: &[Placed]) {
    for (i, p) in placed.iter().enumerate() {
        let earlier = &placed[..i];
        let key = |k: &str| format!("source \"{}\": {k}", p.name);
        if let Some((span, place, dir)) = &p.at {
            let found = earlier.iter().find_map(|q| {
                let (_, other, qdir) = q.at.as_ref()?;
                let first = format!("source \"{}\" (line {})", q.name, q.line);
                directory_clash((place, dir), (other, qdir), &first)
            });
            if let Some(message) = found {
                c.push(span.clone(), key("directory"), message);
            }
        }
        if let Some((span, place)) = &p.slot {
            let other = earlier
                .iter()
                .find(|q| q.slot.as_ref().is_some_and(|(_, o)| place.clashes(o)));
            if let Some(q) = other {
                let own = slot_for(&p.name, &place.slot);
                c.push(
                    span.clone(),
                    key("slot"),
                    format!(
                        "replication slot \"{}\" of the server {} is also the slot of source \"{}\" (line {}): a slot serves one connection at a time (the other is refused with \"slot in use\", exit 13, and stays down) and keeps WAL for one reader only; give each source its own slot, e.g. slot = \"{own}\" with create_slot_if_missing = true (or create it: SELECT pg_create_physical_replication_slot('{own}'))",
                        place.slot, place.shown, q.name, q.line
                    ),
                );
            }
        }
    }
}

/// What is wrong when a source's directory (`place`, configured as `dir`) is the same
/// as, inside or around an earlier source's (`other`, `qdir`; `first` names that
/// source), or `None` when they lie side by side.
fn directory_clash(
    (place, dir): (&Place, &Path),
    (other, qdir): (&Place, &Path),
    first: &str,
) -> Option<String> {
    let (d, qd) = (dir.display(), qdir.display());
    if place.same(other) {
        let how = if dir == qdir {
            String::new()
        } else if place.real == other.real {
            format!(
                ", which names it \"{qd}\" (both are \"{}\" once symbolic links are followed)",
                place.real.display()
            )
        } else {
            format!(", which names it \"{qd}\" (the same device and inode: a bind mount?)")
        };
        return Some(format!(
            "\"{d}\" is also the directory of {first}{how}; each source needs its own archive directory"
        ));
    }
    let (relation, lexical) = if place.inside(other) {
        ("is inside", dir.starts_with(qdir))
    } else if other.inside(place) {
        ("contains", qdir.starts_with(dir))
    } else {
        return None;
    };
    let how = if lexical {
        String::new()
    } else {
        format!(
            " (once symbolic links and mounts are followed: \"{}\" and \"{}\")",
            place.real.display(),
            other.real.display()
        )
    };
    Some(format!(
        "\"{d}\" {relation} \"{qd}\", the directory of {first}{how}: one archive inside another mixes two servers' WAL in one tree, and cleaning up, copying or restoring one reaches into the other; give each source a directory of its own, side by side (e.g. /srv/wal/db1 and /srv/wal/db2)"
    ))
}

/// How a source writes, from `mode`.
#[derive(Clone, Copy, Hash)]
enum Mode {
    Default,
    Synchronous,
    NoSync,
}

/// Validates one `[[source]]` (its name and directory already checked) into its
/// [`ReceiveConfig`] and fingerprint (`None` after pushing its errors), and where its
/// slot is (when `slot` and `conninfo` are valid, even if other keys are not).
fn source(
    c: &mut Collector<'_>,
    key: &dyn Fn(&str) -> String,
    src: RawSource,
    dir: PathBuf,
    base: &Path,
    env: &Env,
) -> (Option<(ReceiveConfig, u64)>, Option<SlotPlace>) {
    let before = c.errors.len();
    let mut h = DefaultHasher::new();
    src.name.get_ref().hash(&mut h);
    src.conninfo.get_ref().hash(&mut h);
    dir.hash(&mut h);

    // The connection string: never quoted back (it may hold a password).
    let conn = {
        let s = src.conninfo.get_ref();
        let opts = if ConnOptions::is_conninfo(s) {
            ConnOptions::parse(s)
        } else {
            let mut o = ConnOptions::default();
            o.set("dbname", s).map(|()| o)
        };
        match opts.and_then(|o| ConnConfig::resolve(&o, env, "walsink")) {
            Ok(conn) => match conn.unsupported() {
                Some(e) => {
                    c.push(src.conninfo.span(), key("conninfo"), e.to_string());
                    None
                }
                None => Some(conn),
            },
            Err(e) => {
                c.push(src.conninfo.span(), key("conninfo"), e.to_string());
                None
            }
        }
    };

    let slot = src.slot.as_ref().and_then(|s| {
        if valid_slot_name(s.get_ref()) {
            Some(s.get_ref().clone())
        } else {
            c.push(
                s.span(),
                key("slot"),
                format!(
                    "invalid replication slot name \"{}\": use 1 to 63 lower-case letters, digits and underscores",
                    s.get_ref().escape_debug()
                ),
            );
            None
        }
    });
    slot.hash(&mut h);

    let mode = match src.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("default", _)) => Mode::Default,
        Some(("synchronous", _)) => Mode::Synchronous,
        Some(("no-sync", _)) => Mode::NoSync,
        Some((other, span)) => {
            c.push(
                span,
                key("mode"),
                format!(
                    "invalid mode \"{}\": use \"default\", \"synchronous\" or \"no-sync\"",
                    other.escape_debug()
                ),
            );
            Mode::Default
        }
    };
    mode.hash(&mut h);

    let flush_bytes = match &src.flush_bytes {
        None => 4 << 20,
        Some(v) => {
            let r = match v.get_ref() {
                toml::Value::String(s) => parse_size(s),
                toml::Value::Integer(n) if *n > 0 => Ok(*n as u64),
                _ => Err("expected a size such as \"4MB\" (or a number of bytes)".into()),
            };
            r.unwrap_or_else(|e| {
                c.push(v.span(), key("flush_bytes"), e);
                0
            })
        }
    };
    flush_bytes.hash(&mut h);

    let flush_interval = match &src.flush_interval {
        None => Duration::from_secs(1),
        Some(v) => parse_duration(v.get_ref()).unwrap_or_else(|e| {
            c.push(v.span(), key("flush_interval"), e);
            Duration::ZERO
        }),
    };
    flush_interval.hash(&mut h);

    let mut optional_duration = |v: &Option<Spanned<toml::Value>>, k: &str, default: u64| match v {
        None => Some(Duration::from_secs(default)),
        Some(v) => {
            let r = match v.get_ref() {
                toml::Value::String(s) if s.trim() == "0" => Ok(None),
                toml::Value::Integer(0) => Ok(None),
                toml::Value::String(s) => parse_duration(s).map(Some),
                _ => Err("expected a duration with a unit, such as \"500ms\", \"10s\" or \"1min\" (\"0\" disables)".to_owned()),
            };
            r.unwrap_or_else(|e| {
                c.push(v.span(), key(k), e);
                None
            })
        }
    };
    let status_interval = optional_duration(&src.status_interval, "status_interval", 10);
    let receive_timeout = optional_duration(&src.receive_timeout, "receive_timeout", 60);
    status_interval.hash(&mut h);
    receive_timeout.hash(&mut h);

    let create_slot_if_missing = src
        .create_slot_if_missing
        .as_ref()
        .is_some_and(|v| *v.get_ref());
    if create_slot_if_missing && src.slot.is_none() {
        let span = src.create_slot_if_missing.as_ref().expect("set").span();
        c.push(
            span,
            key("create_slot_if_missing"),
            "needs a slot: set slot in this [[source]]",
        );
    }
    create_slot_if_missing.hash(&mut h);
    let allow_gap = src.allow_gap.as_ref().is_some_and(|v| *v.get_ref());
    allow_gap.hash(&mut h);

    let password = src.password_file.as_ref().and_then(|p| {
        let path = normalize(&base.join(p.get_ref()));
        match read_password_file(&path) {
            Ok(pw) => Some(pw),
            Err(e) => {
                c.push(p.span(), key("password_file"), e);
                None
            }
        }
    });
    password.hash(&mut h);

    let slot_place = conn
        .as_ref()
        .zip(slot.as_deref())
        .map(|(conn, slot)| SlotPlace::of(conn, slot));
    let Some(conn) = conn.filter(|_| c.errors.len() == before) else {
        return (None, slot_place);
    };
    let config = ReceiveConfig {
        conn,
        password,
        dir,
        slot,
        create_slot_if_missing,
        endpos: None,
        status_interval,
        receive_timeout,
        synchronous: matches!(mode, Mode::Synchronous),
        no_sync: matches!(mode, Mode::NoSync),
        no_loop: false,
        flush_bytes,
        flush_interval,
        allow_gap,
        slot_in_use_grace: walsink_receiver::run::SLOT_IN_USE_GRACE,
        write_options: None,
        // The supervisor gives each running source its own.
        observer: Default::default(),
    };
    (Some((config, h.finish())), slot_place)
}

/// A password file: its first line. Refused when group- or world-accessible (like
/// `.pgpass`), not a regular file, or empty. Errors never quote the content.
fn read_password_file(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read \"{shown}\": {e}"))?;
    if !meta.is_file() {
        return Err(format!("\"{shown}\" is not a regular file"));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "\"{shown}\" has group or world access; it holds a password: chmod 600 it"
        ));
    }
    let text = read_small(path).map_err(|e| format!("cannot read \"{shown}\": {e}"))?;
    let pw = text.lines().next().unwrap_or_default();
    if pw.is_empty() {
        return Err(format!(
            "\"{shown}\" is empty; its first line is the password"
        ));
    }
    Ok(pw.to_owned())
}

#[cfg(test)]
mod tests;
