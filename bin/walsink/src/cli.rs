//! The command line: clap's derive structs mirror the flags as given (the "low" layer);
//! [`ReceiveArgs::into_config`] validates them into a [`ReceiveConfig`] (the "high" layer).

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};
use walsink_archive::{Prefill, WriterOptions};
use walsink_protocol::conninfo::{ConnConfig, ConnOptions, Env};
use walsink_protocol::query::valid_slot_name;
use walsink_receiver::ReceiveConfig;
use walsink_wal::Lsn;

/// PostgreSQL WAL streaming receiver: a durable, pg_receivewal-compatible archive.
#[derive(Parser, Debug)]
#[command(name = "walsink", version, about, term_width = 95)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// Stream WAL from a server into an archive directory (like pg_receivewal).
    Receive(ReceiveArgs),
    /// Run many sources from a configuration file, as a service (SIGHUP reloads it).
    Run(crate::run::RunArgs),
    /// Copy one WAL segment or history file out of the archive (PostgreSQL's restore_command).
    Restore(crate::restore::RestoreArgs),
    /// Show what the archive holds per timeline, and with -d how far behind the server it is.
    Status(crate::status::StatusArgs),
    /// Check the archive: file names and sizes, continuity per timeline, every page header and
    /// record CRC.
    Verify(crate::verify::VerifyArgs),
}

/// walsink called as `pg_receivewal` (a symbolic link, say): the flags of `walsink receive`, no
/// subcommand.
#[derive(Parser, Debug)]
#[command(
    name = "pg_receivewal",
    about = "walsink, called as pg_receivewal: stream WAL from a server into an archive directory.",
    disable_help_flag = true,
    disable_version_flag = true,
    term_width = 95,
    // pg_receivewal has one message form; main refuses the flag under this name.
    mut_arg("log_format", |a| a.hide(true))
)]
pub struct PgReceivewalCli {
    /// The flags, exactly those of `walsink receive`.
    #[command(flatten)]
    pub args: ReceiveArgs,
}

/// The newest PostgreSQL release walsink claims to be compatible with in its pg_receivewal version
/// line: the newest major walsink supports (README, "Every PostgreSQL major"). Programs that drive
/// pg_receivewal take this as the client's version and refuse a server newer than it (Barman:
/// `9.2 < server major <= client major`), so it must be the newest major walsink streams from. The
/// minor is `.0`: walsink behaves the same with every minor, but Barman's parser needs one.
pub const PG_COMPAT_VERSION: &str = "18.0";

/// What `walsink receive --version` and `pg_receivewal --version` print:
/// `pg_receivewal (PostgreSQL) 18.0 (walsink 0.1.0)`. Parsers of pg_receivewal's version line drop
/// parenthesised text and take the second word, here [`PG_COMPAT_VERSION`].
pub fn receive_version_line() -> String {
    format!(
        "pg_receivewal (PostgreSQL) {PG_COMPAT_VERSION} (walsink {})",
        env!("CARGO_PKG_VERSION")
    )
}

/// `walsink receive`. Flags and meanings follow pg_receivewal.
#[derive(Args, Debug)]
#[command(disable_help_flag = true, disable_version_flag = true)]
pub struct ReceiveArgs {
    /// Receive WAL files into this directory (must exist).
    #[arg(short = 'D', long = "directory", value_name = "DIR")]
    pub directory: Option<PathBuf>,

    /// Exit after receiving up to this LSN (X/X).
    #[arg(short = 'E', long = "endpos", value_name = "LSN", value_parser = parse_lsn)]
    pub endpos: Option<Lsn>,

    /// Do not error out when --create-slot is given and the slot already exists.
    #[arg(long = "if-not-exists")]
    pub if_not_exists: bool,

    /// Do not retry after losing the connection; exit instead.
    #[arg(short = 'n', long = "no-loop")]
    pub no_loop: bool,

    /// Do not fsync anything (tests only: a crash can lose WAL; no flush position is reported).
    #[arg(long = "no-sync")]
    pub no_sync: bool,

    /// Time between status updates sent to the server, in seconds (0 disables them).
    #[arg(short = 's', long = "status-interval", value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(0..=2_147_483))]
    pub status_interval: u32,

    /// Reconnect when the server has sent nothing for this long (it is asked for a reply
    /// after half of it); 0 disables. Catches dead servers and networks that do not close
    /// the connection.
    #[arg(long = "receive-timeout", value_name = "DURATION", default_value = "60s", value_parser = parse_timeout)]
    pub receive_timeout: Duration,

    /// Replication slot to stream from.
    #[arg(short = 'S', long = "slot", value_name = "SLOTNAME")]
    pub slot: Option<String>,

    /// Flush WAL as soon as it is received and report it at once (synchronous standby).
    #[arg(long = "synchronous")]
    pub synchronous: bool,

    /// In the default mode, fdatasync once this many bytes are unsynced (e.g. 4MB).
    #[arg(long = "flush-bytes", value_name = "SIZE", default_value = "4MB", value_parser = parse_size)]
    pub flush_bytes: u64,

    /// In the default mode, fdatasync once the oldest unsynced byte is this old (e.g. 200ms, 1s).
    #[arg(long = "flush-interval", value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub flush_interval: Duration,

    /// If the server no longer has WAL the archive needs, continue from the oldest WAL it
    /// still has instead of exiting (code 14), and record the gap in .walsink.meta.
    #[arg(long = "allow-gap")]
    pub allow_gap: bool,

    /// How long "replication slot is active" is retried (a crashed predecessor's walsender may
    /// hold the slot a moment longer) before it exits 13. Not in --help: tests shorten it
    /// instead of sleeping through the default.
    #[arg(long = "slot-in-use-grace", value_name = "DURATION", hide = true, value_parser = parse_duration)]
    pub slot_in_use_grace: Option<Duration>,

    /// More output (repeat for more).
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,

    /// Create the replication slot named by --slot (reserving WAL at once), then exit.
    #[arg(long = "create-slot")]
    pub create_slot: bool,

    /// With --slot: create the slot (reserving WAL) on a server that does not have it, e.g.
    /// a promoted standby, and stream, instead of exiting with code 12.
    #[arg(long = "create-slot-if-missing")]
    pub create_slot_if_missing: bool,

    /// Drop the replication slot named by --slot, then exit.
    #[arg(long = "drop-slot")]
    pub drop_slot: bool,

    /// -d, -h, -p, -U.
    #[command(flatten)]
    pub conn: ConnArgs,

    /// Never prompt for a password.
    #[arg(short = 'w', long = "no-password")]
    pub no_password: bool,

    /// Prompt for a password before connecting.
    #[arg(short = 'W', long = "password")]
    pub password: bool,

    /// Show the version line pg_receivewal's users parse, then exit.
    #[arg(short = 'V', long = "version")]
    pub version: bool,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics and a health check at /health.
    #[arg(long = "metrics-listen", value_name = "ADDR:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Log format: text (default) or json (one object per line).
    #[arg(long = "log-format", value_name = "FORMAT")]
    pub log_format: Option<crate::log::LogFormat>,

    /// Show this help, then exit.
    #[arg(short = '?', long = "help", action = ArgAction::Help)]
    pub help: Option<bool>,
}

/// The connection flags of `walsink receive` and `walsink status`: a connection string and the
/// `-h`/`-p`/`-U` overrides, spelled as pg_receivewal spells them. The help texts are
/// receive's; `status` rewords `-d` and `-h` with `mut_arg`.
#[derive(Args, Debug)]
pub struct ConnArgs {
    /// Connection string (key=value or postgresql:// URI).
    #[arg(short = 'd', long = "dbname", value_name = "CONNSTR")]
    pub dbname: Option<String>,

    /// Database server host or socket directory.
    #[arg(short = 'h', long = "host", value_name = "HOSTNAME")]
    pub host: Option<String>,

    /// Database server port number.
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    pub port: Option<String>,

    /// Connect as this database user.
    #[arg(short = 'U', long = "username", value_name = "NAME")]
    pub username: Option<String>,
}

/// What `receive` should do after validation.
#[derive(Clone, Copy)]
pub enum Action {
    Stream,
    CreateSlot { if_not_exists: bool },
    DropSlot,
}

/// A usage error: the flag and what is wrong with it.
#[derive(Debug)]
pub struct UsageError(pub String);

pub(crate) fn parse_lsn(s: &str) -> Result<Lsn, String> {
    s.parse::<Lsn>().map_err(|_| {
        format!("could not parse end position \"{s}\": expected an LSN like 0/16B3748")
    })
}

/// Parses sizes like `4MB`, `512kB`, `1GB`, `65536`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid size \"{s}\": expected a number with an optional unit kB, MB or GB")
    })?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "invalid size \"{s}\": unknown unit \"{unit}\" (use kB, MB or GB)"
            ));
        }
    };
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("size \"{s}\" is too large"))?;
    if v == 0 {
        return Err(format!("size \"{s}\" must be greater than zero"));
    }
    Ok(v)
}

/// Like [`parse_duration`], but `0` means "disabled" (returned as zero).
fn parse_timeout(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        Ok(Duration::ZERO)
    } else {
        parse_duration(s)
    }
}

/// Parses durations like `200ms`, `1s`, `2` (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration \"{s}\": expected a number with unit ms or s"))?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "min" => Duration::from_secs(n * 60),
        _ => {
            return Err(format!(
                "invalid duration \"{s}\": unknown unit \"{unit}\" (use ms, s or min)"
            ));
        }
    };
    if d.is_zero() {
        return Err(format!("duration \"{s}\" must be greater than zero"));
    }
    Ok(d)
}

impl ReceiveArgs {
    /// Validates the flags (in pg_receivewal's order) into a configuration. `program` is the
    /// `application_name` used when the connection string sets none (`walsink`, or
    /// `pg_receivewal` when called so, as pg_receivewal's fallback).
    pub fn into_config(
        self,
        env: &Env,
        program: &str,
    ) -> Result<(ReceiveConfig, Action, u8), UsageError> {
        let u = |m: &str| Err(UsageError(m.to_owned()));
        if self.create_slot && self.drop_slot {
            return u("cannot use --create-slot together with --drop-slot");
        }
        if (self.create_slot || self.drop_slot) && self.slot.is_none() {
            return u(if self.create_slot {
                "--create-slot needs a slot to be specified using --slot"
            } else {
                "--drop-slot needs a slot to be specified using --slot"
            });
        }
        if self.create_slot_if_missing && self.slot.is_none() {
            return u("--create-slot-if-missing needs a slot to be specified using --slot");
        }
        if self.synchronous && self.no_sync {
            return u("cannot use --synchronous together with --no-sync");
        }
        if self.no_password && self.password {
            return u("cannot use -w/--no-password together with -W/--password");
        }
        if let Some(s) = &self.slot
            && !valid_slot_name(s)
        {
            return Err(UsageError(format!(
                "invalid replication slot name \"{s}\" for -S/--slot: use 1 to 63 lower-case letters, digits and underscores"
            )));
        }
        let action = if self.create_slot {
            Action::CreateSlot {
                if_not_exists: self.if_not_exists,
            }
        } else if self.drop_slot {
            Action::DropSlot
        } else {
            Action::Stream
        };
        let dir = match (&self.directory, &action) {
            (Some(d), _) => d.clone(),
            (None, Action::Stream) => {
                return u("no target directory specified; use -D/--directory");
            }
            (None, _) => PathBuf::new(),
        };

        let conn = self.conn.config(env, program)?;
        let config = ReceiveConfig {
            conn,
            password: None,
            dir,
            slot: self.slot,
            create_slot_if_missing: self.create_slot_if_missing,
            endpos: self.endpos,
            status_interval: (self.status_interval > 0)
                .then(|| Duration::from_secs(self.status_interval.into())),
            receive_timeout: (!self.receive_timeout.is_zero()).then_some(self.receive_timeout),
            synchronous: self.synchronous,
            no_sync: self.no_sync,
            no_loop: self.no_loop,
            flush_bytes: self.flush_bytes,
            flush_interval: self.flush_interval,
            allow_gap: self.allow_gap,
            slot_in_use_grace: self
                .slot_in_use_grace
                .unwrap_or(walsink_receiver::run::SLOT_IN_USE_GRACE),
            write_options: bench_write_options(self.synchronous, |k| std::env::var(k).ok()),
            observer: Default::default(),
        };
        Ok((config, action, self.verbose))
    }
}

impl ConnArgs {
    /// The connection from `-d` and the `-h`/`-p`/`-U` overrides (in pg_receivewal's order:
    /// the flags come later and win), resolved against the environment and refused if it
    /// asks for what walsink cannot honour.
    pub fn config(&self, env: &Env, program: &str) -> Result<ConnConfig, UsageError> {
        let mut opts = match self.dbname.as_deref() {
            Some(s) if ConnOptions::is_conninfo(s) => ConnOptions::parse(s)
                .map_err(|e| UsageError(format!("invalid -d/--dbname connection string: {e}")))?,
            Some(s) => {
                let mut o = ConnOptions::default();
                o.set("dbname", s).map_err(|e| UsageError(e.to_string()))?;
                o
            }
            None => ConnOptions::default(),
        };
        for (key, val, flag) in [
            ("host", &self.host, "-h/--host"),
            ("port", &self.port, "-p/--port"),
            ("user", &self.username, "-U/--username"),
        ] {
            if let Some(v) = val {
                opts.set(key, v)
                    .map_err(|e| UsageError(format!("invalid {flag}: {e}")))?;
            }
        }
        let conn = ConnConfig::resolve(&opts, env, program)
            .map_err(|e| UsageError(format!("invalid connection options: {e}")))?;
        if let Some(e) = conn.unsupported() {
            return Err(UsageError(e.to_string()));
        }
        Ok(conn)
    }
}

/// For benchmark comparisons only (benches/*.sh, BENCHMARKS.md): the `WALSINK_BENCH_*`
/// environment variables override how segment files are prepared and written, starting
/// from the library's choice for the mode. `None` when none is set.
///
/// `WALSINK_BENCH_PREFILL` (`zeros`|`fallocate`), `WALSINK_BENCH_DIRECT` (`0`|`1`),
/// `WALSINK_BENCH_WRITE_BEHIND` (bytes), `WALSINK_BENCH_IO_THREADS` (threads),
/// `WALSINK_BENCH_BACKGROUND_SYNC` (`0`|`1`) and `WALSINK_BENCH_VALIDATE` (`0`|`1`, WAL
/// validation). Values that do not parse are ignored.
pub fn bench_write_options(
    synchronous: bool,
    env: impl Fn(&str) -> Option<String>,
) -> Option<WriterOptions> {
    let mut o = walsink_receiver::writer::default_options(synchronous);
    let mut set = false;
    match env("WALSINK_BENCH_PREFILL").as_deref() {
        Some("zeros") => (o.prefill, set) = (Prefill::Zeros, true),
        Some("fallocate") => (o.prefill, set) = (Prefill::Fallocate, true),
        _ => {}
    }
    if let Some(v) = env("WALSINK_BENCH_DIRECT") {
        (o.direct_io, set) = (v != "0", true);
    }
    if let Some(v) = env("WALSINK_BENCH_WRITE_BEHIND").and_then(|v| v.parse().ok()) {
        (o.write_behind, set) = (v, true);
    }
    if let Some(v) = env("WALSINK_BENCH_IO_THREADS").and_then(|v| v.parse().ok()) {
        (o.io_threads, set) = (v, true);
    }
    if let Some(v) = env("WALSINK_BENCH_BACKGROUND_SYNC") {
        (o.background_sync, set) = (v != "0", true);
    }
    if let Some(v) = env("WALSINK_BENCH_VALIDATE") {
        (o.validate, set) = (v != "0", true);
    }
    set.then_some(o)
}

#[cfg(test)]
mod bench_env_tests {
    use super::*;

    #[test]
    fn bench_switches_override_the_mode_default_and_nothing_else() {
        let none = |_: &str| None;
        assert_eq!(bench_write_options(false, none), None);
        let env = |k: &str| match k {
            "WALSINK_BENCH_PREFILL" => Some("zeros".to_string()),
            "WALSINK_BENCH_BACKGROUND_SYNC" => Some("0".to_string()),
            _ => None,
        };
        let o = bench_write_options(false, env).expect("overridden");
        let base = walsink_receiver::writer::default_options(false);
        assert_eq!(o.prefill, Prefill::Zeros);
        assert!(!o.background_sync);
        assert_eq!(o.write_behind, base.write_behind);
        assert_eq!(o.direct_io, base.direct_io);
        let o = bench_write_options(true, |k| (k == "WALSINK_BENCH_DIRECT").then(|| "1".into()))
            .expect("overridden");
        assert!(o.direct_io);
        assert_eq!(o.write_behind, 0, "the --synchronous default stays");
        assert!(o.validate, "validation is on by default");
        let o = bench_write_options(false, |k| {
            (k == "WALSINK_BENCH_VALIDATE").then(|| "0".into())
        })
        .expect("overridden");
        assert!(!o.validate);
    }
}

#[cfg(test)]
mod conn_args_tests {
    use clap::CommandFactory;

    use super::*;

    /// The connection flags as `walsink <sub>` parses them, for `receive` and `status`.
    fn conn_args(sub: &str, flags: &[&str]) -> ConnArgs {
        let argv = ["walsink", sub, "-D", "/archive"]
            .into_iter()
            .chain(flags.iter().copied());
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Receive(a) => a.conn,
            Command::Status(a) => a.conn,
            _ => unreachable!(),
        }
    }

    #[test]
    fn receive_and_status_read_the_connection_flags_alike() {
        let flags = [
            "-d",
            "host=from-d port=5433 user=d_user dbname=db",
            "-h",
            "from-h",
            "-U",
            "u_user",
        ];
        for sub in ["receive", "status"] {
            let conn = conn_args(sub, &flags)
                .config(&Env::default(), "walsink")
                .expect("valid");
            // The flags come after -d and win; what they leave alone stays from -d.
            assert_eq!(conn.targets.len(), 1, "{sub}");
            assert_eq!(conn.targets[0].display_host(), "from-h", "{sub}");
            assert_eq!(conn.targets[0].port, 5433, "{sub}");
            assert_eq!(conn.user, "u_user", "{sub}");
            assert_eq!(conn.dbname, "db", "{sub}");

            let err = |flags: &[&str]| {
                conn_args(sub, flags)
                    .config(&Env::default(), "walsink")
                    .expect_err("refused")
                    .0
            };
            let e = err(&["-d", "host='unterminated"]);
            assert!(
                e.starts_with("invalid -d/--dbname connection string: "),
                "{sub}: {e}"
            );
            let e = err(&["-p", "not-a-port"]);
            assert!(
                e.starts_with("invalid connection options: invalid port"),
                "{sub}: {e}"
            );
        }
    }

    #[test]
    fn status_words_its_connection_help_as_an_extra() {
        let cmd = Cli::command();
        let help = |sub: &str, id: &str| {
            let sub = cmd.find_subcommand(sub).expect("subcommand");
            let arg = sub.get_arguments().find(|a| a.get_id() == id);
            arg.expect("argument").get_help().expect("help").to_string()
        };
        assert_eq!(
            help("receive", "host"),
            "Database server host or socket directory"
        );
        assert_eq!(
            help("status", "host"),
            "Database server host or socket directory (with -d)"
        );
        assert!(help("status", "dbname").starts_with("Also connect to this server"));
        assert_eq!(help("status", "port"), help("receive", "port"));
        assert_eq!(help("status", "username"), help("receive", "username"));
    }
}
