//! The cross-node wire format: plain serde types, JSON-encoded, versioned.
//!
//! Knows nothing of HTTP, Redis or Socket.IO; [`crate::cluster`] moves these bytes. Everything decoded here
//! came from Redis and is untrusted: [`decode_request`] and [`decode_response`] check the version, the size and
//! every field against [`crate::domain::validate`] before anyone uses it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::validate;

/// Bumped on any incompatible change; a node ignores (and logs) messages of another version. Version 2 added
/// namespaces and the kinds of question ([`Query`]).
pub const VERSION: u16 = 2;

/// Messages larger than this are refused before parsing (a node with 100,000 sockets in one room answers in
/// about 6 MB).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// A question about namespace `ns`, published once on the request channel to every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub v: u16,
    /// Matches the replies to this request.
    pub id: Uuid,
    /// The asking node: replies go to its reply channel.
    pub from: String,
    /// The namespace asked about (`/`, `/do-lab`); every answer is about this namespace alone.
    pub ns: String,
    pub query: Query,
}

/// What a node is asked about its local sockets of one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Query {
    /// The sockets of `room`, with their user ids.
    Users { room: String },
    /// Every room with its number of sockets.
    Rooms,
    /// How many `view` sockets are connected (the forwarding service's `__count__`).
    Views,
    /// Every socket of every namespace but `except` (the admin UI's own), with what the admin UI shows of it.
    /// The request's `ns` is the asking namespace (the admin's).
    Sockets { except: String },
    /// An admin command, applied by the node holding the sockets: the sockets of namespace `nsp` that are
    /// `filter` (a socket id, or a room: its sockets; none: all of them).
    Command {
        nsp: String,
        filter: Option<String>,
        action: Action,
    },
}

/// What an admin [`Query::Command`] does to its sockets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Join {
        room: String,
    },
    Leave {
        room: String,
    },
    /// `close`: close the whole connection (every namespace), not only this namespace's socket.
    Disconnect {
        close: bool,
    },
    /// Emits `event` with `args` (each its own argument) to the sockets.
    Emit {
        event: String,
        args: Vec<serde_json::Value>,
    },
    /// Closes the socket if the connection holding its recovery session is still `conn`: its client recovered it
    /// on another node before this one noticed the connection was lost. The new socket has the same id, another
    /// connection: it is never the one closed.
    Replace {
        conn: String,
    },
}

/// One node's answer, published on the asking node's reply channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub v: u16,
    /// The [`Request::id`] answered.
    pub id: Uuid,
    /// The answering node.
    pub node: String,
    pub reply: Reply,
}

/// The answer to a [`Query`], of the same kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Users {
        members: Vec<Member>,
    },
    Rooms {
        rooms: Vec<RoomCount>,
    },
    Views {
        count: u64,
    },
    Sockets {
        sockets: Vec<SocketInfo>,
    },
    /// How many sockets a command applied to.
    Done {
        sockets: u64,
    },
}

/// A socket as the admin UI shows it (its field names: this is sent to the UI as it is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SocketInfo {
    pub id: String,
    /// The Engine.IO session; socketioxide does not expose it, so the socket id again (one socket per client
    /// in practice).
    pub client_id: String,
    /// `polling` or `websocket`.
    pub transport: String,
    pub nsp: String,
    /// What the UI lists as the socket's data: `{id_user, ...}` from its identity.
    pub data: serde_json::Value,
    pub rooms: Vec<String>,
    pub handshake: HandshakeInfo,
}

/// The handshake of a [`SocketInfo`], in the shape of socket.io's `socket.handshake`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeInfo {
    pub address: String,
    pub headers: std::collections::BTreeMap<String, String>,
    pub query: std::collections::BTreeMap<String, String>,
    /// Milliseconds since the Unix epoch (the UI calls `new Date(issued)`).
    pub issued: u64,
    pub secure: bool,
    /// `issued` as a date string.
    pub time: String,
    pub url: String,
    pub xdomain: bool,
}

impl Reply {
    /// Whether this answers `query` (a node must not answer a question with another kind of answer).
    pub fn answers(&self, query: &Query) -> bool {
        matches!(
            (self, query),
            (Self::Users { .. }, Query::Users { .. })
                | (Self::Rooms { .. }, Query::Rooms)
                | (Self::Views { .. }, Query::Views)
                | (Self::Sockets { .. }, Query::Sockets { .. })
                | (Self::Done { .. }, Query::Command { .. })
        )
    }

    /// The empty answer to `query`: what a node without that namespace says.
    pub fn empty(query: &Query) -> Self {
        match query {
            Query::Users { .. } => Self::Users { members: vec![] },
            Query::Rooms => Self::Rooms { rooms: vec![] },
            Query::Views => Self::Views { count: 0 },
            Query::Sockets { .. } => Self::Sockets { sockets: vec![] },
            Query::Command { .. } => Self::Done { sockets: 0 },
        }
    }
}

/// "I am alive" (every heartbeat interval), or "I am leaving" (at graceful shutdown), published by every node
/// on the nodes channel. Membership follows these: a node that misses a few is declared down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub v: u16,
    pub node: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
}

/// A stored message of a user room, published by the node that stored it to each other node holding the room, on
/// that node's own live channel: each emits it to its own sockets of the room with an ack callback and applies the
/// first ack to the store itself. (Through socketioxide's adapter, an emit with ack cost a `PUBSUB SHARDNUMSUB`,
/// an ack count published by every other node and the ack published back to the storing node: 11 Redis messages
/// more per delivery on 4 nodes, which was most of its CPU.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Live {
    pub v: u16,
    /// Once per live message (a signed one is accepted once).
    pub id: Uuid,
    /// The storing node, which emitted to its own sockets already.
    pub from: String,
    pub ns: String,
    pub room: String,
    /// Sockets in any of these rooms do not get it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
    pub event: String,
    /// The event's arguments as sent (with the message id when the namespace sends it).
    pub args: Vec<serde_json::Value>,
    /// The store's id of the message (`<ms>-<seq>`), which the ack removes.
    pub message: String,
    /// Only on the live channel every node hears: the nodes this copy is for, those that did not take it on their
    /// own channel (nodes of before 2026-12-04 listen only there). Empty: for every node (sent by such a node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
}

/// A socket in a room, with the user id stored on it at handshake (none in namespaces without identity).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    pub id_socket: String,
    pub id_user: Option<String>,
}

impl Member {
    /// The order of `GET /{room}/users`: by `id_user` (sockets without one first), then by socket id.
    pub fn listing_key(&self) -> (Option<&str>, &str) {
        (self.id_user.as_deref(), &self.id_socket)
    }
}

/// A room of a namespace on one node, and how many of that node's sockets are in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RoomCount {
    pub room: String,
    pub sockets: u64,
    /// The distinct `id_user`s of those sockets, sorted: the asking node counts a room's distinct users over
    /// the cluster from them (a user may be on several nodes). Absent from nodes older than the field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
}

/// Why a message from Redis was ignored.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("unsupported protocol version {0} (we speak {VERSION})")]
    Version(u64),
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("invalid field: {0}")]
    Invalid(#[from] validate::Invalid),
    #[error("invalid socket id")]
    SocketId,
    #[error("invalid event name")]
    EventName,
}

impl Request {
    pub fn new(from: &str, ns: &str, query: Query) -> Self {
        Self {
            v: VERSION,
            id: Uuid::new_v4(),
            from: from.to_owned(),
            ns: ns.to_owned(),
            query,
        }
    }
}

/// Encodes any protocol message. Serialising these types cannot fail.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    serde_json::to_vec(msg).expect("protocol types always serialise")
}

pub fn decode_request(bytes: &[u8]) -> Result<Request, DecodeError> {
    let req: Request = parse(bytes)?;
    validate::node_id(&req.from)?;
    validate::namespace(&req.ns)?;
    check_query(&req.query)?;
    Ok(req)
}

/// The names in a query follow the rules of what they name (what an admin command is checked with before it is
/// asked, too).
pub fn check_query(query: &Query) -> Result<(), DecodeError> {
    match query {
        Query::Users { room } => validate::room(room)?,
        Query::Sockets { except } => validate::namespace(except)?,
        Query::Command {
            nsp,
            filter,
            action,
        } => {
            validate::namespace(nsp)?;
            if let Some(filter) = filter
                && !is_socket_id(filter)
            {
                validate::room(filter)?;
            }
            match action {
                Action::Join { room } | Action::Leave { room } => validate::room(room)?,
                Action::Emit { event, .. } if !is_event_name(event) => {
                    return Err(DecodeError::EventName);
                }
                Action::Emit { .. } | Action::Disconnect { .. } | Action::Replace { .. } => {}
            }
        }
        Query::Rooms | Query::Views => {}
    }
    Ok(())
}

pub fn decode_response(bytes: &[u8]) -> Result<Response, DecodeError> {
    let resp: Response = parse(bytes)?;
    validate::node_id(&resp.node)?;
    match &resp.reply {
        Reply::Users { members } => {
            for m in members {
                if let Some(user) = &m.id_user {
                    validate::id_user(user)?;
                }
                if !is_socket_id(&m.id_socket) {
                    return Err(DecodeError::SocketId);
                }
            }
        }
        Reply::Rooms { rooms } => {
            for r in rooms {
                validate::room(&r.room)?;
                for user in &r.users {
                    validate::id_user(user)?;
                }
            }
        }
        Reply::Sockets { sockets } => {
            for s in sockets {
                validate::namespace(&s.nsp)?;
                if !is_socket_id(&s.id) {
                    return Err(DecodeError::SocketId);
                }
            }
        }
        Reply::Views { .. } | Reply::Done { .. } => {}
    }
    Ok(resp)
}

/// A [`Live`] message from Redis, its names checked (the message id is parsed by the store's reader).
pub fn decode_live(bytes: &[u8]) -> Result<Live, DecodeError> {
    let live: Live = parse(bytes)?;
    validate::node_id(&live.from)?;
    validate::namespace(&live.ns)?;
    validate::room(&live.room)?;
    for room in &live.except {
        validate::room(room)?;
    }
    for node in &live.to {
        validate::node_id(node)?;
    }
    if !is_event_name(&live.event) {
        return Err(DecodeError::EventName);
    }
    Ok(live)
}

/// An event name a client can receive: 1 to 128 characters, no control characters.
pub fn is_event_name(event: &str) -> bool {
    !event.is_empty() && event.chars().count() <= 128 && !event.chars().any(char::is_control)
}

/// Engine.IO ids are 20 characters of base64url; allow some slack, never markup or control bytes.
pub fn is_socket_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn decode_heartbeat(bytes: &[u8]) -> Result<Heartbeat, DecodeError> {
    let hb: Heartbeat = parse(bytes)?;
    validate::node_id(&hb.node)?;
    Ok(hb)
}

/// Size check, then a typed parse; on failure, a second look tells a version mismatch from garbage.
fn parse<T: serde::de::DeserializeOwned + Versioned>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    match serde_json::from_slice::<T>(bytes) {
        Ok(msg) if msg.version() == VERSION => Ok(msg),
        Ok(msg) => Err(DecodeError::Version(msg.version().into())),
        Err(e) => {
            #[derive(Deserialize)]
            struct V {
                v: u64,
            }
            match serde_json::from_slice::<V>(bytes) {
                Ok(V { v }) if v != u64::from(VERSION) => Err(DecodeError::Version(v)),
                _ => Err(e.into()),
            }
        }
    }
}

trait Versioned {
    fn version(&self) -> u16;
}
impl Versioned for Request {
    fn version(&self) -> u16 {
        self.v
    }
}
impl Versioned for Response {
    fn version(&self) -> u16 {
        self.v
    }
}
impl Versioned for Live {
    fn version(&self) -> u16 {
        self.v
    }
}
impl Versioned for Heartbeat {
    fn version(&self) -> u16 {
        self.v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id_socket: &str, id_user: Option<&str>) -> Member {
        Member {
            id_socket: id_socket.into(),
            id_user: id_user.map(Into::into),
        }
    }

    #[test]
    fn members_are_listed_without_a_user_first_then_by_user_then_by_socket() {
        let mut members = [
            member("b", Some("foo")),
            member("z", None),
            member("a", Some("foo")),
            member("c", Some("bar")),
            member("y", None),
        ];
        members.sort_by(|a, b| a.listing_key().cmp(&b.listing_key()));
        let order: Vec<&str> = members.iter().map(|m| m.id_socket.as_str()).collect();
        assert_eq!(order, ["y", "z", "c", "a", "b"]);
    }

    fn response() -> Response {
        Response {
            v: VERSION,
            id: Uuid::new_v4(),
            node: "node-b".into(),
            reply: Reply::Users {
                members: vec![
                    member("aCfIOY5n5eEKQlOxAAAA", Some("foo")),
                    member("eKGcrPYDdHBEkdueAAAA", Some("bär \"quoted\" <b>")),
                    member("xKGcrPYDdHBEkdueAAAA", None),
                ],
            },
        }
    }

    fn users(room: &str) -> Query {
        Query::Users { room: room.into() }
    }

    #[test]
    fn request_round_trip() {
        for query in [users("Maths"), Query::Rooms, Query::Views] {
            let req = Request::new("node-a", "/do-lab", query);
            assert_eq!(decode_request(&encode(&req)).unwrap(), req);
        }
    }

    #[test]
    fn live_round_trip_and_checks() {
        let live = Live {
            v: VERSION,
            id: Uuid::new_v4(),
            from: "node-a".into(),
            ns: "/chat".into(),
            room: "user_1".into(),
            except: vec!["muted".into()],
            event: "news".into(),
            args: vec![serde_json::json!({"n": 1})],
            message: "1-0".into(),
            to: vec!["node-b".into()],
        };
        assert_eq!(decode_live(&encode(&live)).unwrap(), live);
        // A message of a node of before: no `to`, for every node.
        let old = br#"{"v":2,"id":"00000000-0000-0000-0000-000000000000","from":"n1","ns":"/chat","room":"user_1","event":"news","args":[],"message":"1-0"}"#;
        assert!(decode_live(old).unwrap().to.is_empty());
        let bad = |f: fn(&mut Live)| {
            let mut l = live.clone();
            f(&mut l);
            decode_live(&encode(&l)).is_err()
        };
        assert!(bad(|l| l.room = "a/b".into()));
        assert!(bad(|l| l.except = vec!["a/b".into()]));
        assert!(bad(|l| l.event = String::new()));
        assert!(bad(|l| l.from = String::new()));
        assert!(bad(|l| l.to = vec!["a/b".into()]));
        assert!(bad(|l| l.v = VERSION + 1));
    }

    #[test]
    fn response_round_trip() {
        let resp = response();
        assert_eq!(decode_response(&encode(&resp)).unwrap(), resp);
        for reply in [
            Reply::Users { members: vec![] },
            Reply::Rooms {
                rooms: vec![RoomCount {
                    room: "user.42".into(),
                    sockets: 3,
                    users: vec!["42".into()],
                }],
            },
            Reply::Views { count: 7 },
        ] {
            let resp = Response {
                reply,
                ..response()
            };
            assert_eq!(decode_response(&encode(&resp)).unwrap(), resp);
        }
    }

    #[test]
    fn replies_match_their_queries() {
        for q in [users("a"), Query::Rooms, Query::Views] {
            assert!(Reply::empty(&q).answers(&q));
        }
        assert!(!Reply::Views { count: 1 }.answers(&Query::Rooms));
        assert!(!Reply::Rooms { rooms: vec![] }.answers(&users("a")));
    }

    #[test]
    fn heartbeat_round_trip() {
        for leaving in [false, true] {
            let hb = Heartbeat {
                v: VERSION,
                node: "node-a".into(),
                leaving,
            };
            assert_eq!(decode_heartbeat(&encode(&hb)).unwrap(), hb);
        }
        assert_eq!(
            String::from_utf8(encode(&Heartbeat {
                v: 2,
                node: "a".into(),
                leaving: false
            }))
            .unwrap(),
            r#"{"v":2,"node":"a"}"#
        );
        assert!(decode_heartbeat(br#"{"v":2,"node":"a b"}"#).is_err());
        assert!(decode_heartbeat(br#"{"v":1,"node":"a"}"#).is_err());
        assert!(decode_heartbeat(br#"{"v":2,"node":"a","leaving":1}"#).is_err());
    }

    #[test]
    fn wire_format_is_stable() {
        let id = Uuid::nil();
        let req = Request {
            v: 2,
            id,
            from: "a".into(),
            ns: "/".into(),
            query: users("Maths"),
        };
        assert_eq!(
            String::from_utf8(encode(&req)).unwrap(),
            r#"{"v":2,"id":"00000000-0000-0000-0000-000000000000","from":"a","ns":"/","query":{"users":{"room":"Maths"}}}"#
        );
        let resp = Response {
            v: 2,
            id,
            node: "b".into(),
            reply: Reply::Views { count: 3 },
        };
        assert_eq!(
            String::from_utf8(encode(&resp)).unwrap(),
            r#"{"v":2,"id":"00000000-0000-0000-0000-000000000000","node":"b","reply":{"views":{"count":3}}}"#
        );
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        let bytes = encode(&response());
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(matches!(
                decode_response(&bytes[..cut]),
                Err(DecodeError::Malformed(_))
            ));
        }
        for junk in [&b"\xff\xfe"[..], b"null", b"[]", b"42", b"{}", b"{\"v\":2}"] {
            assert!(decode_request(junk).is_err(), "{junk:?}");
            assert!(decode_response(junk).is_err(), "{junk:?}");
        }
        // A request is not a response.
        let req = encode(&Request::new("a", "/", users("Maths")));
        assert!(decode_response(&req).is_err());
        // Unknown kinds are refused.
        assert!(decode_request(br#"{"v":2,"id":"00000000-0000-0000-0000-000000000000","from":"a","ns":"/","query":"drop"}"#).is_err());
    }

    #[test]
    fn rejects_other_versions() {
        let mut resp = response();
        resp.v = 1;
        assert!(matches!(
            decode_response(&encode(&resp)),
            Err(DecodeError::Version(1))
        ));
        // A version of another shape is still reported as a version problem.
        assert!(matches!(
            decode_request(br#"{"v":7,"whatever":true}"#),
            Err(DecodeError::Version(7))
        ));
        assert!(matches!(
            decode_request(
                br#"{"v":1,"id":"00000000-0000-0000-0000-000000000000","from":"a","room":"Maths"}"#
            ),
            Err(DecodeError::Version(1))
        ));
    }

    #[test]
    fn rejects_invalid_fields() {
        let mut req = Request::new("a", "/", users("../etc"));
        assert!(matches!(
            decode_request(&encode(&req)),
            Err(DecodeError::Invalid(_))
        ));
        req.query = users("Maths");
        req.from = "a:b*".into();
        assert!(decode_request(&encode(&req)).is_err());
        let req = Request::new("a", "no-slash", Query::Rooms);
        assert!(decode_request(&encode(&req)).is_err());

        let with_members = |members| Response {
            reply: Reply::Users { members },
            ..response()
        };
        let resp = with_members(vec![member("aCfIOY5n5eEKQlOxAAAA", Some("x\u{0}"))]);
        assert!(decode_response(&encode(&resp)).is_err());
        let resp = with_members(vec![member("<img src=x>", Some("u"))]);
        assert!(matches!(
            decode_response(&encode(&resp)),
            Err(DecodeError::SocketId)
        ));
        let rooms = |room: &str, user: &str| Response {
            reply: Reply::Rooms {
                rooms: vec![RoomCount {
                    room: room.into(),
                    sockets: 1,
                    users: vec![user.into()],
                }],
            },
            ..response()
        };
        assert!(decode_response(&encode(&rooms("a", "u"))).is_ok());
        assert!(decode_response(&encode(&rooms("a/b", "u"))).is_err());
        assert!(decode_response(&encode(&rooms("a", "x\u{0}"))).is_err());
    }

    #[test]
    fn rejects_oversized() {
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            decode_response(&big),
            Err(DecodeError::TooLarge(_))
        ));
    }
}
