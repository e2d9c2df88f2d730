//! A push from the application's backend to rooms of a namespace, cluster-wide: what `POST /send` and the Redis
//! emitter's broadcasts to user rooms share ([`crate::http`], [`crate::emitter`]).
//!
//! Each reliable user room's message is stored, then emitted to the room on every node with an ack callback: the
//! first ack removes it (or, pushed with resync and out of order, clears the room and sends it `resync`); an
//! unacknowledged one comes back in the room's next `batch` ([`super::reliable`]). In a cluster the message goes
//! to the other nodes holding the room, each on its own live channel, and each node applies its own sockets' first
//! ack to the store (not socketioxide's emit with ack across nodes, whose counts and relayed acks were most of a
//! delivery's CPU). The other rooms get the event once, except the sockets in those user rooms, which have it
//! from there with its callback: no socket gets it twice. In a namespace with connection state recovery the emit to the other rooms is recorded for replay (the
//! recording adapter sees a room broadcast); the user rooms' emits carry an ack, so they are not.

use std::{sync::Arc, time::Duration};

use super::{
    args::{Args, Relayed},
    namespaces::Reliable,
    push::{Push, PushError},
};
use crate::{
    cluster::{Cluster, protocol::Live},
    delivery::{Acked, MessageId, Pushed, RoomKey, Store, StoreError, with_id},
    telemetry::metrics::Metrics,
};

/// How long a live message of a user room waits for its first ack; unacknowledged, it stays pending and comes
/// back in the `batch` of the room's next join.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// What a push goes through: the cluster's emits, the delivery store (`None` before start-up set it), the
/// metrics of stored messages.
#[derive(Clone)]
pub struct Deliver {
    pub push: Arc<dyn Push>,
    pub store: Option<Arc<dyn Store>>,
    pub metrics: Arc<Metrics>,
    /// The cluster, which carries stored messages to the other nodes (`None` on a single node: the emit is
    /// local).
    pub relay: Option<Arc<Cluster>>,
}

/// One push: an event to `rooms` of namespace `ns` (every socket of it when empty), except the sockets in any of
/// `except`.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub ns: &'a str,
    pub rooms: &'a [String],
    pub except: &'a [String],
    pub event: &'a str,
    pub args: &'a Relayed,
    /// The reliable push service's `resync=true` (see [`crate::delivery`]).
    pub resync: bool,
}

/// Why a push did not go out (nothing was emitted: a failure of the store comes before any emit).
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("the delivery store is not ready")]
    NotReady,
    /// A user room whose name cannot be a store key.
    #[error("{room:?}: {why}")]
    Room { room: String, why: String },
    #[error("the message could not be stored: {0}")]
    Store(#[from] StoreError),
    /// The store keeps JSON: a binary argument cannot go to a user room.
    #[error("a binary argument cannot be stored for a user room")]
    Binary,
    #[error(transparent)]
    Push(#[from] PushError),
}

impl Deliver {
    /// Stores the message of each user room of `out.rooms` (when `reliable`, unless the room is in `except` too),
    /// emits it live with an ack, and emits the event to the other rooms. Returns what each user room's store did,
    /// in the order of `out.rooms`.
    ///
    /// Stored before anything is emitted: a message the store did not take is not sent at all (the caller retries).
    /// The rooms are independent queues, so they are stored (then emitted) all at once rather than one after
    /// another.
    pub async fn push(
        &self,
        reliable: Option<&Reliable>,
        out: Outgoing<'_>,
    ) -> Result<Vec<(RoomKey, Pushed)>, DeliverError> {
        let user_rooms: Vec<&String> = match reliable {
            Some(r) => out
                .rooms
                .iter()
                .filter(|room| r.is_user_room(room) && !out.except.contains(room))
                .collect(),
            None => Vec::new(),
        };
        let other_rooms: Vec<String> = out
            .rooms
            .iter()
            .filter(|room| !user_rooms.contains(room))
            .cloned()
            .collect();
        let mut stored = Vec::new();
        if let Some(reliable) = reliable.filter(|_| !user_rooms.is_empty()) {
            let store = self.store.as_ref().ok_or(DeliverError::NotReady)?;
            let json = out.args.to_json().ok_or(DeliverError::Binary)?;
            let keys = user_rooms
                .iter()
                .map(|room| {
                    RoomKey::new(out.ns, room).map_err(|e| DeliverError::Room {
                        room: room.to_string(),
                        why: e.to_string(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let pushes = keys.iter().map(|key| async {
                let pushed = store
                    .push(key, out.event, &json.0, out.resync, reliable.policy)
                    .await?;
                self.metrics.delivery_stored.inc();
                self.metrics.delivery_dropped.inc_by(pushed.dropped);
                if pushed.dropped > 0 {
                    tracing::info!(
                        namespace = out.ns,
                        room = key.room(),
                        dropped = pushed.dropped,
                        "user room full: oldest pending messages dropped"
                    );
                }
                Ok::<_, DeliverError>((key.clone(), pushed))
            });
            stored = futures_util::future::try_join_all(pushes).await?;
            let emits = stored.iter().map(|(key, pushed)| {
                let args = match reliable.message_ids {
                    true => Args(with_id(&json.0, pushed.id)),
                    false => json.clone(),
                };
                async move { self.live_with_ack(store, key, pushed, &out, &args).await }
            });
            futures_util::future::join_all(emits).await;
        }
        // Every socket of the namespace when no room was named; none when every room named was a user room.
        if !other_rooms.is_empty() || out.rooms.is_empty() {
            // A socket also in a user room has the message from there, with its ack callback.
            let except = out
                .except
                .iter()
                .cloned()
                .chain(user_rooms.iter().map(|r| r.to_string()))
                .collect();
            self.push
                .emit(out.ns, other_rooms, except, out.event, out.args)
                .await?;
        }
        Ok(stored)
    }

    /// Emits a stored message to its user room with an ack callback, on every node holding the room. In a
    /// cluster it is published to each other node holding it as it was stored ([`Cluster::live`]), each of which
    /// emits to its own sockets and applies their first ack itself ([`acked_here`]); this node does the same for
    /// its sockets if it holds the room. A failed publish or emit is only logged: the message is stored and comes
    /// back in the room's next `batch`.
    async fn live_with_ack(
        &self,
        store: &Arc<dyn Store>,
        key: &RoomKey,
        pushed: &Pushed,
        out: &Outgoing<'_>,
        args: &Args,
    ) {
        let id = pushed.id;
        // In a cluster, this node's sockets of the room get it only if the store counted this node among the room's
        // holders: a socket whose holder was not written yet reads the message in its `batch` instead.
        let mut here = true;
        if let Some(cluster) = &self.relay {
            here = pushed.nodes.iter().any(|n| n == cluster.node());
            if pushed.nodes.iter().any(|n| n != cluster.node()) {
                let live = Live {
                    v: 0,
                    id: uuid::Uuid::nil(),
                    from: String::new(),
                    ns: key.namespace().to_owned(),
                    room: key.room().to_owned(),
                    except: out.except.to_vec(),
                    event: out.event.to_owned(),
                    args: args.0.clone(),
                    message: id.to_string(),
                    to: Vec::new(),
                };
                if let Err(e) = cluster.live(live, &pushed.nodes).await {
                    tracing::warn!(namespace = key.namespace(), room = key.room(), error = %e,
                        "stored message not sent to the other nodes: it comes in their sockets' next batch");
                }
            }
        }
        if !here {
            return;
        }
        let here_only = self.relay.is_some();
        let sent = self.push.emit_with_ack(
            key.namespace(),
            key.room().to_owned(),
            out.except.to_vec(),
            out.event,
            args,
            ACK_TIMEOUT,
            here_only,
        );
        match sent.await {
            Ok(acked) => acked_here(acked, store.clone(), self.push.clone(), key.clone(), id),
            Err(e) => {
                tracing::warn!(namespace = key.namespace(), room = key.room(), error = %e,
                    "stored message not emitted live");
            }
        }
    }
}

/// Emits another node's stored message ([`Live`]) to this node's sockets of its room, and applies their first ack
/// ([`crate::cluster::LocalRooms::live`]). A message that is not for a user room, or whose id does not parse, is
/// dropped (what the storing node sends is checked, but comes from Redis).
pub(super) fn live_from_another_node(push: Arc<dyn Push>, store: Arc<dyn Store>, live: Live) {
    let (Ok(key), Ok(id)) = (RoomKey::new(&live.ns, &live.room), live.message.parse()) else {
        tracing::warn!(
            namespace = live.ns,
            room = live.room,
            "live message with a bad room or id ignored"
        );
        return;
    };
    tokio::spawn(async move {
        let args = Args(live.args);
        let sent = push.emit_with_ack(
            &live.ns,
            live.room.clone(),
            live.except,
            &live.event,
            &args,
            ACK_TIMEOUT,
            true,
        );
        match sent.await {
            Ok(acked) => acked_here(acked, store, push.clone(), key, id),
            // This node no longer serves the namespace (its last socket left a dynamic one): nobody to send it to.
            Err(e) => tracing::debug!(namespace = live.ns, error = %e, "live message not emitted"),
        }
    });
}

/// Waits (in a task of its own: the caller does not wait for clients) for the first ack of this node's sockets,
/// and applies it: it removes the message from the store, or, pushed with resync and out of order, clears the
/// room and sends it `resync`. Sockets of the room on other nodes ack on their node: the first ack in the
/// cluster removes it, the others find it gone.
fn acked_here(
    acked: futures_util::future::BoxFuture<'static, bool>,
    store: Arc<dyn Store>,
    push: Arc<dyn Push>,
    key: RoomKey,
    id: MessageId,
) {
    tokio::spawn(async move {
        if !acked.await {
            return;
        }
        let (ns, room) = (key.namespace(), key.room().to_owned());
        match store.ack_one_with_resync(&key, id).await {
            Ok(Acked::Resync { cleared }) => {
                tracing::debug!(namespace = ns, room, cleared, "out-of-order ack: resync");
                resync(&*push, ns, room).await;
            }
            Ok(Acked::Removed | Acked::Gone) => {}
            Err(e) => {
                tracing::warn!(namespace = ns, room, error = %e, "ack not stored: the message will come again")
            }
        }
    });
}

/// Tells the sockets of a user room that its queue was cleared.
async fn resync(push: &dyn Push, ns: &str, room: String) {
    if let Err(e) = push
        .emit(ns, vec![room], Vec::new(), "resync", &Relayed::default())
        .await
    {
        tracing::warn!(namespace = ns, error = %e, "resync not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{MemoryStore, Policy, Ttl};
    use futures_util::future::BoxFuture;
    use serde_json::json;
    use std::sync::Mutex;

    /// Records what it is asked to emit; nobody acknowledges.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<String>>);

    impl Push for Recorded {
        fn serves(&self, _: &str) -> bool {
            true
        }

        fn emit<'a>(
            &'a self,
            ns: &'a str,
            rooms: Vec<String>,
            except: Vec<String>,
            event: &'a str,
            _: &'a Relayed,
        ) -> BoxFuture<'a, Result<(), PushError>> {
            let line = format!("emit {ns} {event} to {rooms:?} except {except:?}");
            self.0.lock().unwrap().push(line);
            Box::pin(async { Ok(()) })
        }

        fn emit_with_ack<'a>(
            &'a self,
            ns: &'a str,
            room: String,
            except: Vec<String>,
            event: &'a str,
            args: &'a Args,
            _: Duration,
            _: bool,
        ) -> BoxFuture<'a, Result<BoxFuture<'static, bool>, PushError>> {
            let line = format!("ack {ns} {event} to {room} except {except:?} {:?}", args.0);
            self.0.lock().unwrap().push(line);
            Box::pin(async { Ok(Box::pin(async { false }) as BoxFuture<'static, bool>) })
        }
    }

    fn setup() -> (Deliver, Arc<Recorded>, Arc<MemoryStore>, Reliable) {
        let push = Arc::new(Recorded::default());
        let store = Arc::new(MemoryStore::new());
        let deliver = Deliver {
            push: push.clone(),
            store: Some(store.clone()),
            metrics: Arc::default(),
            relay: None,
        };
        let reliable = Reliable {
            prefix: "user.".into(),
            policy: Policy {
                cap: Policy::DEFAULT_CAP,
                ttl: Ttl::Forever,
            },
            message_ids: false,
        };
        (deliver, push, store, reliable)
    }

    fn rooms(r: &[&str]) -> Vec<String> {
        r.iter().map(|r| r.to_string()).collect()
    }

    async fn pending(store: &MemoryStore, room: &str) -> usize {
        let key = RoomKey::new("/", room).unwrap();
        store.pending(&key).await.unwrap().len()
    }

    #[tokio::test]
    async fn user_rooms_are_stored_and_acked_the_others_emitted_once_without_them() {
        let (deliver, push, store, reliable) = setup();
        let args = Relayed::from(&Args(vec![json!(1)]));
        let (to, except) = (rooms(&["user.1", "staff", "user.2"]), rooms(&["muted"]));
        let out = Outgoing {
            ns: "/",
            rooms: &to,
            except: &except,
            event: "news",
            args: &args,
            resync: false,
        };
        let stored = deliver.push(Some(&reliable), out).await.unwrap();
        let names: Vec<&str> = stored.iter().map(|(k, _)| k.room()).collect();
        assert_eq!(names, ["user.1", "user.2"]);
        assert_eq!(pending(&store, "user.1").await, 1);
        let mut lines = push.0.lock().unwrap().clone();
        lines.sort();
        assert_eq!(
            lines,
            [
                r#"ack / news to user.1 except ["muted"] [Number(1)]"#,
                r#"ack / news to user.2 except ["muted"] [Number(1)]"#,
                r#"emit / news to ["staff"] except ["muted", "user.1", "user.2"]"#,
            ]
        );
    }

    #[tokio::test]
    async fn a_user_room_also_excepted_is_not_stored_and_no_room_means_everyone() {
        let (deliver, push, store, reliable) = setup();
        let args = Relayed::default();
        let (to, except) = (rooms(&["user.1", "staff"]), rooms(&["user.1"]));
        let mut out = Outgoing {
            ns: "/",
            rooms: &to,
            except: &except,
            event: "e",
            args: &args,
            resync: false,
        };
        assert!(deliver.push(Some(&reliable), out).await.unwrap().is_empty());
        assert_eq!(pending(&store, "user.1").await, 0);
        out.rooms = &[];
        out.except = &[];
        deliver.push(Some(&reliable), out).await.unwrap();
        assert_eq!(
            *push.0.lock().unwrap(),
            [
                r#"emit / e to ["user.1", "staff"] except ["user.1"]"#,
                r#"emit / e to [] except []"#,
            ]
        );
    }

    #[tokio::test]
    async fn binary_for_a_user_room_is_refused_before_anything_is_stored_or_sent() {
        let (deliver, push, store, reliable) = setup();
        let args = Relayed(vec![crate::realtime::args::Arg::Bytes(vec![1])]);
        let to = rooms(&["user.1", "staff"]);
        let out = Outgoing {
            ns: "/",
            rooms: &to,
            except: &[],
            event: "e",
            args: &args,
            resync: false,
        };
        assert!(matches!(
            deliver.push(Some(&reliable), out).await,
            Err(DeliverError::Binary)
        ));
        assert_eq!(pending(&store, "user.1").await, 0);
        assert!(push.0.lock().unwrap().is_empty());
        // Without reliable delivery, binary goes out like any argument.
        deliver.push(None, out).await.unwrap();
        assert_eq!(push.0.lock().unwrap().len(), 1);
    }
}
