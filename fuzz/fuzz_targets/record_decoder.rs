//! Fuzzes the record decoder: framing checks and envelope parsing over
//! arbitrary bytes, as the runtime applies them to a hostile app's ring.
//!
//! cargo +nightly fuzz run record_decoder
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_shm::record::{check_frame, decode_envelope, decode_region};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max_record = 8 * (1 + u64::from(data[0]) * 8);
    let region = &data[1..];
    let _ = decode_region(region, max_record);
    let _ = decode_envelope(region);
    if region.len() >= 8 {
        let length = i32::from_le_bytes(region[0..4].try_into().unwrap());
        let kind = i32::from_le_bytes(region[4..8].try_into().unwrap());
        let _ = check_frame(
            length,
            kind,
            0,
            region.len() as u64,
            (region.len() / 2) as u64,
            max_record,
        );
    }
});
