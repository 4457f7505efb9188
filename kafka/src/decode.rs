//! Decoding a request frame: the header, the API and version checks, the body.

use bytes::Bytes;
use kafka_protocol::messages::{self as km, ApiKey, RequestKind};
use kafka_protocol::protocol::Decodable;

use std::panic::AssertUnwindSafe;

use crate::{bounds, supported};

/// A decoded request.
#[cfg_attr(not(feature = "service"), allow(dead_code))]
pub(crate) struct Decoded {
    pub(crate) api: ApiKey,
    pub(crate) version: i16,
    pub(crate) correlation_id: i32,
    pub(crate) client_id: String,
    pub(crate) request: RequestKind,
}

/// What to do with a frame that is not a request we serve.
#[cfg_attr(not(feature = "service"), allow(dead_code))]
pub(crate) enum Refusal {
    /// Answer ApiVersions v0 with UNSUPPORTED_VERSION (the KIP-511 fallback).
    ApiVersionsFallback(i32),
    /// Close the connection, logging why.
    Close(String),
}

/// Decodes a Kafka request frame's body (without the length prefix) as the listener
/// does: `Ok((api key, version, correlation id))` for a request this listener serves,
/// `Err(why)` for one it refuses (the listener closes the connection, or answers an
/// ApiVersions from the future in v0). For tests and fuzzing.
pub fn check_request(body: Bytes) -> Result<(i16, i16, i32), String> {
    match decode(body) {
        Ok(d) => Ok((d.api as i16, d.version, d.correlation_id)),
        Err(Refusal::ApiVersionsFallback(_)) => Err("ApiVersions from the future".into()),
        Err(Refusal::Close(why)) => Err(why),
    }
}

pub(crate) fn decode(mut body: Bytes) -> Result<Decoded, Refusal> {
    if body.len() < 8 {
        return Err(Refusal::Close(format!(
            "frame of {} bytes is shorter than a request header",
            body.len()
        )));
    }
    let key = i16::from_be_bytes([body[0], body[1]]);
    let version = i16::from_be_bytes([body[2], body[3]]);
    let correlation_id = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
    let api =
        ApiKey::try_from(key).map_err(|_| Refusal::Close(format!("unknown API key {key}")))?;
    let Some((lo, hi)) = supported(api) else {
        return Err(Refusal::Close(format!("API {api:?} is not supported")));
    };
    if version < lo || version > hi {
        if api == ApiKey::ApiVersions && version > hi {
            return Err(Refusal::ApiVersionsFallback(correlation_id));
        }
        return Err(Refusal::Close(format!(
            "{api:?} v{version} is not supported (v{lo} to v{hi} are)"
        )));
    }
    // The decoder reserves memory for every element count the request claims before
    // reading the elements: the pre-pass first checks each count against the bytes
    // that are really there (see `bounds`).
    let header_version = api.request_header_version(version);
    if let Err(why) = bounds::check(api, version, header_version, &body) {
        return Err(Refusal::Close(format!(
            "{api:?} v{version} could not be decoded: {why}"
        )));
    }
    // The crate returns errors for short or malformed input; the unwind guard is a
    // second line, so a decoder bug can only close this one connection.
    let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let h = km::RequestHeader::decode(&mut body, header_version)?;
        let request = RequestKind::decode(api, &mut body, version)?;
        Ok::<_, anyhow::Error>((
            h.client_id.map(|c| c.to_string()).unwrap_or_default(),
            request,
        ))
    }));
    match decoded {
        Ok(Ok((client_id, request))) => Ok(Decoded {
            api,
            version,
            correlation_id,
            client_id,
            request,
        }),
        Ok(Err(e)) => Err(Refusal::Close(format!(
            "{api:?} v{version} could not be decoded: {e}"
        ))),
        Err(_) => Err(Refusal::Close(format!(
            "{api:?} v{version} could not be decoded"
        ))),
    }
}
