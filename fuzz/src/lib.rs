//! The bodies of walsink's fuzz targets.
//!
//! Each libFuzzer binary in `fuzz_targets/` is one line calling a function here, and the
//! workspace test `tests/fuzz_corpus.rs` includes this file (`#[path]`) and replays every
//! committed input (`fuzz/corpus/<target>/`, `fuzz/regressions/<target>/`) through the
//! same function, so CI runs the corpora on stable Rust and the two cannot drift.
//! Every function must return normally on any input; a panic is a bug.

use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use walsink_protocol::conninfo::{AuthMethod, ChannelBinding, RequireAuth};
use walsink_protocol::frame::{self, BackendMessage};
use walsink_protocol::query::{self, QueryCollector, ResultSet};
use walsink_protocol::session::{Event, ReplicationSession, SessionConfig, Transmit};
use walsink_protocol::startup::{AuthPolicy, Startup, StartupOutcome, StartupParams};
use walsink_wal::{Lsn, TimelineHistory, TimelineId};

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
    ("session", session),
    ("wal_validate", wal_validate),
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
    // The authentication policy varies with the input's length, so the corpora keep
    // their meaning: no requirement, or one of these `require_auth` lists, or
    // `channel_binding=require` (which refuses every request without TLS).
    const REQUIRE_AUTH: [Option<&str>; 5] = [
        None,
        Some("scram-sha-256"),
        Some("md5,password"),
        Some("!md5,!none"),
        Some("none"),
    ];
    let choice = data.len() % (REQUIRE_AUTH.len() + 1);
    let require_auth: Option<RequireAuth> = REQUIRE_AUTH
        .get(choice)
        .copied()
        .flatten()
        .map(|r| r.parse().expect("a valid require_auth list"));
    let channel_binding = if choice == REQUIRE_AUTH.len() {
        ChannelBinding::Require
    } else {
        ChannelBinding::Prefer
    };
    let policy = AuthPolicy {
        require_auth: require_auth.clone(),
        channel_binding,
    };
    let mut client = Startup::new(params, Some("secret".to_owned())).with_policy(policy);
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
        // What a password request may be answered with, by the policy.
        let asked = match &msg {
            BackendMessage::AuthenticationCleartextPassword => Some(AuthMethod::Password),
            BackendMessage::AuthenticationMd5Password(_) => Some(AuthMethod::Md5),
            _ => None,
        };
        let result = client.handle(msg, &mut out);
        if let Some(method) = asked
            && !out.is_empty()
        {
            assert!(
                channel_binding != ChannelBinding::Require
                    && require_auth.as_ref().is_none_or(|r| r.allows(method)),
                "a {method:?} password was sent against require_auth={require_auth:?}, channel_binding={channel_binding:?}"
            );
        }
        match result {
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

/// The content of `.walsink.meta`.
pub fn meta(data: &[u8]) {
    walsink_archive::fuzz_meta(data);
}

/// WAL through the validator (`walsink_wal::validate`), whole and split into messages.
pub fn wal_validate(data: &[u8]) {
    walsink_wal::validate::fuzz_validate(data);
}

/// Where the `session` target's stream starts, and its `--endpos` when the flags ask for one.
pub const SESSION_START: u64 = 0x300_0000;
/// See [`SESSION_START`].
pub const SESSION_ENDPOS: u64 = 0x300_0100;

/// One `START_REPLICATION` session (`session::ReplicationSession`) driven as walsink's
/// driver drives it, by a script: the first byte holds flags (bit 0 `--endpos`, 1 a status
/// interval, 2 a receive timeout, 3 flush reporting, 4 a slot confirmed at the start), then
/// operations, one byte each:
///
/// * `0 n <n bytes>`: bytes from the server;
/// * `1`: the writer has written what was handed out; `2`: ... and made it durable;
/// * `3 s`: `s` seconds pass (the session's deadlines are served);
/// * `4`: close (shutdown); `5`: the writer closed (only after `CloseWriter`);
/// * `6`: the connection is lost; `7`: pause or resume reading.
///
/// Besides not panicking, the session must keep its promises to the driver: WAL handed
/// out is contiguous from the start and never past `--endpos`, a status update never
/// reports as written or flushed more than the driver said is written or durable (the session's
/// start counts as durable), nothing follows a final event,
/// and no status update follows our CopyDone.
pub fn session(data: &[u8]) {
    let Some((&flags, mut ops)) = data.split_first() else {
        return;
    };
    let start = Lsn(SESSION_START);
    let endpos = (flags & 1 != 0).then_some(Lsn(SESSION_ENDPOS));
    let cfg = SessionConfig {
        slot: Some("walsink".to_owned()),
        timeline: TimelineId::new(1).expect("nonzero"),
        start,
        endpos,
        status_interval: (flags & 2 != 0).then_some(Duration::from_secs(10)),
        receive_timeout: (flags & 4 != 0).then_some(Duration::from_secs(60)),
        report_flush: flags & 8 != 0,
        confirmed: if flags & 16 != 0 { start } else { Lsn::INVALID },
    };
    let mut s = ReplicationSession::new(cfg);
    let mut now = Instant::now();
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    // What the session handed out, what the driver says is written and durable.
    let (mut handed, mut written, mut durable) = (start, start, Lsn::INVALID);
    let mut close_writer = false;
    let mut over = false;
    let mut copy_done_sent = false;
    let mut reading = true;
    loop {
        while let Some(ev) = s.poll_event() {
            assert!(!over, "event after the final one: {ev:?}");
            match ev {
                Event::Wal { start, data } => {
                    assert_eq!(start, handed, "WAL not contiguous");
                    handed = start
                        .checked_add(data.len() as u64)
                        .expect("WAL handed out past 2^64");
                    if let Some(e) = endpos {
                        assert!(handed <= e, "WAL handed out past --endpos: {handed}");
                    }
                }
                Event::CloseWriter => close_writer = true,
                Event::EndOfTimeline { .. }
                | Event::EndposReached { .. }
                | Event::Stopped { .. }
                | Event::Failed(_) => over = true,
                Event::Started | Event::FlushRequested | Event::Notice(_) => {}
            }
        }
        while let Some(t) = s.poll_transmit(SystemTime::UNIX_EPOCH, &mut out) {
            match t {
                Transmit::Status(st) => {
                    assert!(!copy_done_sent, "status update after CopyDone");
                    // The session's start counts as durable: everything before it is in
                    // the archive already (that is how the start is chosen).
                    assert!(
                        st.flush == Lsn::INVALID || st.flush <= durable.max(start),
                        "reported {} flushed, durable is {durable}",
                        st.flush
                    );
                    assert!(
                        st.write <= written,
                        "reported {} written, the writer has {written}",
                        st.write
                    );
                }
                Transmit::CopyDone => copy_done_sent = true,
                Transmit::StartReplication(_) => {}
            }
        }
        out.clear();
        let Some((&op, rest)) = ops.split_first() else {
            return;
        };
        ops = rest;
        let mut arg = || {
            let (&a, rest) = ops.split_first()?;
            ops = rest;
            Some(a)
        };
        match op % 8 {
            0 => {
                let Some(n) = arg() else { return };
                let n = usize::from(n).min(ops.len());
                buf.extend_from_slice(&ops[..n]);
                ops = &ops[n..];
                if reading {
                    s.handle_bytes(now, &mut buf);
                }
            }
            1 => {
                written = handed;
                s.handle_written(written);
            }
            2 => {
                written = handed;
                durable = handed;
                s.handle_written(written);
                s.handle_flushed(now, durable);
            }
            3 => {
                let Some(secs) = arg() else { return };
                now += Duration::from_secs(secs.into());
                if s.poll_timeout().is_some_and(|d| d <= now) {
                    s.handle_timeout(now);
                }
            }
            4 => {
                s.close(now);
            }
            5 if close_writer => {
                written = handed;
                durable = handed;
                s.handle_writer_closed(now, durable);
            }
            5 => {}
            6 => {
                if !s.handle_connection_lost() {
                    return;
                }
            }
            _ => {
                if reading {
                    s.pause_reading(now);
                } else {
                    s.resume_reading(now);
                    s.handle_bytes(now, &mut buf);
                }
                reading = !reading;
            }
        }
    }
}
