//! The node context: what every socket handler shares about this node (socketioxide's state), and the handshakes
//! in progress that keep a dynamic namespace alive.

use std::sync::{Arc, OnceLock};

use socketioxide::{SocketIo, adapter::Adapter};

use super::{
    admission::Admission, bus::Bus, local::Local, namespaces::Namespaces, observe::Observer,
    recover::Recovery,
};
use crate::{
    cluster::{Answer, Cluster, LocalRooms, protocol::Query},
    config::file::NamePattern,
    telemetry::metrics::Metrics,
};

/// What the socket handlers need to know about this node (socketioxide's shared state).
#[derive(Clone)]
pub struct NodeInfo {
    pub id: Arc<str>,
    /// Whether joins and leaves are announced to the room ([`crate::Config::presence_events`]).
    pub presence: bool,
    pub metrics: Arc<Metrics>,
    pub admission: Arc<Admission>,
    pub namespaces: Arc<Namespaces>,
    /// The cluster protocol, once joined; unset on a single node.
    pub cluster: Arc<OnceLock<Arc<Cluster>>>,
    /// Client events per second per socket ([`crate::Config::socket_event_rate`]); `None`: no limit.
    pub event_rate: Option<EventQuota>,
    /// Handshakes in progress, by namespace.
    pub handshakes: Arc<InProgress>,
    /// The store of reliable delivery (Redis in a cluster, memory on a single node), set before serving.
    pub delivery: Arc<OnceLock<Arc<dyn crate::delivery::Store>>>,
    /// Where socket handlers report what happens, for the admin UI.
    pub observer: Arc<Observer>,
    /// The event-bus gateway, when `[gateway]` is configured (set once joined to Redis).
    pub bus: Arc<OnceLock<Arc<dyn Bus>>>,
    /// The event names the gateway sends its Socket.IO clients (none without `[gateway]`).
    pub gateway_events: Arc<[String]>,
    /// Connection state recovery, when a namespace has `recovery_window_s` (set before serving).
    pub recovery: Arc<OnceLock<Arc<Recovery>>>,
    /// Places for client events being sent to RPC backends at once ([`crate::Config::rpc_max_in_flight`]).
    pub rpc_in_flight: Arc<tokio::sync::Semaphore>,
    /// Lifecycle webhooks' counting of this node's sockets, when the file has `[[webhook]]` (set before serving).
    pub webhooks: Arc<OnceLock<Arc<crate::webhooks::tracker::Tracker>>>,
    /// Every socket's `id_user`, for the users query.
    pub directory: Arc<super::identity::Directory>,
}

/// A socket's event rate, and the one clock every socket's limiter reads. `RateLimiter::direct` would build a clock
/// per socket, and building one runs `cpuid`, which a virtual machine traps: ~5% of a node's CPU per handshake.
#[derive(Debug, Clone)]
pub struct EventQuota {
    quota: governor::Quota,
    clock: governor::clock::DefaultClock,
}

impl EventQuota {
    pub fn per_second(events: std::num::NonZeroU32) -> Self {
        Self {
            quota: governor::Quota::per_second(events),
            clock: governor::clock::DefaultClock::default(),
        }
    }

    /// A new socket's limiter.
    pub fn limiter(&self) -> governor::DefaultDirectRateLimiter {
        governor::RateLimiter::direct_with_clock(self.quota, self.clock.clone())
    }

    /// Events a socket may send per second.
    pub fn events(&self) -> u32 {
        self.quota.burst_size().get()
    }
}

/// Handshakes in progress per namespace path, from the connect middleware until the socket is in its namespace:
/// a dynamic namespace is only removed when none is ([`InProgress::when_idle`]).
#[derive(Debug, Default)]
pub struct InProgress(std::sync::Mutex<std::collections::HashMap<String, usize>>);

/// One handshake in progress, until dropped (also when the handshake's future is dropped half-way: the client went
/// away).
#[derive(Debug)]
pub struct Entered {
    of: Arc<InProgress>,
    ns: String,
}

impl InProgress {
    pub fn enter(self: &Arc<Self>, ns: &str) -> Entered {
        *self.0.lock().unwrap().entry(ns.to_owned()).or_default() += 1;
        Entered {
            of: self.clone(),
            ns: ns.to_owned(),
        }
    }

    /// Runs `f` if no handshake is in progress in `ns`, holding new ones off until it returns.
    pub fn when_idle(&self, ns: &str, f: impl FnOnce()) {
        let map = self.0.lock().unwrap();
        if !map.contains_key(ns) {
            f();
        }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let mut map = self.of.0.lock().unwrap();
        if let Some(n) = map.get_mut(&self.ns) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ns);
            }
        }
    }
}

impl std::fmt::Debug for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeInfo")
            .field("id", &self.id)
            .field("namespaces", &self.namespaces)
            .finish_non_exhaustive()
    }
}

impl NodeInfo {
    /// The store of reliable delivery; `None` only before start-up set it.
    pub fn delivery(&self) -> Option<&Arc<dyn crate::delivery::Store>> {
        self.delivery.get()
    }

    /// The TTL of a user room, from its namespace (`client_ttl_s`; an unknown namespace: the default hour).
    pub fn ttl_of(&self, room: &crate::delivery::RoomKey) -> crate::delivery::Ttl {
        self.namespaces
            .find(room.namespace())
            .and_then(|ns| ns.reliable.as_ref())
            .map_or(crate::delivery::Ttl::from_secs(3600), |r| r.policy.ttl)
    }

    /// Asks every node (or this one alone, on a single node) about namespace `ns`.
    pub async fn ask<A: Adapter>(&self, io: &SocketIo<A>, ns: &str, query: Query) -> Answer {
        match self.cluster.get() {
            Some(cluster) => cluster.ask(ns, query).await,
            None => {
                let local = Local {
                    io: io.clone(),
                    observer: self.observer.clone(),
                    webhooks: self.webhooks.clone(),
                    directory: self.directory.clone(),
                    delivery: self.delivery.clone(),
                };
                Answer::local(self.id.clone(), local.answer(ns, &query))
            }
        }
    }

    /// Whether `ns` is a child of a dynamic namespace (`/do-x` of `/do-*`).
    pub fn is_dynamic(&self, ns: &str) -> bool {
        self.namespaces
            .find(ns)
            .is_some_and(|n| matches!(n.pattern, NamePattern::Prefix(_)))
    }

    /// Removes a dynamic namespace (`/do-x` of `/do-*`) that has no socket on this node and no handshake in
    /// progress: after a refused handshake, and when its last socket left. socketioxide creates a dynamic
    /// namespace, with its adapter's Redis subscriptions, before our middleware runs; without this, namespaces
    /// would pile up.
    pub fn forget_if_unused<A: Adapter>(&self, io: &SocketIo<A>, ns: &str) {
        if !self.is_dynamic(ns) {
            return;
        }
        self.handshakes.when_idle(ns, || {
            let empty = io
                .of(ns)
                .is_some_and(|ops| ops.local().sockets().is_empty());
            if empty {
                tracing::debug!(ns, "dynamic namespace without sockets removed");
                io.delete_ns(ns);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_handshakes_in_progress() {
        let p = Arc::new(InProgress::default());
        let idle = |ns| {
            let mut ran = false;
            p.when_idle(ns, || ran = true);
            ran
        };
        let a = p.enter("/do-x");
        let b = p.enter("/do-x");
        let c = p.enter("/do-y");
        drop(a);
        assert!(!idle("/do-x"));
        drop(c);
        assert!(idle("/do-y"));
        drop(b);
        assert!(idle("/do-x"));
        assert!(p.0.lock().unwrap().is_empty());
    }
}
