//! Consumer groups for native consumers: the broker assigns the partitions (range,
//! round-robin or sticky), the consumer heartbeats in the background, rejoins when the
//! group rebalances, starts each partition at the group's committed offset, and
//! commits automatically or on request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ringmq_net::codec::{ErrorCode, Request, Response};

use crate::{Client, Consumer, ConsumerRecord, Error, Position, Result};

/// Settings of a [`GroupConsumer`].
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Without a heartbeat for this long, the broker removes the member (default 10 s).
    pub session_timeout: Duration,
    /// How long a rebalance waits for members to rejoin (default 30 s).
    pub rebalance_timeout: Duration,
    /// Time between heartbeats (default 1 s).
    pub heartbeat_interval: Duration,
    /// `range`, `roundrobin` or `sticky` (default `range`).
    pub assignor: String,
    /// Commit the positions this often during `poll`, and before a rebalance and on
    /// close; `None` commits only on [`GroupConsumer::commit`] (default 5 s).
    pub auto_commit: Option<Duration>,
    /// Where to start a partition the group has no committed offset for (default
    /// earliest).
    pub start: Position,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(1),
            assignor: "range".into(),
            auto_commit: Some(Duration::from_secs(5)),
            start: Position::Earliest,
        }
    }
}

/// A member of a consumer group.
///
/// ```no_run
/// # async fn run() -> ringmq_client::Result<()> {
/// use ringmq_client::{Client, GroupConfig, GroupConsumer};
/// let client = Client::connect("127.0.0.1:9093").await?;
/// let mut c = GroupConsumer::join(client, "billing", &["orders"], GroupConfig::default()).await?;
/// loop {
///     for r in c.poll().await? {
///         println!("{} {} {:?}", r.partition, r.offset, r.value);
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct GroupConsumer {
    client: Client,
    group: String,
    topics: Vec<String>,
    config: GroupConfig,
    member_id: String,
    generation: i32,
    assignment: Vec<(String, u32)>,
    consumer: Option<Consumer>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    rejoin: Arc<AtomicBool>,
    last_commit: Instant,
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }
}

/// The group must be joined again (its generation is over).
fn needs_rejoin(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::RebalanceInProgress | ErrorCode::IllegalGeneration | ErrorCode::UnknownMember
    )
}

impl GroupConsumer {
    /// Joins `group` for `topics`; returns once the broker assigned this member its
    /// partitions (which may be none, when the group has more members than partitions).
    pub async fn join(
        client: Client,
        group: &str,
        topics: &[&str],
        config: GroupConfig,
    ) -> Result<Self> {
        let mut me = Self {
            client,
            group: group.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            config,
            member_id: String::new(),
            generation: -1,
            assignment: Vec::new(),
            consumer: None,
            heartbeat: None,
            rejoin: Arc::new(AtomicBool::new(false)),
            last_commit: Instant::now(),
        };
        me.rejoin().await?;
        Ok(me)
    }

    /// This member's partitions in the current generation.
    pub fn assignment(&self) -> &[(String, u32)] {
        &self.assignment
    }

    /// The current generation.
    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// The id the broker gave this member.
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    async fn rejoin(&mut self) -> Result<()> {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        self.rejoin.store(false, Ordering::SeqCst);
        let (generation, assignment) = loop {
            let resp = self
                .client
                .call(Request::JoinGroup {
                    group: self.group.clone(),
                    member_id: self.member_id.clone(),
                    session_timeout_ms: self.config.session_timeout.as_millis() as u32,
                    rebalance_timeout_ms: self.config.rebalance_timeout.as_millis() as u32,
                    topics: self.topics.clone(),
                    assignor: self.config.assignor.clone(),
                })
                .await?;
            match resp {
                Response::Joined {
                    error,
                    generation,
                    member_id,
                    assignment,
                } => {
                    if error.is_ok() {
                        self.member_id = member_id;
                        break (generation, assignment);
                    }
                    if error.code == ErrorCode::UnknownMember {
                        self.member_id.clear();
                    } else if !needs_rejoin(error.code) {
                        return Err(Error::broker(&error));
                    }
                }
                Response::Error(e) => return Err(Error::broker(&e)),
                other => return Err(Error::Protocol(format!("unexpected answer {other:?}"))),
            }
        };
        self.generation = generation;
        self.assignment = assignment;
        // Start each partition at the group's committed offset.
        let mut consumer = Consumer::new(self.client.clone());
        if !self.assignment.is_empty() {
            let committed = match self
                .client
                .call(Request::FetchOffsets {
                    group: self.group.clone(),
                    partitions: self.assignment.clone(),
                })
                .await?
            {
                Response::Offsets(v) => v,
                other => return Err(Error::Protocol(format!("unexpected answer {other:?}"))),
            };
            for (t, p) in &self.assignment {
                let at = committed
                    .iter()
                    .find(|(ct, cp, e, o, _)| ct == t && cp == p && e.is_ok() && *o >= 0)
                    .map(|c| Position::Offset(c.3))
                    .unwrap_or(self.config.start);
                consumer.assign(t, *p, at).await?;
            }
        }
        self.consumer = Some(consumer);
        self.last_commit = Instant::now();
        // Heartbeats for this generation; a stale one cannot ask for another rejoin.
        let (client, group, member, flag, every) = (
            self.client.clone(),
            self.group.clone(),
            self.member_id.clone(),
            self.rejoin.clone(),
            self.config.heartbeat_interval,
        );
        self.heartbeat = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let r = client
                    .call(Request::GroupHeartbeat {
                        group: group.clone(),
                        member_id: member.clone(),
                        generation,
                    })
                    .await;
                if let Ok(Response::Done(e)) = r
                    && needs_rejoin(e.code)
                {
                    flag.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }));
        Ok(())
    }

    /// The next records of this member's partitions (empty when none arrived within
    /// the consumer's wait). Rejoins first when the group rebalanced, committing the
    /// positions so far when auto-commit is on, and commits when it is due.
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>> {
        if self.rejoin.load(Ordering::SeqCst) {
            if self.config.auto_commit.is_some() {
                // The generation may be over already; what could not be committed is
                // read again by the partition's next owner (at least once).
                let _ = self.commit().await;
            }
            self.rejoin().await?;
        }
        if let Some(every) = self.config.auto_commit
            && self.last_commit.elapsed() >= every
        {
            match self.commit().await {
                Ok(()) => {}
                Err(Error::Broker { code, .. }) if needs_rejoin(code) => {
                    self.rejoin.store(true, Ordering::SeqCst);
                    return Ok(Vec::new());
                }
                Err(e) => return Err(e),
            }
        }
        if self.assignment.is_empty() {
            tokio::time::sleep(
                self.config
                    .heartbeat_interval
                    .min(Duration::from_millis(200)),
            )
            .await;
            return Ok(Vec::new());
        }
        self.consumer
            .as_mut()
            .expect("a joined member has a consumer")
            .poll()
            .await
    }

    /// Commits the positions of this member's partitions (the next offsets to read);
    /// returns once the commit is durable. An error whose code asks for a rejoin means
    /// the partitions may already belong to another member.
    pub async fn commit(&mut self) -> Result<()> {
        let Some(c) = &self.consumer else {
            return Ok(());
        };
        let offsets: Vec<(String, u32, i64)> = self
            .assignment
            .iter()
            .filter_map(|(t, p)| c.position(t, *p).map(|o| (t.clone(), *p, o)))
            .collect();
        self.last_commit = Instant::now();
        if offsets.is_empty() {
            return Ok(());
        }
        match self
            .client
            .call(Request::CommitOffsets {
                group: self.group.clone(),
                member_id: self.member_id.clone(),
                generation: self.generation,
                offsets,
            })
            .await?
        {
            Response::Done(e) if e.is_ok() => Ok(()),
            Response::Done(e) | Response::Error(e) => {
                if needs_rejoin(e.code) {
                    self.rejoin.store(true, Ordering::SeqCst);
                }
                Err(Error::broker(&e))
            }
            other => Err(Error::Protocol(format!("unexpected answer {other:?}"))),
        }
    }

    /// Commits (when auto-commit is on) and leaves the group, so the others rebalance
    /// at once instead of after the session timeout.
    pub async fn close(mut self) -> Result<()> {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        if self.config.auto_commit.is_some() {
            let _ = self.commit().await;
        }
        match self
            .client
            .call(Request::LeaveGroup {
                group: self.group.clone(),
                member_id: self.member_id.clone(),
            })
            .await?
        {
            Response::Done(e) if e.is_ok() || e.code == ErrorCode::UnknownMember => Ok(()),
            Response::Done(e) | Response::Error(e) => Err(Error::broker(&e)),
            other => Err(Error::Protocol(format!("unexpected answer {other:?}"))),
        }
    }
}
