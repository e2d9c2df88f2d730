//! `POST /send` (as in the reliable push service): the application's backend pushes an event to rooms of a namespace,
//! on every node.
//!
//! `POST /send?site=<namespace without its slash>&apiKey=<key>` (or `Authorization: Bearer <key>`), with a JSON
//! body `{"rooms": [...], "event": "...", "args": [...]}` or the same as an extended form
//! (`rooms[]=a&event=e&args[0]=x&args[1][id]=1`, [`super::form`]); `rooms` may be one string. The reliable push
//! service's names, so its backends work unchanged.

use super::AppState;
use crate::{
    domain::validate,
    error::AppError,
    realtime::{
        args::{Args, Relayed},
        deliver::{Deliver, DeliverError, Outgoing},
    },
};
use axum::{
    Json,
    body::Body,
    extract::State,
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::Value;

/// Largest `POST /send` body.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// How much of a too-large body is still read (and thrown away) before the `413`, and for how long at most.
const DRAIN_BYTES: usize = 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);
/// Most rooms one push may name.
const MAX_ROOMS: usize = 1000;
/// Longest event name, in characters.
const MAX_EVENT_CHARS: usize = 128;
use crate::domain::validate::RESERVED_EVENTS;

/// `?site=&apiKey=&resync=`.
#[derive(Debug, Default, serde::Deserialize)]
struct Params {
    site: Option<String>,
    #[serde(rename = "apiKey")]
    api_key: Option<String>,
    resync: Option<String>,
}

/// A checked push.
#[derive(Debug, PartialEq)]
struct Push {
    rooms: Vec<String>,
    event: String,
    args: Args,
}

/// What `POST /send` answers.
#[derive(Debug, Serialize)]
struct Sent<'a> {
    namespace: &'a str,
    event: &'a str,
    rooms: Vec<RoomSent<'a>>,
}

/// One room of the answer: how many messages were queued for reliable delivery (1 in a user room, 0 elsewhere:
/// only live sockets get the event), and how many old ones the room's cap dropped to make room.
#[derive(Debug, Serialize)]
struct RoomSent<'a> {
    room: &'a str,
    queued: u64,
    #[serde(skip_serializing_if = "is_zero")]
    dropped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub(super) async fn send(
    State(s): State<AppState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    // Read first, whatever the answer will be: a client still writing its body when the node answers and closes
    // sees a reset instead of the answer.
    let body = collect(body).await;
    let params: Params = serde_urlencoded::from_str(uri.query().unwrap_or(""))
        .map_err(|e| AppError::BadQuery(e.to_string()))?;
    let site = params
        .site
        .filter(|s| !s.is_empty())
        .ok_or(AppError::BadField("site", "is required".into()))?;
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let key = params
        .api_key
        .as_deref()
        .or(bearer)
        .filter(|k| !k.is_empty())
        .ok_or(AppError::BadField(
            "apiKey",
            "is required (or Authorization: Bearer <key>)".into(),
        ))?;
    // An unknown site and a wrong key get the same answer, after the same work: a key check.
    let namespace = s.namespaces.site(&site);
    let accepted = match namespace.and_then(|n| n.api_key.as_ref()) {
        Some(expected) => expected.matches(key),
        None => {
            let _ = crate::domain::secret::equal(key.as_bytes(), b"no such site");
            false
        }
    };
    let (Some(namespace), true) = (namespace, accepted) else {
        return Err(AppError::UnknownSite);
    };
    let resync = matches!(params.resync.as_deref(), Some("true" | "1"));
    let push = read_body(&headers, body?)?;
    let ns = namespace.pattern.to_string();
    let deliver = Deliver {
        push: s.push.clone(),
        store: s.delivery.get().cloned(),
        metrics: s.metrics.clone(),
        relay: s.cluster.clone(),
    };
    let args = Relayed::from(&push.args);
    let out = Outgoing {
        ns: &ns,
        rooms: &push.rooms,
        except: &[],
        event: &push.event,
        args: &args,
        resync,
    };
    let stored = deliver
        .push(namespace.reliable.as_ref(), out)
        .await
        .map_err(|e| match e {
            DeliverError::Room { .. } => AppError::BadField("rooms", e.to_string()),
            e => AppError::PushFailed(e.to_string()),
        })?;
    let sent = Sent {
        namespace: &ns,
        event: &push.event,
        rooms: push
            .rooms
            .iter()
            .map(|room| {
                let pushed = stored.iter().find(|(k, _)| k.room() == room);
                RoomSent {
                    room,
                    queued: u64::from(pushed.is_some()),
                    dropped: pushed.map_or(0, |(_, p)| p.dropped),
                }
            })
            .collect(),
    };
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(serde_json::to_value(&sent).expect("plain types")),
    )
        .into_response())
}

/// The body, up to [`MAX_BODY_BYTES`]. A larger one is read on and thrown away up to [`DRAIN_BYTES`] (for at
/// most [`DRAIN_TIME`]), so that its client gets to read the `413`.
async fn collect(body: Body) -> Result<axum::body::Bytes, AppError> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut kept = Vec::new();
    let mut seen = 0usize;
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    loop {
        let next = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(next) => next,
            Err(_) => return Err(AppError::PayloadTooLarge(MAX_BODY_BYTES)),
        };
        match next {
            None => break,
            Some(Ok(chunk)) => {
                seen += chunk.len();
                if seen <= MAX_BODY_BYTES {
                    kept.extend_from_slice(&chunk);
                } else if seen > DRAIN_BYTES {
                    break;
                }
            }
            Some(Err(_)) => {
                return Err(AppError::BadField("body", "could not be read".into()));
            }
        }
    }
    match seen <= MAX_BODY_BYTES {
        true => Ok(kept.into()),
        false => Err(AppError::PayloadTooLarge(MAX_BODY_BYTES)),
    }
}

/// Reads and checks the body: JSON or the extended form encoding, nothing else.
fn read_body(headers: &HeaderMap, bytes: axum::body::Bytes) -> Result<Push, AppError> {
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    let json = match kind.as_deref() {
        Some("application/json") => true,
        Some("application/x-www-form-urlencoded") => false,
        _ => return Err(AppError::UnsupportedMediaType),
    };
    let value: Value = match json {
        true => serde_json::from_slice(&bytes)
            .map_err(|e| AppError::BadField("body", format!("is not JSON: {e}")))?,
        false => {
            super::form::parse(&bytes).map_err(|e| AppError::BadField("body", e.to_string()))?
        }
    };
    check(value)
}

/// The rules of a push, each refusal naming its field.
fn check(value: Value) -> Result<Push, AppError> {
    let Value::Object(mut body) = value else {
        return Err(AppError::BadField("body", "must be an object".into()));
    };
    let rooms = match body.remove("rooms") {
        Some(Value::String(room)) => vec![room],
        Some(Value::Array(rooms)) => rooms
            .into_iter()
            .map(|r| match r {
                Value::String(room) => Ok(room),
                _ => Err(AppError::BadField("rooms", "must be strings".into())),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(AppError::BadField(
                "rooms",
                "must be a room name or a list of them".into(),
            ));
        }
        None => return Err(AppError::BadField("rooms", "is required".into())),
    };
    if rooms.is_empty() || rooms.len() > MAX_ROOMS {
        return Err(AppError::BadField(
            "rooms",
            format!("must name 1 to {MAX_ROOMS} rooms"),
        ));
    }
    for room in &rooms {
        validate::room(room).map_err(|e| AppError::BadField("rooms", format!("{room:?}: {e}")))?;
    }
    let event = match body.remove("event") {
        Some(Value::String(event)) => event,
        Some(_) => return Err(AppError::BadField("event", "must be a string".into())),
        None => return Err(AppError::BadField("event", "is required".into())),
    };
    if event.is_empty()
        || event.chars().nth(MAX_EVENT_CHARS).is_some()
        || event.chars().any(char::is_control)
    {
        return Err(AppError::BadField(
            "event",
            format!("must be 1 to {MAX_EVENT_CHARS} characters, none of them control characters"),
        ));
    }
    if RESERVED_EVENTS.contains(&event.as_str()) {
        return Err(AppError::BadField(
            "event",
            format!("{event:?} is reserved by socket.io clients"),
        ));
    }
    let args = match body.remove("args") {
        None | Some(Value::Null) => Args::default(),
        Some(Value::Array(args)) => Args(args),
        Some(_) => {
            return Err(AppError::BadField(
                "args",
                "must be a list of arguments".into(),
            ));
        }
    };
    let mut rooms = rooms;
    let mut seen = std::collections::HashSet::new();
    rooms.retain(|r| seen.insert(r.clone()));
    Ok(Push { rooms, event, args })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        check(v).unwrap_err().to_string()
    }

    #[test]
    fn checks_pushes() {
        let p = check(
            json!({"rooms": ["user_1", "staff", "user_1"], "event": "update_store",
            "args": ["user", {"id": 1}]}),
        )
        .unwrap();
        assert_eq!(p.rooms, ["user_1", "staff"]);
        assert_eq!(p.event, "update_store");
        assert_eq!(p.args.0, [json!("user"), json!({"id": 1})]);
        let p = check(json!({"rooms": "staff", "event": "e"})).unwrap();
        assert_eq!(p.rooms, ["staff"]);
        assert!(p.args.0.is_empty());
        assert_eq!(err(json!([])), "invalid body: must be an object");
        assert_eq!(err(json!({"event": "e"})), "invalid rooms: is required");
        assert_eq!(
            err(json!({"rooms": [], "event": "e"})),
            "invalid rooms: must name 1 to 1000 rooms"
        );
        assert_eq!(
            err(json!({"rooms": [1], "event": "e"})),
            "invalid rooms: must be strings"
        );
        assert!(err(json!({"rooms": ["a/b"], "event": "e"})).starts_with("invalid rooms: \"a/b\""));
        assert_eq!(err(json!({"rooms": "a"})), "invalid event: is required");
        assert_eq!(
            err(json!({"rooms": "a", "event": 3})),
            "invalid event: must be a string"
        );
        assert_eq!(
            err(json!({"rooms": "a", "event": "disconnect"})),
            "invalid event: \"disconnect\" is reserved by socket.io clients"
        );
        assert!(err(json!({"rooms": "a", "event": ""})).starts_with("invalid event: must be 1 to"));
        assert_eq!(
            err(json!({"rooms": "a", "event": "e", "args": {"id": 1}})),
            "invalid args: must be a list of arguments"
        );
    }
}
