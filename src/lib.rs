//! # socket-identity
//!
//! A horizontally clustered Socket.IO server that answers "who is in this room?" across every node.
//!
//! Each namespace of the config file verifies who connects its own way (claimed, credentials, JWT, an auth
//! webhook, or no identity) and puts the socket in its rooms (the handshake's room, `user.{id}`,
//! `session.{id}`, the webhook's rooms); the identity is kept in the socket's extensions. `GET /{room}/users`
//! on any node lists a room's sockets on all nodes; `GET /api/rooms` a namespace's rooms with their sizes.
//!
//! ## Layout
//! Grouped by capability; dependencies flow down this list, never up.
//! * [`app`]: builds one node from its config and serves it until shutdown ([`run`], [`listen`]).
//! * [`http`]: REST and page routes; [`error`]: how failures become HTTP answers (and start-up errors).
//! * [`realtime`]: the Socket.IO side: namespaces from the config file, handshake and identity
//!   ([`realtime::auth`]), rooms, forwarding and controller/view events, admission limits.
//! * [`delivery`]: reliable per-user delivery (seed 001): queue, ack, `batch`, `resync`, TTL; Redis or in memory.
//! * [`cluster`]: the cross-node wire types ([`cluster::protocol`]), membership by heartbeats, the query's
//!   waiting logic ([`cluster::query`]) over Redis pub/sub, signed messages ([`cluster::seal`]); [`redis`]: fred
//!   clients configured for it (RESP3, reconnects, re-subscription).
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
//! Two kinds of message, JSON-encoded [`cluster::protocol`] types, on plain (not sharded) Redis pub/sub channels whose
//! names start with `REDIS_PREFIX` (default `socket-identity`):
//!
//! | channel | who subscribes | message |
//! |---|---|---|
//! | `{prefix}:users#req` | every node | [`cluster::protocol::Request`] `{v, id, from, ns, query}` |
//! | `{prefix}:users#reply#{node}` | node `{node}` | [`cluster::protocol::Response`] `{v, id, node, reply}` |
//! | `{prefix}:nodes` | every node | [`cluster::protocol::Heartbeat`] `{v, node}` every `HEARTBEAT_MS`, `{v, node, leaving: true}` at shutdown |
//!
//! A request asks about one namespace `ns` ([`cluster::protocol::Query`]): the members of a room (`users`), the
//! rooms and their sizes (`rooms`), or the number of view sockets (`views`, for seed 000's `__count__`); each
//! answer is of the same kind ([`cluster::protocol::Reply`]). The wire format is version 2: nodes of another
//! version ignore each other's messages.
//!
//! 1. Membership ([`cluster::membership`]): a node announces itself before it answers any request, sends a
//!    heartbeat every interval, and says when it leaves. A node silent for 3 intervals is declared down (by nodes
//!    that hear their own heartbeat come back; one that does not is cut off and judges nobody). A node hearing a
//!    newcomer sends its own heartbeat at once, so the newcomer knows everyone within a round trip.
//! 2. The asking node publishes **one** request and waits for the nodes it knows to be alive. If `SPUBLISH`
//!    counts fewer subscribers than that, `PUBSUB SHARDNUMSUB` of their reply channels tells which are gone.
//! 3. Every other node answers with its local sockets of the namespace (for `users`: the room's sockets and
//!    their `id_user`, read from the sockets' extensions), in one reply. Round trips do not grow with the
//!    number of sockets.
//! 4. The asker returns as soon as every live node has answered (a node declared down meanwhile is no longer
//!    waited for), or at the request timeout with what it has, marked partial (`X-Cluster-Nodes: 2/3`,
//!    `X-Cluster-Partial: true`). Replies from nodes that are not members, and duplicates, are ignored.
//!
//! With `CLUSTER_SECRET` set, every message is published in a signed envelope ([`cluster::seal::Envelope`]):
//! `{"ts": <ms since the epoch>, "sig": "<hex HMAC-SHA256>", "msg": <the message above, byte for byte>}`, the
//! HMAC keyed with the secret over the channel name's length (8 bytes, big-endian), the name, `ts` (8 bytes,
//! big-endian) and the message.
//! A node refuses what is unsigned, signed with another secret, published on another channel, or sealed more than
//! 60 s away from its clock, a request whose id it accepted already, and a heartbeat older than the last accepted
//! from its node (no replays); so a client of Redis cannot speak for a node. Without the secret, messages are the
//! bare JSON. The adapter's channels (below) are not signed: a Redis ACL keeps other clients out of them
//! (`deploy/redis-acl.example`).
//!
//! Messages with another version, malformed fields, unknown request ids, answers of another kind or duplicate
//! answers are logged and ignored. Rooms and broadcasts between nodes (the `socket-connected` events,
//! forwarded events, `__connect__` and the like) go through the socketioxide-redis adapter on its own sharded
//! channels (`{prefix}-adapter-*`), one set per namespace, so one tenant's broadcasts never reach another's. Its `fetch_sockets` is not used
//! for the room query: remote sockets carry no extensions (so no `id_user`), and its answer is silently partial
//! when a node is slow.

pub mod admin;
pub mod app;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod error;
pub mod gateway;
pub mod http;
pub mod net;
pub mod realtime;
pub mod redis;
pub mod telemetry;

pub use app::{listen, run};
pub use config::Config;
pub use error::StartError;
