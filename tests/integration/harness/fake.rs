//! A scripted fake replication server, for what PostgreSQL never sends: malformed, oversized,
//! out-of-order and overlapping XLogData, unknown message types, bogus end-of-timeline replies.
//!
//! [`FakeServer::start`] listens on a free loopback port. Each accepted connection plays the next
//! [`FakeSession`] of the list (the last one again once the list is used up): trust authentication
//! (AuthenticationOk, ParameterStatus `server_version`, BackendKeyData, ReadyForQuery), then answers
//! `IDENTIFY_SYSTEM`, `SHOW wal_segment_size`, `READ_REPLICATION_SLOT` and `TIMELINE_HISTORY` from the
//! session's settings, and on `START_REPLICATION` sends CopyBothResponse and plays the session's script
//! of [`Step`]s. An [`Step::EndOfTimeline`] leaves copy mode; the next `START_REPLICATION` on the same
//! connection continues the script after it. When the script is played out the connection stays open,
//! recording what the client sends, until the client closes it (or ends the copy with CopyDone, which is
//! answered like a server does).
//!
//! Every frame is built here by hand, big-endian, from the protocol documentation: nothing is shared
//! with walsink's codec, so a codec bug cannot cancel itself out.
//!
//! What the client sent is recorded: every standby status update ([`FakeServer::statuses`], with the
//! time it arrived), every query, and when each script step was played. Anything the fake did not
//! expect from the client is recorded in [`FakeServer::problems`].
//!
//! WAL bytes come from [`wal_bytes`]: valid WAL pages (walsink validates every page header and record
//! CRC before it archives anything) that depend only on their position, with 1 MB segments of system
//! [`WAL_SYSTEM_ID`] on timeline 1, whose records end at the page offsets
//! `walsink_wal::synth::FIXED_PAGE_RECORD_ENDS` (100, 512, 8064 and the page end), so the positions a script stops at
//! are record boundaries. The record data is a pattern of the LSN in which no byte is zero, so a test
//! can tell archived bytes from the zeros of a preallocated `.partial` and from bytes at another
//! position. The fake writes its session's system identifier into the long page headers it sends.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::format_lsn;

/// How long the fake waits for the client at any point before giving up on the connection.
const CLIENT_WAIT: Duration = Duration::from_secs(120);

/// The system identifier in the long page headers of [`wal_bytes`].
pub const WAL_SYSTEM_ID: u64 = 7_300_000_000_000_000_001;

/// The WAL page at `page` (a multiple of 8192), made once per thread.
fn wal_page(page: u64) -> std::rc::Rc<Vec<u8>> {
    use std::cell::RefCell;
    use std::rc::Rc;
    thread_local! {
        static PAGES: RefCell<HashMap<u64, Rc<Vec<u8>>>> = RefCell::new(HashMap::new());
    }
    PAGES.with(|pages| {
        let mut pages = pages.borrow_mut();
        if pages.len() > 4096 {
            pages.clear();
        }
        pages
            .entry(page)
            .or_insert_with(|| {
                let params = walsink_wal::synth::SynthParams {
                    seg: walsink_wal::WalSegSize::new(1 << 20).unwrap(),
                    format: walsink_wal::synth::PG18,
                    system_id: WAL_SYSTEM_ID,
                    tli: 1,
                };
                Rc::new(walsink_wal::synth::fixed_page(&params, page))
            })
            .clone()
    })
}

/// The WAL byte at `lsn` (see the module docs).
pub fn wal_byte(lsn: u64) -> u8 {
    wal_page(lsn & !8191)[(lsn & 8191) as usize]
}

/// The WAL bytes `[start, start + len)`.
pub fn wal_bytes(start: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let end = start + len as u64;
    let mut pos = start;
    while pos < end {
        let page = wal_page(pos & !8191);
        let from = (pos & 8191) as usize;
        let n = (8192 - from).min((end - pos) as usize);
        out.extend_from_slice(&page[from..from + n]);
        pos += n as u64;
    }
    out
}

/// `data` (WAL from `start`) with `system_id` in the long page headers it covers (1 MB segments).
fn with_system_id(start: u64, mut data: Vec<u8>, system_id: u64) -> Vec<u8> {
    let id = system_id.to_le_bytes();
    let end = start + data.len() as u64;
    let mut seg = start & !((1 << 20) - 1);
    while seg < end {
        for (i, b) in id.iter().enumerate() {
            let at = seg + 24 + i as u64;
            if at >= start && at < end {
                data[(at - start) as usize] = *b;
            }
        }
        match seg.checked_add(1 << 20) {
            Some(next) => seg = next,
            None => break,
        }
    }
    data
}

/// One step of a session's script, played after `START_REPLICATION`.
#[derive(Clone, Debug)]
pub enum Step {
    /// CopyData with XLogData (`w`): `data` starts at `start`; the header's walEnd is its end.
    XLogData {
        /// LSN of the first byte.
        start: u64,
        /// The WAL bytes.
        data: Vec<u8>,
    },
    /// A CopyData frame with an arbitrary payload (a short XLogData, an unknown type byte, ...).
    CopyData(Vec<u8>),
    /// Bytes written to the socket as they are: broken frames, unknown message types.
    Raw(Vec<u8>),
    /// CopyData with a primary keepalive (`k`).
    Keepalive {
        /// The walEnd field.
        wal_end: u64,
        /// Ask the client for a status update at once.
        reply_requested: bool,
    },
    /// End of a historic timeline: CopyDone, wait for the client's CopyDone, then the result set
    /// (`next_tli`, `next_tli_startpos`) given as text (so that bogus values can be sent),
    /// CommandComplete and ReadyForQuery. The connection is back in command mode.
    EndOfTimeline {
        /// The `next_tli` column.
        next_tli: String,
        /// The `next_tli_startpos` column.
        next_start: String,
    },
    /// ErrorResponse (severity ERROR) with this SQLSTATE and message, then ReadyForQuery: the
    /// connection is back in command mode, as after a walsender error.
    Error {
        /// SQLSTATE.
        code: String,
        /// Primary message.
        message: String,
    },
    /// Waits until the client has reported a flush position of at least `flush` on this connection
    /// (for 0: until a status update arrives after the step began). On timeout a problem is recorded
    /// and the script goes on.
    WaitForStatus {
        /// The flush position to wait for.
        flush: u64,
        /// How long to wait.
        timeout: Duration,
    },
    /// Pauses the script (client messages are still recorded).
    Sleep(Duration),
    /// Closes the connection (both directions) at once.
    Close,
}

impl Step {
    /// XLogData of the pattern bytes `[start, start + len)`.
    pub fn wal(start: u64, len: usize) -> Step {
        Step::XLogData {
            start,
            data: wal_bytes(start, len),
        }
    }

    /// Waits (up to 10 s) until the client reports `flush` or more as flushed.
    pub fn wait_flush(flush: u64) -> Step {
        Step::WaitForStatus {
            flush,
            timeout: Duration::from_secs(10),
        }
    }
}

/// What `READ_REPLICATION_SLOT` reports.
#[derive(Clone, Copy, Debug)]
pub enum FakeSlot {
    /// No such slot: one row of NULLs.
    Missing,
    /// A physical slot.
    Physical {
        /// Its restart_lsn (`None`: NULL, WAL never reserved).
        restart_lsn: Option<u64>,
        /// Its restart_tli.
        restart_tli: u32,
    },
}

/// What one connection to the fake server looks like.
#[derive(Clone, Debug)]
pub struct FakeSession {
    /// `IDENTIFY_SYSTEM` systemid.
    pub system_id: u64,
    /// `IDENTIFY_SYSTEM` timeline.
    pub timeline: u32,
    /// `IDENTIFY_SYSTEM` xlogpos (the server's flush position).
    pub xlogpos: u64,
    /// The value of `SHOW wal_segment_size` (`"1MB"` by default).
    pub wal_segment_size: String,
    /// The `server_version` parameter.
    pub server_version: String,
    /// `READ_REPLICATION_SLOT`'s answer, whatever the slot name.
    pub slot: FakeSlot,
    /// `TIMELINE_HISTORY` contents by timeline; other timelines get "could not open file".
    pub histories: HashMap<u32, Vec<u8>>,
    /// The script played after `START_REPLICATION`.
    pub script: Vec<Step>,
    /// How the fake authenticates the client.
    pub auth: FakeAuth,
    /// What follows AuthenticationOk.
    pub after_auth: AfterAuth,
    /// Replies that replace the normal answer to a command, by the command's first word (upper case).
    pub replies: HashMap<String, Reply>,
    /// The answer to an SSLRequest: `N` (no TLS) by default; anything else (`S` and bytes injected after
    /// it, `E` and an ErrorResponse, a bogus byte) is sent as it is.
    pub ssl_answer: Vec<u8>,
}

/// How the fake authenticates the client.
#[derive(Clone, Debug, Default)]
pub enum FakeAuth {
    /// AuthenticationOk at once.
    #[default]
    Trust,
    /// AuthenticationCleartextPassword; any password is accepted (and recorded).
    Cleartext,
    /// AuthenticationMD5Password; any answer is accepted (and recorded).
    Md5,
    /// AuthenticationSASL offering these mechanisms; any answer ends the connection with an error.
    Sasl(Vec<String>),
}

/// What the fake does after AuthenticationOk.
#[derive(Clone, Debug, Default)]
pub enum AfterAuth {
    /// ParameterStatus, BackendKeyData, ReadyForQuery, then commands.
    #[default]
    Normal,
    /// Nothing at all: the connection stays open and silent until the client closes it.
    Silent,
    /// These bytes (whole frames), again and again until the client closes the connection.
    Flood(Vec<u8>),
}

/// A replacement answer to a command.
#[derive(Clone, Debug)]
pub enum Reply {
    /// These bytes, then ReadyForQuery.
    Raw(Vec<u8>),
    /// `head`, then `repeat` again and again until the client closes the connection.
    Endless {
        /// Sent once first.
        head: Vec<u8>,
        /// Sent for ever after.
        repeat: Vec<u8>,
    },
    /// No answer at all: the connection stays open and silent.
    Silent,
}

impl FakeSession {
    /// A PostgreSQL 15.18 server of system `system_id` on `timeline`, flushed up to `xlogpos`, with 1 MB
    /// segments and a physical slot whose restart_lsn is `xlogpos` (so walsink starts streaming at the
    /// start of `xlogpos`'s segment); an empty script.
    pub fn new(system_id: u64, timeline: u32, xlogpos: u64) -> FakeSession {
        FakeSession {
            system_id,
            timeline,
            xlogpos,
            wal_segment_size: "1MB".into(),
            server_version: "15.18".into(),
            slot: FakeSlot::Physical {
                restart_lsn: Some(xlogpos),
                restart_tli: timeline,
            },
            histories: HashMap::new(),
            script: Vec::new(),
            auth: FakeAuth::Trust,
            after_auth: AfterAuth::Normal,
            replies: HashMap::new(),
            ssl_answer: b"N".to_vec(),
        }
    }

    /// Sets the answer to an SSLRequest (see [`FakeSession::ssl_answer`]).
    pub fn ssl_answer(mut self, bytes: &[u8]) -> FakeSession {
        self.ssl_answer = bytes.to_vec();
        self
    }

    /// Sets how the client is authenticated.
    pub fn auth(mut self, auth: FakeAuth) -> FakeSession {
        self.auth = auth;
        self
    }

    /// Sets what follows AuthenticationOk.
    pub fn after_auth(mut self, after: AfterAuth) -> FakeSession {
        self.after_auth = after;
        self
    }

    /// Replaces the answer to the commands starting with `command` (upper case).
    pub fn reply(mut self, command: &str, reply: Reply) -> FakeSession {
        self.replies.insert(command.to_owned(), reply);
        self
    }

    /// Appends a step to the script.
    pub fn step(mut self, step: Step) -> FakeSession {
        self.script.push(step);
        self
    }

    /// Appends steps to the script.
    pub fn steps(mut self, steps: impl IntoIterator<Item = Step>) -> FakeSession {
        self.script.extend(steps);
        self
    }

    /// Sets the `SHOW wal_segment_size` answer.
    pub fn segment_size(mut self, text: &str) -> FakeSession {
        self.wal_segment_size = text.into();
        self
    }

    /// Sets the `READ_REPLICATION_SLOT` answer.
    pub fn slot(mut self, slot: FakeSlot) -> FakeSession {
        self.slot = slot;
        self
    }

    /// Adds a history file for `TIMELINE_HISTORY tli`.
    pub fn history(mut self, tli: u32, content: &str) -> FakeSession {
        self.histories.insert(tli, content.as_bytes().to_vec());
        self
    }
}

/// A standby status update (`r`) the fake received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusUpdate {
    /// Which connection (0 for the first accepted).
    pub conn: usize,
    /// The write position.
    pub write: u64,
    /// The flush position (0: not reported).
    pub flush: u64,
    /// The apply position.
    pub apply: u64,
    /// Whether the client asked for a reply.
    pub reply_requested: bool,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Default)]
struct Record {
    connections: usize,
    queries: Vec<(usize, String)>,
    statuses: Vec<StatusUpdate>,
    /// (connection, step index, when the step had been played).
    steps: Vec<(usize, usize, Instant)>,
    problems: Vec<String>,
    /// PasswordMessage / SASL response bodies: (connection, bytes).
    passwords: Vec<(usize, Vec<u8>)>,
}

struct Shared {
    record: Mutex<Record>,
    stop: AtomicBool,
    sockets: Mutex<Vec<TcpStream>>,
}

impl Shared {
    fn problem(&self, conn: usize, what: String) {
        self.record
            .lock()
            .unwrap()
            .problems
            .push(format!("connection {conn}: {what}"));
    }
}

/// The fake server; stops and closes its connections when dropped.
pub struct FakeServer {
    port: u16,
    shared: Arc<Shared>,
}

impl FakeServer {
    /// Starts listening; connection `i` plays `sessions[i]` (the last one for every later connection).
    pub fn start(sessions: Vec<FakeSession>) -> FakeServer {
        assert!(!sessions.is_empty(), "a fake server needs a session");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake server");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared {
            record: Mutex::default(),
            stop: AtomicBool::new(false),
            sockets: Mutex::default(),
        });
        let sh = shared.clone();
        thread::spawn(move || {
            while !sh.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream.set_nodelay(true).unwrap();
                        let conn = {
                            let mut r = sh.record.lock().unwrap();
                            r.connections += 1;
                            r.connections - 1
                        };
                        sh.sockets.lock().unwrap().push(stream.try_clone().unwrap());
                        let session = sessions[conn.min(sessions.len() - 1)].clone();
                        let sh2 = sh.clone();
                        thread::spawn(move || Conn::serve(stream, conn, session, sh2));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10))
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeServer { port, shared }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string for it.
    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=walsink_fake", self.port)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.record.lock().unwrap().connections
    }

    /// Every standby status update received so far, in arrival order.
    pub fn statuses(&self) -> Vec<StatusUpdate> {
        self.shared.record.lock().unwrap().statuses.clone()
    }

    /// Every query received so far: (connection, text).
    pub fn queries(&self) -> Vec<(usize, String)> {
        self.shared.record.lock().unwrap().queries.clone()
    }

    /// When step `index` of connection `conn`'s script had been played, if it was.
    pub fn step_played_at(&self, conn: usize, index: usize) -> Option<Instant> {
        self.shared
            .record
            .lock()
            .unwrap()
            .steps
            .iter()
            .find(|&&(c, i, _)| c == conn && i == index)
            .map(|&(_, _, at)| at)
    }

    /// Every PasswordMessage (or SASL response) body received: (connection, bytes).
    pub fn passwords(&self) -> Vec<(usize, Vec<u8>)> {
        self.shared.record.lock().unwrap().passwords.clone()
    }

    /// What the fake did not expect from the client, or could not do (a wait that timed out).
    pub fn problems(&self) -> Vec<String> {
        self.shared.record.lock().unwrap().problems.clone()
    }

    /// Asserts that no status update reported a write or flush position past `lsn`, nor a flush past
    /// its write, nor an apply position. Returns the highest flush reported.
    pub fn assert_reports_within(&self, lsn: u64) -> u64 {
        let statuses = self.statuses();
        for s in &statuses {
            assert!(
                s.write <= lsn && s.flush <= lsn,
                "status update {s:?} reports write {} / flush {} past the last good byte {}; all: {statuses:#?}",
                format_lsn(s.write),
                format_lsn(s.flush),
                format_lsn(lsn)
            );
            assert!(
                s.flush <= s.write,
                "status update {s:?} reports a flush past its write"
            );
            assert_eq!(s.apply, 0, "status update {s:?} reports an apply position");
        }
        statuses.iter().map(|s| s.flush).max().unwrap_or(0)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for s in self.shared.sockets.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

// ---- frames (server to client) ---------------------------------------------------------------------

/// A backend message: type byte, Int32 length (itself included), body.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + body.len());
    v.push(tag);
    v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Microseconds since 2000-01-01 UTC, the protocol's clock.
fn pg_now() -> i64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    unix - 946_684_800 * 1_000_000
}

/// The CopyData payload of XLogData: `w`, dataStart, walEnd, sendTime, the bytes.
pub fn xlogdata_payload(start: u64, wal_end: u64, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(25 + data.len());
    p.push(b'w');
    p.extend_from_slice(&start.to_be_bytes());
    p.extend_from_slice(&wal_end.to_be_bytes());
    p.extend_from_slice(&pg_now().to_be_bytes());
    p.extend_from_slice(data);
    p
}

/// The CopyData payload of a primary keepalive: `k`, walEnd, sendTime, replyRequested.
pub fn keepalive_payload(wal_end: u64, reply_requested: bool) -> Vec<u8> {
    let mut p = Vec::with_capacity(18);
    p.push(b'k');
    p.extend_from_slice(&wal_end.to_be_bytes());
    p.extend_from_slice(&pg_now().to_be_bytes());
    p.push(u8::from(reply_requested));
    p
}

/// Appends `s` and a NUL.
pub fn cstr(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(s.as_bytes());
    v.push(0);
}

fn ready_for_query() -> Vec<u8> {
    frame(b'Z', b"I")
}

/// CommandComplete with `tag`.
pub fn command_complete(tag: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, tag);
    frame(b'C', &b)
}

/// An ErrorResponse (`E`) with severity ERROR, this SQLSTATE and message.
pub fn error_response(code: &str, message: &str) -> Vec<u8> {
    server_message(b'E', "ERROR", code, message)
}

/// A NoticeResponse (`N`) with severity NOTICE, this SQLSTATE and message.
pub fn notice_response(code: &str, message: &str) -> Vec<u8> {
    server_message(b'N', "NOTICE", code, message)
}

fn server_message(tag: u8, severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        b.push(field);
        cstr(&mut b, value);
    }
    b.push(0);
    frame(tag, &b)
}

/// ParameterStatus `name` = `value`.
pub fn parameter_status(name: &str, value: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, value);
    frame(b'S', &b)
}

/// Type OID of `text`, for RowDescription.
pub const TEXT_OID: u32 = 25;
/// Type OID of `int8`, for RowDescription.
pub const INT8_OID: u32 = 20;

/// RowDescription, one DataRow (text format, `None` = NULL), CommandComplete `tag`: a replication
/// command's result set, without the ReadyForQuery.
pub fn result_set(cols: &[(&str, u32)], row: &[Option<&[u8]>], tag: &str) -> Vec<u8> {
    let mut desc = Vec::new();
    desc.extend_from_slice(&(cols.len() as u16).to_be_bytes());
    for (name, oid) in cols {
        cstr(&mut desc, name);
        desc.extend_from_slice(&0u32.to_be_bytes()); // table oid
        desc.extend_from_slice(&0u16.to_be_bytes()); // column number
        desc.extend_from_slice(&oid.to_be_bytes());
        let len: i16 = if *oid == INT8_OID { 8 } else { -1 };
        desc.extend_from_slice(&len.to_be_bytes());
        desc.extend_from_slice(&(-1i32).to_be_bytes()); // type modifier
        desc.extend_from_slice(&0u16.to_be_bytes()); // text format
    }
    let mut data = Vec::new();
    data.extend_from_slice(&(row.len() as u16).to_be_bytes());
    for v in row {
        match v {
            Some(b) => {
                data.extend_from_slice(&(b.len() as u32).to_be_bytes());
                data.extend_from_slice(b);
            }
            None => data.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    let mut out = frame(b'T', &desc);
    out.extend(frame(b'D', &data));
    out.extend(command_complete(tag));
    out
}

// ---- messages (client to server) -------------------------------------------------------------------

#[derive(Debug)]
enum FromClient {
    /// SSLRequest or GSSENCRequest: answer `N`.
    EncryptionRequest,
    /// The StartupMessage's parameters.
    Startup(Vec<(String, String)>),
    Query(String),
    /// PasswordMessage, SASLInitialResponse or SASLResponse (`p`); recorded by the reader.
    Password,
    /// CopyData other than a status update (status updates are recorded by the reader).
    CopyData(Vec<u8>),
    CopyDone,
    Terminate,
    Other(u8),
    /// EOF or a read error.
    Closed,
}

fn read_exact(s: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).ok().map(|_| buf)
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

/// Reads the client's messages, records status updates as they arrive and forwards the rest.
fn read_client(mut s: TcpStream, conn: usize, tx: Sender<FromClient>, shared: Arc<Shared>) {
    // Untagged startup packets until the StartupMessage.
    loop {
        let Some(len) = read_exact(&mut s, 4) else {
            let _ = tx.send(FromClient::Closed);
            return;
        };
        let len = u32::from_be_bytes(len.try_into().unwrap()) as usize;
        if !(8..=10_000).contains(&len) {
            shared.problem(conn, format!("startup packet of length {len}"));
            let _ = tx.send(FromClient::Closed);
            return;
        }
        let Some(body) = read_exact(&mut s, len - 4) else {
            let _ = tx.send(FromClient::Closed);
            return;
        };
        let code = u32::from_be_bytes(body[..4].try_into().unwrap());
        match code {
            80_877_103 | 80_877_104 => {
                let _ = tx.send(FromClient::EncryptionRequest);
            }
            0x0003_0000 => {
                let parts: Vec<String> = body[4..]
                    .split(|&b| b == 0)
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect();
                let params = parts
                    .chunks(2)
                    .filter(|c| c.len() == 2 && !c[0].is_empty())
                    .map(|c| (c[0].clone(), c[1].clone()))
                    .collect();
                let _ = tx.send(FromClient::Startup(params));
                break;
            }
            other => {
                shared.problem(conn, format!("startup packet with code {other}"));
                let _ = tx.send(FromClient::Closed);
                return;
            }
        }
    }
    loop {
        let Some(head) = read_exact(&mut s, 5) else {
            let _ = tx.send(FromClient::Closed);
            return;
        };
        let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
        if !(4..=1 << 20).contains(&len) {
            shared.problem(conn, format!("message of length {len}"));
            let _ = tx.send(FromClient::Closed);
            return;
        }
        let Some(body) = read_exact(&mut s, len - 4) else {
            let _ = tx.send(FromClient::Closed);
            return;
        };
        let msg = match head[0] {
            b'Q' => FromClient::Query(
                String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned(),
            ),
            b'd' if body.first() == Some(&b'r') => {
                if body.len() != 34 {
                    shared.problem(conn, format!("status update of {} bytes", body.len()));
                    continue;
                }
                let status = StatusUpdate {
                    conn,
                    write: be64(&body[1..]),
                    flush: be64(&body[9..]),
                    apply: be64(&body[17..]),
                    reply_requested: body[33] != 0,
                    at: Instant::now(),
                };
                shared.record.lock().unwrap().statuses.push(status);
                continue;
            }
            b'p' => {
                shared.record.lock().unwrap().passwords.push((conn, body));
                FromClient::Password
            }
            b'd' => FromClient::CopyData(body),
            b'c' => FromClient::CopyDone,
            b'X' => FromClient::Terminate,
            other => FromClient::Other(other),
        };
        let end = matches!(msg, FromClient::Terminate);
        if tx.send(msg).is_err() || end {
            return;
        }
    }
}

/// How a stretch of copy mode ended.
enum CopyEnd {
    /// Back in command mode.
    Commands,
    /// The connection is over.
    Gone,
}

/// One connection being served.
struct Conn {
    out: TcpStream,
    rx: Receiver<FromClient>,
    conn: usize,
    session: FakeSession,
    shared: Arc<Shared>,
    /// The next script step to play.
    next_step: usize,
}

impl Conn {
    fn serve(stream: TcpStream, conn: usize, session: FakeSession, shared: Arc<Shared>) {
        let (tx, rx) = mpsc::channel();
        let reader = stream.try_clone().unwrap();
        let sh = shared.clone();
        thread::spawn(move || read_client(reader, conn, tx, sh));
        let mut c = Conn {
            out: stream,
            rx,
            conn,
            session,
            shared,
            next_step: 0,
        };
        c.run();
        let _ = c.out.shutdown(Shutdown::Both);
    }

    fn send(&mut self, bytes: &[u8]) -> bool {
        self.out.write_all(bytes).is_ok()
    }

    fn problem(&self, what: String) {
        self.shared.problem(self.conn, what);
    }

    fn recv(&self, timeout: Duration) -> FromClient {
        match self.rx.recv_timeout(timeout) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => {
                self.problem(format!("the client sent nothing for {timeout:?}"));
                FromClient::Closed
            }
            Err(RecvTimeoutError::Disconnected) => FromClient::Closed,
        }
    }

    fn run(&mut self) {
        // Startup.
        loop {
            match self.recv(CLIENT_WAIT) {
                FromClient::EncryptionRequest => {
                    let answer = self.session.ssl_answer.clone();
                    if !self.send(&answer) {
                        return;
                    }
                }
                FromClient::Startup(params) => {
                    if !params
                        .iter()
                        .any(|(k, v)| k == "replication" && v == "true")
                    {
                        self.problem(format!("startup without replication=true: {params:?}"));
                    }
                    break;
                }
                FromClient::Closed => return,
                other => {
                    self.problem(format!("{other:?} before the startup packet"));
                    return;
                }
            }
        }
        let challenge = match &self.session.auth {
            FakeAuth::Trust => None,
            FakeAuth::Cleartext => Some(frame(b'R', &3u32.to_be_bytes())),
            FakeAuth::Md5 => {
                let mut b = 5u32.to_be_bytes().to_vec();
                b.extend_from_slice(b"salt");
                Some(frame(b'R', &b))
            }
            FakeAuth::Sasl(mechs) => {
                let mut b = 10u32.to_be_bytes().to_vec();
                for m in mechs {
                    cstr(&mut b, m);
                }
                b.push(0);
                Some(frame(b'R', &b))
            }
        };
        if let Some(challenge) = challenge {
            if !self.send(&challenge) {
                return;
            }
            match self.recv(CLIENT_WAIT) {
                FromClient::Password if !matches!(self.session.auth, FakeAuth::Sasl(_)) => {}
                FromClient::Password => {
                    let _ = self.send(&error_response("28P01", "SASL is not implemented here"));
                    return;
                }
                _ => return,
            }
        }
        let mut hello = frame(b'R', &0u32.to_be_bytes());
        match self.session.after_auth.clone() {
            AfterAuth::Normal => {}
            AfterAuth::Silent => {
                if self.send(&hello) {
                    self.wait_for_close();
                }
                return;
            }
            AfterAuth::Flood(bytes) => {
                if self.send(&hello) {
                    self.flood(&bytes);
                }
                return;
            }
        }
        hello.extend(parameter_status(
            "server_version",
            &self.session.server_version,
        ));
        for (k, v) in [
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("integer_datetimes", "on"),
        ] {
            hello.extend(parameter_status(k, v));
        }
        let mut key = 4242u32.to_be_bytes().to_vec();
        key.extend_from_slice(&0x005E_C2E7u32.to_be_bytes());
        hello.extend(frame(b'K', &key));
        hello.extend(ready_for_query());
        if !self.send(&hello) {
            return;
        }
        // Commands.
        loop {
            match self.recv(CLIENT_WAIT) {
                FromClient::Query(q) => {
                    self.shared
                        .record
                        .lock()
                        .unwrap()
                        .queries
                        .push((self.conn, q.clone()));
                    let ok = match self.command(&q) {
                        Some(reply) => self.send(&reply),
                        None => match self.copy_mode() {
                            CopyEnd::Commands => true,
                            CopyEnd::Gone => return,
                        },
                    };
                    if !ok {
                        return;
                    }
                }
                FromClient::Terminate | FromClient::Closed => return,
                other => self.problem(format!("{other:?} in command mode")),
            }
        }
    }

    /// Sends `bytes` again and again until the client is gone.
    fn flood(&mut self, bytes: &[u8]) {
        // Whole frames in batches of about 64 KiB.
        let mut batch = Vec::new();
        while batch.len() < 64 << 10 {
            batch.extend_from_slice(bytes);
        }
        loop {
            if self.shared.stop.load(Ordering::Relaxed) || !self.send(&batch) {
                return;
            }
        }
    }

    /// Waits, sending nothing, until the client closes the connection.
    fn wait_for_close(&mut self) {
        loop {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(FromClient::Terminate | FromClient::Closed)
                | Err(RecvTimeoutError::Disconnected) => return,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    if self.shared.stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
            }
        }
    }

    /// The reply to a command, or `None` for START_REPLICATION (copy mode follows).
    fn command(&mut self, q: &str) -> Option<Vec<u8>> {
        let words: Vec<&str> = q.split_whitespace().collect();
        let first = words
            .first()
            .map(|w| w.to_ascii_uppercase())
            .unwrap_or_default();
        match self.session.replies.get(&first).cloned() {
            None => {}
            Some(Reply::Raw(mut bytes)) => {
                bytes.extend(ready_for_query());
                return Some(bytes);
            }
            Some(Reply::Endless { head, repeat }) => {
                if self.send(&head) {
                    self.flood(&repeat);
                }
                return Some(Vec::new());
            }
            Some(Reply::Silent) => {
                self.wait_for_close();
                return Some(Vec::new());
            }
        }
        let s = &self.session;
        let mut out = match first.as_str() {
            "IDENTIFY_SYSTEM" => result_set(
                &[
                    ("systemid", TEXT_OID),
                    ("timeline", INT8_OID),
                    ("xlogpos", TEXT_OID),
                    ("dbname", TEXT_OID),
                ],
                &[
                    Some(s.system_id.to_string().as_bytes()),
                    Some(s.timeline.to_string().as_bytes()),
                    Some(format_lsn(s.xlogpos).as_bytes()),
                    None,
                ],
                "IDENTIFY_SYSTEM",
            ),
            "SHOW"
                if words
                    .get(1)
                    .is_some_and(|w| w.eq_ignore_ascii_case("wal_segment_size")) =>
            {
                result_set(
                    &[("wal_segment_size", TEXT_OID)],
                    &[Some(s.wal_segment_size.as_bytes())],
                    "SHOW",
                )
            }
            "READ_REPLICATION_SLOT" => {
                let cols = [
                    ("slot_type", TEXT_OID),
                    ("restart_lsn", TEXT_OID),
                    ("restart_tli", INT8_OID),
                ];
                match s.slot {
                    FakeSlot::Missing => {
                        result_set(&cols, &[None, None, None], "READ_REPLICATION_SLOT")
                    }
                    FakeSlot::Physical {
                        restart_lsn,
                        restart_tli,
                    } => {
                        let lsn = restart_lsn.map(format_lsn);
                        let tli = restart_tli.to_string();
                        result_set(
                            &cols,
                            &[
                                Some(b"physical"),
                                lsn.as_deref().map(str::as_bytes),
                                lsn.as_ref().map(|_| tli.as_bytes()),
                            ],
                            "READ_REPLICATION_SLOT",
                        )
                    }
                }
            }
            "TIMELINE_HISTORY" => {
                let tli: u32 = words.get(1).and_then(|t| t.parse().ok()).unwrap_or(0);
                let name = format!("{tli:08X}.history");
                match s.histories.get(&tli) {
                    Some(content) => result_set(
                        &[("filename", TEXT_OID), ("content", TEXT_OID)],
                        &[Some(name.as_bytes()), Some(content)],
                        "TIMELINE_HISTORY",
                    ),
                    None => error_response(
                        "58P01",
                        &format!(
                            "could not open file \"pg_wal/{name}\": No such file or directory"
                        ),
                    ),
                }
            }
            "START_REPLICATION" => return None,
            _ => {
                self.problem(format!("unexpected command {q:?}"));
                error_response(
                    "42601",
                    &format!("syntax error in replication command {q:?}"),
                )
            }
        };
        out.extend(ready_for_query());
        Some(out)
    }

    /// CopyBothResponse, then the script from where it stands.
    fn copy_mode(&mut self) -> CopyEnd {
        // CopyBothResponse: overall format 0, 0 columns.
        if !self.send(&frame(b'W', &[0, 0, 0])) {
            return CopyEnd::Gone;
        }
        while self.next_step < self.session.script.len() {
            // The client may have ended the copy or the connection meanwhile.
            match self.rx.try_recv() {
                Ok(FromClient::CopyDone) => return self.client_copy_done(),
                Ok(FromClient::Terminate | FromClient::Closed)
                | Err(TryRecvError::Disconnected) => {
                    return CopyEnd::Gone;
                }
                Ok(other) => self.problem(format!("{other:?} during streaming")),
                Err(TryRecvError::Empty) => {}
            }
            let index = self.next_step;
            self.next_step += 1;
            let step = self.session.script[index].clone();
            let end = self.play(step);
            self.shared
                .record
                .lock()
                .unwrap()
                .steps
                .push((self.conn, index, Instant::now()));
            match end {
                None => {}
                Some(e) => return e,
            }
        }
        // Script played out: stay in copy mode until the client ends it.
        loop {
            match self.recv(CLIENT_WAIT) {
                FromClient::CopyDone => return self.client_copy_done(),
                FromClient::Terminate | FromClient::Closed => return CopyEnd::Gone,
                other => self.problem(format!("{other:?} during streaming")),
            }
        }
    }

    /// The client ended the copy: CopyDone back, CommandComplete, ReadyForQuery (as a walsender does).
    fn client_copy_done(&mut self) -> CopyEnd {
        let mut out = frame(b'c', &[]);
        out.extend(command_complete("START_STREAMING"));
        out.extend(command_complete("START_REPLICATION"));
        out.extend(ready_for_query());
        if self.send(&out) {
            CopyEnd::Commands
        } else {
            CopyEnd::Gone
        }
    }

    /// Plays one step; `Some` when copy mode is over.
    fn play(&mut self, step: Step) -> Option<CopyEnd> {
        let gone = |ok: bool| if ok { None } else { Some(CopyEnd::Gone) };
        match step {
            Step::XLogData { start, data } => {
                let data = with_system_id(start, data, self.session.system_id);
                let p = xlogdata_payload(start, start + data.len() as u64, &data);
                gone(self.send(&frame(b'd', &p)))
            }
            Step::CopyData(p) => gone(self.send(&frame(b'd', &p))),
            Step::Raw(bytes) => gone(self.send(&bytes)),
            Step::Keepalive {
                wal_end,
                reply_requested,
            } => gone(self.send(&frame(b'd', &keepalive_payload(wal_end, reply_requested)))),
            Step::EndOfTimeline {
                next_tli,
                next_start,
            } => {
                if !self.send(&frame(b'c', &[])) {
                    return Some(CopyEnd::Gone);
                }
                loop {
                    match self.recv(Duration::from_secs(10)) {
                        FromClient::CopyDone => break,
                        FromClient::Terminate | FromClient::Closed => return Some(CopyEnd::Gone),
                        other => self.problem(format!("{other:?} after our CopyDone")),
                    }
                }
                let mut out = result_set(
                    &[("next_tli", INT8_OID), ("next_tli_startpos", TEXT_OID)],
                    &[Some(next_tli.as_bytes()), Some(next_start.as_bytes())],
                    "START_STREAMING",
                );
                out.extend(command_complete("START_REPLICATION"));
                out.extend(ready_for_query());
                Some(if self.send(&out) {
                    CopyEnd::Commands
                } else {
                    CopyEnd::Gone
                })
            }
            Step::Error { code, message } => {
                let mut out = error_response(&code, &message);
                out.extend(ready_for_query());
                Some(if self.send(&out) {
                    CopyEnd::Commands
                } else {
                    CopyEnd::Gone
                })
            }
            Step::WaitForStatus { flush, timeout } => {
                let since = Instant::now();
                let deadline = since + timeout;
                loop {
                    let seen = self.shared.record.lock().unwrap().statuses.iter().any(|s| {
                        s.conn == self.conn && s.flush >= flush && (flush > 0 || s.at >= since)
                    });
                    if seen {
                        return None;
                    }
                    if Instant::now() >= deadline {
                        self.problem(format!(
                            "no status update with flush >= {} within {timeout:?}",
                            format_lsn(flush)
                        ));
                        return None;
                    }
                    thread::sleep(Duration::from_millis(5));
                }
            }
            Step::Sleep(d) => {
                thread::sleep(d);
                None
            }
            Step::Close => {
                let _ = self.out.shutdown(Shutdown::Both);
                Some(CopyEnd::Gone)
            }
        }
    }
}
