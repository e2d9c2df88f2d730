//! Who a socket is ([`Identity`], kept in its extensions from the handshake on) and the rooms that follow from it.
//!
//! The lowest module of [`crate::realtime`]: it imports nothing else from it, so every other module may use it.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::Serialize;
use serde_json::Value;
use socketioxide::socket::Sid;

use crate::{
    config::file::RoomSource,
    domain::validate::{self, Invalid},
};

/// Who a socket is, stored in its extensions at handshake. `id_user` changes on `identity-change` (in `claim`
/// namespaces only), the session on `session_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id_user: Option<Arc<str>>,
    /// The room named in the handshake, in namespaces that join it.
    pub room: Option<Arc<str>>,
    pub session: Option<Arc<str>>,
    pub role: Role,
    /// Rooms the auth webhook gave.
    pub auth_rooms: Arc<[String]>,
    /// The JWT's claims, in `jwt` namespaces (the gateway's envelopes carry them).
    pub claims: Option<Arc<serde_json::Map<String, Value>>>,
}

/// Every socket's `id_user` by namespace and socket id, beside the sockets: the users query reads it for each socket
/// of a room, and reading it from each socket's extensions (a lock, a map, a box and the identity, all cold in the
/// cache) was a third of a node's CPU answering for 2,500 sockets.
#[derive(Debug, Default)]
pub struct Directory {
    by_ns: RwLock<HashMap<String, Sockets>>,
    next: AtomicU64,
}

/// One namespace's sockets: (the entry's token, its `id_user`).
type Sockets = HashMap<Sid, (u64, Option<Arc<str>>)>;

/// A socket's entry in the [`Directory`], removed when dropped (with the socket's extensions). A socket recovered
/// with the same id on this node has an entry of its own, which the old socket's does not remove.
#[derive(Debug)]
pub struct Listed {
    directory: Arc<Directory>,
    ns: String,
    sid: Sid,
    token: u64,
}

impl Directory {
    /// Lists a socket, for as long as the returned [`Listed`] lives.
    pub fn list(self: &Arc<Self>, ns: &str, sid: Sid, id_user: Option<Arc<str>>) -> Listed {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let mut by_ns = self.by_ns.write().unwrap_or_else(|e| e.into_inner());
        by_ns
            .entry(ns.to_owned())
            .or_default()
            .insert(sid, (token, id_user));
        Listed {
            directory: self.clone(),
            ns: ns.to_owned(),
            sid,
            token,
        }
    }

    /// A listed socket's new `id_user` (`identity-change`).
    pub fn update(&self, ns: &str, sid: Sid, id_user: Option<Arc<str>>) {
        let mut by_ns = self.by_ns.write().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = by_ns.get_mut(ns).and_then(|sockets| sockets.get_mut(&sid)) {
            entry.1 = id_user;
        }
    }

    /// Reads the `id_user`s of namespace `ns` under one lock.
    pub fn read<R>(&self, ns: &str, f: impl FnOnce(Users<'_>) -> R) -> R {
        let by_ns = self.by_ns.read().unwrap_or_else(|e| e.into_inner());
        f(Users(by_ns.get(ns)))
    }
}

/// One namespace's `id_user`s, read under the [`Directory`]'s lock.
pub struct Users<'a>(Option<&'a Sockets>);

impl<'a> Users<'a> {
    /// `Some(None)` for a listed socket without an `id_user`, `None` for a socket not listed.
    pub fn of(&self, sid: Sid) -> Option<Option<&'a str>> {
        self.0?.get(&sid).map(|(_, user)| user.as_deref())
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        let mut by_ns = self
            .directory
            .by_ns
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(sockets) = by_ns.get_mut(&self.ns) {
            if sockets
                .get(&self.sid)
                .is_some_and(|(t, _)| *t == self.token)
            {
                sockets.remove(&self.sid);
            }
            if sockets.is_empty() {
                by_ns.remove(&self.ns);
            }
        }
    }
}

/// Controller and view sockets, from the handshake's `type` field in namespaces with `views = true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Controller,
    View,
    /// Neither: no `type`, or a namespace without controller/view events.
    Plain,
}

/// How user and session rooms start.
pub const USER_ROOM: &str = "user.";
pub const SESSION_ROOM: &str = "session.";

/// The room of every socket of a user.
pub fn user_room(id_user: &str) -> String {
    format!("{USER_ROOM}{id_user}")
}

/// The room of every socket of a session.
pub fn session_room(session: &str) -> String {
    format!("{SESSION_ROOM}{session}")
}

/// A user id or session whose room would not be a valid room name.
#[derive(Debug, thiserror::Error)]
#[error("{field} cannot be used in a room name: {invalid}")]
pub struct BadRoomName {
    /// The client's field: `id_user` or `session_id`.
    pub field: &'static str,
    pub invalid: Invalid,
}

/// Checks that `room`, derived from the client's `field`, is a valid room name.
pub fn check_room(field: &'static str, room: &str) -> Result<(), BadRoomName> {
    validate::room(room).map_err(|invalid| BadRoomName { field, invalid })
}

impl Identity {
    /// Every room the socket is in, given where its namespace's rooms come from, in this order: the handshake
    /// room, `user.{id}`, `session.{id}`, the webhook's rooms.
    pub fn rooms(&self, sources: &[RoomSource]) -> Vec<String> {
        let joins = |source| sources.contains(&source);
        let mut rooms = Vec::new();
        if let Some(room) = &self.room {
            rooms.push(room.to_string());
        }
        if joins(RoomSource::User)
            && let Some(user) = &self.id_user
        {
            rooms.push(user_room(user));
        }
        if joins(RoomSource::Session)
            && let Some(session) = &self.session
        {
            rooms.push(session_room(session));
        }
        if joins(RoomSource::Auth) {
            rooms.extend(self.auth_rooms.iter().cloned());
        }
        let mut seen = std::collections::HashSet::new();
        rooms.retain(|r| seen.insert(r.clone()));
        rooms
    }

    /// Checks that the rooms derived from the user id or session (those of `sources`) are valid room names.
    pub fn check_derived(&self, sources: &[RoomSource]) -> Result<(), BadRoomName> {
        if sources.contains(&RoomSource::User)
            && let Some(user) = &self.id_user
        {
            check_room("id_user", &user_room(user))?;
        }
        if sources.contains(&RoomSource::Session)
            && let Some(session) = &self.session
        {
            check_room("session_id", &session_room(session))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_of(directory: &Directory, ns: &str, sid: Sid) -> Option<Option<String>> {
        directory.read(ns, |users| users.of(sid).map(|u| u.map(str::to_owned)))
    }

    #[test]
    fn a_socket_is_listed_while_its_entry_lives_and_a_recovered_one_keeps_its_own() {
        let directory = Arc::new(Directory::default());
        let (a, b) = (Sid::new(), Sid::new());
        let listed_a = directory.list("/", a, Some("alex".into()));
        let listed_b = directory.list("/", b, None);
        let other_ns = directory.list("/other", a, Some("bob".into()));
        assert_eq!(user_of(&directory, "/", a), Some(Some("alex".into())));
        assert_eq!(user_of(&directory, "/", b), Some(None));
        assert_eq!(user_of(&directory, "/other", a), Some(Some("bob".into())));
        assert_eq!(user_of(&directory, "/none", a), None);

        directory.update("/", a, Some("alexandra".into()));
        assert_eq!(user_of(&directory, "/", a), Some(Some("alexandra".into())));

        // Recovered with the same id before the old socket was dropped: the old entry's drop leaves the new one.
        let again = directory.list("/", a, Some("alex".into()));
        drop(listed_a);
        assert_eq!(user_of(&directory, "/", a), Some(Some("alex".into())));
        drop(again);
        assert_eq!(user_of(&directory, "/", a), None);
        drop(listed_b);
        assert!(
            directory.by_ns.read().unwrap().get("/").is_none(),
            "an empty namespace is removed"
        );
        drop(other_ns);
        assert!(directory.by_ns.read().unwrap().is_empty());
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

    #[test]
    fn rooms_follow_the_namespace() {
        use RoomSource::*;
        let me = identity("42", Some("s1"));
        assert_eq!(me.rooms(&[Handshake]), ["Maths"]);
        assert_eq!(
            me.rooms(&[Handshake, User, Session, Auth]),
            ["Maths", "user.42", "session.s1", "staff", "user_1"]
        );
        let mut anonymous = identity("x", None);
        anonymous.id_user = None;
        anonymous.room = None;
        assert!(anonymous.rooms(&[User, Session]).is_empty());
    }

    #[test]
    fn derived_rooms_must_be_valid_names() {
        let both = [RoomSource::User, RoomSource::Session];
        assert!(
            identity("alice@example.com", Some("s-1"))
                .check_derived(&both)
                .is_ok()
        );
        let e = identity("a b", None).check_derived(&both).unwrap_err();
        assert_eq!(
            e.to_string(),
            "id_user cannot be used in a room name: room contains a character that is not allowed"
        );
        let e = identity("a", Some("x/y")).check_derived(&both).unwrap_err();
        assert!(e.to_string().starts_with("session_id cannot"), "{e}");
        // Without user rooms any user id is fine.
        assert!(identity("a b", None).check_derived(&[]).is_ok());
    }
}
