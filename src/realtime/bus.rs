//! The interface between Socket.IO clients and the event-bus gateway ([`crate::gateway`], which implements
//! [`Bus`]): a socket of a `gateway = true` namespace opens, sends messages, and closes through it, and gets
//! [`Outgoing`] frames back. Defined here so that the socket handlers need not know the gateway.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::identity::Identity;

/// A message between a client and the gateway, both ways: `{"type": ..., "payload": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub payload: Value,
}

/// What the gateway sends a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    Frame(Frame),
    /// Close the connection, saying why: the backend's failure of `onconnect`.
    Close(Value),
}

/// One connected client (plain WebSocket or Socket.IO), known by its namespace and socket id together: one
/// Socket.IO connection multiplexing namespaces has one socket id in each.
#[derive(Debug)]
pub struct Client {
    /// Its socket id (a Socket.IO sid, or a UUID for plain WebSockets).
    pub socket: String,
    pub namespace: String,
    pub username: String,
    /// The token's claims (`context.headers.jwt`); empty when no token was verified.
    pub claims: Arc<Map<String, Value>>,
    /// Whether the identity was verified (a token, a password, the auth webhook), not only claimed.
    pub verified: bool,
    /// The query parameters it connected with ([`params`]): the envelopes' `context.params`.
    pub params: Arc<BTreeMap<String, String>>,
    pub sink: Box<dyn Sink>,
}

/// Where a client's frames go. Called by the task that has the frame (the one that read a `send` entry, a
/// broadcast, a reply), without waiting: a client is written to by its sender, not through a task of its own, so
/// that a broadcast to N clients is not N task wake-ups on top of N writes.
pub trait Sink: Send + Sync + std::fmt::Debug {
    fn deliver(&self, out: Outgoing) -> Delivery;
}

/// What became of a frame handed to a [`Sink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written, or queued behind what the client has not taken yet.
    Taken,
    /// The client is not reading and its queue is full: the frame is dropped.
    Full,
    /// The client is gone or closing.
    Closed,
}

/// A queue's sending end as a sink (tests; a client served by a task of its own).
impl Sink for mpsc::Sender<Outgoing> {
    fn deliver(&self, out: Outgoing) -> Delivery {
        match self.try_send(out) {
            Ok(()) => Delivery::Taken,
            Err(mpsc::error::TrySendError::Full(_)) => Delivery::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Closed,
        }
    }
}

/// Query parameters that are not the application's: Engine.IO's own, and credentials (a token in the query is
/// verified, its claims are in the envelope; the token itself is not copied into the backend's streams).
const NOT_PARAMS: [&str; 8] = [
    "EIO",
    "transport",
    "t",
    "sid",
    "b64",
    "j",
    "token",
    "password",
];

/// The query parameters a client connected with, as it sent them (the event-bus service's handlers read
/// `context.params.namespace`: `?namespace=alex` is `"alex"`). A client that named no `namespace` parameter (a
/// Socket.IO client connects to the namespace by its path) gets its namespace's name without the leading `/`, what
/// it would have sent. The first of a repeated name counts.
pub fn params(query: Option<&str>, namespace: &str) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if !NOT_PARAMS.contains(&k.as_ref()) {
            params
                .entry(k.into_owned())
                .or_insert_with(|| v.into_owned());
        }
    }
    params
        .entry("namespace".to_owned())
        .or_insert_with(|| namespace.trim_start_matches('/').to_owned());
    params
}

/// The gateway, as the socket handlers see it.
pub trait Bus: Send + Sync + 'static {
    /// A client connected: it is registered, then `onconnect` is published.
    fn open(&self, client: Client) -> BoxFuture<'_, ()>;
    /// A message from `socket` in `namespace`.
    fn message<'a>(
        &'a self,
        namespace: &'a str,
        socket: &'a str,
        frame: Frame,
    ) -> BoxFuture<'a, ()>;
    /// An event for the application's backend from another server (the socket.io Redis emitter's
    /// `serverSideEmit`), published like a client message of type `event` from no socket, `args` as its payload.
    /// Whether it was published (`false` without an `onmessage` stream, or when Redis refused it).
    fn server_side_emit<'a>(
        &'a self,
        namespace: &'a str,
        event: &'a str,
        args: Vec<Value>,
    ) -> BoxFuture<'a, bool>;
    /// `socket` left `namespace`: `onclose` is published.
    fn close<'a>(
        &'a self,
        namespace: &'a str,
        socket: &'a str,
        reason: String,
    ) -> BoxFuture<'a, ()>;
}

/// A socket of a `gateway = true` namespace connected: it is opened on the bus, and what the bus sends it becomes
/// events (`type` as the name, `payload` as the argument), emitted by the sender; a failed `onconnect` is an `error`
/// event, then a disconnection. `verified`: the namespace's auth verifies identities (not `claim` or `none`).
pub async fn opened<A: socketioxide::adapter::Adapter>(
    socket: &socketioxide::extract::SocketRef<A>,
    bus: &Arc<dyn Bus>,
    me: &Identity,
    verified: bool,
) {
    let client = Client {
        socket: socket.id.to_string(),
        namespace: socket.ns().to_owned(),
        username: me.id_user.as_deref().unwrap_or_default().to_owned(),
        // Only a verified token's claims: a claimed identity is no token, and is not made to look like one.
        claims: me.claims.clone().unwrap_or_default(),
        verified,
        params: Arc::new(params(socket.req_parts().uri.query(), socket.ns())),
        sink: Box::new(SocketSink {
            socket: socket.clone(),
            closing: AtomicBool::new(false),
        }),
    };
    bus.open(client).await;
}

/// A Socket.IO socket as a [`Sink`]: frames are emitted at once (the engine queues what the websocket cannot take
/// yet, up to its buffer, then refuses).
struct SocketSink<A: socketioxide::adapter::Adapter> {
    socket: socketioxide::extract::SocketRef<A>,
    /// Set by the first `Close`: nothing is emitted after it.
    closing: AtomicBool,
}

impl<A: socketioxide::adapter::Adapter> std::fmt::Debug for SocketSink<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketSink")
            .field("socket", &self.socket.id)
            .finish()
    }
}

impl<A: socketioxide::adapter::Adapter> Sink for SocketSink<A> {
    fn deliver(&self, out: Outgoing) -> Delivery {
        use socketioxide::{SendError, SocketError};
        if self.closing.load(Ordering::Acquire) {
            return Delivery::Closed;
        }
        match out {
            Outgoing::Frame(frame) => match self.socket.emit(frame.kind, &frame.payload) {
                Ok(()) => Delivery::Taken,
                Err(SendError::Socket(SocketError::InternalChannelFull)) => Delivery::Full,
                Err(_) => Delivery::Closed,
            },
            Outgoing::Close(error) => {
                if self.closing.swap(true, Ordering::AcqRel) {
                    return Delivery::Closed;
                }
                let _ = self.socket.emit("error", &error);
                // Not from the sender's task: a disconnection runs the socket's handlers, which call the bus.
                let socket = self.socket.clone();
                tokio::spawn(async move {
                    let _ = socket.disconnect();
                });
                Delivery::Taken
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_the_query_as_sent_without_engine_io_and_credentials() {
        let got = params(
            Some("namespace=alex&room=a%20b&EIO=4&transport=websocket&t=x&token=secret&room=c"),
            "/alex",
        );
        let want: BTreeMap<String, String> = [("namespace", "alex"), ("room", "a b")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        assert_eq!(got, want);
        // A Socket.IO client names its namespace by its path: the name it would have sent.
        let got = params(Some("EIO=4&transport=polling&id_user=u1"), "/alex");
        assert_eq!(got.get("namespace").map(String::as_str), Some("alex"));
        assert_eq!(got.get("id_user").map(String::as_str), Some("u1"));
        assert_eq!(
            params(None, "/").get("namespace").map(String::as_str),
            Some("")
        );
    }
}
