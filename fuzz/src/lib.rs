//! The bodies of walsink's fuzz targets.
//!
//! Each libFuzzer binary in `fuzz_targets/` is one line calling a function here, and the
//! workspace test `tests/fuzz_corpus.rs` includes this file (`#[path]`) and replays every
//! committed input (`fuzz/corpus/<target>/`, `fuzz/regressions/<target>/`) through the
//! same function, so CI runs the corpora on stable Rust and the two cannot drift.
//! Every function must return normally on any input; a panic is a bug.

use bytes::BytesMut;
use walsink_protocol::frame::{self, BackendMessage};
use walsink_protocol::query::{self, QueryCollector, ResultSet};
use walsink_protocol::startup::{Startup, StartupOutcome, StartupParams};
use walsink_wal::{TimelineHistory, TimelineId};

/// A target's body: called with one input, returns normally.
pub type Body = fn(&[u8]);

/// Every target: its name (the `[[bin]]` in `fuzz/Cargo.toml`, the corpus directory)
/// and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("backend_frames", backend_frames),
    ("replication_message", replication_message),
    ("conninfo", conninfo),
    ("history_file", history_file),
    ("startup", startup),
    ("query_collector", query_collector),
    ("meta", meta),
];

/// The backend byte stream split into messages (`frame::decode`).
pub fn backend_frames(data: &[u8]) {
    walsink_protocol::frame::fuzz_decode(data);
}

/// One CopyData payload of the replication stream (XLogData, keepalive).
pub fn replication_message(data: &[u8]) {
    walsink_protocol::copy::fuzz_replication_message(data);
}

/// A connection string or URI, resolved, and the `.pgpass` matcher.
pub fn conninfo(data: &[u8]) {
    walsink_protocol::conninfo::fuzz_conninfo(data);
}

/// A timeline history file's content, parsed as the history of a middle and of the
/// largest timeline, and queried.
pub fn history_file(data: &[u8]) {
    for tli in [7, u32::MAX] {
        let tli = TimelineId::new(tli).expect("nonzero");
        if let Ok(h) = TimelineHistory::parse(tli, data) {
            for e in &h.ancestors {
                let _ = h.timeline_of(e.switchpoint);
                let _ = h.switchpoint_of(e.tli);
                let _ = h.contains(e.tli);
            }
        }
    }
}

/// SCRAM iteration counts above this are not followed (each costs an HMAC; the client
/// library caps them at 100 000 itself): a fuzzer that learns to ask for many would
/// spend its time in PBKDF2 instead of in walsink's code.
const MAX_FUZZ_SCRAM_ITERATIONS: u32 = 4096;

/// The server's side of the startup and authentication exchange: `data` is the backend
/// byte stream, split into messages and fed to the client's state machine (which has a
/// password, so every method is tried) until it is ready or fails.
///
/// The SCRAM client picks a random nonce, and a server's first SCRAM message must start
/// its nonce with it. So that the fuzzer gets past that check, a `SASLContinue` whose
/// data begins with `r=` gets the client's nonce inserted after the `r=`, as a real
/// server would.
pub fn startup(data: &[u8]) {
    let params = StartupParams {
        user: "alice".to_owned(),
        database: "replication".to_owned(),
        application_name: "walsink".to_owned(),
        options: None,
    };
    let mut client = Startup::new(params, Some("secret".to_owned()));
    let mut out = BytesMut::new();
    client.startup_packet(&mut out);
    let mut client_nonce: Option<Vec<u8>> = None;
    let mut buf = BytesMut::from(data);
    while let Ok(Some(msg)) = frame::decode(&mut buf) {
        let msg = match msg {
            BackendMessage::AuthenticationSaslContinue(d) => {
                if scram_iterations(&d).is_some_and(|i| i > MAX_FUZZ_SCRAM_ITERATIONS) {
                    return;
                }
                match (&client_nonce, d.strip_prefix(b"r=")) {
                    (Some(nonce), Some(rest)) => {
                        let mut v = b"r=".to_vec();
                        v.extend_from_slice(nonce);
                        v.extend_from_slice(rest);
                        BackendMessage::AuthenticationSaslContinue(v.into())
                    }
                    _ => BackendMessage::AuthenticationSaslContinue(d),
                }
            }
            other => other,
        };
        out.clear();
        match client.handle(msg, &mut out) {
            Ok(StartupOutcome::Continue) => {}
            Ok(StartupOutcome::Ready(params)) => {
                let _ = (params.server_version_num(), params.major());
                return;
            }
            Err(e) => {
                let _ = e.to_string();
                return;
            }
        }
        if client_nonce.is_none() {
            client_nonce = sasl_client_nonce(&out);
        }
    }
}

/// The nonce of a SASLInitialResponse's client-first message (`n,,n=,r=<nonce>`).
fn sasl_client_nonce(out: &[u8]) -> Option<Vec<u8>> {
    const MARK: &[u8] = b"n=,r=";
    let at = out.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let nonce = &out[at..];
    let end = nonce
        .iter()
        .position(|&b| b == b',' || b == 0)
        .unwrap_or(nonce.len());
    Some(nonce[..end].to_vec())
}

/// The `i=` attribute of a SCRAM server-first message, if it is a number.
fn scram_iterations(d: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(d).ok()?;
    text.split(',')
        .find_map(|a| a.strip_prefix("i="))
        .and_then(|i| i.parse().ok())
}

/// The backend byte stream of simple-query answers, collected by `QueryCollector`; every
/// result set it completes goes through every result parser.
pub fn query_collector(data: &[u8]) {
    let mut collector = QueryCollector::default();
    let mut buf = BytesMut::from(data);
    while let Ok(Some(msg)) = frame::decode(&mut buf) {
        match collector.handle(msg) {
            Ok(None) => {}
            Ok(Some(Ok(rs))) => parse_every_way(&rs),
            Ok(Some(Err(e))) => {
                let _ = e.to_string();
            }
            Err(_) => return,
        }
    }
}

fn parse_every_way(rs: &ResultSet) {
    let _ = query::parse_identify_system(rs);
    let _ = query::parse_wal_segment_size(rs);
    let _ = query::parse_show(rs);
    let _ = query::parse_read_replication_slot(rs);
    let _ = query::parse_next_timeline(rs);
    // TIMELINE_HISTORY checks the file name against the timeline asked for: ask for the
    // one the answer names (so the content is reached) and for a fixed one.
    let named = rs
        .rows
        .first()
        .and_then(|r| r.first())
        .and_then(|v| v.as_ref())
        .and_then(|v| std::str::from_utf8(v.get(..8)?).ok())
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .and_then(TimelineId::new);
    for tli in named.into_iter().chain(TimelineId::new(2)) {
        if let Ok(h) = query::parse_timeline_history(rs, tli) {
            let _ = TimelineHistory::parse(tli, &h.content);
        }
    }
}

/// The content of `walsink.meta`.
pub fn meta(data: &[u8]) {
    walsink_archive::fuzz_meta(data);
}
