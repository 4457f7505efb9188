//! Where each partition's requests go: the node that leads it and the shard of that node
//! that owns it. Learned per topic with the `Leaders` request and asked again when a
//! partition's leader answers `Unavailable` or cannot be reached (a leader moved, a node
//! stopped); one connection per (node, shard) used, shared by the partitions routed there.

use std::collections::HashMap;
use std::sync::Mutex;

use ringmq_net::codec::{ErrorCode, Request, Response};

use crate::{Admin, Client, Error, Result};

/// One partition's destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Route {
    /// The leader's native address; `None`: the broker the client connected to (a single
    /// node, a broker that does not say, or a partition without a leader right now).
    pub addr: Option<String>,
    /// The leader's shard that owns the partition; `None`: any (the broker forwards).
    pub shard: Option<u32>,
}

impl Route {
    /// This route, without its shard unless `shard_aware`.
    pub(crate) fn shard_aware(mut self, shard_aware: bool) -> Self {
        if !shard_aware {
            self.shard = None;
        }
        self
    }
}

/// A user's routes and connections. A producer and a consumer each keep their own, so a
/// consumer's long-polling fetch never holds up a producer's answers on a connection.
#[derive(Debug)]
pub(crate) struct Routes {
    base: Client,
    /// Some answer named a node other than a single node's 0: partitions can move.
    clustered: std::sync::atomic::AtomicBool,
    topics: Mutex<HashMap<String, Vec<Route>>>,
    clients: Mutex<HashMap<Route, Client>>,
    /// Leaders' addresses learned so far: where to ask when the client's own broker
    /// does not answer.
    known: Mutex<Vec<String>>,
}

impl Routes {
    pub(crate) fn new(base: Client) -> Self {
        Self {
            base,
            clustered: std::sync::atomic::AtomicBool::new(false),
            topics: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            known: Mutex::new(Vec::new()),
        }
    }

    /// Whether the broker is a cluster's node (learned from the first `Leaders` answer):
    /// a partition that fails there may just have moved.
    pub(crate) fn clustered(&self) -> bool {
        self.clustered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A topic's partition count, if its routes are known.
    pub(crate) fn partition_count(&self, topic: &str) -> Option<u32> {
        self.topics
            .lock()
            .unwrap()
            .get(topic)
            .map(|r| r.len() as u32)
    }

    /// A partition's route as last learned (`None`: the topic is not looked up yet).
    pub(crate) fn cached(&self, topic: &str, partition: u32) -> Option<Route> {
        self.topics
            .lock()
            .unwrap()
            .get(topic)
            .and_then(|r| r.get(partition as usize).cloned())
    }

    /// A topic's routes: as last learned, or asked for now.
    pub(crate) async fn lookup(&self, topic: &str) -> Result<Vec<Route>> {
        if let Some(r) = self.topics.lock().unwrap().get(topic) {
            return Ok(r.clone());
        }
        self.refresh(topic).await
    }

    /// Asks where a topic's partitions are led now.
    pub(crate) async fn refresh(&self, topic: &str) -> Result<Vec<Route>> {
        let routes: Vec<Route> = match self
            .call_any(Request::Leaders {
                topic: topic.into(),
            })
            .await
        {
            Ok(Response::Leaders { error, partitions }) => {
                if !error.is_ok() {
                    return Err(Error::broker(&error));
                }
                if partitions.iter().any(|p| p.leader != 0) {
                    self.clustered
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                let base = self.base.addr();
                let mut known = self.known.lock().unwrap();
                partitions
                    .into_iter()
                    .map(|p| {
                        let addr = Some(p.address).filter(|a| !a.is_empty() && a != base);
                        if let Some(a) = &addr
                            && !known.contains(a)
                        {
                            known.push(a.clone());
                        }
                        Route {
                            addr,
                            shard: Some(p.shard),
                        }
                    })
                    .collect()
            }
            Ok(other) => return Err(Error::Protocol(format!("unexpected answer {other:?}"))),
            // A broker from before `Leaders` is a single node: each partition's shard
            // is in its topic description.
            Err(Error::Broker {
                code: ErrorCode::UnsupportedVersion,
                ..
            }) => Admin::new(self.base.clone())
                .describe_topic(topic)
                .await?
                .partitions
                .iter()
                .map(|p| Route {
                    addr: None,
                    shard: Some(p.shard),
                })
                .collect(),
            Err(e) => return Err(e),
        };
        if routes.is_empty() {
            return Err(Error::Invalid(format!("topic {topic} has no partitions")));
        }
        self.topics
            .lock()
            .unwrap()
            .insert(topic.to_string(), routes.clone());
        Ok(routes)
    }

    /// The connection for `route`.
    pub(crate) fn client(&self, route: &Route) -> Client {
        if *route
            == (Route {
                addr: None,
                shard: None,
            })
        {
            return self.base.clone();
        }
        self.clients
            .lock()
            .unwrap()
            .entry(route.clone())
            .or_insert_with(|| {
                let node = match &route.addr {
                    Some(a) => self.base.to(a),
                    None => self.base.clone(),
                };
                match route.shard {
                    Some(s) => node.on_shard(s),
                    None => node,
                }
            })
            .clone()
    }

    /// Sends `req` to the client's own broker, or when that cannot be reached, to the
    /// other addresses the client was given and the leaders it learned, in turn.
    pub(crate) async fn call_any(&self, req: Request) -> Result<Response> {
        let first = self.base.call(req.clone()).await;
        let Err(mut last @ Error::Io { .. }) = first else {
            return first;
        };
        let mut others: Vec<String> = self.base.bootstrap().to_vec();
        others.extend(self.known.lock().unwrap().iter().cloned());
        let mut tried = vec![self.base.addr().to_string()];
        for addr in others {
            if tried.contains(&addr) {
                continue;
            }
            tried.push(addr.clone());
            match self
                .client(&Route {
                    addr: Some(addr),
                    shard: None,
                })
                .call(req.clone())
                .await
            {
                Err(e @ Error::Io { .. }) => last = e,
                r => return r,
            }
        }
        Err(last)
    }
}
