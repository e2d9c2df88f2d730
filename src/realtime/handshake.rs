//! The Socket.IO handshake: who may connect to a namespace, who they are, and which rooms they land in.
//!
//! The connect middleware ([`handshake`]) admits the socket (origin, socket cap), verifies it with the
//! namespace's auth kind, and stores an [`Identity`] in its extensions; a refusal reaches the client as
//! `connect_error` with the error's text. The connect handler ([`on_connect`]) joins the rooms, greets the
//! client with a `handshake` event and sets up the event handlers. [`register`] gives socketioxide every namespace
//! of the config file with these two.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use socketioxide::{
    SocketIo,
    adapter::Adapter,
    extract::{Extension, SocketRef, State, TryData},
    handler::ConnectHandler,
    socket::Sid,
};
use socketioxide_core::adapter::DefinedAdapter;

use super::{
    admission::{Refused, Seat, Slot},
    args::Args,
    auth::{AuthError, Handshake, Verified, Verifier, checked_session},
    bus, events,
    identity::{BadRoomName, Identity, Role, SESSION_ROOM, USER_ROOM, session_room, user_room},
    namespaces::{Namespace, Namespaces},
    node::{Entered, NodeInfo},
    observe,
    recover::{Recoverable, Restored},
    reliable,
};
use crate::{
    config::file::{NamePattern, RoomSource},
    domain::validate::{self, Invalid},
    telemetry::metrics::Reason,
};

/// Why a handshake was refused: the client sees the message in its `connect_error`.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    RoomName(#[from] BadRoomName),
    #[error("type must be \"controller\" or \"view\"")]
    BadType,
    #[error("namespace not served")]
    UnknownNamespace,
    #[error("namespace reset while connecting: retry")]
    Retry,
    /// A verified client named someone else's user, session or reliable room as its handshake room.
    #[error("room {0} is private")]
    PrivateRoom(Arc<str>),
    /// A client of an `auth = "webhook"` namespace named a room the auth service did not give it.
    #[error("room {0} was not granted by the auth service")]
    NotGranted(Arc<str>),
}

impl HandshakeError {
    fn kind(&self) -> &'static str {
        match self {
            Self::Invalid(e) => e.kind(),
            Self::Refused(e) => e.kind(),
            Self::Auth(e) => e.kind(),
            Self::RoomName(..) => "room_name",
            Self::BadType => "bad_type",
            Self::UnknownNamespace => "namespace",
            Self::Retry => "retry",
            Self::PrivateRoom(_) | Self::NotGranted(_) => "private_room",
        }
    }
}

/// Checks the handshake room of a client whose identity the namespace verified: it may not be another identity's
/// private room (a user room `user.{id}`, a session room `session.{id}`, a reliable room starting with
/// `user_room_prefix`), or its owner's pushes and pending messages would go to whoever names it. With an auth
/// webhook, it must be a room the webhook granted. Claimed identities (`claim`, `none`) prove nothing, so there
/// is nothing to protect from them.
pub fn check_handshake_room(ns: &Namespace, identity: &Identity) -> Result<(), HandshakeError> {
    let Some(room) = &identity.room else {
        return Ok(());
    };
    if !ns.verifier.verifies_identity() {
        return Ok(());
    }
    let own = |r: &str| {
        identity.auth_rooms.iter().any(|g| g == r)
            || identity.id_user.as_deref().is_some_and(|u| {
                r == user_room(u)
                    || ns
                        .reliable
                        .as_ref()
                        .is_some_and(|rel| r == format!("{}{u}", rel.prefix))
            })
            || identity
                .session
                .as_deref()
                .is_some_and(|s| r == session_room(s))
    };
    if own(room) {
        return Ok(());
    }
    let private = room.starts_with(USER_ROOM)
        || room.starts_with(SESSION_ROOM)
        || ns.reliable.as_ref().is_some_and(|r| r.is_user_room(room));
    if private {
        return Err(HandshakeError::PrivateRoom(room.clone()));
    }
    if ns.verifier.is_webhook() {
        return Err(HandshakeError::NotGranted(room.clone()));
    }
    Ok(())
}

/// Registers every namespace with socketioxide. Returns the adapters' init results of the exact ones (in a
/// cluster, futures to await: they subscribe to Redis); dynamic children are initialised when first used.
pub fn register<A: Adapter + DefinedAdapter>(
    namespaces: &Namespaces,
    io: &SocketIo<A>,
) -> Result<Vec<A::InitRes>, String> {
    let mut inits = Vec::new();
    for ns in namespaces.iter() {
        match &ns.pattern {
            NamePattern::Exact(name) => {
                inits.push(io.ns(name.clone(), on_connect::<A>.with(handshake::<A>)))
            }
            NamePattern::Prefix(prefix) => io
                .dyn_ns(
                    format!("{prefix}{{*rest}}"),
                    on_connect::<A>.with(handshake::<A>),
                )
                .map_err(|e| format!("namespace {prefix}*: {e}"))?,
        }
    }
    Ok(inits)
}

/// Connect middleware: a refusal here reaches the client as `connect_error` with the error's text.
pub async fn handshake<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
    TryData(auth): TryData<Value>,
    State(node): State<NodeInfo>,
) -> Result<(), HandshakeError> {
    let entered = node.handshakes.enter(socket.ns());
    // Connection state recovery: what the session hook decided for this socket before it existed.
    let window = node.namespaces.find(socket.ns()).and_then(|ns| ns.recovery);
    let recovery = node.recovery.get().filter(|_| window.is_some());
    let mut pending = recovery.and_then(|r| r.take(&socket));
    let verified = pending.as_mut().and_then(|p| p.verified.take());
    let admitted = admit(&socket, &io, auth.ok(), &node, verified).await;
    let admitted = match admitted {
        // Removed by a refused handshake or a last socket leaving meanwhile: this socket would be in a dead
        // namespace.
        Ok(_) if io.of(socket.ns()).is_none() => Err(HandshakeError::Retry),
        other => other,
    };
    let Admitted {
        seat,
        slot,
        identity,
    } = match admitted {
        Ok(admitted) => admitted,
        Err(e) => {
            drop(entered);
            node.forget_if_unused(&io, socket.ns());
            tracing::debug!(ns = socket.ns(), error = %e, "handshake refused");
            let reason = Reason { reason: e.kind() };
            node.metrics.handshakes_refused.get_or_create(&reason).inc();
            return Err(e);
        }
    };
    // These go with the socket: dropped with it, they free its places (under MAX_SOCKETS, in its session). The
    // seat goes as soon as the socket disconnects too (`events::on_disconnect`).
    socket.extensions.insert(Arc::new(slot));
    socket.extensions.insert(Arc::new(seat));
    let rooms = node
        .namespaces
        .find(socket.ns())
        .map(|ns| identity.rooms(&ns.rooms));
    let listed = node
        .directory
        .list(socket.ns(), socket.id, identity.id_user.clone());
    socket.extensions.insert(Arc::new(listed));
    if let Some(ns) = node.namespaces.find(socket.ns()) {
        events::listen(&socket, &node, ns, &identity);
    }
    socket.extensions.insert(Arc::new(identity));
    // Still in progress until the socket is in its namespace (`on_connect` lets go of it).
    socket.extensions.insert(Arc::new(entered));
    if let (Some(recovery), Some(window), Some(pending)) = (recovery, window, pending) {
        let (recoverable, restored) = recovery.admitted(pending, window);
        socket.extensions.insert(recoverable);
        if let Some(restored) = restored {
            socket.extensions.insert(Arc::new(restored));
        }
    }
    // A fresh socket is in its rooms before its client can have the CONNECT answer, which the engine writes as
    // soon as socketioxide sends it, before the connect handler runs: a client that asks who is in its room once
    // connected finds itself there (with Node's socket.io, the connection handler runs before the server reads
    // anything more). A refused or failed CONNECT takes them back (socketioxide's `remove_socket`); a restored
    // socket's rooms come back in `on_connect`, after what it missed.
    if socket.extensions.get::<Arc<Restored>>().is_none()
        && let Some(rooms) = rooms
    {
        socket.join(rooms);
    }
    Ok(())
}

/// Whether a socket of Engine.IO session `session` is leaving its namespace: its client said so (socketioxide
/// marked it disconnected) and its disconnect handler, which gives its place back, has not finished.
fn leaving_a_namespace<A: Adapter>(io: &SocketIo<A>, session: Sid) -> bool {
    io.nsps()
        .into_iter()
        .filter_map(|ns| ns.get_socket(session))
        .any(|socket| !socket.connected())
}

/// What a handshake that passed holds for its socket.
struct Admitted {
    seat: Seat,
    slot: Slot,
    identity: Identity,
}

/// `verified`: the session hook's verification of this very handshake, not done again.
async fn admit<A: Adapter>(
    socket: &SocketRef<A>,
    io: &SocketIo<A>,
    auth: Option<Value>,
    node: &NodeInfo,
    verified: Option<Result<Verified, AuthError>>,
) -> Result<Admitted, HandshakeError> {
    let parts = socket.req_parts();
    let origin = parts
        .headers
        .get(axum::http::header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    node.admission.origin(origin)?;
    let seat = node
        .admission
        .seat(socket.id, || leaving_a_namespace(io, socket.id))
        .await?;
    let ns = node
        .namespaces
        .find(socket.ns())
        .ok_or(HandshakeError::UnknownNamespace)?;
    let verifying = (ns.verifier.waits() && verified.is_none())
        .then(|| node.admission.verifying())
        .transpose()?;
    let hs = Handshake {
        query: parts.uri.query(),
        auth: auth.as_ref(),
        headers: &parts.headers,
        address: observe::peer(&parts.extensions),
        cross_site: node.admission.cross_site(&parts.headers),
    };
    let verified = match verified {
        Some(verified) => verified?,
        None => ns.verifier.verify(hs).await?,
    };
    drop(verifying);
    let room = match ns.joins(RoomSource::Handshake) {
        true => {
            let room = hs.required("room")?;
            validate::room(&room)?;
            Some(room.into())
        }
        false => None,
    };
    // Fields a namespace does not use are not read: a client sending them is not refused for them.
    let role = match ns.views {
        false => Role::Plain,
        true => match hs.field("type")?.as_deref() {
            Some("controller") => Role::Controller,
            Some("view") => Role::View,
            Some(_) => return Err(HandshakeError::BadType),
            None => Role::Plain,
        },
    };
    let session = match (ns.joins(RoomSource::Session), ns.verifier.is_claim()) {
        (true, true) => hs.field("session_id")?.map(checked_session).transpose()?,
        (true, false) => verified.session,
        (false, _) => None,
    };
    let identity = Identity {
        id_user: verified.id_user.map(Into::into),
        room,
        session: session.map(Into::into),
        role,
        auth_rooms: verified.rooms.into(),
        claims: verified.claims,
    };
    identity.check_derived(&ns.rooms)?;
    check_handshake_room(ns, &identity)?;
    let slot = node.admission.slot()?;
    Ok(Admitted {
        seat,
        slot,
        identity,
    })
}

/// The `handshake` event: what the server made of the client.
#[derive(Debug, Serialize)]
struct Greeting<'a> {
    node: &'a str,
    id_socket: String,
    id_user: Option<&'a str>,
    namespace: &'a str,
    room: Option<&'a str>,
    rooms: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    r#type: Option<Role>,
}

pub async fn on_connect<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
    State(node): State<NodeInfo>,
    Extension(me): Extension<Arc<Identity>>,
) {
    // Its events (the client may send them as soon as it has its CONNECT answer) wait until this is dropped, once
    // the socket is counted in and greeted below, or at an early return.
    let greeted = events::OpenOnDrop::of(&socket);
    // In its namespace now: a last socket leaving may remove the namespace again.
    socket.extensions.remove::<Arc<Entered>>();
    let Some(ns) = node.namespaces.find(socket.ns()) else {
        return;
    };
    if let Some(message) = &ns.deprecated {
        tracing::warn!(
            namespace = socket.ns(),
            id_socket = %socket.id,
            id_user = me.id_user.as_deref(),
            "connection to a deprecated namespace: {message}"
        );
    }
    let recovering = socket
        .extensions
        .get::<Arc<Recoverable>>()
        .zip(node.recovery.get().cloned());
    // A recovered socket's rooms come back after what it missed (the handshake's rooms are among them).
    let restored = socket.extensions.remove::<Arc<Restored>>();
    let rooms = match &restored {
        Some(restored) => restored.session.rooms.clone(),
        // Joined by the `handshake` middleware.
        None => me.rooms(&ns.rooms),
    };
    socket.extensions.insert(observe::Issued::now());
    node.observer.connected(&socket);
    if let Some(tracker) = node.webhooks.get() {
        let verified = !matches!(ns.verifier, Verifier::None | Verifier::Claim);
        tracker.connected(
            socket.ns(),
            &socket.id.to_string(),
            me.id_user.as_deref(),
            verified,
            &rooms,
        );
    }
    let greeting = Greeting {
        node: &node.id,
        id_socket: socket.id.to_string(),
        id_user: me.id_user.as_deref(),
        namespace: socket.ns(),
        room: me.room.as_deref(),
        rooms: &rooms,
        r#type: (me.role != Role::Plain).then_some(me.role),
    };
    let _ = socket.emit("handshake", &greeting);
    node.observer.sent(&socket, "handshake", &greeting);
    events::on_departure(&socket);
    // Gone before the disconnect handler was set: socketioxide will not call it, so this handler counts the
    // departure (below). Gone later, socketioxide calls it with the true reason (a kick's deliberate one removes a
    // recovery session; counted here as a lost transport, it was kept).
    let gone_before_departure = !socket.connected();
    drop(greeted);
    if let Some((rec, recovery)) = recovering {
        match restored {
            Some(restored) => recovery.restore(&socket, &rec, (*restored).clone()).await,
            None => recovery.started(&socket, &rec).await,
        }
    }
    if ns.gateway
        && let Some(bus) = node.bus.get()
    {
        let verified = !matches!(ns.verifier, Verifier::None | Verifier::Claim);
        bus::opened(&socket, bus, &me, verified).await;
    }
    if let Some(reliable) = &ns.reliable {
        reliable::joined(&socket, &node, reliable, &rooms).await;
    }
    if node.presence
        && let Some(room) = &me.room
    {
        let event = events::Presence {
            id_socket: socket.id.to_string(),
            id_user: me.id_user.as_deref(),
        };
        events::relay(&socket, room, "socket-connected", &event).await;
    }
    if ns.views && me.role == Role::View {
        events::to_namespace(&io, socket.ns(), "__connect__", &Args::default()).await;
    }
    // Gone before `on_departure` set the disconnect handler (a client leaving at once): socketioxide will not call it,
    // so its rooms would stay counted (webhooks, presence) and a dynamic namespace it was the last socket of
    // would stay.
    if gone_before_departure {
        events::left_while_connecting(&socket, io, node, &me).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::auth::Verifier;

    fn ns(rooms: &[RoomSource]) -> Namespace {
        Namespace {
            pattern: crate::config::file::NamePattern::Exact("/".into()),
            verifier: Verifier::Claim,
            rooms: rooms.to_vec(),
            forward: false,
            views: false,
            deprecated: None,
            api_key: None,
            reliable: None,
            gateway: false,
            recovery: None,
            rpc: None,
            presence: false,
        }
    }

    fn identity(user: &str, session: Option<&str>) -> Identity {
        Identity {
            id_user: Some(user.into()),
            room: Some("Maths".into()),
            session: session.map(Into::into),
            role: Role::Plain,
            auth_rooms: vec!["staff".to_owned(), "user_1".to_owned()].into(),
            claims: None,
        }
    }

    fn verified(rooms: &[RoomSource]) -> Namespace {
        let jwt = crate::realtime::auth::Jwt::with_keys(crate::realtime::auth::jwt::JwtKeys {
            secret: Some("unit-test-secret-0123456789abcdef"),
            public_key: None,
            user_claim: "sub",
            session_claim: "sid",
            audience: None,
            issuer: None,
            cookie: None,
        })
        .unwrap();
        Namespace {
            verifier: Verifier::Jwt(Box::new(jwt)),
            reliable: Some(crate::realtime::namespaces::Reliable {
                prefix: "inbox-".into(),
                policy: crate::delivery::Policy {
                    cap: crate::delivery::Policy::DEFAULT_CAP,
                    ttl: crate::delivery::Ttl::from_secs(60),
                },
                message_ids: false,
            }),
            ..ns(rooms)
        }
    }

    #[test]
    fn a_verified_client_cannot_take_another_identitys_private_room() {
        let n = verified(&[RoomSource::Handshake, RoomSource::User]);
        let in_room = |room: &str| Identity {
            room: Some(room.into()),
            ..identity("bob", Some("s-bob"))
        };
        for own in ["user.bob", "session.s-bob", "inbox-bob", "staff", "Maths"] {
            assert!(check_handshake_room(&n, &in_room(own)).is_ok(), "{own}");
        }
        for other in [
            "user.alice",
            "session.s-alice",
            "inbox-alice",
            "user.",
            "inbox-",
        ] {
            let e = check_handshake_room(&n, &in_room(other)).unwrap_err();
            assert_eq!(e.to_string(), format!("room {other} is private"));
        }
        // A claimed identity proves nothing: the rule protects verified owners only.
        let claim = ns(&[RoomSource::Handshake]);
        assert!(check_handshake_room(&claim, &in_room("user.alice")).is_ok());
    }
}
