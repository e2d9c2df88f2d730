//! `send` entries routed to the nodes that hold their user, rather than read by every node (docs/gateway.md
//! "Delivery"). One node at a time, the *router* (it holds a lease), reads the `send` stream on from where the last
//! router stopped (`gateway:routed`), looks up which present node holds each of the batch's users, and adds to each
//! node's *inbox* stream one entry with that node's entries, each field named by the entry's id; then it moves
//! `gateway:routed` and the group `gateway:router` past the batch. Every node reads its
//! own inbox and delivers, skipping an id it delivered lately: a router that stopped after forwarding a batch but
//! before recording it leaves the position before the batch, and the next router forwards it again.
//!
//! The router reads with `XREAD`, not through its consumer group: a group read records each entry as pending and
//! each acknowledgement removes it, which was three times the Redis time of the read itself (BENCHMARKS.md, "The
//! router without a consumer group"). The group is kept where the router is (`XGROUP SETID`) so that
//! `XINFO GROUPS` shows how far routing is, and so that a router of a version that read through it takes over from
//! the right place; what such a router read and did not acknowledge is forwarded (and acknowledged) by the next
//! router first.
//!
//! A node's set of held users is written in the order its clients come and go (one task, one queue), and a client
//! is announced to the backend (`onconnect`) only once its user is in the set, so an entry the backend adds after
//! hearing of a client is routed to it. Each write is then added as a change to the directory stream, once done:
//! the router keeps a copy of every set by those changes (read before each batch) rather than asking
//! each set per batch, which was a quarter of a round's Redis time; a node of an earlier build writes none, and its
//! set is asked as before.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use fred::{
    bytes::Bytes,
    clients::Client as Redis,
    interfaces::{HashesInterface, KeysInterface, SetsInterface, StreamsInterface},
    types::Value,
};
use tokio::sync::{mpsc, oneshot};

use super::{
    Gateway, READ_RETRY,
    route::{self, Change, Mirror, Recent, StreamId, Tags},
    streams::{self, Entry},
    wire::{self, SendEntry},
};
use crate::redis::Script;

/// How long the router's lease lasts unless renewed: a router that died is replaced after at most this.
const LEASE: Duration = Duration::from_secs(5);
/// How often the router renews its lease, and how often the other nodes try to take it.
const LEASE_EVERY: Duration = Duration::from_secs(1);
/// How long a node stays present (in `gateway:nodes`) and its set of held users lives, unless renewed (every
/// [`super::HOUSEKEEPING`]): a node that died stops getting entries after at most this.
const PRESENCE: Duration = Duration::from_secs(60);
/// How often a node trims the entries of its inbox it has read (`XTRIM MINID ~`).
const INBOX_TRIM_EVERY: Duration = Duration::from_secs(1);
/// How many forwarded ids a node remembers, to skip those forwarded twice (a few batches' worth).
const RECENT_IDS: usize = 64 * streams::READ_COUNT as usize;
/// Writes to the set of held users sent in one round trip.
const DIRECTORY_BATCH: usize = 1024;
/// How often the router reads the nodes' sets whole again, besides when it starts routing and after an error:
/// a copy that missed changes (a directory trimmed past it by its backstop) is wrong for at most this long.
const MIRROR_FRESH: Duration = Duration::from_secs(60);
/// Directory entries the router reads at a time.
const DIRECTORY_READ: u64 = 1024;
/// The directory's length, a backstop only: the router trims what it has read.
const DIRECTORY_MAXLEN: u64 = 100_000;
/// The router's consumer group on the `send` stream, and its one consumer name: whichever node routes reads the
/// entries the previous router read but did not acknowledge.
const GROUP: &str = "gateway:router";
const CONSUMER: &str = "router";

/// The routing's keys (with `stream_prefix`) and scripts.
#[derive(Debug)]
pub struct Routing {
    /// Hash: node id -> when it stops being present (ms since the epoch).
    nodes: String,
    /// String: the router's node id, expiring.
    lease: String,
    /// String: the id of the last `send` entry routed, where the next router reads on from.
    routed: String,
    /// Stream: each node's changes to its set of held users, which the router keeps a copy of the sets by.
    directory: String,
    /// Set: the nodes that write their changes to the directory (an earlier build does not; its set is asked).
    mirrored: String,
    prefix: String,
    /// This node's queue of writes to its set of held users.
    ops: mpsc::UnboundedSender<Op>,
    /// Whether the log said once that Redis refuses `XGROUP SETID`.
    told_setid: std::sync::atomic::AtomicBool,
    /// Whether a write to this node's set or to the directory failed since the last housekeeping, which then
    /// writes both whole again (otherwise a failed write would stay wrong until the set expired).
    failed_write: std::sync::atomic::AtomicBool,
    scripts: Scripts,
}

struct Scripts {
    lease: Script,
    release: Script,
    holds: Script,
}

impl std::fmt::Debug for Scripts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scripts")
    }
}

/// A write to this node's set of held users.
#[derive(Debug)]
pub enum Op {
    /// A user's first client here; told once the set has it.
    Add(String, oneshot::Sender<()>),
    /// A user's last client here left.
    Remove(String),
    /// The whole set, after Redis lost it or a write to it failed.
    Rewrite(Vec<String>),
}

impl Routing {
    /// The keys under `prefix`, and the receiving end of the queue of writes to this node's set of held users.
    pub fn new(prefix: &str) -> (Self, mpsc::UnboundedReceiver<Op>) {
        let (ops, queue) = mpsc::unbounded_channel();
        let routing = Self {
            nodes: format!("{prefix}gateway:nodes"),
            lease: format!("{prefix}gateway:router"),
            routed: format!("{prefix}gateway:routed"),
            directory: format!("{prefix}gateway:directory"),
            mirrored: format!("{prefix}gateway:mirrored"),
            prefix: prefix.to_owned(),
            ops,
            told_setid: Default::default(),
            failed_write: Default::default(),
            scripts: Scripts {
                lease: crate::redis::lease_script("gateway_lease"),
                release: crate::redis::release_script("gateway_release"),
                holds: Script::new("gateway_holds", include_str!("lua/holds.lua")),
            },
        };
        (routing, queue)
    }

    pub fn holds(&self, node: &str) -> String {
        format!("{}gateway:holds:{node}", self.prefix)
    }

    pub fn inbox(&self, node: &str) -> String {
        format!("{}gateway:inbox:{node}", self.prefix)
    }

    /// Queues a write (called under the hub's lock, so that writes keep the order of arrivals and departures).
    pub fn queue(&self, op: Op) {
        // The writer lives as long as the gateway; after it stopped nothing needs the set.
        let _ = self.ops.send(op);
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Gateway {
    /// At start: this node is present, its set of held users is empty (a restart with the same `NODE_ID` had one),
    /// and the router's group exists. The group each node read the `send` stream with before routing is removed.
    pub(super) async fn join_routing(&self, send: &str) -> Result<(), fred::error::Error> {
        let r = &self.routing;
        let _: Value = self
            .publisher
            .hset(&r.nodes, (self.node.to_string(), now_ms() + ms(PRESENCE)))
            .await?;
        let _: Value = self.publisher.del(r.holds(&self.node)).await?;
        // The router's copy of this node's set starts empty too, and is kept by what this node writes from now.
        let _: Value = self
            .publisher
            .sadd(&r.mirrored, self.node.to_string())
            .await?;
        self.note_changes(&[Change::Reset]).await?;
        streams::ensure_group(&self.publisher, send, GROUP).await?;
        // Housekeeping only: a Redis user without the right to it still starts.
        if let Err(e) = streams::destroy_group(&self.publisher, send, &self.group()).await {
            tracing::warn!(stream = send, group = self.group(), error = %e,
                "the group this node read the send stream with before routing was not removed");
        }
        Ok(())
    }

    /// At a graceful stop: not present any more, and the lease given up so that another node routes at once.
    pub(super) async fn leave_routing(&self) {
        let r = &self.routing;
        let me = self.node.to_string();
        let _ = self.publisher.hdel::<Value, _, _>(&r.nodes, &me).await;
        let _ = self.publisher.del::<Value, _>(r.holds(&me)).await;
        let _ = self.publisher.srem::<Value, _, _>(&r.mirrored, &me).await;
        let _ = r
            .scripts
            .release
            .run(&self.publisher, vec![r.lease.clone()], vec![me.into()])
            .await;
    }

    /// Every [`super::HOUSEKEEPING`]: still present, the set of held users kept from expiring (rewritten if Redis
    /// lost it), nodes gone for longer than [`PRESENCE`] forgotten, and the inbox expiring an hour after its node.
    pub(super) async fn keep_routing(&self) -> Result<(), fred::error::Error> {
        let r = &self.routing;
        let me = self.node.to_string();
        let now = now_ms();
        // 1 when this node's presence was not there: Redis lost it (a restart without persistence), or the other
        // nodes forgot this one (paused for longer than `PRESENCE`), and the set with it.
        let absent: i64 = self
            .publisher
            .hset(&r.nodes, (me.clone(), now + ms(PRESENCE)))
            .await?;
        let kept: i64 = self
            .publisher
            .pexpire(r.holds(&me), ms(PRESENCE), None)
            .await?;
        // Written again in case Redis lost it; the router's copy of the set is whole from the next reset or read.
        let _: Value = self.publisher.sadd(&r.mirrored, me.clone()).await?;
        // The set alone cannot say it was lost: a user who arrived since made it again with only that user.
        let failed = r.failed_write.swap(false, Ordering::Relaxed);
        if kept == 0 || absent == 1 || failed {
            let hub = self.hub.lock().unwrap();
            let users: Vec<String> = hub.users().map(|(ns, user)| route::tag(ns, user)).collect();
            // A lost set of nobody needs nothing; after a failed write, even an empty set is written again.
            if failed || !users.is_empty() {
                let why = match failed {
                    true => "a write to it failed",
                    false => "it was gone from Redis",
                };
                tracing::info!(
                    users = users.len(),
                    why,
                    "gateway: the set of held users written again"
                );
                r.queue(Op::Rewrite(users));
            }
        }
        let _: Value = self
            .publisher
            .expire(r.inbox(&me), ms(super::REPLIES_TTL) / 1000, None)
            .await?;
        let nodes: HashMap<String, i64> = self.publisher.hgetall(&r.nodes).await?;
        let gone: Vec<String> = nodes
            .into_iter()
            .filter(|(_, until)| *until < now)
            .map(|(node, _)| node)
            .collect();
        if !gone.is_empty() {
            let _: Value = self.publisher.srem(&r.mirrored, gone.clone()).await?;
            let _: Value = self.publisher.hdel(&r.nodes, gone).await?;
        }
        Ok(())
    }

    /// Takes or renews the router's lease: whether this node routes.
    async fn lease(&self) -> Result<bool, fred::error::Error> {
        let r = &self.routing;
        let reply = r
            .scripts
            .lease
            .run(
                &self.publisher,
                vec![r.lease.clone()],
                vec![self.node.to_string().into(), ms(LEASE).to_string().into()],
            )
            .await?;
        Ok(reply.as_i64() == Some(1))
    }

    /// Routes one batch read from the `send` stream, then records it as routed: by moving `gateway:routed` and the
    /// group past it, in the round trip that adds the inbox entries; or, for the `backlog` a router of an earlier
    /// version left pending in the group, by acknowledging it. An entry that does not say whom it is for is counted
    /// and passed over, as is one for a user nobody holds. On an error nothing is recorded: the batch is forwarded
    /// again (the nodes skip what they already had).
    async fn forward(
        &self,
        stream: &str,
        entries: Vec<Entry>,
        backlog: bool,
        sets: &mut Option<Sets>,
    ) -> Result<(), fred::error::Error> {
        let Some(last) = entries.last().map(|e| e.id.clone()) else {
            return Ok(());
        };
        let mut tags = Tags::default();
        // (entry, its tag's index) of the entries to route.
        let mut routed: Vec<(&Entry, usize)> = Vec::with_capacity(entries.len());
        for entry in &entries {
            match wire::send_target(entry.data()) {
                Ok((namespace, username)) => {
                    routed.push((entry, tags.index(route::tag(&namespace, &username))))
                }
                Err(why) => self.malformed(&entry.stream, &entry.id, &why),
            }
        }
        let pipeline = self.publisher.pipeline();
        let mut sent = 0;
        if !routed.is_empty() {
            let nodes = self.present().await?;
            let sets = self.sets(sets).await?;
            sets.mirror.keep_only(&nodes);
            let held = self.held(&nodes, tags.list(), &sets.mirror).await?;
            let of_entries: Vec<usize> = routed.iter().map(|(_, t)| *t).collect();
            for (node, picked) in nodes.iter().zip(route::plan(&of_entries, &held)) {
                if picked.is_empty() {
                    continue;
                }
                let fields: Vec<(Bytes, Bytes)> = picked
                    .iter()
                    .filter_map(|&i| {
                        let entry = routed[i].0;
                        Some((Bytes::from(entry.id.clone()), entry.data_bytes()?.clone()))
                    })
                    .collect();
                sent += fields.len();
                let key = self.routing.inbox(node);
                let maxlen = self.config.stream_maxlen();
                streams::add_fields(&pipeline, &key, maxlen, fields).await?;
            }
        }
        if !backlog {
            pipeline
                .set::<(), _, _>(&self.routing.routed, last.as_str(), None, None, false)
                .await?;
            pipeline
                .xgroup_setid::<(), _, _, _>(stream, GROUP, last.as_str())
                .await?;
        }
        let mut replies = pipeline.try_all::<Value>().await;
        // The group's position is for `XINFO GROUPS` and earlier builds only: routing goes on without it.
        if !backlog && let Some(Err(e)) = replies.pop() {
            self.group_not_moved(stream, &e).await;
        }
        for reply in replies {
            reply?;
        }
        self.metrics.gateway_routed.inc_by(sent as u64);
        if backlog {
            let ids: Vec<String> = entries.into_iter().map(|e| e.id).collect();
            streams::ack(&self.publisher, stream, GROUP, ids).await?;
        }
        Ok(())
    }

    /// The group was not moved past a batch: made again if the stream was deleted; a Redis user without
    /// `XGROUP SETID` (an ACL of an earlier build) is told once.
    async fn group_not_moved(&self, stream: &str, e: &fred::error::Error) {
        if e.details().contains("NOGROUP") {
            let _ = streams::ensure_group(&self.publisher, stream, GROUP).await;
        } else if e.details().contains("NOPERM") {
            if !self.routing.told_setid.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "gateway router: its group is not kept at its position \
                    (`XINFO GROUPS` shows it behind); allow `XGROUP SETID` (deploy/redis-acl.example)");
            }
        } else {
            tracing::debug!(error = %e, "gateway router's group not moved");
        }
    }

    /// Where a router that just took the lease reads on from: the later of `gateway:routed` and the group's
    /// position (where a router of an earlier version left it); the stream's end when neither exists.
    async fn resume_at(&self, stream: &str) -> Result<StreamId, fred::error::Error> {
        let routed: Option<String> = self.publisher.get(&self.routing.routed).await?;
        let routed = routed.as_deref().and_then(StreamId::parse);
        let group = match streams::group_position(&self.publisher, stream, GROUP).await {
            Ok(at) => at.as_deref().and_then(StreamId::parse),
            // A Redis user without `XINFO GROUPS` (an ACL of an earlier build): `gateway:routed` alone.
            Err(e) if e.details().contains("NOPERM") => {
                tracing::warn!(error = %e, "gateway router: the group's position not read; `gateway:routed` alone");
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(at) = routed.max(group) {
            return Ok(at);
        }
        streams::ensure_group(&self.publisher, stream, GROUP).await?;
        let end = streams::last_id(&self.publisher, stream).await?;
        Ok(StreamId::parse(&end).unwrap_or_default())
    }

    /// The nodes present now, this one included.
    async fn present(&self) -> Result<Vec<String>, fred::error::Error> {
        let nodes: HashMap<String, i64> = self.publisher.hgetall(&self.routing.nodes).await?;
        let now = now_ms();
        let mut present: Vec<String> = nodes
            .into_iter()
            .filter(|(_, until)| *until >= now)
            .map(|(node, _)| node)
            .collect();
        if !present.iter().any(|n| **n == *self.node) {
            present.push(self.node.to_string());
        }
        Ok(present)
    }

    /// For each node, which of `tags` it holds: from the router's copy of its set, or, for a node of an earlier
    /// build (it writes no changes), from Redis (`SMISMEMBER`, one round trip for all such nodes).
    async fn held(
        &self,
        nodes: &[String],
        tags: &[String],
        mirror: &Mirror,
    ) -> Result<Vec<Vec<bool>>, fred::error::Error> {
        let asked: Vec<&String> = nodes.iter().filter(|n| mirror.of(n).is_none()).collect();
        let mut answers = match asked.is_empty() {
            true => Vec::new(),
            false => self.ask(&asked, tags).await?,
        }
        .into_iter();
        Ok(nodes
            .iter()
            .map(|node| match mirror.of(node) {
                Some(set) => tags.iter().map(|t| set.contains(t)).collect(),
                None => answers.next().unwrap_or_default(),
            })
            .collect())
    }

    /// Which of `tags` each of `nodes` holds, asked of their sets in Redis.
    async fn ask(
        &self,
        nodes: &[&String],
        tags: &[String],
    ) -> Result<Vec<Vec<bool>>, fred::error::Error> {
        // Built once and shared by every node's question (a clone is a reference count).
        let tags: Vec<Value> = tags.iter().map(|t| Value::from(t.as_str())).collect();
        let pipeline = self.publisher.pipeline();
        for node in nodes {
            pipeline
                .smismember::<(), _, _>(self.routing.holds(node), tags.clone())
                .await?;
        }
        pipeline
            .try_all::<Value>()
            .await
            .into_iter()
            .map(|reply| {
                Ok(match reply? {
                    Value::Array(list) => list.iter().map(|v| v.as_i64() == Some(1)).collect(),
                    _ => Vec::new(),
                })
            })
            .collect()
    }

    /// The router's copy of the sets, brought to now: read whole if it has none or it is older than
    /// [`MIRROR_FRESH`], then the directory's changes since (none, mostly: one round trip).
    async fn sets<'a>(
        &self,
        sets: &'a mut Option<Sets>,
    ) -> Result<&'a mut Sets, fred::error::Error> {
        let copy = match sets.take() {
            Some(copy) if copy.taken.elapsed() < MIRROR_FRESH => copy,
            _ => self.read_sets().await?,
        };
        let copy = sets.insert(copy);
        self.catch_up(copy).await?;
        Ok(copy)
    }

    /// The sets of the nodes that write their changes, read whole. The directory's end is read first: its changes
    /// after that, replayed on top, bring each set to now whatever happened between the reads.
    async fn read_sets(&self) -> Result<Sets, fred::error::Error> {
        let r = &self.routing;
        let at = streams::last_id(&self.publisher, &r.directory).await?;
        let nodes: Vec<String> = self.publisher.smembers(&r.mirrored).await?;
        let mut mirror = Mirror::default();
        if !nodes.is_empty() {
            let pipeline = self.publisher.pipeline();
            for node in &nodes {
                pipeline.smembers::<(), _>(r.holds(node)).await?;
            }
            for (node, reply) in nodes
                .into_iter()
                .zip(pipeline.try_all::<Vec<String>>().await)
            {
                mirror.set(node, reply?);
            }
        }
        Ok(Sets {
            mirror,
            at: StreamId::parse(&at).unwrap_or_default(),
            taken: Instant::now(),
            trimmed: Instant::now(),
            trim_to: None,
        })
    }

    /// Applies the directory's changes since the copy's position, and now and then trims the directory to where
    /// the copy was a trim before (so a router that lost its lease unawares trims only what its successor, which
    /// read the directory's end after that, does not need).
    async fn catch_up(&self, sets: &mut Sets) -> Result<(), fred::error::Error> {
        let key = &self.routing.directory;
        loop {
            let at = sets.at.to_string();
            let entries =
                streams::read_at_most(&self.publisher, key, &at, DIRECTORY_READ, None).await?;
            let read = entries.len();
            for entry in entries {
                let Some(at) = StreamId::parse(&entry.id) else {
                    self.malformed(key, &entry.id, "not an entry id");
                    return Ok(());
                };
                sets.at = at;
                match route::directory_changes(&entry.fields) {
                    Ok((node, changes)) => sets.mirror.apply(node, changes),
                    Err(why) => self.malformed(key, &entry.id, &why),
                }
            }
            if read < DIRECTORY_READ as usize {
                break;
            }
        }
        if sets.trimmed.elapsed() >= INBOX_TRIM_EVERY {
            if let Some(to) = sets.trim_to
                && let Err(e) =
                    streams::trim_before(&self.publisher, key, &to.to_string(), true).await
            {
                tracing::debug!(error = %e, "gateway directory not trimmed");
            }
            sets.trim_to = Some(sets.at);
            sets.trimmed = Instant::now();
        }
        Ok(())
    }

    /// Adds this node's changes to its set of held users to the directory.
    async fn note_changes(&self, changes: &[Change]) -> Result<(), fred::error::Error> {
        if changes.is_empty() {
            return Ok(());
        }
        let fields = route::directory_fields(&self.node, changes);
        let key = &self.routing.directory;
        streams::add_fields(&self.publisher, key, DIRECTORY_MAXLEN, fields).await
    }
}

/// The router's copy of the nodes' sets of held users, and where in the directory it is.
struct Sets {
    mirror: Mirror,
    at: StreamId,
    /// When the sets were read whole.
    taken: Instant,
    trimmed: Instant,
    /// Where the copy was at the last trim: the next trim's point.
    trim_to: Option<StreamId>,
}

/// Routes while this node holds the lease, and tries to take it every [`LEASE_EVERY`] otherwise.
pub async fn route(gateway: Arc<Gateway>, reader: Redis, stream: String) {
    let mut leading = false;
    // Where this router reads on from; asked of Redis after taking the lease, and after an error.
    let mut after: Option<StreamId> = None;
    let mut backlog = true;
    // The copy of the nodes' sets of held users; read whole after taking the lease, and after an error.
    let mut sets: Option<Sets> = None;
    let mut renewed: Option<Instant> = None;
    let mut backlog_read = Instant::now();
    loop {
        // A router of an earlier version that lost the lease while its blocking group read waited in Redis may have
        // been given entries after this one read what was pending: they are pending still, so look again now and
        // then (late, not lost).
        if backlog_read.elapsed() >= LEASE {
            backlog = true;
        }
        if renewed.is_none_or(|at| at.elapsed() >= LEASE_EVERY) {
            let held = match gateway.lease().await {
                Ok(held) => held,
                Err(e) => {
                    tracing::debug!(error = %e, "gateway router lease not renewed");
                    false
                }
            };
            renewed = Some(Instant::now());
            if held != leading {
                tracing::info!(routing = held, "gateway router");
                gateway.metrics.gateway_router.set(i64::from(held));
                // A new router reads on from where the last one recorded, after what it left pending.
                backlog = true;
                after = None;
                sets = None;
            }
            leading = held;
        }
        if !leading {
            tokio::time::sleep(LEASE_EVERY).await;
            continue;
        }
        if backlog {
            match streams::read_group(&reader, GROUP, CONSUMER, &stream, "0", None).await {
                Ok(entries) if entries.is_empty() => {
                    backlog = false;
                    backlog_read = Instant::now();
                }
                Ok(entries) => {
                    if let Err(e) = gateway.forward(&stream, entries, true, &mut sets).await {
                        sets = None;
                        tracing::warn!(stream, error = %e, "gateway send entries not routed: they will be again");
                        tokio::time::sleep(READ_RETRY).await;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "gateway send stream's pending entries not read");
                    if e.details().contains("NOGROUP") {
                        // The stream (and its group) was deleted: make them again, from the end.
                        let _ = streams::ensure_group(&gateway.publisher, &stream, GROUP).await;
                    }
                    tokio::time::sleep(READ_RETRY).await;
                }
            }
            continue;
        }
        let from = match after {
            Some(at) => at,
            None => match gateway.resume_at(&stream).await {
                Ok(at) => *after.insert(at),
                Err(e) => {
                    tracing::debug!(error = %e, "gateway router's position not read");
                    tokio::time::sleep(READ_RETRY).await;
                    continue;
                }
            },
        };
        // Blocks for less than the lease lasts, so that it is renewed in time.
        let entries = match streams::read(&reader, &stream, &from.to_string()).await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::debug!(error = %e, "gateway send stream not read");
                tokio::time::sleep(READ_RETRY).await;
                continue;
            }
        };
        let Some(last) = entries.last().map(|e| StreamId::parse(&e.id)) else {
            // The blocking read timed out.
            continue;
        };
        let Some(last) = last else {
            tracing::warn!(
                stream,
                "gateway send stream answered an entry id that is not one"
            );
            tokio::time::sleep(READ_RETRY).await;
            continue;
        };
        match gateway.forward(&stream, entries, false, &mut sets).await {
            Ok(()) => after = Some(last),
            Err(e) => {
                sets = None;
                tracing::warn!(stream, error = %e, "gateway send entries not routed: they will be again");
                after = None;
                tokio::time::sleep(READ_RETRY).await;
            }
        }
    }
}

/// Writes this node's set of held users in the order of the queue, many writes per round trip.
pub async fn write_directory(gateway: Arc<Gateway>, mut queue: mpsc::UnboundedReceiver<Op>) {
    let key = gateway.routing.holds(&gateway.node);
    while let Some(first) = queue.recv().await {
        let mut ops = vec![first];
        while ops.len() < DIRECTORY_BATCH
            && let Ok(op) = queue.try_recv()
        {
            ops.push(op);
        }
        let pipeline = gateway.publisher.pipeline();
        let mut told = Vec::new();
        // The same writes as changes for the directory, added once the writes are done.
        let mut changes = Vec::new();
        for op in ops {
            let queued = match op {
                Op::Add(tag, done) => {
                    told.push(done);
                    changes.push(Change::Add(tag.clone()));
                    pipeline.sadd::<(), _, _>(&key, tag).await
                }
                Op::Remove(tag) => {
                    changes.push(Change::Remove(tag.clone()));
                    pipeline.srem::<(), _, _>(&key, tag).await
                }
                Op::Rewrite(tags) => {
                    // A script is not pipelined: what was queued before goes first.
                    flush(&gateway, &pipeline, &mut changes, &mut told).await;
                    changes.push(Change::Reset);
                    changes.extend(tags.iter().cloned().map(Change::Add));
                    let mut args: Vec<Value> = vec![ms(PRESENCE).to_string().into()];
                    args.extend(tags.into_iter().map(Value::from));
                    let scripts = &gateway.routing.scripts;
                    if let Err(e) = scripts
                        .holds
                        .run(&gateway.publisher, vec![key.clone()], args)
                        .await
                    {
                        tracing::warn!(error = %e, "gateway set of held users not rewritten");
                        gateway.routing.failed_write.store(true, Ordering::Relaxed);
                    }
                    Ok(())
                }
            };
            if let Err(e) = queued {
                tracing::warn!(error = %e, "gateway set of held users not written");
                gateway.routing.failed_write.store(true, Ordering::Relaxed);
            }
        }
        let _ = pipeline.pexpire::<(), _>(&key, ms(PRESENCE), None).await;
        flush(&gateway, &pipeline, &mut changes, &mut told).await;
    }
}

/// Sends the writes `pipeline` holds, then their `changes` to the directory, then tells the clients waiting for
/// them (whether it worked or not: a client is not kept waiting for Redis; after a failed write, the next
/// housekeeping writes the set and its changes whole again).
/// The changes go only once the writes are done, also on a Redis Cluster, where the set and the directory may be on
/// two shards: a router reading the sets whole (the directory's end first) then finds each write either in a set
/// or among the changes after that end.
async fn flush(
    gateway: &Gateway,
    pipeline: &fred::clients::Pipeline<Redis>,
    changes: &mut Vec<Change>,
    told: &mut Vec<oneshot::Sender<()>>,
) {
    let failed = &gateway.routing.failed_write;
    for reply in pipeline.try_all::<Value>().await {
        if let Err(e) = reply {
            tracing::warn!(error = %e, "gateway set of held users not written");
            failed.store(true, Ordering::Relaxed);
        }
    }
    if let Err(e) = gateway.note_changes(changes).await {
        tracing::warn!(error = %e, "gateway directory not written");
        failed.store(true, Ordering::Relaxed);
    }
    changes.clear();
    for done in told.drain(..) {
        let _ = done.send(());
    }
}

/// This node's inbox: the `send` entries routed to it, each delivered once to this node's clients of its user.
pub async fn read_inbox(gateway: Arc<Gateway>, reader: Redis, mut after: String) {
    let key = gateway.routing.inbox(&gateway.node);
    let mut recent = Recent::new(RECENT_IDS);
    let mut trimmed = Instant::now();
    loop {
        // What was read goes: an inbox holds what its node has not read yet (a paused node's backlog), not a
        // history (the router's `MAXLEN` is only a backstop).
        if trimmed.elapsed() >= INBOX_TRIM_EVERY {
            trimmed = Instant::now();
            if let Err(e) = streams::trim_before(&gateway.publisher, &key, &after, false).await {
                tracing::debug!(error = %e, "gateway inbox not trimmed");
            }
        }
        match streams::read(&reader, &key, &after).await {
            Ok(entries) => {
                for entry in entries {
                    after = entry.id.clone();
                    for (id, data) in &entry.fields {
                        let id = String::from_utf8_lossy(id);
                        let Some(at) = StreamId::parse(&id) else {
                            gateway.malformed(
                                &key,
                                &id,
                                "a routed entry's field is not named by its id",
                            );
                            continue;
                        };
                        if !recent.first(at) {
                            gateway.metrics.gateway_routed_twice.inc();
                            continue;
                        }
                        match SendEntry::parse(Some(data.as_ref())) {
                            Ok(send) => gateway.send(send),
                            Err(why) => gateway.malformed(&key, &id, &why),
                        }
                    }
                }
            }
            Err(e) => {
                // Ids are times: after Redis restarted empty, new ones are still larger, so reading on from
                // `after` misses nothing.
                tracing::debug!(error = %e, "gateway inbox not read");
                tokio::time::sleep(READ_RETRY).await;
            }
        }
    }
}
