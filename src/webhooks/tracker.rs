//! This node's sockets, as the counts see them: each socket's namespace, user and rooms, and the changes its
//! connect, joins, leaves and disconnect make, applied to the store in order per socket by a few workers, off the
//! socket's path. The queues are bounded: a change that does not fit (Redis far behind) is counted `unrecorded`
//! and logged, never waited for.
//!
//! Each worker numbers its changes ([`Stamp`]), so a retry of a change Redis applied but whose reply was lost is
//! skipped. When the store answers that the node was reaped meanwhile (declared down while its sockets stayed
//! connected: paused, or cut off from Redis), or when the node hears it was cut off ([`Tracker::restore`]), each
//! worker counts its sockets again as they are ([`Store::restore`]); the changes in between are skipped, as the
//! sockets' state then includes them.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    hash::{Hash, Hasher},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use super::{Applied, Change, Stamp, Store};
use crate::{
    config::file::{CheckedWebhook, NamePattern},
    telemetry::metrics::Outcome,
    telemetry::metrics::WebhookMetrics,
};

/// Workers applying changes; a socket's changes always go to the same one.
const WORKERS: usize = 4;
/// Changes waiting per worker.
const QUEUE: usize = 16_384;
/// Attempts at one change before it is given up (Redis away for longer than their back-off).
const ATTEMPTS: u32 = 5;

struct Tracked {
    ns: String,
    user: Option<String>,
    verified: bool,
    rooms: BTreeSet<String>,
}

/// What a worker is given.
enum Job {
    /// A socket's change, in a namespace.
    Change(String, Change),
    /// The worker's sockets (namespace, joins of their rooms) as they were after the changes queued before: to be
    /// counted again where the node was reaped.
    Restore(Vec<(String, Change)>),
}

/// What this node's sockets contribute to the counts.
pub struct Tracker {
    node: Arc<str>,
    store: Arc<dyn Store>,
    hooks: Arc<[Arc<CheckedWebhook>]>,
    /// Namespaces with members' presence (`presence = true`): counted too.
    presence: Arc<[NamePattern]>,
    /// Locked while a change is queued, so that a restore's snapshot matches the changes queued before it.
    sockets: Mutex<HashMap<String, Tracked>>,
    queues: Vec<mpsc::Sender<Job>>,
    metrics: WebhookMetrics,
    /// The node leaves: its contribution is taken away, nothing is applied any more.
    stopped: Arc<AtomicBool>,
}

impl Tracker {
    /// A tracker of `node`'s sockets into `store`, for the namespaces `hooks` want and those with `presence`,
    /// with its workers.
    pub fn start(
        node: Arc<str>,
        store: Arc<dyn Store>,
        hooks: Arc<[Arc<CheckedWebhook>]>,
        presence: Arc<[NamePattern]>,
        metrics: WebhookMetrics,
    ) -> Arc<Self> {
        let mut queues = Vec::with_capacity(WORKERS);
        let mut receivers = Vec::with_capacity(WORKERS);
        for _ in 0..WORKERS {
            let (tx, rx) = mpsc::channel(QUEUE);
            queues.push(tx);
            receivers.push(rx);
        }
        let tracker = Arc::new(Self {
            node,
            store,
            hooks,
            presence,
            sockets: Mutex::default(),
            queues,
            metrics,
            stopped: Arc::default(),
        });
        for (index, rx) in (0u32..).zip(receivers) {
            let worker = Worker {
                index,
                node: tracker.node.clone(),
                store: tracker.store.clone(),
                metrics: tracker.metrics.clone(),
                tracker: Arc::downgrade(&tracker),
                stopped: tracker.stopped.clone(),
                n: 0,
                registered: HashSet::new(),
                counted: HashSet::new(),
                restoring: false,
            };
            tokio::spawn(worker.run(rx));
        }
        tracker
    }

    /// Applies nothing more: the node leaves, and takes its contribution away itself.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Whether some webhook wants namespace `ns`, or it has members' presence (nothing is tracked otherwise).
    pub fn tracks(&self, ns: &str) -> bool {
        self.hooks.iter().any(|h| h.wants(ns)) || self.presence.iter().any(|p| p.matches(ns))
    }

    fn socket_events(&self, ns: &str) -> bool {
        self.hooks
            .iter()
            .any(|h| h.wants(ns) && h.events.iter().any(|e| e.is_socket_event()))
    }

    fn sockets(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        self.sockets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The worker of a socket.
    fn shard(&self, socket: &str) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        socket.hash(&mut h);
        (h.finish() as usize) % self.queues.len()
    }

    /// Queues a change; called with `sockets` locked.
    fn send(&self, ns: String, change: Change) {
        let queue = &self.queues[self.shard(&change.socket)];
        if queue.try_send(Job::Change(ns.clone(), change)).is_err() {
            self.unrecorded();
            tracing::warn!(
                namespace = ns,
                "webhook counts: a socket change was dropped (the queue is full): counts may be off"
            );
        }
    }

    fn unrecorded(&self) {
        self.metrics
            .events
            .get_or_create(&Outcome {
                outcome: "unrecorded",
            })
            .inc();
    }

    /// Counts this node's sockets again where the others reaped it while they stayed connected (it was declared
    /// down); harmless where they did not. For when this node was cut off from the cluster.
    pub fn restore(&self) {
        self.restore_workers(None);
    }

    /// Queues a restore to every worker, or to `only`: each gets its sockets as they are now, after the changes
    /// already queued to it. Whether all were queued.
    fn restore_workers(&self, only: Option<usize>) -> bool {
        if self.stopped.load(Ordering::Relaxed) {
            return false;
        }
        let sockets = self.sockets();
        let mut shards: Vec<Vec<(String, Change)>> = vec![Vec::new(); self.queues.len()];
        for (id, t) in sockets.iter() {
            let shard = self.shard(id);
            if only.is_some_and(|o| o != shard) {
                continue;
            }
            let change = Change {
                socket: id.clone(),
                user: t.user.clone(),
                verified: t.verified,
                joined: true,
                rooms: t.rooms.iter().cloned().collect(),
                socket_event: self.socket_events(&t.ns),
            };
            shards[shard].push((t.ns.clone(), change));
        }
        let mut queued = true;
        for (i, (queue, snapshot)) in self.queues.iter().zip(shards).enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            if queue.try_send(Job::Restore(snapshot)).is_err() {
                queued = false;
                self.unrecorded();
                tracing::warn!(
                    "webhook counts: a restore of this node's sockets was dropped (the queue is full): counts may be off"
                );
            }
        }
        queued
    }

    /// A socket connected into `rooms`.
    pub fn connected(
        &self,
        ns: &str,
        socket: &str,
        user: Option<&str>,
        verified: bool,
        rooms: &[String],
    ) {
        if !self.tracks(ns) {
            return;
        }
        let rooms: BTreeSet<String> = rooms.iter().cloned().collect();
        let mut sockets = self.sockets();
        sockets.insert(
            socket.to_owned(),
            Tracked {
                ns: ns.to_owned(),
                user: user.map(str::to_owned),
                verified,
                rooms: rooms.clone(),
            },
        );
        self.send(
            ns.to_owned(),
            Change {
                socket: socket.to_owned(),
                user: user.map(str::to_owned),
                verified,
                joined: true,
                rooms: rooms.into_iter().collect(),
                socket_event: self.socket_events(ns),
            },
        );
    }

    /// A connected socket joins (`joined`) or leaves rooms; those it is already in (or not in) change nothing.
    pub fn moved(&self, socket: &str, joined: bool, rooms: &[String]) {
        let mut sockets = self.sockets();
        let change = {
            let Some(t) = sockets.get_mut(socket) else {
                return;
            };
            let rooms: Vec<String> = rooms
                .iter()
                .filter(|r| match joined {
                    true => t.rooms.insert((*r).clone()),
                    false => t.rooms.remove(*r),
                })
                .cloned()
                .collect();
            if rooms.is_empty() {
                return;
            }
            (
                t.ns.clone(),
                Change {
                    socket: socket.to_owned(),
                    user: t.user.clone(),
                    verified: t.verified,
                    joined,
                    rooms,
                    socket_event: false,
                },
            )
        };
        self.send(change.0, change.1);
    }

    /// A socket disconnected: it leaves every room it was in.
    pub fn disconnected(&self, socket: &str) {
        let mut sockets = self.sockets();
        let Some(t) = sockets.remove(socket) else {
            return;
        };
        let socket_event = self.socket_events(&t.ns);
        self.send(
            t.ns,
            Change {
                socket: socket.to_owned(),
                user: t.user,
                verified: t.verified,
                joined: false,
                rooms: t.rooms.into_iter().collect(),
                socket_event,
            },
        );
    }

    /// Takes `node`'s contribution away in every tracked namespace (declared down, or this node's earlier life);
    /// returns the events written.
    pub async fn reap(&self, node: &str) -> super::Result<u64> {
        let mut written = 0;
        for ns in self.store.namespaces().await? {
            written += self.store.reap(&ns, node).await?;
        }
        Ok(written)
    }
}

/// One worker: applies its queue's jobs in order, registering each namespace before its first change.
struct Worker {
    index: u32,
    node: Arc<str>,
    store: Arc<dyn Store>,
    metrics: WebhookMetrics,
    tracker: Weak<Tracker>,
    stopped: Arc<AtomicBool>,
    /// The number of its last job.
    n: u64,
    registered: HashSet<String>,
    /// Namespaces where it had a change counted: its mark is there, unless the node was reaped since.
    counted: HashSet<String>,
    /// A restore of its sockets is queued.
    restoring: bool,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(job) = rx.recv().await {
            if self.stopped.load(Ordering::Relaxed) {
                continue;
            }
            self.n += 1;
            match job {
                Job::Change(ns, change) => self.change(ns, change).await,
                Job::Restore(snapshot) => self.restore(snapshot).await,
            }
        }
    }

    fn stamp(&self, ns: &str) -> Stamp {
        Stamp {
            worker: self.index,
            n: self.n,
            counted: self.counted.contains(ns),
        }
    }

    async fn register(&mut self, ns: &str) {
        if self.registered.contains(ns) {
            return;
        }
        let store = &self.store;
        if retry(|| store.register(ns)).await.is_ok() {
            self.registered.insert(ns.to_owned());
        }
    }

    async fn change(&mut self, ns: String, change: Change) {
        self.register(&ns).await;
        let stamp = self.stamp(&ns);
        let (store, node) = (&self.store, &self.node);
        match retry(|| store.apply(&ns, node, stamp, &change)).await {
            Ok(Applied::Events(_) | Applied::Again) => {
                self.counted.insert(ns);
            }
            Ok(Applied::Reaped) => {
                if !self.restoring {
                    tracing::info!(
                        namespace = ns,
                        "webhook counts: this node's sockets were taken away (it was declared down): counting them again"
                    );
                    self.restoring = self
                        .tracker
                        .upgrade()
                        .is_some_and(|t| t.restore_workers(Some(self.index as usize)));
                }
            }
            Err(e) => self.unrecorded(&ns, &e),
        }
    }

    async fn restore(&mut self, snapshot: Vec<(String, Change)>) {
        self.restoring = false;
        // Where it had changes counted, even if none of its sockets is left there: its mark comes back.
        let mut by_ns: BTreeMap<String, Vec<Change>> = self
            .counted
            .iter()
            .map(|ns| (ns.clone(), Vec::new()))
            .collect();
        for (ns, change) in snapshot {
            by_ns.entry(ns).or_default().push(change);
        }
        for (ns, sockets) in by_ns {
            self.register(&ns).await;
            let stamp = self.stamp(&ns);
            let (store, node) = (&self.store, &self.node);
            match retry(|| store.restore(&ns, node, stamp, &sockets)).await {
                Ok(restored) => {
                    if let Some(events) = restored
                        && !sockets.is_empty()
                    {
                        tracing::info!(
                            namespace = ns,
                            sockets = sockets.len(),
                            events,
                            "webhook counts: this node's sockets counted again"
                        );
                    }
                    self.counted.insert(ns);
                }
                Err(e) => self.unrecorded(&ns, &e),
            }
        }
    }

    fn unrecorded(&self, ns: &str, e: &super::WebhookError) {
        self.metrics
            .events
            .get_or_create(&Outcome {
                outcome: "unrecorded",
            })
            .inc();
        tracing::warn!(namespace = ns, error = %e, "webhook counts: a socket change could not be recorded: counts may be off");
    }
}

/// Runs `op` until it succeeds, [`ATTEMPTS`] times at most, backing off in between (Redis away for a moment).
async fn retry<'a, T>(mut op: impl FnMut() -> BoxFuture<'a, super::Result<T>>) -> super::Result<T> {
    let mut delay = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(done) => return Ok(done),
            Err(e) if attempt >= ATTEMPTS => return Err(e),
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use futures_util::FutureExt;

    use super::*;
    use crate::{
        config::file::{EventKind, NamePattern},
        webhooks::{Cursor, Event, MemoryStore, WebhookError},
    };

    /// A memory store whose replies to its first `lose` applies are lost after it applied them (a timeout, a cut
    /// connection).
    #[derive(Default)]
    struct Lossy {
        inner: MemoryStore,
        lose: AtomicU32,
    }

    impl Store for Lossy {
        fn register<'a>(&'a self, ns: &'a str) -> BoxFuture<'a, super::super::Result<()>> {
            self.inner.register(ns)
        }
        fn namespaces(&self) -> BoxFuture<'_, super::super::Result<Vec<String>>> {
            self.inner.namespaces()
        }
        fn apply<'a>(
            &'a self,
            ns: &'a str,
            node: &'a str,
            stamp: Stamp,
            change: &'a Change,
        ) -> BoxFuture<'a, super::super::Result<Applied>> {
            async move {
                let applied = self.inner.apply(ns, node, stamp, change).await?;
                let lost = self
                    .lose
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok();
                match lost {
                    true => Err(WebhookError::Reply {
                        command: "test",
                        reply: "lost".into(),
                    }),
                    false => Ok(applied),
                }
            }
            .boxed()
        }
        fn restore<'a>(
            &'a self,
            ns: &'a str,
            node: &'a str,
            stamp: Stamp,
            sockets: &'a [Change],
        ) -> BoxFuture<'a, super::super::Result<Option<u64>>> {
            self.inner.restore(ns, node, stamp, sockets)
        }
        fn reap<'a>(
            &'a self,
            ns: &'a str,
            node: &'a str,
        ) -> BoxFuture<'a, super::super::Result<u64>> {
            self.inner.reap(ns, node)
        }
        fn read<'a>(
            &'a self,
            ns: &'a str,
            after: &'a Cursor,
            count: usize,
        ) -> BoxFuture<'a, super::super::Result<Vec<Event>>> {
            self.inner.read(ns, after, count)
        }
        fn lease<'a>(
            &'a self,
            ns: &'a str,
            hook: &'a str,
            me: &'a str,
            ttl_ms: u64,
        ) -> BoxFuture<'a, super::super::Result<bool>> {
            self.inner.lease(ns, hook, me, ttl_ms)
        }
        fn cursor<'a>(
            &'a self,
            ns: &'a str,
            hook: &'a str,
        ) -> BoxFuture<'a, super::super::Result<Cursor>> {
            self.inner.cursor(ns, hook)
        }
        fn advance<'a>(
            &'a self,
            ns: &'a str,
            hook: &'a str,
            me: &'a str,
            to: &'a Cursor,
        ) -> BoxFuture<'a, super::super::Result<bool>> {
            self.inner.advance(ns, hook, me, to)
        }
    }

    fn tracker(store: Arc<Lossy>) -> Arc<Tracker> {
        let hook = CheckedWebhook {
            url: url::Url::parse("http://backend.test/hooks").unwrap(),
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap(),
            namespaces: vec![NamePattern::parse("/chat").unwrap()],
            events: EventKind::ALL[..4].to_vec(),
            batch_ms: 0,
            timeout_ms: 5_000,
            retry_s: 60,
        };
        Tracker::start(
            "a".into(),
            store,
            Arc::from([Arc::new(hook)]),
            Arc::from([]),
            WebhookMetrics::default(),
        )
    }

    /// The outbox's `(type, room)` once `n` events are there and nothing more comes for a while.
    async fn settled(store: &Lossy, n: usize) -> Vec<(EventKind, Option<String>)> {
        for _ in 0..100 {
            if store
                .read("/chat", &Cursor::start(), 100)
                .await
                .unwrap()
                .len()
                >= n
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let events = store.read("/chat", &Cursor::start(), 100).await.unwrap();
        events.into_iter().map(|e| (e.kind, e.room)).collect()
    }

    fn room(kind: EventKind) -> (EventKind, Option<String>) {
        (kind, Some("r".into()))
    }

    /// Redis applied a join but its reply was lost: the retry is skipped, so the socket's leave empties the room.
    #[tokio::test]
    async fn a_change_whose_reply_was_lost_counts_once() {
        let store = Arc::new(Lossy::default());
        store.lose.store(1, Ordering::Relaxed);
        let tracker = tracker(store.clone());
        tracker.connected("/chat", "s1", Some("u"), true, &["r".into()]);
        tracker.disconnected("s1");
        assert_eq!(
            settled(&store, 4).await,
            [
                room(EventKind::RoomOccupied),
                room(EventKind::MemberAdded),
                room(EventKind::MemberRemoved),
                room(EventKind::RoomVacated),
            ]
        );
    }

    /// Reaped while its socket stayed: the socket's next change finds out and counts it again with that change;
    /// a restore where nothing was reaped writes nothing.
    #[tokio::test]
    async fn a_reaped_node_counts_its_sockets_again() {
        let store = Arc::new(Lossy::default());
        let tracker = tracker(store.clone());
        tracker.connected("/chat", "s1", Some("u"), true, &["r".into()]);
        assert_eq!(settled(&store, 2).await.len(), 2);
        tracker.restore();
        assert_eq!(settled(&store, 2).await.len(), 2, "nothing was reaped");
        assert_eq!(tracker.reap("a").await.unwrap(), 2);
        tracker.moved("s1", true, &["q".into()]);
        let events = settled(&store, 8).await;
        assert_eq!(events.len(), 8, "{events:?}");
        assert!(events[4..].contains(&room(EventKind::RoomOccupied)));
        assert!(events[4..].contains(&(EventKind::RoomOccupied, Some("q".into()))));
        tracker.disconnected("s1");
        let events = settled(&store, 12).await;
        assert_eq!(events[11].0, EventKind::RoomVacated, "{events:?}");
    }
}
