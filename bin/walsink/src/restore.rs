//! `walsink restore`: PostgreSQL's `restore_command`.
//!
//! `restore_command = 'walsink restore -D /srv/wal %f %p'`. Exit codes follow what
//! PostgreSQL makes of them: 0 when the file is at `%p`; 1 when the archive does not
//! have it (PostgreSQL then looks in `pg_wal`, or ends recovery: routine at the end of
//! the archive); 2 for a usage error; and 128 when the file is in the archive but
//! cannot be served (a link, a wrong size, an I/O error, a full disk at `%p`): an exit
//! status above 125 makes PostgreSQL stop recovery (FATAL) instead of ending it early
//! and promoting without that WAL.

use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser};
use walsink_archive::restore::{
    Absent, Outcome, RestoreOptions, RestoreRequest, Restored, restore,
};

/// Exit codes of `walsink restore` (README, "Restoring").
mod exit {
    pub const SERVED: u8 = 0;
    pub const ABSENT: u8 = 1;
    pub const USAGE: u8 = 2;
    /// Above 125: PostgreSQL treats it like "command not found" and stops recovery.
    pub const FAILED: u8 = 128;
}

// `walsink restore` on its own, for `parse_early` (its help is the subcommand's).
#[derive(Parser, Debug)]
#[command(
    name = "walsink restore",
    about = "Copy one WAL segment or history file out of the archive (PostgreSQL's restore_command)",
    long_about = None,
    term_width = 95
)]
struct RestoreCli {
    #[command(flatten)]
    args: RestoreArgs,
}

/// `walsink restore ...` parsed without building the command line of the other subcommands
/// (the receiver's flags are most of clap's start-up work): PostgreSQL starts one
/// `walsink restore` per file it restores, so its start-up is part of every segment's
/// time. `None` for any other command line. Help and usage errors exit here, as clap's.
pub fn parse_early(args: &[std::ffi::OsString]) -> Option<RestoreArgs> {
    if args.get(1).is_none_or(|a| a != "restore") {
        return None;
    }
    // Usage lines name the program as the subcommand's do: "walsink restore".
    let program = std::path::Path::new(&args[0])
        .file_name()
        .map_or("walsink".into(), |n| n.to_string_lossy());
    let matches = RestoreCli::command()
        .bin_name(format!("{program} restore"))
        .get_matches_from(&args[1..]);
    Some(
        RestoreCli::from_arg_matches(&matches)
            .unwrap_or_else(|e| e.exit())
            .args,
    )
}

/// Copy one WAL segment or history file out of the archive (PostgreSQL's restore_command).
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The archive directory.
    #[arg(short = 'D', long = "directory", value_name = "DIR")]
    pub directory: PathBuf,

    /// Also serve a segment that exists only as the archive's newest NAME.partial (the WAL
    /// received last before the primary was lost).
    #[arg(long = "partial")]
    pub partial: bool,

    /// Do not fdatasync the copy before renaming it into place (it is still renamed into
    /// place whole). PostgreSQL fetches a file again after a crash and fsyncs the files it
    /// keeps.
    #[arg(long = "no-sync")]
    pub no_sync: bool,

    /// The file PostgreSQL asks for (%f): a WAL segment or timeline history file name.
    #[arg(value_name = "FILE")]
    pub file: String,

    /// Where to put it (%p).
    #[arg(value_name = "DEST")]
    pub dest: PathBuf,
}

/// Runs `walsink restore`; messages go to stderr (PostgreSQL's server log).
pub fn run(args: RestoreArgs) -> u8 {
    let Some(request) = RestoreRequest::parse(&args.file) else {
        eprintln!(
            "walsink restore: error: \"{}\" is not a WAL segment or timeline history file name; \
             use restore_command = 'walsink restore -D DIR %f %p'",
            args.file.escape_debug()
        );
        return exit::USAGE;
    };
    let dir = args.directory.display();
    let opts = RestoreOptions {
        partial: args.partial,
        sync: !args.no_sync,
    };
    match restore(&args.directory, &request, &args.dest, opts) {
        Ok(Outcome::Served(Restored::Partial {
            name,
            padded_from,
            fork,
        })) => {
            // A segment name (RestoreRequest::parse checked it): its timeline.
            let tli = u32::from_str_radix(&args.file[..8], 16).unwrap_or(0);
            let what = match (fork, padded_from) {
                (Some((at, child)), _) => format!(
                    "the last WAL received on timeline {}, up to {at}, where timeline {} forked \
                     from it; what follows is served as zeros",
                    tli,
                    child.get()
                ),
                (None, Some(len)) => format!(
                    "the last WAL received on timeline {}; its {len} bytes padded with zeros to \
                     the segment size",
                    tli
                ),
                (None, None) => format!("the last WAL received on timeline {}", tli),
            };
            eprintln!(
                "walsink restore: restored \"{}\" from \"{name}\" ({what})",
                args.file
            );
            exit::SERVED
        }
        Ok(Outcome::Served(_)) => exit::SERVED,
        Ok(Outcome::Absent(why)) => {
            match why {
                Absent::Quiet => {}
                Absent::OnlyPartial { partial } => eprintln!(
                    "walsink restore: \"{}\" is in archive \"{dir}\" only as \"{partial}\", the WAL \
                     received last; recovery ends before it unless restore_command has --partial",
                    args.file
                ),
                Absent::NotNewestPartial { partial, newer } => eprintln!(
                    "walsink restore: \"{}\" is in archive \"{dir}\" only as \"{partial}\", and \
                     \"{newer}\" is newer with no timeline history telling where the .partial's WAL \
                     stops being shared: it may run past the point where a later timeline forked, so \
                     it is not served; to replay it anyway, copy it to pg_wal without the .partial \
                     suffix",
                    args.file
                ),
                Absent::PastFork { partial, child, at } => eprintln!(
                    "walsink restore: \"{}\" is in archive \"{dir}\" only as \"{partial}\", which \
                     begins after {at}, where timeline {} forked from its timeline: it is not part \
                     of the later timelines' history, so it is not served",
                    args.file,
                    child.get()
                ),
                Absent::Hole { next, gap } => {
                    let after = if next.is_empty() {
                        String::new()
                    } else {
                        format!(", although it has the next segment \"{next}\"")
                    };
                    let recorded = gap
                        .map(|g| format!("; the archive records this gap: {g}"))
                        .unwrap_or_default();
                    eprintln!(
                        "walsink restore: \"{}\" is missing from archive \"{dir}\"{after}: recovery \
                         cannot replay past this hole{recorded}",
                        args.file
                    );
                }
            }
            exit::ABSENT
        }
        Err(e) => {
            eprintln!(
                "walsink restore: error: cannot restore \"{}\": {e}; exiting with {} so that \
                 PostgreSQL stops recovery instead of ending it without this file",
                args.file,
                exit::FAILED
            );
            exit::FAILED
        }
    }
}
