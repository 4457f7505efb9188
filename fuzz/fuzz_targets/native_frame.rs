//! The native protocol's frame and request decoder on arbitrary bytes: it must return
//! a value or an error, never panic, and a decoded request must re-encode to a frame
//! that decodes to the same request.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringmq_net::codec::{self, ApiKey};

fuzz_target!(|data: &[u8]| {
    // As the connection loop does: delimit by the length prefix, then decode.
    let mut rest = data;
    while let Ok(Some(len)) = codec::frame_len(rest, 1 << 20) {
        if rest.len() < 4 + len {
            break;
        }
        let body = Bytes::copy_from_slice(&rest[4..4 + len]);
        if let (Some(h), Ok(req)) = codec::decode_request(body) {
            let again = codec::encode_request(h.request_id, &req);
            let (_, back) = codec::decode_request(Bytes::copy_from_slice(&again[4..]));
            assert_eq!(back.unwrap(), req);
        }
        rest = &rest[4 + len..];
    }
    let b = Bytes::copy_from_slice(data);
    let _ = codec::decode_request(b.clone());
    for api in ApiKey::ALL {
        let _ = codec::decode_response(api, b.clone());
    }
});
