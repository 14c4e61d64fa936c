//! No silent gaps, and a full disk: WAL the server no longer has stops walsink with exit 14 and the
//! missing range unless `--allow-gap` records the gap; ENOSPC pauses the writer until space returns.
//!
//! Both scenarios use real PostgreSQL with 1 MiB segments. The disk-full one mounts a small tmpfs (or, where
//! tmpfs cannot be mounted, a loop-mounted ext4 image) as the archive's filesystem; that needs root.

use std::fs;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::harness::{
    PgCluster, WAIT, Walsink, WalsinkProcess, archive, create_slot, format_lsn, parse_lsn,
    restart_lsn, wait_for,
};

/// Upper bound for a walsink run that should end by itself.
const TIMEOUT: Duration = Duration::from_secs(120);
/// Segment size of the clusters here.
const SEG: u64 = 1 << 20;

const SLOT: &str = "gapslot";

/// `walsink receive -S SLOT -d <pg> -w -s 1 -D <dir> <extra>`.
fn receive(pg: &PgCluster, dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Walsink::cmd(["receive", "-S", SLOT, "-w", "-s", "1", "-d", &pg.conninfo()]);
    cmd.arg("-D").arg(dir).args(extra);
    cmd
}

fn run(cmd: Command) -> (Option<i32>, String) {
    let out: Output = Walsink::run_command(cmd, TIMEOUT);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn slot_column(pg: &PgCluster, column: &str) -> Option<String> {
    pg.sql_one(&format!(
        "SELECT {column}::text FROM pg_replication_slots WHERE slot_name = '{SLOT}'"
    ))
}

/// The start LSN of a segment file name (timeline 1 layout; 1 MiB segments: 4096 per xlogid).
fn segment_lsn(name: &str) -> u64 {
    let hi = u64::from_str_radix(&name[8..16], 16).unwrap();
    let lo = u64::from_str_radix(&name[16..24], 16).unwrap();
    (hi * (0x1_0000_0000 / SEG) + lo) * SEG
}

fn segment_name(lsn: u64) -> String {
    let segno = lsn / SEG;
    let per = 0x1_0000_0000 / SEG;
    format!("{:08X}{:08X}{:08X}", 1, segno / per, segno % per)
}

fn on_server(pg: &PgCluster, name: &str) -> bool {
    pg.sql_one(&format!(
        "SELECT count(*)::text FROM pg_ls_waldir() WHERE name = '{name}'"
    ))
    .as_deref()
        == Some("1")
}

/// Asserts that the completed segments of `dir` from `first` on are consecutive and byte-identical to pg_wal's,
/// and that a `.partial` (if any) is the next one. Returns how many completed segments were compared.
fn assert_gapless_from(dir: &Path, pg: &PgCluster, first: u64) -> usize {
    let completed: Vec<String> = archive::completed_segments(dir)
        .into_iter()
        .filter(|n| segment_lsn(n) >= first)
        .collect();
    let mut expected = first;
    for name in &completed {
        assert_eq!(
            name,
            &segment_name(expected),
            "archive is not gapless from {}: {:?}",
            format_lsn(first),
            archive::list(dir)
        );
        let archived = fs::read(dir.join(name)).unwrap();
        let original = fs::read(pg.pg_wal_dir().join(name))
            .unwrap_or_else(|e| panic!("{name} is not in pg_wal any more: {e}"));
        assert!(archived == original, "{name} differs from pg_wal's");
        expected += SEG;
    }
    for p in archive::partial_segments(dir) {
        let lsn = segment_lsn(&p);
        assert!(
            lsn < first || lsn == expected,
            ".partial {p} does not follow the completed segments: {:?}",
            archive::list(dir)
        );
    }
    completed.len()
}

/// The slot is invalidated by max_slot_wal_keep_size while walsink is stopped: exit 14 naming the missing range;
/// `--allow-gap` continues from the oldest WAL the server has and records the gap; a later start reports it.
#[test]
fn invalidated_slot_stops_with_the_range_and_allow_gap_records_it() {
    let pg = PgCluster::builder()
        .setting("max_slot_wal_keep_size", "2MB")
        .setting("wal_keep_size", "0")
        .setting("min_wal_size", "2MB")
        .setting("max_wal_size", "64MB")
        .start();
    if pg.major_version() < 13 {
        eprintln!("max_slot_wal_keep_size needs PostgreSQL 13; skipped");
        return;
    }
    create_slot(&pg, SLOT);
    let dir = tempfile::tempdir().unwrap();

    // 1. Stream a little through the slot, then stop.
    let end1 = parse_lsn(&pg.generate_wal(64 << 10));
    let (code, stderr) = run(receive(&pg, dir.path(), &["-n", "-E", &format_lsn(end1)]));
    assert_eq!(code, Some(0), "first run:\n{stderr}");
    let partial = archive::partial_segments(dir.path());
    assert_eq!(partial.len(), 1, "{:?}", archive::list(dir.path()));
    let needed = partial[0].trim_end_matches(".partial").to_owned();
    let from = segment_lsn(&needed);
    assert_eq!(from, end1 / SEG * SEG);

    // 2. While walsink is stopped, the server moves on until the slot is lost and the segment is gone.
    let lost = |pg: &PgCluster| slot_column(pg, "wal_status").as_deref() == Some("lost");
    for _ in 0..40 {
        if lost(&pg) && !on_server(&pg, &needed) {
            break;
        }
        pg.generate_wal(512 << 10);
        pg.switch_wal();
        pg.execute("CHECKPOINT");
    }
    assert!(
        lost(&pg),
        "slot never lost: {:?}",
        slot_column(&pg, "wal_status")
    );
    assert!(!on_server(&pg, &needed), "the server kept {needed}");
    assert_eq!(
        restart_lsn(&pg, SLOT),
        None,
        "an invalidated slot has no restart_lsn"
    );

    // 3. Without --allow-gap: exit 14, naming the range up to the oldest segment the server has.
    let oldest_name = pg
        .sql_one("SELECT min(name) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'")
        .unwrap();
    let oldest = segment_lsn(&oldest_name);
    assert!(oldest > from);
    // Before PostgreSQL 18 the server accepts the invalidated physical slot and fails once it looks
    // for the segment; from 18 on it refuses the slot itself, from any position, until it is
    // re-created.
    let slot_refused = pg.major_version() >= 18;
    let before = archive::list(dir.path());
    let (code, stderr) = run(receive(&pg, dir.path(), &[]));
    assert_eq!(code, Some(14), "expected exit 14:\n{stderr}");
    let range = format!(
        "the server no longer has WAL from {} (segment {needed}) to {}: the oldest WAL it still has starts at {} (segment {oldest_name})",
        format_lsn(from),
        format_lsn(oldest),
        format_lsn(oldest)
    );
    let server_cause = if slot_refused {
        format!("can no longer access replication slot \"{SLOT}\"")
    } else {
        format!("requested WAL segment {needed} has already been removed")
    };
    let mut needles = vec![
        range.clone(),
        server_cause.clone(),
        "--allow-gap".to_owned(),
    ];
    // Only PostgreSQL 15 and later answer READ_REPLICATION_SLOT, which tells walsink why.
    if pg.has_read_replication_slot() {
        needles.push(format!("replication slot \"{SLOT}\" has no restart_lsn"));
    }
    for needle in &needles {
        assert!(
            stderr.contains(needle),
            "stderr lacks {needle:?}:\n{stderr}"
        );
    }
    if slot_refused {
        assert!(
            stderr.contains("--drop-slot, then --create-slot"),
            "the hint says to re-create the slot:\n{stderr}"
        );
    }
    let no_gap_recorded = |why: &str| {
        assert!(
            !fs::read_to_string(dir.path().join(".walsink.meta"))
                .unwrap()
                .contains("gap"),
            "{why}"
        );
        assert_eq!(archive::list(dir.path()), before, "the archive was changed");
    };
    no_gap_recorded("no gap may be recorded without --allow-gap");

    // 3b. PostgreSQL 18 on: --allow-gap cannot continue through the refused slot either, so it records
    // nothing and exits 14; re-creating the slot (as the hint says) lets the run below record the gap.
    if slot_refused {
        let (code, stderr) = run(receive(&pg, dir.path(), &["--allow-gap"]));
        assert_eq!(
            code,
            Some(14),
            "--allow-gap with the refused slot:\n{stderr}"
        );
        for needle in [
            range.as_str(),
            server_cause.as_str(),
            "--drop-slot, then --create-slot",
            "no gap was recorded",
        ] {
            assert!(
                stderr.contains(needle),
                "stderr lacks {needle:?}:\n{stderr}"
            );
        }
        no_gap_recorded("no gap may be recorded while the slot is refused");
        let (code, stderr) = run(Walsink::cmd([
            "receive",
            "-S",
            SLOT,
            "--drop-slot",
            "-w",
            "-d",
            &pg.conninfo(),
        ]));
        assert_eq!(code, Some(0), "--drop-slot failed:\n{stderr}");
        create_slot(&pg, SLOT);
        assert_eq!(slot_column(&pg, "wal_status").as_deref(), Some("reserved"));
    }

    // 4. With --allow-gap: continue from the oldest WAL, record the gap, stop at -E.
    let end2 = parse_lsn(&pg.generate_wal(2 * SEG + (SEG / 2)));
    let (code, stderr) = run(receive(
        &pg,
        dir.path(),
        &["--allow-gap", "-E", &format_lsn(end2)],
    ));
    assert_eq!(code, Some(0), "--allow-gap run:\n{stderr}");
    let accepted = format!(
        "--allow-gap: accepting a gap in the archive: the server no longer has WAL {}..{}",
        format_lsn(from),
        format_lsn(oldest)
    );
    let warn_line = stderr
        .lines()
        .find(|l| l.contains(&accepted))
        .unwrap_or_else(|| panic!("stderr lacks {accepted:?}:\n{stderr}"));
    assert!(warn_line.contains("WARN"), "{warn_line}");
    assert!(
        warn_line.contains("the oldest WAL the server still has"),
        "the log says which position it continues from and why: {warn_line}"
    );
    let meta = fs::read_to_string(dir.path().join(".walsink.meta")).unwrap();
    let gap_lines: Vec<&str> = meta.lines().filter(|l| l.starts_with("gap = ")).collect();
    assert_eq!(gap_lines.len(), 1, "{meta}");
    let prefix = format!("gap = {} {} ", format_lsn(from), format_lsn(oldest));
    assert!(gap_lines[0].starts_with(&prefix), "{meta}");
    let fields: Vec<&str> = gap_lines[0][prefix.len()..].splitn(2, ' ').collect();
    let accepted_at: u64 = fields[0].parse().expect("unix time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(accepted_at <= now && now - accepted_at < 600, "{meta}");
    assert!(
        fields[1].contains(&format!(
            "requested WAL segment {needed} has already been removed"
        )),
        "{meta}"
    );
    assert!(!dir.path().join(".walsink.meta.tmp").exists());
    let compared = assert_gapless_from(dir.path(), &pg, oldest);
    assert!(compared >= 2, "{:?}", archive::list(dir.path()));
    // The segment before the gap is kept as it was.
    assert!(dir.path().join(&partial[0]).exists());

    // 5. A later start without --allow-gap reports the recorded gap at warn level and streams normally.
    let end3 = parse_lsn(&pg.generate_wal(SEG + (SEG / 4)));
    let (code, stderr) = run(receive(&pg, dir.path(), &["-E", &format_lsn(end3)]));
    assert_eq!(code, Some(0), "third run:\n{stderr}");
    let report = format!(
        "has 1 recorded gap: {}..{} accepted at ",
        format_lsn(from),
        format_lsn(oldest)
    );
    let report_lines: Vec<&str> = stderr.lines().filter(|l| l.contains(&report)).collect();
    assert_eq!(report_lines.len(), 1, "stderr:\n{stderr}");
    assert!(report_lines[0].contains("WARN"), "{}", report_lines[0]);
    assert!(!stderr.contains("accepting a gap"), "{stderr}");
    assert_eq!(
        fs::read_to_string(dir.path().join(".walsink.meta")).unwrap(),
        meta,
        "nothing new recorded"
    );
    let compared_after = assert_gapless_from(dir.path(), &pg, oldest);
    assert!(compared_after > compared, "{:?}", archive::list(dir.path()));
    // The slot is in use again and holds the WAL from where walsink stopped.
    assert_eq!(restart_lsn(&pg, SLOT), Some(end3));

    // 6. walsink status and verify show the recorded gap; for verify it is a note, not a problem.
    assert_gap_in_status_and_verify(dir.path(), from, oldest, fields[1], &partial[0]);
}

/// `walsink status` (JSON and text) lists the gap `from..to` recorded with `reason`, with the segments
/// missing in it; `walsink verify` (JSON and text) finds the archive valid, with the gap, the missing
/// segments and the `.partial` the archive ended with before the gap (`partial`) as notes.
fn assert_gap_in_status_and_verify(dir: &Path, from: u64, to: u64, reason: &str, partial: &str) {
    let missing_from = from + SEG;
    let mut cmd = Walsink::cmd(["status", "--json", "-D"]);
    cmd.arg(dir);
    let out = Walsink::run_command(cmd, TIMEOUT);
    assert!(out.status.success(), "status: {out:?}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gaps = s["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{s:#}");
    assert_eq!(
        gaps[0]["from"].as_str(),
        Some(format_lsn(from).as_str()),
        "{s:#}"
    );
    assert_eq!(
        gaps[0]["to"].as_str(),
        Some(format_lsn(to).as_str()),
        "{s:#}"
    );
    assert_eq!(gaps[0]["reason"].as_str(), Some(reason), "{s:#}");
    assert!(gaps[0]["accepted_unix"].as_u64().is_some(), "{s:#}");
    let t = &s["timelines"][0];
    assert_eq!(
        t["first_lsn"].as_str(),
        Some(format_lsn(from).as_str()),
        "{s:#}"
    );
    let missing = t["missing"].as_array().unwrap();
    if to > missing_from {
        assert_eq!(missing.len(), 1, "{s:#}");
        assert_eq!(
            missing[0]["from"].as_str(),
            Some(format_lsn(missing_from).as_str())
        );
        assert_eq!(missing[0]["to"].as_str(), Some(format_lsn(to).as_str()));
    } else {
        assert!(missing.is_empty(), "{s:#}");
    }

    let mut cmd = Walsink::cmd(["status", "-D"]);
    cmd.arg(dir);
    let out = Walsink::run_command(cmd, TIMEOUT);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let gap_line = format!(
        "  recorded gap: {}..{} accepted at ",
        format_lsn(from),
        format_lsn(to)
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(&gap_line) && l.ends_with(&format!(" UTC ({reason})"))),
        "status lacks {gap_line:?}...:\n{text}"
    );
    if to > missing_from {
        let line = format!(
            "    missing segments: {} .. {}",
            format_lsn(missing_from),
            format_lsn(to)
        );
        assert!(
            text.lines().any(|l| l == line),
            "status lacks {line:?}:\n{text}"
        );
    }

    let mut cmd = Walsink::cmd(["verify", "--json", "-D"]);
    cmd.arg(dir);
    let out = Walsink::run_command(cmd, TIMEOUT);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "verify: {v:#}");
    assert_eq!(v["valid"], true, "{v:#}");
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v:#}");
    assert_eq!(v["recorded_gaps"].as_array().unwrap().len(), 1, "{v:#}");
    let notes: Vec<(&str, &str)> = v["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["file"].as_str().unwrap_or(""),
                n["problem"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        notes.iter().any(|(f, p)| *f == partial
            && p.contains("ends where a gap recorded with --allow-gap begins")),
        "the .partial before the gap is a note: {v:#}"
    );
    if to > missing_from {
        assert!(
            notes.iter().any(|(_, p)| p.contains(&format!(
                "no WAL from {} to {} (a gap recorded with --allow-gap)",
                format_lsn(missing_from),
                format_lsn(to)
            ))),
            "the missing segments are a note: {v:#}"
        );
    }
    let mut cmd = Walsink::cmd(["verify", "-D"]);
    cmd.arg(dir);
    let out = Walsink::run_command(cmd, TIMEOUT);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "recorded gap: {}..{}",
            format_lsn(from),
            format_lsn(to)
        )),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("note: ") && l.contains("--allow-gap")),
        "{text}"
    );
    assert!(!text.contains("problem: "), "{text}");
    assert!(
        text.contains("OK: the archive is valid from its first to its last record"),
        "{text}"
    );
}

// ---- disk full ----------------------------------------------------------------------------------------------

/// A small filesystem mounted for the test; unmounted (lazily if busy) on drop.
pub(crate) struct SmallFs {
    pub(crate) mount_point: PathBuf,
    _root: tempfile::TempDir,
}

/// A small filesystem for a disk-full test. Not being able to mount one fails the test
/// (the suite runs as root, where tmpfs or a loop mount works), unless
/// `WALSINK_SKIP_MOUNT_TESTS=1` says this machine cannot: then `None` and the test is
/// skipped with a message, never passed silently.
pub(crate) fn small_fs_or_skip(mib: u64) -> Option<SmallFs> {
    match SmallFs::mount(mib) {
        Ok(m) => Some(m),
        Err(e) if std::env::var("WALSINK_SKIP_MOUNT_TESTS").as_deref() == Ok("1") => {
            eprintln!("SKIPPED (WALSINK_SKIP_MOUNT_TESTS=1): cannot mount a small filesystem: {e}");
            None
        }
        Err(e) => panic!(
            "cannot mount a small filesystem for the disk-full test: {e}\n\
             (run as root, or set WALSINK_SKIP_MOUNT_TESTS=1 to skip the disk-full tests)"
        ),
    }
}

impl SmallFs {
    /// A tmpfs of `mib` MiB, else a loop-mounted ext4 image; `None` (with the reasons) if neither can be mounted.
    fn mount(mib: u64) -> Result<SmallFs, String> {
        let root = tempfile::Builder::new()
            .prefix("wsk-fs")
            .tempdir_in("/tmp")
            .unwrap();
        let mount_point = root.path().join("mnt");
        fs::create_dir(&mount_point).unwrap();
        let tmpfs = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={}k,mode=0700", mib * 1024),
                "tmpfs",
            ])
            .arg(&mount_point)
            .output();
        let tmpfs_err = match tmpfs {
            Ok(o) if o.status.success() => {
                return Ok(SmallFs {
                    mount_point,
                    _root: root,
                });
            }
            Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
            Err(e) => e.to_string(),
        };
        let image = root.path().join("fs.img");
        let made = fs::File::create(&image)
            .and_then(|f| f.set_len(mib << 20))
            .map_err(|e| e.to_string())
            .and_then(|()| {
                let o = Command::new("mkfs.ext4")
                    .args(["-q", "-F", "-m", "0"])
                    .arg(&image)
                    .output()
                    .map_err(|e| e.to_string())?;
                o.status
                    .success()
                    .then_some(())
                    .ok_or_else(|| String::from_utf8_lossy(&o.stderr).into_owned())
            })
            .and_then(|()| {
                let o = Command::new("mount")
                    .args(["-o", "loop"])
                    .arg(&image)
                    .arg(&mount_point)
                    .output()
                    .map_err(|e| e.to_string())?;
                o.status
                    .success()
                    .then_some(())
                    .ok_or_else(|| String::from_utf8_lossy(&o.stderr).into_owned())
            });
        match made {
            Ok(()) => Ok(SmallFs {
                mount_point,
                _root: root,
            }),
            Err(e) => Err(format!("tmpfs: {}; loop ext4: {e}", tmpfs_err.trim())),
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mount_point)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mount_point)
                .status();
        }
    }
}

/// Fills the filesystem of `path`'s directory with `path` until ENOSPC. Returns the bytes written.
pub(crate) fn fill(path: &Path) -> u64 {
    let mut f = fs::File::create(path).unwrap();
    let mut total = 0u64;
    for chunk in [256 << 10, 4 << 10, 512] {
        let buf = vec![0xA5u8; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "filling: {e}");
                    break;
                }
            }
        }
    }
    let _ = f.sync_all();
    total
}

/// The end of the WAL the archive holds byte-identical to pg_wal, counted from its first completed segment:
/// completed segments (each must match), then the matching prefix of the next `.partial`.
fn archived_extent(dir: &Path, pg: &PgCluster) -> u64 {
    let completed = archive::completed_segments(dir);
    let mut end = completed.first().map_or(0, |n| segment_lsn(n));
    for name in &completed {
        assert_eq!(segment_lsn(name), end, "{:?}", archive::list(dir));
        let archived = fs::read(dir.join(name)).unwrap();
        let original = fs::read(pg.pg_wal_dir().join(name)).unwrap();
        assert!(archived == original, "{name} differs from pg_wal's");
        end += SEG;
    }
    let partial = format!("{}.partial", segment_name(end));
    if let Ok(archived) = fs::read(dir.join(&partial)) {
        let original = fs::read(pg.pg_wal_dir().join(segment_name(end))).unwrap();
        let same = archived
            .iter()
            .zip(&original)
            .take_while(|(a, b)| a == b)
            .count();
        end += same as u64;
    }
    end
}

fn replication_row(pg: &PgCluster) -> (Option<u64>, Option<String>) {
    let rows = pg.sql(
        "SELECT flush_lsn::text, reply_time::text FROM pg_stat_replication WHERE application_name = 'walsink'",
    );
    let row = rows.first();
    (
        row.and_then(|r| r[0].as_deref()).map(parse_lsn),
        row.and_then(|r| r[1].clone()),
    )
}

/// ENOSPC mid-stream on a small filesystem: walsink keeps running, logs it once, keeps the flush position
/// (and the slot) at what is durable while it keeps sending status updates; when space is freed it resumes on
/// its own, and the archive ends up gapless and byte-identical to pg_wal.
#[test]
fn disk_full_pauses_and_resumes_without_losing_wal() {
    let Some(small) = small_fs_or_skip(12) else {
        return;
    };
    let pg = PgCluster::builder().setting("wal_keep_size", "1GB").start();
    create_slot(&pg, SLOT);
    let dir = small.mount_point.join("archive");
    fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();

    let mut w = WalsinkProcess::spawn_command(receive(&pg, &dir, &[]));
    let target = parse_lsn(&pg.generate_wal(SEG / 2));
    assert!(
        wait_for(|| restart_lsn(&pg, SLOT).is_some_and(|r| r >= target), WAIT),
        "walsink did not stream: slot at {:?}, target {}\n{}",
        restart_lsn(&pg, SLOT).map(format_lsn),
        format_lsn(target),
        w.stderr_text()
    );

    // Fill the disk, then make more WAL than the space walsink already holds (its open segment and the one
    // prepared ahead).
    let filler = small.mount_point.join("filler");
    let filled = fill(&filler);
    assert!(filled > 0);
    let wanted = parse_lsn(&pg.generate_wal(4 * SEG));
    assert!(
        w.wait_for_stderr("disk full: pausing WAL writes", WAIT),
        "walsink did not report the full disk:\n{}",
        w.stderr_text()
    );
    // Let it retry a few times (every 2 s) and send status updates (every 1 s).
    std::thread::sleep(Duration::from_secs(2));
    assert!(w.is_running(), "walsink exited:\n{}", w.stderr_text());
    let (flush1, reply1) = replication_row(&pg);
    let slot1 = restart_lsn(&pg, SLOT).expect("slot has a restart_lsn");
    let extent = archived_extent(&dir, &pg);
    std::thread::sleep(Duration::from_secs(5));
    assert!(w.is_running(), "walsink exited:\n{}", w.stderr_text());
    let (flush2, reply2) = replication_row(&pg);
    let slot2 = restart_lsn(&pg, SLOT).expect("slot has a restart_lsn");
    let stderr = w.stderr_text();
    assert_eq!(
        stderr.matches("disk full: pausing WAL writes").count(),
        1,
        "logged once, not per retry:\n{stderr}"
    );
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert_eq!(slot1, slot2, "the slot moved while the disk was full");
    assert_eq!(
        flush1, flush2,
        "the reported flush moved while the disk was full"
    );
    let flush1 = flush1.expect("walsink reports a flush position");
    assert!(
        slot1 < wanted && flush1 < wanted,
        "nothing held back: slot {} flush {} wanted {}",
        format_lsn(slot1),
        format_lsn(flush1),
        format_lsn(wanted)
    );
    assert!(
        flush1 <= extent && slot1 <= extent,
        "flush {} / slot {} reported past what the archive holds ({})",
        format_lsn(flush1),
        format_lsn(slot1),
        format_lsn(extent)
    );
    assert!(
        reply1.is_some() && reply2.is_some() && reply1 != reply2,
        "no status updates while paused: {reply1:?} then {reply2:?}"
    );

    // Free the space: walsink resumes by itself and catches up.
    fs::remove_file(&filler).unwrap();
    assert!(
        w.wait_for_stderr("disk space is available again", WAIT),
        "walsink did not resume:\n{}",
        w.stderr_text()
    );
    pg.switch_wal();
    let target = parse_lsn(&pg.generate_wal(SEG / 4));
    assert!(
        wait_for(|| restart_lsn(&pg, SLOT).is_some_and(|r| r >= target), WAIT),
        "walsink did not catch up: slot at {:?}, target {}\n{}",
        restart_lsn(&pg, SLOT).map(format_lsn),
        format_lsn(target),
        w.stderr_text()
    );
    let status = w.interrupt_and_wait(TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", w.stderr_text());

    let first = archive::completed_segments(&dir)
        .first()
        .map(|n| segment_lsn(n))
        .expect("completed segments");
    let compared = assert_gapless_from(&dir, &pg, first);
    assert!(
        first + compared as u64 * SEG > wanted,
        "the WAL written while the disk was full is archived: {:?}",
        archive::list(&dir)
    );
    assert!(archived_extent(&dir, &pg) >= target);
    assert!(!w.stderr_text().contains("ERROR"), "{}", w.stderr_text());
}

/// SIGINT while the disk is full ends walsink at once with 0, the archive intact; the WAL it could not write is
/// streamed again by the next start once there is space.
#[test]
fn interrupt_while_the_disk_is_full_exits_cleanly_and_the_next_start_catches_up() {
    let Some(small) = small_fs_or_skip(32) else {
        return;
    };
    let pg = PgCluster::builder().setting("wal_keep_size", "1GB").start();
    create_slot(&pg, SLOT);
    let dir = small.mount_point.join("archive");
    fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();

    let mut w = WalsinkProcess::spawn_command(receive(&pg, &dir, &[]));
    let target = parse_lsn(&pg.generate_wal(SEG / 2));
    assert!(
        wait_for(|| restart_lsn(&pg, SLOT).is_some_and(|r| r >= target), WAIT),
        "walsink did not stream:\n{}",
        w.stderr_text()
    );
    let filler = small.mount_point.join("filler");
    fill(&filler);
    // Enough WAL to fill the writer's queue too, so the network task waits for room when the signal comes.
    let wanted = parse_lsn(&pg.generate_wal(12 * SEG));
    assert!(
        w.wait_for_stderr("disk full: pausing WAL writes", WAIT),
        "walsink did not report the full disk:\n{}",
        w.stderr_text()
    );
    let slot_paused = restart_lsn(&pg, SLOT).expect("restart_lsn");
    let started = std::time::Instant::now();
    let status = w.interrupt_and_wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", w.stderr_text());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?} to stop",
        started.elapsed()
    );
    assert!(
        w.stderr_text().contains("stopping while the disk is full"),
        "{}",
        w.stderr_text()
    );
    // Nothing past what was durable was reported, and the archive holds what it says.
    let slot_after = restart_lsn(&pg, SLOT).expect("restart_lsn");
    assert!(slot_after < wanted);
    assert!(
        slot_after <= archived_extent(&dir, &pg),
        "slot {} past the archive ({})",
        format_lsn(slot_after),
        format_lsn(archived_extent(&dir, &pg))
    );
    assert!(slot_after >= slot_paused);

    // Space again: a new walsink streams the rest, from where the archive ends.
    fs::remove_file(&filler).unwrap();
    pg.switch_wal();
    let end = parse_lsn(&pg.generate_wal(SEG / 4));
    let (code, stderr) = run(receive(&pg, &dir, &["-E", &format_lsn(end)]));
    assert_eq!(code, Some(0), "{stderr}");
    let first = archive::completed_segments(&dir)
        .first()
        .map(|n| segment_lsn(n))
        .expect("completed segments");
    let compared = assert_gapless_from(&dir, &pg, first);
    assert!(
        first + compared as u64 * SEG > wanted,
        "{:?}",
        archive::list(&dir)
    );
    assert!(archived_extent(&dir, &pg) >= end);
}
