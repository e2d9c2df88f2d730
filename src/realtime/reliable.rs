//! Reliable delivery on the socket side (as in the reliable push service): a socket joining user rooms holds them in
//! the store and gets each room's pending messages as one `batch` event, whose ack removes exactly those; leaving, it
//! lets them go (their messages expire `client_ttl_s` after the room's last socket left, on any node).
//!
//! [`super::deliver`] stores and emits the live messages (of `POST /send` and the emitter); this module only handles
//! joins and leaves, and [`hold_again`] writes this node's holders once more when the other nodes may have forgotten them.

use std::{sync::Arc, time::Duration};

use serde_json::Value;
use socketioxide::{AckError, SocketIo, adapter::Adapter, extract::SocketRef};

use super::{namespaces::Reliable, node::NodeInfo};
use crate::delivery::{Batch, Holder, RoomKey, ids};

/// How long a `batch` waits for its ack; unacknowledged, its messages stay pending for the next join.
const BATCH_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// How many sockets [`hold_again`] handles at once (their Redis commands share the store's connection).
const HOLD_AGAIN_AT_ONCE: usize = 64;

/// The user rooms a socket holds in the store, in its extensions from its first user room on.
#[derive(Debug)]
pub struct Held {
    holder: Holder,
    rooms: std::sync::Mutex<Vec<RoomKey>>,
}

impl Held {
    fn rooms(&self) -> Vec<RoomKey> {
        self.rooms.lock().unwrap().clone()
    }

    fn holds(&self, room: &RoomKey) -> bool {
        self.rooms.lock().unwrap().contains(room)
    }
}

/// The socket joined `rooms`: it holds the user rooms among them and gets each one's pending messages as one
/// `batch`. A store error is logged; the socket stays connected (its messages stay pending).
pub async fn joined<A: Adapter>(
    socket: &SocketRef<A>,
    node: &NodeInfo,
    reliable: &Reliable,
    rooms: &[String],
) {
    let Some(store) = node.delivery() else {
        return;
    };
    let keys: Vec<RoomKey> = rooms
        .iter()
        .filter(|room| reliable.is_user_room(room))
        .filter_map(|room| RoomKey::new(socket.ns(), room).ok())
        .collect();
    if keys.is_empty() {
        return;
    }
    let held = match socket.extensions.get::<Arc<Held>>() {
        Some(held) => held,
        None => match Holder::new(&node.id, &socket.id.to_string()) {
            Ok(holder) => {
                let held = Arc::new(Held {
                    holder,
                    rooms: Default::default(),
                });
                socket.extensions.insert(held.clone());
                held
            }
            Err(e) => {
                tracing::warn!(error = %e, "socket cannot hold user rooms");
                return;
            }
        },
    };
    // Listed before the first await: a disconnect from here on lets the rooms go.
    let keys: Vec<RoomKey> = {
        let mut rooms = held.rooms.lock().unwrap();
        let new: Vec<RoomKey> = keys.into_iter().filter(|k| !rooms.contains(k)).collect();
        rooms.extend(new.iter().cloned());
        new
    };
    let holder = held.holder.clone();
    for key in &keys {
        if let Err(e) = store.occupied(key, &holder).await {
            tracing::warn!(room = key.room(), error = %e, "user room not held: its messages may expire");
        }
    }
    if !socket.connected() {
        // Gone while we were taking the rooms: its disconnect handler may have run before them.
        left(node, &held).await;
        return;
    }
    for key in keys {
        send_pending(socket, node, reliable, key).await;
    }
}

/// Sends the room's pending messages to the socket as one `batch`, and removes them from the store when it acks.
async fn send_pending<A: Adapter>(
    socket: &SocketRef<A>,
    node: &NodeInfo,
    reliable: &Reliable,
    key: RoomKey,
) {
    let Some(store) = node.delivery() else {
        return;
    };
    let pending = match store.pending(&key).await {
        Ok(pending) => pending,
        Err(e) => {
            tracing::warn!(room = key.room(), error = %e, "pending messages not read");
            return;
        }
    };
    if pending.is_empty() {
        return;
    }
    let batch = match reliable.message_ids {
        true => Batch::with_ids(&pending),
        false => Batch::of(&pending),
    };
    let ids = ids(&pending);
    let ack = match socket
        .timeout(BATCH_ACK_TIMEOUT)
        .emit_with_ack::<_, Value>("batch", &batch)
    {
        Ok(ack) => {
            node.observer.sent(socket, "batch", &batch);
            ack
        }
        Err(e) => {
            tracing::debug!(room = key.room(), error = %e, "batch not sent");
            return;
        }
    };
    let store = store.clone();
    tokio::spawn(async move {
        if !matches!(ack.await, Ok(_) | Err(AckError::Decode(_))) {
            return;
        }
        if let Err(e) = store.ack(&key, &ids).await {
            tracing::warn!(room = key.room(), error = %e, "batch ack not stored: it will come again");
        }
    });
}

/// The socket left `room` (a new `id_user` or session) and joined `joined`: it lets the old room go if it was a
/// user room, and holds the new one (with its `batch`) if it is one.
pub async fn moved<A: Adapter>(
    socket: &SocketRef<A>,
    node: &NodeInfo,
    room: Option<String>,
    joined_room: String,
) {
    let Some(reliable) = node
        .namespaces
        .find(socket.ns())
        .and_then(|ns| ns.reliable.as_ref())
    else {
        return;
    };
    if let (Some(room), Some(held)) = (room, socket.extensions.get::<Arc<Held>>())
        && room != joined_room
        && let Ok(key) = RoomKey::new(socket.ns(), &room)
    {
        let was_held = {
            let mut rooms = held.rooms.lock().unwrap();
            let before = rooms.len();
            rooms.retain(|k| *k != key);
            rooms.len() != before
        };
        if was_held {
            vacate(node, &held.holder, &[key]).await;
        }
    }
    joined(socket, node, reliable, &[joined_room]).await;
}

/// The socket left: it no longer holds its user rooms.
pub async fn disconnected<A: Adapter>(socket: &SocketRef<A>, node: &NodeInfo) {
    if let Some(held) = socket.extensions.get::<Arc<Held>>() {
        left(node, &held).await;
    }
}

async fn left(node: &NodeInfo, held: &Held) {
    vacate(node, &held.holder, &held.rooms()).await;
}

async fn vacate(node: &NodeInfo, holder: &Holder, rooms: &[RoomKey]) {
    let Some(store) = node.delivery() else {
        return;
    };
    for key in rooms {
        if let Err(e) = store.vacated(key, holder, node.ttl_of(key)).await {
            tracing::warn!(room = key.room(), error = %e, "user room not let go");
        }
    }
}

/// Holds again every user room of every socket of this node, and sends each socket the pending messages of the
/// rooms it holds again as a `batch`; returns how many holders were written.
///
/// For when this node comes back from being cut off from the cluster (paused, stalled, or away from Redis) long
/// enough for the others to declare it down: they forgot its holders ([`crate::delivery::Store::forget_node`])
/// while its sockets stayed connected, so those rooms' messages would expire under connected users. `occupied` is
/// idempotent and stops the expiry clock.
pub async fn hold_again<A: Adapter>(io: &SocketIo<A>, node: &NodeInfo) -> u64 {
    use futures_util::StreamExt;
    let Some(store) = node.delivery() else {
        return 0;
    };
    let sockets: Vec<_> = io
        .nsps()
        .into_iter()
        .flat_map(|ns| ns.local().sockets())
        .collect();
    // A socket at a time would be two Redis round trips per room, one after another: 40,000 for 20,000 sockets.
    futures_util::stream::iter(sockets)
        .map(|socket| async move {
            let Some(held) = socket.extensions.get::<Arc<Held>>() else {
                return 0;
            };
            let reliable = node
                .namespaces
                .find(socket.ns())
                .and_then(|ns| ns.reliable.as_ref());
            let mut written = 0;
            for key in held.rooms() {
                let held_again = match store.occupied(&key, &held.holder).await {
                    Ok(()) => {
                        written += 1;
                        true
                    }
                    Err(e) => {
                        tracing::warn!(room = key.room(), error = %e, "user room not held again: its messages may expire");
                        false
                    }
                };
                // Left meanwhile (disconnected, or another user room): its leave may have come before our write.
                if !socket.connected() || !held.holds(&key) {
                    vacate(node, &held.holder, &[key]).await;
                } else if let Some(reliable) = reliable.filter(|_| held_again) {
                    // Messages stored while the room was not held here were sent live to the nodes holding it
                    // then, not to this one: the socket gets them now.
                    send_pending(&socket, node, reliable, key).await;
                }
            }
            written
        })
        .buffer_unordered(HOLD_AGAIN_AT_ONCE)
        .fold(0, |total, written| async move { total + written })
        .await
}
