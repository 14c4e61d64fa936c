//! `walsink`: the command line. Glue only: parse and validate flags, set up logging and
//! signals, run the receiver, and map the outcome to an exit code.
//!
//! Called as `pg_receivewal` (the file name of argv[0], e.g. a symbolic link), walsink is
//! `walsink receive` with pg_receivewal's message form: see [`Personality`].

mod cli;
mod log;
mod restore;
mod run;
mod service;
mod status;
mod verify;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use tokio_util::sync::CancellationToken;
use tracing::error;
use walsink_receiver::{ErrorKind, ReceiverError};

use crate::cli::{Action, Cli, Command, PgReceivewalCli, ReceiveArgs};

/// Exit codes. Documented in the README; scripts and systemd units rely on them.
pub(crate) mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const DISCONNECTED: u8 = 3;
    pub const AUTH_FAILED: u8 = 10;
    pub const NOT_PERMITTED: u8 = 11;
    pub const SLOT_MISSING: u8 = 12;
    pub const SLOT_IN_USE: u8 = 13;
    pub const WAL_REMOVED: u8 = 14;
    pub const SYSTEM_ID_MISMATCH: u8 = 15;
    pub const ARCHIVE_LOCKED: u8 = 16;
    pub const ARCHIVE_ERROR: u8 = 17;
    pub const ARCHIVE_LOCK_LOST: u8 = 18;
    pub const TLS: u8 = 19;
    pub const VERIFY_PROBLEMS: u8 = 20;
    pub const INVALID_WAL: u8 = 21;
}

fn exit_code(e: &ReceiverError) -> u8 {
    match e.kind() {
        ErrorKind::Transient => exit::DISCONNECTED,
        ErrorKind::AuthFailed => exit::AUTH_FAILED,
        ErrorKind::NotPermitted => exit::NOT_PERMITTED,
        ErrorKind::SlotMissing => exit::SLOT_MISSING,
        ErrorKind::SlotInUse => exit::SLOT_IN_USE,
        ErrorKind::WalRemoved => exit::WAL_REMOVED,
        ErrorKind::SystemIdMismatch => exit::SYSTEM_ID_MISMATCH,
        ErrorKind::ArchiveLocked => exit::ARCHIVE_LOCKED,
        ErrorKind::ArchiveLockLost => exit::ARCHIVE_LOCK_LOST,
        ErrorKind::Tls => exit::TLS,
        ErrorKind::InvalidWal => exit::INVALID_WAL,
        ErrorKind::Archive | ErrorKind::DiskFull => exit::ARCHIVE_ERROR,
        _ => exit::ERROR,
    }
}

/// Who walsink is, by the name it was called by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Personality {
    /// `walsink`, with subcommands and its own message form.
    Walsink,
    /// `pg_receivewal`: the flags of `walsink receive` without a subcommand, and
    /// pg_receivewal's message form (`pg_receivewal: error: ...`), so that programs driving
    /// pg_receivewal (Barman, scripts) work unchanged with `ln -s walsink pg_receivewal`.
    PgReceivewal,
}

impl Personality {
    /// From the file name of argv[0]: `pg_receivewal` is [`Personality::PgReceivewal`],
    /// anything else [`Personality::Walsink`].
    pub fn from_argv0(argv0: Option<&std::ffi::OsStr>) -> Personality {
        let name = argv0.and_then(|a| std::path::Path::new(a).file_name());
        if name.is_some_and(|n| n == "pg_receivewal") {
            Personality::PgReceivewal
        } else {
            Personality::Walsink
        }
    }

    /// The program name messages start with, and the fallback `application_name`.
    pub fn program(self) -> &'static str {
        match self {
            Personality::Walsink => "walsink",
            Personality::PgReceivewal => "pg_receivewal",
        }
    }

    /// Prints a usage error in this personality's form and exits with status 2.
    fn usage_error(self, message: &str) -> ! {
        match self {
            Personality::Walsink => {
                // The same shape as clap's own usage errors.
                let mut cmd = Cli::command();
                cmd.build();
                let receive = cmd
                    .find_subcommand_mut("receive")
                    .expect("receive subcommand");
                receive
                    .error(clap::error::ErrorKind::ArgumentConflict, message)
                    .exit();
            }
            Personality::PgReceivewal => {
                eprint!(
                    "{}",
                    log::pg_lines(
                        "pg_receivewal",
                        tracing::Level::ERROR,
                        &format!(
                            "{message}\nHINT:  Try \"pg_receivewal --help\" for more information."
                        )
                    )
                );
                std::process::exit(exit::USAGE.into());
            }
        }
    }
}

/// The flags of `walsink receive` (or of pg_receivewal), parsed; help and usage errors exit here.
fn parse_receive_args(personality: Personality) -> ReceiveArgs {
    match personality {
        Personality::Walsink => match Cli::parse().command {
            Command::Receive(args) => args,
            Command::Run(args) => std::process::exit(run::main(args).into()),
            other => {
                let code = run_tool(other);
                let _ = std::io::Write::flush(&mut std::io::stdout());
                std::process::exit(i32::from(code))
            }
        },
        Personality::PgReceivewal => match PgReceivewalCli::try_parse() {
            Ok(cli) => cli.args,
            Err(e) if !e.use_stderr() => e.exit(),
            Err(e) => {
                // A bad value names the flag and what is wrong (clap's text); the flag's own
                // parser's message (e.g. "could not parse end position") comes first when
                // there is one, as pg_receivewal words it.
                let text = match std::error::Error::source(&e) {
                    Some(source) => source.to_string(),
                    None => clap_message(&e),
                };
                personality.usage_error(&text)
            }
        },
    }
}

/// The subcommands other than `receive`, each in its own module; returns the exit code.
fn run_tool(command: Command) -> u8 {
    match command {
        Command::Restore(args) => restore::run(args),
        Command::Status(args) => status::run(args),
        Command::Verify(args) => verify::main(args),
        Command::Receive(_) | Command::Run(_) => unreachable!("handled by parse_receive_args"),
    }
}

/// clap's error message without its `error: ` prefix, usage and tip lines.
fn clap_message(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let personality = Personality::from_argv0(argv.first().map(|a| a.as_os_str()));
    if personality == Personality::Walsink
        && let Some(args) = restore::parse_early(&argv)
    {
        return ExitCode::from(restore::run(args));
    }
    let args = parse_receive_args(personality);
    if args.version {
        println!("{}", cli::receive_version_line());
        return ExitCode::from(exit::OK);
    }
    let no_password = args.no_password;
    let prompt_first = args.password;
    let metrics_listen = args.metrics_listen;
    let log_format = match (personality, args.log_format) {
        (Personality::PgReceivewal, Some(_)) => personality.usage_error(
            "--log-format is a flag of walsink receive: as pg_receivewal, walsink writes pg_receivewal's message form",
        ),
        (_, format) => format.unwrap_or_default(),
    };
    let env = walsink_receiver::process_env();
    let (mut config, action, verbose) = match args.into_config(&env, personality.program()) {
        Ok(v) => v,
        Err(e) => personality.usage_error(&e.0),
    };
    log::init(personality, verbose, log_format);

    if prompt_first {
        match prompt_password() {
            Some(p) => config.password = Some(p),
            None => {
                personality.usage_error("-W/--password needs a terminal to read the password from")
            }
        }
    }

    // One thread for the network side (a single task); the writer thread waits on this
    // runtime's timers through Handle::block_on, which works because this thread drives
    // them in Runtime::block_on for the whole run. A multi-thread runtime measured slower
    // for --synchronous: each wake-up can also wake an idle worker.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let result = rt.block_on(async move {
        let cancel = CancellationToken::new();
        tokio::spawn(watch_signals(cancel.clone()));
        // Bound before anything starts: a busy or forbidden address is a startup error.
        let metrics = match metrics_listen {
            Some(addr) if matches!(action, Action::Stream) => {
                match walsink_monitor::MetricsServer::bind(addr).await {
                    Ok(m) => Some(m),
                    Err(e) => {
                        return Err(ReceiverError::fatal(format!(
                            "cannot serve metrics on {addr} (--metrics-listen): {e}"
                        )));
                    }
                }
            }
            _ => None,
        };
        let sources = walsink_monitor::Sources::single(
            service::source_name(&config.dir),
            config.observer.clone(),
        );
        let observe = matches!(action, Action::Stream);
        let run = |config: walsink_receiver::ReceiveConfig| {
            let cancel = cancel.clone();
            async move {
                match action {
                    Action::Stream => walsink_receiver::receive(config, cancel).await,
                    Action::CreateSlot { if_not_exists } => {
                        walsink_receiver::create_slot(&config, if_not_exists).await
                    }
                    Action::DropSlot => walsink_receiver::drop_slot(&config).await,
                }
            }
        };
        let attempts = async {
            let first = run(config.clone()).await;
            // As libpq clients do: if the server wants a password we do not have, ask once.
            match first {
                Err(e)
                    if matches!(e.primary(), ReceiverError::PasswordRequired)
                        && !no_password
                        && config.password.is_none()
                        && std::io::stdin().is_terminal() =>
                {
                    match prompt_password() {
                        Some(p) => {
                            config.password = Some(p);
                            run(config).await
                        }
                        None => Err(e),
                    }
                }
                other => other,
            }
        };
        if observe {
            service::observed(
                sources,
                metrics,
                walsink_monitor::notify::Ready::FirstStream,
                &cancel,
                attempts,
            )
            .await
        } else {
            attempts.await
        }
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            error!("{e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn prompt_password() -> Option<String> {
    if !std::io::stdin().is_terminal() {
        return None;
    }
    rpassword::prompt_password("Password: ").ok()
}

async fn watch_signals(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    cancel.cancel();
    // A second signal while shutting down: stop waiting.
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn the_name_called_by_decides_the_personality() {
        let p = |a: &str| Personality::from_argv0(Some(OsStr::new(a)));
        assert_eq!(p("pg_receivewal"), Personality::PgReceivewal);
        assert_eq!(
            p("/opt/barman-bin/pg_receivewal"),
            Personality::PgReceivewal
        );
        assert_eq!(p("walsink"), Personality::Walsink);
        assert_eq!(p("/usr/bin/walsink"), Personality::Walsink);
        assert_eq!(p("pg_receivewal-old"), Personality::Walsink);
        assert_eq!(Personality::from_argv0(None), Personality::Walsink);
    }
}
