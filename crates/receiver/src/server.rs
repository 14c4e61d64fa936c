//! Opening a replication connection to a server walsink can stream from.

use walsink_protocol::query::{IdentifySystem, parse_identify_system};

use crate::config::ReceiveConfig;
use crate::conn::{Connection, connect, describe};
use crate::error::ReceiverError;

/// Oldest server version walsink speaks to (SHOW in replication mode needs 10).
const MIN_SERVER_VERSION: u32 = 100000;

/// Connects, checks the server and identifies the system.
pub(crate) async fn open(
    cfg: &ReceiveConfig,
) -> Result<(Connection, IdentifySystem), ReceiverError> {
    let mut conn = connect(&cfg.conn, cfg.password.as_deref()).await?;
    let version = conn.server.server_version_num().unwrap_or(0);
    if version < MIN_SERVER_VERSION {
        let v = conn
            .server
            .params
            .get("server_version")
            .cloned()
            .unwrap_or_default();
        return Err(ReceiverError::fatal(format!(
            "server {} runs PostgreSQL {}; walsink supports PostgreSQL 10 and later",
            describe(&conn.target),
            walsink_protocol::Escaped(&v)
        )));
    }
    let id = parse_identify_system(&conn.query("IDENTIFY_SYSTEM").await?)?;
    if let Some(db) = &id.dbname {
        return Err(ReceiverError::fatal(format!(
            "replication connection is unexpectedly database specific (database \"{}\"); remove \"replication=database\" from the connection string",
            walsink_protocol::Escaped(db)
        )));
    }
    Ok((conn, id))
}
