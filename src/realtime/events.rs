//! What client events do, per namespace:
//!
//! * `identity-change` (`claim` namespaces): a new `id_user`, relayed to the handshake room.
//! * `session_id` (`claim` namespaces with `session` rooms): joins `session.{id}`.
//! * `__count__` (`views = true`): answered to the asker with the number of view sockets of the namespace on
//!   every node; views joining and non-controllers leaving are announced with `__connect__` and
//!   `__disconnect__ {id}`.
//! * any other event: relayed with its arguments to every socket of the namespace on every node, the sender
//!   included, when `forward = true`; ignored otherwise. The names of the server's own events
//!   ([`SERVER_EVENTS`]) are never relayed, so a client cannot forge them.
//!
//! Every event counts against the socket's rate (`SOCKET_EVENT_RATE`); beyond it the socket gets
//! `rate_limited` with the reason and is disconnected.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use socketioxide::{
    SocketIo,
    adapter::Adapter,
    extract::{AckSender, Event, SocketRef, State, TryData},
    socket::DisconnectReason,
};

use super::{
    admission::Seat,
    args::Relayed,
    auth::checked_session,
    bus::Frame,
    identity::{Identity, Role, check_room, session_room, user_room},
    namespaces::Namespace,
    node::NodeInfo,
    observe::Observed,
    recover::Recoverable,
    reliable, rpc,
};
use crate::{
    cluster::protocol::{Query, Reply},
    config::file::RoomSource,
    domain::validate::{self, Invalid},
};

/// Event names the server itself sends: never forwarded from a client, so no client can forge them. The gateway's
/// reply names come on top ([`NodeInfo::gateway_events`]).
pub use crate::domain::validate::SERVER_EVENTS;

/// Whether `event` is a name the server sends on its own.
fn is_server_event(node: &NodeInfo, event: &str) -> bool {
    SERVER_EVENTS.contains(&event) || node.gateway_events.iter().any(|e| e == event)
}

/// A socket's event rate, in its extensions.
struct EventRate {
    limiter: governor::DefaultDirectRateLimiter,
    /// Set once the socket went over: it is being disconnected, later events are dropped silently.
    over: std::sync::atomic::AtomicBool,
}

/// `socket-connected`, `socket-disconnected`: who came or went.
#[derive(Debug, Serialize)]
pub struct Presence<'a> {
    pub id_socket: String,
    pub id_user: Option<&'a str>,
}

/// `identity-change`, relayed to the others in the room.
#[derive(Debug, Serialize)]
struct IdentityChanged<'a> {
    id_socket: String,
    id_user: &'a str,
    previous_id_user: Option<&'a str>,
}

/// What a client sends with `identity-change` (`{"id_user": "new"}` or `"new"`) or `session_id`
/// (`{"session_id": "s"}` or `"s"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum NewValue {
    User { id_user: Value },
    Session { session_id: Value },
    Bare(Value),
}

impl NewValue {
    fn string(self) -> Option<String> {
        match self {
            Self::User { id_user: v } | Self::Session { session_id: v } | Self::Bare(v) => {
                match v {
                    Value::String(s) => Some(s),
                    _ => None,
                }
            }
        }
    }
}

/// Sets up the socket's event handlers for its namespace. Called by the handshake middleware once the socket is
/// admitted, before socketioxide writes the CONNECT answer: set by the connect handler, which socketioxide runs
/// after writing it, they could come after an event the client sent the moment it had its answer, read meanwhile
/// on another worker thread, and that event was dropped. What an event does may depend on the connect handler's
/// bookkeeping (the socket counted in by webhooks and the admin UI), so each async handler first waits for it
/// ([`Greeted`]).
pub fn listen<A: Adapter>(socket: &SocketRef<A>, node: &NodeInfo, ns: &Namespace, me: &Identity) {
    socket.extensions.insert(Arc::new(Greeted::default()));
    if let Some(quota) = &node.event_rate {
        socket.extensions.insert(Arc::new(EventRate {
            limiter: quota.limiter(),
            over: Default::default(),
        }));
    }
    if ns.verifier.is_claim() {
        socket.on("identity-change", on_identity_change::<A>);
        if ns.joins(RoomSource::Session) {
            socket.on("session_id", on_session_id::<A>);
        }
    } else {
        // Verified identities cannot be changed by the client: say so rather than leave its ack waiting.
        socket.on(
            "identity-change",
            refuse::<A>("id_user cannot be changed in this namespace"),
        );
        if ns.joins(RoomSource::Session) {
            socket.on(
                "session_id",
                refuse::<A>("the session comes from the token in this namespace"),
            );
        }
    }
    if ns.views && me.role == Role::Controller {
        socket.on("__count__", on_count::<A>);
    }
    rpc::attach(socket, ns);
    socket.on_fallback(on_other::<A>);
}

/// Sets up what the socket's departure does; by the connect handler, once the socket is in its namespace and counted
/// in (so a departure is counted out after it was counted in).
pub fn on_departure<A: Adapter>(socket: &SocketRef<A>) {
    socket.extensions.insert(Arc::new(Departure::default()));
    socket.on_disconnect(on_disconnect::<A>);
}

/// Opened by the connect handler once it has counted the socket in and greeted it: until then its events wait.
#[derive(Debug, Default)]
pub struct Greeted {
    open: std::sync::atomic::AtomicBool,
    opened: tokio::sync::Notify,
}

impl Greeted {
    pub fn open(&self) {
        self.open.store(true, std::sync::atomic::Ordering::Release);
        self.opened.notify_waiters();
    }

    async fn wait(&self) {
        if self.open.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let opened = self.opened.notified();
        let mut opened = std::pin::pin!(opened);
        // Registered before the flag is read: an `open` in between still wakes us.
        opened.as_mut().enable();
        if !self.open.load(std::sync::atomic::Ordering::Acquire) {
            opened.await;
        }
    }
}

/// Opens the socket's [`Greeted`] when dropped: the connect handler opens it at the latest when it returns.
pub struct OpenOnDrop(Option<Arc<Greeted>>);

impl OpenOnDrop {
    pub fn of<A: Adapter>(socket: &SocketRef<A>) -> Self {
        Self(socket.extensions.get::<Arc<Greeted>>())
    }
}

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        if let Some(greeted) = &self.0 {
            greeted.open();
        }
    }
}

/// Waits until the connect handler has greeted the socket (at once, nearly always).
async fn greeted<A: Adapter>(socket: &SocketRef<A>) {
    if let Some(greeted) = socket.extensions.get::<Arc<Greeted>>() {
        greeted.wait().await;
    }
}

/// Whether a socket's departure was handled. socketioxide calls a disconnect handler only if it was set before the
/// socket closed, and a client may leave while its connect handler still runs: then that handler handles the
/// departure itself ([`left_while_connecting`]). Whichever comes first does it, once.
#[derive(Default)]
pub struct Departure(std::sync::atomic::AtomicBool);

impl Departure {
    /// True the first time only.
    fn first<A: Adapter>(socket: &SocketRef<A>) -> bool {
        socket
            .extensions
            .get::<Arc<Departure>>()
            .is_none_or(|d| !d.0.swap(true, std::sync::atomic::Ordering::SeqCst))
    }
}

/// For a socket found closed at the end of its connect handler: what its disconnect handler would have done
/// (its rooms, users and sessions counted out, its namespace removed if dynamic and empty), unless it ran.
pub async fn left_while_connecting<A: Adapter>(
    socket: &SocketRef<A>,
    io: SocketIo<A>,
    node: NodeInfo,
    me: &Identity,
) {
    // The true reason is not known any more: the transport went away, as when a client closes its connection.
    disconnected(socket, &io, &node, me, DisconnectReason::TransportClose).await;
    forget_namespace_when_gone(io, node, socket);
}

/// A handler that answers every call with `{"error": why}` (and counts against the rate).
fn refuse<A: Adapter>(
    why: &'static str,
) -> impl Fn(SocketRef<A>, State<NodeInfo>, AckSender<A>) -> std::future::Ready<()>
+ Clone
+ Send
+ Sync
+ 'static {
    move |socket, State(node), ack| {
        if within_rate(&socket, &node) {
            let _ = ack.send(&serde_json::json!({ "error": why }));
        }
        std::future::ready(())
    }
}

/// Takes one event from the socket's rate; beyond it, tells the socket why and disconnects it.
fn within_rate<A: Adapter>(socket: &SocketRef<A>, node: &NodeInfo) -> bool {
    let Some(rate) = socket.extensions.get::<Arc<EventRate>>() else {
        return true;
    };
    if rate.limiter.check().is_ok() {
        return true;
    }
    if rate.over.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    let per_second = node.event_rate.as_ref().map_or(0, |q| q.events());
    tracing::warn!(id_socket = %socket.id, ns = socket.ns(), "socket over its event rate, disconnected");
    node.metrics.sockets_rate_limited.inc();
    let _ = socket.emit(
        "rate_limited",
        &serde_json::json!({
            "error": format!("too many events: at most {per_second} per second; disconnecting")
        }),
    );
    let _ = socket.clone().disconnect();
    false
}

/// Parses a one-string payload (`identity-change`, `session_id`), or says why not through the ack.
fn new_value<A: Adapter>(
    data: Result<NewValue, impl std::fmt::Display>,
    field: &'static str,
    ack: AckSender<A>,
) -> Option<(String, AckSender<A>)> {
    match data.ok().and_then(NewValue::string) {
        Some(value) => Some((value, ack)),
        None => {
            let _ =
                ack.send(&serde_json::json!({ "error": Invalid::NotString(field).to_string() }));
            None
        }
    }
}

async fn on_identity_change<A: Adapter>(
    socket: SocketRef<A>,
    State(node): State<NodeInfo>,
    TryData(data): TryData<NewValue>,
    ack: AckSender<A>,
) {
    greeted(&socket).await;
    if !within_rate(&socket, &node) {
        return;
    }
    let Some((new, ack)) = new_value(data, "id_user", ack) else {
        return;
    };
    if let Err(e) = validate::id_user(&new) {
        let _ = ack.send(&serde_json::json!({ "error": e.to_string() }));
        return;
    }
    let (Some(previous), Some(ns)) = (
        socket.extensions.get::<Arc<Identity>>(),
        node.namespaces.find(socket.ns()),
    ) else {
        return;
    };
    let updated = Identity {
        id_user: Some(new.into()),
        ..(*previous).clone()
    };
    if let Err(e) = updated.check_derived(&ns.rooms) {
        let _ = ack.send(&serde_json::json!({ "error": e.to_string() }));
        return;
    }
    let id_user = updated.id_user.as_deref().unwrap_or_default();
    node.observer
        .received(&socket, "identity-change", &[Value::from(id_user)]);
    let switch = ns.joins(RoomSource::User).then(|| RoomSwitch {
        old: previous.id_user.as_deref().map(user_room),
        new: user_room(id_user),
    });
    let reply = serde_json::json!({ "ok": true, "id_user": id_user });
    switch_room(&socket, &node, updated.clone(), switch, ack, &reply).await;
    if let Some(room) = &updated.room {
        let event = IdentityChanged {
            id_socket: socket.id.to_string(),
            id_user,
            previous_id_user: previous.id_user.as_deref(),
        };
        relay(&socket, room, "identity-change", &event).await;
    }
}

/// `session_id`: the socket joins `session.{id}`, leaving its previous session room.
async fn on_session_id<A: Adapter>(
    socket: SocketRef<A>,
    State(node): State<NodeInfo>,
    TryData(data): TryData<NewValue>,
    ack: AckSender<A>,
) {
    greeted(&socket).await;
    if !within_rate(&socket, &node) {
        return;
    }
    let Some((new, ack)) = new_value(data, "session_id", ack) else {
        return;
    };
    let Some(previous) = socket.extensions.get::<Arc<Identity>>() else {
        return;
    };
    let room = match checked_session(new.clone()).map(|s| session_room(&s)) {
        Ok(room) => room,
        Err(e) => {
            let _ = ack.send(&serde_json::json!({ "error": e.to_string() }));
            return;
        }
    };
    if let Err(e) = check_room("session_id", &room) {
        let _ = ack.send(&serde_json::json!({ "error": e.to_string() }));
        return;
    }
    node.observer
        .received(&socket, "session_id", &[Value::String(new.clone())]);
    let updated = Identity {
        session: Some(new.into()),
        ..(*previous).clone()
    };
    let switch = RoomSwitch {
        old: previous.session.as_deref().map(session_room),
        new: room.clone(),
    };
    let reply = serde_json::json!({ "ok": true, "room": room });
    switch_room(&socket, &node, updated, Some(switch), ack, &reply).await;
}

/// A socket's user or session room changing: the room it leaves (none the first time) and the one it joins.
struct RoomSwitch {
    old: Option<String>,
    new: String,
}

/// The common end of `identity-change` and `session_id`: the socket leaves its old room and joins the new one
/// (when the namespace has such rooms), keeps its updated identity, gets `reply` as its ack, then its reliable
/// user rooms follow (the old one let go, the new one held with its `batch`).
async fn switch_room<A: Adapter>(
    socket: &SocketRef<A>,
    node: &NodeInfo,
    updated: Identity,
    switch: Option<RoomSwitch>,
    ack: AckSender<A>,
    reply: &Value,
) {
    if let Some(RoomSwitch { old, new }) = &switch {
        if let Some(old) = old {
            socket.leave(old.clone());
            node.observer.left(socket, old);
        }
        socket.join(new.clone());
        node.observer.joined(socket, std::slice::from_ref(new));
        if let Some(tracker) = node.webhooks.get() {
            let id = socket.id.to_string();
            if let Some(old) = old {
                tracker.moved(&id, false, std::slice::from_ref(old));
            }
            tracker.moved(&id, true, std::slice::from_ref(new));
        }
    }
    node.directory
        .update(socket.ns(), socket.id, updated.id_user.clone());
    socket.extensions.insert(Arc::new(updated));
    Recoverable::rooms_changed(socket);
    let _ = ack.send(reply);
    if let Some(RoomSwitch { old, new }) = switch {
        reliable::moved(socket, node, old, new).await;
    }
}

/// `__count__` from a controller: the number of view sockets of the namespace, cluster-wide, to it alone.
async fn on_count<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
    State(node): State<NodeInfo>,
    ack: AckSender<A>,
) {
    greeted(&socket).await;
    if !within_rate(&socket, &node) {
        return;
    }
    let answer = node.ask(&io, socket.ns(), Query::Views).await;
    let count: u64 = answer
        .nodes
        .iter()
        .map(|(_, r)| match r {
            Reply::Views { count } => *count,
            _ => 0,
        })
        .sum();
    if socket.emit("__count__", &count).is_ok() {
        node.observer.sent(&socket, "__count__", &count);
    }
    let _ = ack.send(&count);
}

/// Any other event: sent to the RPC backend when its namespace names it in `rpc_events` (and nowhere else), else
/// relayed to the whole namespace when it forwards, else ignored.
async fn on_other<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
    State(node): State<NodeInfo>,
    Event(event): Event,
    TryData(relayed): TryData<Relayed>,
    ack: AckSender<A>,
) {
    greeted(&socket).await;
    if !within_rate(&socket, &node) {
        return;
    }
    // JSON for what only takes JSON; binary arguments are only forwarded.
    let args = relayed.as_ref().ok().and_then(Relayed::to_json);
    if let Some(args) = &args {
        node.observer.received(&socket, &event, &args.0);
    }
    let namespace = node.namespaces.find(socket.ns());
    if let Some(ns) = namespace
        && !is_server_event(&node, &event)
        && rpc::call(&socket, &node, ns, &event, relayed.as_ref().ok(), ack).await
    {
        return;
    }
    if namespace.is_some_and(|ns| ns.gateway)
        && let (Some(bus), Some(args)) = (node.bus.get(), &args)
        && !is_server_event(&node, &event)
    {
        let payload = args.0.first().cloned().unwrap_or_default();
        let frame = Frame {
            kind: event.clone(),
            payload,
        };
        bus.message(socket.ns(), &socket.id.to_string(), frame)
            .await;
    }
    let forwards = node
        .namespaces
        .find(socket.ns())
        .is_some_and(|ns| ns.forward);
    if !forwards {
        tracing::trace!(event, "event ignored: the namespace does not forward");
        return;
    }
    if is_server_event(&node, &event) {
        tracing::debug!(event, id_socket = %socket.id, "a client sent a server event name: not forwarded");
        return;
    }
    match relayed {
        Ok(relayed) => to_namespace(&io, socket.ns(), &event, &relayed).await,
        Err(e) => {
            tracing::debug!(event, error = %e, "event with unreadable arguments not forwarded")
        }
    }
}

async fn on_disconnect<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
    State(node): State<NodeInfo>,
    reason: DisconnectReason,
) {
    // The namespace is left: its place on the connection is free now, for the client's next namespace, not only
    // once the socket is dropped (after the Redis work below, and after socketioxide takes it out). A handshake
    // that came first waits for this (`Admission::seat`).
    drop(socket.extensions.remove::<Arc<Seat>>());
    if let Some(me) = socket.extensions.get::<Arc<Identity>>() {
        disconnected(&socket, &io, &node, &me, reason).await;
    }
    forget_namespace_when_gone(io, node, &socket);
}

/// Once socketioxide has taken `socket` out of its dynamic namespace (it does so after the disconnect handler
/// returns), removes the namespace if nothing else is in it. A namespace is removed only without sockets: removing
/// one with sockets would not let go of its adapter at once.
pub fn forget_namespace_when_gone<A: Adapter>(
    io: SocketIo<A>,
    node: NodeInfo,
    socket: &SocketRef<A>,
) {
    if !node.is_dynamic(socket.ns()) {
        return;
    }
    let (ns, id) = (socket.ns().to_owned(), socket.id);
    tokio::spawn(async move {
        for _ in 0..100 {
            let gone = io
                .of(&ns)
                .is_none_or(|ops| ops.local().get_socket(id).is_none());
            if gone {
                node.forget_if_unused(&io, &ns);
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    });
}

async fn disconnected<A: Adapter>(
    socket: &SocketRef<A>,
    io: &SocketIo<A>,
    node: &NodeInfo,
    me: &Identity,
    reason: DisconnectReason,
) {
    if !Departure::first(socket) {
        return;
    }
    tracing::debug!(id_socket = %socket.id, ?reason, "socket disconnected");
    if let Some(tracker) = node.webhooks.get() {
        tracker.disconnected(&socket.id.to_string());
    }
    Recoverable::disconnected(socket, reason).await;
    if let Some(bus) = node.bus.get()
        && node
            .namespaces
            .find(socket.ns())
            .is_some_and(|ns| ns.gateway)
    {
        bus.close(socket.ns(), &socket.id.to_string(), reason.to_string())
            .await;
    }
    node.observer.report(|| Observed::Disconnected {
        nsp: socket.ns().to_owned(),
        id: socket.id.to_string(),
        reason: reason.to_string(),
    });
    reliable::disconnected(socket, node).await;
    if node.presence
        && let Some(room) = &me.room
    {
        let event = Presence {
            id_socket: socket.id.to_string(),
            id_user: me.id_user.as_deref(),
        };
        relay(socket, room, "socket-disconnected", &event).await;
    }
    let views = node.namespaces.find(socket.ns()).is_some_and(|ns| ns.views);
    if views && me.role != Role::Controller {
        let id = serde_json::json!({ "id": socket.id.to_string() });
        to_namespace(io, socket.ns(), "__disconnect__", &id).await;
    }
}

/// Emits `event` to the others in `room`, on every node. A failure (Redis away) is logged: the socket itself
/// stays connected, and room lists stay right because they are asked for, not pushed.
pub async fn relay<A: Adapter, T: Serialize>(
    socket: &SocketRef<A>,
    room: &str,
    event: &str,
    data: &T,
) {
    if let Err(e) = socket.to(room.to_owned()).emit(event, data).await {
        tracing::warn!(error = %e, event, "event could not be relayed to the room");
    }
}

/// Emits `event` to every socket of namespace `ns` on every node.
pub async fn to_namespace<A: Adapter, T: Serialize + ?Sized>(
    io: &SocketIo<A>,
    ns: &str,
    event: &str,
    data: &T,
) {
    let Some(ops) = io.of(ns) else { return };
    if let Err(e) = ops.emit(event, data).await {
        tracing::warn!(error = %e, event, ns, "event could not be sent to the namespace");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn events_wait_until_the_socket_is_greeted() {
        let greeted = Arc::new(Greeted::default());
        let waiting = tokio::spawn({
            let greeted = greeted.clone();
            async move { greeted.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "an event waits while the socket is not greeted"
        );
        drop(OpenOnDrop(Some(greeted.clone())));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("opening wakes a waiting event")
            .unwrap();
        // Once open, later events do not wait at all.
        let later = std::pin::pin!(greeted.wait());
        assert!(futures_util::poll!(later).is_ready());
    }

    #[test]
    fn new_values() {
        let v: NewValue = serde_json::from_value(json!({"id_user": "x"})).unwrap();
        assert_eq!(v.string().as_deref(), Some("x"));
        let v: NewValue = serde_json::from_value(json!({"session_id": "s"})).unwrap();
        assert_eq!(v.string().as_deref(), Some("s"));
        let v: NewValue = serde_json::from_value(json!("y")).unwrap();
        assert_eq!(v.string().as_deref(), Some("y"));
        let v: NewValue = serde_json::from_value(json!(42)).unwrap();
        assert_eq!(v.string(), None);
    }
}
