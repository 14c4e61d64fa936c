//! Barman drives walsink as its pg_receivewal, as an operator would set it up: Barman 3.19.1 from PyPI (installed
//! by scripts/install-deps.sh into a venv, `WALSINK_BARMAN_VENV`, default /opt/walsink-barman), run as its own
//! OS user (`walsink_barman` when the tests run as root), `streaming_archiver = on` with `create_slot = auto`, and
//! a `path_prefix` whose `pg_receivewal` is a symbolic link to walsink, against a real primary. The whole life of
//! a Barman server: `barman check`, `barman cron` starting receive-wal, `switch-wal --archive`, `backup`,
//! receive-wal stopped and started again, `--synchronous` once `synchronous_standby_names` names
//! `barman_receive_wal`, `barman recover` to the end and to a named restore point (the recovered servers hold
//! exactly the rows they must), and a last `barman check` with nothing in Barman's `errors/` directory.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tempfile::TempDir;

use crate::harness::pg::{os_user, temp_dir_for};
use crate::harness::{PgCluster, PgReceivewalLink, WAIT, Walsink, clean_command, wait_for};

/// Barman's OS user when the tests run as root (created on first use).
const BARMAN_USER: &str = "walsink_barman";

/// The Barman server name in the configuration.
const SERVER: &str = "pg";

/// Upper bound for one Barman command (a backup or a `switch-wal --archive` waits for WAL).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The barman executable of the venv scripts/install-deps.sh makes.
fn barman_bin() -> PathBuf {
    let venv = std::env::var_os("WALSINK_BARMAN_VENV")
        .map_or_else(|| PathBuf::from("/opt/walsink-barman"), PathBuf::from);
    let bin = venv.join("bin/barman");
    assert!(
        bin.is_file(),
        "{} not found: run scripts/install-deps.sh (it installs Barman from PyPI into {})",
        bin.display(),
        venv.display()
    );
    bin
}

/// A Barman installation configured for one server, `pg`: its home, its configuration file, and the
/// `path_prefix` directory with the `pg_receivewal` link. Dropping it stops receive-wal.
struct Barman {
    bin: PathBuf,
    home: TempDir,
    conf: PathBuf,
    /// uid and gid of Barman's OS user (`None`: the tests' own user).
    user: Option<(u32, u32)>,
    _link: PgReceivewalLink,
}

impl Barman {
    /// Barman's home (0700, owned by Barman's user) and configuration for `pg`.
    fn new(pg: &PgCluster) -> Barman {
        let bin = barman_bin();
        let user = os_user(BARMAN_USER);
        // walsink itself is copied into the link's directory, so Barman's user can run it wherever the
        // build is (a checkout under /root is not traversable by other users).
        let link = PgReceivewalLink::with_copy();
        let home = temp_dir_for("wsk-barman", user);
        let conf = home.path().join("barman.conf");
        let path_prefix = format!("{}:{}", link.dir().display(), pg.bindir().display());
        let conninfo = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            pg.port()
        );
        let text = format!(
            "[barman]\n\
             barman_home = {home}\n\
             barman_user = {user}\n\
             log_file = {home}/barman.log\n\
             log_level = INFO\n\
             \n\
             [{SERVER}]\n\
             description = walsink as pg_receivewal\n\
             conninfo = {conninfo}\n\
             streaming_conninfo = {conninfo}\n\
             backup_method = postgres\n\
             streaming_archiver = on\n\
             slot_name = barman\n\
             create_slot = auto\n\
             path_prefix = {path_prefix}\n\
             immediate_checkpoint = true\n",
            home = home.path().display(),
            user = if user.is_some() {
                BARMAN_USER.to_owned()
            } else {
                whoami()
            },
        );
        fs::write(&conf, text).expect("write barman.conf");
        fs::set_permissions(&conf, fs::Permissions::from_mode(0o644)).expect("chmod barman.conf");
        Barman {
            bin,
            home,
            conf,
            user,
            _link: link,
        }
    }

    /// `barman -c <conf> <args>` as Barman's user.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = match self.user {
            Some(_) => {
                let mut c = clean_command("runuser");
                c.args(["-u", BARMAN_USER, "--"]).arg(&self.bin);
                c
            }
            None => clean_command(&self.bin),
        };
        cmd.arg("-c").arg(&self.conf).args(args);
        cmd.env("LANG", "C.UTF-8").env("LC_ALL", "C.UTF-8");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        Walsink::run_command(self.cmd(args), COMMAND_TIMEOUT)
    }

    /// Runs `barman <args>`, which must succeed; returns its stdout and stderr together.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let text = text(&out);
        assert!(
            out.status.success(),
            "barman {} failed ({:?}):\n{text}\n--- barman.log (tail) ---\n{}",
            args.join(" "),
            out.status,
            self.log_tail(40)
        );
        text
    }

    /// `barman check pg`: exits 0 and every check says OK; returns the output.
    fn check_all_ok(&self) -> String {
        let out = self.run(&["check", SERVER]);
        let text = text(&out);
        let failed: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with('\t') && !l.contains(": OK"))
            .collect();
        assert!(
            out.status.success() && failed.is_empty(),
            "barman check: {failed:?} ({:?})\n{text}\n--- barman.log (tail) ---\n{}",
            out.status,
            self.log_tail(40)
        );
        for check in [
            "pg_receivexlog: OK",
            "pg_receivexlog compatible: OK",
            "replication slot: OK",
            "receive-wal running: OK",
            "archiver errors: OK",
        ] {
            assert!(
                text.contains(check),
                "barman check lacks {check:?}:\n{text}"
            );
        }
        text
    }

    /// `barman switch-wal --force --archive pg`, with WAL flowing meanwhile: Barman's archiver leaves the
    /// newest completed segment in the streaming directory until the next `.partial` exists, which takes the
    /// server's next WAL record (an idle server writes one every 15 s or so).
    fn switch_wal_and_archive(&self, pg: &PgCluster) -> String {
        with_wal_flowing(pg, || {
            self.ok(&[
                "switch-wal",
                "--force",
                "--archive",
                "--archive-timeout",
                "60",
                SERVER,
            ])
        })
    }

    fn server_dir(&self) -> PathBuf {
        self.home.path().join(SERVER)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.home.path().join("barman.log")).unwrap_or_default()
    }

    fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `barman recover pg latest <data dir of a new cluster> <extra>`, then starts that cluster (it ends
    /// recovery on its own).
    fn recover(&self, primary: &PgCluster, extra: &[&str]) -> PgCluster {
        primary.start_recovered(self.user, |data| {
            let data = data.to_str().expect("UTF-8 temp path");
            let mut args = vec!["recover", SERVER, "latest", data];
            args.extend_from_slice(extra);
            self.ok(&args);
        })
    }
}

impl Drop for Barman {
    fn drop(&mut self) {
        // Stops the receiver Barman started (walsink), also when the test failed.
        let _ = Walsink::run_command(
            self.cmd(&["receive-wal", "--stop", SERVER]),
            COMMAND_TIMEOUT,
        );
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| "root".into())
}

/// Runs `f` while a thread writes a small WAL record every 200 ms.
fn with_wal_flowing<T>(pg: &PgCluster, f: impl FnOnce() -> T) -> T {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                pg.execute("SELECT pg_logical_emit_message(false, 'walsink-barman-test', 'tick')");
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let out = f();
        stop.store(true, Ordering::Relaxed);
        out
    })
}

/// The receiver's row in pg_stat_replication: (state, sync_state), if it is connected.
fn receiver(pg: &PgCluster) -> Option<(String, String)> {
    pg.sql(
        "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = 'barman_receive_wal'",
    )
    .into_iter()
    .next()
    .map(|r| (r[0].clone().unwrap_or_default(), r[1].clone().unwrap_or_default()))
}

/// The command lines of the running processes started through `link_dir` (walsink as pg_receivewal).
fn receiver_command_lines(link_dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        if let Ok(raw) = fs::read(e.path().join("cmdline")) {
            let line = raw
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ");
            if line.starts_with(&link_dir.join("pg_receivewal").display().to_string()) {
                found.push(line);
            }
        }
    }
    found
}

fn count_rows(pg: &PgCluster) -> (i64, i64) {
    let row = pg
        .sql("SELECT count(*)::text, coalesce(max(x), 0)::text FROM t")
        .remove(0);
    let n = |v: &Option<String>| {
        v.as_deref()
            .expect("not NULL")
            .parse::<i64>()
            .expect("a number")
    };
    (n(&row[0]), n(&row[1]))
}

#[test]
fn barman_streams_backs_up_and_recovers_through_walsink() {
    let pg = PgCluster::start_default();
    let barman = Barman::new(&pg);
    let link_dir = barman._link.dir().to_path_buf();
    let streaming = barman.server_dir().join("streaming");

    // barman cron starts receive-wal, which creates the slot (create_slot = auto) and runs walsink.
    barman.ok(&["cron"]);
    assert!(
        wait_for(
            || receiver(&pg).is_some_and(|(state, _)| state == "streaming"),
            WAIT
        ),
        "receive-wal did not start streaming:\n{}",
        barman.log_tail(40)
    );
    assert!(
        streaming.join(".walsink.lock").is_file(),
        "the receiver is not walsink: {:?}",
        fs::read_dir(&streaming).map(|d| d.count())
    );
    // The slot is initialised at once (walsink reports its start position right away), even before WAL.
    let check = barman.run(&["check", SERVER]);
    assert!(
        text(&check).contains("replication slot: OK"),
        "{}",
        text(&check)
    );

    // The first WAL reaches Barman's archive; then every check is OK.
    barman.switch_wal_and_archive(&pg);
    barman.check_all_ok();

    // A base backup, then data, a named restore point, more data.
    with_wal_flowing(&pg, || barman.ok(&["backup", SERVER, "--wait"]));
    pg.execute("CREATE TABLE t (x integer PRIMARY KEY)");
    pg.execute("INSERT INTO t SELECT generate_series(1, 100)");
    pg.execute("SELECT pg_create_restore_point('walsink_rp1')");
    pg.execute("INSERT INTO t SELECT generate_series(101, 200)");

    // receive-wal stopped and started again: walsink resumes from its directory.
    barman.ok(&["receive-wal", "--stop", SERVER]);
    assert!(
        wait_for(
            || receiver(&pg).is_none() && receiver_command_lines(&link_dir).is_empty(),
            WAIT
        ),
        "walsink did not stop: {:?}",
        receiver_command_lines(&link_dir)
    );
    barman.ok(&["cron"]);
    assert!(
        wait_for(
            || receiver(&pg).is_some_and(|(state, _)| state == "streaming"),
            WAIT
        ),
        "receive-wal did not start again:\n{}",
        barman.log_tail(40)
    );
    pg.execute("INSERT INTO t SELECT generate_series(201, 300)");

    // --synchronous: Barman passes it when synchronous_standby_names names barman_receive_wal.
    pg.execute("ALTER SYSTEM SET synchronous_standby_names = 'barman_receive_wal'");
    pg.execute("SELECT pg_reload_conf()");
    barman.ok(&["receive-wal", "--stop", SERVER]);
    assert!(
        wait_for(|| receiver(&pg).is_none(), WAIT),
        "walsink did not stop"
    );
    barman.ok(&["cron"]);
    assert!(
        wait_for(
            || receiver(&pg).is_some_and(|(_, sync)| sync == "sync"),
            WAIT
        ),
        "walsink is not the synchronous standby: {:?}\n{}",
        receiver(&pg),
        barman.log_tail(40)
    );
    let lines = receiver_command_lines(&link_dir);
    assert!(
        lines.len() == 1
            && lines[0].contains("--synchronous")
            && lines[0].contains("--slot=barman"),
        "{lines:?}"
    );
    // Commits wait for walsink's flush, and get it.
    pg.execute("INSERT INTO t SELECT generate_series(301, 400)");
    barman.switch_wal_and_archive(&pg);
    pg.execute("ALTER SYSTEM RESET synchronous_standby_names");
    pg.execute("SELECT pg_reload_conf()");
    assert_eq!(count_rows(&pg), (400, 400));

    // Recovery to the end of the archived WAL: every row.
    let recovered = barman.recover(&pg, &[]);
    assert_eq!(count_rows(&recovered), (400, 400), "recovered to the end");
    drop(recovered);
    // Recovery to the named restore point: the rows written before it only.
    let recovered = barman.recover(
        &pg,
        &["--target-name", "walsink_rp1", "--target-action", "promote"],
    );
    assert_eq!(
        count_rows(&recovered),
        (100, 100),
        "recovered to walsink_rp1"
    );
    drop(recovered);

    // All OK still, and Barman never found a file it did not know in walsink's streaming directory.
    barman.check_all_ok();
    let errors: Vec<String> = fs::read_dir(barman.server_dir().join("errors"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        errors.is_empty(),
        "Barman moved files into errors/: {errors:?}"
    );

    // walsink's messages reached Barman's log in pg_receivewal's form, information but no debug lines.
    let log = barman.log();
    assert!(
        log.contains(&format!(
            "{SERVER}: pg_receivewal: starting log streaming at "
        )),
        "{}",
        barman.log_tail(60)
    );
    assert!(
        !log.contains("opened and locked archive directory"),
        "debug output in Barman's log:\n{}",
        barman.log_tail(60)
    );
}
