//! Connection options as libpq takes them.
//!
//! * [`ConnOptions::parse`] reads a `keyword=value` connection string or a
//!   `postgresql://` URI into an ordered set of options, rejecting unknown keywords the
//!   way libpq's `conninfo_parse` and `conninfo_uri_parse` do.
//! * [`ConnConfig::resolve`] applies libpq's precedence (explicit options, then `PG*`
//!   environment variables, then defaults) and pairs hosts, `hostaddr`s and ports into
//!   an ordered list of [`Target`]s, as `connectOptions2` in `fe-connect.c` does.
//! * [`ConnConfig::unsupported`] names an option that asks for something walsink
//!   cannot do (GSSAPI encryption, encrypted client keys, TLS compression, TLS before
//!   1.2, key log files), which the caller refuses.
//! * [`ConnConfig::password_for`] and [`pgpass_match`] implement `.pgpass` lookup over
//!   the file's content.
//!
//! Everything here is pure: the environment comes in as an [`Env`] and the password
//! file as its content; the receiver crate reads both from the process.
//!
//! One file per job: `parse` (connection strings and URIs), `resolve` (precedence,
//! defaults, targets), `options` (enumerated options, `require_auth`, refusals), `env`
//! (the injected process facts), `pgpass` (the password file format), `error`.
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

mod env;
mod error;
mod options;
mod parse;
mod pgpass;
mod resolve;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use env::Env;
pub use error::ConnInfoError;
pub use options::{
    AuthMethod, ChannelBinding, GssEncMode, RequireAuth, SslCertMode, SslMode, SslNegotiation,
    TargetSessionAttrs, TlsVersion,
};
pub use parse::{ConnOptions, KEYWORDS};
pub use pgpass::pgpass_match;
pub use resolve::{ConnConfig, Host, Target};

/// What `Debug` prints in place of secrets.
const REDACTED: &str = "<redacted>";

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
            let _ = config.unsupported().map(|e| e.to_string());
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
