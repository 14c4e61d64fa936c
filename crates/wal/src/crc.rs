//! CRC-32C (Castagnoli), the checksum of WAL records, as PostgreSQL computes it
//! (`INIT_CRC32C`, `COMP_CRC32C`, `FIN_CRC32C`).

use crc_fast::{CrcAlgorithm, Digest};

/// The CRC-32C of `data` appended to bytes whose CRC-32C was `crc` (0 for none):
/// `crc_append(crc_append(0, a), b)` is the CRC of `a` followed by `b`.
#[inline]
pub fn crc_append(crc: u32, data: &[u8]) -> u32 {
    if data.is_empty() {
        return crc;
    }
    let mut d = Digest::new_with_init_state(CrcAlgorithm::Crc32Iscsi, u64::from(!crc));
    d.update(data);
    d.finalize() as u32
}

/// The CRC-32C of `data`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    proptest! {
        #[test]
        fn agrees_with_the_crc32c_crate_in_any_pieces(data in proptest::collection::vec(any::<u8>(), 0..5000), cut in 0usize..5000) {
            let cut = cut.min(data.len());
            let want = crc32c::crc32c(&data);
            prop_assert_eq!(crc32c(&data), want);
            prop_assert_eq!(crc_append(crc32c(&data[..cut]), &data[cut..]), want);
        }
    }
}
