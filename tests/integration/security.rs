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
    AfterAuth, FakeServer, FakeSession, FakeSlot, Reply, TEXT_OID, frame, notice_response,
    parameter_status, result_set,
};
use crate::harness::{Walsink, temp_base};

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
