//! What the cluster needs from this node: answers about its own sockets.

use futures_util::future::BoxFuture;

use super::protocol::{Live, Query, Reply};

/// This node's own sockets, as the cluster protocol and `/health` need them.
pub trait LocalRooms: Send + Sync + 'static {
    /// Answers `query` about this node's sockets of namespace `ns`.
    fn answer(&self, ns: &str, query: &Query) -> Reply;
    /// Rooms with at least one socket on this node, over every namespace.
    fn room_count(&self) -> usize;
    /// Closes every local socket's transport: socket.io clients see `transport close` and reconnect on their
    /// own, to another node (a Socket.IO `disconnect` would tell them not to).
    fn close(&self) -> BoxFuture<'_, ()>;
    /// Emits another node's stored message to this node's sockets of its room, and applies their first ack to
    /// the store. Returns at once (the emit and the ack run in a task). A node without reliable delivery ignores it.
    fn live(&self, _msg: Live) {}
}
