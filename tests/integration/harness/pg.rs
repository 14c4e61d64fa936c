//! [`PgCluster`]: a real PostgreSQL cluster owned by a value.
//!
//! A cluster lives in its own short temp directory under `/tmp` (`data/`, `sock/`, `server.log`), listens on
//! 127.0.0.1 on a port picked free at start, and has a private Unix socket directory that the harness uses for
//! SQL (`local` connections are `trust`; `host` connections use the builder's [`HostAuth`]). Dropping the value
//! stops the server with `-m immediate` and deletes the directory, also when the test panics. A small guardian
//! process does the same if the test process dies without unwinding (killed by a test-runner timeout): the
//! postmaster is daemonized by `pg_ctl`, so it would otherwise outlive the test.
//!
//! PostgreSQL refuses to run as root. When the tests run as root, the servers and their tools (`initdb`,
//! `pg_ctl`, `pg_basebackup`) run as the unprivileged OS user [`SERVER_USER`], created on first use, and the
//! cluster's files belong to it. Client tools (walsink, pg_receivewal, psql) can run as root.
//!
//! Binaries come from `WALSINK_PG_BINDIR`, else `pg_config --bindir`, else the highest
//! `/usr/lib/postgresql/*/bin` ([`default_bindir`]); [`PgClusterBuilder::bindir`] overrides this per cluster
//! and [`bindir_for_major`] finds a given major (`WALSINK_PG<major>_BINDIR`). A tool that bindir lacks (some
//! builds of old majors ship only initdb, pg_ctl and postgres) comes from `WALSINK_PG_CLIENT_BINDIR`, a newer
//! major's bindir: psql, pg_basebackup and pg_receivewal talk to older servers. pg_waldump and
//! pg_controldata read the server's files, whose format changes with the major, so they are taken from
//! there only when that directory is of the same major ([`tool`]). Every bindir must be readable and
//! traversable by [`SERVER_USER`] when running as root (pg_basebackup runs as that user).

use std::ffi::CString;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{keep_temp, parse_lsn, tail, temp_base, wait_for};

/// The unprivileged OS user that runs PostgreSQL when the tests run as root.
pub const SERVER_USER: &str = "walsink_pg";

/// The name of the settings file the harness writes into the data directory (included from postgresql.conf).
const HARNESS_CONF: &str = "walsink_harness.conf";

/// How long `pg_ctl -w` and the connection checks may take before a start counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How many ports to try when the picked one turns out to be taken.
const PORT_ATTEMPTS: usize = 8;

/// Rows returned by [`PgCluster::sql`]: every column as text, `None` for NULL.
pub type Rows = Vec<Vec<Option<String>>>;

/// How `host` (TCP) connections from 127.0.0.1 authenticate. Unix-socket connections are always `trust`.
/// Password variants set the password of the superuser `postgres`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum HostAuth {
    /// No authentication (the default).
    #[default]
    Trust,
    /// Cleartext password.
    Password(String),
    /// MD5 challenge; the password is stored as an MD5 hash (`password_encryption = md5`).
    Md5(String),
    /// SCRAM-SHA-256.
    ScramSha256(String),
}

impl HostAuth {
    /// The pg_hba.conf method name.
    pub fn method(&self) -> &'static str {
        match self {
            HostAuth::Trust => "trust",
            HostAuth::Password(_) => "password",
            HostAuth::Md5(_) => "md5",
            HostAuth::ScramSha256(_) => "scram-sha-256",
        }
    }

    /// The password of user `postgres`, if the method uses one.
    pub fn password(&self) -> Option<&str> {
        match self {
            HostAuth::Trust => None,
            HostAuth::Password(p) | HostAuth::Md5(p) | HostAuth::ScramSha256(p) => Some(p),
        }
    }
}

/// How to stop a server (`pg_ctl stop -m ...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnect clients, write a shutdown checkpoint, stop. Walsenders send everything written first.
    Fast,
    /// Kill everything at once, like a crash; the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// Options for a new cluster; [`PgClusterBuilder::start`] runs initdb and starts it.
#[derive(Clone, Debug)]
pub struct PgClusterBuilder {
    bindir: Option<PathBuf>,
    wal_segsize_mb: u32,
    host_auth: HostAuth,
    settings: Vec<(String, String)>,
    allow_replication: bool,
    fsync: bool,
    /// pg_hba.conf lines for TCP connections, replacing the two `host` lines of `host_auth`.
    hba: Option<String>,
    /// Files written into the data directory after initdb: name, contents, mode.
    data_files: Vec<(String, Vec<u8>, u32)>,
}

impl Default for PgClusterBuilder {
    fn default() -> Self {
        PgClusterBuilder {
            bindir: None,
            wal_segsize_mb: 1,
            host_auth: HostAuth::Trust,
            settings: Vec::new(),
            allow_replication: true,
            fsync: false,
            hba: None,
            data_files: Vec::new(),
        }
    }
}

impl PgClusterBuilder {
    /// Use the binaries in `dir` instead of [`default_bindir`].
    pub fn bindir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bindir = Some(dir.into());
        self
    }

    /// WAL segment size in MiB (`initdb --wal-segsize`), a power of two from 1 to 1024. Default 1.
    pub fn wal_segsize_mb(mut self, mb: u32) -> Self {
        assert!(
            mb.is_power_of_two() && mb <= 1024,
            "wal_segsize_mb must be a power of two between 1 and 1024, got {mb}"
        );
        self.wal_segsize_mb = mb;
        self
    }

    /// Authentication for TCP connections from 127.0.0.1 (both `all` and `replication`). Default trust.
    pub fn host_auth(mut self, auth: HostAuth) -> Self {
        self.host_auth = auth;
        self
    }

    /// An extra server setting (`key = 'value'` in the config file), applied after the harness's own, so
    /// it can override them. Example: `.setting("wal_keep_size", "1GB")`.
    pub fn setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }

    /// Whether the server allows physical replication (default true: `wal_level = replica`,
    /// `max_wal_senders = 10`, `max_replication_slots = 10`). False gives `wal_level = minimal` and no
    /// walsenders.
    pub fn allow_replication(mut self, yes: bool) -> Self {
        self.allow_replication = yes;
        self
    }

    /// The pg_hba.conf lines for TCP connections (e.g. `hostssl replication all 127.0.0.1/32 cert`),
    /// instead of the `host all` and `host replication` lines of [`host_auth`](Self::host_auth) (whose
    /// password, if any, is still set). Unix-socket connections stay `trust`.
    pub fn hba(mut self, lines: impl Into<String>) -> Self {
        self.hba = Some(lines.into());
        self
    }

    /// A file written into the data directory after initdb with `mode`, owned by the server user
    /// (e.g. the certificate and key for `ssl = on`: the server refuses a key readable by others).
    pub fn data_file(
        mut self,
        name: impl Into<String>,
        contents: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Self {
        self.data_files.push((name.into(), contents.into(), mode));
        self
    }

    /// Whether the server fsyncs (default false: faster, and irrelevant to what clients receive).
    pub fn fsync(mut self, on: bool) -> Self {
        self.fsync = on;
        self
    }

    /// Runs initdb, starts the server on a free port and waits until it accepts connections.
    /// Panics with initdb's output and the server log on failure.
    pub fn start(self) -> PgCluster {
        let mut cluster = PgCluster::new_layout(self, "primary");
        cluster.initdb();
        cluster.first_start();
        if let Some(password) = cluster.config.host_auth.password() {
            let encryption = match cluster.config.host_auth {
                HostAuth::Md5(_) => "md5",
                _ => "scram-sha-256",
            };
            cluster.execute(&format!(
                "SET password_encryption = '{encryption}'; ALTER ROLE postgres PASSWORD {}",
                quote_literal(password)
            ));
        }
        cluster
    }
}

/// A running (or stopped) PostgreSQL cluster that belongs to the test. See the module docs.
#[derive(Debug)]
pub struct PgCluster {
    /// The temp directory holding everything below; `None` only during drop.
    root: Option<TempDir>,
    root_path: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    bindir: PathBuf,
    port: u16,
    config: PgClusterBuilder,
    /// The OS user running the server when the tests run as root.
    user: Option<ServerUser>,
    /// "primary" or "standby", for messages.
    role: &'static str,
    running: AtomicBool,
    initdb_output: String,
    /// Stops the server and removes `root` if the test process dies without running `Drop`.
    guardian: Option<Child>,
}

impl PgCluster {
    /// Options for a new cluster.
    pub fn builder() -> PgClusterBuilder {
        PgClusterBuilder::default()
    }

    /// A cluster with default options (1 MiB segments, trust, replication allowed, fsync off).
    pub fn start_default() -> PgCluster {
        PgCluster::builder().start()
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TCP host: always "127.0.0.1".
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The private directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The data directory (owned by [`SERVER_USER`] when running as root).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `data_dir/pg_wal`.
    pub fn pg_wal_dir(&self) -> PathBuf {
        self.data_dir.join("pg_wal")
    }

    /// The directory of the PostgreSQL binaries this cluster runs.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// A binary for this cluster's major, e.g. `cluster.bin("pg_waldump")`: from its bindir, else from
    /// `WALSINK_PG_CLIENT_BINDIR` (see [`tool`]).
    pub fn bin(&self, name: &str) -> PathBuf {
        tool(&self.bindir, name)
    }

    /// The server log file (stdout and stderr of the postmaster).
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The whole server log so far.
    pub fn log_text(&self) -> String {
        fs::read(&self.log_file)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// How TCP connections authenticate.
    pub fn host_auth(&self) -> &HostAuth {
        &self.config.host_auth
    }

    /// The password of user `postgres` for TCP connections, if the auth method uses one.
    pub fn password(&self) -> Option<&str> {
        self.config.host_auth.password()
    }

    /// WAL segment size in bytes.
    pub fn wal_segsize_bytes(&self) -> u64 {
        u64::from(self.config.wal_segsize_mb) << 20
    }

    /// libpq connection string over TCP, without password: `host=127.0.0.1 port=N user=postgres`.
    pub fn conninfo(&self) -> String {
        format!("host={} port={} user=postgres", self.host(), self.port)
    }

    /// libpq connection string over the Unix socket (always trust): `host=/tmp/.../sock port=N user=postgres`.
    pub fn socket_conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres",
            self.socket_dir.display(),
            self.port
        )
    }

    /// Whether the harness believes the server is running (it was started and not stopped through it).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Runs one or more SQL statements (simple query protocol) as `postgres` over the Unix socket and returns
    /// the rows of all of them, every column as text. Panics with the server's message on error.
    pub fn sql(&self, query: &str) -> Rows {
        self.try_sql(query).unwrap_or_else(|e| {
            panic!(
                "SQL failed on {} (port {}): {query}\n{}\n--- server log tail ---\n{}",
                self.role,
                self.port,
                describe_pg_error(&e),
                self.log_tail(20)
            )
        })
    }

    /// Like [`sql`](Self::sql) but returns the error. Works from inside a tokio runtime too (the query then
    /// runs on a helper thread).
    pub fn try_sql(&self, query: &str) -> Result<Rows, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .application_name("walsink-test-harness")
            .connect_timeout(Duration::from_secs(10));
        let run = move || -> Result<Rows, tokio_postgres::Error> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build a tokio runtime for the harness");
            runtime.block_on(async move {
                let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                let connection = tokio::spawn(connection);
                let result = client.simple_query(query).await;
                drop(client);
                let _ = connection.await;
                let mut rows = Vec::new();
                for message in result? {
                    if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                        rows.push(
                            (0..row.len())
                                .map(|i| row.get(i).map(str::to_owned))
                                .collect(),
                        );
                    }
                }
                Ok(rows)
            })
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| s.spawn(run).join().expect("harness SQL thread panicked"))
        } else {
            run()
        }
    }

    /// The first column of the first row of the (last) result; `None` for NULL. Panics if there are no rows.
    pub fn sql_one(&self, query: &str) -> Option<String> {
        let rows = self.sql(query);
        let row = rows
            .into_iter()
            .next_back()
            .unwrap_or_else(|| panic!("query returned no rows: {query}"));
        row.into_iter()
            .next()
            .unwrap_or_else(|| panic!("query returned no columns: {query}"))
    }

    /// Runs statements for their effect. Panics on error.
    pub fn execute(&self, query: &str) {
        self.sql(query);
    }

    /// Whether the server is in recovery (a standby).
    pub fn is_in_recovery(&self) -> bool {
        self.sql_one("SELECT pg_is_in_recovery()").as_deref() == Some("t")
    }

    /// Stops the server (`pg_ctl stop -m fast|immediate -w`). No-op if it is not running.
    pub fn stop(&self, mode: StopMode) {
        if !self.is_running() {
            return;
        }
        let out = self
            .server_cmd("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode.as_arg(), "-w", "-t", "60"])
            .output()
            .expect("run pg_ctl stop");
        if !out.status.success() {
            panic!(
                "pg_ctl stop -m {} failed on {} (port {}):\n{}\n--- server log tail ---\n{}",
                mode.as_arg(),
                self.role,
                self.port,
                output_text(&out),
                self.log_tail(30)
            );
        }
        self.running.store(false, Ordering::SeqCst);
    }

    /// Starts the stopped server again on the same port and waits until it accepts connections (after crash
    /// recovery, if it was stopped with [`StopMode::Immediate`]). No-op if it is running.
    pub fn start(&self) {
        if self.is_running() {
            return;
        }
        let mut last = String::new();
        for attempt in 0..3 {
            match self.try_pg_ctl_start() {
                Ok(()) => {
                    self.wait_ready();
                    return;
                }
                Err(e) if e.port_in_use => {
                    last = e.text;
                    std::thread::sleep(Duration::from_millis(500 * (attempt + 1)));
                }
                Err(e) => self.start_failed(&e.text),
            }
        }
        self.start_failed(&format!("port {} stayed in use\n{last}", self.port));
    }

    /// Fast stop, then start.
    pub fn restart(&self) {
        self.stop(StopMode::Fast);
        self.start();
    }

    /// Promotes a standby (`pg_ctl promote -w`) and waits until `pg_is_in_recovery()` is false.
    pub fn promote(&self) {
        let out = self
            .server_cmd("pg_ctl")
            .arg("promote")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", "60"])
            .output()
            .expect("run pg_ctl promote");
        if !out.status.success() {
            panic!(
                "pg_ctl promote failed (port {}):\n{}\n--- server log tail ---\n{}",
                self.port,
                output_text(&out),
                self.log_tail(30)
            );
        }
        if !wait_for(|| !self.is_in_recovery(), START_TIMEOUT) {
            panic!(
                "server on port {} still in recovery after promote\n--- server log tail ---\n{}",
                self.port,
                self.log_tail(30)
            );
        }
    }

    /// Creates a streaming standby of this cluster: `pg_basebackup -R -X stream` into a new temp directory,
    /// started on its own port, with the same builder options. Returns once its WAL receiver is streaming.
    /// The standby connects to this cluster over the Unix socket, so host auth does not matter.
    pub fn make_standby(&self) -> PgCluster {
        assert!(self.is_running(), "make_standby needs a running server");
        let mut standby = PgCluster::new_layout(self.config.clone(), "standby");
        standby.bindir = self.bindir.clone();
        let out = standby
            .server_cmd("pg_basebackup")
            .arg("-D")
            .arg(&standby.data_dir)
            .args([
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
                "-U",
                "postgres",
            ])
            .arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .output()
            .expect("run pg_basebackup");
        if !out.status.success() {
            panic!(
                "pg_basebackup from port {} failed:\n{}\n--- primary log tail ---\n{}",
                self.port,
                output_text(&out),
                self.log_tail(30)
            );
        }
        standby.write_primary_conninfo(self);
        standby.first_start();
        let streaming = wait_for(
            || {
                standby
                    .sql("SELECT status FROM pg_stat_wal_receiver")
                    .first()
                    .and_then(|r| r[0].as_deref())
                    == Some("streaming")
            },
            START_TIMEOUT,
        );
        if !streaming {
            panic!(
                "standby on port {} is not streaming from port {}\n--- standby log tail ---\n{}\n\
                 --- primary log tail ---\n{}",
                standby.port,
                self.port,
                standby.log_tail(30),
                self.log_tail(30)
            );
        }
        standby
    }

    /// A new cluster from a data directory another program fills, e.g. `barman recover`: `fill` gets the
    /// empty data directory (mode 0700), owned by `owner` (uid, gid; `None`: the tests' user) while it runs.
    /// The directory then goes to the server user, and the server starts with this cluster's binaries and
    /// the harness's settings (its own port and socket directory; the data directory's `postgresql.conf`
    /// must include the harness's settings file, as every cluster's and its backups' does). Returns once the
    /// server accepts connections and has left recovery.
    pub fn start_recovered(
        &self,
        owner: Option<(u32, u32)>,
        fill: impl FnOnce(&Path),
    ) -> PgCluster {
        let mut c = PgCluster::new_layout(self.config.clone(), "recovered");
        c.bindir = self.bindir.clone();
        if let Some((uid, gid)) = owner {
            chown(&c.data_dir, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", c.data_dir.display()));
        }
        fill(&c.data_dir);
        if let Some(u) = c.user {
            chown_tree(&c.data_dir, u.uid, u.gid);
        }
        c.first_start();
        let promoted = wait_for(|| !c.is_in_recovery(), START_TIMEOUT);
        if !promoted {
            panic!(
                "the recovered server on port {} is still in recovery\n--- log tail ---\n{}",
                c.port,
                c.log_tail(30)
            );
        }
        c
    }

    /// Replaces the `primary_conninfo` that `pg_basebackup -R` wrote into `postgresql.auto.conf` with a
    /// plain one (socket, port, user). A newer pg_basebackup than the server (for majors whose builds lack
    /// it) writes options the server's libpq does not know (18 writes `sslnegotiation`), and the standby
    /// would never connect.
    fn write_primary_conninfo(&self, primary: &PgCluster) {
        let path = self.data_dir.join("postgresql.auto.conf");
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let mut conf: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("primary_conninfo"))
            .map(|l| format!("{l}\n"))
            .collect();
        let conninfo = format!(
            "host={} port={} user=postgres",
            primary.socket_dir.display(),
            primary.port
        );
        conf.push_str(&format!(
            "primary_conninfo = {}\n",
            quote_literal(&conninfo)
        ));
        self.write_owned(&path, &conf);
    }

    /// Forces a switch to a new WAL segment and returns `pg_switch_wal()`'s LSN (end of the switch record).
    /// Writes a tiny WAL record first, so the switch is never a no-op. Primary only.
    pub fn switch_wal(&self) -> String {
        self.sql_one(
            "SELECT pg_logical_emit_message(false, 'walsink-harness', 'switch'); \
             SELECT pg_switch_wal()::text",
        )
        .expect("pg_switch_wal returned NULL")
    }

    /// The current WAL position: `pg_current_wal_lsn()` on a primary; on a standby the last received LSN
    /// (or the replay LSN if nothing was received yet).
    pub fn current_lsn(&self) -> String {
        self.sql_one(
            "SELECT CASE WHEN pg_is_in_recovery() \
               THEN coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text \
               ELSE pg_current_wal_lsn()::text END",
        )
        .expect("no current WAL position")
    }

    /// Writes at least `bytes` of WAL (logical messages, committed, so flushed and visible to walsenders)
    /// and returns `pg_current_wal_lsn()` afterwards. Primary only.
    pub fn generate_wal(&self, bytes: u64) -> String {
        const CHUNK: u64 = 256 * 1024;
        let start = parse_lsn(&self.current_lsn());
        loop {
            let now = parse_lsn(&self.current_lsn());
            let written = now.saturating_sub(start);
            if written >= bytes {
                return super::format_lsn(now);
            }
            let remaining = bytes - written;
            let size = remaining.min(CHUNK);
            let count = remaining.div_ceil(CHUNK).clamp(1, 64);
            self.execute(&format!(
                "SELECT count(pg_logical_emit_message(true, 'walsink-harness', repeat('x', {size}))) \
                 FROM generate_series(1, {count})"
            ));
        }
    }

    /// The database system identifier (`pg_control_system()`); a standby has its primary's.
    pub fn system_identifier(&self) -> u64 {
        self.sql_one("SELECT system_identifier::text FROM pg_control_system()")
            .expect("NULL system identifier")
            .parse()
            .expect("system identifier is a number")
    }

    /// The current timeline: from the current WAL file name on a primary, from the WAL receiver (else the
    /// last checkpoint) on a standby.
    pub fn timeline(&self) -> u32 {
        if self.is_in_recovery() {
            self.sql_one(
                "SELECT coalesce((SELECT received_tli FROM pg_stat_wal_receiver), \
                 (SELECT timeline_id FROM pg_control_checkpoint()))::text",
            )
            .expect("no timeline")
            .parse()
            .expect("timeline is a number")
        } else {
            let name = self
                .sql_one("SELECT pg_walfile_name(pg_current_wal_lsn())")
                .expect("no WAL file name");
            u32::from_str_radix(&name[..8], 16).expect("timeline in WAL file name")
        }
    }

    /// The WAL file name containing `lsn` on the current timeline (`pg_walfile_name`). Primary only.
    pub fn walfile_name(&self, lsn: &str) -> String {
        let lsn = super::format_lsn(parse_lsn(lsn));
        self.sql_one(&format!("SELECT pg_walfile_name('{lsn}')"))
            .expect("NULL WAL file name")
    }

    /// The server's major version (15 for 15.x).
    pub fn major_version(&self) -> u32 {
        let num: u32 = self
            .sql_one("SHOW server_version_num")
            .expect("NULL server_version_num")
            .parse()
            .expect("server_version_num is a number");
        num / 10000
    }

    /// Whether the server answers READ_REPLICATION_SLOT (PostgreSQL 15 and later). Without it walsink
    /// cannot see a slot's restart_lsn: an empty archive starts at the server's current position, and the
    /// messages that name the slot's position are left out.
    pub fn has_read_replication_slot(&self) -> bool {
        self.major_version() >= 15
    }

    /// The last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_text(), n)
    }

    // ---- base backups and archive recovery --------------------------------------------------------------

    /// A base backup of this cluster without WAL (`pg_basebackup -X none -c fast`) in a new cluster
    /// directory, not started: [`start_archive_recovery`](Self::start_archive_recovery) recovers it from a
    /// WAL archive. It gets the builder options of this cluster but none of its extra settings.
    pub fn base_backup_without_wal(&self) -> PgCluster {
        assert!(
            self.is_running(),
            "base_backup_without_wal needs a running server"
        );
        let mut config = self.config.clone();
        config.settings.clear();
        let mut backup = PgCluster::new_layout(config, "restored");
        backup.bindir = self.bindir.clone();
        let out = backup
            .server_cmd("pg_basebackup")
            .arg("-D")
            .arg(&backup.data_dir)
            .args(["-X", "none", "-c", "fast", "--no-sync", "-U", "postgres"])
            .arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .output()
            .expect("run pg_basebackup");
        if !out.status.success() {
            panic!(
                "pg_basebackup -X none from port {} failed:\n{}\n--- primary log tail ---\n{}",
                self.port,
                output_text(&out),
                self.log_tail(30)
            );
        }
        backup
    }

    /// Starts a cluster made by [`base_backup_without_wal`](Self::base_backup_without_wal) in archive
    /// recovery (`recovery.signal`) with `settings` (`restore_command`, `recovery_target_*`, ...) and
    /// `recovery_target_action = 'promote'`, and waits until recovery has ended and the server accepts
    /// writes. Panics with the server log if recovery fails (a FATAL stops the server).
    pub fn start_archive_recovery(&mut self, settings: &[(&str, &str)]) {
        self.config.settings = settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .chain([("recovery_target_action".into(), "promote".into())])
            .collect();
        self.write_owned(&self.data_dir.join("recovery.signal"), "");
        self.first_start();
        if !wait_for(|| !self.is_in_recovery(), START_TIMEOUT) {
            panic!(
                "server on port {} still in recovery\n--- server log tail ---\n{}",
                self.port,
                self.log_tail(40)
            );
        }
    }

    /// Loses the server like a crashed machine: SIGKILLs the postmaster and every process it started,
    /// then deletes the data directory.
    pub fn kill9_and_delete_data(&self) {
        let pid_file = self.data_dir.join("postmaster.pid");
        let postmaster: i32 = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no pid in {}", pid_file.display()));
        let mut pids = vec![postmaster];
        for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            // /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after ')'.
            let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
        for pid in pids {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        self.running.store(false, Ordering::SeqCst);
        let gone = wait_for(
            || !Path::new(&format!("/proc/{postmaster}")).exists(),
            START_TIMEOUT,
        );
        assert!(gone, "postmaster {postmaster} survived SIGKILL");
        fs::remove_dir_all(&self.data_dir)
            .unwrap_or_else(|e| panic!("delete {}: {e}", self.data_dir.display()));
    }

    /// Makes `cmd` run as the OS user that runs the servers (when the tests run as root), so that what it
    /// writes is the servers' to read: an archive that `restore_command` reads, for example.
    pub fn run_as_server_user(cmd: &mut Command) {
        if let Some(u) = server_user() {
            cmd.uid(u.uid).gid(u.gid);
        }
    }

    /// Gives `path` to the OS user that runs the servers (when the tests run as root).
    pub fn give_to_server_user(path: &Path) {
        if let Some(u) = server_user() {
            chown(path, Some(u.uid), Some(u.gid))
                .unwrap_or_else(|e| panic!("chown {} to {SERVER_USER}: {e}", path.display()));
        }
    }

    // ---- construction ----------------------------------------------------------------------------------

    /// Creates the temp directory layout (root, empty data dir, socket dir), owned by the server user.
    fn new_layout(config: PgClusterBuilder, role: &'static str) -> PgCluster {
        let user = server_user();
        let bindir = config.bindir.clone().unwrap_or_else(default_bindir);
        let root = tempfile::Builder::new()
            .prefix("wsk")
            .tempdir_in(temp_base())
            .expect("create cluster temp dir");
        let root_path = root.path().to_path_buf();
        let data_dir = root_path.join("data");
        let socket_dir = root_path.join("sock");
        let log_file = root_path.join("server.log");
        // PostgreSQL insists on 0700 (or 0750) for the data directory; pg_basebackup keeps the mode it finds.
        let mut dir = fs::DirBuilder::new();
        dir.mode(0o700);
        dir.create(&data_dir).expect("create data dir");
        dir.create(&socket_dir).expect("create socket dir");
        if let Some(u) = user {
            for p in [&root_path, &data_dir, &socket_dir] {
                chown(p, Some(u.uid), Some(u.gid))
                    .unwrap_or_else(|e| panic!("chown {} to {SERVER_USER}: {e}", p.display()));
            }
        }
        PgCluster {
            root: Some(root),
            root_path,
            data_dir,
            socket_dir,
            log_file,
            bindir,
            port: 0,
            config,
            user,
            role,
            running: AtomicBool::new(false),
            initdb_output: String::new(),
            guardian: None,
        }
    }

    fn initdb(&mut self) {
        let out = self
            .server_cmd("initdb")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-U", "postgres", "-N", "--no-locale", "-E", "UTF8"])
            .arg(format!("--wal-segsize={}", self.config.wal_segsize_mb))
            .args(["--auth-local=trust", "--auth-host=trust"])
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.bin("initdb").display()));
        self.initdb_output = output_text(&out);
        if !out.status.success() {
            panic!("initdb failed:\n{}", self.initdb_output);
        }
        let method = self.config.host_auth.method();
        let host_lines = self.config.hba.clone().unwrap_or_else(|| {
            format!(
                "host    all          all   127.0.0.1/32  {method}\n\
                 host    replication  all   127.0.0.1/32  {method}\n"
            )
        });
        self.write_owned(
            &self.data_dir.join("pg_hba.conf"),
            &format!(
                "# written by walsink's test harness\n\
                 # TYPE  DATABASE     USER  ADDRESS       METHOD\n\
                 local   all          all                 trust\n\
                 local   replication  all                 trust\n\
                 {host_lines}\n"
            ),
        );
        for (name, contents, mode) in self.config.data_files.clone() {
            let path = self.data_dir.join(&name);
            fs::write(&path, &contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
            if let Some(u) = self.user {
                chown(&path, Some(u.uid), Some(u.gid))
                    .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
            }
        }
        let conf = self.data_dir.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str(&format!("\ninclude '{HARNESS_CONF}'\n"));
        self.write_owned(&conf, &text);
    }

    /// Starts the server for the first time, picking free ports until one binds, then starts the guardian.
    fn first_start(&mut self) {
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port();
            self.write_harness_conf();
            match self.try_pg_ctl_start() {
                Ok(()) => {
                    self.start_guardian();
                    self.wait_ready();
                    return;
                }
                Err(e) if e.port_in_use => last = e.text,
                Err(e) => self.start_failed(&e.text),
            }
        }
        self.start_failed(&format!(
            "no free port after {PORT_ATTEMPTS} attempts\n{last}"
        ));
    }

    fn write_harness_conf(&self) {
        let mut conf = format!(
            "# written by walsink's test harness on every first start\n\
             listen_addresses = '127.0.0.1'\n\
             port = {}\n\
             unix_socket_directories = {}\n\
             fsync = {}\n\
             log_replication_commands = on\n",
            self.port,
            quote_literal(&self.socket_dir.to_string_lossy()),
            if self.config.fsync { "on" } else { "off" },
        );
        if self.config.allow_replication {
            conf.push_str(
                "wal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\n",
            );
        } else {
            conf.push_str("wal_level = minimal\nmax_wal_senders = 0\n");
        }
        match self.config.host_auth {
            HostAuth::Md5(_) => conf.push_str("password_encryption = 'md5'\n"),
            // 13's default is md5, and an md5-stored password cannot answer SCRAM: roles a test creates
            // with a password must get SCRAM verifiers on every major.
            HostAuth::ScramSha256(_) => conf.push_str("password_encryption = 'scram-sha-256'\n"),
            _ => {}
        }
        for (key, value) in &self.config.settings {
            conf.push_str(&format!("{key} = {}\n", quote_literal(value)));
        }
        self.write_owned(&self.data_dir.join(HARNESS_CONF), &conf);
    }

    fn try_pg_ctl_start(&self) -> Result<(), StartError> {
        let log_before = fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);
        let out = self
            .server_cmd("pg_ctl")
            .arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .args(["-w", "-t", &START_TIMEOUT.as_secs().to_string()])
            .output()
            .expect("run pg_ctl start");
        if out.status.success() {
            self.running.store(true, Ordering::SeqCst);
            return Ok(());
        }
        let new_log = read_from(&self.log_file, log_before);
        let text = format!(
            "{}\n--- server log ---\n{}",
            output_text(&out),
            tail(&new_log, 40)
        );
        let port_in_use = [
            "could not bind",
            "Address already in use",
            "could not create any TCP/IP sockets",
        ]
        .iter()
        .any(|needle| text.contains(needle));
        Err(StartError { port_in_use, text })
    }

    /// Polls a connection until it works (pg_ctl -w already waited for "ready"; this also covers the socket).
    fn wait_ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.try_sql("SELECT 1") {
                Ok(_) => return,
                Err(e) if Instant::now() >= deadline => self.start_failed(&format!(
                    "no connection within {START_TIMEOUT:?}: {}",
                    describe_pg_error(&e)
                )),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn start_failed(&self, what: &str) -> ! {
        panic!(
            "PostgreSQL {} failed to start (data {}, port {}, bindir {}):\n{what}\n\
             --- server log tail ---\n{}\n--- initdb output ---\n{}",
            self.role,
            self.data_dir.display(),
            self.port,
            self.bindir.display(),
            self.log_tail(40),
            self.initdb_output
        );
    }

    /// Starts the guardian: a shell loop, in its own process group and as the server user, that waits for
    /// this test process to exit and then stops the server and removes the temp dir. `Drop` kills it first.
    fn start_guardian(&mut self) {
        if self.guardian.is_some() {
            return;
        }
        let script = r#"while [ -d "/proc/$1" ] && [ -d "$2" ]; do sleep 1; done
if [ -d "$2" ]; then
  "$3" stop -D "$4" -m immediate -w -t 30 >/dev/null 2>&1
  [ "$5" = remove ] && rm -rf "$2"
fi"#;
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .arg("walsink-pg-guardian")
            .arg(std::process::id().to_string())
            .arg(&self.root_path)
            .arg(self.bin("pg_ctl"))
            .arg(&self.data_dir)
            .arg(if keep_temp() { "keep" } else { "remove" })
            .current_dir(&self.root_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        clean_env(&mut cmd);
        if let Some(u) = self.user {
            cmd.uid(u.uid).gid(u.gid);
        }
        // Best effort: without a guardian, only a test process killed outright leaks the server.
        self.guardian = cmd.spawn().ok();
    }

    /// A command for a server-side binary: clean environment, run as the server user when root.
    fn server_cmd(&self, prog: &str) -> Command {
        let mut cmd = Command::new(self.bin(prog));
        clean_env(&mut cmd);
        cmd.env("HOME", &self.root_path)
            .env("LC_ALL", "C")
            .current_dir(&self.root_path)
            .stdin(Stdio::null());
        if let Some(u) = self.user {
            cmd.uid(u.uid).gid(u.gid);
        }
        cmd
    }

    /// Writes a file and gives it to the server user.
    fn write_owned(&self, path: &Path, contents: &str) {
        fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        if let Some(u) = self.user {
            chown(path, Some(u.uid), Some(u.gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(mut guardian) = self.guardian.take() {
            let _ = guardian.kill();
            let _ = guardian.wait();
        }
        if self.data_dir.join("postmaster.pid").exists() {
            let stopped = self
                .server_cmd("pg_ctl")
                .arg("stop")
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-m", "immediate", "-w", "-t", "30"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !stopped {
                kill_postmaster(&self.data_dir);
            }
        }
        // Without WALSINK_KEEP_TEMP, the TempDir is dropped here, which removes the directory.
        let root = self.root.take();
        if let Some(root) = root
            && keep_temp()
        {
            let path = root.keep();
            eprintln!(
                "WALSINK_KEEP_TEMP: kept PostgreSQL {} in {}",
                self.role,
                path.display()
            );
        }
    }
}

struct StartError {
    port_in_use: bool,
    text: String,
}

/// SIGKILLs the postmaster named in `postmaster.pid`, if that process still is a postgres.
fn kill_postmaster(data_dir: &Path) {
    let Ok(text) = fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return;
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        return;
    };
    let is_postgres = fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("postgres"));
    if pid > 0 && is_postgres {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// What systemd gives a service and walsink (or a PostgreSQL built with systemd support) acts on: when
/// the suite itself runs as a service or under journald, children must not inherit them (no timestamps
/// under `JOURNAL_STREAM`, notifications to the suite's own manager). Tests that want them set them.
pub(crate) const SERVICE_VARS: [&str; 4] = [
    "JOURNAL_STREAM",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// Removes PG* variables (PGDATA, PGPORT, PGHOST, ...) so the developer's environment cannot leak in,
/// and the systemd variables of [`SERVICE_VARS`].
pub(crate) fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    for key in SERVICE_VARS {
        cmd.env_remove(key);
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close).
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// SQL string literal: `'...'` with quotes doubled.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn output_text(out: &Output) -> String {
    format!(
        "exit status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut text = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(offset));
        let _ = f.read_to_end(&mut text);
    }
    String::from_utf8_lossy(&text).into_owned()
}

fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

// ---- binaries -------------------------------------------------------------------------------------------

/// The default PostgreSQL bindir: `WALSINK_PG_BINDIR`, else `pg_config --bindir` (if it has initdb), else the
/// highest `/usr/lib/postgresql/*/bin`. Panics with a hint if none is found.
pub fn default_bindir() -> PathBuf {
    static BINDIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINDIR
        .get_or_init(find_bindir)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn find_bindir() -> Result<PathBuf, String> {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file();
    if let Some(dir) = std::env::var_os("WALSINK_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return if has_initdb(&dir) {
            Ok(dir)
        } else {
            Err(format!("WALSINK_PG_BINDIR={} has no initdb", dir.display()))
        };
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_initdb(&dir) {
            return Ok(dir);
        }
    }
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let Ok(major) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let dir = entry.path().join("bin");
            if has_initdb(&dir) && best.as_ref().is_none_or(|(m, _)| major > *m) {
                best = Some((major, dir));
            }
        }
    }
    best.map(|(_, dir)| dir).ok_or_else(|| {
        "no PostgreSQL server binaries found: run scripts/install-deps.sh, or set WALSINK_PG_BINDIR to a \
         directory containing initdb, pg_ctl and postgres"
            .to_owned()
    })
}

/// The bindir for one major version: `WALSINK_PG<major>_BINDIR` (e.g. `WALSINK_PG17_BINDIR`), else
/// `/usr/lib/postgresql/<major>/bin`; `None` if neither has initdb. For tests that run a scenario per major.
pub fn bindir_for_major(major: u32) -> Option<PathBuf> {
    let dir = std::env::var_os(format!("WALSINK_PG{major}_BINDIR"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")));
    dir.join("initdb").is_file().then_some(dir)
}

/// A binary for the default bindir's major, e.g. `pg_bin("pg_waldump")` (see [`tool`]).
pub fn pg_bin(name: &str) -> PathBuf {
    tool(&default_bindir(), name)
}

/// Tools that read a server's files (WAL pages, `pg_control`), whose format changes with the major: one of
/// another major refuses them ("invalid magic number", "could not find a valid record").
const SAME_MAJOR_TOOLS: &[&str] = &["pg_waldump", "pg_controldata"];

/// The program `name` for servers from `bindir`: `bindir/name` if it exists, else from
/// `WALSINK_PG_CLIENT_BINDIR`; for [`SAME_MAJOR_TOOLS`] only if that directory's `postgres` or the tool
/// itself is of the same major as `bindir`'s `postgres`. Panics naming both directories otherwise.
pub fn tool(bindir: &Path, name: &str) -> PathBuf {
    let own = bindir.join(name);
    if own.is_file() {
        return own;
    }
    let Some(client_dir) = std::env::var_os("WALSINK_PG_CLIENT_BINDIR").map(PathBuf::from) else {
        panic!(
            "{} has no {name}; set WALSINK_PG_CLIENT_BINDIR to a bindir that has it (a newer major's: \
             scripts/install-pg-majors.sh installs them)",
            bindir.display()
        );
    };
    let other = client_dir.join(name);
    if !other.is_file() {
        panic!(
            "neither {} nor WALSINK_PG_CLIENT_BINDIR={} has {name}",
            bindir.display(),
            client_dir.display()
        );
    }
    if SAME_MAJOR_TOOLS.contains(&name) {
        let server = tool_major(&bindir.join("postgres"));
        let theirs = tool_major(&other);
        if server != theirs {
            panic!(
                "{} has no {name}, and the one in WALSINK_PG_CLIENT_BINDIR={} is of major {theirs:?}, not \
                 {server:?}: {name} only reads files of its own major (scripts/install-pg-majors.sh puts a \
                 matching one next to the server)",
                bindir.display(),
                client_dir.display()
            );
        }
    }
    other
}

/// The major version a PostgreSQL program reports with `--version` ("pg_waldump (PostgreSQL) 13.16" -> 13).
pub fn tool_major(program: &Path) -> Option<u32> {
    let out = Command::new(program).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split(')').nth(1)?.split_whitespace().next()?;
    version.split('.').next()?.parse().ok()
}

/// pg_receivewal from the default bindir, for interchange tests (it runs fine as root).
pub fn pg_receivewal() -> PathBuf {
    pg_bin("pg_receivewal")
}

/// Gives `dir` and everything under it (not following links) to `uid`:`gid`.
fn chown_tree(dir: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", dir.display()));
    if fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            chown_tree(&entry.expect("read dir entry").path(), uid, gid);
        }
    }
}

/// An OS user for a tool the tests run as another user (Barman), created on first use, as (uid, gid);
/// `None` when the tests do not run as root (the tool then runs as the tests' user).
pub fn os_user(name: &str) -> Option<(u32, u32)> {
    server_user()?;
    let u = ensure_os_user(name);
    Some((u.uid, u.gid))
}

/// A temp directory (mode 0700) under the temp base, owned by `owner` (uid, gid) when given.
pub fn temp_dir_for(prefix: &str, owner: Option<(u32, u32)>) -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(temp_base())
        .expect("create temp dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).expect("chmod temp dir");
    if let Some((uid, gid)) = owner {
        chown(dir.path(), Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", dir.path().display()));
    }
    dir
}

// ---- the server OS user ---------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct ServerUser {
    uid: u32,
    gid: u32,
}

/// `None` when not root (the servers run as the test's own user); otherwise [`SERVER_USER`], created once.
fn server_user() -> Option<ServerUser> {
    static USER: OnceLock<Option<ServerUser>> = OnceLock::new();
    *USER.get_or_init(|| {
        // SAFETY: geteuid(2) cannot fail and has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        Some(ensure_os_user(SERVER_USER))
    })
}

/// Looks the user up and creates it if missing. Parallel test processes serialize on a file lock: useradd's
/// own "already exists" check is not atomic, and concurrent useradds rewrite each other's entry (with
/// different ids), so a process could otherwise run a server under an id that no longer exists.
fn ensure_os_user(name: &str) -> ServerUser {
    if let Some(user) = lookup_user(name) {
        return user;
    }
    let lock_dir = Path::new("/run/lock");
    let lock_path = if lock_dir.is_dir() {
        lock_dir.to_path_buf()
    } else {
        temp_base()
    }
    .join("walsink-test-useradd.lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("open {}: {e}", lock_path.display()));
    // SAFETY: flock(2) on a descriptor we own; it is released when `lock` is closed at the end.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        panic!(
            "flock {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        );
    }
    if let Some(user) = lookup_user(name) {
        return user;
    }
    let useradd = ["/usr/sbin/useradd", "/sbin/useradd"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("useradd");
    let out = Command::new(useradd)
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ])
        .args(["--comment", "walsink test PostgreSQL servers", name])
        .output()
        .unwrap_or_else(|e| {
            panic!("tests run as root and need {useradd} to create the OS user {name}: {e}")
        });
    // A useradd from outside this harness may have won a race ("already exists"); the lookup decides.
    lookup_user(name).unwrap_or_else(|| {
        panic!(
            "could not create the OS user {name} to run PostgreSQL as (tests run as root):\n{}",
            output_text(&out)
        )
    })
}

fn lookup_user(name: &str) -> Option<ServerUser> {
    let cname = CString::new(name).ok()?;
    // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids); getpwnam_r fills it.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, and `buf.len()` is the buffer's real size.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(ServerUser {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}
