//! Hostile and broken servers, and the connection's security options (issue 9).
//!
//! The scripted fake server ([`crate::harness::fake`]) plays what PostgreSQL never does: a short
//! `TIMELINE_HISTORY` row, endless result rows, floods of ParameterStatus messages or notices, silence
//! after authentication, a cleartext password request to a client that requires SCRAM. Every flood case
//! measures walsink's peak memory, both from `/proc/PID/status` (`VmHWM`, sampled while it runs) and from
//! `wait4`'s `ru_maxrss` (the exact peak, read when it is reaped), and asserts a bound far below what an
//! unbounded reader reaches in the same time.
//!
//! Real PostgreSQL checks `require_auth` against real `md5`, `scram-sha-256` and `trust` lines in
//! `pg_hba.conf`, and `requirepeer` against the server's real Unix socket.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::fake::{
    AfterAuth, FakeAuth, FakeServer, FakeSession, FakeSlot, Reply, Step, TEXT_OID, frame,
    notice_response, parameter_status, result_set,
};
use crate::harness::{HostAuth, PgCluster, Walsink, temp_base};

/// The fake cluster's system identifier.
const SYSID: u64 = 7_300_000_000_000_000_009;
/// Where the fake's slot starts.
const START: u64 = 0x300_0000;
/// Upper bound for a walsink run in these tests.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Peak memory walsink may reach under any flood. walsink's own peak on a normal short run against the
/// fake is about 10 MiB; an unbounded reader grows by 200 MB/s or more.
const RSS_BOUND_KIB: u64 = 64 << 10;

/// A finished, measured walsink run.
struct Measured {
    code: Option<i32>,
    stderr: String,
    elapsed: Duration,
    /// The largest `VmHWM` read from `/proc/PID/status` while it ran, in KiB.
    vmhwm_kib: u64,
    /// `ru_maxrss` from `wait4`: the exact peak resident set, in KiB.
    maxrss_kib: u64,
}

impl Measured {
    fn expect(&self, what: &str, code: i32, needles: &[&str]) {
        assert_eq!(
            self.code,
            Some(code),
            "{what}: expected exit code {code}, stderr:\n{}",
            self.stderr
        );
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "{what}: stderr lacks {needle:?}:\n{}",
                self.stderr
            );
        }
    }

    fn assert_memory_bounded(&self, what: &str) {
        assert!(
            self.vmhwm_kib > 0,
            "{what}: VmHWM was never read from /proc"
        );
        let peak = self.vmhwm_kib.max(self.maxrss_kib);
        assert!(
            peak <= RSS_BOUND_KIB,
            "{what}: walsink's peak RSS was {peak} KiB (VmHWM {} KiB, ru_maxrss {} KiB), over the bound of {RSS_BOUND_KIB} KiB",
            self.vmhwm_kib,
            self.maxrss_kib
        );
        eprintln!(
            "{what}: peak RSS VmHWM {} KiB, ru_maxrss {} KiB, {:?}",
            self.vmhwm_kib, self.maxrss_kib, self.elapsed
        );
    }
}

fn vmhwm_kib(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `cmd` to completion, sampling its `VmHWM` every few milliseconds and reaping it with `wait4`
/// for its exact peak.
fn run_measured(mut cmd: Command, timeout: Duration) -> Measured {
    let out = tempfile::Builder::new()
        .prefix("wsk-sec")
        .tempfile_in(temp_base())
        .unwrap();
    cmd.stdout(Stdio::null())
        .stderr(File::create(out.path()).unwrap());
    let started = Instant::now();
    let child = cmd.spawn().expect("spawn walsink");
    let pid = child.id() as i32;
    let mut hwm = 0;
    let (code, maxrss) = loop {
        if let Some(v) = vmhwm_kib(pid) {
            hwm = hwm.max(v);
        }
        let mut status = 0;
        // SAFETY: a plain wait4 on our own child, with valid pointers to locals.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
            break (code, ru.ru_maxrss as u64);
        }
        if started.elapsed() > timeout {
            // SAFETY: our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            unsafe { libc::waitpid(pid, &mut status, 0) };
            panic!(
                "walsink still running after {timeout:?}; stderr:\n{}",
                fs::read_to_string(out.path()).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(2));
    };
    // The child was reaped by wait4; `Child` neither waits nor kills on drop.
    drop(child);
    Measured {
        code,
        stderr: fs::read_to_string(out.path()).unwrap_or_default(),
        elapsed: started.elapsed(),
        vmhwm_kib: hwm,
        maxrss_kib: maxrss,
    }
}

/// `walsink receive -n -w -S walsink -D dir -d "<fake> <extra conninfo>"`.
fn receive(fake: &FakeServer, dir: &Path, conninfo_extra: &str) -> Command {
    let mut cmd = Walsink::cmd(["receive", "-n", "-w", "-S", "walsink", "-d"]);
    cmd.arg(format!("{} {conninfo_extra}", fake.conninfo()))
        .arg("-D")
        .arg(dir);
    cmd
}

fn session() -> FakeSession {
    FakeSession::new(SYSID, 1, START)
}

// ---- malformed and endless replies ------------------------------------------------------------------

/// A `TIMELINE_HISTORY` row with fewer values than its RowDescription declares used to panic (exit 101,
/// and a service manager restarts it in a loop). Now it is a protocol violation: exit 1, naming it.
#[test]
fn short_timeline_history_row_exits_1_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let short = result_set(
        &[("filename", TEXT_OID), ("content", TEXT_OID)],
        &[Some(b"00000002.history")],
        "TIMELINE_HISTORY",
    );
    let fake = FakeServer::start(vec![
        FakeSession::new(SYSID, 2, START)
            .slot(FakeSlot::Physical {
                restart_lsn: Some(START),
                restart_tli: 2,
            })
            .reply("TIMELINE_HISTORY", Reply::Raw(short)),
    ]);
    let r = run_measured(receive(&fake, dir.path(), ""), TIMEOUT);
    r.expect(
        "short TIMELINE_HISTORY row",
        1,
        &["a row of 1 values where the row description declared 2 columns"],
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(
        fake.queries()
            .iter()
            .any(|(_, q)| q == "TIMELINE_HISTORY 2"),
        "the history was never asked for: {:?}",
        fake.queries()
    );
}

/// A DataRow of one small value, as IDENTIFY_SYSTEM's flood.
fn identify_head() -> Vec<u8> {
    let full = result_set(&[("systemid", TEXT_OID)], &[Some(b"1")], "IDENTIFY_SYSTEM");
    // RowDescription only: up to the DataRow.
    let len = u32::from_be_bytes(full[1..5].try_into().unwrap()) as usize;
    full[..1 + len].to_vec()
}

fn data_row(value: &[u8]) -> Vec<u8> {
    let mut b = 1u16.to_be_bytes().to_vec();
    b.extend_from_slice(&(value.len() as u32).to_be_bytes());
    b.extend_from_slice(value);
    frame(b'D', &b)
}

/// Endless DataRows in reply to IDENTIFY_SYSTEM, small ones (the row limit) and large ones (the byte
/// limit): walsink stops at the limit, exit 1, memory bounded.
#[test]
fn endless_result_rows_are_cut_off_with_bounded_memory() {
    for (what, row, needle) in [
        (
            "small rows",
            data_row(b"7300000000000000009"),
            "rows in a command's result over walsink's limit of 1000 rows",
        ),
        (
            "large rows",
            data_row(&vec![b'x'; 512 << 10]),
            "bytes in a command's result over walsink's limit of 4 MiB",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeServer::start(vec![session().reply(
            "IDENTIFY_SYSTEM",
            Reply::Endless {
                head: identify_head(),
                repeat: row,
            },
        )]);
        let r = run_measured(receive(&fake, dir.path(), ""), TIMEOUT);
        r.expect(what, 1, &[needle]);
        r.assert_memory_bounded(what);
    }
}

/// ParameterStatus without end during startup: a count limit and a byte limit.
#[test]
fn parameter_status_flood_is_cut_off_with_bounded_memory() {
    for (what, msg, needle) in [
        (
            "many parameters",
            parameter_status("application_name", "walsink"),
            "ParameterStatus messages during startup over walsink's limit of 1000 messages",
        ),
        (
            "large parameters",
            parameter_status("x", &"y".repeat(256 << 10)),
            "bytes of ParameterStatus messages during startup over walsink's limit of 1 MiB",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeServer::start(vec![session().after_auth(AfterAuth::Flood(msg))]);
        let r = run_measured(receive(&fake, dir.path(), ""), TIMEOUT);
        r.expect(what, 1, &[needle]);
        r.assert_memory_bounded(what);
    }
}

/// Notices without end after authentication: logged at most 10 a second with a count of the rest,
/// escaped (a newline in one cannot start a log line), memory bounded, and the deadline ends it.
#[test]
fn notice_flood_is_rate_limited_escaped_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeServer::start(vec![session().after_auth(AfterAuth::Flood(
        notice_response(
            "01000",
            "hello\nFORGED ERROR walsink: this line came from the server",
        ),
    ))]);
    let r = run_measured(receive(&fake, dir.path(), "connect_timeout=3"), TIMEOUT);
    r.expect(
        "notice flood",
        3,
        &[
            "timeout expired",
            "server notice: NOTICE:  hello\\nFORGED ERROR walsink: this line came from the server",
            "more server notices were not logged (at most 10 a second are)",
        ],
    );
    assert!(
        !r.stderr.lines().any(|l| l.starts_with("FORGED")),
        "a server notice started a log line:\n{}",
        r.stderr
    );
    let logged = r.stderr.matches("server notice:").count();
    // 3 s of flood, 10 a second, in at most 4 windows.
    assert!(
        (10..=40).contains(&logged),
        "{logged} notices logged:\n{}",
        r.stderr
    );
    r.assert_memory_bounded("notice flood");
}

// ---- deadline over connect, authenticate and commands -----------------------------------------------

/// A server that goes silent after AuthenticationOk, or after the first command, is given up on once
/// `connect_timeout` has passed since the attempt began (exit 3 with `-n`), not waited for for ever.
#[test]
fn silent_server_after_auth_or_command_times_out() {
    for (what, fake_session) in [
        (
            "silent after authentication",
            session().after_auth(AfterAuth::Silent),
        ),
        (
            "silent after IDENTIFY_SYSTEM",
            session().reply("IDENTIFY_SYSTEM", Reply::Silent),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeServer::start(vec![fake_session]);
        let mut cmd = receive(&fake, dir.path(), "connect_timeout=2");
        cmd.args(["--receive-timeout", "10s"]);
        let r = run_measured(cmd, TIMEOUT);
        r.expect(
            what,
            3,
            &["timeout expired: connecting, authenticating and the commands before streaming took longer than 2 s"],
        );
        assert!(
            r.elapsed >= Duration::from_secs(2) && r.elapsed < Duration::from_secs(10),
            "{what}: exited after {:?}",
            r.elapsed
        );
    }
}

/// The deadline covers the command phase only: streaming (with status updates sent every second) goes
/// on past `connect_timeout`, and the next timeline's commands get a deadline of their own.
#[test]
fn streaming_outlives_the_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let page = 8192;
    let fake = FakeServer::start(vec![session().steps([
        Step::wal(START, page),
        Step::Sleep(Duration::from_secs(3)),
        Step::wal(START + page as u64, page),
        Step::wait_flush(START + 2 * page as u64),
        Step::Close,
    ])]);
    let mut cmd = receive(&fake, dir.path(), "connect_timeout=2");
    cmd.args(["-s", "1"]);
    let r = run_measured(cmd, TIMEOUT);
    r.expect("streaming for 3 s with connect_timeout=2", 3, &[]);
    assert!(!r.stderr.contains("timeout expired"), "{}", r.stderr);
    assert!(r.elapsed >= Duration::from_secs(3), "{:?}", r.elapsed);
    assert_eq!(
        fake.assert_reports_within(START + 2 * page as u64),
        START + 2 * page as u64
    );
    assert!(fake.problems().is_empty(), "{:?}", fake.problems());
}

// ---- security options: the fake server ---------------------------------------------------------------

/// `walsink receive -n -w -D dir -E 0/1 -d "<conninfo>"`: connects, authenticates, identifies the system
/// and exits 0 before streaming (the end position is already behind).
fn connect_only(conninfo: &str, dir: &Path) -> Command {
    let mut cmd = Walsink::cmd(["receive", "-n", "-w", "-E", "0/1", "-d", conninfo, "-D"]);
    cmd.arg(dir);
    cmd
}

/// A server (or a man in the middle) that asks for a cleartext or md5 password, or lets the client in
/// without any authentication, is refused when `require_auth` does not allow that, before anything is
/// sent: exit 10, in libpq's words. The same server with the method allowed gets the password, so the
/// refusal is not an accident of the fake.
#[test]
fn require_auth_refuses_password_requests_without_sending_the_password() {
    for (auth, refused, reason, allowed) in [
        (
            FakeAuth::Cleartext,
            "scram-sha-256",
            "server requested a cleartext password",
            "password",
        ),
        (
            FakeAuth::Md5,
            "!md5",
            "server requested a hashed password",
            "md5,scram-sha-256",
        ),
        (
            FakeAuth::Trust,
            "md5",
            "server did not complete authentication",
            "md5,none",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeServer::start(vec![session().auth(auth.clone())]);
        let mut cmd = connect_only(
            &format!("{} require_auth={refused}", fake.conninfo()),
            dir.path(),
        );
        cmd.env("PGPASSWORD", "s3cret");
        let r = run_measured(cmd, TIMEOUT);
        r.expect(
            &format!("{auth:?} with require_auth={refused}"),
            10,
            &[&format!(
                "authentication method requirement require_auth=\"{refused}\" failed: {reason}; nothing was sent to the server"
            )],
        );
        assert_eq!(fake.passwords(), vec![], "{auth:?}: a password was sent");
        assert!(fake.queries().is_empty(), "{:?}", fake.queries());

        // The same with the method allowed, from PGREQUIREAUTH.
        let mut cmd = connect_only(&fake.conninfo(), dir.path());
        cmd.env("PGPASSWORD", "s3cret")
            .env("PGREQUIREAUTH", allowed);
        let r = run_measured(cmd, TIMEOUT);
        r.expect(
            &format!("{auth:?} with require_auth={allowed}"),
            0,
            &["reached before streaming started"],
        );
        let sent = fake.passwords().len();
        assert_eq!(
            sent,
            usize::from(!matches!(auth, FakeAuth::Trust)),
            "{auth:?}"
        );
    }
}

/// `gssencmode=require` (also from PGGSSENCMODE) asks for what walsink cannot do without GSSAPI, and a
/// malformed `require_auth` for nothing clear: exit 2 before any connection, naming the option and the fix.
#[test]
fn gssencmode_require_is_refused_before_connecting() {
    let fake = FakeServer::start(vec![session().auth(FakeAuth::Sasl(vec![
        "SCRAM-SHA-256-PLUS".into(),
        "SCRAM-SHA-256".into(),
    ]))]);
    for (extra, var, needle) in [
        (
            "gssencmode=require",
            None,
            "gssencmode=require requires GSSAPI encryption, which walsink does not support; use gssencmode=disable or gssencmode=prefer",
        ),
        (
            "",
            Some(("PGGSSENCMODE", "require")),
            "gssencmode=require requires GSSAPI encryption",
        ),
        (
            "require_auth=md5,!password",
            None,
            "negative require_auth method \"!password\" cannot be mixed with non-negative methods",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = connect_only(&format!("{} {extra}", fake.conninfo()), dir.path());
        cmd.env("PGPASSWORD", "s3cret");
        if let Some((k, v)) = var {
            cmd.env(k, v);
        }
        let r = run_measured(cmd, TIMEOUT);
        r.expect(&format!("{extra} {var:?}"), 2, &[needle]);
        assert!(
            fs::read_dir(dir.path()).unwrap().next().is_none(),
            "nothing may be written"
        );
    }
    assert_eq!(fake.connections(), 0, "walsink connected anyway");
    assert!(fake.passwords().is_empty());
}

/// `channel_binding=require` (also from PGCHANNELBINDING) against a server (or a man in the middle) that
/// refuses TLS and asks for SCRAM: walsink refuses to authenticate without a TLS channel to bind to,
/// exit 10, and no SCRAM message leaves it.
#[test]
fn channel_binding_require_refuses_a_server_without_tls() {
    let fake = FakeServer::start(vec![
        session().auth(FakeAuth::Sasl(vec![
            "SCRAM-SHA-256-PLUS".into(),
            "SCRAM-SHA-256".into(),
        ])),
        session().auth(FakeAuth::Sasl(vec!["SCRAM-SHA-256".into()])),
    ]);
    for (extra, var) in [
        ("channel_binding=require", None),
        ("", Some(("PGCHANNELBINDING", "require"))),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = connect_only(&format!("{} {extra}", fake.conninfo()), dir.path());
        cmd.env("PGPASSWORD", "s3cret");
        if let Some((k, v)) = var {
            cmd.env(k, v);
        }
        let r = run_measured(cmd, TIMEOUT);
        r.expect(
            &format!("{extra} {var:?}"),
            10,
            &["channel_binding=\"require\" failed: channel binding required, but SSL not in use; nothing was sent to the server"],
        );
        assert!(
            fs::read_dir(dir.path())
                .unwrap()
                .filter_map(Result::ok)
                .all(|e| e.file_name() == ".walsink.lock"),
            "nothing may be written"
        );
    }
    assert!(fake.passwords().is_empty());
}

// ---- security options: real PostgreSQL ---------------------------------------------------------------

/// `require_auth` against real `md5`, `scram-sha-256` and `trust` (the Unix socket) pg_hba.conf lines:
/// the allowed method connects, any other is refused with exit 10 before the password is sent.
#[test]
fn require_auth_against_real_hba_methods() {
    for auth in [
        HostAuth::Md5("md5 pw".to_owned()),
        HostAuth::ScramSha256("scram pw".to_owned()),
    ] {
        let pg = PgCluster::builder().host_auth(auth.clone()).start();
        let method = auth.method();
        let dir = tempfile::tempdir().unwrap();
        let attempt = |conninfo: String| {
            let mut cmd = connect_only(&conninfo, dir.path());
            cmd.env("PGPASSWORD", auth.password().unwrap());
            run_measured(cmd, TIMEOUT)
        };
        attempt(format!("{} require_auth={method}", pg.conninfo())).expect(
            &format!("{method} allowed"),
            0,
            &["reached before streaming started"],
        );
        attempt(format!("{} require_auth=!password", pg.conninfo())).expect(
            &format!("{method} with !password"),
            0,
            &["reached before streaming started"],
        );
        let (other, reason) = if method == "md5" {
            ("scram-sha-256", "server requested a hashed password")
        } else {
            ("md5,password", "server requested SASL authentication")
        };
        attempt(format!("{} require_auth={other}", pg.conninfo())).expect(
            &format!("{method} against require_auth={other}"),
            10,
            &[&format!(
                "authentication method requirement require_auth=\"{other}\" failed: {reason}"
            )],
        );
        // The socket is trust: no authentication at all.
        attempt(format!("{} require_auth={method}", pg.socket_conninfo())).expect(
            &format!("trust against require_auth={method}"),
            10,
            &["server did not complete authentication"],
        );
        attempt(format!("{} require_auth=none", pg.socket_conninfo())).expect(
            "trust with require_auth=none",
            0,
            &["reached before streaming started"],
        );
        assert!(
            !pg.log_text().contains("password authentication failed"),
            "a refused attempt reached the server's password check"
        );
    }
}

/// The user the server process runs as: `walsink_pg` when the tests run as root, else ourselves.
fn server_os_user() -> String {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        crate::harness::pg::SERVER_USER.to_owned()
    } else {
        std::env::var("USER").expect("USER names the user running the tests")
    }
}

/// `requirepeer` on the real Unix socket: the server's OS user passes, any other user is refused (exit
/// 10) before anything is sent; over TCP the option does not apply, as in libpq.
#[test]
fn requirepeer_checks_the_socket_owner() {
    let pg = PgCluster::start_default();
    let dir = tempfile::tempdir().unwrap();
    let server = server_os_user();
    let run = |conninfo: String| run_measured(connect_only(&conninfo, dir.path()), TIMEOUT);
    run(format!("{} requirepeer={server}", pg.socket_conninfo())).expect(
        "requirepeer = the server's user",
        0,
        &["reached before streaming started"],
    );
    let mut cmd = connect_only(&pg.socket_conninfo(), dir.path());
    cmd.env("PGREQUIREPEER", "nobody");
    run_measured(cmd, TIMEOUT).expect(
        "requirepeer=nobody from PGREQUIREPEER",
        10,
        &[&format!(
            "requirepeer specifies \"nobody\", but actual peer user name is \"{server}\""
        )],
    );
    if server != "root" {
        run(format!("{} requirepeer=root", pg.socket_conninfo())).expect(
            "requirepeer=root",
            10,
            &[&format!(
                "requirepeer specifies \"root\", but actual peer user name is \"{server}\""
            )],
        );
    }
    run(format!("{} requirepeer=nobody", pg.conninfo())).expect(
        "requirepeer over TCP",
        0,
        &["reached before streaming started"],
    );
}
