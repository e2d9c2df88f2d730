//! The Socket.IO side: the namespaces of the config file, who each socket is, its rooms, and what its events do.
//!
//! * [`namespaces`]: the namespaces this node serves and their registration with socketioxide.
//! * [`auth`]: each namespace's way to verify a handshake (none, claim, credentials, JWT, webhook).
//! * [`handshake`]: the connect middleware (admission, verification, rooms) and the connect handler.
//! * [`events`]: what client events do: `identity-change`, `session_id`, `__count__`, forwarding, the rate.
//! * [`admission`]: limits on handshakes (socket cap, rate, origins).
//! * [`push`]: events from the application's backend (`POST /send`) to rooms, on every node.
//! * [`reliable`]: user rooms held in the delivery store, their `batch` on join, let go on leave.
//! * `local`: this node's answers to cluster queries ([`crate::cluster::LocalRooms`]).
//!
//! Generic over the adapter, so the same handlers run on one node (in-memory adapter) and in a cluster
//! (socketioxide-redis), where `socket.to(room).emit(..)` reaches the room on every node.

pub mod admission;
pub mod auth;
pub mod bus;
pub mod events;
pub mod handshake;
pub mod local;
pub mod namespaces;
pub mod observe;
pub mod push;
pub mod reliable;

use std::sync::{Arc, OnceLock};

use socketioxide::{SocketIo, adapter::Adapter};

pub use handshake::{HandshakeError, Identity, Role};
pub use namespaces::Namespaces;

use crate::{
    cluster::{Answer, Cluster, LocalRooms, protocol::Query},
    telemetry::metrics::Metrics,
};

/// What the socket handlers need to know about this node (socketioxide's shared state).
#[derive(Clone)]
pub struct NodeInfo {
    pub id: Arc<str>,
    /// Whether joins and leaves are announced to the room ([`crate::Config::presence_events`]).
    pub presence: bool,
    pub metrics: Arc<Metrics>,
    pub admission: Arc<admission::Admission>,
    pub namespaces: Arc<Namespaces>,
    /// The cluster protocol, once joined; unset on a single node.
    pub cluster: Arc<OnceLock<Arc<Cluster>>>,
    /// Client events per second per socket ([`crate::Config::socket_event_rate`]); `None`: no limit.
    pub event_rate: Option<governor::Quota>,
    /// Handshakes in progress, by namespace.
    pub handshakes: Arc<InProgress>,
    /// The store of reliable delivery (Redis in a cluster, memory on a single node), set before serving.
    pub delivery: Arc<OnceLock<Arc<dyn crate::delivery::Store>>>,
    /// Where socket handlers report what happens, for the admin UI.
    pub observer: Arc<observe::Observer>,
    /// The event-bus gateway, when `[gateway]` is configured (set once joined to Redis).
    pub bus: Arc<OnceLock<Arc<dyn bus::Bus>>>,
    /// The event names the gateway sends its Socket.IO clients (none without `[gateway]`).
    pub gateway_events: Arc<[String]>,
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
                let local = local::Local {
                    io: io.clone(),
                    node: self.clone(),
                };
                Answer::local(self.id.clone(), local.answer(ns, &query))
            }
        }
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
