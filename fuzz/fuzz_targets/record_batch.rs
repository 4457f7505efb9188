//! Batch validation on arbitrary bytes: never a panic, and what validates has a
//! consistent header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmq_storage::batch;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = batch::validate(data, 1 << 20) {
        assert_eq!(info.size_bytes, data.len());
        assert!(info.record_count > 0);
        let _ = batch::records(data);
    }
    let _ = batch::peek_frame(data);
});
