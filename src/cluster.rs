//! `ringmq cluster`: certificates for a cluster's nodes, and the cluster's state.

use std::path::PathBuf;

use clap::Subcommand;

/// `ringmq cluster ...`
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Create the cluster CA (once; an existing one in --dir is kept) and a certificate
    /// and key for each node, signed by it: ca.pem, ca.key, node-N.pem, node-N.key.
    /// Give each node ca.pem and its own pair (`serve --cluster-certs DIR`); keep
    /// ca.key apart, it signs new nodes.
    InitCerts {
        /// Where to write the files.
        #[arg(long, default_value = "./certs")]
        dir: PathBuf,
        /// The node ids, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<i32>,
        /// Host names and addresses the certificates also name (comma separated).
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
        hosts: Vec<String>,
    },
    /// The cluster as its metadata says: the nodes (live or fenced), the controller
    /// leader, and per partition its leader, leader epoch, replicas, in-sync replicas
    /// and high watermark.
    Status(StatusArgs),
}

/// Runs a `ringmq cluster` command.
pub fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::InitCerts { dir, nodes, hosts } => {
            let written = ringmq_cluster::init_certs(&dir, &nodes, &hosts)
                .map_err(|e| anyhow::anyhow!("creating certificates in {}: {e}", dir.display()))?;
            for p in written {
                println!("{}", p.display());
            }
            Ok(())
        }
        ClusterCommand::Status(args) => status(args),
    }
}

/// Where `ringmq cluster status` asks.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Any node's Kafka listener, HOST:PORT (comma separated: the first that answers)
    #[arg(long, env = "RINGMQ_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka: String,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

mod kafka_call {
    //! A blocking Kafka request at a fixed version (the cluster status needs the
    //! controller and leader epochs, which librdkafka does not expose).
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use anyhow::{Context, bail};
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::{RequestHeader, RequestKind, ResponseHeader, ResponseKind};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

    pub fn call(addr: &str, version: i16, request: RequestKind) -> anyhow::Result<ResponseKind> {
        let api = match &request {
            RequestKind::Metadata(_) => kafka_protocol::messages::ApiKey::Metadata,
            RequestKind::ListOffsets(_) => kafka_protocol::messages::ApiKey::ListOffsets,
            _ => bail!("unsupported request"),
        };
        let mut stream =
            TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut h = RequestHeader::default();
        h.request_api_key = api as i16;
        h.request_api_version = version;
        h.correlation_id = 1;
        h.client_id = Some(StrBytes::from_static_str("ringmq-cluster-status"));
        let mut body = BytesMut::new();
        h.encode(&mut body, api.request_header_version(version))?;
        request.encode(&mut body, version)?;
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        stream.write_all(&frame)?;
        let mut len = [0u8; 4];
        stream
            .read_exact(&mut len)
            .with_context(|| format!("no answer from {addr}"))?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut body)?;
        let mut body = Bytes::from(body);
        ResponseHeader::decode(&mut body, api.response_header_version(version))?;
        ResponseKind::decode(api, &mut body, version)
    }
}

/// The cluster as its metadata says: nodes, controller, and per partition leader,
/// epoch, replicas, ISR and high watermark.
pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    use kafka_protocol::messages::{self as km, RequestKind, ResponseKind};
    let mut last_error = None;
    let mut metadata = None;
    for addr in args.kafka.split(',') {
        match kafka_call::call(
            addr,
            12,
            RequestKind::Metadata(km::MetadataRequest::default().with_topics(None)),
        ) {
            Ok(ResponseKind::Metadata(m)) => {
                metadata = Some(m);
                break;
            }
            Ok(_) => last_error = Some(anyhow::anyhow!("{addr}: not a metadata answer")),
            Err(e) => last_error = Some(e),
        }
    }
    let Some(m) = metadata else {
        return Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no broker given")));
    };
    let brokers: std::collections::BTreeMap<i32, String> = m
        .brokers
        .iter()
        .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
        .collect();
    let mut partitions = Vec::new();
    let mut topics: Vec<_> = m.topics.iter().collect();
    topics.sort_by_key(|t| t.name.as_ref().map(|n| n.0.to_string()));
    for t in topics {
        let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
        let mut ps: Vec<_> = t.partitions.iter().collect();
        ps.sort_by_key(|p| p.partition_index);
        for p in ps {
            let leader = p.leader_id.0;
            let hw = brokers.get(&leader).and_then(|addr| {
                let mut q = km::ListOffsetsRequest::default();
                q.replica_id = km::BrokerId(-1);
                let mut qt = km::list_offsets_request::ListOffsetsTopic::default();
                qt.name = km::TopicName(kafka_protocol::protocol::StrBytes::from_string(
                    name.clone(),
                ));
                let mut qp = km::list_offsets_request::ListOffsetsPartition::default();
                qp.partition_index = p.partition_index;
                qp.timestamp = -1;
                qt.partitions = vec![qp];
                q.topics = vec![qt];
                match kafka_call::call(addr, 7, RequestKind::ListOffsets(q)).ok()? {
                    ResponseKind::ListOffsets(r) => r
                        .topics
                        .first()?
                        .partitions
                        .first()
                        .filter(|p| p.error_code == 0)
                        .map(|p| p.offset),
                    _ => None,
                }
            });
            partitions.push(serde_json::json!({
                "topic": name,
                "partition": p.partition_index,
                "leader": (leader >= 0).then_some(leader),
                "leader_epoch": p.leader_epoch,
                "replicas": p.replica_nodes.iter().map(|r| r.0).collect::<Vec<_>>(),
                "isr": p.isr_nodes.iter().map(|r| r.0).collect::<Vec<_>>(),
                "high_watermark": hw,
            }));
        }
    }
    // Nodes named as replicas that the metadata does not list as brokers are fenced
    // (stopped, or not heartbeating).
    let mut nodes: std::collections::BTreeMap<i32, Option<String>> = brokers
        .iter()
        .map(|(&id, a)| (id, Some(a.clone())))
        .collect();
    for p in &partitions {
        for r in p["replicas"].as_array().into_iter().flatten() {
            if let Some(r) = r.as_i64() {
                nodes.entry(r as i32).or_insert(None);
            }
        }
    }
    let controller = (m.controller_id.0 >= 0).then_some(m.controller_id.0);
    if args.json {
        let out = serde_json::json!({
            "controller": controller,
            "nodes": nodes.iter().map(|(id, a)| serde_json::json!({
                "id": id, "kafka": a, "live": a.is_some(),
            })).collect::<Vec<_>>(),
            "partitions": partitions,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "controller leader: {}",
        controller.map_or("none".to_string(), |c| format!("node {c}"))
    );
    println!("{:<6} {:<24} STATE", "NODE", "KAFKA");
    for (id, a) in &nodes {
        println!(
            "{:<6} {:<24} {}",
            id,
            a.as_deref().unwrap_or("-"),
            if a.is_some() { "live" } else { "fenced" }
        );
    }
    println!();
    println!(
        "{:<24} {:>4} {:>6} {:>6} {:<12} {:<12} {:>14}",
        "TOPIC", "PART", "LEADER", "EPOCH", "REPLICAS", "ISR", "HIGH-WATERMARK"
    );
    let list = |v: &serde_json::Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    for p in &partitions {
        println!(
            "{:<24} {:>4} {:>6} {:>6} {:<12} {:<12} {:>14}",
            p["topic"].as_str().unwrap_or(""),
            p["partition"].to_string(),
            p["leader"]
                .as_i64()
                .map_or("none".to_string(), |l| l.to_string()),
            p["leader_epoch"].to_string(),
            list(&p["replicas"]),
            list(&p["isr"]),
            p["high_watermark"]
                .as_i64()
                .map_or("?".to_string(), |h| h.to_string()),
        );
    }
    Ok(())
}
