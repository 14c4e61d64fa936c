//! [`Archive`]: the opened, locked archive directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{debug, info, warn};
use walsink_wal::validate::{ValidatorConfig, WalFormat};
use walsink_wal::{Lsn, TimelineId, WalSegSize};

use crate::dir::Dir;
use crate::fsops::{RealFs, SegmentFs};
use crate::lock::Shared;
use crate::meta::{Gap, Meta};
use crate::migrate;
use crate::writer::SegmentWriter;
use crate::{ArchiveError, StartPoint, SyncMode, WriterOptions, fsops, scan};

/// Name of the lock file in the archive directory. It holds the pid of the walsink
/// that has the directory open. A dot-name, like all of walsink's own files there:
/// programs that manage WAL directories (Barman) skip those.
pub const LOCK_FILE: &str = ".walsink.lock";

/// Name of the metadata file that pins the directory to one database system (it was
/// `walsink.meta`: [`LEGACY_META_FILE`](crate::LEGACY_META_FILE)).
pub const META_FILE: &str = ".walsink.meta";

/// Name of the file created and removed at open to prove the directory is writable.
const PROBE_FILE: &str = ".walsink.probe";

/// The largest `.walsink.meta` read (it holds two lines and one per recorded gap).
pub(crate) const META_LIMIT: u64 = 1 << 20;

/// The largest timeline history file read (one line per timeline).
pub(crate) const HISTORY_LIMIT: u64 = 16 << 20;

/// How often a [`SegmentWriter`] rechecks the lock file while it writes (see
/// [`SegmentWriter::check_lock`]); callers checking an idle writer should use the same
/// period.
pub const LOCK_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// An open, exclusively locked archive directory.
///
/// Dropping it releases the lock (once no [`SegmentWriter`] made from it is left).
#[derive(Debug)]
pub struct Archive {
    /// The directory, as given to [`Archive::open`].
    path: PathBuf,
    /// The directory's handle: every file in it is opened relative to it.
    dir: Arc<Dir>,
    /// Whether to sync.
    sync: SyncMode,
    /// The lock and the one-writer flag.
    shared: Arc<Shared>,
    /// The segment size of the cluster the directory was pinned to by
    /// [`Archive::check_identity`], once it was called.
    pinned_seg: Option<WalSegSize>,
    /// What `.walsink.meta` holds, once [`Archive::verify_identity`] has read it (or,
    /// for a directory without one, what [`Archive::pin_identity`] is to write).
    meta: Option<Meta>,
    /// Whether `meta` is not in `.walsink.meta` yet: verified, not pinned.
    pin_pending: bool,
    /// Whether the recorded gaps were reported (once per process).
    gaps_reported: bool,
}

impl Archive {
    /// Opens an existing archive directory and locks it.
    ///
    /// The directory is never created: a missing one is [`ArchiveError::NoDirectory`].
    /// It must be a directory ([`ArchiveError::NotADirectory`]) that this process can
    /// create files in ([`ArchiveError::NotWritable`]). The lock is an exclusive
    /// `flock` on the directory and on [`LOCK_FILE`] (created with mode 0600), into
    /// which our pid is written; if another process holds either the result is
    /// [`ArchiveError::Locked`] with that process's pid if the lock file still has it.
    /// A lock file that is not a regular file (a symbolic link, say) is
    /// [`ArchiveError::NotARegularFile`]. pg_receivewal takes no lock, so it is not
    /// kept out.
    ///
    /// Once locked, a directory of the older layout (`walsink.meta`, `walsink.lock`,
    /// `NAME.replaced-*`) is migrated to the dot-names, durably (see `migrate.rs`).
    ///
    /// Logs a warning if the directory is writable by its group or by others, or
    /// belongs to another user than the one walsink runs as: they can put files there.
    pub fn open(dir: &Path, sync: SyncMode) -> Result<Archive, ArchiveError> {
        let md = match fs::metadata(dir) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ArchiveError::NoDirectory { path: dir.into() });
            }
            Err(e) => return Err(ArchiveError::io(dir, "stat", e)),
        };
        if !md.is_dir() {
            return Err(ArchiveError::NotADirectory { path: dir.into() });
        }
        let handle = Dir::open(dir)?;
        warn_if_others_can_write(&handle)?;
        let shared = Shared::acquire(&handle)?;
        migrate::migrate(&handle, sync)?;

        // The lock file may predate a chmod or a read-only remount; only creating a
        // file proves that segments can be created.
        match fsops::create_fresh(&handle, PROBE_FILE) {
            Ok(_) => fsops::remove(&handle, PROBE_FILE)?,
            Err(ArchiveError::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                return Err(ArchiveError::NotWritable {
                    path: dir.into(),
                    source,
                });
            }
            Err(e) => return Err(e),
        }

        debug!("opened and locked archive directory \"{}\"", dir.display());
        Ok(Archive {
            path: dir.into(),
            dir: Arc::new(handle),
            sync,
            shared: Arc::new(shared),
            pinned_seg: None,
            meta: None,
            pin_pending: false,
            gaps_reported: false,
        })
    }

    /// Checks that `.walsink.lock` is still the file this process locked (two `stat`s).
    /// [`ArchiveError::LockLost`] if it was removed or replaced: another program is
    /// changing the directory, and walsink must stop writing. The
    /// [`SegmentWriter`] checks on its own while it writes
    /// ([`SegmentWriter::check_lock`]).
    pub fn check_lock(&self) -> Result<(), ArchiveError> {
        self.shared.check(&self.dir)
    }

    /// The archive directory, as given to [`Archive::open`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sync mode the archive was opened with.
    pub fn sync_mode(&self) -> SyncMode {
        self.sync
    }

    /// [`verify_identity`](Self::verify_identity), then
    /// [`pin_identity`](Self::pin_identity).
    pub fn check_identity(&mut self, system_id: u64, seg: WalSegSize) -> Result<(), ArchiveError> {
        self.verify_identity(system_id, seg)?;
        self.pin_identity()
    }

    /// Checks that the archive belongs to this database system, without writing
    /// anything. Call it after every `IDENTIFY_SYSTEM`, before streaming.
    ///
    /// If `.walsink.meta` exists, its system identifier and segment size must equal the
    /// server's ([`ArchiveError::SystemIdMismatch`], [`ArchiveError::SegSizeMismatch`]).
    /// If it does not, but the directory already holds WAL files (for example written
    /// by pg_receivewal), the long page header of the newest file with a plausible one
    /// must match instead; then [`pin_identity`](Self::pin_identity) is to write
    /// `.walsink.meta`, once every other check of the server has passed.
    ///
    /// The first call that reads a `.walsink.meta` with recorded gaps logs them (warn):
    /// see [`Archive::gap_report`].
    pub fn verify_identity(&mut self, system_id: u64, seg: WalSegSize) -> Result<(), ArchiveError> {
        let meta_path = self.path.join(META_FILE);
        if let Some(bytes) = self.dir.read_capped(META_FILE, META_LIMIT)? {
            let bad = |reason: String| ArchiveError::BadMetadata {
                path: meta_path.clone(),
                reason,
            };
            let text = String::from_utf8(bytes).map_err(|_| bad("not valid UTF-8".into()))?;
            let meta = Meta::parse(&text).map_err(bad)?;
            self.compare(meta.system_identifier, meta.seg, system_id, seg)?;
            self.pinned_seg = Some(seg);
            self.meta = Some(meta);
            self.pin_pending = false;
            if !self.gaps_reported {
                self.gaps_reported = true;
                if let Some(report) = self.gap_report() {
                    warn!("{report}");
                }
            }
            return Ok(());
        }

        let (found, candidates) = scan::probe_identity(&self.dir)?;
        match found {
            Some((file, long)) => {
                info!(
                    "archive directory \"{}\" has no {META_FILE}; its newest WAL file \"{}\" is from database system {}",
                    self.path.display(),
                    file.display(),
                    long.sysid
                );
                let archive_seg = WalSegSize::new(u64::from(long.seg_size))
                    .expect("probe_identity checked the segment size");
                self.compare(long.sysid, archive_seg, system_id, seg)?;
            }
            None if candidates > 0 => warn!(
                "could not check which database system the {candidates} WAL files in \"{}\" belong to: none has a valid long page header",
                self.path.display()
            ),
            None => {}
        }
        self.pinned_seg = Some(seg);
        self.meta = Some(Meta {
            system_identifier: system_id,
            seg,
            format: None,
            gaps: Vec::new(),
        });
        self.pin_pending = true;
        Ok(())
    }

    /// Writes `.walsink.meta` durably (0600) for the identity
    /// [`verify_identity`](Self::verify_identity) accepted, if the directory had none;
    /// otherwise does nothing. Call it once the server has been checked completely, so
    /// that a start that fails leaves the directory as it was.
    pub fn pin_identity(&mut self) -> Result<(), ArchiveError> {
        let Some(meta) = self.meta.as_ref().filter(|_| self.pin_pending) else {
            return Ok(());
        };
        self.write_meta(meta)?;
        info!(
            "pinned archive directory \"{}\" to database system {} (WAL segment size {})",
            self.path.display(),
            meta.system_identifier,
            meta.seg
        );
        self.pin_pending = false;
        Ok(())
    }

    /// The WAL format (page magic and block size) pinned in `.walsink.meta`, if any.
    pub fn wal_format(&self) -> Option<WalFormat> {
        self.meta.as_ref().and_then(|m| m.format)
    }

    /// Pins the WAL format learned from the first page received in `.walsink.meta`
    /// (durably and atomically, as [`record_gap`](Self::record_gap)), if it has none
    /// yet; later WAL must have the same. Does nothing before the identity is known or
    /// when the same format is pinned already.
    pub fn pin_format(&mut self, format: WalFormat) -> Result<(), ArchiveError> {
        let Some(meta) = &self.meta else {
            return Ok(());
        };
        if meta.format == Some(format) {
            return Ok(());
        }
        let mut updated = meta.clone();
        updated.format = Some(format);
        if !self.pin_pending {
            self.write_meta(&updated)?;
            info!(
                "pinned archive directory \"{}\" to WAL page magic {:04X} and block size {}",
                self.path.display(),
                format.magic,
                format.blcksz
            );
        }
        self.meta = Some(updated);
        Ok(())
    }

    /// The gaps recorded in `.walsink.meta` (WAL the archive does not have, accepted
    /// with `--allow-gap`), oldest first. Empty until [`Archive::check_identity`] ran.
    pub fn gaps(&self) -> &[Gap] {
        self.meta.as_ref().map_or(&[], |m| &m.gaps)
    }

    /// The warning about the recorded gaps, if there are any: `archive "DIR" has 1
    /// recorded gap: 0/3000000..0/5000000 accepted at ... (reason); ...`.
    pub fn gap_report(&self) -> Option<String> {
        let gaps = self.gaps();
        if gaps.is_empty() {
            return None;
        }
        let list = gaps
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        Some(format!(
            "archive \"{}\" has {} recorded gap{}: {list}; the WAL in {} is not in the archive (the server had removed it; accepted with --allow-gap), so recovery from this archive cannot replay past the start of a gap",
            self.path.display(),
            gaps.len(),
            if gaps.len() == 1 { "" } else { "s" },
            if gaps.len() == 1 { "it" } else { "them" },
        ))
    }

    /// The recorded gap that a start at `start` (a segment start, from
    /// [`Archive::find_start`]) falls into: the newest gap whose range, widened to the
    /// start of the segment of its `from`, contains `start`. Streaming must then
    /// resume at the gap's `to` instead: the archive has nothing after the gap yet.
    pub fn gap_containing(&self, start: Lsn, seg: WalSegSize) -> Option<&Gap> {
        self.gaps()
            .iter()
            .rev()
            .find(|g| seg.segment_start(g.from) <= start && start < g.to)
    }

    /// Records a gap in `.walsink.meta`, durably and atomically (`.walsink.meta.tmp`,
    /// fsync, rename, directory fsync with [`SyncMode::Sync`]): afterwards the file
    /// holds the old content plus the gap, or, if this fails, the old content. Needs
    /// the identity pinned by [`Archive::check_identity`] first.
    pub fn record_gap(&mut self, gap: Gap) -> Result<(), ArchiveError> {
        let path = self.path.join(META_FILE);
        let Some(meta) = &self.meta else {
            return Err(ArchiveError::BadMetadata {
                path,
                reason: "cannot record a gap before the archive's identity is known".into(),
            });
        };
        let mut updated = meta.clone();
        updated.gaps.push(gap);
        self.write_meta(&updated)?;
        self.meta = Some(updated);
        self.pin_pending = false;
        Ok(())
    }

    /// Replaces `.walsink.meta` with `meta`, atomically and (unless `--no-sync`) durably.
    fn write_meta(&self, meta: &Meta) -> Result<(), ArchiveError> {
        fsops::write_file_atomically(
            &self.dir,
            META_FILE,
            meta.render().as_bytes(),
            self.sync == SyncMode::Sync,
        )
    }

    fn compare(
        &self,
        archive_id: u64,
        archive_seg: WalSegSize,
        server_id: u64,
        server_seg: WalSegSize,
    ) -> Result<(), ArchiveError> {
        if archive_id != server_id {
            return Err(ArchiveError::SystemIdMismatch {
                path: self.path.clone(),
                archive: archive_id,
                server: server_id,
            });
        }
        self.check_seg(archive_seg, server_seg)
    }

    fn check_seg(&self, archive: WalSegSize, server: WalSegSize) -> Result<(), ArchiveError> {
        if archive != server {
            return Err(ArchiveError::SegSizeMismatch {
                path: self.path.clone(),
                archive,
                server,
            });
        }
        Ok(())
    }

    /// Where to resume streaming, exactly as pg_receivewal's `FindStreamingStart`:
    /// the segment after the newest completed segment (one whose size is the segment
    /// size; others are skipped with a warning), or the start of the newest
    /// `.partial`, the newest being the maximum by (segment number, timeline,
    /// completed over partial). Compressed files are ignored. `None` if there is no
    /// WAL file.
    ///
    /// Once [`Archive::check_identity`] has pinned a segment size, `seg` must equal it.
    pub fn find_start(&self, seg: WalSegSize) -> Result<Option<StartPoint>, ArchiveError> {
        if let Some(pinned) = self.pinned_seg {
            self.check_seg(pinned, seg)?;
        }
        scan::find_start(&self.dir, seg)
    }

    /// [`find_start`](Self::find_start) for each timeline separately: per timeline
    /// that has WAL files in the archive, where streaming would resume on it. Sorted by
    /// timeline (empty if there is no WAL file).
    ///
    /// After a failover the old timeline may run past the point where the new one
    /// forked from it (WAL of the old primary the promoted standby never had); then the
    /// newest file by pg_receivewal's rule is on the old timeline, while streaming must
    /// resume on the newest timeline.
    pub fn find_starts(&self, seg: WalSegSize) -> Result<Vec<StartPoint>, ArchiveError> {
        if let Some(pinned) = self.pinned_seg {
            self.check_seg(pinned, seg)?;
        }
        scan::find_starts(&self.dir, seg)
    }

    /// Where the WAL in the `.partial` of the segment starting at `start` on `tli` ends,
    /// by its page and record headers ([`walsink_wal::tail::written_end`]): at or past
    /// every position walsink (or pg_receivewal) can have reported flushed from it, and
    /// within WAL the server had. `None` when there is no such `.partial` or it holds no
    /// WAL of that segment. Reads at most one segment. Not a durability claim: walsink
    /// uses it as a floor for the flush positions it reports while re-streaming the
    /// `.partial` after a restart.
    pub fn partial_written_end(
        &self,
        tli: TimelineId,
        start: Lsn,
        seg: WalSegSize,
    ) -> Result<Option<Lsn>, ArchiveError> {
        if let Some(pinned) = self.pinned_seg {
            self.check_seg(pinned, seg)?;
        }
        scan::partial_written_end(&self.dir, tli, start, seg)
    }

    /// Whether `NNNNNNNN.history` of `tli` exists as a regular file (not following a
    /// link).
    pub fn has_history(&self, tli: TimelineId) -> bool {
        let name = tli.history_file_name();
        matches!(self.dir.lstat(&name), Ok(Some(st)) if crate::dir::kind_of(&st).is_none())
    }

    /// The content of `NNNNNNNN.history` of `tli`, or `None` if the archive does not
    /// have it. It must be a regular file of at most 16 MiB
    /// ([`ArchiveError::NotARegularFile`], [`ArchiveError::FileTooLarge`]).
    pub fn read_history(&self, tli: TimelineId) -> Result<Option<Vec<u8>>, ArchiveError> {
        self.dir
            .read_capped(&tli.history_file_name(), HISTORY_LIMIT)
    }

    /// Writes the history file of `tli` durably (`NNNNNNNN.history.tmp`, fsync,
    /// rename, fsync of the directory; mode 0600).
    ///
    /// If the file exists with identical content nothing is written. If it exists
    /// with other content the result is [`ArchiveError::HistoryConflict`]: archived
    /// data is never overwritten.
    pub fn write_history(&self, tli: TimelineId, content: &[u8]) -> Result<(), ArchiveError> {
        let name = tli.history_file_name();
        let path = self.path.join(&name);
        if let Some(existing) = self.dir.read_capped(&name, HISTORY_LIMIT)? {
            if existing == content {
                debug!("timeline history file \"{name}\" already archived");
                return Ok(());
            }
            return Err(ArchiveError::HistoryConflict { path });
        }
        fsops::write_file_atomically(&self.dir, &name, content, self.sync == SyncMode::Sync)?;
        info!("archived timeline history file \"{name}\"");
        Ok(())
    }

    /// A writer for WAL of segment size `seg`. There can be one at a time
    /// ([`ArchiveError::WriterBusy`]); it keeps the directory locked while it lives,
    /// even if the `Archive` is dropped first.
    ///
    /// Once [`Archive::check_identity`] has pinned a segment size, `seg` must equal it.
    pub fn segment_writer(&self, seg: WalSegSize) -> Result<SegmentWriter, ArchiveError> {
        self.segment_writer_with(seg, WriterOptions::default())
    }

    /// [`segment_writer`](Self::segment_writer) with non-default [`WriterOptions`].
    pub fn segment_writer_with(
        &self,
        seg: WalSegSize,
        opts: WriterOptions,
    ) -> Result<SegmentWriter, ArchiveError> {
        self.segment_writer_fs(seg, opts, Arc::new(RealFs))
    }

    /// A segment writer working through `fs`.
    pub(crate) fn segment_writer_fs(
        &self,
        seg: WalSegSize,
        opts: WriterOptions,
        fs: Arc<dyn SegmentFs>,
    ) -> Result<SegmentWriter, ArchiveError> {
        if let Some(pinned) = self.pinned_seg {
            self.check_seg(pinned, seg)?;
        }
        if self
            .shared
            .writer_active
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(ArchiveError::WriterBusy {
                path: self.path.clone(),
            });
        }
        // What the WAL must match: the archive's system, and its pinned format.
        let check = opts.validate.then(|| ValidatorConfig {
            seg,
            system_id: self.meta.as_ref().map(|m| m.system_identifier),
            format: self.wal_format(),
        });
        Ok(SegmentWriter::new(
            Arc::clone(&self.dir),
            check,
            seg,
            self.sync,
            Arc::clone(&self.shared),
            opts,
            fs,
        ))
    }
}

/// Warns if users other than the one walsink runs as can put files into the
/// directory: it is writable by its group or by others, or owned by another user.
fn warn_if_others_can_write(dir: &Dir) -> Result<(), ArchiveError> {
    let st = rustix::fs::fstat(dir).map_err(|e| ArchiveError::io(dir.path(), "stat", e.into()))?;
    let mode = st.st_mode & 0o7777;
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => Some("its group and by all users"),
        (true, false) => Some("its group"),
        (false, true) => Some("all users"),
        (false, false) => None,
    };
    if let Some(who) = who {
        warn!(
            "archive directory \"{}\" is writable by {who} (mode {mode:04o}): they can put files into it and remove walsink's; walsink refuses links and special files there, but make it private: chmod go-w \"{}\"",
            dir.path().display(),
            dir.path().display()
        );
    }
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me {
        warn!(
            "archive directory \"{}\" is owned by uid {}, but walsink runs as uid {me}: its owner can put files into it and remove walsink's; run walsink as the directory's owner, or chown the directory to uid {me}",
            dir.path().display(),
            st.st_uid
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::fs::PermissionsExt;
    use walsink_wal::Lsn;

    fn open(d: &tempfile::TempDir) -> Archive {
        Archive::open(d.path(), SyncMode::NoSync).unwrap()
    }

    #[test]
    fn missing_directory_is_not_created() {
        let d = tempdir();
        let missing = d.path().join("nope");
        let e = Archive::open(&missing, SyncMode::Sync).unwrap_err();
        assert!(matches!(e, ArchiveError::NoDirectory { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("does not exist"), "{msg}");
        assert!(
            msg.contains(&format!("mkdir -m 700 {}", missing.display())),
            "{msg}"
        );
        assert!(!missing.exists());
    }

    #[test]
    fn a_file_is_not_a_directory() {
        let d = tempdir();
        put(d.path(), "f", 1);
        let e = Archive::open(&d.path().join("f"), SyncMode::Sync).unwrap_err();
        assert!(matches!(e, ArchiveError::NotADirectory { .. }), "{e:?}");
    }

    #[test]
    fn read_only_directory_is_refused() {
        let d = tempdir();
        // root may write anywhere, so the check cannot fail there.
        if fs::metadata(d.path()).unwrap().uid() == 0 {
            return;
        }
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o500)).unwrap();
        let e = Archive::open(d.path(), SyncMode::Sync).unwrap_err();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(e, ArchiveError::NotWritable { .. }), "{e:?}");
    }

    #[test]
    fn second_open_is_locked_out_with_the_holders_pid() {
        let d = tempdir();
        let a = open(&d);
        assert_eq!(mode(&d.path().join(LOCK_FILE)), 0o600);
        let e = Archive::open(d.path(), SyncMode::Sync).unwrap_err();
        let ArchiveError::Locked { pid, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(*pid, Some(std::process::id()));
        let msg = e.to_string();
        assert!(
            msg.contains(&format!(
                "is in use by another walsink (pid {}); stop it or use another directory",
                std::process::id()
            )),
            "{msg}"
        );
        assert!(!d.path().join(PROBE_FILE).exists());
        drop(a);
        // Released on drop; a stale pid in the file does not matter.
        let _a = open(&d);
    }

    #[test]
    fn a_writer_keeps_the_lock_and_is_unique() {
        let d = tempdir();
        let a = open(&d);
        let w = a.segment_writer(seg1m()).unwrap();
        let e = a.segment_writer(seg1m()).unwrap_err();
        assert!(matches!(e, ArchiveError::WriterBusy { .. }), "{e:?}");
        drop(a);
        let e = Archive::open(d.path(), SyncMode::Sync).unwrap_err();
        assert!(matches!(e, ArchiveError::Locked { .. }), "{e:?}");
        drop(w);
        let a = open(&d);
        let _w = a.segment_writer(seg1m()).unwrap();
    }

    #[test]
    fn verifying_writes_nothing_until_pinned() {
        let d = tempdir();
        let mut a = Archive::open(d.path(), SyncMode::Sync).unwrap();
        let listing = || {
            let mut names: Vec<_> = fs::read_dir(d.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            names
        };
        let before = listing();
        a.verify_identity(111, seg1m()).unwrap();
        a.verify_identity(111, seg1m()).unwrap();
        assert_eq!(listing(), before);
        // What was verified applies before the pin: the segment size, for one.
        assert!(a.find_starts(WalSegSize::DEFAULT).is_err());
        a.pin_identity().unwrap();
        let text = fs::read_to_string(d.path().join(META_FILE)).unwrap();
        assert!(text.contains("system_identifier = 111\n"), "{text}");
        // Pinned once: a second pin writes nothing (it would replace the file).
        let inode = || {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(d.path().join(META_FILE)).unwrap().ino()
        };
        let written = inode();
        a.pin_identity().unwrap();
        assert_eq!(inode(), written);
        assert!(matches!(
            a.verify_identity(222, seg1m()),
            Err(ArchiveError::SystemIdMismatch { .. })
        ));
    }

    #[test]
    fn identity_is_pinned_and_checked() {
        let d = tempdir();
        let mut a = Archive::open(d.path(), SyncMode::Sync).unwrap();
        a.check_identity(111, seg1m()).unwrap();
        let meta = d.path().join(META_FILE);
        assert_eq!(mode(&meta), 0o600);
        let text = fs::read_to_string(&meta).unwrap();
        assert!(text.contains("system_identifier = 111\n"), "{text}");
        assert!(text.contains("wal_segment_size = 1048576\n"), "{text}");
        assert!(!d.path().join(".walsink.meta.tmp").exists());
        // Same identity again: fine, also from a new process.
        a.check_identity(111, seg1m()).unwrap();
        drop(a);
        let mut a = open(&d);
        a.check_identity(111, seg1m()).unwrap();

        let e = a.check_identity(222, seg1m()).unwrap_err();
        assert!(
            matches!(
                e,
                ArchiveError::SystemIdMismatch {
                    archive: 111,
                    server: 222,
                    ..
                }
            ),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("holds WAL of database system 111, but the server is database system 222"),
            "{msg}"
        );
        assert!(msg.contains(&d.path().display().to_string()), "{msg}");
        assert!(msg.contains("use a separate archive directory for each cluster"));

        let e = a.check_identity(111, WalSegSize::DEFAULT).unwrap_err();
        assert!(matches!(e, ArchiveError::SegSizeMismatch { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("1MB") && msg.contains("16MB"), "{msg}");
        // The file was not changed by the failed checks.
        assert_eq!(fs::read_to_string(&meta).unwrap(), text);
    }

    #[test]
    fn pinned_segment_size_is_enforced_for_scan_and_writer() {
        let d = tempdir();
        let mut a = open(&d);
        a.check_identity(111, seg1m()).unwrap();
        assert!(matches!(
            a.find_start(WalSegSize::DEFAULT),
            Err(ArchiveError::SegSizeMismatch { .. })
        ));
        assert!(matches!(
            a.segment_writer(WalSegSize::DEFAULT),
            Err(ArchiveError::SegSizeMismatch { .. })
        ));
    }

    #[test]
    fn broken_metadata_is_reported_not_overwritten() {
        let d = tempdir();
        fs::write(d.path().join(META_FILE), "system_identifier = 1\n").unwrap();
        let mut a = open(&d);
        let e = a.check_identity(1, seg1m()).unwrap_err();
        assert!(matches!(e, ArchiveError::BadMetadata { .. }), "{e:?}");
        assert!(e.to_string().contains("wal_segment_size is missing"), "{e}");
        assert_eq!(
            fs::read_to_string(d.path().join(META_FILE)).unwrap(),
            "system_identifier = 1\n"
        );
    }

    #[test]
    fn pg_receivewal_directory_of_another_cluster_is_refused() {
        let d = tempdir();
        put_segment(d.path(), "000000010000000000000003", 3, 111, SEG);
        fs::write(
            d.path().join("00000002.history"),
            "1\t0/3000000\tno reason\n",
        )
        .unwrap();
        let mut a = open(&d);
        let e = a.check_identity(222, seg1m()).unwrap_err();
        assert!(
            matches!(
                e,
                ArchiveError::SystemIdMismatch {
                    archive: 111,
                    server: 222,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(!d.path().join(META_FILE).exists());
        // Another segment size is refused too.
        let e = a.check_identity(111, WalSegSize::DEFAULT).unwrap_err();
        assert!(matches!(e, ArchiveError::SegSizeMismatch { .. }), "{e:?}");
        assert!(!d.path().join(META_FILE).exists());
        // The right cluster adopts the directory.
        a.check_identity(111, seg1m()).unwrap();
        assert!(d.path().join(META_FILE).exists());
    }

    #[test]
    fn pg_receivewal_directory_uses_newest_plausible_header() {
        let d = tempdir();
        put_segment(d.path(), "000000010000000000000003", 3, 111, SEG);
        // Newest: a freshly pre-filled partial, all zeros, says nothing.
        put(d.path(), "000000010000000000000004.partial", SEG as usize);
        let mut a = open(&d);
        assert!(matches!(
            a.check_identity(222, seg1m()),
            Err(ArchiveError::SystemIdMismatch { archive: 111, .. })
        ));
        a.check_identity(111, seg1m()).unwrap();
    }

    #[test]
    fn directory_without_plausible_headers_is_adopted() {
        let d = tempdir();
        put(d.path(), "000000010000000000000004.partial", SEG as usize);
        let mut a = open(&d);
        a.check_identity(222, seg1m()).unwrap();
        assert!(
            fs::read_to_string(d.path().join(META_FILE))
                .unwrap()
                .contains("system_identifier = 222")
        );
    }

    #[test]
    fn history_is_written_once_and_never_overwritten() {
        let d = tempdir();
        let a = Archive::open(d.path(), SyncMode::Sync).unwrap();
        let t2 = tli(2);
        assert!(!a.has_history(t2));
        assert_eq!(a.read_history(t2).unwrap(), None);
        let content = b"1\t0/3000000\tno recovery target specified\n";
        a.write_history(t2, content).unwrap();
        assert!(a.has_history(t2));
        assert_eq!(a.read_history(t2).unwrap().as_deref(), Some(&content[..]));
        let path = d.path().join("00000002.history");
        assert_eq!(fs::read(&path).unwrap(), content);
        assert_eq!(mode(&path), 0o600);
        assert!(!d.path().join("00000002.history.tmp").exists());
        // Identical: nothing written.
        let before = fs::metadata(&path).unwrap().modified().unwrap();
        a.write_history(t2, content).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), before);
        // Different: refused, file kept.
        let e = a.write_history(t2, b"1\t0/4000000\tother\n").unwrap_err();
        assert!(matches!(e, ArchiveError::HistoryConflict { .. }), "{e:?}");
        assert!(e.to_string().contains("00000002.history"), "{e}");
        assert_eq!(fs::read(&path).unwrap(), content);
        // A stale temporary file from a crash does not get in the way.
        fs::write(d.path().join("00000003.history.tmp"), "junk").unwrap();
        a.write_history(tli(3), b"x\n").unwrap();
        assert_eq!(fs::read(d.path().join("00000003.history")).unwrap(), b"x\n");
        assert!(a.has_history(tli(3)));
    }

    #[test]
    fn gaps_are_recorded_durably_and_read_back() {
        let d = tempdir();
        let mut a = Archive::open(d.path(), SyncMode::Sync).unwrap();
        // Not before the identity is known.
        let g1 = Gap::new(Lsn(0x30_0000), Lsn(0x50_0000), 1_700_000_000, "removed");
        let e = a.record_gap(g1.clone()).unwrap_err();
        assert!(matches!(e, ArchiveError::BadMetadata { .. }), "{e:?}");
        a.check_identity(111, seg1m()).unwrap();
        assert!(a.gaps().is_empty());
        assert_eq!(a.gap_report(), None);

        a.record_gap(g1.clone()).unwrap();
        assert_eq!(a.gaps(), std::slice::from_ref(&g1));
        let meta = d.path().join(META_FILE);
        let text = fs::read_to_string(&meta).unwrap();
        assert!(text.contains("system_identifier = 111\n"), "{text}");
        assert!(text.contains("wal_segment_size = 1048576\n"), "{text}");
        assert!(
            text.contains("\ngap = 0/300000 0/500000 1700000000 removed\n"),
            "{text}"
        );
        assert_eq!(mode(&meta), 0o600);
        assert!(!d.path().join(".walsink.meta.tmp").exists());

        let g2 = Gap::new(Lsn(0x70_0000), Lsn(0x90_0000), 1_700_000_100, "again");
        a.record_gap(g2.clone()).unwrap();
        drop(a);

        // A new process reads them back, oldest first, and the identity still holds.
        let mut a = open(&d);
        a.check_identity(111, seg1m()).unwrap();
        assert_eq!(a.gaps(), [g1, g2]);
        let report = a.gap_report().unwrap();
        assert!(
            report.contains("has 2 recorded gaps: 0/300000..0/500000 accepted at 2023-11-14 22:13:20 UTC (removed); 0/700000..0/900000 accepted at"),
            "{report}"
        );
        assert!(report.contains(&d.path().display().to_string()), "{report}");
        assert!(matches!(
            a.check_identity(222, seg1m()),
            Err(ArchiveError::SystemIdMismatch { .. })
        ));
    }

    #[test]
    fn one_gap_is_reported_in_the_singular() {
        let d = tempdir();
        let mut a = open(&d);
        a.check_identity(1, seg1m()).unwrap();
        a.record_gap(Gap::new(Lsn(0x30_0000), Lsn(0x50_0000), 0, "r"))
            .unwrap();
        let report = a.gap_report().unwrap();
        assert!(
            report.contains(
                "has 1 recorded gap: 0/300000..0/500000 accepted at 1970-01-01 00:00:00 UTC (r); the WAL in it is not in the archive"
            ),
            "{report}"
        );
    }

    #[test]
    fn a_failed_gap_record_leaves_the_metadata_as_it_was() {
        let d = tempdir();
        let mut a = open(&d);
        a.check_identity(111, seg1m()).unwrap();
        let meta = d.path().join(META_FILE);
        let before = fs::read_to_string(&meta).unwrap();
        // Something the temporary file cannot replace.
        fs::create_dir(d.path().join(".walsink.meta.tmp")).unwrap();
        let e = a
            .record_gap(Gap::new(Lsn(0x30_0000), Lsn(0x50_0000), 1, "r"))
            .unwrap_err();
        assert!(
            matches!(
                e,
                ArchiveError::NotARegularFile {
                    kind: "a directory",
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(fs::read_to_string(&meta).unwrap(), before);
        assert!(a.gaps().is_empty(), "not recorded in memory either");
        fs::remove_dir(d.path().join(".walsink.meta.tmp")).unwrap();
        a.record_gap(Gap::new(Lsn(0x30_0000), Lsn(0x50_0000), 1, "r"))
            .unwrap();
        assert_eq!(a.gaps().len(), 1);
    }

    #[test]
    fn a_start_inside_a_gap_moves_to_its_end() {
        let d = tempdir();
        let mut a = open(&d);
        a.check_identity(1, seg1m()).unwrap();
        // The archive ended mid-segment 3; the server had segments from 5 on.
        a.record_gap(Gap::new(Lsn(0x30_1234), Lsn(0x50_0000), 1, "r"))
            .unwrap();
        let s = |n: u64| Lsn(n * SEG);
        assert_eq!(a.gap_containing(s(2), seg1m()), None);
        assert_eq!(a.gap_containing(s(3), seg1m()).unwrap().to, s(5));
        assert_eq!(a.gap_containing(s(4), seg1m()).unwrap().to, s(5));
        assert_eq!(a.gap_containing(s(5), seg1m()), None);
        assert_eq!(a.gap_containing(s(9), seg1m()), None);
        // A later gap that starts where the first ended: the newest wins.
        a.record_gap(Gap::new(s(5), s(8), 2, "again")).unwrap();
        assert_eq!(a.gap_containing(s(5), seg1m()).unwrap().to, s(8));
        assert_eq!(a.gap_containing(s(3), seg1m()).unwrap().to, s(5));
        // The start scan itself does not know about gaps.
        put(d.path(), "000000010000000000000003.partial", SEG as usize);
        assert_eq!(a.find_start(seg1m()).unwrap().unwrap().lsn, s(3));
    }

    #[test]
    fn the_last_segment_of_the_lsn_space_has_no_start_after_it() {
        let d = tempfile::tempdir().unwrap();
        let mut a = Archive::open(d.path(), SyncMode::NoSync).unwrap();
        a.check_identity(111, seg1m()).unwrap();
        // 1 MiB segments: the last segment number is 2^44 - 1.
        let last = "00000001FFFFFFFF00000FFF";
        put(d.path(), &format!("{last}.partial"), SEG as usize);
        assert_eq!(
            a.find_start(seg1m()).unwrap().unwrap().lsn,
            Lsn(u64::MAX - (SEG - 1))
        );
        // Completed, it would put the start at 2^64, which wrapped to 0/0.
        put(d.path(), last, SEG as usize);
        let e = a.find_start(seg1m()).unwrap_err();
        assert!(
            matches!(&e, ArchiveError::EndOfWalSpace { name } if name == last),
            "{e}"
        );
        assert!(a.find_starts(seg1m()).is_err());
    }

    #[test]
    fn disk_full_is_recognised() {
        let full = ArchiveError::io(
            "x",
            "write to",
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(full.is_disk_full());
        let quota = ArchiveError::io(
            "x",
            "write to",
            std::io::Error::from_raw_os_error(libc::EDQUOT),
        );
        assert!(quota.is_disk_full());
        let other = ArchiveError::io(
            "x",
            "write to",
            std::io::Error::from_raw_os_error(libc::EIO),
        );
        assert!(!other.is_disk_full());
        assert_eq!(
            other.to_string(),
            format!(
                "could not write to \"x\": {}",
                std::io::Error::from_raw_os_error(libc::EIO)
            )
        );
        assert!(!ArchiveError::HistoryConflict { path: "x".into() }.is_disk_full());
    }
}
