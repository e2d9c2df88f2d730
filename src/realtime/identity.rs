//! Who a socket is ([`Identity`], kept in its extensions from the handshake on) and the rooms that follow from it.
//!
//! The lowest module of [`crate::realtime`]: it imports nothing else from it, so every other module may use it.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

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
