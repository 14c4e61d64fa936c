//! Assertions on an archive directory written by walsink (or pg_receivewal), compared with the server's
//! `pg_wal`.
//!
//! Comparing a completed segment with `pg_wal` needs the server to still have it: give the cluster
//! `.setting("wal_keep_size", "1GB")` (or stream through a replication slot) so checkpoints do not remove
//! or recycle it. Compare before the server writes over a recycled name, i.e. while the test controls the
//! workload.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// All file names in `dir`, sorted. Panics if `dir` cannot be read.
pub fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read dir {}: {e}", dir.display()))
        .map(|entry| {
            entry
                .expect("read dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Whether `name` is a WAL segment file name (24 upper-case hex digits, no suffix).
pub fn is_segment_name(name: &str) -> bool {
    name.len() == 24
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

/// Whether `name` is a timeline history file name (`TTTTTTTT.history`).
pub fn is_history_name(name: &str) -> bool {
    name.strip_suffix(".history")
        .is_some_and(|t| t.len() == 8 && t.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Completed segment names in `dir`, sorted.
pub fn completed_segments(dir: &Path) -> Vec<String> {
    list(dir)
        .into_iter()
        .filter(|n| is_segment_name(n))
        .collect()
}

/// `.partial` segment names in `dir`, sorted.
pub fn partial_segments(dir: &Path) -> Vec<String> {
    list(dir)
        .into_iter()
        .filter(|n| n.strip_suffix(".partial").is_some_and(is_segment_name))
        .collect()
}

/// Asserts that every completed segment in `archive_dir` exists in `pg_wal_dir` and is byte-identical.
/// Returns how many segments were compared.
pub fn assert_completed_identical(archive_dir: &Path, pg_wal_dir: &Path) -> usize {
    let segments = completed_segments(archive_dir);
    for name in &segments {
        let archived = read(&archive_dir.join(name));
        let original_path = pg_wal_dir.join(name);
        let original = fs::read(&original_path).unwrap_or_else(|e| {
            panic!(
                "archived segment {name} is not in {} ({e}); did the server remove or recycle it? \
                 (set wal_keep_size or use a slot)\npg_wal holds: {:?}",
                pg_wal_dir.display(),
                list(pg_wal_dir)
            )
        });
        assert_same_bytes(name, &archived, &original, original.len());
        assert_eq!(
            archived.len(),
            original.len(),
            "archived segment {name} is {} bytes, pg_wal's is {}",
            archived.len(),
            original.len()
        );
    }
    segments.len()
}

/// Asserts that every `.history` file in `archive_dir` is byte-identical to `pg_wal_dir`'s. Returns the count.
pub fn assert_history_identical(archive_dir: &Path, pg_wal_dir: &Path) -> usize {
    let files: Vec<String> = list(archive_dir)
        .into_iter()
        .filter(|n| is_history_name(n))
        .collect();
    for name in &files {
        let archived = read(&archive_dir.join(name));
        let original = read(&pg_wal_dir.join(name));
        assert!(
            archived == original,
            "history file {name} differs from pg_wal's"
        );
    }
    files.len()
}

/// Asserts that the first `upto_bytes` of `archive_partial` (a `.partial` file) equal those of
/// `pg_wal_file` (the server's segment with the same name, without the suffix).
pub fn assert_partial_prefix_identical(
    archive_partial: &Path,
    pg_wal_file: &Path,
    upto_bytes: usize,
) {
    let archived = read(archive_partial);
    let original = read(pg_wal_file);
    let name = archive_partial.display().to_string();
    assert!(
        archived.len() >= upto_bytes,
        "{name} is {} bytes, expected at least {upto_bytes}",
        archived.len()
    );
    assert!(
        original.len() >= upto_bytes,
        "{} is {} bytes, expected at least {upto_bytes}",
        pg_wal_file.display(),
        original.len()
    );
    assert_same_bytes(&name, &archived, &original, upto_bytes);
}

/// Asserts the permission bits of `path` (e.g. `0o600` for segments, `0o700` for the archive directory).
pub fn assert_mode(path: &Path, mode: u32) {
    let actual = fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(
        actual,
        mode,
        "{} has mode {actual:04o}, expected {mode:04o}",
        path.display()
    );
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Compares the first `len` bytes and names the first difference (offset, and the 8 KiB WAL page holding it).
fn assert_same_bytes(name: &str, archived: &[u8], original: &[u8], len: usize) {
    let len = len.min(archived.len()).min(original.len());
    if archived[..len] == original[..len] {
        return; // memcmp; the byte loop below only runs to report a difference
    }
    if let Some(offset) = (0..len).find(|&i| archived[i] != original[i]) {
        panic!(
            "{name} differs from pg_wal at offset {offset:#x} (WAL page {:#x}): archived {:#04x}, pg_wal {:#04x}",
            offset / 8192 * 8192,
            archived[offset],
            original[offset]
        );
    }
}
