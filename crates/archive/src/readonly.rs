//! Reading an archive directory without opening it as an [`Archive`](crate::Archive):
//! no lock, nothing written. For `walsink restore` and `walsink status`, which run
//! while a walsink may be streaming into the directory.

use crate::archive::{META_FILE, META_LIMIT};
use crate::dir::Dir;
use crate::meta::Meta;
use crate::{ArchiveError, LEGACY_META_FILE};

/// The archive's metadata, from [`META_FILE`] (`.walsink.meta`), else from the older layout's
/// [`LEGACY_META_FILE`] (`walsink.meta`, in a directory no walsink has opened since), or
/// `None` if it has none (a directory written by pg_receivewal, or never streamed into).
pub(crate) fn read_meta(dir: &Dir) -> Result<Option<Meta>, ArchiveError> {
    for name in [META_FILE, LEGACY_META_FILE] {
        if let Some(bytes) = dir.read_capped(name, META_LIMIT)? {
            let bad = |reason: String| ArchiveError::BadMetadata {
                path: dir.join(name),
                reason,
            };
            let text = String::from_utf8(bytes).map_err(|_| bad("not valid UTF-8".into()))?;
            return Meta::parse(&text).map(Some).map_err(bad);
        }
    }
    Ok(None)
}
