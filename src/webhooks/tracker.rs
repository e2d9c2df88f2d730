//! This node's sockets, as the counts see them: each socket's namespace, user and rooms, and the changes its
//! connect, joins, leaves and disconnect make, applied to the store in order per socket by a few workers, off the
//! socket's path. The queues are bounded: a change that does not fit (Redis far behind) is counted `unrecorded`
//! and logged, never waited for.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::mpsc;

use super::{Change, Store};
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

/// What this node's sockets contribute to the counts.
pub struct Tracker {
    node: Arc<str>,
    store: Arc<dyn Store>,
    hooks: Arc<[Arc<CheckedWebhook>]>,
    /// Namespaces with members' presence (`presence = true`): counted too.
    presence: Arc<[NamePattern]>,
    sockets: Mutex<HashMap<String, Tracked>>,
    queues: Vec<mpsc::Sender<(String, Change)>>,
    metrics: WebhookMetrics,
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
        });
        for rx in receivers {
            tokio::spawn(apply(
                rx,
                tracker.node.clone(),
                tracker.store.clone(),
                tracker.metrics.clone(),
            ));
        }
        tracker
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

    fn send(&self, ns: String, change: Change) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        change.socket.hash(&mut h);
        let queue = &self.queues[(h.finish() as usize) % self.queues.len()];
        if queue.try_send((ns.clone(), change)).is_err() {
            self.metrics
                .events
                .get_or_create(&Outcome {
                    outcome: "unrecorded",
                })
                .inc();
            tracing::warn!(
                namespace = ns,
                "webhook counts: a socket change was dropped (the queue is full): counts may be off"
            );
        }
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
        self.sockets().insert(
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
        let change = {
            let mut sockets = self.sockets();
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
        let Some(t) = self.sockets().remove(socket) else {
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

/// One worker: applies its queue's changes in order, registering each namespace before its first change.
async fn apply(
    mut rx: mpsc::Receiver<(String, Change)>,
    node: Arc<str>,
    store: Arc<dyn Store>,
    metrics: WebhookMetrics,
) {
    let mut registered: HashSet<String> = HashSet::new();
    while let Some((ns, change)) = rx.recv().await {
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=ATTEMPTS {
            let done = async {
                if !registered.contains(&ns) {
                    store.register(&ns).await?;
                    registered.insert(ns.clone());
                }
                store.apply(&ns, &node, &change).await
            }
            .await;
            match done {
                Ok(_) => break,
                Err(e) if attempt == ATTEMPTS => {
                    metrics
                        .events
                        .get_or_create(&Outcome {
                            outcome: "unrecorded",
                        })
                        .inc();
                    tracing::warn!(namespace = ns, error = %e, "webhook counts: a socket change could not be recorded: counts may be off");
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }
}
