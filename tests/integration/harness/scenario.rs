//! Small scenario helpers that several test modules need: a fresh archive directory, a slot created by
//! walsink, a slot's `restart_lsn`, WAL past a position, the switch points of a timeline history, and the
//! common upper bound for waiting ([`WAIT`]).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use tempfile::TempDir;
use walsink_wal::{TimelineHistory, TimelineId};

use super::pg::PgCluster;
use super::walsink::Walsink;
use super::{parse_lsn, temp_base};

/// Upper bound for anything a scenario waits for (a server to stream, walsink to notice something and act,
/// a process to exit). Generous: the 2-core CI machine runs two tests with their servers at once.
pub const WAIT: Duration = Duration::from_secs(60);

/// A fresh, empty archive directory (mode 0700, under `/tmp`), deleted when the value is dropped.
pub fn archive_dir() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("wsk-arch")
        .tempdir_in(temp_base())
        .expect("create archive dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).expect("chmod 700");
    dir
}

/// `walsink receive -d <pg> -S <slot> --create-slot -w`: creates a physical slot that reserves WAL at once.
/// Panics with walsink's stderr unless it exits 0. Works on a standby too.
pub fn create_slot(pg: &PgCluster, slot: &str) {
    let out = Walsink::run(
        [
            "receive",
            "-d",
            &pg.conninfo(),
            "-S",
            slot,
            "--create-slot",
            "-w",
        ],
        WAIT,
    );
    assert!(
        out.status.success(),
        "walsink --create-slot {slot} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `restart_lsn` of the physical slot `slot` (`None` while it has none). Panics if there is no such slot.
pub fn restart_lsn(pg: &PgCluster, slot: &str) -> Option<u64> {
    let rows = pg.sql(&format!(
        "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ));
    let row = rows
        .first()
        .unwrap_or_else(|| panic!("slot {slot} does not exist"));
    row[0].as_deref().map(parse_lsn)
}

/// Writes WAL until the server's position is past `lsn` (so everything up to `lsn` is committed and sent).
/// Primary only.
pub fn generate_past(pg: &PgCluster, lsn: u64) {
    loop {
        let now = parse_lsn(&pg.current_lsn());
        if now > lsn {
            return;
        }
        pg.generate_wal((lsn - now + 1).min(2 << 20));
    }
}

/// The switch points of a timeline history file's text: (timeline, LSN where it ended), oldest first.
/// Panics on a malformed file (parsed by walsink's own [`TimelineHistory`]).
pub fn switch_points(history: &str) -> Vec<(u32, u64)> {
    // The file's own timeline only bounds its entries' timelines; the largest one accepts any file.
    let tli = TimelineId::new(u32::MAX).expect("nonzero");
    TimelineHistory::parse(tli, history.as_bytes())
        .unwrap_or_else(|e| panic!("malformed timeline history: {e}\n{history}"))
        .ancestors
        .iter()
        .map(|e| (e.tli.get(), e.switchpoint.0))
        .collect()
}

/// The LSN where `tli` ended on `pg`, from `pg_wal/<tli + 1>.history` (the server was promoted from `tli`).
pub fn switch_point(pg: &PgCluster, tli: u32) -> u64 {
    let name = format!("{:08X}.history", tli + 1);
    let text = std::fs::read_to_string(pg.pg_wal_dir().join(&name))
        .unwrap_or_else(|e| panic!("read {name} in {}: {e}", pg.pg_wal_dir().display()));
    switch_points(&text)
        .into_iter()
        .find(|&(t, _)| t == tli)
        .unwrap_or_else(|| panic!("{name} has no switch point of timeline {tli}:\n{text}"))
        .1
}

/// Makes the server remove the segment an archive of `dir` needs next (the one its only `.partial` holds):
/// switches WAL and checkpoints until `pg_wal` no longer has it. Returns the segment's name.
pub fn remove_needed_segment(pg: &PgCluster, dir: &std::path::Path) -> String {
    let partial = super::archive::partial_segments(dir);
    assert_eq!(partial.len(), 1, "{:?}", super::archive::list(dir));
    let needed = partial[0].trim_end_matches(".partial").to_owned();
    let on_server = || {
        pg.sql_one(&format!(
            "SELECT count(*)::text FROM pg_ls_waldir() WHERE name = '{needed}'"
        ))
        .as_deref()
            == Some("1")
    };
    for _ in 0..20 {
        if !on_server() {
            break;
        }
        pg.switch_wal();
        pg.execute("CHECKPOINT");
    }
    assert!(!on_server(), "the server kept {needed}");
    needed
}
