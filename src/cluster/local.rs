//! What the cluster needs from this node: answers about its own sockets.

use futures_util::future::BoxFuture;

use super::protocol::{Query, Reply};

/// This node's own sockets, as the cluster protocol and `/health` need them.
pub trait LocalRooms: Send + Sync + 'static {
    /// Answers `query` about this node's sockets of namespace `ns`.
    fn answer(&self, ns: &str, query: &Query) -> Reply;
    /// Rooms with at least one socket on this node, over every namespace.
    fn room_count(&self) -> usize;
    /// Closes every local socket's transport: socket.io clients see `transport close` and reconnect on their
    /// own, to another node (a Socket.IO `disconnect` would tell them not to).
    fn close(&self) -> BoxFuture<'_, ()>;
}
