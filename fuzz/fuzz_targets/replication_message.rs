#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| walsink_protocol::copy::fuzz_replication_message(data));
