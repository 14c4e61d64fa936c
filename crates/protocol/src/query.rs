//! Simple-query results and the replication commands walsink issues.
//!
//! Replication commands return text-format result sets. [`QueryCollector`] gathers one
//! query's messages into a [`ResultSet`]; the `parse_*` functions turn result sets into
//! typed values, checking their shape, and the `*_command` functions build the command
//! texts.

use bytes::Bytes;
use walsink_wal::{Lsn, TimelineId, WalSegSize};

use crate::error::{Escaped, ProtocolError};
use crate::frame::BackendMessage;

/// The rows of one simple query (text format).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResultSet {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows; `None` is SQL NULL.
    pub rows: Vec<Vec<Option<Bytes>>>,
    /// The last command tag.
    pub tag: Option<String>,
}

impl ResultSet {
    /// The value at `row`, `col`; `None` for NULL or a value that is not there.
    fn value(&self, row: usize, col: usize) -> Option<Bytes> {
        self.rows.get(row)?.get(col)?.clone()
    }

    fn text(&self, row: usize, col: usize) -> Option<String> {
        self.value(row, col)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    fn check_shape(
        &self,
        command: &'static str,
        rows: usize,
        cols: usize,
    ) -> Result<(), ProtocolError> {
        let ragged = self.rows.iter().any(|r| r.len() != self.columns.len());
        if self.rows.len() != rows || self.columns.len() < cols || ragged {
            return Err(ProtocolError::BadResult {
                command,
                reason: if ragged {
                    format!(
                        "a row does not have the {} values its columns declare",
                        self.columns.len()
                    )
                } else {
                    format!(
                        "got {} rows and {} fields, expected {rows} rows and {cols} or more fields",
                        self.rows.len(),
                        self.columns.len()
                    )
                },
            });
        }
        Ok(())
    }
}

/// Most rows [`QueryCollector`] accepts in one result. Replication commands answer
/// with one row.
pub const MAX_ROWS: usize = 1000;

/// Most bytes of values (plus 8 per value, so empty values count too) [`QueryCollector`]
/// accepts in one result. The largest answer walsink asks for is a timeline history
/// file, a few kilobytes even after hundreds of timelines (and one message is at most
/// [`crate::frame::MAX_MESSAGE_LEN`]).
pub const MAX_RESULT_BYTES: usize = 4 << 20;

/// Collects the messages of one simple query until `ReadyForQuery`.
///
/// Bounded: a `DataRow` must come after a `RowDescription` and carry exactly as many
/// values as it declared, and a result holds at most [`MAX_ROWS`] rows and
/// [`MAX_RESULT_BYTES`] bytes; anything else is an error at once, before it is stored.
/// `NoticeResponse` and `ParameterStatus` are ignored (the driver logs notices before
/// they get here).
#[derive(Debug, Default)]
pub struct QueryCollector {
    result: ResultSet,
    /// Columns declared by the last `RowDescription`, `None` before one.
    declared: Option<usize>,
    bytes: usize,
    error: Option<crate::error::ServerError>,
}

impl QueryCollector {
    /// Feeds one message. Returns the outcome once `ReadyForQuery` arrives.
    pub fn handle(
        &mut self,
        msg: BackendMessage,
    ) -> Result<Option<Result<ResultSet, ProtocolError>>, ProtocolError> {
        match msg {
            BackendMessage::RowDescription(cols) => {
                self.declared = Some(cols.len());
                self.result.columns = cols;
            }
            BackendMessage::DataRow(vals) => self.row(vals)?,
            BackendMessage::CommandComplete(tag) => self.result.tag = Some(tag),
            BackendMessage::EmptyQueryResponse
            | BackendMessage::NoticeResponse(_)
            | BackendMessage::ParameterStatus { .. } => {}
            BackendMessage::ErrorResponse(e) => self.error = Some(e),
            BackendMessage::ReadyForQuery(_) => {
                let out = match self.error.take() {
                    Some(e) => Err(ProtocolError::Server(e)),
                    None => Ok(std::mem::take(&mut self.result)),
                };
                *self = QueryCollector::default();
                return Ok(Some(out));
            }
            other => {
                return Err(ProtocolError::Unexpected {
                    tag: other.tag(),
                    state: "running a command",
                });
            }
        }
        Ok(None)
    }

    fn row(&mut self, vals: Vec<Option<Bytes>>) -> Result<(), ProtocolError> {
        let malformed = |reason: String| ProtocolError::Malformed { tag: 'D', reason };
        let Some(declared) = self.declared else {
            return Err(malformed("a data row before any row description".into()));
        };
        if vals.len() != declared {
            return Err(malformed(format!(
                "a row of {} values where the row description declared {declared} columns",
                vals.len()
            )));
        }
        if self.result.rows.len() >= MAX_ROWS {
            return Err(ProtocolError::TooMuch {
                what: "rows in a command's result",
                limit: format!("{MAX_ROWS} rows"),
            });
        }
        let size: usize = vals
            .iter()
            .map(|v| 8 + v.as_ref().map_or(0, Bytes::len))
            .sum();
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > MAX_RESULT_BYTES {
            return Err(ProtocolError::TooMuch {
                what: "bytes in a command's result",
                limit: format!("{} MiB", MAX_RESULT_BYTES >> 20),
            });
        }
        self.result.rows.push(vals);
        Ok(())
    }
}

/// The result of `IDENTIFY_SYSTEM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifySystem {
    /// The cluster's unique system identifier.
    pub system_id: u64,
    /// The server's current timeline.
    pub timeline: TimelineId,
    /// The server's current WAL flush position.
    pub xlogpos: Lsn,
    /// The database name, `None` for a physical replication connection.
    pub dbname: Option<String>,
}

fn bad(command: &'static str, reason: impl Into<String>) -> ProtocolError {
    ProtocolError::BadResult {
        command,
        reason: reason.into(),
    }
}

/// Parses the `IDENTIFY_SYSTEM` result.
pub fn parse_identify_system(rs: &ResultSet) -> Result<IdentifySystem, ProtocolError> {
    const C: &str = "IDENTIFY_SYSTEM";
    rs.check_shape(C, 1, 3)?;
    let system_id = rs
        .text(0, 0)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(C, "could not parse system identifier"))?;
    let timeline = rs
        .text(0, 1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(C, "could not parse timeline"))?;
    let xlogpos = rs
        .text(0, 2)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(C, "could not parse WAL position"))?;
    Ok(IdentifySystem {
        system_id,
        timeline,
        xlogpos,
        dbname: rs.text(0, 3),
    })
}

/// Parses the result of `SHOW wal_segment_size`.
pub fn parse_wal_segment_size(rs: &ResultSet) -> Result<WalSegSize, ProtocolError> {
    const C: &str = "SHOW wal_segment_size";
    rs.check_shape(C, 1, 1)?;
    let text = rs.text(0, 0).ok_or_else(|| bad(C, "NULL value"))?;
    WalSegSize::from_show(&text).map_err(|_| {
        bad(
            C,
            format!(
                "the server's WAL segment size \"{}\" is not a power of two between 1 MB and 1 GB",
                Escaped(&text)
            ),
        )
    })
}

/// Parses the result of `SHOW <name>`: one row with the setting's text.
pub fn parse_show(rs: &ResultSet) -> Result<String, ProtocolError> {
    const C: &str = "SHOW";
    rs.check_shape(C, 1, 1)?;
    rs.text(0, 0).ok_or_else(|| bad(C, "NULL value"))
}

/// The result of `READ_REPLICATION_SLOT` (PostgreSQL 15+).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotInfo {
    /// No slot of that name exists.
    Missing,
    /// A physical slot, with its restart position if it has one.
    Physical {
        /// Where the slot's retained WAL starts; `None` if WAL was never reserved.
        restart_lsn: Option<Lsn>,
        /// The timeline of `restart_lsn`.
        restart_tli: Option<TimelineId>,
    },
    /// A slot of another type.
    Other(String),
}

/// Parses the `READ_REPLICATION_SLOT` result.
pub fn parse_read_replication_slot(rs: &ResultSet) -> Result<SlotInfo, ProtocolError> {
    const C: &str = "READ_REPLICATION_SLOT";
    rs.check_shape(C, 1, 3)?;
    let Some(kind) = rs.text(0, 0) else {
        return Ok(SlotInfo::Missing);
    };
    if kind != "physical" {
        return Ok(SlotInfo::Other(kind));
    }
    let restart_lsn = match rs.text(0, 1) {
        None => None,
        Some(t) => Some(t.parse().map_err(|_| {
            bad(
                C,
                format!("could not parse restart_lsn \"{}\"", Escaped(&t)),
            )
        })?),
    };
    let restart_tli = match rs.text(0, 2) {
        None => None,
        Some(t) => Some(t.parse().map_err(|_| {
            bad(
                C,
                format!("could not parse restart_tli \"{}\"", Escaped(&t)),
            )
        })?),
    };
    Ok(SlotInfo::Physical {
        restart_lsn,
        restart_tli,
    })
}

/// The result of `TIMELINE_HISTORY`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryFile {
    /// The file name the server reports.
    pub filename: String,
    /// The raw content.
    pub content: Bytes,
}

/// Parses the `TIMELINE_HISTORY` result and checks the file name is the expected one.
pub fn parse_timeline_history(
    rs: &ResultSet,
    tli: TimelineId,
) -> Result<HistoryFile, ProtocolError> {
    const C: &str = "TIMELINE_HISTORY";
    rs.check_shape(C, 1, 2)?;
    let filename = rs.text(0, 0).ok_or_else(|| bad(C, "NULL file name"))?;
    if filename != tli.history_file_name() {
        return Err(bad(
            C,
            format!(
                "expected file name {}, got \"{}\"",
                tli.history_file_name(),
                Escaped(&filename)
            ),
        ));
    }
    let content = rs.value(0, 1).ok_or_else(|| bad(C, "NULL content"))?;
    Ok(HistoryFile { filename, content })
}

/// The result set the server sends at the end of a historic timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextTimeline {
    /// The timeline that follows.
    pub tli: TimelineId,
    /// Where it starts (the switch point).
    pub start: Lsn,
}

/// Parses the end-of-timeline result set (`next_tli`, `next_tli_startpos`).
pub fn parse_next_timeline(rs: &ResultSet) -> Result<NextTimeline, ProtocolError> {
    const C: &str = "START_REPLICATION (end of timeline)";
    rs.check_shape(C, 1, 2)?;
    let tli_text = rs.text(0, 0).ok_or_else(|| bad(C, "NULL next timeline"))?;
    let tli = tli_text.parse().map_err(|_| {
        bad(
            C,
            format!("could not parse next timeline \"{}\"", Escaped(&tli_text)),
        )
    })?;
    let start_text = rs
        .text(0, 1)
        .ok_or_else(|| bad(C, "NULL next timeline start position"))?;
    let start = start_text.parse().map_err(|_| {
        bad(
            C,
            format!(
                "could not parse next timeline's start position \"{}\"",
                Escaped(&start_text)
            ),
        )
    })?;
    Ok(NextTimeline { tli, start })
}

/// Whether `name` is a valid replication slot name: 1 to 63 characters of
/// lower-case letters, digits and underscores (the server's own rule).
pub fn valid_slot_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `START_REPLICATION [SLOT "s"] PHYSICAL X/X TIMELINE t`.
pub fn start_replication_command(slot: Option<&str>, start: Lsn, tli: TimelineId) -> String {
    match slot {
        Some(s) => format!("START_REPLICATION SLOT \"{s}\" PHYSICAL {start} TIMELINE {tli}"),
        None => format!("START_REPLICATION PHYSICAL {start} TIMELINE {tli}"),
    }
}

/// `CREATE_REPLICATION_SLOT "s" PHYSICAL [RESERVE_WAL]`, in the syntax every server from
/// 10 on accepts.
pub fn create_physical_slot_command(slot: &str, reserve_wal: bool) -> String {
    if reserve_wal {
        format!("CREATE_REPLICATION_SLOT \"{slot}\" PHYSICAL RESERVE_WAL")
    } else {
        format!("CREATE_REPLICATION_SLOT \"{slot}\" PHYSICAL")
    }
}

/// `DROP_REPLICATION_SLOT "s"`.
pub fn drop_slot_command(slot: &str) -> String {
    format!("DROP_REPLICATION_SLOT \"{slot}\"")
}

/// `READ_REPLICATION_SLOT s` (PostgreSQL 15+; unquoted, as servers up to 18 require).
pub fn read_replication_slot_command(slot: &str) -> String {
    format!("READ_REPLICATION_SLOT {slot}")
}

/// `TIMELINE_HISTORY t`.
pub fn timeline_history_command(tli: TimelineId) -> String {
    format!("TIMELINE_HISTORY {tli}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(cols: &[&str], row: &[Option<&str>]) -> ResultSet {
        ResultSet {
            columns: cols.iter().map(|s| s.to_string()).collect(),
            rows: vec![
                row.iter()
                    .map(|v| v.map(|s| Bytes::from(s.to_string())))
                    .collect(),
            ],
            tag: None,
        }
    }

    #[test]
    fn identify_system() {
        let r = rs(
            &["systemid", "timeline", "xlogpos", "dbname"],
            &[
                Some("7312345678901234567"),
                Some("2"),
                Some("0/3000148"),
                None,
            ],
        );
        let id = parse_identify_system(&r).unwrap();
        assert_eq!(id.system_id, 7312345678901234567);
        assert_eq!(id.timeline.get(), 2);
        assert_eq!(id.xlogpos, "0/3000148".parse().unwrap());
        assert_eq!(id.dbname, None);
        let short = rs(&["systemid"], &[Some("1")]);
        assert!(parse_identify_system(&short).is_err());
        let junk = rs(&["a", "b", "c"], &[Some("x"), Some("1"), Some("0/0")]);
        assert!(parse_identify_system(&junk).is_err());
    }

    #[test]
    fn show_value() {
        let r = rs(&["transaction_read_only"], &[Some("on")]);
        assert_eq!(parse_show(&r).unwrap(), "on");
        assert!(parse_show(&rs(&["x"], &[None])).is_err());
    }

    #[test]
    fn read_slot_variants() {
        let cols = ["slot_type", "restart_lsn", "restart_tli"];
        assert_eq!(
            parse_read_replication_slot(&rs(&cols, &[None, None, None])).unwrap(),
            SlotInfo::Missing
        );
        assert_eq!(
            parse_read_replication_slot(&rs(&cols, &[Some("physical"), None, None])).unwrap(),
            SlotInfo::Physical {
                restart_lsn: None,
                restart_tli: None
            }
        );
        assert_eq!(
            parse_read_replication_slot(&rs(
                &cols,
                &[Some("physical"), Some("0/1000028"), Some("1")]
            ))
            .unwrap(),
            SlotInfo::Physical {
                restart_lsn: Some(Lsn(0x1000028)),
                restart_tli: TimelineId::new(1)
            }
        );
    }

    #[test]
    fn history_and_next_timeline() {
        let tli2 = TimelineId::new(2).unwrap();
        let r = rs(
            &["filename", "content"],
            &[Some("00000002.history"), Some("1\t0/3000000\tx\n")],
        );
        assert_eq!(
            parse_timeline_history(&r, tli2).unwrap().content,
            Bytes::from_static(b"1\t0/3000000\tx\n")
        );
        let wrong = rs(
            &["filename", "content"],
            &[Some("00000003.history"), Some("")],
        );
        assert!(parse_timeline_history(&wrong, tli2).is_err());
        let n = parse_next_timeline(&rs(
            &["next_tli", "next_tli_startpos"],
            &[Some("2"), Some("0/30000A0")],
        ))
        .unwrap();
        assert_eq!(
            n,
            NextTimeline {
                tli: tli2,
                start: Lsn(0x30000A0)
            }
        );
        let e = parse_next_timeline(&rs(
            &["next_tli", "next_tli_startpos"],
            &[Some("0"), Some("0/1")],
        ))
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("could not parse next timeline \"0\""),
            "{e}"
        );
        let e = parse_next_timeline(&rs(
            &["next_tli", "next_tli_startpos"],
            &[Some("2"), Some("0/XYZ")],
        ))
        .unwrap_err();
        assert!(e.to_string().contains("\"0/XYZ\""), "{e}");
    }

    #[test]
    fn commands() {
        let t = TimelineId::new(3).unwrap();
        assert_eq!(
            start_replication_command(Some("s1"), Lsn(0x2000000), t),
            "START_REPLICATION SLOT \"s1\" PHYSICAL 0/2000000 TIMELINE 3"
        );
        assert_eq!(
            start_replication_command(None, Lsn(0), t),
            "START_REPLICATION PHYSICAL 0/0 TIMELINE 3"
        );
        assert!(valid_slot_name("walsink_1"));
        for bad in [
            "",
            "Upper",
            "has-dash",
            "has space",
            "x\"y",
            &"a".repeat(64),
        ] {
            assert!(!valid_slot_name(bad), "{bad}");
        }
    }

    fn feed(c: &mut QueryCollector, msgs: Vec<BackendMessage>) -> Result<(), ProtocolError> {
        for m in msgs {
            assert!(c.handle(m)?.is_none());
        }
        Ok(())
    }

    fn row(vals: &[&[u8]]) -> BackendMessage {
        BackendMessage::DataRow(
            vals.iter()
                .map(|v| Some(Bytes::copy_from_slice(v)))
                .collect(),
        )
    }

    #[test]
    fn collector_checks_row_width() {
        let desc = || BackendMessage::RowDescription(vec!["filename".into(), "content".into()]);
        let mut c = QueryCollector::default();
        let e = feed(&mut c, vec![desc(), row(&[b"00000002.history"])]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "malformed 'D' message from server: a row of 1 values where the row description declared 2 columns"
        );
        let mut c = QueryCollector::default();
        assert!(feed(&mut c, vec![desc(), row(&[b"a", b"b", b"c"])]).is_err());
        let mut c = QueryCollector::default();
        let e = feed(&mut c, vec![row(&[b"a"])]).unwrap_err();
        assert!(e.to_string().contains("before any row description"), "{e}");
        // A well-formed result still parses, and the collector starts over after it.
        let mut c = QueryCollector::default();
        for _ in 0..2 {
            feed(&mut c, vec![desc(), row(&[b"00000002.history", b"x"])]).unwrap();
            let rs = c
                .handle(BackendMessage::ReadyForQuery(b'I'))
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(rs.rows.len(), 1);
        }
    }

    #[test]
    fn history_parser_never_indexes_past_a_short_row() {
        // Built by hand (not through the collector): a result whose row is short.
        let rs = ResultSet {
            columns: vec!["filename".into(), "content".into()],
            rows: vec![vec![Some(Bytes::from_static(b"00000002.history"))]],
            tag: None,
        };
        let e = parse_timeline_history(&rs, TimelineId::new(2).unwrap()).unwrap_err();
        assert!(e.to_string().contains("does not have the 2 values"), "{e}");
        for parse in [
            |rs: &ResultSet| parse_identify_system(rs).map(|_| ()),
            |rs: &ResultSet| parse_read_replication_slot(rs).map(|_| ()),
            |rs: &ResultSet| parse_next_timeline(rs).map(|_| ()),
            |rs: &ResultSet| parse_show(rs).map(|_| ()),
            |rs: &ResultSet| parse_wal_segment_size(rs).map(|_| ()),
        ] {
            for rows in [vec![], vec![vec![]], vec![vec![None]]] {
                let rs = ResultSet {
                    columns: vec!["a".into(), "b".into(), "c".into(), "d".into()],
                    rows,
                    tag: None,
                };
                assert!(parse(&rs).is_err());
            }
        }
    }

    #[test]
    fn collector_caps_rows_and_bytes() {
        let desc = || BackendMessage::RowDescription(vec!["v".into()]);
        let mut c = QueryCollector::default();
        feed(&mut c, vec![desc()]).unwrap();
        for _ in 0..MAX_ROWS {
            feed(&mut c, vec![row(&[b"1"])]).unwrap();
        }
        let e = feed(&mut c, vec![row(&[b"1"])]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the server sent rows in a command's result over walsink's limit of 1000 rows; the connection is not to a PostgreSQL server or it is broken"
        );
        let big = vec![b'x'; 1 << 20];
        let mut c = QueryCollector::default();
        feed(&mut c, vec![desc()]).unwrap();
        for _ in 0..3 {
            feed(&mut c, vec![row(&[&big])]).unwrap();
        }
        let e = feed(&mut c, vec![row(&[&big])]).unwrap_err();
        assert!(matches!(e, ProtocolError::TooMuch { .. }), "{e}");
    }

    #[test]
    fn collector_reports_server_error_after_ready() {
        let mut c = QueryCollector::default();
        let e = crate::error::ServerError {
            code: "42704".into(),
            ..Default::default()
        };
        assert!(
            c.handle(BackendMessage::ErrorResponse(e))
                .unwrap()
                .is_none()
        );
        let out = c
            .handle(BackendMessage::ReadyForQuery(b'I'))
            .unwrap()
            .unwrap();
        assert!(matches!(out, Err(ProtocolError::Server(ref e)) if e.code == "42704"));
    }
}
