//! Which queue a call is about ([`RoomKey`]) and who keeps a room open ([`Holder`]).

use std::{fmt, sync::Arc};

use crate::domain::validate::{self, Invalid};

/// One user room of one namespace: the unit of queueing, ordering and expiry.
///
/// Both parts are checked with the rules every entry point uses ([`validate::namespace`], [`validate::room`]),
/// so neither contains `|`, `{`, `}` or `/`-after-the-namespace ambiguity: [`RoomKey::tag`] (`/chat|user_1`) is
/// unambiguous, and as a Redis hash tag (`{/chat|user_1}`) it keeps all of one room's keys on one slot of a Redis
/// Cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey {
    namespace: Arc<str>,
    room: Arc<str>,
}

impl RoomKey {
    pub fn new(namespace: &str, room: &str) -> Result<Self, Invalid> {
        validate::namespace(namespace)?;
        validate::room(room)?;
        Ok(Self {
            namespace: namespace.into(),
            room: room.into(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn room(&self) -> &str {
        &self.room
    }

    /// `{namespace}|{room}`: the room's name in Redis keys and in a node's list of rooms it holds.
    pub fn tag(&self) -> String {
        format!("{}|{}", self.namespace, self.room)
    }

    /// The key whose [`Self::tag`] is `tag`; `None` for anything else (it is read back from Redis).
    pub fn from_tag(tag: &str) -> Option<Self> {
        let (namespace, room) = tag.split_once('|')?;
        Self::new(namespace, room).ok()
    }
}

impl fmt::Display for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.namespace, self.room)
    }
}

/// One socket in a room, on one node. A room is held while it has at least one holder, on any node; its
/// pending messages start to expire when the last one leaves. Holders are counted by the store, not by the
/// caller, because the last socket of a user may leave from any node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Holder {
    node: Arc<str>,
    socket: Arc<str>,
}

impl Holder {
    /// `node` follows [`validate::node_id`] (so never contains `/`); `socket` is the socket's id, unique across
    /// the cluster.
    pub fn new(node: &str, socket: &str) -> Result<Self, Invalid> {
        validate::node_id(node)?;
        if socket.is_empty() {
            return Err(Invalid::Empty("socket id"));
        }
        Ok(Self {
            node: node.into(),
            socket: socket.into(),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn socket(&self) -> &str {
        &self.socket
    }

    /// `{node}/{socket}`: the holder as a member of a room's set of holders in Redis. Every member of one node
    /// starts with [`Self::node_prefix`].
    pub fn member(&self) -> String {
        format!("{}/{}", self.node, self.socket)
    }

    /// `{node}/`: what every member of `node` starts with.
    pub fn node_prefix(node: &str) -> String {
        format!("{node}/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_keys_are_checked_and_their_tags_read_back() {
        let key = RoomKey::new("/chat", "user_1").unwrap();
        assert_eq!(key.tag(), "/chat|user_1");
        assert_eq!(RoomKey::from_tag(&key.tag()), Some(key.clone()));
        assert_eq!(key.to_string(), "/chat user_1");
        let odd = RoomKey::new("/do-a/b", "user:a@b.c+d~e").unwrap();
        assert_eq!(RoomKey::from_tag(&odd.tag()), Some(odd));
        for (ns, room) in [
            ("chat", "user_1"),
            ("/", ""),
            ("/a|b", "user_1"),
            ("/", "a|b"),
            ("/", "a{b}"),
            ("/{x}", "a"),
            ("/", "a/b"),
        ] {
            assert!(RoomKey::new(ns, room).is_err(), "{ns:?} {room:?}");
        }
        for tag in ["", "/", "|a", "/|", "/|a|b", "nope|a", "/|a b"] {
            assert_eq!(RoomKey::from_tag(tag), None, "{tag:?}");
        }
    }

    #[test]
    fn holders_name_their_node_first() {
        let h = Holder::new("node-1.a", "AbC_d-9").unwrap();
        assert_eq!(h.member(), "node-1.a/AbC_d-9");
        assert!(h.member().starts_with(&Holder::node_prefix("node-1.a")));
        // A node whose id is a prefix of another's does not match it.
        assert!(!h.member().starts_with(&Holder::node_prefix("node-1")));
        assert!(Holder::new("a/b", "s").is_err());
        assert!(Holder::new("", "s").is_err());
        assert!(Holder::new("a", "").is_err());
    }
}
