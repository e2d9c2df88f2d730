//! The cross-node wire format: plain serde types, JSON-encoded, versioned.
//!
//! Knows nothing of HTTP, Redis or Socket.IO; [`crate::cluster`] moves these bytes. Everything decoded here
//! came from Redis and is untrusted: [`decode_request`] and [`decode_response`] check the version, the size and
//! every field against [`crate::domain::validate`] before anyone uses it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::validate;

/// Bumped on any incompatible change; a node ignores (and logs) messages of another version.
pub const VERSION: u16 = 1;

/// Messages larger than this are refused before parsing (a node with 100,000 sockets in one room answers in
/// about 6 MB).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// "Who of room `room` is connected to you?", published once on the request channel to every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub v: u16,
    /// Matches the replies to this request.
    pub id: Uuid,
    /// The asking node: replies go to its reply channel.
    pub from: String,
    pub room: String,
}

/// One node's answer: its local sockets of the room, published on the asking node's reply channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub v: u16,
    /// The [`Request::id`] answered.
    pub id: Uuid,
    /// The answering node.
    pub node: String,
    pub members: Vec<Member>,
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

/// A socket in a room, with the user id stored on it at handshake.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    pub id_socket: String,
    pub id_user: String,
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
}

impl Request {
    pub fn new(from: &str, room: &str) -> Self {
        Self {
            v: VERSION,
            id: Uuid::new_v4(),
            from: from.to_owned(),
            room: room.to_owned(),
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
    validate::room(&req.room)?;
    Ok(req)
}

pub fn decode_response(bytes: &[u8]) -> Result<Response, DecodeError> {
    let resp: Response = parse(bytes)?;
    validate::node_id(&resp.node)?;
    for m in &resp.members {
        validate::id_user(&m.id_user)?;
        // Engine.IO ids are 20 characters of base64url; allow some slack, never markup or control bytes.
        if m.id_socket.is_empty()
            || m.id_socket.len() > 64
            || !m
                .id_socket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(DecodeError::SocketId);
        }
    }
    Ok(resp)
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
impl Versioned for Heartbeat {
    fn version(&self) -> u16 {
        self.v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response() -> Response {
        Response {
            v: VERSION,
            id: Uuid::new_v4(),
            node: "node-b".into(),
            members: vec![
                Member {
                    id_socket: "aCfIOY5n5eEKQlOxAAAA".into(),
                    id_user: "foo".into(),
                },
                Member {
                    id_socket: "eKGcrPYDdHBEkdueAAAA".into(),
                    id_user: "bär \"quoted\" <b>".into(),
                },
            ],
        }
    }

    #[test]
    fn request_round_trip() {
        let req = Request::new("node-a", "Maths");
        assert_eq!(decode_request(&encode(&req)).unwrap(), req);
    }

    #[test]
    fn response_round_trip() {
        let resp = response();
        assert_eq!(decode_response(&encode(&resp)).unwrap(), resp);
        let empty = Response {
            members: vec![],
            ..resp
        };
        assert_eq!(decode_response(&encode(&empty)).unwrap(), empty);
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
                v: 1,
                node: "a".into(),
                leaving: false
            }))
            .unwrap(),
            r#"{"v":1,"node":"a"}"#
        );
        assert!(decode_heartbeat(br#"{"v":1,"node":"a b"}"#).is_err());
        assert!(decode_heartbeat(br#"{"v":2,"node":"a"}"#).is_err());
        assert!(decode_heartbeat(br#"{"v":1,"node":"a","leaving":1}"#).is_err());
    }

    #[test]
    fn wire_format_is_stable() {
        let id = Uuid::nil();
        let req = Request {
            v: 1,
            id,
            from: "a".into(),
            room: "Maths".into(),
        };
        assert_eq!(
            String::from_utf8(encode(&req)).unwrap(),
            r#"{"v":1,"id":"00000000-0000-0000-0000-000000000000","from":"a","room":"Maths"}"#
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
        for junk in [&b"\xff\xfe"[..], b"null", b"[]", b"42", b"{}", b"{\"v\":1}"] {
            assert!(decode_request(junk).is_err(), "{junk:?}");
            assert!(decode_response(junk).is_err(), "{junk:?}");
        }
        // A request is not a response.
        let req = encode(&Request::new("a", "Maths"));
        assert!(decode_response(&req).is_err());
    }

    #[test]
    fn rejects_other_versions() {
        let mut resp = response();
        resp.v = 2;
        assert!(matches!(
            decode_response(&encode(&resp)),
            Err(DecodeError::Version(2))
        ));
        // A future version with a different shape is still reported as a version problem.
        assert!(matches!(
            decode_request(br#"{"v":7,"whatever":true}"#),
            Err(DecodeError::Version(7))
        ));
    }

    #[test]
    fn rejects_invalid_fields() {
        let mut req = Request::new("a", "Maths");
        req.room = "../etc".into();
        assert!(matches!(
            decode_request(&encode(&req)),
            Err(DecodeError::Invalid(_))
        ));
        let mut req = Request::new("a", "Maths");
        req.from = "a:b*".into();
        assert!(decode_request(&encode(&req)).is_err());

        let mut resp = response();
        resp.members[0].id_user = "x\u{0}".into();
        assert!(decode_response(&encode(&resp)).is_err());
        let mut resp = response();
        resp.members[0].id_socket = "<img src=x>".into();
        assert!(matches!(
            decode_response(&encode(&resp)),
            Err(DecodeError::SocketId)
        ));
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
