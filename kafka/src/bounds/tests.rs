//! The pre-pass against the decoder: sample requests of every served API and version
//! pass and decode to themselves, every truncation and every forged count is refused,
//! and random bodies never panic and never get past the pre-pass with a count the body
//! does not hold.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use proptest::prelude::*;

use super::{CountAt, Refused, RefusedKind, Walker, check};
use crate::SUPPORTED;
use crate::bounds_generated::{self as generated, samples};
use crate::decode::decode;

fn served() -> Vec<(ApiKey, i16)> {
    SUPPORTED
        .iter()
        .flat_map(|&(api, lo, hi)| (lo..=hi).map(move |v| (api, v)))
        .collect()
}

fn header(api: ApiKey, version: i16) -> Vec<u8> {
    let h = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("bounds")));
    let mut buf = BytesMut::new();
    h.encode(&mut buf, api.request_header_version(version))
        .unwrap();
    buf.to_vec()
}

fn sample(api: ApiKey, version: i16) -> (RequestKind, Vec<u8>) {
    let request = samples::request(api, version).unwrap();
    let mut buf = BytesMut::from(&header(api, version)[..]);
    request.encode(&mut buf, version).unwrap();
    (request, buf.to_vec())
}

/// The pre-pass's walk over `body`: the array counts it read, and the bytes left.
fn walk(api: ApiKey, version: i16, body: &[u8]) -> Result<(Vec<CountAt>, usize), Refused> {
    let mut r = Walker::new(body);
    generated::request_header(&mut r, api.request_header_version(version))?;
    generated::request(api, &mut r, version)?;
    let left = r.remaining_bytes();
    Ok((r.counts, left))
}

/// The crate's decoder alone (no pre-pass). Only for bodies the pre-pass accepted, or
/// whose counts are all backed by bytes.
fn crate_decode(api: ApiKey, version: i16, body: &[u8]) -> anyhow::Result<RequestKind> {
    let mut b = Bytes::copy_from_slice(body);
    RequestHeader::decode(&mut b, api.request_header_version(version))?;
    RequestKind::decode(api, &mut b, version)
}

#[test]
fn the_generated_walkers_cover_exactly_the_served_apis() {
    let served: Vec<ApiKey> = SUPPORTED.iter().map(|&(api, _, _)| api).collect();
    assert_eq!(generated::COVERED, &served[..]);
}

#[test]
fn every_served_version_of_a_sample_request_passes_and_decodes_to_itself() {
    let mut arrays = 0;
    for (api, version) in served() {
        let (request, body) = sample(api, version);
        let (counts, left) =
            walk(api, version, &body).unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"));
        assert_eq!(left, 0, "{api:?} v{version}: the walk stops short");
        arrays += counts.len();
        let h = api.request_header_version(version);
        check(api, version, h, &body).unwrap();
        let d = decode(Bytes::from(body)).unwrap_or_else(|_| panic!("{api:?} v{version}"));
        assert_eq!(d.request, request, "{api:?} v{version}");
        assert_eq!(d.client_id, "bounds");
    }
    // The samples have arrays, nested ones included, in every served API.
    assert!(arrays >= 300, "{arrays} arrays walked");
}

#[test]
fn every_truncation_of_a_sample_request_is_refused() {
    for (api, version) in served() {
        let (_, body) = sample(api, version);
        let h = api.request_header_version(version);
        for cut in 0..body.len() {
            let prefix = &body[..cut];
            let why = check(api, version, h, prefix)
                .expect_err(&format!("{api:?} v{version} cut at {cut} passed"));
            assert!(
                matches!(
                    why.kind,
                    RefusedKind::Truncated { .. } | RefusedKind::CountBeyondBody { .. }
                ),
                "{api:?} v{version} cut at {cut}: {why}"
            );
            assert!(decode(Bytes::copy_from_slice(prefix)).is_err());
            // Every count in a prefix is backed by bytes (it is a prefix of a real
            // request), so the crate's decoder may run on it too: it refuses as well.
            assert!(crate_decode(api, version, prefix).is_err());
        }
    }
}

/// `body` with the count at `at` replaced by `count` (a varint when compact).
fn forge(body: &[u8], at: &CountAt, count: u32) -> Vec<u8> {
    let mut out = body[..at.offset].to_vec();
    if at.compact {
        let mut v = count;
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    } else {
        out.extend_from_slice(&count.to_be_bytes());
    }
    out.extend_from_slice(&body[at.offset + at.width..]);
    out
}

#[test]
fn every_forged_count_is_refused_by_the_pre_pass() {
    let mut forged = 0;
    for (api, version) in served() {
        let (_, body) = sample(api, version);
        let (counts, _) = walk(api, version, &body).unwrap();
        let h = api.request_header_version(version);
        for at in &counts {
            let huge = if at.compact {
                u32::MAX
            } else {
                i32::MAX as u32
            };
            let bytes = forge(&body, at, huge);
            let why = check(api, version, h, &bytes).expect_err("a forged count passed");
            assert_eq!(why.field, at.field, "{api:?} v{version}: {why}");
            assert!(
                matches!(why.kind, RefusedKind::CountBeyondBody { .. }),
                "{api:?} v{version}: {why}"
            );
            let Err(crate::decode::Refusal::Close(message)) = decode(Bytes::from(bytes)) else {
                panic!("{api:?} v{version}: a forged count decoded");
            };
            assert!(message.contains(at.field), "{message}");
            if !at.compact {
                let bytes = forge(&body, at, (-2i32) as u32);
                let why = check(api, version, h, &bytes).expect_err("a negative count passed");
                assert_eq!(why.kind, RefusedKind::NegativeLength(-2), "{why}");
            }
            forged += 1;
        }
    }
    assert!(forged >= 300, "{forged} counts forged");
}

#[test]
fn metadata_claiming_two_to_the_31_topics_is_refused_naming_the_field() {
    let mut body = header(ApiKey::Metadata, 1);
    body.extend_from_slice(&i32::MAX.to_be_bytes());
    let Err(crate::decode::Refusal::Close(why)) = decode(Bytes::from(body)) else {
        panic!("decoded");
    };
    assert_eq!(
        why,
        "Metadata v1 could not be decoded: MetadataRequest.topics claims 2147483647 \
         elements, only 0 bytes remain"
    );
}

#[test]
fn what_the_decoder_refuses_the_pre_pass_refuses() {
    let h = ApiKey::Metadata.request_header_version(9);
    let mut base = header(ApiKey::Metadata, 9);
    // One topic (compact count 2): a topic name that is not UTF-8.
    base.extend_from_slice(&[2, 3, 0xff, 0xfe, 0, 0, 0, 0, 0]);
    let why = check(ApiKey::Metadata, 9, h, &base).unwrap_err();
    assert_eq!(why.kind, RefusedKind::NotUtf8);
    assert!(crate_decode(ApiKey::Metadata, 9, &base).is_err());
    // A null where the field is not nullable: Produce v3's topic name.
    let mut produce = header(ApiKey::Produce, 3);
    produce.extend_from_slice(&(-1i16).to_be_bytes());
    produce.extend_from_slice(&1i16.to_be_bytes());
    produce.extend_from_slice(&1000i32.to_be_bytes());
    produce.extend_from_slice(&1i32.to_be_bytes());
    produce.extend_from_slice(&(-1i16).to_be_bytes());
    produce.extend_from_slice(&0i32.to_be_bytes());
    let why = check(ApiKey::Produce, 3, 1, &produce).unwrap_err();
    assert_eq!(why.field, "TopicProduceData.name");
    assert_eq!(why.kind, RefusedKind::Null);
    assert!(crate_decode(ApiKey::Produce, 3, &produce).is_err());
    // A known tagged field in a version without it: Fetch v12's ReplicaState (tag 1).
    let (_, mut fetch) = sample(ApiKey::Fetch, 12);
    let last = fetch.len() - 1;
    assert_eq!(fetch[last], 0, "no tagged fields");
    fetch[last] = 1;
    fetch.extend_from_slice(&[1, 0]);
    let h = ApiKey::Fetch.request_header_version(12);
    let why = check(ApiKey::Fetch, 12, h, &fetch).unwrap_err();
    assert_eq!(
        why.kind,
        RefusedKind::Tag {
            tag: 1,
            version: 12
        }
    );
    assert!(crate_decode(ApiKey::Fetch, 12, &fetch).is_err());
}

/// Asserts what must hold for any body: neither the pre-pass nor the decode path
/// panics, and a body the pre-pass accepts decodes with at most one reserved element
/// per byte.
fn holds_for(api: ApiKey, version: i16, body: &[u8]) -> Result<(), TestCaseError> {
    let h = api.request_header_version(version);
    let passed = check(api, version, h, body).is_ok();
    let decoded = decode(Bytes::copy_from_slice(body));
    if passed {
        let d = decoded
            .map_err(|_| TestCaseError::fail(format!("{api:?} v{version}: passed, not decoded")))?;
        let reserved = samples::reserved(&d.request).unwrap();
        prop_assert!(
            reserved <= body.len(),
            "{api:?} v{version}: {reserved} elements reserved for {} bytes",
            body.len()
        );
    } else {
        prop_assert!(decoded.is_err());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn random_bodies_after_a_valid_header(
        which in any::<prop::sample::Index>(),
        tail in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let all = served();
        let (api, version) = all[which.index(all.len())];
        let mut body = header(api, version);
        body.extend_from_slice(&tail);
        holds_for(api, version, &body)?;
    }

    #[test]
    fn sample_requests_with_random_bytes_overwritten(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let all = served();
        let (api, version) = all[which.index(all.len())];
        let (_, mut body) = sample(api, version);
        let fixed = header(api, version).len();
        if body.len() > fixed {
            for (at, byte) in &edits {
                let i = fixed + at.index(body.len() - fixed);
                body[i] = *byte;
            }
        }
        holds_for(api, version, &body)?;
        let keep = cut.index(body.len() + 1);
        holds_for(api, version, &body[..keep])?;
    }
}
