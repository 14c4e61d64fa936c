//! Moving walsink's own files of the older layout out of the WAL namespace.
//!
//! walsink used to keep its files under plain names next to the WAL: `walsink.lock`,
//! `walsink.meta`, `walsink.prepared.tmp`, `walsink.probe` and moved-aside segments
//! `NAME.replaced-<time>`. Programs that manage such a directory take every name they do
//! not know for junk: Barman's streaming archiver moves it into its `errors/` directory
//! (and then reports `archiver errors: FAILED`), which also took the lock and the pin
//! away. They now have dot-names ([`LOCK_FILE`], [`META_FILE`], [`PREPARED_FILE`],
//! `.NAME.replaced-<time>`), which Barman, shell globs and pg_receivewal's start scan all
//! skip.
//!
//! [`migrate`] runs on every [`Archive::open`](crate::Archive::open), once the directory
//! is locked: it renames `walsink.meta` to [`META_FILE`] (the pin is kept: the rename is
//! atomic, so after a crash one of the two names holds it), renames each
//! `NAME.replaced-*` to `.NAME.replaced-*`, removes the old lock file (after locking it:
//! a walsink older than the directory lock still holding it keeps the directory) and the
//! old temporary files, then `fsync`s the directory. A directory in the new layout is
//! left alone; one half migrated (a crash in between) is finished. Nothing archived is
//! removed: a name that cannot be moved because its new name is taken stays where it
//! is, with a warning.

use std::fs::File;

use rustix::fs::{FlockOperation, OFlags};
use rustix::io::Errno;
use tracing::{info, warn};

use crate::archive::META_LIMIT;
use crate::dir::Dir;
use crate::fsops;
use crate::{ArchiveError, META_FILE, SyncMode};

/// The lock file of the older layout.
pub const LEGACY_LOCK_FILE: &str = "walsink.lock";

/// The pin of the older layout (now [`META_FILE`]). Programs that read an archive
/// directory without opening it as an [`Archive`](crate::Archive) (which migrates it)
/// should fall back to this name.
pub const LEGACY_META_FILE: &str = "walsink.meta";

/// Temporary files of the older layout, removed: the prepared next segment (never
/// WAL), the half-written metadata, the writability probe.
const LEGACY_LEFTOVERS: [&str; 3] = ["walsink.prepared.tmp", "walsink.meta.tmp", "walsink.probe"];

/// Whether `name` is a segment moved aside by the older layout: `NAME.replaced-<secs>`
/// or `NAME.replaced-<secs>-<n>`, `NAME` a WAL segment file name.
fn is_legacy_aside(name: &str) -> bool {
    let Some((seg, suffix)) = name.split_once(".replaced-") else {
        return false;
    };
    let hex = seg.len() == 24
        && seg
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
    let (secs, n) = suffix.split_once('-').unwrap_or((suffix, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    hex && digits(secs) && digits(n)
}

/// Moves the older layout's files to their dot-names (see the module docs). Call with
/// the directory locked. Returns what it did, one `old -> new` or `removed old` entry
/// each, and logs it.
pub(crate) fn migrate(dir: &Dir, sync: SyncMode) -> Result<Vec<String>, ArchiveError> {
    let mut done = Vec::new();

    // The old lock file: lock it (an old walsink may hold it), then remove it.
    if let Some(st) = dir.lstat(LEGACY_LOCK_FILE)? {
        dir.refuse_special(LEGACY_LOCK_FILE, &st)?;
        let old: File = dir.open_file(LEGACY_LOCK_FILE, OFlags::RDWR)?;
        match rustix::fs::flock(&old, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => return Err(crate::lock::locked(dir, LEGACY_LOCK_FILE)),
            Err(e) => {
                return Err(ArchiveError::io(
                    dir.join(LEGACY_LOCK_FILE),
                    "lock",
                    e.into(),
                ));
            }
        }
        fsops::remove(dir, LEGACY_LOCK_FILE)?;
        done.push(format!("removed {LEGACY_LOCK_FILE}"));
    }

    // The pin.
    if let Some(st) = dir.lstat(LEGACY_META_FILE)? {
        dir.refuse_special(LEGACY_META_FILE, &st)?;
        if fsops::rename_noreplace(dir, LEGACY_META_FILE, META_FILE)? {
            done.push(format!("{LEGACY_META_FILE} -> {META_FILE}"));
        } else {
            let old = dir.read_capped(LEGACY_META_FILE, META_LIMIT)?;
            let new = dir.read_capped(META_FILE, META_LIMIT)?;
            if old == new {
                fsops::remove(dir, LEGACY_META_FILE)?;
                done.push(format!(
                    "removed {LEGACY_META_FILE} (the same as {META_FILE})"
                ));
            } else {
                return Err(ArchiveError::BadMetadata {
                    path: dir.join(LEGACY_META_FILE),
                    reason: format!(
                        "both {LEGACY_META_FILE} (written by an older walsink) and {META_FILE} exist, with different content; keep the one that describes this archive as {META_FILE} and remove {LEGACY_META_FILE}"
                    ),
                });
            }
        }
    }

    for name in LEGACY_LEFTOVERS {
        if dir.lstat(name)?.is_some() {
            fsops::remove_if_exists(dir, name)?;
            done.push(format!("removed {name}"));
        }
    }

    let mut asides: Vec<String> = dir
        .entry_names()?
        .into_iter()
        .filter(|n| is_legacy_aside(n))
        .collect();
    asides.sort();
    for name in asides {
        let hidden = format!(".{name}");
        if fsops::rename_noreplace(dir, &name, &hidden)? {
            done.push(format!("{name} -> {hidden}"));
        } else {
            warn!(
                "could not move \"{}\" to \"{hidden}\": that name is taken; leaving it",
                dir.join(&name).display()
            );
        }
    }

    if !done.is_empty() {
        if sync == SyncMode::Sync {
            fsops::fsync_dir(dir)?;
        }
        info!(
            "moved walsink's own files in \"{}\" out of the WAL file names (older layout): {}",
            dir.path().display(),
            done.join(", ")
        );
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::{Archive, LOCK_FILE, PREPARED_FILE};
    use std::fs;

    /// A directory as the older layout left it: pinned to system 111, a completed and a
    /// partial segment, a moved-aside segment, and the temporary files of a crash.
    fn old_layout() -> tempfile::TempDir {
        let d = tempdir();
        put_segment(d.path(), "000000010000000000000003", 3, 111, SEG);
        put_segment(d.path(), "000000010000000000000004.partial", 4, 111, SEG);
        fs::write(
            d.path().join(LEGACY_META_FILE),
            "system_identifier = 111\nwal_segment_size = 1048576\ngap = 0/100000 0/300000 1700000000 removed\n",
        )
        .unwrap();
        fs::write(d.path().join(LEGACY_LOCK_FILE), "12345\n").unwrap();
        put(d.path(), "walsink.prepared.tmp", SEG as usize);
        put(d.path(), "000000010000000000000002.replaced-1700000000", 7);
        put(
            d.path(),
            "000000010000000000000002.replaced-1700000000-1",
            8,
        );
        d
    }

    fn names(d: &tempfile::TempDir) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn an_old_layout_is_moved_to_dot_names_once_keeping_the_pin_and_the_gaps() {
        let d = old_layout();
        let meta = fs::read(d.path().join(LEGACY_META_FILE)).unwrap();
        let mut a = Archive::open(d.path(), SyncMode::Sync).unwrap();
        // Only WAL under WAL-like names; walsink's own files are dot-names.
        assert_eq!(
            names(&d),
            [
                ".000000010000000000000002.replaced-1700000000",
                ".000000010000000000000002.replaced-1700000000-1",
                LOCK_FILE,
                META_FILE,
                "000000010000000000000003",
                "000000010000000000000004.partial",
            ]
        );
        assert_eq!(fs::read(d.path().join(META_FILE)).unwrap(), meta);
        assert_eq!(
            fs::metadata(
                d.path()
                    .join(".000000010000000000000002.replaced-1700000000-1")
            )
            .unwrap()
            .len(),
            8
        );
        // The pin holds: another system is refused, the recorded gap is known.
        assert!(matches!(
            a.verify_identity(222, seg1m()),
            Err(ArchiveError::SystemIdMismatch { archive: 111, .. })
        ));
        a.verify_identity(111, seg1m()).unwrap();
        assert_eq!(a.gaps().len(), 1);
        // The start scan sees the same WAL as before.
        assert_eq!(
            a.find_start(seg1m()).unwrap().unwrap().lsn,
            walsink_wal::Lsn(4 * SEG)
        );
        drop(a);
        // Once: a second open changes nothing.
        let before = names(&d);
        let a = Archive::open(d.path(), SyncMode::Sync).unwrap();
        assert_eq!(names(&d), before);
        // The prepared file of a writer is a dot-name too.
        let _w = a.segment_writer(seg1m()).unwrap();
        assert!(!PREPARED_FILE.starts_with("walsink"), "{PREPARED_FILE}");
    }

    #[test]
    fn a_half_migrated_directory_is_finished() {
        // A crash after the pin moved but before the rest: both pins identical is fine.
        let d = old_layout();
        fs::copy(d.path().join(LEGACY_META_FILE), d.path().join(META_FILE)).unwrap();
        Archive::open(d.path(), SyncMode::Sync).unwrap();
        assert!(!d.path().join(LEGACY_META_FILE).exists());
        assert!(d.path().join(META_FILE).exists());
        assert!(!d.path().join("walsink.prepared.tmp").exists());
    }

    #[test]
    fn two_different_pins_are_refused_and_both_kept() {
        let d = old_layout();
        fs::write(
            d.path().join(META_FILE),
            "system_identifier = 222\nwal_segment_size = 1048576\n",
        )
        .unwrap();
        let e = Archive::open(d.path(), SyncMode::Sync).unwrap_err();
        assert!(matches!(e, ArchiveError::BadMetadata { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("both walsink.meta") && msg.contains("remove walsink.meta"),
            "{msg}"
        );
        assert!(d.path().join(LEGACY_META_FILE).exists());
        assert!(d.path().join(META_FILE).exists());
    }

    #[test]
    fn an_old_walsink_holding_the_old_lock_keeps_the_directory() {
        let d = old_layout();
        let held = fs::File::open(d.path().join(LEGACY_LOCK_FILE)).unwrap();
        rustix::fs::flock(&held, FlockOperation::NonBlockingLockExclusive).unwrap();
        let e = Archive::open(d.path(), SyncMode::Sync).unwrap_err();
        assert!(
            matches!(
                e,
                ArchiveError::Locked {
                    pid: Some(12345),
                    ..
                }
            ),
            "{e:?}"
        );
        // Nothing was moved.
        assert!(d.path().join(LEGACY_META_FILE).exists());
        assert!(!d.path().join(META_FILE).exists());
        drop(held);
        Archive::open(d.path(), SyncMode::Sync).unwrap();
        assert!(d.path().join(META_FILE).exists());
    }

    #[test]
    fn hostile_old_names_are_refused_not_followed() {
        let d = tempdir();
        let outside = tempdir();
        let target = outside.path().join("secret");
        fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, d.path().join(LEGACY_META_FILE)).unwrap();
        let e = Archive::open(d.path(), SyncMode::Sync).unwrap_err();
        assert!(
            matches!(
                e,
                ArchiveError::NotARegularFile {
                    kind: "a symbolic link",
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        assert!(!d.path().join(META_FILE).exists());
    }

    #[test]
    fn a_deleted_pin_still_refuses_another_cluster_by_the_wal_it_holds() {
        let d = tempdir();
        put_segment(d.path(), "000000010000000000000003", 3, 111, SEG);
        let mut a = Archive::open(d.path(), SyncMode::Sync).unwrap();
        a.check_identity(111, seg1m()).unwrap();
        drop(a);
        // Another program deletes (or moves away) the files it does not know.
        fs::remove_file(d.path().join(META_FILE)).unwrap();
        let mut a = Archive::open(d.path(), SyncMode::Sync).unwrap();
        assert!(matches!(
            a.check_identity(222, seg1m()),
            Err(ArchiveError::SystemIdMismatch { archive: 111, .. })
        ));
        a.check_identity(111, seg1m()).unwrap();
        assert!(d.path().join(META_FILE).exists());
    }

    #[test]
    fn only_moved_aside_segments_match() {
        assert!(is_legacy_aside(
            "000000010000000000000002.replaced-1700000000"
        ));
        assert!(is_legacy_aside(
            "000000010000000000000002.replaced-1700000000-3"
        ));
        assert!(!is_legacy_aside("000000010000000000000002"));
        assert!(!is_legacy_aside("00000001000000000000000g.replaced-1"));
        assert!(!is_legacy_aside("000000010000000000000002.replaced-"));
        assert!(!is_legacy_aside("000000010000000000000002.replaced-1-"));
        assert!(!is_legacy_aside("x.replaced-1"));
        assert!(!is_legacy_aside(".000000010000000000000002.replaced-1"));
    }
}
