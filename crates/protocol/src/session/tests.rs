//! The session's rules on a simulated clock: time only moves when a test says so, and every
//! deadline is hit exactly.

use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};

use super::*;

const START: u64 = 0x300_0000;
const SEC: Duration = Duration::from_secs(1);

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend(((body.len() + 4) as u32).to_be_bytes());
    v.extend(body);
    v
}

fn copy_both() -> Vec<u8> {
    frame(b'W', &[0, 0, 0])
}

fn wal_pattern(start: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (start.wrapping_add(i) % 251) as u8 + 1)
        .collect()
}

fn xlog(start: u64, len: usize) -> Vec<u8> {
    let mut p = vec![b'w'];
    p.extend(start.to_be_bytes());
    p.extend(start.wrapping_add(len as u64).to_be_bytes());
    p.extend(0i64.to_be_bytes());
    p.extend(wal_pattern(start, len));
    frame(b'd', &p)
}

fn keepalive(reply: bool) -> Vec<u8> {
    let mut p = vec![b'k'];
    p.extend(0u64.to_be_bytes());
    p.extend(0i64.to_be_bytes());
    p.push(u8::from(reply));
    frame(b'd', &p)
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn row_description(cols: &[&str]) -> Vec<u8> {
    let mut b = (cols.len() as i16).to_be_bytes().to_vec();
    for c in cols {
        b.extend(cstr(c));
        b.extend([0; 18]);
    }
    frame(b'T', &b)
}

fn data_row(vals: &[&str]) -> Vec<u8> {
    let mut b = (vals.len() as i16).to_be_bytes().to_vec();
    for v in vals {
        b.extend((v.len() as i32).to_be_bytes());
        b.extend(v.as_bytes());
    }
    frame(b'D', &b)
}

fn command_complete(tag: &str) -> Vec<u8> {
    frame(b'C', &cstr(tag))
}

fn ready() -> Vec<u8> {
    frame(b'Z', b"I")
}

fn error_response(code: &str, msg: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (f, v) in [(b'S', "ERROR"), (b'V', "ERROR"), (b'C', code), (b'M', msg)] {
        b.push(f);
        b.extend(cstr(v));
    }
    b.push(0);
    frame(b'E', &b)
}

/// The whole end-of-timeline result set, as PostgreSQL sends it.
fn next_timeline_result(tli: &str, start: &str) -> Vec<u8> {
    let mut v = row_description(&["next_tli", "next_tli_startpos"]);
    v.extend(data_row(&[tli, start]));
    v.extend(command_complete("START_STREAMING"));
    v.extend(command_complete("START_REPLICATION"));
    v.extend(ready());
    v
}

fn config() -> SessionConfig {
    SessionConfig {
        slot: Some("walsink".into()),
        timeline: TimelineId::ONE,
        start: Lsn(START),
        endpos: None,
        status_interval: Some(10 * SEC),
        receive_timeout: None,
        report_flush: true,
        confirmed: Lsn::INVALID,
    }
}

/// A session with a simulated clock, recording everything it puts out.
struct Sim {
    s: ReplicationSession,
    t0: Instant,
    now: Instant,
    events: Vec<Event>,
    /// Transmits with the simulated time (since `t0`) they were polled at.
    sent: Vec<(Duration, Transmit)>,
    wire: BytesMut,
    /// What was fed but not (yet) taken by the session.
    rbuf: BytesMut,
}

impl Sim {
    fn new(cfg: SessionConfig) -> Sim {
        let t0 = Instant::now();
        let mut sim = Sim {
            s: ReplicationSession::new(cfg),
            t0,
            now: t0,
            events: Vec::new(),
            sent: Vec::new(),
            wire: BytesMut::new(),
            rbuf: BytesMut::new(),
        };
        sim.drain();
        sim
    }

    /// A session in copy mode (START_REPLICATION sent, CopyBothResponse received).
    fn streaming(cfg: SessionConfig) -> Sim {
        let mut sim = Sim::new(cfg);
        sim.feed(&copy_both());
        assert_eq!(sim.s.phase(), Phase::Streaming);
        sim.take();
        sim
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    fn drain(&mut self) {
        while let Some(e) = self.s.poll_event() {
            self.events.push(e);
        }
        let wall = UNIX_EPOCH + Duration::from_secs(946_684_800) + self.elapsed();
        while let Some(t) = self.s.poll_transmit(wall, &mut self.wire) {
            self.sent.push((self.elapsed(), t));
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.rbuf.extend_from_slice(bytes);
        self.s.handle_bytes(self.now, &mut self.rbuf);
        self.drain();
    }

    /// Moves the clock to `t` after `t0`, serving every deadline on the way exactly when due.
    fn run_until(&mut self, t: Duration) {
        let until = self.t0 + t;
        while let Some(at) = self.s.poll_timeout().filter(|&at| at <= until) {
            assert!(at >= self.now, "a deadline in the past: {at:?}");
            self.now = at;
            self.s.handle_timeout(at);
            self.drain();
        }
        self.now = until;
    }

    fn flushed(&mut self, lsn: u64) {
        self.s.handle_flushed(self.now, Lsn(lsn));
        self.drain();
    }

    /// Takes what was recorded so far.
    fn take(&mut self) -> (Vec<Event>, Vec<(Duration, Transmit)>) {
        (
            std::mem::take(&mut self.events),
            std::mem::take(&mut self.sent),
        )
    }

    fn statuses(sent: &[(Duration, Transmit)]) -> Vec<(Duration, StatusUpdate)> {
        sent.iter()
            .filter_map(|(at, t)| match t {
                Transmit::Status(s) => Some((*at, *s)),
                _ => None,
            })
            .collect()
    }

    fn failure(&self) -> SessionError {
        match self.events.last() {
            Some(Event::Failed(e)) => {
                assert_eq!(self.s.error(), Some(e));
                e.clone()
            }
            other => panic!("the session did not fail: {other:?} ({:?})", self.events),
        }
    }
}

fn wal_events(events: &[Event]) -> Vec<(u64, usize)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Wal { start, data } => Some((start.0, data.len())),
            _ => None,
        })
        .collect()
}

// ---- start ---------------------------------------------------------------------------------

#[test]
fn start_replication_is_sent_first_and_copy_mode_sends_a_status_at_once() {
    let mut sim = Sim::new(config());
    let (_, sent) = sim.take();
    assert_eq!(
        sent,
        [(
            Duration::ZERO,
            Transmit::StartReplication(
                "START_REPLICATION SLOT \"walsink\" PHYSICAL 0/3000000 TIMELINE 1".into()
            )
        )]
    );
    assert_eq!(sim.wire[0], b'Q');
    assert_eq!(sim.s.poll_timeout(), None, "no timer before copy mode");
    sim.run_until(3 * SEC);
    sim.feed(&copy_both());
    let (events, sent) = sim.take();
    assert_eq!(events, [Event::Started]);
    let st = Sim::statuses(&sent);
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].0, 3 * SEC);
    assert_eq!(st[0].1.write, Lsn(START));
    // The start is reported flushed at once: everything before it is in the archive.
    assert_eq!(st[0].1.flush, Lsn(START));
    assert_eq!(st[0].1.apply, Lsn::INVALID);
    assert!(!st[0].1.reply_requested);
    assert_eq!(
        st[0].1.send_time, 3_000_000,
        "stamped with the wall time passed in"
    );
    assert_eq!(sim.s.poll_timeout(), Some(sim.t0 + 13 * SEC));
}

#[test]
fn server_error_in_reply_to_start_replication() {
    let mut sim = Sim::new(config());
    sim.feed(&error_response(
        "42704",
        "replication slot \"walsink\" does not exist",
    ));
    match sim.failure() {
        SessionError::Server { error, phase } => {
            assert_eq!(error.code, "42704");
            assert_eq!(phase, Phase::StartReplication);
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn unexpected_reply_to_start_replication_is_a_violation() {
    let mut sim = Sim::new(config());
    sim.feed(&data_row(&["x"]));
    let e = sim.failure();
    assert_eq!(
        e.to_string(),
        "unexpected message 'D' from server in reply to START_REPLICATION"
    );
}

#[test]
fn timeline_ending_exactly_at_the_start_is_answered_at_once() {
    let mut sim = Sim::new(config());
    sim.take();
    sim.feed(&next_timeline_result("2", "0/3000000"));
    let (events, sent) = sim.take();
    assert_eq!(
        events,
        [Event::EndOfTimeline {
            next: NextTimeline {
                tli: TimelineId::new(2).unwrap(),
                start: Lsn(START)
            },
            received: Lsn(START)
        }]
    );
    assert!(sent.is_empty(), "nothing to send: {sent:?}");
    assert!(sim.s.is_over());
}

// ---- status updates --------------------------------------------------------------------------

#[test]
fn status_updates_follow_the_interval_exactly() {
    let mut sim = Sim::streaming(config());
    sim.run_until(45 * SEC);
    let (_, sent) = sim.take();
    let at: Vec<Duration> = Sim::statuses(&sent).iter().map(|s| s.0).collect();
    assert_eq!(at, [10 * SEC, 20 * SEC, 30 * SEC, 40 * SEC]);
    assert!(Sim::statuses(&sent).iter().all(|s| !s.1.reply_requested));
}

#[test]
fn status_interval_zero_sends_no_periodic_updates() {
    let mut sim = Sim::new(SessionConfig {
        status_interval: None,
        ..config()
    });
    sim.feed(&copy_both());
    sim.take();
    assert_eq!(
        sim.s.poll_timeout(),
        None,
        "-s 0 and no receive timeout: no timer"
    );
    sim.run_until(3600 * SEC);
    let (_, sent) = sim.take();
    assert!(sent.is_empty(), "{sent:?}");
    // The server asking is still answered.
    sim.feed(&keepalive(true));
    let (_, sent) = sim.take();
    assert_eq!(Sim::statuses(&sent).len(), 1);
}

#[test]
fn reply_requested_keepalive_is_answered_at_once() {
    let mut sim = Sim::streaming(config());
    sim.run_until(3 * SEC);
    sim.feed(&keepalive(false));
    let (events, sent) = sim.take();
    assert!(events.is_empty() && sent.is_empty(), "{events:?} {sent:?}");
    sim.feed(&keepalive(true));
    let (events, sent) = sim.take();
    assert_eq!(events, [Event::FlushRequested]);
    let st = Sim::statuses(&sent);
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].0, 3 * SEC, "answered at the same instant");
    assert!(!st[0].1.reply_requested);
}

#[test]
fn receive_timeout_pings_half_way_then_gives_up() {
    let mut sim = Sim::streaming(SessionConfig {
        status_interval: None,
        receive_timeout: Some(60 * SEC),
        ..config()
    });
    sim.run_until(29 * SEC);
    assert!(sim.take().1.is_empty());
    sim.run_until(30 * SEC);
    let (_, sent) = sim.take();
    let st = Sim::statuses(&sent);
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].0, 30 * SEC);
    assert!(st[0].1.reply_requested, "the ping asks for a reply");
    sim.run_until(59 * SEC);
    assert!(sim.events.is_empty() && !sim.s.is_over());
    sim.run_until(60 * SEC);
    assert_eq!(
        sim.failure(),
        SessionError::ReceiveTimeout { after: 60 * SEC }
    );
    assert_eq!(
        sim.failure().to_string(),
        "no message from the server for 60 s (receive timeout); the server or the network is not responding"
    );
    assert_eq!(sim.s.poll_timeout(), None);
}

#[test]
fn an_answer_to_the_ping_restarts_the_receive_timeout() {
    let mut sim = Sim::streaming(SessionConfig {
        status_interval: None,
        receive_timeout: Some(60 * SEC),
        ..config()
    });
    sim.run_until(31 * SEC);
    sim.feed(&keepalive(false));
    sim.run_until(80 * SEC);
    assert!(!sim.s.is_over());
    let (_, sent) = sim.take();
    let pings: Vec<Duration> = Sim::statuses(&sent)
        .iter()
        .filter(|s| s.1.reply_requested)
        .map(|s| s.0)
        .collect();
    assert_eq!(pings, [30 * SEC, 61 * SEC]);
    sim.run_until(91 * SEC);
    assert!(matches!(sim.failure(), SessionError::ReceiveTimeout { .. }));
}

#[test]
fn no_receive_timeout_while_the_driver_is_not_reading() {
    let mut sim = Sim::streaming(SessionConfig {
        status_interval: Some(10 * SEC),
        receive_timeout: Some(60 * SEC),
        ..config()
    });
    sim.run_until(5 * SEC);
    sim.s.pause_reading(sim.now);
    sim.run_until(3600 * SEC);
    assert!(!sim.s.is_over(), "{:?}", sim.events);
    let (_, sent) = sim.take();
    let st = Sim::statuses(&sent);
    assert!(
        st.iter().all(|s| !s.1.reply_requested),
        "pinged while paused"
    );
    assert_eq!(st.len(), 360, "status updates go on meanwhile");
    sim.s.resume_reading(sim.now);
    sim.run_until(3629 * SEC);
    assert!(
        Sim::statuses(&sim.take().1)
            .iter()
            .all(|s| !s.1.reply_requested)
    );
    sim.run_until(3630 * SEC);
    assert!(
        Sim::statuses(&sim.take().1)
            .iter()
            .any(|s| s.1.reply_requested)
    );
}

// ---- flush positions -------------------------------------------------------------------------

#[test]
fn flush_is_never_reported_above_durable_nor_write_above_written() {
    let mut sim = Sim::streaming(config());
    sim.feed(&xlog(START, 8192));
    sim.feed(&xlog(START + 8192, 8192));
    let (events, sent) = sim.take();
    assert_eq!(wal_events(&events), [(START, 8192), (START + 8192, 8192)]);
    assert!(sent.is_empty(), "WAL alone sends nothing: {sent:?}");
    sim.s.handle_written(Lsn(START + 10000));
    sim.flushed(START + 4096);
    let (_, sent) = sim.take();
    let st = Sim::statuses(&sent);
    assert_eq!(st.len(), 1, "a new flush position is reported at once");
    assert_eq!(st[0].1.flush, Lsn(START + 4096));
    assert_eq!(st[0].1.write, Lsn(START + 10000));
    // The same durable position again: nothing new to say.
    sim.flushed(START + 4096);
    assert!(sim.take().1.is_empty());
    // Periodic updates carry the durable position, not what was received.
    sim.run_until(10 * SEC);
    let st = Sim::statuses(&sim.take().1);
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].1.flush, Lsn(START + 4096));
    // A writer claiming more than was received: neither position goes past what was received.
    sim.s.handle_written(Lsn(START + 99999));
    sim.flushed(START + 99999);
    let st = Sim::statuses(&sim.take().1);
    assert_eq!(st[0].1.flush, Lsn(START + 16384));
    assert_eq!(st[0].1.write, Lsn(START + 16384));
}

/// An idle server sends no WAL: the start position is reported written and flushed in the first status
/// update, at the moment copy mode begins (so the slot's restart_lsn is set at once, as with
/// pg_receivewal), and in every periodic one after it; it moves on only with a durable flush. Without flush
/// reporting (no slot, no --synchronous, or --no-sync) it stays invalid; below the position the server
/// already has (a re-streamed .partial) it is not reported.
#[test]
fn on_an_idle_server_the_start_is_reported_flushed_at_once() {
    let mut sim = Sim::new(config());
    sim.take();
    sim.run_until(SEC / 2);
    sim.feed(&copy_both());
    let st = Sim::statuses(&sim.take().1);
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].0, SEC / 2, "sent the moment copy mode began");
    assert_eq!((st[0].1.write, st[0].1.flush), (Lsn(START), Lsn(START)));
    // Nothing arrives; the periodic updates say the same.
    sim.run_until(35 * SEC);
    let st = Sim::statuses(&sim.take().1);
    assert_eq!(
        st.iter().map(|s| s.0).collect::<Vec<_>>(),
        [10 * SEC + SEC / 2, 20 * SEC + SEC / 2, 30 * SEC + SEC / 2]
    );
    assert!(st.iter().all(|s| s.1.flush == Lsn(START)), "{st:?}");
    // A writer that has not flushed anything of this session yet does not pull it back.
    sim.flushed(0);
    assert!(sim.take().1.is_empty());
    sim.feed(&xlog(START, 100));
    sim.s.handle_written(Lsn(START + 100));
    sim.flushed(START + 100);
    let st = Sim::statuses(&sim.take().1);
    assert_eq!(st[0].1.flush, Lsn(START + 100));

    // No flush reporting: invalid from the start.
    let mut sim = Sim::new(SessionConfig {
        report_flush: false,
        ..config()
    });
    sim.feed(&copy_both());
    let st = Sim::statuses(&sim.take().1);
    assert_eq!((st[0].1.write, st[0].1.flush), (Lsn(START), Lsn::INVALID));

    // The server already has more than the start: not reported until the flush passes it.
    let mut sim = Sim::new(SessionConfig {
        confirmed: Lsn(START + 10),
        ..config()
    });
    sim.feed(&copy_both());
    let st = Sim::statuses(&sim.take().1);
    assert_eq!(st[0].1.flush, Lsn::INVALID);
}

#[test]
fn flush_is_not_reported_below_the_confirmed_position() {
    let mut sim = Sim::streaming(SessionConfig {
        confirmed: Lsn(START + 6000),
        ..config()
    });
    sim.feed(&xlog(START, 8192));
    sim.flushed(START);
    sim.flushed(START + 5999);
    sim.run_until(10 * SEC);
    let st = Sim::statuses(&sim.take().1);
    assert!(!st.is_empty());
    assert!(st.iter().all(|s| s.1.flush == Lsn::INVALID), "{st:?}");
    sim.flushed(START + 6000);
    let st = Sim::statuses(&sim.take().1);
    assert_eq!(st[0].1.flush, Lsn(START + 6000));
}

#[test]
fn without_flush_reporting_flush_is_always_invalid() {
    let mut sim = Sim::streaming(SessionConfig {
        report_flush: false,
        ..config()
    });
    sim.feed(&xlog(START, 8192));
    sim.s.handle_written(Lsn(START + 8192));
    sim.flushed(START + 8192);
    assert!(sim.take().1.is_empty(), "no flush to report, so no update");
    sim.run_until(30 * SEC);
    sim.feed(&keepalive(true));
    let st = Sim::statuses(&sim.take().1);
    assert_eq!(st.len(), 4);
    assert!(st.iter().all(|s| s.1.flush == Lsn::INVALID));
    assert!(st.iter().all(|s| s.1.write == Lsn(START + 8192)));
}

// ---- WAL ---------------------------------------------------------------------------------------

#[test]
fn wal_is_handed_out_as_slices_of_the_receive_buffer() {
    let mut sim = Sim::streaming(config());
    let bytes = xlog(START, 1000);
    // Split anywhere: nothing until the frame is whole.
    sim.feed(&bytes[..600]);
    assert!(sim.take().0.is_empty());
    let mut buf = BytesMut::with_capacity(4096);
    buf.put_slice(&sim.rbuf);
    buf.put_slice(&bytes[600..]);
    let base = buf.as_ptr() as usize;
    sim.rbuf.clear();
    sim.s.handle_bytes(sim.now, &mut buf);
    assert!(buf.is_empty());
    match sim.s.poll_event() {
        Some(Event::Wal { start, data }) => {
            assert_eq!(start, Lsn(START));
            assert_eq!(&data[..], &wal_pattern(START, 1000)[..]);
            assert_eq!(data.as_ptr() as usize, base + 5 + 25, "not a copy");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.s.received(), Lsn(START + 1000));
}

#[test]
fn a_gap_an_overlap_or_a_wrong_first_position_is_a_violation() {
    let cases = [
        (
            vec![xlog(START + 100, 100)],
            "server sent WAL starting at 0/3000064, but walsink expected 0/3000000: the stream must begin where START_REPLICATION asked; nothing after 0/3000000 (timeline 1) was written",
            0,
        ),
        (
            vec![xlog(START, 100), xlog(START + 200, 100)],
            "server sent WAL starting at 0/30000C8, but walsink expected 0/3000064: a gap in the stream; nothing after 0/3000064 (timeline 1) was written",
            1,
        ),
        (
            vec![xlog(START, 100), xlog(START + 50, 100)],
            "server sent WAL starting at 0/3000032, but walsink expected 0/3000064: an overlap in the stream; nothing after 0/3000064 (timeline 1) was written",
            1,
        ),
    ];
    for (frames, text, good) in cases {
        let mut sim = Sim::streaming(config());
        let mut all = Vec::new();
        for f in &frames {
            all.extend(f);
        }
        all.extend(xlog(START + 100, 100));
        sim.feed(&all);
        assert_eq!(wal_events(&sim.events).len(), good, "{text}");
        assert_eq!(sim.failure().to_string(), text);
        assert!(matches!(
            sim.failure(),
            SessionError::Violation {
                phase: Phase::Streaming,
                ..
            }
        ));
    }
}

#[test]
fn xlogdata_ending_past_2_pow_64_is_a_violation() {
    let start = u64::MAX - 100;
    let mut sim = Sim::streaming(SessionConfig {
        start: Lsn(start),
        ..config()
    });
    sim.feed(&xlog(start, 100));
    assert_eq!(
        wal_events(&sim.events),
        [(start, 100)],
        "up to 2^64 - 1 is fine"
    );
    sim.feed(&xlog(start + 100, 2));
    match sim.failure() {
        SessionError::Violation {
            violation: Violation::LsnOverflow { start: s, len: 2 },
            received,
            ..
        } => {
            assert_eq!(s, Lsn(u64::MAX));
            assert_eq!(received, Lsn(u64::MAX));
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(wal_events(&sim.events).len(), 1, "nothing of it handed out");
}

#[test]
fn malformed_and_misplaced_messages_during_streaming_are_violations() {
    let mut short = vec![b'w'];
    short.extend([0; 14]);
    let cases: [(Vec<u8>, &str); 4] = [
        (frame(b'd', &short), "XLogData header too small: 15 bytes"),
        (frame(b'd', b"z123"), "unrecognized streaming header: \"z\""),
        (
            frame(b'Y', b"abc"),
            "unexpected message 'Y' from server during streaming",
        ),
        (
            vec![b'd', 0x7f, 0xff, 0xff, 0xff],
            "server sent a message of type 'd' with invalid length 2147483647",
        ),
    ];
    for (bytes, needle) in cases {
        let mut sim = Sim::streaming(config());
        sim.feed(&xlog(START, 10));
        sim.feed(&bytes);
        let text = sim.failure().to_string();
        assert!(text.contains(needle), "{text}");
        assert!(
            text.ends_with("; nothing after 0/300000A (timeline 1) was written"),
            "{text}"
        );
    }
}

#[test]
fn server_error_and_command_complete_during_streaming() {
    let mut sim = Sim::streaming(config());
    sim.feed(&xlog(START, 10));
    sim.feed(&error_response(
        "58P01",
        "requested WAL segment x has already been removed",
    ));
    match sim.failure() {
        SessionError::Server { error, phase } => {
            assert_eq!((error.code.as_str(), phase), ("58P01", Phase::Streaming));
        }
        e => panic!("{e:?}"),
    }
    let mut sim = Sim::streaming(config());
    sim.feed(&xlog(START, 10));
    sim.feed(&command_complete("COPY 0"));
    assert_eq!(
        sim.failure().to_string(),
        "replication stream was terminated by the server at 0/300000A"
    );
}

#[test]
fn notices_and_parameter_status_pass_through() {
    let mut sim = Sim::streaming(config());
    let mut notice = error_response("01000", "hello");
    notice[0] = b'N';
    sim.feed(&notice);
    sim.feed(&frame(b'S', b"a\0b\0"));
    let (events, _) = sim.take();
    assert!(matches!(&events[..], [Event::Notice(n)] if n.message == "hello"));
    assert!(!sim.s.is_over());
}

#[test]
fn a_failed_session_stays_failed() {
    let mut sim = Sim::streaming(SessionConfig {
        receive_timeout: Some(60 * SEC),
        ..config()
    });
    sim.feed(&xlog(START + 1, 10));
    let e = sim.failure();
    sim.take();
    assert_eq!(sim.s.poll_timeout(), None);
    sim.feed(&xlog(START, 10));
    sim.feed(&keepalive(true));
    sim.flushed(START + 10);
    sim.s.handle_writer_closed(sim.now, Lsn(START + 10));
    assert!(!sim.s.close(sim.now));
    sim.s.resume_reading(sim.now);
    sim.s.handle_timeout(sim.now + 3600 * SEC);
    sim.drain();
    let (events, sent) = sim.take();
    assert!(events.is_empty() && sent.is_empty(), "{events:?} {sent:?}");
    assert_eq!(sim.s.error(), Some(&e));
    assert_eq!(sim.s.received(), Lsn(START));
    assert_eq!(sim.s.poll_timeout(), None);
}

// ---- our end: --endpos and close ------------------------------------------------------------

#[test]
fn endpos_cuts_the_wal_and_ends_after_the_final_flush() {
    let endpos = START + 8192 + 100;
    let mut sim = Sim::streaming(SessionConfig {
        endpos: Some(Lsn(endpos)),
        receive_timeout: Some(60 * SEC),
        ..config()
    });
    let mut bytes = xlog(START, 8192);
    bytes.extend(xlog(START + 8192, 8192));
    let after = xlog(START + 16384, 8192);
    bytes.extend(&after);
    sim.feed(&bytes);
    let (events, _) = sim.take();
    assert_eq!(wal_events(&events), [(START, 8192), (START + 8192, 100)]);
    assert_eq!(events.last(), Some(&Event::CloseWriter));
    assert_eq!(sim.s.phase(), Phase::Closing);
    assert_eq!(sim.rbuf.len(), after.len(), "nothing past endpos is taken");
    assert_eq!(
        sim.s.poll_timeout(),
        None,
        "no timers while the writer closes"
    );
    // Not even a flush report before the writer says everything is durable.
    sim.flushed(START + 8192);
    assert!(sim.take().1.is_empty());
    sim.run_until(5 * SEC);
    sim.s.handle_written(Lsn(endpos));
    sim.s.handle_writer_closed(sim.now, Lsn(endpos));
    sim.drain();
    let (events, sent) = sim.take();
    assert!(events.is_empty());
    assert_eq!(sent.len(), 2);
    match &sent[0].1 {
        Transmit::Status(s) => {
            assert_eq!((s.write, s.flush), (Lsn(endpos), Lsn(endpos)));
        }
        t => panic!("{t:?}"),
    }
    assert_eq!(sent[1].1, Transmit::CopyDone);
    assert_eq!(sim.s.phase(), Phase::Ending);
    // WAL the server sent before it saw our CopyDone, its CopyDone and CommandComplete.
    let mut rest = xlog(START + 16384 + 8192, 10);
    rest.extend(frame(b'c', b""));
    rest.extend(command_complete("COPY 0"));
    sim.feed(&rest);
    assert!(sim.take().0.is_empty());
    sim.feed(&ready());
    let (events, sent) = sim.take();
    assert_eq!(events, [Event::EndposReached { acknowledged: true }]);
    assert!(sent.is_empty());
    assert!(sim.s.is_over() && sim.s.error().is_none());
}

#[test]
fn endpos_ends_without_the_server_after_the_end_copy_timeout() {
    let endpos = START + 100;
    let mut sim = Sim::streaming(SessionConfig {
        endpos: Some(Lsn(endpos)),
        ..config()
    });
    sim.feed(&xlog(START, 200));
    sim.s.handle_writer_closed(sim.now, Lsn(endpos));
    sim.drain();
    sim.take();
    sim.run_until(END_COPY_TIMEOUT - Duration::from_millis(1));
    assert!(sim.take().0.is_empty());
    sim.run_until(END_COPY_TIMEOUT);
    assert_eq!(
        sim.take().0,
        [Event::EndposReached {
            acknowledged: false
        }]
    );
}

#[test]
fn endpos_at_the_start_closes_at_once() {
    let mut sim = Sim::new(SessionConfig {
        endpos: Some(Lsn(START)),
        ..config()
    });
    sim.feed(&copy_both());
    let (events, _) = sim.take();
    assert_eq!(events, [Event::Started, Event::CloseWriter]);
}

#[test]
fn close_hands_out_what_was_decoded_then_ends_the_copy() {
    let mut sim = Sim::streaming(config());
    sim.feed(&xlog(START, 100));
    assert!(sim.s.close(sim.now));
    assert!(!sim.s.close(sim.now), "a second close changes nothing");
    sim.drain();
    let (events, _) = sim.take();
    assert_eq!(wal_events(&events), [(START, 100)]);
    assert_eq!(events.last(), Some(&Event::CloseWriter));
    sim.feed(&xlog(START + 100, 100));
    assert!(sim.take().0.is_empty(), "nothing more is handed out");
    sim.s.handle_writer_closed(sim.now, Lsn(START + 100));
    sim.drain();
    let (_, sent) = sim.take();
    assert!(
        matches!(&sent[..], [(_, Transmit::Status(s)), (_, Transmit::CopyDone)] if s.flush == Lsn(START + 100))
    );
    sim.feed(&ready());
    assert_eq!(sim.take().0, [Event::Stopped { acknowledged: true }]);
}

#[test]
fn close_before_copy_mode_ends_at_once() {
    let mut sim = Sim::new(config());
    sim.take();
    assert!(sim.s.close(sim.now));
    sim.drain();
    assert_eq!(
        sim.take().0,
        [Event::Stopped {
            acknowledged: false
        }]
    );
}

// ---- the server's end: end of timeline -------------------------------------------------------

/// A session that received `[START, START + len)` and then the server's CopyDone.
fn at_end_of_timeline(len: usize) -> Sim {
    let mut sim = Sim::streaming(SessionConfig {
        receive_timeout: Some(60 * SEC),
        ..config()
    });
    sim.feed(&xlog(START, len));
    sim.take();
    sim.feed(&frame(b'c', b""));
    let (events, sent) = sim.take();
    assert_eq!(events, [Event::CloseWriter]);
    assert_eq!(sent, [(Duration::ZERO, Transmit::CopyDone)]);
    assert_eq!(sim.s.phase(), Phase::EndOfTimeline);
    sim
}

#[test]
fn end_of_timeline_copy_done_both_ways_then_the_next_timeline() {
    let mut sim = at_end_of_timeline(4096);
    // Nothing may follow our CopyDone: no timers, no flush reports.
    assert_eq!(sim.s.poll_timeout(), None);
    sim.s.handle_writer_closed(sim.now, Lsn(START + 4096));
    sim.flushed(START + 4096);
    sim.run_until(3600 * SEC);
    assert!(sim.take().1.is_empty());
    sim.feed(&next_timeline_result("2", "0/3000800"));
    let (events, sent) = sim.take();
    assert_eq!(
        events,
        [Event::EndOfTimeline {
            next: NextTimeline {
                tli: TimelineId::new(2).unwrap(),
                start: Lsn(START + 0x800)
            },
            received: Lsn(START + 4096)
        }]
    );
    assert!(sent.is_empty());
    assert!(sim.s.is_over() && sim.s.error().is_none());
}

#[test]
fn server_error_at_the_end_of_the_timeline() {
    // Instead of the result set, or inside it.
    let mut inside = row_description(&["next_tli", "next_tli_startpos"]);
    inside.extend(error_response("XX000", "boom"));
    inside.extend(ready());
    for bytes in [error_response("XX000", "boom"), inside] {
        let mut sim = at_end_of_timeline(100);
        sim.feed(&bytes);
        match sim.failure() {
            SessionError::Server { error, phase } => {
                assert_eq!(error.message, "boom");
                assert_eq!(phase, Phase::EndOfTimeline);
            }
            e => panic!("{e:?}"),
        }
    }
}

#[test]
fn bad_next_timeline_results_are_violations() {
    let mut no_row = row_description(&["next_tli", "next_tli_startpos"]);
    no_row.extend(command_complete("START_STREAMING"));
    no_row.extend(ready());
    let mut one_column = row_description(&["next_tli"]);
    one_column.extend(data_row(&["2"]));
    one_column.extend(ready());
    let cases: [(Vec<u8>, &str); 8] = [
        (
            no_row,
            "got 0 rows and 2 fields, expected 1 rows and 2 or more fields",
        ),
        (one_column, "got 1 rows and 1 fields"),
        (
            next_timeline_result("two", "0/3000000"),
            "could not parse next timeline \"two\"",
        ),
        (
            next_timeline_result("0", "0/3000000"),
            "could not parse next timeline \"0\"",
        ),
        (
            next_timeline_result("2", "0/XYZ"),
            "could not parse next timeline's start position \"0/XYZ\"",
        ),
        (
            next_timeline_result("1", "0/3000000"),
            "server reported unexpected next timeline 1, following timeline 1",
        ),
        (
            next_timeline_result("2", "0/3000065"),
            "server stopped streaming timeline 1 at 0/3000064, but reported next timeline 2 to begin at 0/3000065; the WAL of timeline 1 in between was never sent",
        ),
        (
            xlog(START + 100, 10),
            "unexpected message 'd' from server after end of timeline",
        ),
    ];
    for (bytes, needle) in cases {
        let mut sim = at_end_of_timeline(100);
        sim.feed(&bytes);
        let e = sim.failure();
        assert!(
            matches!(
                e,
                SessionError::Violation {
                    phase: Phase::EndOfTimeline,
                    ..
                }
            ),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(text.contains(needle), "{needle}: {text}");
    }
}

#[test]
fn garbage_never_panics_and_either_waits_or_fails() {
    // Valid frames of every type the session meets, cut and spliced at pseudo-random points,
    // with some bytes flipped.
    let mut parts = vec![
        copy_both(),
        xlog(START, 300),
        keepalive(true),
        frame(b'c', b""),
    ];
    parts.push(next_timeline_result("2", "0/3000010"));
    parts.push(error_response("XX000", "x"));
    parts.push(command_complete("COPY 0"));
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..3000 {
        let mut bytes = Vec::new();
        for _ in 0..(next() % 6) {
            let p = &parts[(next() % parts.len() as u64) as usize];
            let from = (next() % (p.len() as u64 + 1)) as usize;
            bytes.extend(&p[from..]);
        }
        for _ in 0..(next() % 4) {
            if !bytes.is_empty() {
                let i = (next() % bytes.len() as u64) as usize;
                bytes[i] ^= next() as u8;
            }
        }
        let mut sim = Sim::new(SessionConfig {
            endpos: Some(Lsn(START + 200)),
            receive_timeout: Some(60 * SEC),
            ..config()
        });
        for chunk in bytes.chunks(1 + (next() % 64) as usize) {
            sim.feed(chunk);
            sim.s.handle_writer_closed(sim.now, sim.s.received());
            sim.run_until(sim.elapsed() + 7 * SEC);
        }
        // Whatever happened, WAL handed out is contiguous from the start and stops at endpos.
        let mut at = START;
        for (start, len) in wal_events(&sim.events) {
            assert_eq!(start, at);
            at += len as u64;
        }
        assert!(at <= START + 200);
        if let Some(e) = sim.s.error() {
            assert_eq!(sim.events.last(), Some(&Event::Failed(e.clone())));
        }
    }
}

#[test]
fn an_idle_session_pings_with_its_status_updates_and_wakes_for_nothing_else() {
    let mut sim = Sim::streaming(SessionConfig {
        receive_timeout: Some(60 * SEC),
        ..config()
    });
    sim.take();
    // An idle server that answers each ping 1 ms later, for ten minutes.
    let until = sim.t0 + 600 * SEC;
    let mut wakeups = Vec::new();
    let mut pings = Vec::new();
    while let Some(at) = sim.s.poll_timeout().filter(|&at| at <= until) {
        wakeups.push(at - sim.t0);
        sim.now = at;
        sim.s.handle_timeout(at);
        sim.drain();
        let (events, sent) = sim.take();
        assert!(
            !events.iter().any(|e| matches!(e, Event::Failed(_))),
            "{events:?}"
        );
        if let Some(p) = Sim::statuses(&sent).iter().find(|s| s.1.reply_requested) {
            pings.push(p.0);
            sim.now += Duration::from_millis(1);
            sim.feed(&keepalive(false));
        }
    }
    // One wake-up per status interval, nothing between: the ping rides a status update.
    let grid: Vec<Duration> = (1..=60).map(|i| i * 10 * SEC).collect();
    assert_eq!(wakeups, grid);
    // Still a ping whenever the server has been silent for half the receive timeout.
    let every_30s: Vec<Duration> = (1..=20).map(|i| i * 30 * SEC).collect();
    assert_eq!(pings, every_30s);
}

#[test]
fn a_ping_riding_a_status_update_keeps_the_receive_timeout() {
    let mut sim = Sim::streaming(SessionConfig {
        receive_timeout: Some(60 * SEC),
        status_interval: Some(25 * SEC),
        ..config()
    });
    sim.take();
    // The ping is due at 30 s, after the update at 25 s and before the one at 50 s: it goes
    // out with the update at 25 s, and the server still has until 60 s to answer.
    sim.run_until(25 * SEC);
    let st = Sim::statuses(&sim.take().1);
    assert_eq!(st.len(), 1);
    assert!(st[0].1.reply_requested, "the update at 25 s is the ping");
    sim.run_until(59 * SEC);
    assert!(!sim.s.is_over());
    assert!(
        Sim::statuses(&sim.take().1)
            .iter()
            .all(|s| !s.1.reply_requested),
        "one ping only"
    );
    sim.run_until(60 * SEC);
    assert_eq!(
        sim.failure(),
        SessionError::ReceiveTimeout { after: 60 * SEC }
    );
}
