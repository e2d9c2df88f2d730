//! The semantics every [`Store`] has: run on the memory store by the unit tests, on Redis by `tests/it`. Each
//! check takes a fresh store and namespace; it panics with what went wrong.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Applied, Change, Cursor, Stamp, Store};
use crate::config::file::EventKind::{self, *};

/// A stamp of worker 0 numbered after every earlier one, for checks that are not about numbering.
fn next() -> Stamp {
    static N: AtomicU64 = AtomicU64::new(1_000);
    Stamp {
        worker: 0,
        n: N.fetch_add(1, Ordering::Relaxed),
        counted: false,
    }
}

fn stamp(worker: u32, n: u64, counted: bool) -> Stamp {
    Stamp { worker, n, counted }
}

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
        .apply(ns, "a", next(), &change("s1", Some("u"), true, &["r"]))
        .await
        .unwrap();
    store
        .apply(ns, "b", next(), &change("s2", Some("u"), true, &["r"]))
        .await
        .unwrap();
    store
        .apply(ns, "b", next(), &change("s3", Some("v"), true, &["r"]))
        .await
        .unwrap();
    store
        .apply(ns, "a", next(), &change("s1", Some("u"), false, &["r"]))
        .await
        .unwrap();
    store
        .apply(ns, "b", next(), &change("s2", Some("u"), false, &["r"]))
        .await
        .unwrap();
    store
        .apply(ns, "b", next(), &change("s3", Some("v"), false, &["r"]))
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
        .apply(ns, "a", next(), &change("s1", Some("u"), true, &["r", "q"]))
        .await
        .unwrap();
    store
        .apply(ns, "b", next(), &change("s2", Some("w"), true, &["q"]))
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
        .apply(
            ns,
            "a",
            next(),
            &change("s1", Some("u"), false, &["r", "q"]),
        )
        .await
        .unwrap();
    let events = kinds(store, ns).await;
    assert_eq!(events.len(), 8, "{events:?}");
    let tail = &events[5..];
    assert!(tail.contains(&ev(MemberRemoved, "r", Some("u"))));
    assert!(tail.contains(&ev(MemberRemoved, "q", Some("u"))));
    assert_eq!(tail.last(), Some(&ev(RoomVacated, "r", None)));
    store
        .apply(ns, "b", next(), &change("s2", Some("w"), false, &["q"]))
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
    store.apply(ns, "a", next(), &c).await.unwrap();
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

/// A change applied again (a retry after its reply was lost), or an older one, is counted once and writes no
/// event the second time; workers are numbered apart.
pub async fn a_change_applied_again_counts_once(store: &dyn Store) {
    let ns = "/t5";
    let join = change("s1", Some("u"), true, &["r"]);
    let leave = change("s1", Some("u"), false, &["r"]);
    assert_eq!(
        store
            .apply(ns, "a", stamp(0, 1, false), &join)
            .await
            .unwrap(),
        Applied::Events(2)
    );
    assert_eq!(
        store
            .apply(ns, "a", stamp(0, 1, false), &join)
            .await
            .unwrap(),
        Applied::Again
    );
    // Another worker's numbers are its own.
    let other = change("s2", Some("v"), true, &["r"]);
    assert_eq!(
        store
            .apply(ns, "a", stamp(1, 1, false), &other)
            .await
            .unwrap(),
        Applied::Events(1)
    );
    assert_eq!(
        store
            .apply(ns, "a", stamp(0, 2, true), &leave)
            .await
            .unwrap(),
        Applied::Events(1)
    );
    for n in [2, 1] {
        assert_eq!(
            store
                .apply(ns, "a", stamp(0, n, true), &leave)
                .await
                .unwrap(),
            Applied::Again
        );
    }
    let leave = change("s2", Some("v"), false, &["r"]);
    assert_eq!(
        store
            .apply(ns, "a", stamp(1, 2, true), &leave)
            .await
            .unwrap(),
        Applied::Events(2)
    );
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
}

/// A node reaped while its sockets stayed connected: its worker's next change is refused (`Reaped`), and its
/// sockets are counted again by `restore` (once: a second restore finds them counted), so their later leaves
/// vacate the room again.
pub async fn a_reaped_worker_restores_its_sockets(store: &dyn Store) {
    let ns = "/t6";
    store.register(ns).await.unwrap();
    let join = change("s1", Some("u"), true, &["r"]);
    store
        .apply(ns, "a", stamp(0, 1, false), &join)
        .await
        .unwrap();
    assert_eq!(store.reap(ns, "a").await.unwrap(), 2);
    let more = change("s1", Some("u"), true, &["q"]);
    assert_eq!(
        store
            .apply(ns, "a", stamp(0, 2, true), &more)
            .await
            .unwrap(),
        Applied::Reaped,
        "nothing counted on a reaped contribution"
    );
    assert_eq!(kinds(store, ns).await.len(), 4);
    let now = change("s1", Some("u"), true, &["r", "q"]);
    assert_eq!(
        store
            .restore(ns, "a", stamp(0, 3, false), std::slice::from_ref(&now))
            .await
            .unwrap(),
        Some(4)
    );
    assert_eq!(
        store
            .restore(ns, "a", stamp(0, 4, false), std::slice::from_ref(&now))
            .await
            .unwrap(),
        None,
        "counted already"
    );
    let leave = change("s1", Some("u"), false, &["r", "q"]);
    assert_eq!(
        store
            .apply(ns, "a", stamp(0, 5, true), &leave)
            .await
            .unwrap(),
        Applied::Events(4)
    );
    let events = kinds(store, ns).await;
    assert_eq!(events.len(), 12, "{events:?}");
    assert_eq!(
        &events[..4],
        [
            ev(RoomOccupied, "r", None),
            ev(MemberAdded, "r", Some("u")),
            ev(MemberRemoved, "r", Some("u")),
            ev(RoomVacated, "r", None),
        ]
    );
    assert_eq!(events[4], ev(RoomOccupied, "r", None));
    assert!(events[4..8].contains(&ev(RoomOccupied, "q", None)));
    assert_eq!(events[11].0, RoomVacated);
}

/// Reaping a node writes `socket.disconnected` for each of its sockets whose `socket.connected` was written, after
/// its rooms' events, with the user and verified flag; a late disconnect then writes it no second time.
pub async fn reaping_disconnects_the_sockets(store: &dyn Store) {
    let ns = "/t7";
    store.register(ns).await.unwrap();
    let mut s1 = change("s1", Some("u"), true, &["r"]);
    s1.socket_event = true;
    s1.verified = false;
    let mut s2 = change("s2", None, true, &[]);
    s2.socket_event = true;
    let s3 = change("s3", Some("w"), true, &["r"]);
    for c in [&s1, &s2, &s3] {
        store.apply(ns, "a", next(), c).await.unwrap();
    }
    let mut gone = change("s2", None, false, &[]);
    gone.socket_event = true;
    let mut s4 = change("s4", None, true, &[]);
    s4.socket_event = true;
    for c in [&s4, &gone] {
        store.apply(ns, "a", next(), c).await.unwrap();
    }
    let before = store.read(ns, &Cursor::start(), 100).await.unwrap().len();
    assert_eq!(before, 7, "3 connected, occupied, 2 added, 1 disconnected");
    assert_eq!(store.reap(ns, "a").await.unwrap(), 5);
    let events = store.read(ns, &Cursor::start(), 100).await.unwrap();
    let reaped: Vec<_> = events[before..]
        .iter()
        .map(|e| (e.kind, e.socket.as_deref(), e.user.as_deref(), e.verified))
        .collect();
    assert_eq!(reaped[2], (RoomVacated, None, None, None));
    assert_eq!(
        &reaped[3..],
        [
            (SocketDisconnected, Some("s1"), Some("u"), Some(false)),
            (SocketDisconnected, Some("s4"), None, None),
        ]
    );
    s1.joined = false;
    store.apply(ns, "a", next(), &s1).await.unwrap();
    assert_eq!(
        store.read(ns, &Cursor::start(), 100).await.unwrap().len(),
        events.len(),
        "disconnected once"
    );
}

/// Every check, in turn.
pub async fn all(store: &dyn Store) {
    transitions_make_events_once(store).await;
    reaping_a_node_takes_its_sockets_once(store).await;
    socket_events_and_verified_flags(store).await;
    leases_fence_the_cursor(store).await;
    a_change_applied_again_counts_once(store).await;
    a_reaped_worker_restores_its_sockets(store).await;
    reaping_disconnects_the_sockets(store).await;
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_memory_store_conforms() {
        super::all(&super::super::MemoryStore::default()).await;
    }
}
