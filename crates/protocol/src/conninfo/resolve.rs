//! libpq's precedence (options, then `PG*` environment variables, then defaults) and
//! the pairing of hosts, `hostaddr`s and ports into [`Target`]s.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::REDACTED;
use super::env::Env;
use super::error::ConnInfoError;
use super::options::{
    ChannelBinding, GssEncMode, RequireAuth, SslCertMode, SslMode, SslNegotiation,
    TargetSessionAttrs, TlsVersion,
};
use super::parse::{ConnOptions, is_c_space};
use super::pgpass;

/// The default PostgreSQL port.
const DEFAULT_PORT: u16 = 5432;

/// The database physical replication connections name (`pg_receivewal` forces it).
const REPLICATION_DBNAME: &str = "replication";

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
    /// `sslmode` / `PGSSLMODE`, default [`SslMode::Prefer`] ([`SslMode::VerifyFull`]
    /// with `sslrootcert=system`).
    pub sslmode: SslMode,
    /// `sslnegotiation` / `PGSSLNEGOTIATION`, default [`SslNegotiation::Postgres`].
    pub sslnegotiation: SslNegotiation,
    /// `sslrootcert` / `PGSSLROOTCERT`: a file of trusted roots, or `system`;
    /// `None`: `~/.postgresql/root.crt` if it exists.
    pub sslrootcert: Option<String>,
    /// `sslcert` / `PGSSLCERT`; `None`: `~/.postgresql/postgresql.crt` if it exists.
    pub sslcert: Option<String>,
    /// `sslkey` / `PGSSLKEY`; `None`: `~/.postgresql/postgresql.key`.
    pub sslkey: Option<String>,
    /// `sslcertmode` / `PGSSLCERTMODE`, default [`SslCertMode::Allow`].
    pub sslcertmode: SslCertMode,
    /// `sslpassword`: the pass phrase of an encrypted key (walsink refuses it).
    pub sslpassword: Option<String>,
    /// `sslcrl` / `PGSSLCRL`: a file of certificate revocation lists.
    pub sslcrl: Option<String>,
    /// `sslcrldir` / `PGSSLCRLDIR`: a directory of them (OpenSSL's hashed layout).
    pub sslcrldir: Option<String>,
    /// `sslsni` / `PGSSLSNI`: send the host name in the TLS handshake (default on;
    /// libpq's test: the value starts with `1`). Never for IP addresses.
    pub sslsni: bool,
    /// `sslcompression` / `PGSSLCOMPRESSION` set to 1 (walsink refuses it).
    pub sslcompression: bool,
    /// `sslkeylogfile` (PostgreSQL 18): append the TLS session secrets to this file, in
    /// the NSS key log format (for Wireshark).
    pub sslkeylogfile: Option<String>,
    /// `ssl_min_protocol_version` / `PGSSLMINPROTOCOLVERSION`, default TLSv1.2.
    pub ssl_min_protocol_version: TlsVersion,
    /// `ssl_max_protocol_version` / `PGSSLMAXPROTOCOLVERSION`; `None`: no maximum.
    pub ssl_max_protocol_version: Option<TlsVersion>,
    /// `~/.postgresql`, where the default certificate files live (`None` without a home).
    pub ssl_dir: Option<PathBuf>,
    /// `channel_binding` / `PGCHANNELBINDING`, default [`ChannelBinding::Prefer`].
    pub channel_binding: ChannelBinding,
    /// `gssencmode` / `PGGSSENCMODE`, default [`GssEncMode::Prefer`].
    pub gssencmode: GssEncMode,
    /// `require_auth` / `PGREQUIREAUTH`; `None`: no requirement.
    pub require_auth: Option<RequireAuth>,
    /// `requirepeer` / `PGREQUIREPEER`: the operating-system user the server of a
    /// Unix-socket connection must run as.
    pub requirepeer: Option<String>,
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
            .field("sslnegotiation", &self.sslnegotiation)
            .field("sslrootcert", &self.sslrootcert)
            .field("sslcert", &self.sslcert)
            .field("sslkey", &self.sslkey)
            .field("sslcertmode", &self.sslcertmode)
            .field("sslpassword", &self.sslpassword.as_ref().map(|_| REDACTED))
            .field("sslcrl", &self.sslcrl)
            .field("sslcrldir", &self.sslcrldir)
            .field("sslsni", &self.sslsni)
            .field("sslcompression", &self.sslcompression)
            .field("sslkeylogfile", &self.sslkeylogfile)
            .field("ssl_min_protocol_version", &self.ssl_min_protocol_version)
            .field("ssl_max_protocol_version", &self.ssl_max_protocol_version)
            .field("ssl_dir", &self.ssl_dir)
            .field("channel_binding", &self.channel_binding)
            .field("gssencmode", &self.gssencmode)
            .field("require_auth", &self.require_auth)
            .field("requirepeer", &self.requirepeer)
            .field("target_session_attrs", &self.target_session_attrs)
            .field("keepalives", &self.keepalives)
            .field("keepalives_idle", &self.keepalives_idle)
            .field("keepalives_interval", &self.keepalives_interval)
            .field("keepalives_count", &self.keepalives_count)
            .field("tcp_user_timeout", &self.tcp_user_timeout)
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
    /// PGPASSFILE PGAPPNAME PGCONNECT_TIMEOUT PGOPTIONS PGSSLMODE PGSSLNEGOTIATION
    /// PGSSLROOTCERT PGSSLCERT PGSSLKEY PGSSLCERTMODE PGSSLCRL PGSSLCRLDIR PGSSLSNI
    /// PGSSLCOMPRESSION PGSSLMINPROTOCOLVERSION PGSSLMAXPROTOCOLVERSION
    /// PGTARGETSESSIONATTRS PGCHANNELBINDING PGGSSENCMODE PGREQUIREAUTH PGREQUIREPEER`. Hosts default to `PGHOST`, else the socket
    /// directory; an empty entry in a host list means the socket directory and an empty
    /// port entry means 5432. Options walsink has no use for (e.g. `replication`,
    /// `krbsrvname`) are accepted and ignored; the security options are validated here
    /// and those walsink cannot honour are named by [`ConnConfig::unsupported`].
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
        let sslrootcert = text("sslrootcert", "PGSSLROOTCERT");
        let system_roots = sslrootcert.as_deref() == Some("system");
        // libpq: sslrootcert=system makes verify-full the default, and nothing weaker
        // may be asked for with it.
        let sslmode = pick(opts, env, "sslmode", Some("PGSSLMODE"))
            .map(SslMode::from_str)
            .transpose()?
            .unwrap_or(if system_roots {
                SslMode::VerifyFull
            } else {
                SslMode::Prefer
            });
        let sslnegotiation = pick(opts, env, "sslnegotiation", Some("PGSSLNEGOTIATION"))
            .map(SslNegotiation::from_str)
            .transpose()?
            .unwrap_or(SslNegotiation::Postgres);
        let tls_required = matches!(
            sslmode,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        );
        if sslnegotiation == SslNegotiation::Direct && !tls_required {
            return Err(ConnInfoError::WeakSslMode {
                sslmode: sslmode.as_str(),
                with: "sslnegotiation=direct",
                stronger: "\"require\", \"verify-ca\", or \"verify-full\"",
            });
        }
        if system_roots && sslmode != SslMode::VerifyFull {
            return Err(ConnInfoError::WeakSslMode {
                sslmode: sslmode.as_str(),
                with: "sslrootcert=system",
                stronger: "\"verify-full\"",
            });
        }
        let version = |key: &'static str, var: &str| {
            pick(opts, env, key, Some(var))
                .map(|v| TlsVersion::parse(key, v))
                .transpose()
        };
        let ssl_min_protocol_version =
            version("ssl_min_protocol_version", "PGSSLMINPROTOCOLVERSION")?
                .unwrap_or(TlsVersion::V1_2);
        let ssl_max_protocol_version =
            version("ssl_max_protocol_version", "PGSSLMAXPROTOCOLVERSION")?;
        if let Some(max) = ssl_max_protocol_version
            && max < ssl_min_protocol_version
        {
            return Err(ConnInfoError::InvalidTlsRange {
                min: ssl_min_protocol_version.as_str(),
                max: max.as_str(),
            });
        }
        let sslcertmode = pick(opts, env, "sslcertmode", Some("PGSSLCERTMODE"))
            .map(SslCertMode::from_str)
            .transpose()?
            .unwrap_or(SslCertMode::Allow);
        let starts_with_1 =
            |key: &str, var: Option<&str>| pick(opts, env, key, var).map(|v| v.starts_with('1'));
        let target_session_attrs = pick(
            opts,
            env,
            "target_session_attrs",
            Some("PGTARGETSESSIONATTRS"),
        )
        .map(TargetSessionAttrs::from_str)
        .transpose()?
        .unwrap_or(TargetSessionAttrs::Any);
        let channel_binding = pick(opts, env, "channel_binding", Some("PGCHANNELBINDING"))
            .map(ChannelBinding::from_str)
            .transpose()?
            .unwrap_or(ChannelBinding::Prefer);
        let gssencmode = pick(opts, env, "gssencmode", Some("PGGSSENCMODE"))
            .map(GssEncMode::from_str)
            .transpose()?
            .unwrap_or(GssEncMode::Prefer);
        let require_auth = pick(opts, env, "require_auth", Some("PGREQUIREAUTH"))
            .map(RequireAuth::from_str)
            .transpose()?;
        if channel_binding == ChannelBinding::Require && sslmode == SslMode::Disable {
            return Err(ConnInfoError::ChannelBindingWithoutTls);
        }
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
            sslnegotiation,
            sslrootcert,
            sslcert: text("sslcert", "PGSSLCERT"),
            sslkey: text("sslkey", "PGSSLKEY"),
            sslcertmode,
            sslpassword: pick(opts, env, "sslpassword", None).map(str::to_owned),
            sslcrl: text("sslcrl", "PGSSLCRL"),
            sslcrldir: text("sslcrldir", "PGSSLCRLDIR"),
            sslsni: starts_with_1("sslsni", Some("PGSSLSNI")).unwrap_or(true),
            sslcompression: starts_with_1("sslcompression", Some("PGSSLCOMPRESSION"))
                .unwrap_or(false),
            sslkeylogfile: pick(opts, env, "sslkeylogfile", None).map(str::to_owned),
            ssl_min_protocol_version,
            ssl_max_protocol_version,
            ssl_dir: env
                .home
                .as_ref()
                .filter(|h| !h.as_os_str().is_empty())
                .map(|h| h.join(".postgresql")),
            channel_binding,
            gssencmode,
            require_auth,
            requirepeer: text("requirepeer", "PGREQUIREPEER"),
            target_session_attrs,
            keepalives: int_option(opts, "keepalives", None, env)?.is_none_or(|v| v != 0),
            keepalives_idle: secs(int_option(opts, "keepalives_idle", None, env)?),
            keepalives_interval: secs(int_option(opts, "keepalives_interval", None, env)?),
            keepalives_count: positive(int_option(opts, "keepalives_count", None, env)?),
            tcp_user_timeout: positive(int_option(opts, "tcp_user_timeout", None, env)?)
                .map(|ms| Duration::from_millis(u64::from(ms))),
        })
    }

    /// The password to use for `target`: the explicit one (`password`, `PGPASSWORD`)
    /// first, else the first matching line of `pgpass`, the content of the password
    /// file (`passfile`) that the caller read, or `None` if it has none or must not use it.
    ///
    /// Lines match on host, port, database and user, with `*` wildcards and `\`
    /// escapes; for a Unix-socket target the host field matches `localhost` or the socket
    /// directory, like libpq. A matching line with an empty password yields `None`.
    /// (libpq matches Unix-socket targets against `localhost` only for its compiled-in
    /// socket directory and against the directory otherwise; walsink accepts either for
    /// any socket directory.)
    pub fn password_for(&self, target: &Target, pgpass: Option<&str>) -> Option<String> {
        if let Some(password) = &self.password {
            return Some(password.clone());
        }
        let host = target.display_host();
        let hosts: Vec<&str> = match target.host {
            Host::Tcp(_) => vec![host.as_str()],
            Host::Unix(_) => vec!["localhost", host.as_str()],
        };
        pgpass::match_any_host(pgpass?, &hosts, target.port, &self.dbname, &self.user)
            // An empty password field means no password, like an empty `password=`.
            .filter(|p| !p.is_empty())
    }
}
