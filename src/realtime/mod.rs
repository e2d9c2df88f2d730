//! The Socket.IO side: the namespaces of the config file, who each socket is, its rooms, and what its events do.
//!
//! * [`namespaces`]: the namespaces this node serves and their registration with socketioxide.
//! * [`auth`]: each namespace's way to verify a handshake (none, claim, credentials, JWT, webhook).
//! * [`handshake`]: the connect middleware (admission, verification, rooms) and the connect handler.
//! * [`events`]: what client events do: `identity-change`, `session_id`, `__count__`, forwarding, the rate.
//! * [`admission`]: limits on handshakes (socket cap, rate, origins).
//! * `local`: this node's answers to cluster queries ([`crate::cluster::LocalRooms`]).
//!
//! Generic over the adapter, so the same handlers run on one node (in-memory adapter) and in a cluster
//! (socketioxide-redis), where `socket.to(room).emit(..)` reaches the room on every node.

pub mod admission;
pub mod auth;
pub mod events;
pub mod handshake;
mod local;
pub mod namespaces;

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
    /// Asks every node (or this one alone, on a single node) about namespace `ns`.
    pub async fn ask<A: Adapter>(&self, io: &SocketIo<A>, ns: &str, query: Query) -> Answer {
        match self.cluster.get() {
            Some(cluster) => cluster.ask(ns, query).await,
            None => Answer::local(self.id.clone(), io.answer(ns, &query)),
        }
    }
}
