//! The Socket.IO side: handshake rules, the identity stored on each socket, and the room events.
//!
//! Generic over the adapter, so the same handlers run on one node (in-memory adapter) and in a cluster
//! (socketioxide-redis), where `socket.to(room).emit(..)` reaches the room on every node.

pub mod admission;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use socketioxide::{
    SocketIo,
    adapter::Adapter,
    extract::{AckSender, Extension, SocketRef, State, TryData},
    socket::DisconnectReason,
};

use crate::{
    cluster::protocol::{Member, Query, Reply, RoomCount},
    domain::validate::{self, Invalid},
    realtime::admission::{Admission, Refused},
    telemetry::metrics::{Metrics, Reason},
};

/// Who a socket is, stored in its extensions at handshake. `id_user` changes on `identity-change`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id_user: Arc<str>,
    pub room: Arc<str>,
}

/// What the socket handlers need to know about this node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: Arc<str>,
    /// Whether joins and leaves are announced to the room ([`crate::Config::presence_events`]).
    pub presence: bool,
    pub metrics: Arc<Metrics>,
    pub admission: Arc<Admission>,
}

/// Why a handshake was refused: the client sees the message in its `connect_error`.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Refused(#[from] Refused),
}

impl HandshakeError {
    fn kind(&self) -> &'static str {
        match self {
            Self::Invalid(e) => e.kind(),
            Self::Refused(e) => e.kind(),
        }
    }
}

/// `socket-connected`, `socket-disconnected`: who came or went.
#[derive(Debug, Serialize)]
struct Presence<'a> {
    id_socket: String,
    id_user: &'a str,
}

/// `identity-change`, relayed to the others in the room.
#[derive(Debug, Serialize)]
struct IdentityChanged<'a> {
    id_socket: String,
    id_user: &'a str,
    previous_id_user: &'a str,
}

/// What a client sends with `identity-change`: `{"id_user": "new"}` or just `"new"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum IdentityChange {
    Object { id_user: Value },
    Bare(Value),
}

impl Identity {
    /// Reads `id_user` and `room` from the handshake: the `auth` object first, then the query string.
    pub fn from_handshake(query: Option<&str>, auth: Option<&Value>) -> Result<Self, Invalid> {
        let id_user = field("id_user", query, auth)?;
        validate::id_user(&id_user)?;
        let room = field("room", query, auth)?;
        validate::room(&room)?;
        Ok(Self {
            id_user: id_user.into(),
            room: room.into(),
        })
    }
}

fn field(name: &'static str, query: Option<&str>, auth: Option<&Value>) -> Result<String, Invalid> {
    if let Some(v) = auth.and_then(|a| a.get(name)) {
        return match v {
            Value::String(s) => Ok(s.clone()),
            Value::Null => Err(Invalid::Missing(name)),
            _ => Err(Invalid::NotString(name)),
        };
    }
    let mut found = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k == name {
            if found.is_some() {
                return Err(Invalid::Repeated(name));
            }
            found = Some(v.into_owned());
        }
    }
    found.ok_or(Invalid::Missing(name))
}

/// Connect middleware: a refusal here reaches the client as `connect_error` with the error's text.
pub async fn handshake<A: Adapter>(
    socket: SocketRef<A>,
    TryData(auth): TryData<Value>,
    State(node): State<NodeInfo>,
) -> Result<(), HandshakeError> {
    let parts = socket.req_parts();
    let origin = parts
        .headers
        .get(axum::http::header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    let admitted = node.admission.admit(origin).map_err(HandshakeError::from);
    let identity = admitted.and_then(|slot| {
        let identity = Identity::from_handshake(parts.uri.query(), auth.ok().as_ref())?;
        Ok((slot, identity))
    });
    let (slot, identity) = identity.inspect_err(|e| {
        tracing::debug!(error = %e, "handshake refused");
        let reason = Reason { reason: e.kind() };
        node.metrics.handshakes_refused.get_or_create(&reason).inc();
    })?;
    // The slot goes with the socket: dropped with it, it frees its place under MAX_SOCKETS.
    socket.extensions.insert(Arc::new(slot));
    socket.extensions.insert(identity);
    Ok(())
}

pub async fn on_connect<A: Adapter>(
    socket: SocketRef<A>,
    State(node): State<NodeInfo>,
    Extension(me): Extension<Identity>,
) {
    socket.join(me.room.to_string());
    let _ = socket.emit(
        "handshake",
        &serde_json::json!({
            "node": &*node.id,
            "id_socket": socket.id.to_string(),
            "id_user": &*me.id_user,
            "room": &*me.room,
        }),
    );
    socket.on("identity-change", on_identity_change::<A>);
    if node.presence {
        let event = Presence {
            id_socket: socket.id.to_string(),
            id_user: &me.id_user,
        };
        relay(&socket, &me.room, "socket-connected", &event).await;
        socket.on_disconnect(on_disconnect::<A>);
    }
}

async fn on_identity_change<A: Adapter>(
    socket: SocketRef<A>,
    TryData(data): TryData<IdentityChange>,
    ack: AckSender<A>,
) {
    let new = match data {
        Ok(IdentityChange::Object {
            id_user: Value::String(s),
        })
        | Ok(IdentityChange::Bare(Value::String(s))) => s,
        _ => {
            let _ = ack
                .send(&serde_json::json!({ "error": Invalid::NotString("id_user").to_string() }));
            return;
        }
    };
    if let Err(e) = validate::id_user(&new) {
        let _ = ack.send(&serde_json::json!({ "error": e.to_string() }));
        return;
    }
    let Some(previous) = socket.extensions.get::<Identity>() else {
        return;
    };
    let updated = Identity {
        id_user: new.into(),
        room: previous.room.clone(),
    };
    socket.extensions.insert(updated.clone());
    let _ = ack.send(&serde_json::json!({ "ok": true, "id_user": &*updated.id_user }));
    let event = IdentityChanged {
        id_socket: socket.id.to_string(),
        id_user: &updated.id_user,
        previous_id_user: &previous.id_user,
    };
    relay(&socket, &updated.room, "identity-change", &event).await;
}

async fn on_disconnect<A: Adapter>(socket: SocketRef<A>, reason: DisconnectReason) {
    let Some(me) = socket.extensions.get::<Identity>() else {
        return;
    };
    tracing::debug!(id_socket = %socket.id, ?reason, "socket disconnected");
    let event = Presence {
        id_socket: socket.id.to_string(),
        id_user: &me.id_user,
    };
    relay(&socket, &me.room, "socket-disconnected", &event).await;
}

/// Emits `event` to the others in `room`, on every node. A failure (Redis away) is logged: the socket itself
/// stays connected, and room lists stay right because they are asked for, not pushed.
async fn relay<A: Adapter, T: Serialize>(socket: &SocketRef<A>, room: &str, event: &str, data: &T) {
    if let Err(e) = socket.to(room.to_owned()).emit(event, data).await {
        tracing::warn!(error = %e, event, "event could not be relayed to the room");
    }
}

/// This node's own sockets, as the cluster protocol and `/health` need them.
pub trait LocalRooms: Send + Sync + 'static {
    /// Answers `query` about this node's sockets of namespace `ns`.
    fn answer(&self, ns: &str, query: &Query) -> Reply;
    /// How many sockets are connected to this node.
    fn socket_count(&self) -> usize;
    /// Rooms with at least one socket on this node.
    fn room_count(&self) -> usize;
    /// Closes every local socket's transport: socket.io clients see `transport close` and reconnect on their
    /// own, to another node (a Socket.IO `disconnect` would tell them not to).
    fn close(&self) -> BoxFuture<'_, ()>;
}

impl<A: Adapter> LocalRooms for SocketIo<A> {
    fn answer(&self, ns: &str, query: &Query) -> Reply {
        let Some(ops) = self.of(ns) else {
            return Reply::empty(query);
        };
        match query {
            Query::Users { room } => Reply::Users {
                members: ops
                    .local()
                    .to(room.clone())
                    .sockets()
                    .into_iter()
                    .map(|s| Member {
                        id_user: s
                            .extensions
                            .get::<Identity>()
                            .map(|id| id.id_user.to_string()),
                        id_socket: s.id.to_string(),
                    })
                    .collect(),
            },
            Query::Rooms => {
                let mut rooms: std::collections::BTreeMap<String, u64> = Default::default();
                for s in ops.local().sockets() {
                    for room in s.rooms() {
                        if room != s.id.as_str() {
                            *rooms.entry(room.into_owned()).or_default() += 1;
                        }
                    }
                }
                Reply::Rooms {
                    rooms: rooms
                        .into_iter()
                        .map(|(room, sockets)| RoomCount { room, sockets })
                        .collect(),
                }
            }
            Query::Views => Reply::Views { count: 0 },
        }
    }

    fn socket_count(&self) -> usize {
        self.local().sockets().len()
    }

    fn room_count(&self) -> usize {
        let sockets = self.local().sockets();
        let rooms: std::collections::HashSet<_> = sockets
            .iter()
            .filter_map(|s| s.extensions.get::<Identity>().map(|id| id.room))
            .collect();
        rooms.len()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(SocketIo::close(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_query() {
        let id = Identity::from_handshake(
            Some("id_user=foo&room=Maths&EIO=4&transport=websocket"),
            None,
        )
        .unwrap();
        assert_eq!(&*id.id_user, "foo");
        assert_eq!(&*id.room, "Maths");
        let id = Identity::from_handshake(Some("id_user=a%20b&room=Caf%C3%A9"), None).unwrap();
        assert_eq!(&*id.id_user, "a b");
        assert_eq!(&*id.room, "Café");
    }

    #[test]
    fn auth_wins_over_query() {
        let auth = json!({"id_user": "fromauth", "room": "R1"});
        let id = Identity::from_handshake(Some("id_user=q&room=Q"), Some(&auth)).unwrap();
        assert_eq!(&*id.id_user, "fromauth");
        assert_eq!(&*id.room, "R1");
        // A field absent from auth falls back to the query.
        let auth = json!({"id_user": "a"});
        let id = Identity::from_handshake(Some("room=Q"), Some(&auth)).unwrap();
        assert_eq!(&*id.room, "Q");
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let err = |q: &str, auth: Option<Value>| {
            Identity::from_handshake(Some(q), auth.as_ref())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(err("room=Maths", None), "id_user is required");
        assert_eq!(err("id_user=foo", None), "room is required");
        assert_eq!(
            err("id_user=&room=Maths", None),
            "id_user must not be empty"
        );
        assert_eq!(
            err("id_user=a&id_user=b&room=M", None),
            "id_user is given more than once"
        );
        assert_eq!(
            err("room=M", Some(json!({"id_user": 42}))),
            "id_user must be a string"
        );
        assert_eq!(
            err("room=M", Some(json!({"id_user": null}))),
            "id_user is required"
        );
        assert_eq!(
            err(&format!("id_user={}&room=M", "x".repeat(129)), None),
            "id_user must be at most 128 characters"
        );
        assert_eq!(
            err("id_user=a%07&room=M", None),
            "id_user contains a character that is not allowed"
        );
        assert_eq!(
            err("id_user=a&room=health", None),
            "room name 'health' is reserved"
        );
        assert_eq!(
            err("id_user=a&room=a%2Fb", None),
            "room contains a character that is not allowed"
        );
    }

    #[test]
    fn identity_change_payloads() {
        let p: IdentityChange = serde_json::from_value(json!({"id_user": "x"})).unwrap();
        assert!(matches!(p, IdentityChange::Object { id_user: Value::String(s) } if s == "x"));
        let p: IdentityChange = serde_json::from_value(json!("y")).unwrap();
        assert!(matches!(p, IdentityChange::Bare(Value::String(s)) if s == "y"));
    }
}
