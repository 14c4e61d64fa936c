//! walsink's protocol client against a real server, byte by byte, recording what the server says: the
//! recordings are the `pg<major>-*` seeds of the fuzz corpora (`fuzz/corpus/`), written when
//! `WALSINK_WRITE_FUZZ_SEEDS` is set:
//! `WALSINK_WRITE_FUZZ_SEEDS=1 cargo nextest run --test integration fuzz_seeds`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use walsink_protocol::copy::encode_query;
use walsink_protocol::frame::{self, BackendMessage};
use walsink_protocol::query::{self, QueryCollector, ResultSet, SlotInfo};
use walsink_protocol::startup::{Startup, StartupOutcome, StartupParams};

use crate::harness::{HostAuth, PgCluster};

/// A replication connection that keeps a copy of every message the server sends.
struct Recorded {
    sock: TcpStream,
    buf: BytesMut,
    recording: Vec<u8>,
}

impl Recorded {
    fn send(&mut self, out: &[u8]) {
        self.sock.write_all(out).expect("write to server");
    }

    fn next(&mut self) -> BackendMessage {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    self.recording.extend_from_slice(&self.buf[..=len]);
                }
            }
            if let Some(m) = frame::decode(&mut self.buf).expect("well-formed message") {
                return m;
            }
            let mut chunk = [0u8; 8192];
            let n = self.sock.read(&mut chunk).expect("read from server");
            assert!(n > 0, "server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Runs one simple query; returns its outcome and the server's bytes.
    fn query(
        &mut self,
        sql: &str,
    ) -> (Result<ResultSet, walsink_protocol::ProtocolError>, Vec<u8>) {
        self.recording.clear();
        let mut out = BytesMut::new();
        encode_query(sql, &mut out);
        self.send(&out);
        let mut c = QueryCollector::default();
        loop {
            let m = self.next();
            if let Some(outcome) = c.handle(m).expect("expected message") {
                return (outcome, std::mem::take(&mut self.recording));
            }
        }
    }
}

#[test]
fn real_server_bytes_parse_and_become_fuzz_seeds() {
    let pg = PgCluster::builder()
        .host_auth(HostAuth::ScramSha256("secret".to_owned()))
        .start();
    let major = pg.major_version();
    if !pg.has_read_replication_slot() {
        // The recorded exchange includes READ_REPLICATION_SLOT answers (PostgreSQL 15 and later).
        eprintln!("skipped: PostgreSQL {major} has no READ_REPLICATION_SLOT");
        return;
    }
    let sock = TcpStream::connect((pg.host(), pg.port())).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut conn = Recorded {
        sock,
        buf: BytesMut::new(),
        recording: Vec::new(),
    };

    let params = StartupParams {
        user: "postgres".to_owned(),
        database: "replication".to_owned(),
        application_name: "walsink".to_owned(),
        options: None,
    };
    let mut startup = Startup::new(params, Some("secret".to_owned()));
    let mut out = BytesMut::new();
    startup.startup_packet(&mut out);
    let server = loop {
        conn.send(&out);
        out.clear();
        match startup.handle(conn.next(), &mut out).expect("startup") {
            StartupOutcome::Continue => {}
            StartupOutcome::Ready(p) => break p,
        }
    };
    assert_eq!(server.major(), Some(major));
    let startup_bytes = std::mem::take(&mut conn.recording);
    assert!(
        startup_bytes.windows(13).any(|w| w == b"SCRAM-SHA-256"),
        "the server did not ask for SCRAM"
    );

    let (rs, identify) = conn.query("IDENTIFY_SYSTEM");
    let id = query::parse_identify_system(&rs.unwrap()).unwrap();
    assert_eq!(id.system_id, pg.system_identifier());
    assert_eq!(id.timeline.get(), 1);
    let (rs, show) = conn.query("SHOW wal_segment_size");
    assert_eq!(
        query::parse_wal_segment_size(&rs.unwrap()).unwrap().bytes(),
        pg.wal_segsize_bytes()
    );
    let (rs, read_missing) = conn.query(&query::read_replication_slot_command("fuzz_missing"));
    assert_eq!(
        query::parse_read_replication_slot(&rs.unwrap()).unwrap(),
        SlotInfo::Missing
    );
    let (rs, create) = conn.query("CREATE_REPLICATION_SLOT \"fuzz_slot\" PHYSICAL RESERVE_WAL");
    rs.unwrap();
    let (rs, read_slot) = conn.query(&query::read_replication_slot_command("fuzz_slot"));
    match query::parse_read_replication_slot(&rs.unwrap()).unwrap() {
        SlotInfo::Physical {
            restart_lsn: Some(_),
            restart_tli,
        } => assert_eq!(restart_tli.map(|t| t.get()), Some(1)),
        other => panic!("{other:?}"),
    }
    let (rs, history_error) = conn.query("TIMELINE_HISTORY 1");
    match rs {
        Err(walsink_protocol::ProtocolError::Server(e)) => assert_eq!(e.code, "58P01", "{e:?}"),
        other => panic!("TIMELINE_HISTORY 1 on timeline 1: {other:?}"),
    }

    if std::env::var_os("WALSINK_WRITE_FUZZ_SEEDS").is_some() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
        let session: Vec<u8> = [
            &startup_bytes[..],
            &identify[..],
            &show[..],
            &read_missing[..],
            &create[..],
            &read_slot[..],
            &history_error[..],
        ]
        .concat();
        for (target, name, data) in [
            ("startup", "scram", &startup_bytes),
            ("backend_frames", "session", &session),
            ("query_collector", "identify-system", &identify),
            ("query_collector", "show-segment-size", &show),
            ("query_collector", "read-slot-missing", &read_missing),
            ("query_collector", "create-slot", &create),
            ("query_collector", "read-slot", &read_slot),
            ("query_collector", "timeline-history-error", &history_error),
        ] {
            std::fs::write(corpus.join(target).join(format!("pg{major}-{name}")), data).unwrap();
        }
    }
}
