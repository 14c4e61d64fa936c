//! A replication connection: the tokio driver around the sans-IO protocol crate.
//!
//! [`Connection`] owns the socket and its read and write buffers. It opens TCP or
//! Unix-socket connections to each target in turn, runs the startup exchange, runs
//! simple queries, and gives the streaming loop raw access to the message stream.
//! The stream is boxed behind [`AsyncStream`]: a TCP or Unix socket, or TLS over TCP
//! (negotiated as `sslmode` and `sslnegotiation` ask, see
//! [`walsink_protocol::tls::TlsPolicy`]; the rustls setup is in `tls.rs`).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tracing::{debug, info, warn};
use walsink_protocol::conninfo::{ConnConfig, Host, Target, TargetSessionAttrs};
use walsink_protocol::copy::{encode_query, encode_terminate};
use walsink_protocol::frame::{self, BackendMessage};
use walsink_protocol::notice::{NoticeLimiter, NoticeVerdict};
use walsink_protocol::query::{QueryCollector, ResultSet, parse_show};
use walsink_protocol::startup::{AuthPolicy, ServerParams, Startup, StartupOutcome, StartupParams};
use walsink_protocol::tls::{
    ALPN_POSTGRESQL, SslResponse, Start, TlsError, TlsPolicy, encode_ssl_request,
    tls_server_end_point,
};
use walsink_protocol::{ProtocolError, ServerError};

use crate::error::{AuthStage, ConnectFailure, Context, ErrorKind, ReceiverError, TargetFailure};
use crate::tls;

/// A byte stream a connection can run over: TCP, a Unix socket, or TLS.
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}

/// Bytes to ask the kernel for per read: one walsender message is at most 128 KiB.
const READ_CHUNK: usize = 256 * 1024;

/// Size of each read buffer. Frames are split off it without copying and handed to
/// the writer; the buffer is freed when the last of them has been written. Several
/// messages share one allocation, which the allocator then reuses.
const READ_BUFFER: usize = 1024 * 1024;

/// Read buffers kept for reuse: the writer's queue holds at most 64 messages of
/// 128 KiB, about 8 of them.
const SPARE_BUFFERS: usize = 12;

/// The deadline over connecting, authenticating and the commands before streaming when
/// `connect_timeout` is not set. libpq waits for ever; a daemon must not hang on a
/// server that stopped answering.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed read over TLS: a TLS error (an alert from the server, e.g. refusing the
/// client certificate after a TLS 1.3 handshake) needs a human; anything else is a lost
/// connection.
fn tls_read_error(e: std::io::Error) -> ReceiverError {
    let is_tls = e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>());
    if is_tls {
        tls::handshake_error(e, None)
    } else {
        ReceiverError::network("could not receive data from server", e)
    }
}

/// Length of a backend frame header: type byte and 4-byte length.
const FRAME_HEADER: usize = 5;

/// Total length (header included) of the frame at the start of `buf`, once its header
/// is there.
fn head_frame_len(buf: &[u8]) -> Option<usize> {
    let len: [u8; 4] = buf.get(1..FRAME_HEADER)?.try_into().ok()?;
    Some(1 + u32::from_be_bytes(len) as usize)
}

/// An authenticated replication connection.
///
/// While it is in command mode (from connecting until the server enters copy mode, and
/// again from the end of a copy until the next) every read and write is bounded by one
/// deadline: `connect_timeout` (default [`DEFAULT_CONNECT_TIMEOUT`]) from the start of
/// the attempt, or from the end of the copy. The streaming driver says when copy mode
/// begins and ends ([`Connection::end_command_phase`],
/// [`Connection::begin_command_phase`]); in copy mode the session's receive timeout
/// applies instead.
pub struct Connection {
    stream: Box<dyn AsyncStream>,
    /// When the current command phase must be over; `None` in copy mode.
    deadline: Option<Instant>,
    /// The length of a command phase.
    phase: Duration,
    /// Notices logged per second.
    notices: NoticeLimiter,
    rbuf: BytesMut,
    /// Earlier read buffers, empty, whose frames may still be in the writer's queue:
    /// each is reused once they are all gone.
    spare: VecDeque<BytesMut>,
    /// Whether a new read buffer was taken since the last [`Connection::idle_tick`].
    buffers_used: bool,
    wbuf: BytesMut,
    /// What the server reported at startup.
    pub server: ServerParams,
    /// Which target this connection reached.
    pub target: Target,
    /// How the connection is encrypted (protocol, cipher, what was checked); `None`:
    /// not at all.
    pub tls: Option<String>,
}

/// Opens a replication connection, trying each target in order as libpq does, and
/// keeping the first that qualifies for `target_session_attrs` (libpq's rules: see
/// [`disqualification`]). `prefer-standby` makes two passes: standbys only, then any.
/// `password` overrides the configured one (from a prompt).
///
/// When no target connects and qualifies, the error lists every target and why it
/// failed. A server that connected but does not qualify counts as transient (after a
/// failover another one soon will), like a refused connection.
pub async fn connect(
    cfg: &ConnConfig,
    password: Option<&str>,
) -> Result<Connection, ReceiverError> {
    if let Some(e) = cfg.unsupported() {
        return Err(ReceiverError::fatal(e.to_string()));
    }
    let passes: &[Wanted] = match cfg.target_session_attrs {
        TargetSessionAttrs::Any => &[Wanted::Any],
        TargetSessionAttrs::ReadWrite => &[Wanted::ReadWrite],
        TargetSessionAttrs::ReadOnly => &[Wanted::ReadOnly],
        TargetSessionAttrs::Primary => &[Wanted::Primary],
        TargetSessionAttrs::Standby => &[Wanted::Standby],
        TargetSessionAttrs::PreferStandby => &[Wanted::Standby, Wanted::Any],
    };
    let mut failures: Vec<(String, TargetFailure)> = Vec::new();
    let mut disqualified = false;
    for &wanted in passes {
        // Only the last pass's failures matter: it accepts what the earlier ones did.
        failures.clear();
        disqualified = false;
        for target in &cfg.targets {
            let pw = match password {
                Some(p) => Some(p.to_owned()),
                None => {
                    let lookup = crate::env::password_for(cfg, target);
                    if let Some(w) = lookup.warning {
                        warn!("{w}");
                    }
                    lookup.password
                }
            };
            let phase = command_phase(cfg);
            let deadline = Instant::now() + phase;
            let attempt = async {
                let mut conn = connect_one(cfg, target, pw, deadline).await?;
                let why = disqualification(&mut conn, wanted).await?;
                Ok::<_, ReceiverError>((conn, why))
            };
            let result = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(r) => r,
                Err(_) => Err(timeout_expired(phase)),
            };
            match result {
                Ok((c, None)) => return Ok(c),
                Ok((c, Some(why))) => {
                    debug!(target = %describe(target), "server does not qualify: {why}");
                    c.close().await;
                    disqualified = true;
                    failures.push((describe(target), TargetFailure::Disqualified(why)));
                }
                Err(e) => {
                    debug!(target = %describe(target), error = %e, "connection attempt failed");
                    failures.push((describe(target), TargetFailure::Failed(e)));
                }
            }
        }
    }
    if failures.is_empty() {
        return Err(ReceiverError::fatal("no host to connect to"));
    }
    // The error's kind is that of the first failure that needs a human, if any.
    let hint = disqualified.then(|| {
        format!(
            "no server qualifies for target_session_attrs={}; without -n walsink keeps trying until one does (after a promotion, for example)",
            cfg.target_session_attrs.as_str()
        )
    });
    Err(ReceiverError::Connect(Box::new(ConnectFailure {
        targets: failures,
        hint,
    })))
}

/// How long connecting, authenticating and the commands before streaming may take.
fn command_phase(cfg: &ConnConfig) -> Duration {
    cfg.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT)
}

fn timeout_expired(phase: Duration) -> ReceiverError {
    ReceiverError::transient(format!(
        "timeout expired: connecting, authenticating and the commands before streaming took longer than {} s; the server stopped answering (connect_timeout in the connection string or PGCONNECT_TIMEOUT sets this limit, {} s when unset)",
        phase.as_secs(),
        DEFAULT_CONNECT_TIMEOUT.as_secs()
    ))
}

/// What one pass over the targets accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wanted {
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
}

/// Why the server of `conn` is not what `wanted` asks for, in libpq's words, or `None`
/// if it qualifies.
///
/// As libpq: PostgreSQL 14 and later report `in_hot_standby` and
/// `default_transaction_read_only` at startup, so no query is needed. Read-write means
/// neither is on. For older servers, where the replication protocol allows no
/// `pg_is_in_recovery()`, `SHOW transaction_read_only` decides (for `primary` and
/// `standby` too: a primary whose `default_transaction_read_only` is on then counts
/// as a standby).
async fn disqualification(
    conn: &mut Connection,
    wanted: Wanted,
) -> Result<Option<&'static str>, ReceiverError> {
    let param = |c: &Connection, name: &str| c.server.params.get(name).map(|v| v == "on");
    Ok(match wanted {
        Wanted::Any => None,
        Wanted::ReadWrite | Wanted::ReadOnly => {
            let read_only = match (
                param(conn, "default_transaction_read_only"),
                param(conn, "in_hot_standby"),
            ) {
                (Some(d), Some(h)) => d || h,
                _ => show_on(conn, "transaction_read_only").await?,
            };
            match (wanted, read_only) {
                (Wanted::ReadWrite, true) => Some("session is read-only"),
                (Wanted::ReadOnly, false) => Some("session is not read-only"),
                _ => None,
            }
        }
        Wanted::Primary | Wanted::Standby => {
            let hot_standby = match conn.in_hot_standby() {
                Some(h) => h,
                None => show_on(conn, "transaction_read_only").await?,
            };
            match (wanted, hot_standby) {
                (Wanted::Primary, true) => Some("server is in hot standby mode"),
                (Wanted::Standby, false) => Some("server is not in hot standby mode"),
                _ => None,
            }
        }
    })
}

/// Whether the boolean setting `name` is on (`SHOW` works on replication connections).
async fn show_on(conn: &mut Connection, name: &str) -> Result<bool, ReceiverError> {
    let rs = conn.query(&format!("SHOW {name}")).await?;
    Ok(parse_show(&rs)? == "on")
}

/// How a target is named in messages, like libpq does.
pub fn describe(t: &Target) -> String {
    match &t.host {
        Host::Unix(dir) => format!("on socket \"{}/.s.PGSQL.{}\"", dir.display(), t.port),
        Host::Tcp(h) => match t.hostaddr {
            Some(a) => format!("at \"{h}\" ({a}), port {}", t.port),
            None => format!("at \"{h}\", port {}", t.port),
        },
    }
}

async fn open_socket(
    cfg: &ConnConfig,
    target: &Target,
) -> Result<Box<dyn AsyncStream>, ReceiverError> {
    let io = |e: std::io::Error| ReceiverError::Network {
        message: e.to_string(),
        source: Some(e),
    };
    match &target.host {
        Host::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{}", target.port));
            let s = UnixStream::connect(&path).await.map_err(io)?;
            if let Some(user) = &cfg.requirepeer {
                check_peer(&s, user)?;
            }
            Ok(Box::new(s))
        }
        Host::Tcp(name) => {
            let s = match target.hostaddr {
                Some(addr) => TcpStream::connect((addr, target.port)).await.map_err(io)?,
                None => TcpStream::connect((name.as_str(), target.port))
                    .await
                    .map_err(io)?,
            };
            s.set_nodelay(true).map_err(io)?;
            configure_keepalive(&s, cfg);
            Ok(Box::new(s))
        }
    }
}

/// `requirepeer`: the server at the other end of a Unix socket must run as `required`
/// (libpq's check, with its wording). Anything else is refused before a byte is sent.
fn check_peer(s: &UnixStream, required: &str) -> Result<(), ReceiverError> {
    let refuse = |m: String| ReceiverError::new(ErrorKind::AuthFailed, m);
    let cred = s
        .peer_cred()
        .map_err(|e| refuse(format!("could not get peer credentials: {e}")))?;
    let uid = cred.uid();
    match crate::env::user_name(uid) {
        Ok(Some(name)) if name == required => Ok(()),
        Ok(Some(name)) => Err(refuse(format!(
            "requirepeer specifies \"{}\", but actual peer user name is \"{}\"; the socket belongs to another server than the one required (fix requirepeer if that server is the right one)",
            walsink_protocol::Escaped(required),
            name
        ))),
        Ok(None) => Err(refuse(format!("local user with ID {uid} does not exist"))),
        Err(e) => Err(refuse(format!(
            "could not look up local user ID {uid}: {e}"
        ))),
    }
}

fn configure_keepalive(s: &TcpStream, cfg: &ConnConfig) {
    if !cfg.keepalives {
        return;
    }
    let sock = socket2::SockRef::from(s);
    // libpq leaves the timing to the kernel (2 hours of idle on Linux); a daemon that must
    // notice a vanished server wants minutes at most. Explicit options win.
    let ka = socket2::TcpKeepalive::new()
        .with_time(cfg.keepalives_idle.unwrap_or(Duration::from_secs(60)))
        .with_interval(cfg.keepalives_interval.unwrap_or(Duration::from_secs(10)))
        .with_retries(cfg.keepalives_count.unwrap_or(6));
    if let Err(e) = sock.set_tcp_keepalive(&ka) {
        debug!("could not set TCP keepalive: {e}");
    }
    if let Some(t) = cfg.tcp_user_timeout
        && let Err(e) = sock.set_tcp_user_timeout(Some(t))
    {
        debug!("could not set TCP_USER_TIMEOUT: {e}");
    }
}

/// One server: the first attempt `sslmode` asks for, and with `allow` a second one
/// over TLS when the server refused the plaintext one during startup.
async fn connect_one(
    cfg: &ConnConfig,
    target: &Target,
    password: Option<String>,
    deadline: Instant,
) -> Result<Connection, ReceiverError> {
    let policy = TlsPolicy::of(cfg);
    let unix = target.socket_path().is_some();
    if unix && policy.required() {
        debug!(
            "sslmode={} does not apply to Unix sockets: connecting without TLS, as libpq",
            cfg.sslmode.as_str()
        );
    }
    match connect_attempt(cfg, target, password.clone(), deadline, policy.first(unix)).await {
        Err(e @ ReceiverError::Server { .. }) => match policy.retry_after_plain_refusal(unix) {
            Some(start) => {
                debug!(
                    "server refused the connection without TLS ({e}); trying again with TLS (sslmode=allow)"
                );
                connect_attempt(cfg, target, password, deadline, start).await
            }
            None => Err(e),
        },
        other => other,
    }
}

/// What the TLS layer of an attempt gives the startup exchange.
struct Encrypted {
    /// The channel-binding data of the server's certificate.
    end_point: Result<Vec<u8>, TlsError>,
    /// For the log.
    summary: String,
}

/// Starts TLS on `stream` (after the server's `S`, or at once for direct negotiation).
async fn start_tls(
    cfg: &ConnConfig,
    target: &Target,
    stream: Box<dyn AsyncStream>,
    direct: bool,
) -> Result<(Box<dyn AsyncStream>, Encrypted), ReceiverError> {
    let setup = tls::setup(cfg, target)?;
    let connector = tokio_rustls::TlsConnector::from(setup.config.clone());
    let stream = connector
        .connect(setup.server_name.clone(), stream)
        .await
        .map_err(|e| {
            let e = tls::handshake_error(e, Some(&setup));
            if direct && e.is_transient() {
                ReceiverError::new(
                    ErrorKind::Transient,
                    format!("{e}; with sslnegotiation=direct the server must be PostgreSQL 17 or later (use sslnegotiation=postgres for older ones)"),
                )
            } else {
                e
            }
        })?;
    let (_, session) = stream.get_ref();
    if direct && session.alpn_protocol() != Some(ALPN_POSTGRESQL) {
        return Err(ReceiverError::new(
            ErrorKind::Tls,
            "direct SSL connection was established without ALPN protocol negotiation extension; the server is older than PostgreSQL 17 or not PostgreSQL: use sslnegotiation=postgres",
        ));
    }
    if cfg.sslcertmode == walsink_protocol::conninfo::SslCertMode::Require {
        let requested = setup
            .cert_requested
            .load(std::sync::atomic::Ordering::SeqCst);
        if !requested {
            return Err(ReceiverError::new(
                ErrorKind::Tls,
                "server did not request an SSL certificate (sslcertmode=require); ssl_ca_file must be set on the server for it to ask",
            ));
        }
        if !setup.has_client_cert {
            return Err(ReceiverError::new(
                ErrorKind::Tls,
                "server requested an SSL certificate, but walsink has none to send (sslcertmode=require): set sslcert and sslkey",
            ));
        }
    }
    let end_point = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| tls_server_end_point(c.as_ref()))
        .unwrap_or(Err(TlsError::CertificateHash(
            "the server sent no certificate",
        )));
    let summary = tls::describe(session, &setup, &cfg.sslmode);
    Ok((Box::new(stream), Encrypted { end_point, summary }))
}

/// Reads the server's one-byte answer to an SSLRequest, and nothing more (bytes after
/// it would be read before the handshake: CVE-2021-23222). An `E` answer is followed
/// by an ErrorResponse, returned as the server's error.
async fn ssl_response(stream: &mut Box<dyn AsyncStream>) -> Result<SslResponse, ReceiverError> {
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await.map_err(|e| {
        ReceiverError::network(
            "could not receive the server's answer to the SSL request",
            e,
        )
    })?;
    let response = SslResponse::from_byte(byte[0])
        .map_err(|e| ReceiverError::new(ErrorKind::Fatal, e.to_string()))?;
    if response != SslResponse::Error {
        return Ok(response);
    }
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .await
        .map_err(|e| ReceiverError::network("could not receive the server's error", e))?;
    let n = u32::from_be_bytes(len) as usize;
    if !(4..=65536).contains(&n) {
        return Err(ReceiverError::new(
            ErrorKind::Fatal,
            format!(
                "received invalid error message of {n} bytes in response to the SSL request; the server is not PostgreSQL"
            ),
        ));
    }
    let mut frame = BytesMut::with_capacity(1 + n);
    frame.put_u8(b'E');
    frame.put_slice(&len);
    frame.resize(1 + n, 0);
    stream
        .read_exact(&mut frame[5..])
        .await
        .map_err(|e| ReceiverError::network("could not receive the server's error", e))?;
    match frame::decode(&mut frame)? {
        Some(BackendMessage::ErrorResponse(se)) => Err(ReceiverError::from_server(
            &se,
            Context::Startup(AuthStage::NoCredentials),
        )),
        _ => Err(ReceiverError::new(
            ErrorKind::Fatal,
            "received invalid response to SSL negotiation; the server is not PostgreSQL",
        )),
    }
}

async fn connect_attempt(
    cfg: &ConnConfig,
    target: &Target,
    password: Option<String>,
    deadline: Instant,
    start: Start,
) -> Result<Connection, ReceiverError> {
    let mut stream = open_socket(cfg, target).await?;
    let mut encrypted = None;
    match start {
        Start::Plain => {}
        Start::Direct => {
            let (s, e) = start_tls(cfg, target, stream, true).await?;
            stream = s;
            encrypted = Some(e);
        }
        Start::SslRequest => {
            let mut request = BytesMut::with_capacity(8);
            encode_ssl_request(&mut request);
            stream
                .write_all(&request)
                .await
                .map_err(|e| ReceiverError::network("could not send SSL negotiation packet", e))?;
            match ssl_response(&mut stream).await? {
                SslResponse::Accepted => {
                    let (s, e) = start_tls(cfg, target, stream, false).await?;
                    stream = s;
                    encrypted = Some(e);
                }
                _ => {
                    TlsPolicy::of(cfg)
                        .on_refusal()
                        .map_err(|e| ReceiverError::new(ErrorKind::Tls, e.to_string()))?;
                    debug!(
                        "server {} does not support SSL: connecting without encryption (sslmode={}; require or stronger refuses this)",
                        describe(target),
                        cfg.sslmode.as_str()
                    );
                }
            }
        }
    }
    if let Some(e) = &encrypted {
        debug!("{}", e.summary);
    }
    let mut conn = Connection {
        stream,
        deadline: Some(deadline),
        phase: command_phase(cfg),
        notices: NoticeLimiter::default(),
        rbuf: BytesMut::with_capacity(READ_CHUNK),
        spare: VecDeque::new(),
        buffers_used: false,
        wbuf: BytesMut::with_capacity(4096),
        server: ServerParams::default(),
        target: target.clone(),
        tls: None,
    };
    let mut startup = Startup::new(
        StartupParams {
            user: cfg.user.clone(),
            database: cfg.dbname.clone(),
            application_name: cfg.application_name.clone(),
            options: cfg.options.clone(),
        },
        password,
    )
    .with_policy(AuthPolicy {
        require_auth: cfg.require_auth.clone(),
        channel_binding: cfg.channel_binding,
    });
    if let Some(e) = encrypted {
        startup = startup.with_tls(e.end_point);
        conn.tls = Some(e.summary);
    }
    startup.startup_packet(&mut conn.wbuf);
    conn.flush().await?;
    // How far authentication got decides what a refusal means (see AuthStage).
    let mut stage = AuthStage::NoCredentials;
    loop {
        let msg = conn.read_message().await?;
        let next = match &msg {
            BackendMessage::AuthenticationOk => AuthStage::Authenticated,
            BackendMessage::AuthenticationCleartextPassword
            | BackendMessage::AuthenticationMd5Password(_)
            | BackendMessage::AuthenticationSasl(_)
            | BackendMessage::AuthenticationSaslContinue(_) => AuthStage::CredentialsSent,
            _ => stage,
        };
        let outcome = startup.handle(msg, &mut conn.wbuf).map_err(|e| match e {
            ProtocolError::Server(se) => ReceiverError::from_server(&se, Context::Startup(stage)),
            other => ReceiverError::from(other),
        })?;
        // Only once the reply is built: a request walsink could not answer sent nothing.
        stage = next;
        conn.flush().await?;
        if let StartupOutcome::Ready(params) = outcome {
            conn.server = params;
            return Ok(conn);
        }
    }
}

impl Connection {
    /// Writes out everything buffered for sending; in command mode, by the deadline.
    pub async fn flush(&mut self) -> Result<(), ReceiverError> {
        match self.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, self.flush_now())
                .await
                .unwrap_or_else(|_| Err(timeout_expired(self.phase))),
            None => self.flush_now().await,
        }
    }

    async fn flush_now(&mut self) -> Result<(), ReceiverError> {
        if !self.wbuf.is_empty() {
            self.stream
                .write_all(&self.wbuf)
                .await
                .map_err(|e| ReceiverError::network("could not send data to server", e))?;
            self.wbuf.clear();
        }
        self.stream
            .flush()
            .await
            .map_err(|e| ReceiverError::network("could not send data to server", e))
    }

    /// The send buffer, for callers that encode frames themselves.
    pub fn send_buf(&mut self) -> &mut BytesMut {
        &mut self.wbuf
    }

    /// The read buffer, for callers that decode frames themselves (the session takes every
    /// whole frame off its front).
    pub fn recv_buf(&mut self) -> &mut BytesMut {
        &mut self.rbuf
    }

    /// Decodes a message already in the read buffer, without reading the socket.
    pub fn try_decode(&mut self) -> Result<Option<BackendMessage>, ReceiverError> {
        frame::decode(&mut self.rbuf).map_err(ReceiverError::from)
    }

    /// The server entered copy mode: no deadline while streaming (the session's receive
    /// timeout applies instead).
    pub fn end_command_phase(&mut self) {
        self.deadline = None;
    }

    /// Back in command mode after a copy: the commands that follow (and the next
    /// `START_REPLICATION` until the server enters copy mode) must be done within
    /// `connect_timeout` from now. No effect while a command phase is running.
    pub fn begin_command_phase(&mut self) {
        if self.deadline.is_none() {
            self.deadline = Some(Instant::now() + self.phase);
        }
    }
    /// Reads more bytes from the socket into the read buffer. Cancellation-safe: a
    /// read that is cancelled consumed nothing.
    ///
    /// Reads stop at the end of the frame at the head of the buffer (its header is
    /// read on its own first), so that when the buffer is split into frames nothing is
    /// left behind: the frames handed out still share the buffer, and a `reserve`
    /// then has to copy whatever is left into a new allocation (it was up to a whole
    /// 128 KiB message per read, about a fifth of all received bytes).
    ///
    /// In command mode the read is bounded by the command phase's deadline.
    pub async fn fill(&mut self) -> Result<(), ReceiverError> {
        match self.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, self.fill_now())
                .await
                .unwrap_or_else(|_| Err(timeout_expired(self.phase))),
            None => self.fill_now().await,
        }
    }

    async fn fill_now(&mut self) -> Result<(), ReceiverError> {
        let want = match head_frame_len(&self.rbuf) {
            // The rest of the frame and the next frame's header, if they have come.
            Some(total) if total > self.rbuf.len() => {
                (total - self.rbuf.len() + FRAME_HEADER).min(READ_CHUNK)
            }
            Some(_) => READ_CHUNK,
            None => FRAME_HEADER - self.rbuf.len(),
        };
        if self.rbuf.capacity() - self.rbuf.len() < want {
            self.next_buffer(want);
        }
        let mut limited = (&mut self.rbuf).limit(want);
        let n = self.stream.read_buf(&mut limited).await.map_err(|e| {
            if self.tls.is_some() {
                tls_read_error(e)
            } else {
                ReceiverError::network("could not receive data from server", e)
            }
        })?;
        if n == 0 {
            return Err(ReceiverError::transient(if self.rbuf.is_empty() {
                "server closed the connection unexpectedly"
            } else {
                "server closed the connection unexpectedly, in the middle of a message"
            }));
        }
        Ok(())
    }

    /// Moves on to another read buffer with room for `want` more bytes, carrying over
    /// what is left in the current one (at most a frame header, as reads stop at
    /// frame ends).
    ///
    /// Not `reserve`: on a buffer no longer shared, `reserve` reallocates it, copying
    /// every byte already split off, and a new allocation is fresh memory the kernel
    /// must fault in and zero (together a quarter of walsink's CPU time in a
    /// profile). So earlier buffers are kept and reused once the writer has dropped
    /// every frame in them; a new one is allocated only while all are still in use.
    fn next_buffer(&mut self, want: usize) {
        let need = READ_BUFFER.max(self.rbuf.len() + want);
        let reusable = self.spare.iter_mut().position(|b| b.try_reclaim(need));
        let mut next = match reusable {
            Some(i) => self.spare.remove(i).expect("index from position"),
            None => BytesMut::with_capacity(need),
        };
        next.extend_from_slice(&self.rbuf);
        self.buffers_used = true;
        let mut old = std::mem::replace(&mut self.rbuf, next);
        old.clear();
        if self.spare.len() < SPARE_BUFFERS {
            self.spare.push_back(old);
        }
    }

    /// Called on the stream's timer ticks (status updates): when no new read buffer was
    /// needed since the previous tick, the stream is idle or slow, and the read buffers
    /// kept from a burst (up to [`SPARE_BUFFERS`] MiB, touched memory) are freed, as is the
    /// current one if it holds nothing. An idle source in a daemon with many of them
    /// then costs no catch-up memory (BENCHMARKS.md, `walsink run` at scale).
    pub fn idle_tick(&mut self) {
        if std::mem::take(&mut self.buffers_used) {
            return;
        }
        self.spare = VecDeque::new();
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            self.rbuf = BytesMut::new();
        }
    }

    /// Reads the next whole message; in command mode, by the deadline. Notices are
    /// logged here (rate limited) and not returned.
    pub async fn read_message(&mut self) -> Result<BackendMessage, ReceiverError> {
        loop {
            let msg = self.next_message().await?;
            if let BackendMessage::NoticeResponse(n) = &msg {
                self.log_notice(n);
                continue;
            }
            return Ok(msg);
        }
    }

    async fn next_message(&mut self) -> Result<BackendMessage, ReceiverError> {
        loop {
            if let Some(m) = self.try_decode()? {
                return Ok(m);
            }
            self.fill().await?;
        }
    }

    /// Logs a server notice, at most [`walsink_protocol::notice::NOTICES_PER_SECOND`] a
    /// second; the rest are counted and the count is logged with the next one let
    /// through. The text is escaped (see [`walsink_protocol::Escaped`]).
    pub fn log_notice(&mut self, notice: &ServerError) {
        if let NoticeVerdict::Log { suppressed } = self.notices.admit(std::time::Instant::now()) {
            if suppressed > 0 {
                warn!(
                    "{suppressed} more server notices were not logged (at most {} a second are)",
                    walsink_protocol::notice::NOTICES_PER_SECOND
                );
            }
            info!("server notice: {notice}");
        }
    }

    /// Runs one simple query and collects its result set. A server error becomes a
    /// [`ReceiverError`] naming the command, classified in the command's
    /// [`Context::of_command`].
    pub async fn query(&mut self, sql: &str) -> Result<ResultSet, ReceiverError> {
        encode_query(sql, &mut self.wbuf);
        self.flush().await?;
        let mut c = QueryCollector::default();
        loop {
            let msg = self.read_message().await?;
            if let Some(out) = c.handle(msg)? {
                return out.map_err(|e| match e {
                    ProtocolError::Server(se) => ReceiverError::from_server_doing(
                        &se,
                        Context::of_command(sql),
                        format!("could not run \"{sql}\""),
                    ),
                    other => other.into(),
                });
            }
        }
    }

    /// Whether the server reported at startup that it is in hot standby mode
    /// (`in_hot_standby`, PostgreSQL 14+); `None` if it did not say.
    pub fn in_hot_standby(&self) -> Option<bool> {
        self.server.params.get("in_hot_standby").map(|v| v == "on")
    }

    /// Sends Terminate and closes the socket, ignoring errors.
    pub async fn close(mut self) {
        encode_terminate(&mut self.wbuf);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.flush()).await;
        let _ = self.stream.shutdown().await;
    }
}
