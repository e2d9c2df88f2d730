//! The Redis delivery store against a real `redis-server`: the same conformance suite as the memory store, plus
//! what only Redis has: entries written by someone else, two nodes on one queue, a restart with AOF.

use std::{num::NonZeroU32, path::Path, time::Duration};

use serde_json::json;
use socket_identity::{
    delivery::{Acked, Holder, MessageId, Policy, RedisStore, RoomKey, Store, Ttl, conformance},
    redis::{Endpoint, connect_client},
};

use crate::harness::*;

async fn store(redis: &Redis, prefix: &str) -> RedisStore {
    let endpoint = Endpoint::parse(&redis.url(), None).unwrap();
    let client = connect_client(&endpoint, Duration::from_secs(5))
        .await
        .unwrap();
    RedisStore::new(client, prefix)
}

fn policy() -> Policy {
    Policy {
        cap: NonZeroU32::new(100).unwrap(),
        ttl: Ttl::from_secs(3600),
    }
}

fn room(name: &str) -> RoomKey {
    RoomKey::new("/site", name).unwrap()
}

#[tokio::test]
async fn redis_store_passes_the_conformance_suite() {
    let dir = log_dir("delivery_conformance");
    let redis = Redis::start(&dir);
    let store = store(&redis, "conformance").await;
    tokio::time::timeout(Duration::from_secs(30), conformance::check_store(store))
        .await
        .expect("the suite finishes within 30 s");
}

/// Entries that are not ours (a hand-written `XADD`, another version's) are skipped, counted and left alone;
/// they never make a resync.
#[tokio::test]
async fn malformed_entries_are_skipped_and_counted() {
    let dir = log_dir("delivery_malformed");
    let redis = Redis::start(&dir);
    let store = store(&redis, "malformed").await;
    let r = room("user_1");
    let key = store.queue_key(&r);
    let xadd = |fields: &[&str]| {
        let mut args = vec!["XADD", key.as_str(), "*"];
        args.extend_from_slice(fields);
        redis.cli(&args)
    };
    // Not a message (same event name as the good ones, or no event at all).
    xadd(&[
        "event", "e", "args", "not json", "resync", "0", "at_ms", "1",
    ]);
    let first = store
        .push(&r, "e", &[json!(1)], true, policy())
        .await
        .unwrap();
    xadd(&[
        "event",
        "e",
        "args",
        "{\"a\":1}",
        "resync",
        "0",
        "at_ms",
        "1",
    ]);
    xadd(&["event", "e", "args", "[]", "resync", "maybe", "at_ms", "1"]);
    xadd(&["event", "", "args", "[]", "resync", "0", "at_ms", "1"]);
    xadd(&["event", "e", "args", "[]", "resync", "0", "at_ms", "soon"]);
    xadd(&["something", "else"]);
    let second = store
        .push(&r, "e", &[json!(2)], true, policy())
        .await
        .unwrap();

    let pending = store.pending(&r).await.unwrap();
    assert_eq!(
        pending.iter().map(|m| m.id).collect::<Vec<_>>(),
        [first.id, second.id]
    );
    assert_eq!(pending[1].args, [json!(2)]);
    assert_eq!(store.malformed_entries().get(), 6);

    // The malformed "e" before `first` is not the first pending "e": acking `first` is in order.
    assert_eq!(
        store.ack_one_with_resync(&r, first.id).await.unwrap(),
        Acked::Removed
    );
    assert_eq!(
        store.ack_one_with_resync(&r, second.id).await.unwrap(),
        Acked::Removed
    );
    assert!(store.pending(&r).await.unwrap().is_empty());
    // Left in place: a newer node may have written them.
    assert_eq!(redis.cli(&["XLEN", &key]).trim(), "6");
    assert_eq!(store.malformed_entries().get(), 12);
}

/// Two nodes (two clients) share one queue: one pushes, the other reads and acks, and the holders of both
/// count. The scripts survive `SCRIPT FLUSH` (as after a failover).
#[tokio::test]
async fn nodes_share_one_queue() {
    let dir = log_dir("delivery_nodes");
    let redis = Redis::start(&dir);
    let (a, b) = (store(&redis, "nodes").await, store(&redis, "nodes").await);
    let r = room("user_7");
    let (ha, hb) = (
        Holder::new("a", "sa").unwrap(),
        Holder::new("b", "sb").unwrap(),
    );
    a.occupied(&r, &ha).await.unwrap();
    b.occupied(&r, &hb).await.unwrap();
    let pushed = a
        .push(&r, "update", &[json!("x")], false, policy())
        .await
        .unwrap();
    let seen = b.pending(&r).await.unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].id, pushed.id);
    redis.cli(&["SCRIPT", "FLUSH"]);
    assert_eq!(b.ack(&r, &[pushed.id]).await.unwrap(), 1);
    assert!(a.pending(&r).await.unwrap().is_empty());
    // The emptied stream is kept a minute for its last id; a new message in a held room has no TTL again.
    let pttl = |key: String| -> i64 { redis.cli(&["PTTL", &key]).trim().parse().unwrap() };
    assert!(pttl(a.queue_key(&r)) > 0);
    let again = a.push(&r, "update", &[], false, policy()).await.unwrap();
    assert!(again.id > pushed.id);
    assert_eq!(pttl(a.queue_key(&r)), -1, "held: nothing expires");
    assert_eq!(b.ack(&r, &[again.id]).await.unwrap(), 1);
    let ttl = Ttl::After(Duration::from_secs(60));
    assert_eq!(
        a.vacated(&r, &ha, ttl).await.unwrap(),
        socket_identity::delivery::Vacancy::Held
    );
    assert_eq!(
        b.vacated(&r, &hb, ttl).await.unwrap(),
        socket_identity::delivery::Vacancy::Expiring
    );
    // Each node's list of rooms is emptied as its last socket there leaves.
    assert_eq!(redis.cli(&["EXISTS", &a.node_key("a")]).trim(), "0");
    assert_eq!(redis.cli(&["EXISTS", &a.holders_key(&r)]).trim(), "0");
}

fn aof_args(data: &Path) -> Vec<String> {
    [
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        data.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

/// With AOF on (`appendfsync always`), a Redis killed with SIGKILL and started again on the same port and
/// directory has every unacknowledged message, its holders, and ids that keep growing.
#[tokio::test]
async fn pending_messages_survive_a_redis_restart_with_aof() {
    let dir = log_dir("delivery_aof");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let args = aof_args(&data);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let redis = Redis::start_with(&dir, &args);
    let port = redis.port;
    assert_eq!(
        redis.cli(&["CONFIG", "GET", "appendonly"]).lines().nth(1),
        Some("yes")
    );
    let store = store(&redis, "aof").await;
    let r = room("user_1");
    let h = Holder::new("a", "s1").unwrap();
    store.occupied(&r, &h).await.unwrap();
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            store
                .push(&r, "e", &[json!(n)], false, policy())
                .await
                .unwrap()
                .id,
        );
    }
    assert_eq!(store.ack(&r, &ids[..1]).await.unwrap(), 1);

    drop(redis); // SIGKILL
    let redis = Redis::start_on(&dir, port, &args);
    // The client reconnects by itself (100 ms to 2 s apart); the script cache is empty.
    let pending = eventually(
        Duration::from_secs(15),
        "pending after the restart",
        async || store.pending(&r).await.ok(),
    )
    .await;
    assert_eq!(
        pending.iter().map(|m| m.id).collect::<Vec<MessageId>>(),
        ids[1..]
    );
    let next = store
        .push(&r, "e", &[json!(3)], false, policy())
        .await
        .unwrap();
    assert!(next.id > ids[2], "{} after {}", next.id, ids[2]);
    // The holder survived too: its leave is the last one.
    assert_eq!(
        store
            .vacated(&r, &h, Ttl::After(Duration::from_secs(60)))
            .await
            .unwrap(),
        socket_identity::delivery::Vacancy::Expiring
    );
    let ttl: i64 = redis
        .cli(&["PTTL", &store.queue_key(&r)])
        .trim()
        .parse()
        .unwrap();
    assert!((1..=60_000).contains(&ttl), "PTTL {ttl}");
}
