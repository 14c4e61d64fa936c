//! `walsink status -D DIR [--json] [-d CONNSTR]`: what the archive holds per timeline and,
//! with a connection, how far behind the server it is.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::Args;
use serde_json::{Value, json};
use walsink_archive::status::{ArchiveStatus, TimelineStatus, archive_status};
use walsink_receiver::position::{ServerPosition, server_position};

use crate::cli::ConnArgs;
use crate::{exit, exit_code};

/// `walsink status`.
#[derive(Args, Debug)]
#[command(
    disable_help_flag = true,
    mut_arg("dbname", |a| a.help(
        "Also connect to this server (connection string, as for receive) and show its \
         position and how far the archive is behind it"
    )),
    mut_arg("host", |a| a.help("Database server host or socket directory (with -d)")),
)]
pub struct StatusArgs {
    /// The archive directory.
    #[arg(short = 'D', long = "directory", value_name = "DIR")]
    pub directory: PathBuf,

    /// Print JSON (one object) instead of text.
    #[arg(long = "json")]
    pub json: bool,

    /// -d, -h, -p, -U, as for receive.
    #[command(flatten)]
    pub conn: ConnArgs,

    /// More output (repeat for more).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Show this help, then exit.
    #[arg(short = '?', long = "help", action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// How far the archive is behind the server.
struct Lag {
    /// WAL the server has and the archive's newest timeline does not.
    bytes: u64,
    /// How long the archive has not advanced while the server had more WAL, on the
    /// server's clock against the newest WAL file's modification time.
    seconds: Option<f64>,
}

/// Runs `walsink status`.
pub fn run(args: StatusArgs) -> u8 {
    let c = &args.conn;
    let live = c.dbname.is_some() || c.host.is_some() || c.port.is_some();
    let conn = if live {
        let env = walsink_receiver::process_env();
        match c.config(&env, "walsink") {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("walsink status: error: {}", e.0);
                return exit::USAGE;
            }
        }
    } else {
        None
    };
    crate::log::init(
        crate::Personality::Walsink,
        args.verbose,
        crate::log::LogFormat::Text,
    );
    let status = match archive_status(&args.directory) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("walsink status: error: {e}");
            return exit::ARCHIVE_ERROR;
        }
    };
    let server = match conn {
        None => None,
        Some(conn) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building the tokio runtime");
            match rt.block_on(server_position(&conn, None)) {
                Ok(p) => Some(p),
                Err(e) => {
                    eprintln!("walsink status: error: {e}");
                    return exit_code(&e);
                }
            }
        }
    };
    let lag = server.as_ref().and_then(|s| lag(&status, s));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&args, &status, server.as_ref(), lag.as_ref()))
                .expect("JSON of plain values")
        );
    } else {
        print!("{}", to_text(&args, &status, server.as_ref(), lag.as_ref()));
    }
    exit::OK
}

/// The lag behind `server`, when the archive is of the same system and has WAL.
fn lag(status: &ArchiveStatus, server: &ServerPosition) -> Option<Lag> {
    let id = status.identity?;
    if id.system_identifier != server.system_identifier {
        return None;
    }
    let newest = status.newest()?;
    let bytes = server.xlogpos.0.saturating_sub(newest.end.0);
    let seconds = if bytes == 0 {
        Some(0.0)
    } else {
        match (server.server_time, newest.modified) {
            (Some(now), Some(then)) => Some(
                now.duration_since(then)
                    .unwrap_or(Duration::ZERO)
                    .as_secs_f64(),
            ),
            _ => None,
        }
    };
    Some(Lag { bytes, seconds })
}

fn unix(t: Option<SystemTime>) -> Value {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(Value::Null, |d| json!(d.as_secs_f64()))
}

fn to_json(
    args: &StatusArgs,
    s: &ArchiveStatus,
    server: Option<&ServerPosition>,
    lag: Option<&Lag>,
) -> Value {
    let timelines: Vec<Value> = s
        .timelines
        .iter()
        .map(|t| {
            json!({
                "timeline": t.tli.get(),
                "history_file": t.history_file,
                "first_lsn": t.first.to_string(),
                "end_lsn": t.end.to_string(),
                "segments": t.segments,
                "bytes_on_disk": t.bytes_on_disk,
                "missing": t.missing.iter().map(|(a, b)| json!({"from": a.to_string(), "to": b.to_string()})).collect::<Vec<_>>(),
                "partial": t.partial.as_ref().map(|p| json!({
                    "file": p.name,
                    "size": p.size,
                    "filled_bytes": p.filled,
                    "end_lsn": p.end.to_string(),
                })),
                "modified_unix": unix(t.modified),
            })
        })
        .collect();
    json!({
        "directory": args.directory.display().to_string(),
        "system_identifier": s.identity.map(|i| i.system_identifier.to_string()),
        "wal_segment_size": s.identity.map(|i| i.seg.bytes()),
        "pinned": s.identity.map(|i| i.pinned),
        "timelines": timelines,
        "history_only_timelines": s.history_only.iter().map(|t| t.get()).collect::<Vec<_>>(),
        "gaps": s.gaps.iter().map(|g| json!({
            "from": g.from.to_string(),
            "to": g.to.to_string(),
            "accepted_unix": g.accepted_at,
            "reason": g.reason,
        })).collect::<Vec<_>>(),
        "server": server.map(|p| json!({
            "server": p.server,
            "system_identifier": p.system_identifier.to_string(),
            "timeline": p.timeline.get(),
            "lsn": p.xlogpos.to_string(),
            "server_time_unix": unix(p.server_time),
            "lag_bytes": lag.map(|l| l.bytes),
            "lag_seconds": lag.and_then(|l| l.seconds),
        })),
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn to_text(
    args: &StatusArgs,
    s: &ArchiveStatus,
    server: Option<&ServerPosition>,
    lag: Option<&Lag>,
) -> String {
    let mut out = format!("archive \"{}\"\n", args.directory.display());
    match s.identity {
        Some(id) => out.push_str(&format!(
            "  database system {}, {} segments ({})\n",
            id.system_identifier,
            mib(id.seg.bytes()),
            if id.pinned {
                format!("pinned in {}", walsink_archive::META_FILE)
            } else {
                "from the newest WAL file's header; not pinned yet".to_owned()
            }
        )),
        None => out.push_str("  no WAL (no .walsink.meta, no WAL file with a valid first page)\n"),
    }
    for t in &s.timelines {
        out.push_str(&timeline_text(t, s.identity.map(|i| i.seg.bytes())));
    }
    for t in &s.history_only {
        out.push_str(&format!("  timeline {t}: history file only, no WAL yet\n"));
    }
    for g in &s.gaps {
        out.push_str(&format!("  recorded gap: {g}\n"));
    }
    if let Some(p) = server {
        out.push_str(&format!(
            "server {}: database system {}, timeline {}, position {}\n",
            p.server, p.system_identifier, p.timeline, p.xlogpos
        ));
        match (s.identity, lag) {
            (Some(id), _) if id.system_identifier != p.system_identifier => {
                out.push_str("  another database system than the archive's: no lag\n");
            }
            (_, Some(l)) => {
                let secs = l
                    .seconds
                    .map_or("unknown (no server clock)".to_owned(), |s| {
                        format!("{s:.1} s")
                    });
                out.push_str(&format!(
                    "  archive behind by {} bytes ({}), {secs}\n",
                    l.bytes,
                    mib(l.bytes)
                ));
            }
            _ => {}
        }
    }
    out
}

fn timeline_text(t: &TimelineStatus, seg: Option<u64>) -> String {
    let mut out = format!(
        "  timeline {}{}: {} .. {}, {} completed segment{}, {} on disk\n",
        t.tli,
        if t.history_file {
            format!(" ({})", t.tli.history_file_name())
        } else {
            String::new()
        },
        t.first,
        t.end,
        t.segments,
        if t.segments == 1 { "" } else { "s" },
        mib(t.bytes_on_disk)
    );
    if let Some(p) = &t.partial {
        let of = seg.unwrap_or(p.size).max(1);
        out.push_str(&format!(
            "    {}: filled {} of {} bytes ({:.1} %), to {}\n",
            p.name,
            p.filled,
            of,
            p.filled as f64 * 100.0 / of as f64,
            p.end
        ));
    }
    for (a, b) in &t.missing {
        out.push_str(&format!("    missing segments: {a} .. {b}\n"));
    }
    out
}
