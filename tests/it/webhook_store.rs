//! The Redis webhook store against a real `redis-server` (a Redis Cluster with `TEST_REDIS_CLUSTER=1`): the same
//! conformance suite as the memory store, the documented key layout with a namespace's keys on one hash slot
//! (its scripts need it), and two nodes' stores sharing one Redis, one of them reaped by the other.

use std::time::Duration;

use socket_identity::{
    redis::{Endpoint, connect_client},
    webhooks::{Change, Cursor, RedisStore, Stamp, Store, conformance},
};

use crate::harness::*;

const TIMEOUT: Duration = Duration::from_secs(5);

async fn store(redis: &Redis, prefix: &str) -> RedisStore {
    let endpoint = Endpoint::parse(&redis.url(), None).unwrap();
    let client = connect_client(&endpoint, TIMEOUT).await.unwrap();
    RedisStore::new(client, prefix)
}

fn joined(socket: &str, user: &str, rooms: &[&str]) -> Change {
    Change {
        socket: socket.into(),
        user: Some(user.into()),
        verified: true,
        joined: true,
        rooms: rooms.iter().map(|r| (*r).to_owned()).collect(),
        socket_event: true,
    }
}

/// The `n`th change of worker 0.
fn nth(n: u64) -> Stamp {
    Stamp {
        worker: 0,
        n,
        counted: false,
    }
}

#[tokio::test]
async fn redis_store_passes_the_conformance_suite() {
    let dir = log_dir("webhook_store_conformance");
    let redis = Redis::start(&dir);
    let store = store(&redis, "conformance").await;
    tokio::time::timeout(Duration::from_secs(60), conformance::all(&store))
        .await
        .expect("the suite finishes within 60 s");
}

/// The keys are the ones src/webhooks/redis.rs documents, and a namespace's keys (counts, node contribution,
/// outbox, sequence, lease, cursor) hash to one slot: on a Redis Cluster its scripts would fail otherwise.
#[tokio::test]
async fn the_layout_is_the_documented_one_on_one_slot() {
    let dir = log_dir("webhook_store_layout");
    let redis = Redis::start(&dir);
    let store = store(&redis, "lay").await;
    let ns = "/site";
    store.register(ns).await.unwrap();
    store
        .apply(ns, "n1", nth(1), &joined("s1", "u", &["r"]))
        .await
        .unwrap();
    assert!(store.lease(ns, "h", "n1", 10_000).await.unwrap());
    let to = Cursor {
        id: "1-0".into(),
        seq: 1,
    };
    assert!(store.advance(ns, "h", "n1", &to).await.unwrap());

    let p = "lay:webhooks:{/site}";
    let keys = [
        (format!("{p}:rooms"), "hash"),
        (format!("{p}:members"), "hash"),
        (format!("{p}:node:n1"), "hash"),
        (format!("{p}:outbox"), "stream"),
        (format!("{p}:seq"), "string"),
        (format!("{p}:lease:h"), "string"),
        (format!("{p}:cursor:h"), "string"),
    ];
    for (key, kind) in &keys {
        assert_eq!(redis.cli(&["TYPE", key]).trim(), *kind, "{key}");
    }
    assert_eq!(redis.cli(&["HGET", &keys[0].0, "r"]).trim(), "1");
    assert_eq!(redis.cli(&["HLEN", &keys[1].0]).trim(), "1");
    assert_eq!(
        redis.cli(&["GET", &keys[4].0]).trim(),
        "3",
        "connected, occupied, added"
    );
    assert_eq!(redis.cli(&["GET", &keys[6].0]).trim(), "1-0 1");
    assert_eq!(
        redis.cli(&["SMEMBERS", "lay:webhooks:namespaces"]).trim(),
        "/site"
    );
    if redis.is_cluster() {
        let slots: std::collections::BTreeSet<String> = keys
            .iter()
            .map(|(k, _)| redis.cli(&["CLUSTER", "KEYSLOT", k]).trim().to_owned())
            .collect();
        assert_eq!(slots.len(), 1, "one slot: {slots:?}");
    }
}

/// Two nodes' stores on one Redis: counts are cluster-wide, and a node reaped by a survivor (declared down) has
/// its rooms vacated and its sockets disconnected once, whichever survivor reaps first; its store, back under the same id, starts from zero.
#[tokio::test]
async fn a_node_reaped_by_another_vacates_its_rooms_once() {
    let dir = log_dir("webhook_store_two_nodes");
    let redis = Redis::start(&dir);
    let (a, b) = (store(&redis, "two").await, store(&redis, "two").await);
    let ns = "/site";
    a.apply(ns, "a", nth(1), &joined("s1", "u", &["r"]))
        .await
        .unwrap();
    b.apply(ns, "b", nth(1), &joined("s2", "u", &["r"]))
        .await
        .unwrap();
    b.apply(ns, "b", nth(2), &joined("s3", "v", &["q"]))
        .await
        .unwrap();
    assert_eq!(
        a.reap(ns, "b").await.unwrap(),
        4,
        "v left q, q vacated, s2 and s3 disconnected"
    );
    assert_eq!(b.reap(ns, "b").await.unwrap(), 0, "once");
    let events = a.read(ns, &Cursor::start(), 100).await.unwrap();
    let kinds: Vec<String> = events
        .iter()
        .map(|e| format!("{} {}", e.kind.name(), e.room.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        kinds,
        [
            "socket.connected ",
            "room.occupied r",
            "member.added r",
            "socket.connected ",
            "socket.connected ",
            "room.occupied q",
            "member.added q",
            "member.removed q",
            "room.vacated q",
            "socket.disconnected ",
            "socket.disconnected ",
        ]
    );
    assert_eq!(
        redis.cli(&["EXISTS", "two:webhooks:{/site}:node:b"]).trim(),
        "0",
        "b's contribution is gone"
    );
}
