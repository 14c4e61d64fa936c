//! Direct I/O: staging the bytes of `O_DIRECT` segments and handing full staging
//! buffers to the I/O threads.

use std::sync::Arc;

use super::SegmentWriter;
use crate::ArchiveError;
use crate::writeback::Job;
/// Size of the direct-I/O staging buffers without write-behind; with it, they are
/// [`WriterOptions::write_behind`] bytes (rounded up to whole blocks).
pub(super) const STAGE_BYTES: usize = 1 << 20;

impl SegmentWriter {
    /// Hands the full stage buffer of the open direct segment to the I/O threads
    /// (or writes it here without them).
    pub(super) fn submit_full(&mut self) -> Result<(), ArchiveError> {
        let (Some(open), Some(stage), Some(wb)) =
            (&self.open, &mut self.stage, &mut self.writeback)
        else {
            return self.write_out();
        };
        let path = open.partial.clone();
        let spare = match wb.spare() {
            Ok(b) => b,
            // Bytes already accepted are lost: nothing may be reported past them.
            Err(e) => return self.fatal(&path, Err(e)),
        };
        let (buf, offset) = stage.swap_full(spare);
        wb.submit(Job {
            file: Arc::clone(&open.file),
            path,
            buf,
            offset,
            seq: 0,
        });
        Ok(())
    }

    /// Waits for the direct writes in flight. Their bytes were accepted by `write`,
    /// so a failure breaks the writer.
    pub(super) fn settle(&mut self) -> Result<(), ArchiveError> {
        let Some(wb) = &mut self.writeback else {
            return Ok(());
        };
        let r = wb.drain();
        if r.is_err() {
            let path = self
                .open
                .as_ref()
                .map(|o| o.partial.clone())
                .unwrap_or_default();
            return self.fatal(&path, r);
        }
        Ok(())
    }

    /// Writes what the stage holds of the open direct segment to its file, after the
    /// writes in flight.
    pub(super) fn write_out(&mut self) -> Result<(), ArchiveError> {
        self.settle()?;
        let (Some(open), Some(stage)) = (&self.open, &mut self.stage) else {
            return Ok(());
        };
        if !open.direct || !stage.is_dirty() {
            return Ok(());
        }
        // The stage ends where the data does (at the segment end when it is full).
        debug_assert_eq!(
            stage.end() % self.seg.bytes(),
            self.seg.offset(self.written)
        );
        let (blocks, at) = stage.blocks();
        self.fs.write_at(&open.file, &open.partial, blocks, at)?;
        stage.written_out();
        Ok(())
    }
}
