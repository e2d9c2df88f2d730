//! The plain WebSocket endpoint (`[gateway] path`): who connects is checked before the upgrade (the namespace,
//! then the namespace's own auth: `[gateway]`'s JWT only where the namespace verifies nobody), then JSON text
//! frames both ways, held to `SOCKET_EVENT_RATE`, pings to keep idle connections alive and to close dead ones.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{
        RawQuery, State,
        ws::{
            CloseFrame, Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
        },
    },
    http::{Extensions, HeaderMap, StatusCode, header::AUTHORIZATION},
    response::{IntoResponse, Response},
    routing::get,
};
use futures_util::{StreamExt, stream::SplitSink};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::{
    Gateway,
    wire::{self, Frame},
    writer::Writer,
};
use crate::realtime::{
    admission::{Refused, Slot},
    auth::{AuthError, Handshake, Verifier},
    bus::{Bus, Client, Delivery, Outgoing, Sink},
};

/// Frames waiting to be written to one client; beyond it, new ones are dropped for it (it is not reading).
const CLIENT_QUEUE: usize = 256;
/// A client written to less than this before is busy: its frames wait for its serving task, which writes them
/// together ([`Writer`]).
const BUSY: Duration = Duration::from_millis(1);
/// Largest message the WebSocket layer takes; [`wire::MAX_FRAME_BYTES`] is checked after, with an error frame.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// tungstenite zeroes its whole read buffer (128 KiB by default) before every read, including the reads that
/// find nothing, once per frame in or out: that `memset` was 14% of the machine's CPU in the bench's gateway
/// round trip (BENCHMARKS.md, "Gateway"). Frames are small; the buffer grows for a large one.
const READ_BUFFER_BYTES: usize = 4096;
/// The close code of a failed `onconnect` (4000-4999: the application's).
const CLOSE_REFUSED: u16 = 4000;
/// The close code of a client over `SOCKET_EVENT_RATE` (RFC 6455's policy violation).
const CLOSE_POLICY: u16 = 1008;

pub fn routes(gateway: Arc<Gateway>) -> Router {
    let path = gateway.path().to_owned();
    Router::new().route(&path, get(connect)).with_state(gateway)
}

fn refuse(status: StatusCode, error: String) -> Response {
    (status, Json(serde_json::json!({ "error": error }))).into_response()
}

/// Checks the namespace and who connects (with the namespace's own auth), then upgrades.
async fn connect(
    State(gateway): State<Arc<Gateway>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    extensions: Extensions,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let named = query.as_deref().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "namespace")
            .map(|(_, v)| v.into_owned())
    });
    let namespace = match wire::namespace(named.as_deref()) {
        Ok(ns) => ns,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("invalid namespace: {e}")),
    };
    let Some(ns) = gateway.namespaces.find(&namespace).filter(|ns| ns.gateway) else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no gateway namespace {namespace:?}"),
        );
    };
    // Counted like Socket.IO clients, in the same order: the node's rate of new connections and the allowed
    // origins before any verification (a password check costs tens of milliseconds), a place among the
    // verifications that wait (a password, the webhook), then a place under the socket cap once verified.
    let origin = headers
        .get(axum::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    let verifying = gateway
        .admission
        .new_session()
        .and_then(|()| gateway.admission.origin(origin))
        .and_then(|()| {
            ns.verifier
                .waits()
                .then(|| gateway.admission.verifying())
                .transpose()
        });
    let verifying = match verifying {
        Ok(v) => v,
        Err(e) => return refuse(limit_status(&e), e.to_string()),
    };
    let basic = matches!(ns.verifier, Verifier::Credentials(_))
        .then(|| basic_auth(&headers))
        .flatten();
    let handshake = Handshake {
        query: query.as_deref(),
        auth: basic.as_ref(),
        headers: &headers,
        // For the failed-login backoff of `credentials` namespaces.
        address: crate::realtime::observe::peer(&extensions),
        cross_site: gateway.admission.cross_site(&headers),
    };
    // `[gateway]`'s keys for identities a namespace does not verify itself; each other namespace its own auth, so
    // one tenant's token (or `[gateway]`'s) never opens another's namespace.
    let verified = match &ns.verifier {
        Verifier::None | Verifier::Claim => gateway.jwt.verify(handshake),
        own => own.verify(handshake).await,
    };
    drop(verifying);
    let verified = match verified {
        Ok(v) => v,
        Err(e) => return refuse(refusal_status(&e), e.to_string()),
    };
    let slot = match gateway.admission.slot() {
        Ok(slot) => slot,
        Err(e) => return refuse(limit_status(&e), e.to_string()),
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "a WebSocket upgrade is expected here".into(),
            );
        }
    };
    let params = Arc::new(crate::realtime::bus::params(query.as_deref(), &namespace));
    let client = Client {
        socket: uuid::Uuid::new_v4().simple().to_string(),
        namespace,
        username: verified.id_user.unwrap_or_default(),
        claims: verified.claims.unwrap_or_default(),
        // A JWT, a password or the webhook said who it is.
        verified: true,
        params,

        // Replaced in `serve`, which owns the websocket.
        sink: Box::new(mpsc::channel(1).0),
    };
    upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        // Refused at its header: a frame is otherwise read whole before the message size is checked.
        .max_frame_size(MAX_MESSAGE_BYTES)
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| serve(gateway, socket, client, slot))
}

/// The HTTP status of a limit.
fn limit_status(e: &Refused) -> StatusCode {
    match e {
        Refused::Full(_) | Refused::Verifying(_) => StatusCode::SERVICE_UNAVAILABLE,
        Refused::Namespaces(_) => StatusCode::BAD_REQUEST,
        Refused::TooFast => StatusCode::TOO_MANY_REQUESTS,
        Refused::Origin => StatusCode::FORBIDDEN,
    }
}

/// The HTTP status of a refused verification.
fn refusal_status(e: &AuthError) -> StatusCode {
    match e {
        AuthError::CrossSite => StatusCode::FORBIDDEN,
        AuthError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        AuthError::Backoff(_) => StatusCode::TOO_MANY_REQUESTS,
        AuthError::Webhook(_) => StatusCode::BAD_GATEWAY,
        AuthError::Invalid(_) => StatusCode::BAD_REQUEST,
        AuthError::Unauthorized | AuthError::Token(_) | AuthError::Rejected => {
            StatusCode::UNAUTHORIZED
        }
    }
}

/// `Authorization: Basic` as the `auth` object a Socket.IO client of a `credentials` namespace sends,
/// `{"username", "password"}`; `None` without one, or when it is not base64 of UTF-8 `username:password`.
fn basic_auth(headers: &HeaderMap) -> Option<serde_json::Value> {
    use base64::Engine;
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let (username, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some(serde_json::json!({ "username": username, "password": password }))
}

/// A plain WebSocket client as the gateway's [`Sink`]: frames are written by whoever delivers them.
#[derive(Debug)]
struct WsSink {
    writer: Arc<Writer<SplitSink<WebSocket, Message>, Message>>,
    /// Taken by the first `Close`: the serving task sends the close frame and ends.
    close: std::sync::Mutex<Option<oneshot::Sender<Value>>>,
}

impl Sink for WsSink {
    fn deliver(&self, out: Outgoing) -> Delivery {
        match out {
            Outgoing::Frame(frame) => self.writer.send(text(&frame)),
            Outgoing::Close(error) => match self.close.lock().unwrap().take() {
                Some(close) => {
                    self.writer.shut();
                    let _ = close.send(error);
                    Delivery::Taken
                }
                None => Delivery::Closed,
            },
        }
    }
}

fn text(frame: &Frame) -> Message {
    Message::text(serde_json::to_string(frame).expect("plain types"))
}

/// One client, until it or the gateway closes.
async fn serve(gateway: Arc<Gateway>, socket: WebSocket, mut client: Client, _slot: Slot) {
    let (out, mut inbound) = socket.split();
    let writer = Arc::new(Writer::new(out, CLIENT_QUEUE, BUSY));
    let (close, mut closed) = oneshot::channel();
    client.sink = Box::new(WsSink {
        writer: writer.clone(),
        close: std::sync::Mutex::new(Some(close)),
    });
    let (namespace, id) = (client.namespace.clone(), client.socket.clone());
    gateway.open(client).await;
    let rate = gateway.event_rate.as_ref().map(|q| q.limiter());
    let every = gateway.config.ping_interval();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut heard = Instant::now();
    // The frame the connection ends with, if any.
    let mut last = None;
    let reason = loop {
        tokio::select! {
            msg = inbound.next() => {
                heard = Instant::now();
                let reply = match msg {
                    None => break "transport close",
                    Some(Err(_)) => break "transport error",
                    Some(Ok(Message::Close(_))) => break "client close",
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    // Held to SOCKET_EVENT_RATE like a Socket.IO socket: told why, then closed.
                    Some(Ok(_)) if rate.as_ref().is_some_and(|r| r.check().is_err()) => {
                        gateway.metrics.sockets_rate_limited.inc();
                        tracing::warn!(socket = id, namespace, "gateway client over its event rate, closed");
                        let per_second = gateway.event_rate.as_ref().map_or(0, |q| q.events());
                        let why = format!("too many messages: at most {per_second} per second; closing");
                        writer.send(text(&Frame::error(why)));
                        last = Some(Message::Close(Some(CloseFrame { code: CLOSE_POLICY, reason: "rate limited".into() })));
                        break "rate limited";
                    }
                    Some(Ok(Message::Binary(_))) => Frame::error("binary frames are not accepted: send JSON text"),
                    Some(Ok(Message::Text(t))) => match Frame::parse(t.as_str()) {
                        Ok(frame) => {
                            gateway.message(&namespace, &id, frame).await;
                            continue;
                        }
                        Err(why) => Frame::error(why),
                    },
                };
                writer.send(text(&reply));
            }
            () = std::future::poll_fn(|cx| writer.poll_write(cx)) => break "transport error",
            Ok(error) = &mut closed => {
                let reason = super::close_reason(&error);
                last = Some(Message::Close(Some(CloseFrame { code: CLOSE_REFUSED, reason: reason.into() })));
                break "onconnect failed";
            }
            _ = ping.tick() => {
                if heard.elapsed() > every * 2 {
                    break "ping timeout";
                }
                writer.send(Message::Ping(Default::default()));
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.close(last)).await;
    gateway.close(&namespace, &id, reason.to_owned()).await;
}
