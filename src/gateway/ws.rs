//! The plain WebSocket endpoint (`[gateway] path`): who connects is checked before the upgrade (namespace, token),
//! then JSON text frames both ways, pings to keep idle connections alive and to close dead ones.

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
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::{
    Gateway,
    wire::{self, Frame},
};
use crate::realtime::{
    admission::{Refused, Slot},
    auth::Handshake,
    bus::{Bus, Client, Outgoing},
};

/// Frames waiting to be written to one client; beyond it, new ones are dropped for it (it is not reading).
const CLIENT_QUEUE: usize = 256;
/// Largest message the WebSocket layer takes; [`wire::MAX_FRAME_BYTES`] is checked after, with an error frame.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// tungstenite zeroes its whole read buffer (128 KiB by default) before every read, including the reads that
/// find nothing, once per frame in or out: that `memset` was 14% of the machine's CPU in the bench's gateway
/// round trip (BENCHMARKS.md, "Gateway"). Frames are small; the buffer grows for a large one.
const READ_BUFFER_BYTES: usize = 4096;
/// The close code of a failed `onconnect` (4000-4999: the application's).
const CLOSE_REFUSED: u16 = 4000;

pub fn routes(gateway: Arc<Gateway>) -> Router {
    let path = gateway.path().to_owned();
    Router::new().route(&path, get(connect)).with_state(gateway)
}

fn refuse(status: StatusCode, error: String) -> Response {
    (status, Json(serde_json::json!({ "error": error }))).into_response()
}

/// Checks the namespace and the token, then upgrades.
async fn connect(
    State(gateway): State<Arc<Gateway>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
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
    if !gateway
        .namespaces
        .find(&namespace)
        .is_some_and(|ns| ns.gateway)
    {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no gateway namespace {namespace:?}"),
        );
    }
    let handshake = Handshake {
        query: query.as_deref(),
        auth: None,
        headers: &headers,
        address: None,
    };
    let verified = match gateway.jwt.verify(handshake) {
        Ok(v) => v,
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, e.to_string()),
    };
    // Counted like Socket.IO clients: the node's socket cap, its rate of new connections, the allowed origins.
    let origin = headers
        .get(axum::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    let slot = match gateway
        .admission
        .new_session()
        .and_then(|()| gateway.admission.admit(origin))
    {
        Ok(slot) => slot,
        Err(e) => {
            let status = match e {
                Refused::Full(_) | Refused::Verifying(_) => StatusCode::SERVICE_UNAVAILABLE,
                Refused::Namespaces(_) => StatusCode::BAD_REQUEST,
                Refused::TooFast => StatusCode::TOO_MANY_REQUESTS,
                Refused::Origin => StatusCode::FORBIDDEN,
            };
            return refuse(status, e.to_string());
        }
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
    let client = Client {
        socket: uuid::Uuid::new_v4().simple().to_string(),
        namespace,
        username: verified.id_user.unwrap_or_default(),
        claims: verified.claims.unwrap_or_default(),
        // Replaced in `serve`, which owns the receiving end.
        sink: mpsc::channel(1).0,
    };
    upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| serve(gateway, socket, client, slot))
}

/// One client, until it or the gateway closes.
async fn serve(gateway: Arc<Gateway>, socket: WebSocket, mut client: Client, _slot: Slot) {
    let (tx, mut rx) = mpsc::channel(CLIENT_QUEUE);
    client.sink = tx;
    let id = client.socket.clone();
    gateway.open(client).await;
    let (mut out, mut inbound) = socket.split();
    let every = gateway.config.ping_interval();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut heard = Instant::now();
    let text = |frame: &Frame| Message::text(serde_json::to_string(frame).expect("plain types"));
    let reason = loop {
        tokio::select! {
            msg = inbound.next() => {
                heard = Instant::now();
                let reply = match msg {
                    None => break "transport close",
                    Some(Err(_)) => break "transport error",
                    Some(Ok(Message::Close(_))) => break "client close",
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Binary(_))) => Frame::error("binary frames are not accepted: send JSON text"),
                    Some(Ok(Message::Text(t))) => match Frame::parse(t.as_str()) {
                        Ok(frame) => {
                            gateway.message(&id, frame).await;
                            continue;
                        }
                        Err(why) => Frame::error(why),
                    },
                };
                if out.send(text(&reply)).await.is_err() {
                    break "transport error";
                }
            }
            next = rx.recv() => match next {
                Some(Outgoing::Frame(frame)) => {
                    if out.send(text(&frame)).await.is_err() {
                        break "transport error";
                    }
                }
                Some(Outgoing::Close(error)) => {
                    let reason = super::close_reason(&error);
                    let close = CloseFrame { code: CLOSE_REFUSED, reason: reason.into() };
                    let _ = out.send(Message::Close(Some(close))).await;
                    break "onconnect failed";
                }
                None => break "server close",
            },
            _ = ping.tick() => {
                if heard.elapsed() > every * 2 {
                    break "ping timeout";
                }
                if out.send(Message::Ping(Default::default())).await.is_err() {
                    break "transport error";
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), out.close()).await;
    gateway.close(&id, reason.to_owned()).await;
}
