//! Consumer groups for native consumers: the broker assigns the partitions (range,
//! round-robin or sticky), the consumer heartbeats in the background, rejoins when the
//! group rebalances, starts each partition at the group's committed offset, and
//! commits automatically or on request. Group requests go to the node that coordinates
//! the group (FindCoordinator), which in a cluster can move: a coordinator that answers
//! `Unavailable` or cannot be reached is looked up again.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringmq_net::codec::{ErrorCode, Request, Response};

use crate::routes::{Route, Routes};
use crate::{Client, Consumer, ConsumerRecord, Error, Position, Result};

/// First pause before asking again for a coordinator that moved; doubled up to
/// [`RETRY_PAUSE_MAX`].
const RETRY_PAUSE: Duration = Duration::from_millis(50);
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(1);

/// Where a group's requests go.
#[derive(Debug)]
struct Coordinator {
    routes: Routes,
    group: String,
    /// The coordinator's connection as last found; `None`: ask again.
    current: Mutex<Option<Client>>,
    /// The group is coordinated by a cluster's node, so a coordinator that cannot be
    /// reached or answers `Unavailable` may have moved: worth finding again.
    clustered: AtomicBool,
    /// The coordinator's node id as last found (0: a single node; -1: not found yet).
    node: AtomicI32,
}

impl Coordinator {
    fn new(client: Client, group: &str) -> Self {
        Self {
            routes: Routes::new(client),
            group: group.into(),
            current: Mutex::new(None),
            clustered: AtomicBool::new(false),
            node: AtomicI32::new(-1),
        }
    }

    /// The coordinator's connection: as last found, or asked for now (from the client's
    /// broker, or any other known one when that does not answer). A broker without
    /// FindCoordinator coordinates its groups itself.
    async fn find(&self) -> Result<Client> {
        if let Some(c) = self.current.lock().unwrap().clone() {
            return Ok(c);
        }
        let found = self
            .routes
            .call_any(Request::FindCoordinator {
                group: self.group.clone(),
            })
            .await;
        let route = match found {
            Ok(Response::Coordinator { error, coordinator }) if error.is_ok() => {
                if coordinator.leader > 0 {
                    self.clustered.store(true, Ordering::Relaxed);
                }
                self.node.store(coordinator.leader, Ordering::Relaxed);
                Route {
                    addr: Some(coordinator.address).filter(|a| !a.is_empty()),
                    shard: None,
                }
            }
            Ok(Response::Coordinator { error, .. }) | Ok(Response::Error(error)) => {
                if error.code == ErrorCode::Unavailable {
                    self.clustered.store(true, Ordering::Relaxed);
                }
                return Err(Error::broker(&error));
            }
            Err(Error::Broker {
                code: ErrorCode::UnsupportedVersion,
                ..
            }) => Route {
                addr: None,
                shard: None,
            },
            Ok(other) => return Err(Error::Protocol(format!("unexpected answer {other:?}"))),
            Err(e) => return Err(e),
        };
        let client = self.routes.client(&route);
        *self.current.lock().unwrap() = Some(client.clone());
        Ok(client)
    }

    /// Sends `req` to the coordinator. In a cluster, a coordinator that cannot be
    /// reached or answers `Unavailable` (not the coordinator, still loading the group,
    /// no leader for the group's partition) is looked up again and the request sent
    /// there, for up to `patience`; then the last error is returned.
    async fn call(&self, req: Request, patience: Duration) -> Result<Response> {
        let deadline = Instant::now() + patience;
        let mut pause = RETRY_PAUSE;
        loop {
            let r = match self.find().await {
                Ok(c) => c.call(req.clone()).await,
                Err(e) => Err(e),
            };
            let failed = match &r {
                Err(e) => e.is_retriable(),
                Ok(Response::Joined { error, .. })
                | Ok(Response::Done(error))
                | Ok(Response::Error(error)) => error.code == ErrorCode::Unavailable,
                Ok(_) => false,
            };
            if !failed {
                return r;
            }
            *self.current.lock().unwrap() = None;
            if !self.clustered.load(Ordering::Relaxed) || Instant::now() + pause > deadline {
                return r;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_PAUSE_MAX);
        }
    }
}

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
    coordinator: Arc<Coordinator>,
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
            coordinator: Arc::new(Coordinator::new(client.clone(), group)),
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

    /// The node that coordinated the group at the last group request: its id in a
    /// cluster, 0 on a single node, -1 before any.
    pub fn coordinator(&self) -> i32 {
        self.coordinator.node.load(Ordering::Relaxed)
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
                .coordinator
                .call(
                    Request::JoinGroup {
                        group: self.group.clone(),
                        member_id: self.member_id.clone(),
                        session_timeout_ms: self.config.session_timeout.as_millis() as u32,
                        rebalance_timeout_ms: self.config.rebalance_timeout.as_millis() as u32,
                        topics: self.topics.clone(),
                        assignor: self.config.assignor.clone(),
                    },
                    self.config.rebalance_timeout,
                )
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
                .coordinator
                .call(
                    Request::FetchOffsets {
                        group: self.group.clone(),
                        partitions: self.assignment.clone(),
                    },
                    self.config.session_timeout,
                )
                .await?
            {
                Response::Offsets(v) => v,
                Response::Error(e) => return Err(Error::broker(&e)),
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
        let (coordinator, group, member, flag, every) = (
            self.coordinator.clone(),
            self.group.clone(),
            self.member_id.clone(),
            self.rejoin.clone(),
            self.config.heartbeat_interval,
        );
        self.heartbeat = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                // Patience of one interval: a heartbeat that cannot reach the
                // coordinator gives way to the next one.
                let r = coordinator
                    .call(
                        Request::GroupHeartbeat {
                            group: group.clone(),
                            member_id: member.clone(),
                            generation,
                        },
                        every,
                    )
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

    /// Like [`poll`](Self::poll), returning at most `max` records: the positions, and so
    /// what a commit stores, stay just past the records returned; the next poll reads
    /// the others again.
    pub async fn poll_at_most(&mut self, max: u64) -> Result<Vec<ConsumerRecord>> {
        let mut records = self.poll().await?;
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        if records.len() <= max {
            return Ok(records);
        }
        // A partition's records come in offset order: its first one left over is where
        // it resumes.
        let mut resume: Vec<(String, u32, i64)> = Vec::new();
        for r in records.split_off(max) {
            if !resume
                .iter()
                .any(|(t, p, _)| *t == r.topic && *p == r.partition)
            {
                resume.push((r.topic, r.partition, r.offset));
            }
        }
        let consumer = self
            .consumer
            .as_mut()
            .expect("a member with records has a consumer");
        for (t, p, o) in resume {
            consumer.assign(&t, p, Position::Offset(o)).await?;
        }
        Ok(records)
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
            .coordinator
            .call(
                Request::CommitOffsets {
                    group: self.group.clone(),
                    member_id: self.member_id.clone(),
                    generation: self.generation,
                    offsets,
                },
                self.config.session_timeout,
            )
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
            .coordinator
            .call(
                Request::LeaveGroup {
                    group: self.group.clone(),
                    member_id: self.member_id.clone(),
                },
                self.config.session_timeout,
            )
            .await?
        {
            Response::Done(e) if e.is_ok() || e.code == ErrorCode::UnknownMember => Ok(()),
            Response::Done(e) | Response::Error(e) => Err(Error::broker(&e)),
            other => Err(Error::Protocol(format!("unexpected answer {other:?}"))),
        }
    }
}
