//! # socket-identity
//!
//! A horizontally clustered Socket.IO server that answers "who is in this room?" across every node.
//!
//! Each socket says who it is (`id_user`) and which room it joins at handshake; the identity is kept in the
//! socket's extensions. `GET /{room}/users` on any node lists the room's sockets on all nodes.
//!
//! ## Layout
//! Grouped by capability; dependencies flow down this list, never up.
//! * [`app`]: builds one node from its config and serves it until shutdown ([`run`], [`listen`]).
//! * [`http`]: REST and page routes; [`error`]: how failures become HTTP answers (and start-up errors).
//! * [`realtime`]: the Socket.IO side: namespaces from the config file, handshake and identity
//!   ([`realtime::auth`]), rooms, forwarding and controller/view events, admission limits.
//! * [`cluster`]: the cross-node wire types ([`cluster::protocol`]), membership by heartbeats, and the query
//!   over Redis pub/sub; [`redis`]: fred clients configured for it (RESP3, reconnects, re-subscription).
//! * [`config`]: the one typed configuration (clap, every flag with an environment variable) and the TOML file.
//! * [`domain`]: the rules for room names, user ids, node ids, shared by every entry point.
//! * [`telemetry`]: what `/metrics` exposes, and log lines (human or JSON) that name the node.
//! * [`net`]: rustls configuration, the limits on connections that are not requests yet ([`net::pending`]),
//!   and the shutdown signal.
//!
//! [`run`] serves one node on a listener until a shutdown future resolves (the binary's is
//! [`net::shutdown::signal`]); [`listen`] binds that listener, shared with the host's other instances when
//! `REUSE_PORT` is set.
//!
//! ## The cross-node protocol
//! Two kinds of message, JSON-encoded [`protocol`] types, on plain (not sharded) Redis pub/sub channels whose
//! names start with `REDIS_PREFIX` (default `socket-identity`):
//!
//! | channel | who subscribes | message |
//! |---|---|---|
//! | `{prefix}:users#req` | every node | [`protocol::Request`] `{v, id, from, room}` |
//! | `{prefix}:users#reply#{node}` | node `{node}` | [`protocol::Response`] `{v, id, node, members}` |
//! | `{prefix}:nodes` | every node | [`protocol::Heartbeat`] `{v, node}` every `HEARTBEAT_MS`, `{v, node, leaving: true}` at shutdown |
//!
//! 1. Membership ([`membership`]): a node announces itself before it answers any request, sends a heartbeat
//!    every interval, and says when it leaves. A node silent for 3 intervals is declared down. A node hearing a
//!    newcomer sends its own heartbeat at once, so the newcomer knows everyone within a round trip.
//! 2. The asking node publishes **one** request and waits for the nodes it knows to be alive. If `PUBLISH`
//!    counts fewer subscribers than that, one `PUBSUB NUMSUB` of their reply channels tells which are gone.
//! 3. Every other node answers with its local sockets of the room and their `id_user`, read from the sockets'
//!    extensions, in one reply. Round trips do not grow with the number of sockets.
//! 4. The asker returns as soon as every live node has answered (a node declared down meanwhile is no longer
//!    waited for), or at the request timeout with what it has, marked partial (`X-Cluster-Nodes: 2/3`,
//!    `X-Cluster-Partial: true`). Replies from nodes that are not members, and duplicates, are ignored.
//!
//! Messages with another version, malformed fields, unknown request ids or duplicate answers are logged and
//! ignored. Rooms and broadcasts between nodes (the `socket-connected` events and the like) go through the
//! socketioxide-redis adapter on its own sharded channels (`{prefix}-adapter-*`). Its `fetch_sockets` is not used
//! for the room query: remote sockets carry no extensions (so no `id_user`), and its answer is silently partial
//! when a node is slow.

pub mod app;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod net;
pub mod realtime;
pub mod redis;
pub mod telemetry;

pub use app::{listen, run};
pub use config::Config;
pub use error::StartError;
