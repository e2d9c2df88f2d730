//! The semantics every [`Store`] has: run on the memory store by the unit tests, on Redis by `tests/it`. Each
//! check takes a fresh store and namespace; it panics with what went wrong.

use super::{Change, Cursor, Store};
use crate::config::file::EventKind::{self, *};

fn change(socket: &str, user: Option<&str>, joined: bool, rooms: &[&str]) -> Change {
    Change {
        socket: socket.into(),
        user: user.map(str::to_owned),
        verified: true,
        joined,
        rooms: rooms.iter().map(|r| (*r).to_owned()).collect(),
        socket_event: false,
    }
}

async fn kinds(store: &dyn Store, ns: &str) -> Vec<(EventKind, Option<String>, Option<String>)> {
    let events = store.read(ns, &Cursor::start(), 1_000).await.unwrap();
    for pair in events.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1, "sequence numbers follow");
    }
    events
        .into_iter()
        .map(|e| (e.kind, e.room, e.user))
        .collect()
}

fn ev(
    kind: EventKind,
    room: &str,
    user: Option<&str>,
) -> (EventKind, Option<String>, Option<String>) {
    (kind, Some(room.into()), user.map(str::to_owned))
}

/// First socket and last socket of a room and of a user in it, across two nodes: each event once, in order.
pub async fn transitions_make_events_once(store: &dyn Store) {
    let ns = "/t1";
    store.register(ns).await.unwrap();
    store
        .apply(ns, "a", &change("s1", Some("u"), true, &["r"]))
        .await
        .unwrap();
    store
        .apply(ns, "b", &change("s2", Some("u"), true, &["r"]))
        .await
        .unwrap();
    store
        .apply(ns, "b", &change("s3", Some("v"), true, &["r"]))
        .await
        .unwrap();
    store
        .apply(ns, "a", &change("s1", Some("u"), false, &["r"]))
        .await
        .unwrap();
    store
        .apply(ns, "b", &change("s2", Some("u"), false, &["r"]))
        .await
        .unwrap();
    store
        .apply(ns, "b", &change("s3", Some("v"), false, &["r"]))
        .await
        .unwrap();
    assert_eq!(
        kinds(store, ns).await,
        [
            ev(RoomOccupied, "r", None),
            ev(MemberAdded, "r", Some("u")),
            ev(MemberAdded, "r", Some("v")),
            ev(MemberRemoved, "r", Some("u")),
            ev(MemberRemoved, "r", Some("v")),
            ev(RoomVacated, "r", None),
        ]
    );
    assert!(store.namespaces().await.unwrap().contains(&ns.to_owned()));
}

/// A node's contribution is taken away once, with the events of what it held last; its late leaves change
/// nothing.
pub async fn reaping_a_node_takes_its_sockets_once(store: &dyn Store) {
    let ns = "/t2";
    store.register(ns).await.unwrap();
    store
        .apply(ns, "a", &change("s1", Some("u"), true, &["r", "q"]))
        .await
        .unwrap();
    store
        .apply(ns, "b", &change("s2", Some("w"), true, &["q"]))
        .await
        .unwrap();
    let written = store.reap(ns, "a").await.unwrap();
    assert_eq!(written, 3, "u left r and q, r vacated");
    assert_eq!(
        store.reap(ns, "a").await.unwrap(),
        0,
        "reaping is idempotent"
    );
    store
        .apply(ns, "a", &change("s1", Some("u"), false, &["r", "q"]))
        .await
        .unwrap();
    let events = kinds(store, ns).await;
    assert_eq!(events.len(), 8, "{events:?}");
    let tail = &events[5..];
    assert!(tail.contains(&ev(MemberRemoved, "r", Some("u"))));
    assert!(tail.contains(&ev(MemberRemoved, "q", Some("u"))));
    assert_eq!(tail.last(), Some(&ev(RoomVacated, "r", None)));
    store
        .apply(ns, "b", &change("s2", Some("w"), false, &["q"]))
        .await
        .unwrap();
    let events = kinds(store, ns).await;
    assert_eq!(
        &events[8..],
        [
            ev(MemberRemoved, "q", Some("w")),
            ev(RoomVacated, "q", None)
        ]
    );
}

/// Socket events when asked; unverified identities marked so.
pub async fn socket_events_and_verified_flags(store: &dyn Store) {
    let ns = "/t3";
    let mut c = change("s1", Some("u"), true, &["r"]);
    c.socket_event = true;
    c.verified = false;
    store.apply(ns, "a", &c).await.unwrap();
    let events = store.read(ns, &Cursor::start(), 10).await.unwrap();
    assert_eq!(events[0].kind, SocketConnected);
    assert_eq!(events[0].socket.as_deref(), Some("s1"));
    assert_eq!(events[2].kind, MemberAdded);
    assert_eq!(events[2].verified, Some(false));
    let after = Cursor {
        id: events[0].id.clone(),
        seq: events[0].seq,
    };
    let rest = store.read(ns, &after, 10).await.unwrap();
    assert_eq!(rest.len(), 2, "reads start after the cursor");
}

/// One lease holder at a time; only it moves the cursor.
pub async fn leases_fence_the_cursor(store: &dyn Store) {
    let ns = "/t4";
    assert_eq!(store.cursor(ns, "h").await.unwrap(), Cursor::start());
    assert!(store.lease(ns, "h", "a", 10_000).await.unwrap());
    assert!(store.lease(ns, "h", "a", 10_000).await.unwrap(), "renewed");
    assert!(!store.lease(ns, "h", "b", 10_000).await.unwrap());
    let to = Cursor {
        id: "5-1".into(),
        seq: 3,
    };
    assert!(!store.advance(ns, "h", "b", &to).await.unwrap());
    assert!(store.advance(ns, "h", "a", &to).await.unwrap());
    assert_eq!(store.cursor(ns, "h").await.unwrap(), to);
    assert!(store.lease(ns, "h2", "b", 50).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    assert!(
        store.lease(ns, "h2", "a", 10_000).await.unwrap(),
        "an expired lease is taken over"
    );
}

/// Every check, in turn.
pub async fn all(store: &dyn Store) {
    transitions_make_events_once(store).await;
    reaping_a_node_takes_its_sockets_once(store).await;
    socket_events_and_verified_flags(store).await;
    leases_fence_the_cursor(store).await;
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_memory_store_conforms() {
        super::all(&super::super::MemoryStore::default()).await;
    }
}
