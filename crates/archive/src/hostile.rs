//! Tests only: what other users and programs may put into (or take out of) the archive
//! directory. Nothing outside the directory is ever written, nothing hangs, nothing
//! reads without bound, and a lost lock stops the writer.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::{FileType, Mode};
use walsink_wal::{Lsn, SegmentName};

use crate::testutil::*;
use crate::{Archive, ArchiveError, LOCK_FILE, META_FILE, PREPARED_FILE, SyncMode, WriterOptions};

const S3: Lsn = Lsn(3 * SEG);

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

fn partial(segno: u64) -> String {
    SegmentName::new(tli(1), walsink_wal::SegNo(segno)).partial_file_name(seg1m())
}

/// Runs `f` on a thread and fails if it does not return within 10 s (a FIFO opened for
/// reading would block for ever).
fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let t = std::thread::spawn(f);
    let until = Instant::now() + Duration::from_secs(10);
    while !t.is_finished() {
        assert!(Instant::now() < until, "hung");
        std::thread::sleep(Duration::from_millis(10));
    }
    t.join().unwrap()
}

#[test]
fn a_lock_file_link_is_refused_and_its_target_untouched() {
    let d = tempdir();
    let outside = tempdir();
    let target = outside.path().join("root-only");
    fs::write(&target, "precious").unwrap();
    symlink(&target, d.path().join(LOCK_FILE)).unwrap();
    let e = Archive::open(d.path(), SyncMode::Sync).unwrap_err();
    assert!(
        matches!(&e, ArchiveError::NotARegularFile { kind: "a symbolic link", path } if path.ends_with(LOCK_FILE)),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("is a symbolic link, not a regular file"),
        "{e}"
    );
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious");

    // A dangling link does not create its target.
    fs::remove_file(d.path().join(LOCK_FILE)).unwrap();
    let missing = outside.path().join("created");
    symlink(&missing, d.path().join(LOCK_FILE)).unwrap();
    assert!(Archive::open(d.path(), SyncMode::Sync).is_err());
    assert!(!missing.exists());
}

#[test]
fn a_lock_file_fifo_is_refused_without_hanging() {
    let d = tempdir();
    mkfifo(&d.path().join(LOCK_FILE));
    let p = d.path().to_owned();
    let e = within_10s(move || Archive::open(&p, SyncMode::Sync).unwrap_err());
    assert!(
        matches!(e, ArchiveError::NotARegularFile { kind: "a FIFO", .. }),
        "{e:?}"
    );
}

#[test]
fn a_second_open_is_refused_even_after_the_lock_file_was_deleted() {
    let d = tempdir();
    let a = Archive::open(d.path(), SyncMode::NoSync).unwrap();
    fs::remove_file(d.path().join(LOCK_FILE)).unwrap();
    let e = Archive::open(d.path(), SyncMode::NoSync).unwrap_err();
    assert!(matches!(e, ArchiveError::Locked { pid: None, .. }), "{e:?}");
    // The refused one did not create a lock file of its own.
    assert!(!d.path().join(LOCK_FILE).exists());
    drop(a);
    Archive::open(d.path(), SyncMode::NoSync).unwrap();
}

#[test]
fn a_removed_or_replaced_lock_file_is_noticed() {
    for replace in [false, true] {
        let d = tempdir();
        let a = Archive::open(d.path(), SyncMode::NoSync).unwrap();
        a.check_lock().unwrap();
        fs::remove_file(d.path().join(LOCK_FILE)).unwrap();
        if replace {
            fs::write(
                d.path().join(LOCK_FILE),
                format!("{}\n", std::process::id()),
            )
            .unwrap();
        }
        let e = a.check_lock().unwrap_err();
        let how = if replace { "replaced" } else { "removed" };
        assert!(
            matches!(&e, ArchiveError::LockLost { how: h, .. } if *h == how),
            "{e:?}"
        );
        assert!(
            e.to_string().contains(&format!(
                ".walsink.lock\" was {how} while walsink was running"
            )),
            "{e}"
        );
        // Sticky, even once a lock file is back.
        fs::write(d.path().join(LOCK_FILE), "1\n").unwrap();
        assert!(a.check_lock().is_err());
    }
}

#[test]
fn a_writer_stops_writing_once_its_lock_is_gone_and_keeps_what_it_wrote() {
    let d = tempdir();
    let a = Archive::open(d.path(), SyncMode::Sync).unwrap();
    let mut w = a.segment_writer(seg1m()).unwrap();
    let data = pattern(5000, 1);
    w.write(tli(1), S3, &data).unwrap();
    w.check_lock().unwrap();
    fs::remove_file(d.path().join(LOCK_FILE)).unwrap();
    let e = w.check_lock().unwrap_err();
    assert!(matches!(e, ArchiveError::LockLost { .. }), "{e:?}");
    // What was written is durable, and nothing more is accepted.
    assert_eq!(w.flushed(), Lsn(S3.0 + 5000));
    let e = w.write(tli(1), w.written(), b"more").unwrap_err();
    assert!(matches!(e, ArchiveError::LockLost { .. }), "{e:?}");
    assert_eq!(w.written(), Lsn(S3.0 + 5000));
    assert_eq!(w.close().map(|()| w.flushed()).unwrap(), Lsn(S3.0 + 5000));
    let f = fs::read(d.path().join(partial(3))).unwrap();
    assert_eq!(&f[..5000], &data[..]);
    assert!(f[5000..].iter().all(|&b| b == 0));
}

#[test]
fn a_new_segment_is_not_named_once_the_lock_is_gone() {
    let d = tempdir();
    let a = Archive::open(d.path(), SyncMode::NoSync).unwrap();
    let mut w = a.segment_writer(seg1m()).unwrap();
    w.write(tli(1), S3, &pattern(SEG as usize, 2)).unwrap();
    fs::remove_file(d.path().join(LOCK_FILE)).unwrap();
    // Within the check interval, but a new segment's name is checked at once.
    let e = w.write(tli(1), w.written(), b"next").unwrap_err();
    assert!(matches!(e, ArchiveError::LockLost { .. }), "{e:?}");
    assert!(!d.path().join(partial(4)).exists());
}

#[test]
fn a_partial_link_is_refused_and_its_target_untouched() {
    let d = tempdir();
    let outside = tempdir();
    let target = outside.path().join("victim");
    fs::write(&target, "precious").unwrap();
    symlink(&target, d.path().join(partial(3))).unwrap();
    let a = Archive::open(d.path(), SyncMode::Sync).unwrap();
    // The scan does not take a link for WAL.
    assert_eq!(a.find_start(seg1m()).unwrap(), None);
    let mut w = a.segment_writer(seg1m()).unwrap();
    let e = w.write(tli(1), S3, &[1; 100]).unwrap_err();
    assert!(
        matches!(&e, ArchiveError::NotARegularFile { kind: "a symbolic link", path } if path.ends_with(partial(3))),
        "{e:?}"
    );
    drop(w);
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
    assert_eq!(fs::metadata(&target).unwrap().len(), 8);
}

#[test]
fn metadata_that_is_a_link_fifo_or_huge_is_refused_without_hanging() {
    let d = tempdir();
    let meta = d.path().join(META_FILE);
    let check = |d: &tempfile::TempDir| {
        let p = d.path().to_owned();
        within_10s(move || {
            let mut a = Archive::open(&p, SyncMode::NoSync).unwrap();
            a.check_identity(1, seg1m()).unwrap_err()
        })
    };

    symlink("/dev/zero", &meta).unwrap();
    let e = check(&d);
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
    fs::remove_file(&meta).unwrap();

    mkfifo(&meta);
    let e = check(&d);
    assert!(
        matches!(e, ArchiveError::NotARegularFile { kind: "a FIFO", .. }),
        "{e:?}"
    );
    fs::remove_file(&meta).unwrap();

    // A sparse file far larger than any metadata: refused before it is read.
    let f = fs::File::create(&meta).unwrap();
    f.set_len(64 << 30).unwrap();
    let e = check(&d);
    assert!(matches!(e, ArchiveError::FileTooLarge { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains(".walsink.meta\" is larger than 1048576 bytes"),
        "{e}"
    );
}

#[test]
fn history_files_that_are_links_are_neither_read_nor_written_through() {
    let d = tempdir();
    let outside = tempdir();
    let target = outside.path().join("victim");
    fs::write(&target, "precious").unwrap();
    symlink(&target, d.path().join("00000002.history")).unwrap();
    let a = Archive::open(d.path(), SyncMode::NoSync).unwrap();
    assert!(!a.has_history(tli(2)));
    assert!(matches!(
        a.read_history(tli(2)),
        Err(ArchiveError::NotARegularFile { .. })
    ));
    assert!(matches!(
        a.write_history(tli(2), b"1\t0/3000000\tx\n"),
        Err(ArchiveError::NotARegularFile { .. })
    ));
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
}

#[test]
fn a_temporary_file_link_is_refused_not_followed() {
    let d = tempdir();
    let outside = tempdir();
    let target = outside.path().join("victim");
    fs::write(&target, "precious").unwrap();
    symlink(&target, d.path().join(".walsink.meta.tmp")).unwrap();
    let mut a = Archive::open(d.path(), SyncMode::NoSync).unwrap();
    let e = a.check_identity(1, seg1m()).unwrap_err();
    assert!(matches!(e, ArchiveError::NotARegularFile { .. }), "{e:?}");
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
    assert!(!d.path().join(META_FILE).exists());
}

#[test]
fn a_prepared_file_swapped_by_another_process_is_not_taken() {
    let d = tempdir();
    let a = Archive::open(d.path(), SyncMode::NoSync).unwrap();
    let opts = WriterOptions {
        prepare_ahead: true,
        ..WriterOptions::default()
    };
    let mut w = a.segment_writer_with(seg1m(), opts).unwrap();
    // Wait until the helper has created and sized the file (only its sync is left).
    let prepared = d.path().join(PREPARED_FILE);
    let until = Instant::now() + Duration::from_secs(10);
    while fs::metadata(&prepared).map_or(true, |m| m.len() != SEG) {
        assert!(Instant::now() < until, "nothing prepared");
        std::thread::sleep(Duration::from_millis(5));
    }
    let foreign = d.path().join("foreign");
    fs::write(&foreign, vec![0xEE; SEG as usize]).unwrap();
    fs::rename(&foreign, &prepared).unwrap();
    let e = w.write(tli(1), S3, &[1; 10]).unwrap_err();
    assert!(
        matches!(&e, ArchiveError::FileReplaced { path } if path.ends_with(partial(3))),
        "{e:?}"
    );
    assert!(w.is_broken());
    // Nothing was written into the file another process put there.
    assert!(
        fs::read(d.path().join(partial(3)))
            .unwrap()
            .iter()
            .all(|&b| b == 0xEE)
    );
}

#[test]
fn a_partial_swapped_while_written_is_not_completed() {
    let d = tempdir();
    let a = Archive::open(d.path(), SyncMode::NoSync).unwrap();
    let mut w = a.segment_writer(seg1m()).unwrap();
    let data = pattern(SEG as usize, 3);
    w.write(tli(1), S3, &data[..10]).unwrap();
    fs::write(d.path().join("foreign"), vec![0xEE; SEG as usize]).unwrap();
    fs::rename(d.path().join("foreign"), d.path().join(partial(3))).unwrap();
    let e = w.write(tli(1), w.written(), &data[10..]).unwrap_err();
    assert!(matches!(e, ArchiveError::FileReplaced { .. }), "{e:?}");
    assert!(w.is_broken());
    let complete = SegmentName::new(tli(1), walsink_wal::SegNo(3)).file_name(seg1m());
    assert!(!d.path().join(complete).exists());
}

#[test]
fn a_lock_watch_tells_an_idle_writer_and_then_the_writer_refuses_to_write() {
    let d = tempdir();
    let a = Archive::open(d.path(), SyncMode::NoSync).unwrap();
    let mut w = a.segment_writer(seg1m()).unwrap();
    w.write(tli(1), S3, &[1; 100]).unwrap();
    let watch = w.lock_watch();
    let on_another_thread = watch.clone();
    std::thread::spawn(move || on_another_thread.check())
        .join()
        .unwrap()
        .unwrap();
    fs::remove_file(d.path().join(LOCK_FILE)).unwrap();
    let e = watch.check().unwrap_err();
    assert!(
        matches!(e, ArchiveError::LockLost { how: "removed", .. }),
        "{e:?}"
    );
    // Within the writer's own check interval, yet refused: the loss is shared.
    let e = w.write(tli(1), w.written(), &[2; 10]).unwrap_err();
    assert!(matches!(e, ArchiveError::LockLost { .. }), "{e:?}");
    assert_eq!(w.written(), Lsn(S3.0 + 100));
    // A watch outliving the archive keeps nothing locked and checks nothing.
    drop(w);
    drop(a);
    watch.check().unwrap();
    Archive::open(d.path(), SyncMode::NoSync).unwrap();
}
