//! The copy-both payloads of physical streaming replication.
//!
//! Server to client: XLogData (`w`) and primary keepalive (`k`). Client to server:
//! standby status update (`r`). Integers are big-endian; timestamps are microseconds
//! since 2000-01-01 00:00:00 UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use walsink_wal::Lsn;

use crate::error::ProtocolError;

/// Seconds from the Unix epoch to the PostgreSQL epoch (2000-01-01).
const PG_EPOCH_OFFSET_SECS: u64 = 946_684_800;

/// A message inside CopyData during physical streaming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// WAL bytes starting at `start`.
    XLogData {
        /// LSN of the first byte of `data`.
        start: Lsn,
        /// The server's WAL end when it sent this.
        wal_end: Lsn,
        /// Server clock, µs since 2000-01-01.
        send_time: i64,
        /// The WAL bytes (a slice of the receive buffer; no copy).
        data: Bytes,
    },
    /// Primary keepalive.
    Keepalive {
        /// The server's WAL end (its sent position).
        wal_end: Lsn,
        /// Server clock, µs since 2000-01-01.
        send_time: i64,
        /// The server wants a status update now.
        reply_requested: bool,
    },
}

/// Parses one CopyData payload from the server.
pub fn parse_replication_message(mut payload: Bytes) -> Result<ReplicationMessage, ProtocolError> {
    let malformed = |reason: String| ProtocolError::Malformed { tag: 'd', reason };
    let Some(&kind) = payload.first() else {
        return Err(malformed("empty CopyData message".into()));
    };
    match kind {
        b'w' => {
            if payload.len() < 25 {
                return Err(malformed(format!(
                    "XLogData header too small: {} bytes",
                    payload.len()
                )));
            }
            payload.advance(1);
            let start = Lsn(payload.get_u64());
            let wal_end = Lsn(payload.get_u64());
            let send_time = payload.get_i64();
            Ok(ReplicationMessage::XLogData {
                start,
                wal_end,
                send_time,
                data: payload,
            })
        }
        b'k' => {
            if payload.len() < 18 {
                return Err(malformed(format!(
                    "keepalive too small: {} bytes",
                    payload.len()
                )));
            }
            payload.advance(1);
            Ok(ReplicationMessage::Keepalive {
                wal_end: Lsn(payload.get_u64()),
                send_time: payload.get_i64(),
                reply_requested: payload.get_u8() != 0,
            })
        }
        other => Err(malformed(format!(
            "unrecognized streaming header: \"{}\"",
            other as char
        ))),
    }
}

/// Converts a wall-clock time to the protocol's µs-since-2000 form.
pub fn pg_timestamp(t: SystemTime) -> i64 {
    let since_unix = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let micros = since_unix.as_micros() as i64;
    micros - (PG_EPOCH_OFFSET_SECS as i64) * 1_000_000
}

/// A standby status update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusUpdate {
    /// End of the WAL received and written (not necessarily durable).
    pub write: Lsn,
    /// End of the WAL durably on disk; `Lsn::INVALID` when not reported.
    pub flush: Lsn,
    /// End of the WAL applied; walsink applies nothing, so always invalid.
    pub apply: Lsn,
    /// Client clock, µs since 2000-01-01.
    pub send_time: i64,
    /// Ask the server to reply with a keepalive at once.
    pub reply_requested: bool,
}

impl StatusUpdate {
    /// Appends the complete CopyData frame (`d`, length, `r` payload) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(1 + 4 + 34);
        out.put_u8(b'd');
        out.put_u32(4 + 34);
        out.put_u8(b'r');
        out.put_u64(self.write.0);
        out.put_u64(self.flush.0);
        out.put_u64(self.apply.0);
        out.put_i64(self.send_time);
        out.put_u8(u8::from(self.reply_requested));
    }
}

/// Appends a CopyDone frame to `out`.
pub fn encode_copy_done(out: &mut BytesMut) {
    out.put_u8(b'c');
    out.put_u32(4);
}

/// Appends a simple Query frame to `out`.
pub fn encode_query(sql: &str, out: &mut BytesMut) {
    postgres_protocol::message::frontend::query(sql, out).expect("query text contains no NUL byte");
}

/// Appends a Terminate frame to `out`.
pub fn encode_terminate(out: &mut BytesMut) {
    postgres_protocol::message::frontend::terminate(out);
}

/// Fuzzing entry point: parse an arbitrary CopyData payload; must never panic.
pub fn fuzz_replication_message(data: &[u8]) {
    let _ = parse_replication_message(Bytes::copy_from_slice(data));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xlogdata_is_zero_copy_and_exact() {
        let mut m = BytesMut::new();
        m.put_u8(b'w');
        m.put_u64(0x1_0000_0000);
        m.put_u64(0x1_0000_0010);
        m.put_i64(12345);
        m.put_slice(b"0123456789abcdef");
        let payload = m.freeze();
        let base = payload.as_ptr() as usize;
        match parse_replication_message(payload).unwrap() {
            ReplicationMessage::XLogData {
                start,
                wal_end,
                send_time,
                data,
            } => {
                assert_eq!(start, Lsn(0x1_0000_0000));
                assert_eq!(wal_end, Lsn(0x1_0000_0010));
                assert_eq!(send_time, 12345);
                assert_eq!(&data[..], b"0123456789abcdef");
                assert_eq!(data.as_ptr() as usize, base + 25);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keepalive_and_errors() {
        let mut m = BytesMut::new();
        m.put_u8(b'k');
        m.put_u64(42);
        m.put_i64(7);
        m.put_u8(1);
        assert_eq!(
            parse_replication_message(m.clone().freeze()).unwrap(),
            ReplicationMessage::Keepalive {
                wal_end: Lsn(42),
                send_time: 7,
                reply_requested: true
            }
        );
        assert!(parse_replication_message(m.freeze().slice(..17)).is_err());
        assert!(parse_replication_message(Bytes::from_static(b"w123")).is_err());
        assert!(parse_replication_message(Bytes::new()).is_err());
        let e = parse_replication_message(Bytes::from_static(b"zzzz")).unwrap_err();
        assert!(
            e.to_string().contains("unrecognized streaming header"),
            "{e}"
        );
    }

    #[test]
    fn status_update_layout() {
        let mut out = BytesMut::new();
        StatusUpdate {
            write: Lsn(1),
            flush: Lsn(2),
            apply: Lsn::INVALID,
            send_time: 3,
            reply_requested: false,
        }
        .encode(&mut out);
        assert_eq!(out.len(), 39);
        assert_eq!(&out[..6], &[b'd', 0, 0, 0, 38, b'r']);
        assert_eq!(&out[6..14], &1u64.to_be_bytes());
        assert_eq!(&out[14..22], &2u64.to_be_bytes());
        assert_eq!(&out[22..30], &0u64.to_be_bytes());
        assert_eq!(&out[30..38], &3i64.to_be_bytes());
        assert_eq!(out[38], 0);
    }

    #[test]
    fn pg_epoch() {
        let t = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_OFFSET_SECS) + Duration::from_micros(5);
        assert_eq!(pg_timestamp(t), 5);
    }
}
