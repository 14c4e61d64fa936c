#![no_main]
use libfuzzer_sys::fuzz_target;
use walsink_wal::{TimelineHistory, TimelineId};

fuzz_target!(|data: &[u8]| {
    let tli = TimelineId::new(7).expect("nonzero");
    if let Ok(h) = TimelineHistory::parse(tli, data) {
        for e in &h.ancestors {
            let _ = h.timeline_of(e.switchpoint);
        }
    }
});
