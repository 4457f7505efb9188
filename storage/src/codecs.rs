//! Record compression of Kafka's batch format: what a producer writes, a consumer reads
//! and the broker rewrites when a topic's `compression.type` asks for another codec.
//! lz4 (Kafka's LZ4 frame), zstd, gzip and snappy. Snappy batches from Kafka's Java client
//! use the xerial framing (a magic header, then length-prefixed raw snappy blocks) and
//! librdkafka's are raw snappy; both are read. This client writes the xerial framing,
//! which every Kafka client reads.

use std::io::{Read, Write};

use crate::batch::Compression;

/// The xerial snappy stream header: magic, then version 1 and minimum compatible version 1.
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_HEADER_BYTES: usize = 16;
/// Uncompressed bytes per xerial block, as the Java client writes them.
const XERIAL_BLOCK: usize = 32 << 10;

/// Compresses a records section; `Err` says why.
pub fn compress(records: &[u8], c: Compression) -> Result<Vec<u8>, String> {
    match c {
        Compression::None => Ok(records.to_vec()),
        Compression::Lz4 => {
            let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
            enc.write_all(records)
                .and_then(|()| enc.finish().map_err(std::io::Error::other))
                .map_err(|e| format!("lz4: {e}"))
        }
        Compression::Zstd => zstd::bulk::compress(records, 3).map_err(|e| format!("zstd: {e}")),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(records)
                .and_then(|()| enc.finish())
                .map_err(|e| format!("gzip: {e}"))
        }
        Compression::Snappy => {
            let mut out = Vec::with_capacity(XERIAL_HEADER_BYTES + records.len() / 2);
            out.extend_from_slice(&XERIAL_MAGIC);
            out.extend_from_slice(&1u32.to_be_bytes());
            out.extend_from_slice(&1u32.to_be_bytes());
            let mut enc = snap::raw::Encoder::new();
            for block in records.chunks(XERIAL_BLOCK) {
                let packed = enc
                    .compress_vec(block)
                    .map_err(|e| format!("snappy: {e}"))?;
                out.extend_from_slice(&(packed.len() as u32).to_be_bytes());
                out.extend_from_slice(&packed);
            }
            Ok(out)
        }
    }
}

/// [`compress`] at a given level for gzip (-1: zlib's default, 6; else 1 to 9) and
/// zstd (Kafka's `compression.gzip.level` and `compression.zstd.level`); the other
/// codecs have one level here.
pub fn compress_level(records: &[u8], c: Compression, level: i32) -> Result<Vec<u8>, String> {
    match c {
        Compression::Gzip => {
            let level = if level < 0 {
                flate2::Compression::default()
            } else {
                flate2::Compression::new(level.clamp(1, 9) as u32)
            };
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), level);
            enc.write_all(records)
                .and_then(|()| enc.finish())
                .map_err(|e| format!("gzip: {e}"))
        }
        Compression::Zstd => zstd::bulk::compress(records, level).map_err(|e| format!("zstd: {e}")),
        other => compress(records, other),
    }
}

/// Decompresses a records section; `Err` says what was wrong with it.
pub fn decompress(packed: &[u8], c: Compression) -> Result<Vec<u8>, String> {
    decompress_max(packed, c, usize::MAX)
}

/// [`decompress`] that refuses to produce more than `max_bytes` (a hostile batch that
/// would expand without bound is refused, not held in memory).
pub fn decompress_max(packed: &[u8], c: Compression, max_bytes: usize) -> Result<Vec<u8>, String> {
    let limit = (max_bytes as u64).saturating_add(1);
    let check = |out: Vec<u8>| {
        if out.len() > max_bytes {
            Err(format!("records expand beyond {max_bytes} bytes"))
        } else {
            Ok(out)
        }
    };
    // Reads a decoder to its end or one byte past the limit, whichever comes first.
    let read = |r: &mut dyn Read, what: &str| {
        let mut out = Vec::new();
        r.take(limit)
            .read_to_end(&mut out)
            .map_err(|e| format!("{what} records: {e}"))?;
        check(out)
    };
    match c {
        Compression::None => check(packed.to_vec()),
        Compression::Lz4 => read(&mut lz4_flex::frame::FrameDecoder::new(packed), "lz4"),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(packed)
                .map_err(|e| format!("zstd records: {e}"))?;
            read(&mut d, "zstd")
        }
        Compression::Gzip => read(&mut flate2::read::GzDecoder::new(packed), "gzip"),
        Compression::Snappy => {
            let mut dec = snap::raw::Decoder::new();
            let fits = |block: &[u8], sofar: usize| {
                let n =
                    snap::raw::decompress_len(block).map_err(|e| format!("snappy records: {e}"))?;
                if sofar.saturating_add(n) > max_bytes {
                    return Err(format!("records expand beyond {max_bytes} bytes"));
                }
                Ok(())
            };
            if !packed.starts_with(&XERIAL_MAGIC) {
                fits(packed, 0)?;
                return dec
                    .decompress_vec(packed)
                    .map_err(|e| format!("snappy records: {e}"));
            }
            let mut out = Vec::new();
            let mut rest = packed
                .get(XERIAL_HEADER_BYTES..)
                .ok_or("snappy records: truncated xerial header")?;
            while !rest.is_empty() {
                let len = rest
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                    .ok_or("snappy records: truncated block length")?;
                let block = rest
                    .get(4..4 + len)
                    .ok_or("snappy records: block longer than the batch")?;
                fits(block, out.len())?;
                out.extend(
                    dec.decompress_vec(block)
                        .map_err(|e| format!("snappy records: {e}"))?,
                );
                rest = &rest[4 + len..];
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Lz4,
        Compression::Zstd,
        Compression::Gzip,
        Compression::Snappy,
    ];

    #[test]
    fn every_codec_round_trips_and_refuses_garbage() {
        let records: Vec<u8> = (0..200_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 977) as u8)
            .collect();
        for c in ALL {
            let packed = compress(&records, c).unwrap();
            assert_eq!(decompress(&packed, c).unwrap(), records, "{c:?}");
            if c != Compression::None {
                assert!(packed.len() < records.len(), "{c:?} compresses");
                assert!(
                    decompress(&packed[..packed.len() / 2], c).is_err(),
                    "{c:?} truncated"
                );
            }
        }
        // A small batch that expands beyond the limit is refused, whatever the codec.
        let zeros = vec![0u8; 8 << 20];
        for c in ALL {
            let packed = compress(&zeros, c).unwrap();
            assert!(decompress_max(&packed, c, 1 << 20).is_err(), "{c:?}");
            assert_eq!(decompress_max(&packed, c, 8 << 20).unwrap().len(), 8 << 20);
        }
        // librdkafka's snappy: raw, without the xerial framing.
        let raw = snap::raw::Encoder::new().compress_vec(&records).unwrap();
        assert_eq!(decompress(&raw, Compression::Snappy).unwrap(), records);
        assert!(
            decompress(
                b"\x82SNAPPY\x00\0\0\0\x01\0\0\0\x01\xff\xff\xff\xff",
                Compression::Snappy
            )
            .is_err()
        );
    }
}
