//! The Socket.IO side: the namespaces of the config file, who each socket is, its rooms, and what its events do.
//!
//! * [`identity`]: who a socket is, and its user and session rooms.
//! * [`args`]: event arguments, relayed as they came.
//! * [`admission`]: limits on handshakes (socket cap, rate, origins).
//! * [`auth`]: each namespace's way to verify a handshake (none, claim, credentials, JWT, webhook).
//! * [`backend`]: client events as RPC, the call: the signed `POST` to a namespace's `rpc_url` and its answer.
//! * [`namespaces`]: the namespaces this node serves, built from the config file.
//! * [`bus`], [`observe`]: the ports the event-bus gateway and the admin UI implement ([`crate::gateway`],
//!   [`crate::admin`]), so that the socket handlers need not know them.
//! * [`push`]: events from the application's backend (`POST /send`, the Redis emitter) to rooms, on every node.
//! * [`deliver`]: a push from the backend (`POST /send`, the Redis emitter) to rooms: user rooms stored and
//!   acknowledged, the others emitted once.
//! * [`presence`]: members' presence (`presence = true`), sent from the lifecycle webhooks' counts.
//! * [`recover`]: connection state recovery: which sockets get their session back, saving and removing sessions.
//! * [`local`]: this node's answers to cluster queries ([`crate::cluster::LocalRooms`]).
//! * [`node`]: what every socket handler shares about this node ([`NodeInfo`]).
//! * [`reliable`]: user rooms held in the delivery store, their `batch` on join, let go on leave.
//! * [`rpc`]: client events as RPC, the socket's side: bounds, the ack, the answer's actions applied.
//! * [`events`]: what client events do: `identity-change`, `session_id`, `__count__`, forwarding, the rate.
//! * [`handshake`]: the namespaces' registration with socketioxide, the connect middleware (admission,
//!   verification, rooms) and the connect handler.
//!
//! Listed lowest first: a module never imports one listed after it (the layers they form are in `lib.rs`, and a
//! test checks them).
//!
//! Generic over the adapter, so the same handlers run on one node (in-memory adapter) and in a cluster
//! (socketioxide-redis), where `socket.to(room).emit(..)` reaches the room on every node.

pub mod admission;
pub mod args;
pub mod auth;
pub mod backend;
pub mod bus;
pub mod deliver;
pub mod events;
pub mod handshake;
pub mod identity;
pub mod local;
pub mod namespaces;
pub mod node;
pub mod observe;
pub mod presence;
pub mod push;
pub mod recover;
pub mod reliable;
pub mod rpc;

pub use handshake::HandshakeError;
pub use identity::{Identity, Role};
pub use namespaces::Namespaces;
pub use node::NodeInfo;
