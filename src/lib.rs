//! # socket-identity
//!
//! A horizontally clustered Socket.IO server that answers "who is in this room?" across every node.
//!
//! Each namespace of the config file verifies who connects its own way (claimed, credentials, JWT, an auth
//! webhook, or no identity) and puts the socket in its rooms (the handshake's room, `user.{id}`,
//! `session.{id}`, the webhook's rooms); the identity is kept in the socket's extensions. `GET /{room}/users`
//! on any node lists a room's sockets on all nodes; `GET /api/rooms` a namespace's rooms with their sizes.
//!
//! ## Layers
//! Grouped by capability, lowest layer first. A module imports only from the layers before its own, never from its
//! own layer or a later one; the `layering` unit test reads this list and checks every `crate::` and `super::`
//! path of the sources against it.
//!
//! 1. [`domain`], [`redis`]: the rules for room names, user ids, node ids, shared by every entry point; fred
//!    clients configured for the cluster (RESP3, reconnects, re-subscription).
//! 2. [`telemetry`]: what `/metrics` exposes, and log lines (human or JSON) that name the node.
//! 3. [`config`], [`net`]: the one typed configuration (clap, every flag with an environment variable) and the
//!    TOML file; rustls configuration, the limits on connections that are not requests yet ([`net::pending`]),
//!    and the shutdown signal.
//! 4. [`cluster`], [`delivery`], [`recovery`], [`webhooks`]: the cross-node protocol (wire types, membership by heartbeats, the
//!    query's waiting logic over Redis pub/sub, signed messages); reliable per-user delivery (queue, ack, `batch`,
//!    `resync`, TTL), in Redis or in memory; connection state recovery's sessions and log of broadcasts, in Redis
//!    or in memory, and the adapter that records and delivers broadcasts in log order; lifecycle webhooks'
//!    cluster-wide room and member counts, their outboxes and the dispatcher sending them, signed.
//! 5. [`realtime`]: the Socket.IO side. Its modules are layered the same way, lowest first:
//!    1. `identity`, `args`, `admission`, `auth`, `backend`: who a socket is and its user and session rooms; event
//!       arguments; limits on handshakes; each namespace's way to verify one; the call of a client event to the
//!       RPC backend.
//!    2. `namespaces`, `bus`, `observe`, `push`: the namespaces of the config file; the ports the gateway and the
//!       admin UI implement; pushes to rooms on every node.
//!    3. `recover`, `deliver`, `presence`: connection state recovery's sessions, saved and given back; a push
//!       from the backend to rooms, user rooms stored and acknowledged (`POST /send`, the emitter); members'
//!       presence events, sent from the webhooks' counts.
//!    4. `local`: this node's answers to cluster queries.
//!    5. `node`: what every socket handler shares about this node ([`realtime::NodeInfo`]).
//!    6. `reliable`, `rpc`: user rooms held in the delivery store; client events as RPC, the socket's side.
//!    7. `events`: what client events do.
//!    8. `handshake`: registration, the connect middleware and the connect handler.
//! 6. [`error`]: how failures become HTTP answers, and start-up errors ([`StartError`]).
//! 7. [`admin`], [`emitter`], [`gateway`], [`http`]: the admin UI's namespace and its cluster-wide view; the
//!    socket.io Redis emitter protocol accepted on every node; the event-bus gateway (Redis streams to and from
//!    clients); REST and page routes.
//! 8. [`app`]: builds one node from its config and serves it until shutdown ([`run`], [`listen`]).
//!
//! [`run`] serves one node on a listener until a shutdown future resolves (the binary's is
//! [`net::shutdown::signal`]); [`listen`] binds that listener, shared with the host's other instances when
//! `REUSE_PORT` is set.
//!
//! The cross-node protocol (channels, messages, membership, signing) is described in `docs/cluster-protocol.md`.

pub mod admin;
pub mod app;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod emitter;
pub mod error;
pub mod gateway;
pub mod http;
pub mod net;
pub mod realtime;
pub mod recovery;
pub mod redis;
pub mod telemetry;
pub mod webhooks;

#[cfg(test)]
mod layering;

pub use app::{listen, run};
pub use config::Config;
pub use error::StartError;
