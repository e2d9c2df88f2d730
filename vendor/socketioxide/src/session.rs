//! Choosing the id of a socket when it connects to a namespace, for connection state recovery.
//!
//! By default a socket's id is the id of its Engine.IO connection. A server implementing
//! [connection state recovery](https://socket.io/docs/v4/connection-state-recovery) (socket.io 4.6+) gives
//! a client that reconnects the id of its previous socket, and sends every new socket a private session id
//! (`pid`) the client presents on its next connection. A [`SessionResolver`], set with
//! [`SocketIoBuilder::session_resolver`](crate::SocketIoBuilder::session_resolver), makes both choices.
use std::sync::Arc;

use futures_core::future::BoxFuture;
use socketioxide_core::{Sid, Value};

/// A socket about to connect to a namespace, before its middlewares run.
#[derive(Debug)]
pub struct ConnectRequest<'a> {
    /// The path of the namespace.
    pub ns: &'a str,
    /// The Engine.IO connection's id: the socket's id unless the resolver chooses another.
    pub sid: Sid,
    /// The request the client opened its connection with.
    pub req_parts: &'a http::request::Parts,
    /// The raw auth payload of the client's CONNECT packet (a recovering client puts its `pid` in it).
    pub auth: Option<&'a Value>,
}

/// What a [`SessionResolver`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectSession {
    /// The id the socket gets: [`ConnectRequest::sid`] for a new socket, or a previous socket's id to restore
    /// it.
    ///
    /// If another socket of the namespace has this id, or is connecting with it, the socket gets
    /// [`ConnectRequest::sid`] and no `pid` instead: two sockets never share an id.
    pub sid: Sid,
    /// The private session id sent as `pid` beside `sid` in the CONNECT answer, for the client to present on
    /// its next connection. `None`: the answer has no `pid`.
    pub pid: Option<String>,
}

/// Called for every socket connecting to a namespace, before its middlewares, to choose the socket's id and
/// `pid`.
///
/// The socket is created when the returned future is done, and its connection cannot use the namespace
/// before: keep it short, and time out anything slow in it.
///
/// It is not called for clients of the protocol v4 (socket.io 2, with the `v4` feature): they derive the
/// socket's id from their Engine.IO connection's id and have no `pid`.
pub trait SessionResolver: Send + Sync + 'static {
    /// Chooses the id and `pid` of the socket `req` describes.
    fn resolve(&self, req: &ConnectRequest<'_>) -> BoxFuture<'static, ConnectSession>;
}

/// The resolver a [`SocketIoConfig`](crate::SocketIoConfig) holds, shared by its namespaces.
#[derive(Clone)]
pub(crate) struct SharedResolver(pub(crate) Arc<dyn SessionResolver>);

impl std::fmt::Debug for SharedResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionResolver(..)")
    }
}
