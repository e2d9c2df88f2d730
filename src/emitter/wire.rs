//! The socket.io Redis emitter protocol on the wire (`@socket.io/redis-emitter` v5 and its ports), checked:
//! everything here comes from Redis, where anyone with access may publish.
//!
//! * Broadcasts on `{key}#{namespace}#` (and `{key}#{namespace}#{room}#` when one room is targeted): msgpack
//!   `[uid, {type: 2 | 5, data: [event, ...args], nsp}, {rooms, except, flags: {volatile?, compress?}}]`.
//! * Requests on `{key}-request#{namespace}#`, JSON: join (type 2), leave (3), disconnect (4), server-side
//!   emit (6). Node's `@socket.io/redis-adapter` sends other types there too (and msgpack): known, not handled.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::realtime::args::Arg;

/// Socket.IO packet types an emitter broadcast may carry: an event, or an event with binary attachments.
pub const EVENT: u8 = 2;
const BINARY_EVENT: u8 = 5;
/// Request types of the protocol (`RequestType` of the adapter).
const REMOTE_JOIN: u8 = 2;
const REMOTE_LEAVE: u8 = 3;
const REMOTE_DISCONNECT: u8 = 4;
const SERVER_SIDE_EMIT: u8 = 6;
use crate::domain::validate::RESERVED_EVENTS as RESERVED;

/// Which channel of the protocol a message came on, with what follows the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel<'a> {
    /// `{key}#…`: `rest` is `{namespace}#` or `{namespace}#{room}#`.
    Broadcast { rest: &'a str },
    /// `{key}-request#{namespace}#`.
    Request { namespace: &'a str },
}

impl<'a> Channel<'a> {
    /// `None` for a channel of another key (a pattern matches more than the key: `socket.io#*` does not match
    /// `socket.io-request#`, but a key ending in a glob character could).
    pub fn of(key: &str, channel: &'a str) -> Option<Self> {
        let rest = channel.strip_prefix(key)?;
        if let Some(rest) = rest.strip_prefix('#') {
            return Some(Self::Broadcast { rest });
        }
        let namespace = rest.strip_prefix("-request#")?.strip_suffix('#')?;
        Some(Self::Request { namespace })
    }
}

/// A broadcast as published: `[uid, packet, opts]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawBroadcast(pub String, pub Packet, #[serde(default)] pub Opts);

/// The Socket.IO packet of a broadcast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Packet {
    #[serde(rename = "type")]
    pub kind: u8,
    pub data: Vec<Arg>,
    /// Absent: `/` (Node's adapter reads it so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsp: Option<String>,
    /// An ack id: the emitter never sends one, and acks cannot cross the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
}

/// Which sockets, and how.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Opts {
    #[serde(default)]
    pub rooms: Vec<String>,
    #[serde(default)]
    pub except: Vec<String>,
    #[serde(default)]
    pub flags: Flags,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Flags {
    /// Sockets whose transport cannot take it at once do not get it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volatile: Option<bool>,
    /// Whether to compress (websocket permessage-deflate): not ours to decide per message, ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<bool>,
}

/// A broadcast checked: its namespace, event, arguments and targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Broadcast {
    pub uid: String,
    pub namespace: String,
    pub event: String,
    pub args: Vec<Arg>,
    pub rooms: Vec<String>,
    pub except: Vec<String>,
    pub volatile: bool,
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("larger than {0} bytes")]
    TooLarge(usize),
    #[error("not the protocol's encoding: {0}")]
    Decode(String),
    #[error("packet type {0} is not an event")]
    PacketType(u8),
    #[error("an ack id: acks cannot cross the emitter protocol")]
    Ack,
    #[error("no event name")]
    NoEvent,
    #[error("{0:?} is a reserved event name")]
    Reserved(String),
    #[error("namespace {namespace:?} does not match channel {channel:?}")]
    Channel { namespace: String, channel: String },
    #[error("a namespace must start with /")]
    Namespace,
    #[error("{0} misses {1}")]
    Missing(&'static str, &'static str),
}

impl Broadcast {
    /// Decodes a broadcast that came on `{key}#{rest}` (see [`Channel::Broadcast`]), at most `max` bytes.
    pub fn parse(rest: &str, payload: &[u8], max: usize) -> Result<Self, Malformed> {
        if payload.len() > max {
            return Err(Malformed::TooLarge(max));
        }
        let RawBroadcast(uid, packet, opts) = from_msgpack(payload)?;
        if !matches!(packet.kind, EVENT | BINARY_EVENT) {
            return Err(Malformed::PacketType(packet.kind));
        }
        if packet.id.is_some() {
            return Err(Malformed::Ack);
        }
        let namespace = packet.nsp.unwrap_or_else(|| "/".to_owned());
        if !namespace.starts_with('/') {
            return Err(Malformed::Namespace);
        }
        // The channel names the namespace too: they must agree, so that what a channel filter lets through is what
        // is delivered.
        let agrees = rest
            .strip_prefix(namespace.as_str())
            .is_some_and(|r| r.starts_with('#'));
        if !agrees {
            return Err(Malformed::Channel {
                namespace,
                channel: rest.to_owned(),
            });
        }
        let mut data = packet.data.into_iter();
        let event = match data.next() {
            Some(Arg::String(event)) => event,
            _ => return Err(Malformed::NoEvent),
        };
        if RESERVED.contains(&event.as_str()) {
            return Err(Malformed::Reserved(event));
        }
        Ok(Self {
            uid,
            namespace,
            event,
            args: data.collect(),
            rooms: opts.rooms,
            except: opts.except,
            volatile: opts.flags.volatile.unwrap_or(false),
        })
    }
}

/// Which sockets a request applies to: those in any of `rooms` (all when empty) and in none of `except`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Target {
    #[serde(default)]
    pub rooms: Vec<String>,
    #[serde(default)]
    pub except: Vec<String>,
}

/// A request as published (JSON); which fields matter depends on `type`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RawRequest {
    #[serde(rename = "type")]
    pub kind: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opts: Option<Target>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<Value>>,
}

/// A request checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Join {
        target: Target,
        rooms: Vec<String>,
    },
    Leave {
        target: Target,
        rooms: Vec<String>,
    },
    /// `close`: the emitter asks to close the underlying connection too.
    Disconnect {
        target: Target,
        close: bool,
    },
    /// `serverSideEmit(event, ...args)`: `data` is `[event, ...args]`.
    ServerSideEmit {
        uid: Option<String>,
        data: Vec<Value>,
    },
    /// A type of Node's adapter this protocol does not handle (fetch sockets, all rooms, acks…).
    Other(u8),
}

impl Request {
    /// What the metric calls it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Join { .. } => "join",
            Self::Leave { .. } => "leave",
            Self::Disconnect { .. } => "disconnect",
            Self::ServerSideEmit { .. } => "server_side_emit",
            Self::Other(_) => "other_request",
        }
    }

    /// Decodes a request, at most `max` bytes. Node's adapter sends msgpack requests too (its first byte is not
    /// `{`): none of them is one the emitter sends, so they are [`Request::Other`] when they carry a type.
    pub fn parse(payload: &[u8], max: usize) -> Result<Self, Malformed> {
        if payload.len() > max {
            return Err(Malformed::TooLarge(max));
        }
        let raw: RawRequest = match payload.first() {
            Some(b'{') => {
                serde_json::from_slice(payload).map_err(|e| Malformed::Decode(e.to_string()))?
            }
            _ => {
                let raw: RawRequest = from_msgpack(payload)?;
                return Ok(Self::Other(raw.kind));
            }
        };
        let missing = |field| Malformed::Missing(request_name(raw.kind), field);
        Ok(match raw.kind {
            REMOTE_JOIN | REMOTE_LEAVE => {
                let rooms = raw.rooms.ok_or_else(|| missing("rooms"))?;
                let target = raw.opts.ok_or_else(|| missing("opts"))?;
                match raw.kind {
                    REMOTE_JOIN => Self::Join { target, rooms },
                    _ => Self::Leave { target, rooms },
                }
            }
            REMOTE_DISCONNECT => Self::Disconnect {
                target: raw.opts.ok_or_else(|| missing("opts"))?,
                close: raw.close.unwrap_or(false),
            },
            SERVER_SIDE_EMIT => {
                let data = raw.data.ok_or_else(|| missing("data"))?;
                if !matches!(data.first(), Some(Value::String(_))) {
                    return Err(Malformed::NoEvent);
                }
                Self::ServerSideEmit { uid: raw.uid, data }
            }
            other => Self::Other(other),
        })
    }
}

/// Nesting a message may have: the decoder recurses once per level (and so do the encoders the arguments go
/// through on their way to clients), so a deep message must be refused before it exhausts a task's stack.
const MAX_DEPTH: usize = 32;

fn from_msgpack<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, Malformed> {
    let mut de = rmp_serde::Deserializer::from_read_ref(payload);
    de.set_max_depth(MAX_DEPTH);
    T::deserialize(&mut de).map_err(|e| Malformed::Decode(e.to_string()))
}

fn request_name(kind: u8) -> &'static str {
    match kind {
        REMOTE_JOIN => "a join request",
        REMOTE_LEAVE => "a leave request",
        REMOTE_DISCONNECT => "a disconnect request",
        SERVER_SIDE_EMIT => "a server-side emit",
        _ => "a request",
    }
}

/// `text` as a Redis glob matching only itself (`PSUBSCRIBE` patterns treat `* ? [ ] \` specially).
pub fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MAX: usize = 65_536;

    /// What the emitter publishes, encoded as notepack does (maps with string keys, bin for buffers).
    fn encoded(uid: &str, packet: Packet, opts: Opts) -> Vec<u8> {
        rmp_serde::to_vec_named(&RawBroadcast(uid.into(), packet, opts)).unwrap()
    }

    fn packet(data: Vec<Arg>, nsp: &str) -> Packet {
        Packet {
            kind: EVENT,
            data,
            nsp: Some(nsp.into()),
            id: None,
        }
    }

    #[test]
    fn channels_are_told_apart_by_key() {
        assert_eq!(
            Channel::of("socket.io", "socket.io#/chat#room#"),
            Some(Channel::Broadcast {
                rest: "/chat#room#"
            })
        );
        assert_eq!(
            Channel::of("socket.io", "socket.io-request#/chat#"),
            Some(Channel::Request { namespace: "/chat" })
        );
        assert_eq!(Channel::of("socket.io", "socket.io-response#/chat#"), None);
        assert_eq!(Channel::of("socket.io", "other#/#"), None);
        assert_eq!(Channel::of("socket.io", "socket.io-request#/"), None);
    }

    #[test]
    fn a_broadcast_round_trips_with_nested_binary() {
        let data = vec![
            Arg::String("news".into()),
            Arg::Bytes(vec![1, 2, 255]),
            Arg::Object(vec![
                ("file".into(), Arg::Bytes(vec![9])),
                ("n".into(), Arg::Number(3.into())),
                ("l".into(), Arg::Array(vec![Arg::Null, Arg::Bool(true)])),
            ]),
        ];
        let opts = Opts {
            rooms: vec!["a".into(), "b".into()],
            except: vec!["c".into()],
            flags: Flags {
                volatile: Some(true),
                compress: Some(true),
            },
        };
        let bytes = encoded("emitter", packet(data.clone(), "/chat"), opts);
        let b = Broadcast::parse("/chat#", &bytes, MAX).unwrap();
        assert_eq!(b.uid, "emitter");
        assert_eq!(b.namespace, "/chat");
        assert_eq!(b.event, "news");
        assert_eq!(b.args, data[1..]);
        assert_eq!(b.rooms, ["a", "b"]);
        assert_eq!(b.except, ["c"]);
        assert!(b.volatile);
    }

    #[test]
    fn a_broadcast_without_nsp_is_for_the_main_namespace_and_empty_opts_mean_everyone() {
        let mut p = packet(vec![Arg::String("e".into())], "/");
        p.nsp = None;
        let bytes = encoded("x", p, Opts::default());
        let b = Broadcast::parse("/#", &bytes, MAX).unwrap();
        assert_eq!(b.namespace, "/");
        assert!(b.rooms.is_empty() && b.except.is_empty() && !b.volatile);
        // A room channel of the same namespace.
        assert!(Broadcast::parse("/#room#", &bytes, MAX).is_ok());
    }

    #[test]
    fn malformed_broadcasts_are_refused_not_panicked_on() {
        let ok = |data: Vec<Arg>, nsp: &str| encoded("x", packet(data, nsp), Opts::default());
        let event = || vec![Arg::String("e".into())];
        assert!(matches!(
            Broadcast::parse("/#", b"\xc1garbage", MAX),
            Err(Malformed::Decode(_))
        ));
        assert!(matches!(
            Broadcast::parse("/#", b"", MAX),
            Err(Malformed::Decode(_))
        ));
        assert_eq!(
            Broadcast::parse("/#", &ok(event(), "/"), 3),
            Err(Malformed::TooLarge(3))
        );
        assert_eq!(
            Broadcast::parse("/#", &ok(vec![], "/"), MAX),
            Err(Malformed::NoEvent)
        );
        assert_eq!(
            Broadcast::parse("/#", &ok(vec![Arg::Number(1.into())], "/"), MAX),
            Err(Malformed::NoEvent)
        );
        assert_eq!(
            Broadcast::parse("/#", &ok(vec![Arg::String("disconnect".into())], "/"), MAX),
            Err(Malformed::Reserved("disconnect".into()))
        );
        assert!(matches!(
            Broadcast::parse("/other#", &ok(event(), "/chat"), MAX),
            Err(Malformed::Channel { .. })
        ));
        // `/chat` is not `/chatroom`'s namespace.
        assert!(matches!(
            Broadcast::parse("/chatroom#", &ok(event(), "/chat"), MAX),
            Err(Malformed::Channel { .. })
        ));
        assert_eq!(
            Broadcast::parse("chat#", &ok(event(), "chat"), MAX),
            Err(Malformed::Namespace)
        );
        let mut p = packet(event(), "/");
        p.kind = 3;
        assert_eq!(
            Broadcast::parse("/#", &encoded("x", p.clone(), Opts::default()), MAX),
            Err(Malformed::PacketType(3))
        );
        p.kind = EVENT;
        p.id = Some(4);
        assert_eq!(
            Broadcast::parse("/#", &encoded("x", p, Opts::default()), MAX),
            Err(Malformed::Ack)
        );
        // Not an array of three; rooms of the wrong type.
        let wrong = rmp_serde::to_vec_named(&json!({"a": 1})).unwrap();
        assert!(Broadcast::parse("/#", &wrong, MAX).is_err());
        let wrong =
            rmp_serde::to_vec_named(&json!(["x", {"type": 2, "data": ["e"]}, {"rooms": 5}]))
                .unwrap();
        assert!(Broadcast::parse("/#", &wrong, MAX).is_err());
    }

    #[test]
    fn deep_nesting_is_refused() {
        // `["x", {type: 2, nsp: "/", data: [[[[…]]]]}, {}]` with 100,000 nested arrays: the decoder's depth limit
        // answers, not the stack.
        let mut payload = vec![0x93, 0xa1, b'x', 0x83, 0xa4];
        payload.extend(b"type");
        payload.push(2);
        payload.extend([0xa3]);
        payload.extend(b"nsp");
        payload.extend([0xa1, b'/']);
        payload.extend([0xa4]);
        payload.extend(b"data");
        payload.extend(std::iter::repeat_n(0x91, 100_000));
        payload.push(0xc0);
        payload.push(0x80);
        assert!(Broadcast::parse("/#", &payload, usize::MAX).is_err());
    }

    #[test]
    fn requests_round_trip() {
        let target = Target {
            rooms: vec!["a".into()],
            except: vec!["b".into()],
        };
        let join = RawRequest {
            kind: REMOTE_JOIN,
            opts: Some(target.clone()),
            rooms: Some(vec!["c".into()]),
            ..RawRequest::default()
        };
        let text = serde_json::to_vec(&join).unwrap();
        assert_eq!(
            Request::parse(&text, MAX).unwrap(),
            Request::Join {
                target: target.clone(),
                rooms: vec!["c".into()]
            }
        );
        // As the emitter writes them.
        let leave = br#"{"type":3,"opts":{"rooms":[],"except":[]},"rooms":["r"]}"#;
        assert_eq!(
            Request::parse(leave, MAX).unwrap(),
            Request::Leave {
                target: Target::default(),
                rooms: vec!["r".into()]
            }
        );
        let disconnect = br#"{"type":4,"opts":{"rooms":["a"],"except":[]},"close":true}"#;
        assert_eq!(
            Request::parse(disconnect, MAX).unwrap(),
            Request::Disconnect {
                target: Target {
                    rooms: vec!["a".into()],
                    except: vec![]
                },
                close: true
            }
        );
        let emit = br#"{"uid":"emitter","type":6,"data":["hello",{"a":1}]}"#;
        assert_eq!(
            Request::parse(emit, MAX).unwrap(),
            Request::ServerSideEmit {
                uid: Some("emitter".into()),
                data: vec![json!("hello"), json!({"a": 1})]
            }
        );
        // Node's adapter asking for sockets (JSON) and for all rooms (msgpack): not ours to answer.
        let fetch = br#"{"requestId":"x","type":5,"opts":{"rooms":[],"except":[]}}"#;
        assert_eq!(Request::parse(fetch, MAX).unwrap(), Request::Other(5));
        let rooms = rmp_serde::to_vec_named(&json!({"requestId": "x", "type": 1})).unwrap();
        assert_eq!(Request::parse(&rooms, MAX).unwrap(), Request::Other(1));
    }

    #[test]
    fn malformed_requests_are_refused() {
        for bad in [
            &b"{"[..],
            b"",
            br#"{"type":"2"}"#,
            br#"{"type":2,"opts":{"rooms":[],"except":[]}}"#,
            br#"{"type":3,"rooms":["a"]}"#,
            br#"{"type":4}"#,
            br#"{"type":6}"#,
            br#"{"type":6,"data":[1]}"#,
            br#"{"type":2,"opts":{"rooms":[1]},"rooms":["a"]}"#,
            br#"{"type":999}"#,
        ] {
            assert!(
                Request::parse(bad, MAX).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            Request::parse(br#"{"type":4,"opts":{}}"#, 5),
            Err(Malformed::TooLarge(5))
        );
    }

    #[test]
    fn globs_match_only_the_key() {
        assert_eq!(glob_escape("socket.io"), "socket.io");
        assert_eq!(glob_escape(r"a*b?[c]\"), r"a\*b\?\[c\]\\");
    }
}
