//! The Kafka listener's request decoder on arbitrary bytes: it must accept or refuse,
//! never panic or abort. Runs with the system allocator: the decoder's bounded
//! pre-pass (`kafka/src/bounds.rs`) refuses element counts the body does not hold
//! before the `kafka-protocol` decoder reserves memory for them.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ringmq_kafka::check_request(Bytes::copy_from_slice(data));
    // A body that starts with a valid header for each served API, so the fuzzer
    // reaches the body decoders without first discovering the header.
    if data.len() >= 2 {
        let apis = ringmq_kafka::SUPPORTED;
        let (api, lo, hi) = apis[data[0] as usize % apis.len()];
        let span = (hi - lo + 1) as u8;
        let version = lo + (data[1] % span) as i16;
        let mut body = Vec::with_capacity(data.len() + 10);
        body.extend_from_slice(&(api as i16).to_be_bytes());
        body.extend_from_slice(&version.to_be_bytes());
        body.extend_from_slice(&1i32.to_be_bytes());
        body.extend_from_slice(&data[2..]);
        let _ = ringmq_kafka::check_request(Bytes::from(body));
    }
});
