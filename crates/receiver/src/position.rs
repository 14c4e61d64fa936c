//! The server's current WAL position and clock, for `walsink status -d`.
//!
//! `IDENTIFY_SYSTEM` gives the position. The clock comes from the replication protocol
//! itself, as the walreceiver's lag figures do: a short `START_REPLICATION` (no slot)
//! from a point just before that position makes the server send WAL at once,
//! and every XLogData (and keepalive) message carries the server's time of sending.

use std::time::{Duration, SystemTime};

use tracing::debug;
use walsink_protocol::conninfo::ConnConfig;
use walsink_protocol::copy::{ReplicationMessage, encode_query, parse_replication_message};
use walsink_protocol::frame::BackendMessage;
use walsink_protocol::query::{parse_identify_system, start_replication_command};
use walsink_wal::{Lsn, TimelineId};

use crate::conn::{Connection, connect, describe};
use crate::error::ReceiverError;

/// How long to wait for the server's first message after `START_REPLICATION`.
const CLOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// How far before the server's position the clock probe starts streaming, so that the
/// server has WAL to send at once (any position up to its flush position is valid).
const PAGE: u64 = 1024;

/// What a server reported about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerPosition {
    /// Which server answered (host and port, or socket).
    pub server: String,
    /// Its system identifier.
    pub system_identifier: u64,
    /// Its current timeline.
    pub timeline: TimelineId,
    /// Its current WAL position (`IDENTIFY_SYSTEM` xlogpos: flushed on a primary,
    /// received or replayed on a standby).
    pub xlogpos: Lsn,
    /// Its clock when it sent WAL to the probe; `None` when it sent none in time.
    pub server_time: Option<SystemTime>,
}

/// Connects (as `walsink receive` would, without a slot), identifies the system and
/// reads the server's clock (see the module docs).
pub async fn server_position(
    conn: &ConnConfig,
    password: Option<&str>,
) -> Result<ServerPosition, ReceiverError> {
    let mut c = connect(conn, password).await?;
    let id = parse_identify_system(&c.query("IDENTIFY_SYSTEM").await?)?;
    let server = describe(&c.target);
    let server_time = if id.xlogpos.0 > PAGE {
        let from = Lsn((id.xlogpos.0 - 1) / PAGE * PAGE);
        server_clock(&mut c, id.timeline, from).await
    } else {
        None
    };
    c.close().await;
    Ok(ServerPosition {
        server,
        system_identifier: id.system_id,
        timeline: id.timeline,
        xlogpos: id.xlogpos,
        server_time,
    })
}

/// The send time of the first replication message after `START_REPLICATION` at
/// `from`, or `None` (logged) if the server refused or sent nothing in time.
async fn server_clock(c: &mut Connection, tli: TimelineId, from: Lsn) -> Option<SystemTime> {
    let cmd = start_replication_command(None, from, tli);
    let answer = tokio::time::timeout(CLOCK_TIMEOUT, async {
        encode_query(&cmd, c.send_buf());
        c.flush().await?;
        c.end_command_phase();
        loop {
            match c.read_message().await? {
                BackendMessage::CopyData(payload) => {
                    return match parse_replication_message(payload)? {
                        ReplicationMessage::XLogData { send_time, .. }
                        | ReplicationMessage::Keepalive { send_time, .. } => Ok(Some(send_time)),
                    };
                }
                BackendMessage::ErrorResponse(e) => {
                    debug!(
                        "the server refused \"{cmd}\": {}",
                        walsink_protocol::Escaped(&e.message)
                    );
                    return Ok(None);
                }
                BackendMessage::RowDescription(_) | BackendMessage::CommandComplete(_) => {
                    return Ok(None);
                }
                _ => {}
            }
        }
    })
    .await;
    match answer {
        Ok(Ok(Some(t))) => Some(from_pg_time(t)),
        Ok(Ok(None)) => None,
        Ok(Err::<_, ReceiverError>(e)) => {
            debug!("reading the server's clock failed: {e}");
            None
        }
        Err(_) => {
            debug!("the server sent nothing within {CLOCK_TIMEOUT:?} after \"{cmd}\"");
            None
        }
    }
}

/// A PostgreSQL timestamp (µs since 2000-01-01 UTC) as a system time.
fn from_pg_time(us: i64) -> SystemTime {
    let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800);
    if us >= 0 {
        epoch + Duration::from_micros(us.unsigned_abs())
    } else {
        epoch - Duration::from_micros(us.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_time_is_microseconds_since_2000() {
        assert_eq!(
            from_pg_time(0)
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            946_684_800
        );
        let t = walsink_protocol::copy::pg_timestamp(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        );
        assert_eq!(
            from_pg_time(t),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
        );
    }
}
