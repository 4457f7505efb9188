//! The admin HTTP listener (`--admin-listen`, default 127.0.0.1:9644): Prometheus
//! metrics at `/metrics` and a JSON API under `/v1/`.
//!
//! It runs on shard 0, in a task queue of its own with few shares (`ADMIN_SHARES`
//! against the connections' default 1000): when the shard is busy with produce and
//! fetch work, admin requests get a small slice of the core and wait, rather than the
//! data path waiting for them. A thread of its own would need locks or channels to
//! reach the shards' state; here it asks the shards as any request does (one
//! cross-shard call per shard for a scrape). HTTP/1.1 is parsed with `httparse`; keep-
//! alive is honoured, one request at a time per connection.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{Latency, Shares, TaskQueueHandle};
use ringmq_shard::broker::Shard;
use ringmq_shard::error::{BrokerError, ErrorKind};
use ringmq_shard::groups::{
    CONSUMER_PROTOCOL_TYPE, CommitOffsets, FetchOffsets, GroupOp, GroupReply, GroupState,
    NATIVE_PROTOCOL_TYPE, OffsetCommit, assign,
};
use ringmq_shard::ops::{
    Fetch, FetchPart, Isolation, OffsetQuery, OffsetSpec, Reader, TopicOp, TopicPartition,
    records_bytes,
};
use ringmq_storage::batch::{self, Compression};
use serde_json::{Value, json};

/// Shares of the admin task queue (connections run in the default queue, 1000).
const ADMIN_SHARES: usize = 50;
/// Largest request head (request line and headers).
const HEAD_BYTES_MAX: usize = 16 << 10;
/// Largest request body.
const BODY_BYTES_MAX: usize = 1 << 20;
/// A connection idle this long between requests, or this slow to send one, is closed.
const IDLE: Duration = Duration::from_secs(60);
/// Admin connections served at once; more are closed at once.
const CONNECTIONS_MAX: usize = 256;

/// Serves the admin API on `listener` until `stop` is set.
pub(crate) async fn serve(
    listener: TcpListener,
    shard: Rc<Shard>,
    settings: Rc<Value>,
    stop: Arc<AtomicBool>,
) {
    let tq = glommio::executor().create_task_queue(
        Shares::Static(ADMIN_SHARES),
        Latency::NotImportant,
        "admin",
    );
    let open = Rc::new(std::cell::Cell::new(0usize));
    // As the data listeners do: one accept in flight across the ticks that look at the
    // stop flag (dropping an accept could lose a connection the kernel took).
    let mut accept = Box::pin(listener.accept());
    loop {
        let tick = shard
            .timers()
            .sleep_until(Instant::now() + Duration::from_millis(100));
        let accepted = futures_lite::future::or(async { Some((&mut accept).await) }, async {
            tick.await;
            None
        })
        .await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Some(r) = accepted else { continue };
        accept = Box::pin(listener.accept());
        match r {
            Ok(stream) if open.get() < CONNECTIONS_MAX => {
                open.set(open.get() + 1);
                let (shard, open, settings) = (shard.clone(), open.clone(), settings.clone());
                spawn(tq, async move {
                    if let Err(e) = connection(stream, &shard, &settings).await {
                        tracing::debug!(error = %e, "admin connection ended");
                    }
                    open.set(open.get() - 1);
                });
            }
            Ok(stream) => drop(stream),
            Err(e) => {
                tracing::warn!(error = %e, "admin listener: accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn spawn(tq: TaskQueueHandle, f: impl Future<Output = ()> + 'static) {
    glommio::spawn_local_into(f, tq)
        .expect("the admin task queue lives as long as the shard")
        .detach();
}

/// A request as the router sees it.
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    body: &'a [u8],
}

/// An answer.
struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn json(status: u16, v: &Value) -> Self {
        let mut body = serde_json::to_vec_pretty(v).expect("JSON values serialize");
        body.push(b'\n');
        Self {
            status,
            content_type: "application/json",
            body,
        }
    }

    fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self::json(
            status,
            &json!({"error": {"code": code, "message": message.into()}}),
        )
    }

    fn broker_error(e: &BrokerError) -> Self {
        let status = match e.kind {
            ErrorKind::UnknownTopic | ErrorKind::UnknownPartition | ErrorKind::GroupIdNotFound => {
                404
            }
            ErrorKind::TopicExists | ErrorKind::NonEmptyGroup => 409,
            ErrorKind::InvalidTopic
            | ErrorKind::InvalidPartitions
            | ErrorKind::InvalidConfig
            | ErrorKind::InvalidReplicationFactor
            | ErrorKind::InvalidRequest => 400,
            _ => 503,
        };
        let code = format!("{:?}", e.kind);
        Self::error(status, &code, e.message.clone())
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Serves one connection's requests in turn until the client closes it, asks to, or
/// sends something that is not HTTP/1.x.
async fn connection(
    mut stream: TcpStream,
    shard: &Rc<Shard>,
    settings: &Value,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // The head: read until it parses completely.
        let (head_len, method, path, body_len, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut body_len = 0usize;
                    let mut close = req.version == Some(0);
                    for h in req.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            body_len = match std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok())
                            {
                                Some(n) => n,
                                None => {
                                    let r = Response::error(
                                        400,
                                        "bad_request",
                                        "a Content-Length that is not a number",
                                    );
                                    return write(&mut stream, &r, true).await;
                                }
                            };
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                            close = v.contains("close")
                                || (req.version == Some(0) && !v.contains("keep-alive"));
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            let r = Response::error(
                                400,
                                "bad_request",
                                "chunked request bodies are not supported: send a Content-Length",
                            );
                            return write(&mut stream, &r, true).await;
                        }
                    }
                    let method = req.method.unwrap_or("").to_string();
                    let path = req.path.unwrap_or("/").to_string();
                    break (n, method, path, body_len, close);
                }
                Ok(httparse::Status::Partial) if buf.len() >= HEAD_BYTES_MAX => {
                    let r = Response::error(
                        431,
                        "head_too_large",
                        format!("request line and headers over {HEAD_BYTES_MAX} bytes"),
                    );
                    return write(&mut stream, &r, true).await;
                }
                Ok(httparse::Status::Partial) => {
                    if read_more(&mut stream, &mut buf).await? == 0 {
                        return Ok(()); // closed between requests (or mid-head)
                    }
                }
                Err(e) => {
                    let r = Response::error(
                        400,
                        "bad_request",
                        format!("not an HTTP/1.x request: {e}"),
                    );
                    return write(&mut stream, &r, true).await;
                }
            }
        };
        if body_len > BODY_BYTES_MAX {
            let r = Response::error(
                413,
                "body_too_large",
                format!("request bodies are at most {BODY_BYTES_MAX} bytes"),
            );
            return write(&mut stream, &r, true).await;
        }
        while buf.len() < head_len + body_len {
            if read_more(&mut stream, &mut buf).await? == 0 {
                return Ok(());
            }
        }
        let (path, query) = path.split_once('?').unwrap_or((path.as_str(), ""));
        let req = Request {
            method: &method,
            path,
            query,
            body: &buf[head_len..head_len + body_len],
        };
        let resp = route(shard, settings, &req).await;
        write(&mut stream, &resp, close).await?;
        buf.drain(..head_len + body_len);
        if close {
            return Ok(());
        }
    }
}

/// Reads what the socket has into `buf`; 0 when the peer closed it. Times out after
/// [`IDLE`].
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let read = futures_lite::future::or(async { Some(stream.read(&mut chunk).await) }, async {
        glommio::timer::sleep(IDLE).await;
        None
    })
    .await;
    match read {
        Some(Ok(n)) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(n)
        }
        Some(Err(e)) => Err(e),
        None => Ok(0),
    }
}

async fn write(stream: &mut TcpStream, r: &Response, close: bool) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{}\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len(),
        if close { "Connection: close\r\n" } else { "" }
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(&r.body);
    stream.write_all(&out).await?;
    stream.flush().await
}

/// The web console: one page (HTML, CSS and JavaScript, no build step) that reads this
/// API and `/metrics`, embedded in the binary.
const CONSOLE: &str = include_str!("console/index.html");

/// Every endpoint, for `GET /v1` and for 404 answers.
const ENDPOINTS: &[(&str, &str, &str)] = &[
    ("GET", "/", "the web console"),
    ("GET", "/v1", "this list"),
    (
        "GET",
        "/metrics",
        "Prometheus metrics (text format 0.0.4); docs/operations.md lists them",
    ),
    ("GET", "/v1/health", "200 while the broker serves"),
    (
        "GET",
        "/v1/ready",
        "200 once this node can serve (in a cluster: it has the metadata and is registered), 503 before",
    ),
    (
        "GET",
        "/v1/broker",
        "version, node id, shards, cluster nodes and controller",
    ),
    (
        "GET",
        "/v1/configs",
        "the broker's settings in effect (flags, variables, file, defaults)",
    ),
    ("GET", "/v1/topics", "every topic with its partition count"),
    (
        "GET",
        "/v1/topics/{name}",
        "a topic's settings and partitions: offsets, size, leader, replicas, ISR",
    ),
    (
        "POST",
        "/v1/topics",
        "create a topic: {\"name\", \"partitions\", \"replication_factor\"?, \"configs\"?: {key: value}}",
    ),
    ("DELETE", "/v1/topics/{name}", "delete a topic and its data"),
    (
        "GET",
        "/v1/topics/{name}/records?partition=P&offset=O|timestamp=MS&limit=N",
        "records of a partition from an offset or a time (default: the last N), keys, values and headers as text",
    ),
    (
        "GET",
        "/v1/groups",
        "the consumer groups this node coordinates, with their state",
    ),
    (
        "GET",
        "/v1/groups/{name}",
        "a group's state, members with their assigned partitions, and per partition its committed offset, high watermark, lag and the member reading it",
    ),
    (
        "POST",
        "/v1/groups/{name}/reset-offsets",
        "set a group's committed offsets for a topic: {\"topic\", \"to\": \"earliest\" | \"latest\" | OFFSET | \"@TIMESTAMP_MS\"}; refused while it has members",
    ),
    (
        "DELETE",
        "/v1/groups/{name}",
        "delete a group without members, with its committed offsets",
    ),
];

async fn route(shard: &Rc<Shard>, settings: &Value, req: &Request<'_>) -> Response {
    // Segments percent-decoded: a group id may hold any character.
    let decoded: Vec<String> = req
        .path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    // The methods each path takes (none: no such path).
    let allowed: &[&str] = match segments.as_slice() {
        [] | ["metrics"] | ["v1"] | ["v1", "health" | "ready" | "broker" | "configs"] => &["GET"],
        ["v1", "topics"] => &["GET", "POST"],
        ["v1", "topics", _] | ["v1", "groups", _] => &["GET", "DELETE"],
        ["v1", "topics", _, "records"] => &["GET"],
        ["v1", "groups", _, "reset-offsets"] => &["POST"],
        ["v1", "groups"] => &["GET"],
        _ => &[],
    };
    if allowed.is_empty() {
        return Response::json(
            404,
            &json!({
                "error": {"code": "not_found", "message": format!("no endpoint {}", req.path)},
                "endpoints": endpoints(),
            }),
        );
    }
    if !allowed.contains(&req.method) {
        return Response::error(
            405,
            "method_not_allowed",
            format!(
                "{} {} is not supported: {} only",
                req.method,
                req.path,
                allowed.join(", ")
            ),
        );
    }
    let answer = |r: Result<Value, BrokerError>| match r {
        Ok(v) => Response::json(200, &v),
        Err(e) => Response::broker_error(&e),
    };
    match (req.method, segments.as_slice()) {
        ("GET", []) => Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: CONSOLE.as_bytes().to_vec(),
        },
        ("GET", ["v1"]) => Response::json(
            200,
            &json!({"ringmq": env!("CARGO_PKG_VERSION"), "endpoints": endpoints()}),
        ),
        ("GET", ["metrics"]) => match shard.scrape().await {
            Ok(text) => Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: text.into_bytes(),
            },
            Err(e) => Response::broker_error(&e),
        },
        ("GET", ["v1", "health"]) => Response::json(200, &json!({"status": "ok"})),
        ("GET", ["v1", "ready"]) => {
            let (ready, why) = readiness(shard);
            Response::json(
                if ready { 200 } else { 503 },
                &json!({"ready": ready, "reason": why}),
            )
        }
        ("GET", ["v1", "broker"]) => Response::json(200, &broker(shard)),
        ("GET", ["v1", "configs"]) => Response::json(200, &json!({"broker": settings})),
        ("GET", ["v1", "topics"]) => {
            let mut names = shard.topic_names();
            names.sort();
            let topics: Vec<Value> = names
                .iter()
                .filter_map(|n| {
                    shard.topic(n).map(|m| {
                        json!({"name": n, "partitions": m.partitions, "internal": n.starts_with("__")})
                    })
                })
                .collect();
            Response::json(200, &json!({"topics": topics}))
        }
        ("POST", ["v1", "topics"]) => match create_topic(shard, req.body).await {
            Ok(v) => Response::json(201, &v),
            Err(r) => r,
        },
        ("GET", ["v1", "topics", name]) => answer(topic(shard, name).await),
        ("DELETE", ["v1", "topics", name]) => answer(
            shard
                .change_topics(TopicOp::Delete {
                    name: name.to_string(),
                })
                .await
                .map(|()| json!({"deleted": name})),
        ),
        ("GET", ["v1", "topics", name, "records"]) => answer(browse(shard, name, req.query).await),
        ("GET", ["v1", "groups"]) => answer(groups(shard).await),
        ("GET", ["v1", "groups", name]) => answer(group(shard, name).await),
        ("DELETE", ["v1", "groups", name]) => answer(delete_group(shard, name).await),
        ("POST", ["v1", "groups", name, "reset-offsets"]) => {
            match reset_offsets(shard, name, req.body).await {
                Ok(v) => Response::json(200, &v),
                Err(r) => r,
            }
        }
        _ => unreachable!("the methods of each path are checked above"),
    }
}

/// `POST /v1/topics`: the body's topic, created through the metadata shard (the
/// controller in a cluster), as `ringmq topic create` does.
async fn create_topic(shard: &Rc<Shard>, body: &[u8]) -> Result<Value, Response> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NewTopic {
        name: String,
        partitions: u32,
        replication_factor: Option<u16>,
        #[serde(default)]
        configs: std::collections::BTreeMap<String, String>,
    }
    let t: NewTopic = serde_json::from_slice(body).map_err(|e| {
        Response::error(
            400,
            "bad_request",
            format!(
                "the body is not a topic ({{\"name\", \"partitions\", \"replication_factor\"?, \"configs\"?}}): {e}"
            ),
        )
    })?;
    shard
        .change_topics(TopicOp::Create {
            name: t.name.clone(),
            partitions: t.partitions,
            configs: t.configs.into_iter().collect(),
            replication_factor: t.replication_factor,
            validate_only: false,
        })
        .await
        .map_err(|e| Response::broker_error(&e))?;
    Ok(json!({"created": t.name, "partitions": t.partitions}))
}

/// The groups this node's shards coordinate.
async fn groups(shard: &Rc<Shard>) -> Result<Value, BrokerError> {
    let mut out = Vec::new();
    for s in 0..shard.shard_count() {
        match shard.group_request_on(s, GroupOp::List, Duration::ZERO).await {
            Some(GroupReply::List(gs)) => out.extend(gs.into_iter().map(|g| {
                json!({"name": g.group, "state": g.state.name(), "protocol_type": g.protocol_type})
            })),
            _ => return Err(BrokerError::shard_silent(s)),
        }
    }
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(json!({"groups": out}))
}

/// The offset `spec` names in `tp`, as the partition's leader shard answers it: `None`
/// when there is none (no record at or after a time).
async fn offset_of(
    shard: &Rc<Shard>,
    tp: &TopicPartition,
    spec: OffsetSpec,
) -> Result<Option<i64>, BrokerError> {
    let query = OffsetQuery {
        tp: tp.clone(),
        spec,
        leader_epoch: None,
    };
    match shard
        .list_offsets(vec![query])
        .await
        .pop()
        .map(|f| f.result)
    {
        Some(Ok(found)) => Ok(found.map(|(o, _, _)| o)),
        Some(Err(e)) => Err(e),
        None => Err(no_answer()),
    }
}

/// A partition's shard that gave no answer.
fn no_answer() -> BrokerError {
    BrokerError::new(ErrorKind::Unavailable, "no answer for the partition")
}

fn group_shard_silent() -> BrokerError {
    BrokerError::new(ErrorKind::Unavailable, "the group's shard did not answer")
}

/// A group's state, members and lag, from its coordinator: this node (in a cluster, a
/// group another node coordinates is refused, NotCoordinator).
async fn group(shard: &Rc<Shard>, name: &str) -> Result<Value, BrokerError> {
    let described = match shard
        .group_request(GroupOp::Describe { group: name.into() }, Duration::ZERO)
        .await
    {
        Some(GroupReply::Describe(r)) => r?,
        _ => return Err(group_shard_silent()),
    };
    if described.state == GroupState::Dead {
        return Err(BrokerError::new(
            ErrorKind::GroupIdNotFound,
            format!("no group {name:?}"),
        ));
    }
    let committed = match shard
        .group_request(
            GroupOp::FetchOffsets(FetchOffsets {
                group: name.into(),
                topics: None,
                require_stable: false,
            }),
            Duration::ZERO,
        )
        .await
    {
        Some(GroupReply::FetchOffsets(r)) => r?,
        _ => return Err(group_shard_silent()),
    };
    let mut offsets = Vec::new();
    let mut total_lag = 0i64;
    for t in committed {
        // The high watermarks of the topic's partitions, as this node knows them.
        let hws: Vec<i64> = match shard.describe_topic(&t.topic).await {
            Ok((_, stats)) => stats.iter().map(|s| s.high_watermark).collect(),
            Err(_) => Vec::new(),
        };
        for (p, c) in t.partitions {
            let Some(c) = c else { continue };
            let hw = usize::try_from(p)
                .ok()
                .and_then(|i| hws.get(i))
                .copied()
                .filter(|&h| h >= 0);
            let lag = hw.map(|h| (h - c.offset).max(0));
            total_lag += lag.unwrap_or(0);
            offsets.push(json!({
                "topic": t.topic, "partition": p, "committed": c.offset,
                "high_watermark": hw, "lag": lag,
            }));
        }
    }
    // Each member's partitions, from its assignment in the group's protocol.
    let assignments: Vec<Vec<(String, Vec<i32>)>> = described
        .members
        .iter()
        .map(|m| assigned_partitions(&described.protocol_type, &m.assignment))
        .collect();
    let owner = |topic: &str, partition: i32| {
        described
            .members
            .iter()
            .zip(&assignments)
            .find_map(|(m, a)| {
                a.iter()
                    .any(|(t, ps)| t == topic && ps.contains(&partition))
                    .then(|| m.member_id.clone())
            })
    };
    for o in &mut offsets {
        let (Some(t), Some(p)) = (o["topic"].as_str(), o["partition"].as_i64()) else {
            continue;
        };
        let member = i32::try_from(p).ok().and_then(|p| owner(t, p));
        o["member"] = json!(member);
    }
    let members: Vec<Value> = described
        .members
        .iter()
        .zip(&assignments)
        .map(|(m, a)| {
            let assignment: Vec<Value> = a
                .iter()
                .map(|(t, ps)| json!({"topic": t, "partitions": ps}))
                .collect();
            json!({
                "member_id": m.member_id, "instance_id": m.instance_id,
                "client_id": m.client_id, "client_host": m.client_host,
                "assignment": assignment,
            })
        })
        .collect();
    Ok(json!({
        "name": name,
        "state": described.state.name(),
        "protocol_type": described.protocol_type,
        "protocol": described.protocol,
        "members": members,
        "offsets": offsets,
        "lag": total_lag,
    }))
}

/// The partitions a member's assignment gives it: native groups' own encoding, or Kafka's
/// consumer protocol (a version, then the assignment in that version). Other protocols
/// (Kafka Connect, for one) are opaque to the broker: no partitions.
fn assigned_partitions(protocol_type: &str, assignment: &[u8]) -> Vec<(String, Vec<i32>)> {
    match protocol_type {
        NATIVE_PROTOCOL_TYPE => {
            let mut by_topic: Vec<(String, Vec<i32>)> = Vec::new();
            for (t, p) in assign::decode_assignment(assignment) {
                let p = i32::try_from(p).unwrap_or(i32::MAX);
                match by_topic.iter_mut().find(|(x, _)| *x == t) {
                    Some((_, ps)) => ps.push(p),
                    None => by_topic.push((t, vec![p])),
                }
            }
            by_topic
        }
        CONSUMER_PROTOCOL_TYPE => crate::group::parse_assignment(assignment),
        _ => Vec::new(),
    }
}

async fn delete_group(shard: &Rc<Shard>, name: &str) -> Result<Value, BrokerError> {
    match shard
        .group_request(GroupOp::Delete { group: name.into() }, Duration::ZERO)
        .await
    {
        Some(GroupReply::Delete(r)) => r.map(|()| json!({"deleted": name})),
        _ => Err(group_shard_silent()),
    }
}

/// `%XX` escapes of a path segment decoded (invalid UTF-8 replaced; a `%` not followed
/// by two hex digits kept as it is).
fn percent_decode(segment: &str) -> String {
    let b = segment.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn endpoints() -> Vec<Value> {
    ENDPOINTS
        .iter()
        .map(|(m, p, what)| json!({"method": m, "path": p, "description": what}))
        .collect()
}

fn readiness(shard: &Shard) -> (bool, String) {
    if !shard.clustered() {
        return (true, "a single node".into());
    }
    match shard.cluster() {
        None => (
            false,
            "the node has not learned the cluster's metadata yet".into(),
        ),
        Some(c) if !c.registered => (
            false,
            "the controller has not registered this node yet".into(),
        ),
        Some(_) => (true, "registered with the controller".into()),
    }
}

fn broker(shard: &Shard) -> Value {
    let cluster = shard.cluster().map(|c| {
        let nodes: Vec<Value> = c
            .nodes
            .iter()
            .map(|(id, n)| json!({"id": id, "kafka": format!("{}:{}", n.kafka_host, n.kafka_port), "native": n.native, "fenced": n.fenced}))
            .collect();
        json!({"controller": c.controller, "nodes": nodes, "metadata_index": c.applied_index})
    });
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "node_id": shard.node_id(),
        "shards": shard.shard_count(),
        "clustered": shard.clustered(),
        "cluster": cluster,
    })
}

async fn topic(shard: &Rc<Shard>, name: &str) -> Result<Value, BrokerError> {
    let (meta, stats) = shard.describe_topic(name).await?;
    let cluster = shard.cluster();
    let partitions: Vec<Value> = stats
        .iter()
        .map(|s| {
            let view = cluster.as_ref().and_then(|c| {
                c.partition(&TopicPartition::new(name, s.tp.partition))
                    .cloned()
            });
            let (leader, replicas, isr) = match &view {
                Some(v) => (v.leader, v.replicas.clone(), v.isr.clone()),
                None if cluster.is_none() => (
                    Some(shard.node_id()),
                    vec![shard.node_id()],
                    vec![shard.node_id()],
                ),
                None => (None, Vec::new(), Vec::new()),
            };
            json!({
                "partition": s.tp.partition,
                "shard": s.shard,
                "log_start_offset": s.start_offset,
                "high_watermark": s.high_watermark,
                "size_bytes": s.size_bytes,
                "leader": leader,
                "leader_epoch": s.leader_epoch,
                "replicas": replicas,
                "isr": isr,
            })
        })
        .collect();
    Ok(json!({
        "name": name,
        "partitions": partitions,
        "configs": meta.configs,
    }))
}

/// Records shown by the message browser at most per request.
const BROWSE_RECORDS_MAX: usize = 500;

/// `GET /v1/topics/{name}/records?partition=P&offset=O|timestamp=MS&limit=N`: up to N
/// records (default 50) of one partition (default 0) from an offset, from the first
/// record at or after a timestamp, or by default the last N below the high watermark.
/// Keys, values and header values are shown as UTF-8 (invalid bytes replaced), with
/// their sizes.
async fn browse(shard: &Rc<Shard>, topic: &str, query: &str) -> Result<Value, BrokerError> {
    let bad = |m: String| BrokerError::new(ErrorKind::InvalidRequest, m);
    let mut partition = 0u32;
    let (mut offset, mut timestamp) = (None, None);
    let mut limit = 50usize;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let int = |v: &str| {
            v.parse::<i64>()
                .map_err(|_| bad(format!("{k}={v}: not a number")))
        };
        match k {
            "partition" => {
                partition = u32::try_from(int(v)?).map_err(|_| bad(format!("partition={v}")))?
            }
            "offset" => offset = Some(int(v)?),
            "timestamp" => timestamp = Some(int(v)?),
            "limit" => {
                limit = usize::try_from(int(v)?)
                    .unwrap_or(0)
                    .clamp(1, BROWSE_RECORDS_MAX)
            }
            _ => {
                return Err(bad(format!(
                    "unknown parameter {k:?}: partition, offset, timestamp and limit are"
                )));
            }
        }
    }
    let meta = shard
        .topic(topic)
        .ok_or_else(|| BrokerError::unknown_topic(topic))?;
    if partition >= meta.partitions {
        return Err(BrokerError::new(
            ErrorKind::UnknownPartition,
            format!(
                "topic {topic} has {} partition(s); there is no partition {partition}",
                meta.partitions
            ),
        ));
    }
    let tp = TopicPartition::new(topic, partition);
    let high_watermark = offset_of(shard, &tp, OffsetSpec::Latest)
        .await?
        .unwrap_or(0);
    let log_start = offset_of(shard, &tp, OffsetSpec::Earliest)
        .await?
        .unwrap_or(0);
    let start = match (offset, timestamp) {
        (Some(o), _) => o.max(log_start),
        (None, Some(t)) => offset_of(shard, &tp, OffsetSpec::Timestamp(t))
            .await?
            .unwrap_or(high_watermark),
        (None, None) => (high_watermark - limit as i64).max(log_start),
    };
    let mut out = Vec::new();
    let mut at = start;
    // Batches come whole: a fetch may start before `at` (in the batch that holds it).
    while out.len() < limit && at < high_watermark {
        let fetched = shard
            .fetch(Fetch {
                reader: Reader::Consumer(Isolation::ReadUncommitted),
                max_wait: Duration::ZERO,
                min_bytes: 0,
                max_bytes: 4 << 20,
                parts: vec![FetchPart {
                    tp: tp.clone(),
                    offset: at,
                    max_bytes: 4 << 20,
                    leader_epoch: None,
                    durable_offset: None,
                }],
            })
            .await;
        let records = fetched
            .into_iter()
            .next()
            .map(|f| f.records)
            .unwrap_or_else(|| Err(no_answer()))?;
        let before = at;
        for chunk in records_bytes(&records)? {
            let mut pos = 0;
            while pos < chunk.len() && out.len() < limit {
                let Some((_, size)) =
                    batch::peek_frame(&chunk[pos..]).filter(|(_, s)| pos + s <= chunk.len())
                else {
                    break;
                };
                let b = &chunk[pos..pos + size];
                pos += size;
                let info = batch::parse_header(b)
                    .map_err(|e| BrokerError::new(ErrorKind::CorruptBatch, e.to_string()))?;
                at = at.max(info.last_offset() + 1);
                if info.is_control {
                    continue;
                }
                let plain;
                let b = if info.compression == Compression::None {
                    b
                } else {
                    let section = ringmq_storage::codecs::decompress_max(
                        &b[batch::HEADER_BYTES..],
                        info.compression,
                        64 << 20,
                    )
                    .map_err(|e| BrokerError::new(ErrorKind::CorruptBatch, e))?;
                    plain = batch::with_records_section(b, Compression::None, &section);
                    &plain[..]
                };
                let recs = batch::records(b)
                    .map_err(|e| BrokerError::new(ErrorKind::CorruptBatch, e.to_string()))?;
                for r in recs {
                    let offset = info.base_offset + i64::from(r.offset_delta);
                    if offset < start || out.len() >= limit {
                        continue;
                    }
                    let text =
                        |v: Option<&[u8]>| v.map(|v| String::from_utf8_lossy(v).into_owned());
                    out.push(json!({
                        "offset": offset,
                        "timestamp": info.base_timestamp + r.timestamp_delta,
                        "key": text(r.key),
                        "value": text(r.value),
                        "value_bytes": r.value.map_or(0, <[u8]>::len),
                        "headers": headers(r.headers_raw),
                    }));
                }
            }
        }
        if at == before {
            break; // nothing more below the high watermark could be read
        }
    }
    let next = out
        .last()
        .and_then(|r| r["offset"].as_i64())
        .map_or(start, |o| o + 1);
    Ok(json!({
        "topic": topic,
        "partition": partition,
        "log_start_offset": log_start,
        "high_watermark": high_watermark,
        "start_offset": start,
        "next_offset": next,
        "records": out,
    }))
}

/// A record's headers as `[[key, value], ...]` (values as UTF-8, invalid bytes
/// replaced); empty when they do not decode.
fn headers(raw: &[u8]) -> Value {
    let mut out = Vec::new();
    let Some((count, mut p)) = batch::read_varint(raw) else {
        return json!([]);
    };
    for _ in 0..count.max(0) {
        let field = |p: &mut usize| -> Option<Option<&[u8]>> {
            let (len, n) = batch::read_varint(raw.get(*p..)?)?;
            *p += n;
            if len < 0 {
                return Some(None);
            }
            let v = raw.get(*p..*p + len as usize)?;
            *p += len as usize;
            Some(Some(v))
        };
        let (Some(Some(k)), Some(v)) = (field(&mut p), field(&mut p)) else {
            return json!(out);
        };
        out.push(json!([
            String::from_utf8_lossy(k),
            v.map(|v| String::from_utf8_lossy(v).into_owned())
        ]));
    }
    json!(out)
}

/// `POST /v1/groups/{name}/reset-offsets` with `{"topic": ..., "to": "earliest" |
/// "latest" | OFFSET | "@TIMESTAMP_MS"}`: commits, for every partition of the topic, the
/// offset `to` names (as `ringmq group reset-offsets` does). Refused while the group has
/// members (their commits would undo it).
async fn reset_offsets(shard: &Rc<Shard>, group: &str, body: &[u8]) -> Result<Value, Response> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Reset {
        topic: String,
        to: Value,
    }
    let bad = |m: String| Response::error(400, "bad_request", m);
    let r: Reset = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "the body is not a reset ({{\"topic\", \"to\": \"earliest\" | \"latest\" | OFFSET | \"@TIMESTAMP_MS\"}}): {e}"
        ))
    })?;
    let spec = match &r.to {
        Value::Number(n) => n.as_i64().filter(|&o| o >= 0).map(Err),
        Value::String(s) if s == "earliest" => Some(Ok(OffsetSpec::Earliest)),
        Value::String(s) if s == "latest" => Some(Ok(OffsetSpec::Latest)),
        Value::String(s) => match s.strip_prefix('@').map(str::parse::<i64>) {
            Some(Ok(ts)) => Some(Ok(OffsetSpec::Timestamp(ts))),
            _ => s.parse::<i64>().ok().filter(|&o| o >= 0).map(Err),
        },
        _ => None,
    }
    .ok_or_else(|| {
        bad(format!(
            "\"to\": {}: expected earliest, latest, an offset or @TIMESTAMP_MS",
            r.to
        ))
    })?;
    let meta = shard
        .topic(&r.topic)
        .ok_or_else(|| Response::broker_error(&BrokerError::unknown_topic(&r.topic)))?;
    let mut offsets = Vec::new();
    for p in 0..meta.partitions {
        let tp = TopicPartition::new(r.topic.as_str(), p);
        let offset = match spec {
            Err(fixed) => fixed,
            Ok(spec) => {
                let found = match offset_of(shard, &tp, spec).await {
                    // No record at or after the time: the end.
                    Ok(None) => offset_of(shard, &tp, OffsetSpec::Latest).await,
                    other => other,
                };
                found
                    .and_then(|o| o.ok_or_else(no_answer))
                    .map_err(|e| Response::broker_error(&e))?
            }
        };
        offsets.push(OffsetCommit {
            topic: r.topic.clone(),
            partition: p as i32,
            offset,
            leader_epoch: -1,
            metadata: None,
        });
    }
    let members = match shard
        .group_request(
            GroupOp::Describe {
                group: group.into(),
            },
            Duration::ZERO,
        )
        .await
    {
        Some(GroupReply::Describe(Ok(d))) => d.members.len(),
        Some(GroupReply::Describe(Err(e))) => return Err(Response::broker_error(&e)),
        _ => return Err(Response::broker_error(&group_shard_silent())),
    };
    if members > 0 {
        return Err(Response::error(
            409,
            "NonEmptyGroup",
            format!(
                "group {group:?} has {members} member(s); stop its consumers before resetting its offsets"
            ),
        ));
    }
    let committed: Vec<Value> = offsets
        .iter()
        .map(|o| json!({"topic": o.topic, "partition": o.partition, "offset": o.offset}))
        .collect();
    let op = GroupOp::CommitOffsets(CommitOffsets {
        group: group.into(),
        member_id: String::new(),
        instance_id: None,
        generation: -1,
        offsets,
    });
    match shard.group_request(op, Duration::ZERO).await {
        Some(GroupReply::CommitOffsets(results)) => {
            if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                return Err(Response::broker_error(&e));
            }
        }
        _ => return Err(Response::broker_error(&group_shard_silent())),
    }
    Ok(json!({"group": group, "committed": committed}))
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(super::percent_decode("my%20group%2F1"), "my group/1");
        assert_eq!(super::percent_decode("100%"), "100%");
        assert_eq!(super::percent_decode("%zz%4"), "%zz%4");
        assert_eq!(super::percent_decode("caf%C3%A9"), "café");
    }

    #[test]
    fn assignments_are_read_in_the_groups_protocol() {
        use ringmq_shard::groups::assign::encode_assignment;
        let native = encode_assignment(&[("a".into(), 0), ("b".into(), 2), ("a".into(), 3)]);
        assert_eq!(
            super::assigned_partitions("ringmq", &native),
            vec![("a".to_string(), vec![0, 3]), ("b".to_string(), vec![2])]
        );
        // Kafka's consumer protocol, version 0: topics (name, partitions), user data.
        let mut kafka = vec![0, 0, 0, 0, 0, 1, 0, 3];
        kafka.extend_from_slice(b"ord");
        kafka.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            super::assigned_partitions("consumer", &kafka),
            vec![("ord".to_string(), vec![4, 5])]
        );
        // A protocol the broker cannot read, and garbage: no partitions, no panic.
        assert!(super::assigned_partitions("connect", &kafka).is_empty());
        assert!(super::assigned_partitions("ringmq", &[1, 2, 3]).is_empty());
        assert!(super::assigned_partitions("consumer", &[0]).is_empty());
    }
}
