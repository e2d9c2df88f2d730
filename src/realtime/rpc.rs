//! Client events as RPC, the socket's side (docs/rpc.md): an event named in its namespace's `rpc_events` is sent
//! to the backend ([`super::backend`]) and its answer becomes the event's ack.
//!
//! Bounded twice, so a slow backend costs neither unbounded memory nor tasks: [`MAX_PER_SOCKET`] calls per
//! socket and `RPC_MAX_IN_FLIGHT` per node. An event over either bound is not sent; its ack is
//! `{"error": "busy"}` at once. The answer's actions (join, leave, disconnect) are applied to the calling
//! socket as the admin commands apply theirs, but never to identity rooms (`user.*`, `session.*`, the
//! namespace's reliable user rooms): those follow who the socket is, so an answer cannot put a socket in
//! another user's private room, nor take it out of its own.

use std::sync::Arc;

use serde_json::json;
use socketioxide::{
    adapter::Adapter,
    extract::{AckSender, SocketRef},
};
use tokio::sync::Semaphore;

use super::{
    args::Relayed,
    backend::{Actions, Answer, Backend, Call, Failure},
    identity::{Identity, SESSION_ROOM, USER_ROOM},
    namespaces::Namespace,
    node::NodeInfo,
    recover::Recoverable,
};

/// Calls one socket may have waiting for the backend: enough for a page that fires a few at once, small enough
/// that one socket cannot take the node's places.
pub const MAX_PER_SOCKET: usize = 8;

/// The ack of an event over a bound.
pub const BUSY: &str = "busy";

/// A socket's places for calls, in its extensions.
#[derive(Clone)]
struct SocketCalls(Arc<Semaphore>);

/// Gives a socket of an RPC namespace its places for calls.
pub fn attach<A: Adapter>(socket: &SocketRef<A>, ns: &Namespace) {
    if ns.rpc.is_some() {
        socket
            .extensions
            .insert(SocketCalls(Arc::new(Semaphore::new(MAX_PER_SOCKET))));
    }
}

/// Sends `event` to `backend` when it takes it, and acks its answer; `false`: not an RPC event, the caller goes on.
/// `event` is not one of the server's own names (the caller checked).
pub async fn call<A: Adapter>(
    socket: &SocketRef<A>,
    node: &NodeInfo,
    ns: &Namespace,
    event: &str,
    relayed: Option<&Relayed>,
    ack: AckSender<A>,
) -> bool {
    let Some(backend) = ns.rpc.as_ref().filter(|b| b.takes(event)) else {
        return false;
    };
    let metrics = &node.metrics.rpc;
    let Some(args) = relayed.and_then(Relayed::to_json) else {
        metrics.ended("refused");
        let why = "binary arguments are not sent to the backend: send JSON (e.g. base64 strings)";
        let _ = ack.send(&json!({ "error": why }));
        return true;
    };
    // Places are taken at once or not at all: an event never waits for one.
    let mine = socket
        .extensions
        .get::<SocketCalls>()
        .and_then(|calls| calls.0.try_acquire_owned().ok());
    let node_place = node.rpc_in_flight.clone().try_acquire_owned().ok();
    let (Some(_mine), Some(_node_place)) = (mine, node_place) else {
        metrics.ended(BUSY);
        tracing::debug!(id_socket = %socket.id, event, "RPC call over a bound: busy");
        let _ = ack.send(&json!({ "error": BUSY }));
        return true;
    };
    let me = socket.extensions.get::<Arc<Identity>>();
    let mut rooms: Vec<String> = socket.rooms().into_iter().map(|r| r.into_owned()).collect();
    rooms.sort();
    let request = Call {
        event,
        args: &args.0,
        namespace: socket.ns(),
        id_socket: socket.id.to_string(),
        id_user: me.as_ref().and_then(|m| m.id_user.as_deref()),
        verified: ns.verifier.verifies(),
        rooms,
    };
    let started = std::time::Instant::now();
    let answer = backend.call(&request).await;
    metrics.seconds.observe(started.elapsed().as_secs_f64());
    let answered = answer.and_then(|a| allowed(a, ns));
    match answered {
        Ok(Answer {
            ack: value,
            actions,
        }) => {
            metrics.ended("ok");
            if !socket.connected() {
                return true;
            }
            apply(socket, node, &actions);
            let _ = ack.send(&value);
            if actions.disconnect {
                let _ = socket.clone().disconnect();
            }
        }
        Err(failure) => {
            metrics.ended(failure.kind());
            log(backend, event, &failure);
            let _ = ack.send(&json!({ "error": failure.to_string() }));
        }
    }
    true
}

fn log(backend: &Backend, event: &str, failure: &Failure) {
    match failure {
        Failure::Actions(why) => {
            tracing::warn!(url = %backend.url(), event, why, "RPC answer refused: invalid actions")
        }
        other => tracing::warn!(url = %backend.url(), event, error = %other, "RPC call failed"),
    }
}

/// Whether an identity room (`user.*`, `session.*`, the namespace's reliable user rooms) is named.
fn identity_room(ns: &Namespace, room: &str) -> bool {
    room.starts_with(USER_ROOM)
        || room.starts_with(SESSION_ROOM)
        || ns.reliable.as_ref().is_some_and(|r| r.is_user_room(room))
}

/// The answer, if its actions name no identity room; a refused answer is applied in no part.
fn allowed(answer: Answer, ns: &Namespace) -> Result<Answer, Failure> {
    let actions = &answer.actions;
    if let Some(room) = actions
        .join
        .iter()
        .chain(&actions.leave)
        .find(|r| identity_room(ns, r))
    {
        return Err(Failure::Actions(format!(
            "{room:?} is an identity room: it follows who the socket is, not the backend's answers"
        )));
    }
    Ok(answer)
}

/// Leaves, then joins, as the admin commands do: told to the admin UI and to the recovery session.
fn apply<A: Adapter>(socket: &SocketRef<A>, node: &NodeInfo, actions: &Actions) {
    for room in &actions.leave {
        socket.leave(room.clone());
        node.observer.left(socket, room);
    }
    if !actions.join.is_empty() {
        socket.join(actions.join.clone());
        node.observer.joined(socket, &actions.join);
    }
    if !actions.join.is_empty() || !actions.leave.is_empty() {
        Recoverable::rooms_changed(socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::backend::parse;

    fn namespaces(text: &str) -> super::super::Namespaces {
        let checked = crate::config::file::parse(
            &format!("[[namespace]]\nname = \"/\"\n{text}"),
            "t",
            std::path::Path::new("."),
        )
        .unwrap()
        .namespaces;
        let metrics = Arc::new(crate::telemetry::metrics::Metrics::new());
        super::super::Namespaces::build(checked, "t", &metrics, &Arc::default()).unwrap()
    }

    #[test]
    fn identity_rooms_are_refused_in_actions() {
        let all = namespaces("user_room_prefix = \"user_\"\n");
        let ns = all.find("/").unwrap();
        for room in ["user.bob", "session.s1", "user_bob"] {
            for key in ["join", "leave"] {
                let body = format!(r#"{{"ack": 1, "actions": {{"{key}": ["{room}"]}}}}"#);
                let e = allowed(parse(body.as_bytes()).unwrap(), ns).unwrap_err();
                assert_eq!(e.kind(), "bad_actions", "{room}");
            }
        }
        let ok = parse(br#"{"ack": 1, "actions": {"join": ["Maths", "users"], "leave": ["x"]}}"#)
            .unwrap();
        assert!(allowed(ok, ns).is_ok());
    }
}
