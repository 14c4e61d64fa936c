//! Logging to stderr: walsink's own format (timestamp, level, message), or pg_receivewal's
//! (`pg_receivewal: error: ...`, `pg_receivewal: warning: ...`, `pg_receivewal: hint: ...`, and
//! plain `pg_receivewal: ...` for information) when walsink runs under that name, so programs that
//! drive pg_receivewal and read its messages (Barman's log, pg_receivewal's own TAP tests) see the
//! form they know.
//!
//! `walsink run` and `walsink receive` also write JSON lines (`--log-format json`). Under journald
//! (`JOURNAL_STREAM` set, as systemd does for a service whose stderr goes to the journal) walsink
//! writes no timestamps of its own, in either format: the journal stamps every line.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::Personality;

/// The default filter for `verbose` repetitions of `-v`. `RUST_LOG` overrides it.
///
/// As walsink: information by default, debug with `-v`, trace with `-v -v`. As pg_receivewal:
/// warnings and errors only by default (pg_receivewal is silent unless something is wrong),
/// information with `-v` (what pg_receivewal's `--verbose` prints: streaming starts and stops,
/// timeline switches), debug with `-v -v`, trace with three.
pub fn default_filter(personality: Personality, verbose: u8) -> &'static str {
    match (personality, verbose) {
        (Personality::Walsink, 0) => "info",
        (Personality::Walsink, 1) => {
            "info,walsink=debug,walsink_receiver=debug,walsink_archive=debug"
        }
        (Personality::Walsink, _) => {
            "debug,walsink=trace,walsink_receiver=trace,walsink_archive=trace"
        }
        (Personality::PgReceivewal, 0) => "warn",
        (Personality::PgReceivewal, 1) => "info",
        (Personality::PgReceivewal, 2) => {
            "info,walsink=debug,walsink_receiver=debug,walsink_archive=debug"
        }
        (Personality::PgReceivewal, _) => {
            "debug,walsink=trace,walsink_receiver=trace,walsink_archive=trace"
        }
    }
}

/// `--log-format` (`walsink run`, `walsink receive`) / the config file's `log_format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event; a daemon's source as `source{source=NAME}:`.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields.message`, and `span.source`
    /// for a daemon's source).
    Json,
}

impl LogFormat {
    /// The config file's spelling.
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// Whether stderr goes to the journal (systemd sets `JOURNAL_STREAM`).
fn journald() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some_and(|v| !v.is_empty())
}

/// Installs the stderr logger of `walsink run` in `format`.
pub fn init_daemon(verbose: u8, format: LogFormat) {
    init(Personality::Walsink, verbose, format);
}

/// Installs the stderr logger for `personality` at the level `-v` asked for: walsink's own lines
/// in `format`, or pg_receivewal's message form (which has one format only; `main` refuses
/// `--log-format` under that name).
pub fn init(personality: Personality, verbose: u8, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_filter(personality, verbose)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if personality == Personality::PgReceivewal {
        return builder
            .with_ansi(false)
            .event_format(PgFormat {
                program: personality.program(),
            })
            .init();
    }
    let builder = builder.with_target(false);
    match (format, journald()) {
        (LogFormat::Text, false) => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        (LogFormat::Text, true) => builder.with_ansi(false).without_time().init(),
        (LogFormat::Json, false) => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        (LogFormat::Json, true) => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .without_time()
            .init(),
    }
}

/// pg_receivewal's message form (PostgreSQL's `pg_log_*`): `PROGRAM: LEVEL: message` for errors
/// and warnings, `PROGRAM: message` for information, no timestamp. walsink's multi-line messages
/// are split the same way: a `HINT (walsink):` or server `HINT:` line becomes `PROGRAM: hint:`,
/// a server `DETAIL:` line `PROGRAM: detail:`.
pub struct PgFormat {
    /// The program name to prefix.
    pub program: &'static str,
}

impl<S, N> FormatEvent<S, N> for PgFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut message = String::new();
        ctx.format_fields(Writer::new(&mut message), event)?;
        write!(
            writer,
            "{}",
            pg_lines(self.program, *event.metadata().level(), &message)
        )
    }
}

/// `message` at `level` in pg_receivewal's form, one `PROGRAM: ...` line per line of it, each
/// ending with a newline.
pub fn pg_lines(program: &str, level: Level, message: &str) -> String {
    let tag = match level {
        Level::ERROR => "error: ",
        Level::WARN => "warning: ",
        _ => "",
    };
    let mut out = String::new();
    for (i, line) in message.lines().enumerate() {
        if i == 0 {
            out.push_str(&format!("{program}: {tag}{line}\n"));
        } else if let Some(hint) = line
            .strip_prefix("HINT (walsink):")
            .or_else(|| line.strip_prefix("HINT:"))
        {
            out.push_str(&format!("{program}: hint: {}\n", hint.trim_start()));
        } else if let Some(detail) = line.strip_prefix("DETAIL:") {
            out.push_str(&format!("{program}: detail: {}\n", detail.trim_start()));
        } else {
            out.push_str(&format!("{program}: {line}\n"));
        }
    }
    if out.is_empty() {
        out.push_str(&format!("{program}: {tag}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_warnings_hints_and_details_take_pg_receivewals_form() {
        assert_eq!(
            pg_lines(
                "pg_receivewal",
                Level::ERROR,
                "replication slot \"nonexistentslot\" does not exist\nHINT (walsink):  create it with --create-slot"
            ),
            "pg_receivewal: error: replication slot \"nonexistentslot\" does not exist\n\
             pg_receivewal: hint: create it with --create-slot\n"
        );
        assert_eq!(
            pg_lines(
                "pg_receivewal",
                Level::ERROR,
                "could not start: ERROR:  requested WAL segment has already been removed\nDETAIL:  d\nHINT:  h"
            ),
            "pg_receivewal: error: could not start: ERROR:  requested WAL segment has already been removed\n\
             pg_receivewal: detail: d\npg_receivewal: hint: h\n"
        );
        assert_eq!(
            pg_lines("pg_receivewal", Level::WARN, "disk full"),
            "pg_receivewal: warning: disk full\n"
        );
        assert_eq!(
            pg_lines(
                "pg_receivewal",
                Level::INFO,
                "starting log streaming at 0/1000000 (timeline 1)"
            ),
            "pg_receivewal: starting log streaming at 0/1000000 (timeline 1)\n"
        );
        assert_eq!(
            pg_lines("pg_receivewal", Level::DEBUG, "a\nb"),
            "pg_receivewal: a\npg_receivewal: b\n"
        );
    }

    #[test]
    fn verbose_is_information_once_and_debug_only_when_repeated() {
        let pg = Personality::PgReceivewal;
        assert_eq!(default_filter(pg, 0), "warn");
        assert_eq!(default_filter(pg, 1), "info");
        assert!(default_filter(pg, 2).contains("walsink_receiver=debug"));
        assert!(default_filter(pg, 3).contains("walsink_receiver=trace"));
        assert_eq!(default_filter(Personality::Walsink, 0), "info");
    }
}
