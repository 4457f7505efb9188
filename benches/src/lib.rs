//! ringmq's benchmarks. The binaries in `src/bin/` measure one thing each and print
//! their figures; the shell scripts beside them (`benches/*.sh`) run them next to a
//! reference measured in the same run (fio, iperf3) and print the ratio.
#![deny(missing_docs)]

pub mod driver;
pub mod kafka;
pub mod load;
pub mod nats;
pub mod rabbitmq;
pub mod redis;

use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::Bytes;
use hdrhistogram::Histogram;
use ringmq_net::codec::{self, ProducePartition, Request, Response};

/// Latency percentiles in microseconds, as the benchmarks report them.
pub fn percentiles_us(h: &Histogram<u64>) -> [(&'static str, u64); 5] {
    [
        ("p50", h.value_at_quantile(0.50)),
        ("p90", h.value_at_quantile(0.90)),
        ("p99", h.value_at_quantile(0.99)),
        ("p99.9", h.value_at_quantile(0.999)),
        ("max", h.max()),
    ]
}

/// The percentiles of [`percentiles_us`] as a JSON object, for `--json` outputs.
pub fn percentiles_json(h: &Histogram<u64>) -> serde_json::Value {
    let mut lat = serde_json::Map::new();
    for (k, v) in percentiles_us(h) {
        lat.insert(k.to_string(), v.into());
    }
    serde_json::Value::Object(lat)
}

/// Reads one native-protocol frame (its body, without the length prefix).
pub fn read_frame(s: &mut TcpStream) -> std::io::Result<Bytes> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body)?;
    Ok(Bytes::from(body))
}

/// Sends one request and reads its response (one request in flight).
pub fn call(s: &mut TcpStream, req: &Request) -> anyhow::Result<Response> {
    s.write_all(&codec::encode_request(0, req))?;
    Ok(codec::decode_response(req.api_key(), read_frame(s)?)?.1)
}

/// One encoded produce request (acks durable) per partition, each carrying `batch`: a
/// load generator sends these as they are, so encoding never limits it.
pub fn produce_frames(topic: &str, partitions: u32, batch: &Bytes, acks: u8) -> Vec<Vec<u8>> {
    (0..partitions)
        .map(|partition| {
            codec::encode_request(
                0,
                &Request::Produce {
                    acks,
                    partitions: vec![ProducePartition {
                        topic: topic.into(),
                        partition,
                        batch: batch.clone(),
                    }],
                },
            )
            .to_vec()
        })
        .collect()
}
