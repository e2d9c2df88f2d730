//! What the gateway reads and writes: frames with clients, entries in Redis Streams. Plain serde types; every
//! entry read from Redis is untrusted and checked here before anyone uses it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::domain::validate;

/// Largest text frame a client may send, and largest `data` of an entry we read.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;

pub use crate::realtime::bus::Frame;

impl Frame {
    pub fn new(kind: impl Into<String>, payload: Value) -> Self {
        Self {
            kind: kind.into(),
            payload,
        }
    }

    /// What a client is told about a frame the gateway could not take.
    pub fn error(why: impl Into<String>) -> Self {
        Self::new("error", serde_json::json!({ "error": why.into() }))
    }

    /// Reads a client's text frame: a JSON object with a string `type`.
    pub fn parse(text: &str) -> Result<Self, String> {
        const SHAPE: &str = "a frame is {\"type\": <string>, \"payload\": <any>}";
        if text.len() > MAX_FRAME_BYTES {
            return Err(format!("frame over {MAX_FRAME_BYTES} bytes"));
        }
        let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(mut map) = value else {
            return Err(SHAPE.into());
        };
        let Some(Value::String(kind)) = map.remove("type") else {
            return Err(SHAPE.into());
        };
        check_type(&kind)?;
        Ok(Self::new(
            kind,
            map.remove("payload").unwrap_or(Value::Null),
        ))
    }
}

/// A message type is an event name: 1 to 128 characters, no control characters.
pub fn check_type(kind: &str) -> Result<(), String> {
    match crate::cluster::protocol::is_event_name(kind) {
        true => Ok(()),
        false => Err("`type` must be 1 to 128 characters without control characters".into()),
    }
}

/// What a hook adds to its stream, as the `data` field (the event-bus service's handlers read `context.headers.jwt` and
/// `context.params.namespace`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    pub topic: String,
    pub node: String,
    pub socket: String,
    pub username: String,
    pub namespace: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub payload: Value,
    pub reply_to: String,
    pub context: Context,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Context {
    pub headers: Headers,
    pub params: Params,
    /// Whether `username` was verified (a JWT, a password, the auth webhook). `false`: the client's own word (a
    /// Socket.IO client of a `claim` or `none` namespace), and `headers.jwt` is empty: no token was verified.
    pub verified: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Headers {
    /// The verified token's claims; `{}` without one (`credentials`, `webhook`, unverified identities).
    pub jwt: Map<String, Value>,
}

/// The client's query parameters (`namespace`, and whatever else it sent), [`crate::realtime::bus::params`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Params(pub std::collections::BTreeMap<String, String>);

/// The backend's answer to an envelope, in its `reply_to` stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Reply { id: String, payload: Value },
    Fail { id: String, error: Value },
}

/// A `send` entry: to every socket of `username` in `namespace`.
#[derive(Debug, Clone, PartialEq)]
pub struct SendEntry {
    pub username: String,
    pub namespace: String,
    pub frame: Frame,
}

/// A `broadcast` entry: to every client, or every client of `namespace`.
#[derive(Debug, Clone, PartialEq)]
pub struct BroadcastEntry {
    pub namespace: Option<String>,
    pub frame: Frame,
}

/// The namespace a client or an entry names: `alex` and `/alex` are the same; nothing is `/`.
pub fn namespace(name: Option<&str>) -> Result<String, String> {
    let name = match name {
        None | Some("") => "/".to_owned(),
        Some(n) if n.starts_with('/') => n.to_owned(),
        Some(n) => format!("/{n}"),
    };
    validate::namespace(&name).map_err(|e| format!("namespace {name:?}: {e}"))?;
    Ok(name)
}

/// The `data` of an entry as a JSON object, or why not.
fn object(data: Option<&[u8]>) -> Result<Map<String, Value>, String> {
    let data = data.ok_or("no `data` field")?;
    if data.len() > MAX_ENTRY_BYTES {
        return Err(format!("`data` over {MAX_ENTRY_BYTES} bytes"));
    }
    match serde_json::from_slice(data) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("`data` is not a JSON object".into()),
        Err(e) => Err(format!("`data` is not JSON: {e}")),
    }
}

fn string(map: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("`{key}` must be a string")),
    }
}

fn frame_of(map: &mut Map<String, Value>) -> Result<Frame, String> {
    let kind = string(map, "type")?.ok_or("no `type`")?;
    check_type(&kind)?;
    Ok(Frame::new(
        kind,
        map.remove("payload").unwrap_or(Value::Null),
    ))
}

impl Reply {
    pub fn parse(data: Option<&[u8]>) -> Result<Self, String> {
        let mut map = object(data)?;
        let id = string(&map, "id")?.ok_or("no `id`")?;
        match (map.remove("reply"), map.remove("fail")) {
            (Some(payload), None) => Ok(Self::Reply { id, payload }),
            (None, Some(error)) => Ok(Self::Fail { id, error }),
            _ => Err("exactly one of `reply` and `fail`".into()),
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Self::Reply { id, .. } | Self::Fail { id, .. } => id,
        }
    }
}

impl SendEntry {
    pub fn parse(data: Option<&[u8]>) -> Result<Self, String> {
        let mut map = object(data)?;
        let username = string(&map, "username")?.ok_or("no `username`")?;
        validate::id_user(&username).map_err(|e| format!("username: {e}"))?;
        let namespace = namespace(string(&map, "namespace")?.as_deref())?;
        Ok(Self {
            username,
            namespace,
            frame: frame_of(&mut map)?,
        })
    }
}

/// Who a `send` entry is for, (namespace, username), read without its payload: all the router needs. The node it
/// reaches parses it whole ([`SendEntry::parse`]), and counts it there if the rest is not valid.
pub fn send_target(data: Option<&[u8]>) -> Result<(String, String), String> {
    #[derive(Deserialize)]
    struct Target<'a> {
        #[serde(borrow, default)]
        username: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow, default)]
        namespace: Option<std::borrow::Cow<'a, str>>,
    }
    let data = data.ok_or("no `data` field")?;
    if data.len() > MAX_ENTRY_BYTES {
        return Err(format!("`data` over {MAX_ENTRY_BYTES} bytes"));
    }
    // A derived struct would also take an array.
    if data.trim_ascii_start().first() != Some(&b'{') {
        return Err("`data` is not a JSON object".into());
    }
    let target: Target =
        serde_json::from_slice(data).map_err(|e| format!("`data` is not a send entry: {e}"))?;
    let username = target.username.ok_or("no `username`")?.into_owned();
    validate::id_user(&username).map_err(|e| format!("username: {e}"))?;
    Ok((namespace(target.namespace.as_deref())?, username))
}

impl BroadcastEntry {
    pub fn parse(data: Option<&[u8]>) -> Result<Self, String> {
        let mut map = object(data)?;
        let namespace = match string(&map, "namespace")? {
            Some(n) => Some(namespace(Some(&n))?),
            None => None,
        };
        Ok(Self {
            namespace,
            frame: frame_of(&mut map)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bytes(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn frames_round_trip_and_bad_ones_say_why() {
        let f = Frame::parse(r#"{"type":"t","payload":{"a":1}}"#).unwrap();
        assert_eq!(f, Frame::new("t", json!({"a": 1})));
        assert_eq!(
            serde_json::to_value(&f).unwrap(),
            json!({"type": "t", "payload": {"a": 1}})
        );
        assert_eq!(
            Frame::parse(r#"{"type":"t"}"#).unwrap().payload,
            Value::Null
        );
        for (bad, why) in [
            ("nope", "not JSON"),
            (r#"{"payload":1}"#, "a frame is"),
            (r#"{"type":3}"#, "a frame is"),
            (r#"{"type":""}"#, "`type` must be"),
            ("[1]", "a frame is"),
            (r#"["type","t"]"#, "a frame is"),
            (r#""t""#, "a frame is"),
        ] {
            let e = Frame::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(
            Frame::parse(&format!(
                r#"{{"type":"t","payload":"{}"}}"#,
                "x".repeat(MAX_FRAME_BYTES)
            ))
            .is_err()
        );
        assert_eq!(
            serde_json::to_value(Frame::error("why")).unwrap(),
            json!({"type": "error", "payload": {"error": "why"}})
        );
    }

    #[test]
    fn envelopes_have_the_event_bus_services_paths() {
        let e = Envelope {
            id: "i".into(),
            topic: "socket:connection".into(),
            node: "n".into(),
            socket: "s".into(),
            username: "alex".into(),
            namespace: "/alex".into(),
            kind: "onconnect".into(),
            payload: Value::Null,
            reply_to: "gateway:replies:n".into(),
            context: Context {
                headers: Headers {
                    jwt: json!({"preferred_username": "alex"})
                        .as_object()
                        .unwrap()
                        .clone(),
                },
                params: Params([("namespace".to_owned(), "alex".to_owned())].into()),
                verified: true,
            },
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["context"]["headers"]["jwt"]["preferred_username"], "alex");
        assert_eq!(v["context"]["params"]["namespace"], "alex");
        assert_eq!(v["context"]["verified"], true);
        assert_eq!(v["type"], "onconnect");
        assert_eq!(serde_json::from_value::<Envelope>(v).unwrap(), e);
        let mut claimed = e.clone();
        claimed.context.headers.jwt = Map::new();
        claimed.context.verified = false;
        let v = serde_json::to_value(&claimed).unwrap();
        assert_eq!(
            v["context"],
            json!({"headers": {"jwt": {}}, "params": {"namespace": "alex"}, "verified": false})
        );
        assert_eq!(serde_json::from_value::<Envelope>(v).unwrap(), claimed);
    }

    #[test]
    fn entries_are_checked() {
        assert_eq!(
            Reply::parse(Some(&bytes(json!({"id": "a", "reply": {"x": 1}})))).unwrap(),
            Reply::Reply {
                id: "a".into(),
                payload: json!({"x": 1})
            }
        );
        assert_eq!(
            Reply::parse(Some(&bytes(json!({"id": "a", "fail": "no"})))).unwrap(),
            Reply::Fail {
                id: "a".into(),
                error: json!("no")
            }
        );
        for bad in [
            json!({"id": "a"}),
            json!({"id": "a", "reply": 1, "fail": 2}),
            json!({"reply": 1}),
            json!([1]),
        ] {
            assert!(Reply::parse(Some(&bytes(bad.clone()))).is_err(), "{bad}");
        }
        assert!(Reply::parse(None).is_err());
        assert!(Reply::parse(Some(b"{nope")).is_err());

        let s = SendEntry::parse(Some(&bytes(
            json!({"username": "alex", "namespace": "alex", "type": "t", "payload": 2}),
        )))
        .unwrap();
        assert_eq!(
            (s.username.as_str(), s.namespace.as_str(), &s.frame),
            ("alex", "/alex", &Frame::new("t", json!(2)))
        );
        assert_eq!(
            SendEntry::parse(Some(&bytes(json!({"username": "u", "type": "t"}))))
                .unwrap()
                .namespace,
            "/"
        );
        for bad in [
            json!({"namespace": "/a", "type": "t"}),
            json!({"username": "u"}),
            json!({"username": "u", "type": 1}),
            json!({"username": "", "type": "t"}),
            json!({"username": "u", "namespace": "/a b", "type": "t"}),
        ] {
            assert!(
                SendEntry::parse(Some(&bytes(bad.clone()))).is_err(),
                "{bad}"
            );
        }
        let b = BroadcastEntry::parse(Some(&bytes(
            json!({"type": "t", "payload": [1], "namespace": "/bob"}),
        )))
        .unwrap();
        assert_eq!(
            (b.namespace.as_deref(), b.frame.payload.clone()),
            (Some("/bob"), json!([1]))
        );
        assert_eq!(
            BroadcastEntry::parse(Some(&bytes(json!({"type": "t"}))))
                .unwrap()
                .namespace,
            None
        );
        assert!(BroadcastEntry::parse(Some(&bytes(json!({"payload": 1})))).is_err());
    }

    /// The router reads only whom an entry is for, with the same rules as the whole parse; an escaped name is
    /// read as the whole parse reads it.
    #[test]
    fn a_send_entrys_target_is_read_without_its_payload() {
        let target = |v: Value| send_target(Some(&bytes(v)));
        assert_eq!(
            target(
                json!({"payload": {"deep": [1, 2]}, "namespace": "alex", "username": "alex", "type": "t"})
            ),
            Ok(("/alex".to_owned(), "alex".to_owned()))
        );
        assert_eq!(
            send_target(Some(br#"{"username": "al\u00e9x", "type": "t"}"#)),
            Ok(("/".to_owned(), "al\u{e9}x".to_owned()))
        );
        assert!(send_target(Some(br#"{"username": "al\nx", "type": "t"}"#)).is_err());
        for bad in [
            json!({"namespace": "/a", "type": "t"}),
            json!({"username": "", "type": "t"}),
            json!({"username": 1, "type": "t"}),
            json!({"username": "u", "namespace": "/a b", "type": "t"}),
            json!(["u"]),
        ] {
            assert!(target(bad.clone()).is_err(), "{bad}");
        }
        assert!(send_target(None).is_err());
        assert!(send_target(Some(b"{nope")).is_err());
    }
}
