//! Running the walsink binary: [`Walsink`] builds command lines, [`WalsinkProcess`] is a running child.
//!
//! Commands get the environment of the test minus every `PG*` variable (so a developer's `PGHOST`,
//! `PGPASSWORD` or `PGDATA` cannot leak in) and minus systemd's `JOURNAL_STREAM`, `NOTIFY_SOCKET` and
//! `WATCHDOG_*` (so a suite run under journald or as a service tests walsink's defaults); `RUST_LOG` and
//! everything else pass through. Add variables with
//! `Command::env` on [`Walsink::cmd`] (e.g. `PGPASSWORD`) and start it with [`WalsinkProcess::spawn_command`]
//! or [`Walsink::run_command`].
//!
//! A spawned process writes stdout and stderr to files in its own temp dir, so a test can read them while the
//! process runs ([`WalsinkProcess::stderr_text`], [`WalsinkProcess::wait_for_stderr`]). Dropping a
//! [`WalsinkProcess`] that is still running SIGKILLs and reaps it.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::pg::clean_env;
use super::{tail, temp_base, wait_for};

/// Any program (pg_receivewal, psql, pg_waldump, ...) with the same clean environment as [`Walsink::cmd`]:
/// no `PG*` variables, stdin closed. Start it with [`WalsinkProcess::spawn_command`] or
/// [`Walsink::run_command`] to get the same output capture and timeouts.
pub fn clean_command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    clean_env(&mut cmd);
    cmd.stdin(Stdio::null());
    cmd
}

/// Entry points for running the walsink binary.
pub struct Walsink;

impl Walsink {
    /// The walsink binary cargo built for this test run.
    pub fn bin() -> PathBuf {
        PathBuf::from(env!("CARGO_BIN_EXE_walsink"))
    }

    /// `walsink <args>` with a clean environment (no `PG*` variables), stdin closed.
    pub fn cmd<I, S>(args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = clean_command(Self::bin());
        cmd.args(args);
        cmd
    }

    /// Starts `walsink <args>` in the background.
    pub fn spawn<I, S>(args: I) -> WalsinkProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        WalsinkProcess::spawn_command(Self::cmd(args))
    }

    /// Runs `walsink <args>` to completion. If it is still running after `timeout`, kills it and panics
    /// with its output.
    pub fn run<I, S>(args: I, timeout: Duration) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::run_command(Self::cmd(args), timeout)
    }

    /// Like [`run`](Self::run) for a command built with [`cmd`](Self::cmd) and adjusted by the test.
    pub fn run_command(cmd: Command, timeout: Duration) -> Output {
        let mut process = WalsinkProcess::spawn_command(cmd);
        let status = process.wait_timeout(timeout);
        Output {
            status,
            stdout: fs::read(process.stdout_path()).unwrap_or_default(),
            stderr: fs::read(process.stderr_path()).unwrap_or_default(),
        }
    }
}

/// A directory holding `pg_receivewal`, a symbolic link to the walsink binary: what an operator puts on
/// Barman's `path_prefix` or on `PATH` to replace pg_receivewal. Removed when dropped.
#[derive(Debug)]
pub struct PgReceivewalLink {
    dir: TempDir,
}

impl PgReceivewalLink {
    /// Makes the directory (mode 0755, so that another user, e.g. Barman's, can run the link) and the link.
    pub fn new() -> PgReceivewalLink {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("wsk-pgrw")
            .tempdir_in(temp_base())
            .expect("create temp dir for the pg_receivewal link");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod link dir");
        std::os::unix::fs::symlink(Walsink::bin(), dir.path().join("pg_receivewal"))
            .expect("symlink pg_receivewal -> walsink");
        PgReceivewalLink { dir }
    }

    /// Like [`new`](Self::new), but the link points to a copy of walsink in the same directory (mode 0755),
    /// so that another OS user can run it wherever the build is (a checkout under `/root` is not traversable
    /// by other users).
    pub fn with_copy() -> PgReceivewalLink {
        use std::os::unix::fs::PermissionsExt;
        let link = PgReceivewalLink::new();
        let copy = link.dir().join("walsink");
        fs::copy(Walsink::bin(), &copy).expect("copy walsink next to the link");
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).expect("chmod walsink copy");
        let bin = link.bin();
        fs::remove_file(&bin).expect("remove the link to the build");
        std::os::unix::fs::symlink(&copy, &bin).expect("symlink pg_receivewal -> walsink copy");
        link
    }

    /// The directory holding the link.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The link, `DIR/pg_receivewal`.
    pub fn bin(&self) -> PathBuf {
        self.dir.path().join("pg_receivewal")
    }

    /// `pg_receivewal <args>` (walsink through the link) with a clean environment and no `RUST_LOG`, so the
    /// default log levels apply.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = clean_command(self.bin());
        cmd.env_remove("RUST_LOG");
        cmd.args(args);
        cmd
    }

    /// Runs `pg_receivewal <args>` to completion (see [`Walsink::run`]).
    pub fn run<I, S>(&self, args: I, timeout: Duration) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Walsink::run_command(self.cmd(args), timeout)
    }
}

/// A running walsink (or any other command, e.g. pg_receivewal) with its output captured to files.
#[derive(Debug)]
pub struct WalsinkProcess {
    child: Child,
    /// Set once the child has been reaped; signals are never sent after that (the pid may be reused).
    status: Option<ExitStatus>,
    description: String,
    output_dir: TempDir,
}

impl WalsinkProcess {
    /// Spawns `cmd` with stdout and stderr redirected to files. Stdin is whatever `cmd` says
    /// ([`Walsink::cmd`] closes it).
    pub fn spawn_command(mut cmd: Command) -> WalsinkProcess {
        let output_dir = tempfile::Builder::new()
            .prefix("wsk-out")
            .tempdir_in(temp_base())
            .expect("create output temp dir");
        let stdout = File::create(output_dir.path().join("stdout")).expect("create stdout file");
        let stderr = File::create(output_dir.path().join("stderr")).expect("create stderr file");
        let description = format!("{cmd:?}");
        let child = cmd
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {description}: {e}"));
        WalsinkProcess {
            child,
            status: None,
            description,
            output_dir,
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGINT (what Ctrl-C does; walsink finishes cleanly).
    pub fn interrupt(&mut self) {
        self.signal(libc::SIGINT);
    }

    /// Sends SIGTERM (what systemd sends on stop).
    pub fn terminate(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends SIGKILL: no cleanup at all, like a crash or power loss of the process.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
    }

    /// Sends `sig` if the process has not been reaped yet.
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.try_wait().is_some() {
            return;
        }
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; the child is not reaped, so the pid is ours.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// Stops the process with SIGSTOP and returns once every thread of it is stopped: from then on it does
    /// nothing (it keeps its open files and locks) until [`WalsinkProcess::resume`]. Lets a test order events
    /// that a running process would react to at once. Panics if it exits instead.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        let tasks = PathBuf::from(format!("/proc/{}/task", self.child.id()));
        let all_stopped = || {
            fs::read_dir(&tasks).is_ok_and(|d| {
                d.flatten().all(|t| {
                    fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                        // "pid (comm) S ...": the state follows the last ')'.
                        stat.rsplit_once(')')
                            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
                    })
                })
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !all_stopped() {
            assert!(
                self.is_running(),
                "{} exited instead of stopping",
                self.description
            );
            assert!(
                Instant::now() < deadline,
                "{} did not stop",
                self.description
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Lets a process stopped by [`WalsinkProcess::pause`] continue (SIGCONT).
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
    }

    /// The exit status if the process has exited (reaping it), else `None`.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("wait for child");
        }
        self.status
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits for the process to exit. On timeout, SIGKILLs it and panics with its stderr.
    pub fn wait_timeout(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            if Instant::now() >= deadline {
                self.kill9();
                let _ = self.child.wait();
                panic!(
                    "{} still running after {timeout:?}; killed it.\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.description,
                    tail(&self.stdout_text(), 50),
                    tail(&self.stderr_text(), 200)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGINT and waits for the exit (panicking with stderr after `timeout`).
    pub fn interrupt_and_wait(&mut self, timeout: Duration) -> ExitStatus {
        self.interrupt();
        self.wait_timeout(timeout)
    }

    /// Waits until stderr contains `needle`; returns false if it did not within `timeout` or the process
    /// exited without printing it.
    #[must_use]
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> bool {
        wait_for(
            || {
                let running = self.is_running();
                self.stderr_text().contains(needle) || !running
            },
            timeout,
        ) && self.stderr_text().contains(needle)
    }

    /// Everything written to stderr so far.
    pub fn stderr_text(&self) -> String {
        read_lossy(&self.stderr_path())
    }

    /// Everything written to stdout so far.
    pub fn stdout_text(&self) -> String {
        read_lossy(&self.stdout_path())
    }

    /// The file receiving stderr.
    pub fn stderr_path(&self) -> PathBuf {
        self.output_dir.path().join("stderr")
    }

    /// The file receiving stdout.
    pub fn stdout_path(&self) -> PathBuf {
        self.output_dir.path().join("stdout")
    }

    /// The command line, for messages.
    pub fn description(&self) -> &str {
        &self.description
    }
}

impl Drop for WalsinkProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// A finished walsink run: exit code, stderr and how long it took.
pub struct RunOutcome {
    /// The exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Everything walsink wrote to stderr.
    pub stderr: String,
    /// Wall time from start to exit.
    pub elapsed: Duration,
}

impl RunOutcome {
    /// Runs `cmd` to completion (killed and failing the test after `timeout`).
    pub fn of(cmd: Command, timeout: Duration) -> RunOutcome {
        let started = Instant::now();
        let out = Walsink::run_command(cmd, timeout);
        RunOutcome {
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }

    /// Asserts the exit code and that stderr contains every one of `needles`.
    pub fn expect(&self, what: &str, code: i32, needles: &[&str]) {
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
}
