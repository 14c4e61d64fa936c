//! `walsink`: the command line. Glue only: parse and validate flags, set up logging and
//! signals, run the receiver, and map the outcome to an exit code.

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use tokio_util::sync::CancellationToken;
use tracing::error;
use tracing_subscriber::EnvFilter;
use walsink_receiver::{ErrorKind, ReceiverError};

use crate::cli::{Action, Cli, Command};

/// Exit codes. Documented in the README; scripts and systemd units rely on them.
mod exit {
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
        ErrorKind::Archive | ErrorKind::DiskFull => exit::ARCHIVE_ERROR,
        _ => exit::ERROR,
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "info,walsink=debug,walsink_receiver=debug,walsink_archive=debug",
        _ => "debug,walsink=trace,walsink_receiver=trace,walsink_archive=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Command::Receive(args) = cli.command;
    let no_password = args.no_password;
    let prompt_first = args.password;
    let env = walsink_receiver::process_env();
    let (mut config, action, verbose) = match args.into_config(&env) {
        Ok(v) => v,
        Err(e) => {
            // The same shape as clap's own usage errors; exits with status 2.
            let mut cmd = Cli::command();
            cmd.build();
            let receive = cmd
                .find_subcommand_mut("receive")
                .expect("receive subcommand");
            receive
                .error(clap::error::ErrorKind::ArgumentConflict, e.0)
                .exit();
        }
    };
    init_logging(verbose);

    if prompt_first {
        match prompt_password() {
            Some(p) => config.password = Some(p),
            None => {
                eprintln!(
                    "walsink: error: -W/--password needs a terminal to read the password from"
                );
                return ExitCode::from(exit::USAGE);
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
