//! The interface between Socket.IO clients and the event-bus gateway ([`crate::gateway`], which implements
//! [`Bus`]): a socket of a `gateway = true` namespace opens, sends messages, and closes through it, and gets
//! [`Outgoing`] frames back. Defined here so that the socket handlers need not know the gateway.

use std::{collections::BTreeMap, sync::Arc};

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
    pub sink: mpsc::Sender<Outgoing>,
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

/// Frames waiting for one Socket.IO client of the gateway; beyond it, new ones are dropped for it.
const SOCKET_QUEUE: usize = 256;

/// A socket of a `gateway = true` namespace connected: it is opened on the bus, and what the bus sends it becomes
/// events (`type` as the name, `payload` as the argument); a failed `onconnect` is an `error` event, then a
/// disconnection. `verified`: the namespace's auth verifies identities (not `claim` or `none`).
pub async fn opened<A: socketioxide::adapter::Adapter>(
    socket: &socketioxide::extract::SocketRef<A>,
    bus: &Arc<dyn Bus>,
    me: &Identity,
    verified: bool,
) {
    let (sink, mut queue) = mpsc::channel(SOCKET_QUEUE);
    let client = Client {
        socket: socket.id.to_string(),
        namespace: socket.ns().to_owned(),
        username: me.id_user.as_deref().unwrap_or_default().to_owned(),
        // Only a verified token's claims: a claimed identity is no token, and is not made to look like one.
        claims: me.claims.clone().unwrap_or_default(),
        verified,
        params: Arc::new(params(socket.req_parts().uri.query(), socket.ns())),
        sink,
    };
    let socket_ = socket.clone();
    tokio::spawn(async move {
        while let Some(out) = queue.recv().await {
            match out {
                Outgoing::Frame(frame) => {
                    let _ = socket_.emit(frame.kind, &frame.payload);
                }
                Outgoing::Close(error) => {
                    let _ = socket_.emit("error", &error);
                    let _ = socket_.disconnect();
                    return;
                }
            }
        }
    });
    bus.open(client).await;
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
