//! The semantics every [`Store`] must have, as one suite: the memory store runs it with a paused clock (its unit
//! test), the Redis store against a real `redis-server` (`tests/delivery_store.rs`). Public, not `cfg(test)`,
//! so that integration tests can call it.
//!
//! The cases run concurrently on rooms of their own, so the whole suite takes about two TTLs of real time.
//! Timing assertions hold on a slow machine too: "still there" is asserted only when the read finished before
//! the earliest possible deadline, "gone" only after the latest one plus a margin.

use std::{num::NonZeroU32, time::Duration};

use serde_json::{Value, json};
use tokio::time::{Instant, sleep, sleep_until};

use super::{Acked, Batch, Holder, Policy, RoomKey, Store, Ttl, Vacancy, ids};

/// The TTL of the expiry cases: short, for a real Redis.
pub const TTL: Duration = Duration::from_secs(1);
/// How long after a deadline "gone" is checked.
const MARGIN: Duration = Duration::from_millis(250);

const NAMESPACE: &str = "/conformance";

fn room(name: &str) -> RoomKey {
    RoomKey::new(NAMESPACE, name).expect("valid room")
}

fn holder(node: &str, socket: &str) -> Holder {
    Holder::new(node, socket).expect("valid holder")
}

fn policy(cap: u32, ttl: Ttl) -> Policy {
    Policy {
        cap: NonZeroU32::new(cap).expect("positive cap"),
        ttl,
    }
}

/// A generous cap and [`TTL`].
fn expiring() -> Policy {
    policy(100, Ttl::After(TTL))
}

/// Runs every case against `store`; panics on the first broken rule.
pub async fn check_store(store: impl Store) {
    let s = &store;
    tokio::join!(
        order_is_kept(s),
        ack_removes_exactly_the_given_ids(s),
        the_cap_drops_the_oldest(s),
        resync_rule(s),
        messages_expire_after_the_last_leave(s),
        a_socket_coming_back_stops_the_clock(s),
        zero_ttl_keeps_until_acknowledged(s),
        every_holder_on_every_node_counts(s),
        a_repeated_leave_does_not_restart_the_clock(s),
        pushes_never_extend_a_running_clock(s),
        forgetting_a_dead_node_releases_its_rooms(s),
        ids_keep_growing_after_the_queue_empties(s),
        a_push_names_the_nodes_holding_the_room(s),
    );
}

async fn pending(store: &impl Store, room: &RoomKey) -> Vec<super::StoredMessage> {
    store.pending(room).await.expect("pending")
}

async fn count(store: &impl Store, room: &RoomKey) -> usize {
    pending(store, room).await.len()
}

/// Asserts that `room` has `n` messages, if the read ended before `since + TTL` (a deadline set after `since`
/// cannot have passed yet).
async fn still_there(store: &impl Store, room: &RoomKey, n: usize, since: Instant, what: &str) {
    let found = count(store, room).await;
    if since.elapsed() < TTL {
        assert_eq!(found, n, "{room}: {what}");
    }
}

/// Waits until `TTL + MARGIN` after `after` (taken when the call that set the deadline returned), then asserts
/// that `room` is empty.
async fn gone_after(store: &impl Store, room: &RoomKey, after: Instant, what: &str) {
    sleep_until(after + TTL + MARGIN).await;
    assert_eq!(count(store, room).await, 0, "{room}: {what}");
}

async fn push(
    store: &impl Store,
    room: &RoomKey,
    event: &str,
    args: Value,
    p: Policy,
) -> super::Pushed {
    push_resync(store, room, event, args, false, p).await
}

async fn push_resync(
    store: &impl Store,
    room: &RoomKey,
    event: &str,
    args: Value,
    resync: bool,
    p: Policy,
) -> super::Pushed {
    let args: Vec<Value> = serde_json::from_value(args).expect("args are an array");
    store
        .push(room, event, &args, resync, p)
        .await
        .expect("push")
}

fn unix_ms() -> u64 {
    super::now_ms()
}

async fn order_is_kept(store: &impl Store) {
    let r = room("user_order");
    assert!(
        pending(store, &r).await.is_empty(),
        "a room never pushed to"
    );
    let t0 = unix_ms();
    let p = expiring();
    let a = push_resync(
        store,
        &r,
        "update_store",
        json!(["user", {"id": 1}]),
        false,
        p,
    )
    .await;
    let b = push_resync(store, &r, "ping", json!([]), true, p).await;
    let c = push_resync(store, &r, "update_store", json!([null, [1, 2]]), false, p).await;
    let t1 = unix_ms();
    assert!(a.id < b.id && b.id < c.id, "ids grow in send order");
    assert_eq!((a.dropped, b.dropped, c.dropped), (0, 0, 0));
    let messages = pending(store, &r).await;
    assert_eq!(ids(&messages), [a.id, b.id, c.id]);
    assert_eq!(
        messages
            .iter()
            .map(|m| (m.event.as_str(), m.resync))
            .collect::<Vec<_>>(),
        [
            ("update_store", false),
            ("ping", true),
            ("update_store", false)
        ]
    );
    for m in &messages {
        assert!(
            (t0..=t1).contains(&m.at_ms),
            "at_ms {} not in {t0}..={t1}",
            m.at_ms
        );
    }
    assert_eq!(
        serde_json::to_value(Batch::of(&messages)).unwrap(),
        json!([["update_store", "user", {"id": 1}], ["ping"], ["update_store", null, [1, 2]]])
    );
    // Reading does not consume.
    assert_eq!(pending(store, &r).await, messages);
}

async fn ack_removes_exactly_the_given_ids(store: &impl Store) {
    let r = room("user_ack");
    let p = expiring();
    push(store, &r, "e", json!([1]), p).await;
    push(store, &r, "e", json!([2]), p).await;
    let batch = pending(store, &r).await;
    // Arrives after the batch was read: the reliable push service's batch ack deleted it.
    let late = push(store, &r, "e", json!([3]), p).await;
    assert_eq!(store.ack(&r, &ids(&batch)).await.unwrap(), 2);
    let left = pending(store, &r).await;
    assert_eq!(
        ids(&left),
        [late.id],
        "only the batch's messages are removed"
    );
    assert_eq!(left[0].args, [json!(3)]);
    assert_eq!(store.ack(&r, &ids(&batch)).await.unwrap(), 0, "acked twice");
    assert_eq!(store.ack(&r, &[]).await.unwrap(), 0);
    let unknown = super::MessageId::new(1, 0);
    assert_eq!(store.ack(&r, &[unknown, late.id]).await.unwrap(), 1);
    assert!(pending(store, &r).await.is_empty());
    assert_eq!(
        store.ack(&room("user_ack_none"), &[late.id]).await.unwrap(),
        0
    );
}

async fn the_cap_drops_the_oldest(store: &impl Store) {
    let r = room("user_cap");
    let mut dropped = Vec::new();
    for n in 1..=5 {
        dropped.push(
            push(store, &r, "e", json!([n]), policy(3, Ttl::After(TTL)))
                .await
                .dropped,
        );
    }
    assert_eq!(dropped, [0, 0, 0, 1, 1]);
    let args = |messages: Vec<super::StoredMessage>| -> Vec<Value> {
        messages.into_iter().map(|m| m.args[0].clone()).collect()
    };
    assert_eq!(
        args(pending(store, &r).await),
        [json!(3), json!(4), json!(5)]
    );
    // A namespace whose cap was lowered: one push drops everything beyond the new cap.
    let pushed = push(store, &r, "e", json!([6]), policy(2, Ttl::After(TTL))).await;
    assert_eq!(pushed.dropped, 2);
    assert_eq!(args(pending(store, &r).await), [json!(5), json!(6)]);
    let one = push(store, &r, "e", json!([7]), policy(1, Ttl::After(TTL))).await;
    assert_eq!(one.dropped, 2);
    assert_eq!(ids(&pending(store, &r).await), [one.id]);
}

async fn resync_rule(store: &impl Store) {
    let r = room("user_resync");
    let p = expiring();
    let ack = |id| store.ack_one_with_resync(&r, id);
    let m1 = push_resync(store, &r, "update", json!([1]), true, p).await;
    let m2 = push_resync(store, &r, "other", json!([2]), true, p).await;
    let m3 = push_resync(store, &r, "update", json!([3]), true, p).await;
    assert_eq!(
        ack(m1.id).await.unwrap(),
        Acked::Removed,
        "first of its event"
    );
    // m3 ("update") is pending too, but m2 is the first "other".
    assert_eq!(
        ack(m2.id).await.unwrap(),
        Acked::Removed,
        "other events do not count"
    );
    let m4 = push_resync(store, &r, "update", json!([4]), true, p).await;
    // m3 was never acknowledged: m4 is not the first pending "update".
    assert_eq!(ack(m4.id).await.unwrap(), Acked::Resync { cleared: 2 });
    assert!(pending(store, &r).await.is_empty(), "cleared");
    assert_eq!(ack(m4.id).await.unwrap(), Acked::Gone, "no longer pending");
    assert_eq!(ack(m3.id).await.unwrap(), Acked::Gone);

    // Another socket of the user acked it first: a second ack is not a gap, and does not clear.
    let n1 = push_resync(store, &r, "x", json!([]), true, p).await;
    let n2 = push_resync(store, &r, "x", json!([]), true, p).await;
    assert_eq!(ack(n1.id).await.unwrap(), Acked::Removed);
    assert_eq!(ack(n1.id).await.unwrap(), Acked::Gone);
    assert_eq!(ids(&pending(store, &r).await), [n2.id]);

    // Without resync, an ack out of order only removes its message.
    let o1 = push(store, &r, "z", json!([]), p).await;
    let o2 = push(store, &r, "z", json!([]), p).await;
    assert_eq!(ack(o2.id).await.unwrap(), Acked::Removed);
    assert_eq!(ids(&pending(store, &r).await), [n2.id, o1.id]);
    // With resync, an earlier message of the same event counts even if it was pushed without: all is cleared,
    // other events included.
    let o3 = push_resync(store, &r, "z", json!([]), true, p).await;
    assert_eq!(ack(o3.id).await.unwrap(), Acked::Resync { cleared: 3 });
    assert!(pending(store, &r).await.is_empty());
    assert_eq!(
        store
            .ack_one_with_resync(&room("user_resync_none"), o3.id)
            .await
            .unwrap(),
        Acked::Gone
    );
}

async fn messages_expire_after_the_last_leave(store: &impl Store) {
    let r = room("user_ttl");
    let h = holder("n-ttl", "s1");
    store.occupied(&r, &h).await.unwrap();
    push(store, &r, "e", json!([1]), expiring()).await;
    push(store, &r, "e", json!([2]), expiring()).await;
    // Held: nothing expires, however long.
    sleep(TTL + MARGIN).await;
    assert_eq!(count(store, &r).await, 2, "held rooms keep their messages");
    let since = Instant::now();
    assert_eq!(
        store.vacated(&r, &h, Ttl::After(TTL)).await.unwrap(),
        Vacancy::Expiring
    );
    let after = Instant::now();
    sleep(TTL / 2).await;
    still_there(store, &r, 2, since, "kept until the TTL").await;
    gone_after(store, &r, after, "dropped after the TTL").await;
}

async fn a_socket_coming_back_stops_the_clock(store: &impl Store) {
    let r = room("user_back");
    // Pushed while nobody holds the room: its clock starts.
    let since = Instant::now();
    push(store, &r, "e", json!([]), expiring()).await;
    sleep(TTL / 2).await;
    let h = holder("n-back", "s1");
    store.occupied(&r, &h).await.unwrap();
    // Before the deadline: the clock is stopped in time; checked well after the old deadline.
    let in_time = since.elapsed() < TTL;
    sleep(TTL + MARGIN).await;
    if in_time {
        assert_eq!(
            count(store, &r).await,
            1,
            "a socket came back before the TTL"
        );
    }
    store.vacated(&r, &h, Ttl::After(TTL)).await.unwrap();
    let after = Instant::now();
    gone_after(store, &r, after, "the clock starts again at the next leave").await;
}

async fn zero_ttl_keeps_until_acknowledged(store: &impl Store) {
    let r = room("user_forever");
    let forever = policy(100, Ttl::from_secs(0));
    let a = push(store, &r, "e", json!([]), forever).await;
    let h = holder("n-forever", "s1");
    store.occupied(&r, &h).await.unwrap();
    assert_eq!(
        store.vacated(&r, &h, Ttl::from_secs(0)).await.unwrap(),
        Vacancy::Kept
    );
    sleep(TTL * 2).await;
    assert_eq!(
        count(store, &r).await,
        1,
        "client_ttl_s = 0 is not 3600, nor 0 s"
    );
    assert_eq!(store.ack(&r, &[a.id]).await.unwrap(), 1);
    assert!(pending(store, &r).await.is_empty());
}

async fn every_holder_on_every_node_counts(store: &impl Store) {
    let r = room("user_multi");
    let (h1, h2) = (holder("n-multi-a", "s1"), holder("n-multi-b", "s2"));
    store.occupied(&r, &h1).await.unwrap();
    store.occupied(&r, &h2).await.unwrap();
    push(store, &r, "e", json!([]), expiring()).await;
    assert_eq!(
        store.vacated(&r, &h1, Ttl::After(TTL)).await.unwrap(),
        Vacancy::Held
    );
    sleep(TTL + MARGIN).await;
    assert_eq!(
        count(store, &r).await,
        1,
        "another node's socket still holds it"
    );
    assert_eq!(
        store.vacated(&r, &h2, Ttl::After(TTL)).await.unwrap(),
        Vacancy::Expiring
    );
    let after = Instant::now();
    gone_after(store, &r, after, "the last holder left").await;
}

async fn a_repeated_leave_does_not_restart_the_clock(store: &impl Store) {
    let r = room("user_twice");
    let h = holder("n-twice", "s1");
    // Joining twice is one holder.
    store.occupied(&r, &h).await.unwrap();
    store.occupied(&r, &h).await.unwrap();
    push(store, &r, "e", json!([]), expiring()).await;
    assert_eq!(
        store.vacated(&r, &h, Ttl::After(TTL)).await.unwrap(),
        Vacancy::Expiring
    );
    let after = Instant::now();
    sleep(TTL / 2).await;
    assert_eq!(
        store.vacated(&r, &h, Ttl::After(TTL)).await.unwrap(),
        Vacancy::Expiring
    );
    gone_after(store, &r, after, "the first leave's deadline holds").await;
}

async fn pushes_never_extend_a_running_clock(store: &impl Store) {
    let r = room("user_nx");
    let since = Instant::now();
    push(store, &r, "e", json!([1]), expiring()).await;
    let after = Instant::now();
    sleep(TTL / 2).await;
    push(store, &r, "e", json!([2]), expiring()).await;
    still_there(store, &r, 2, since, "before the first push's deadline").await;
    gone_after(
        store,
        &r,
        after,
        "a later push does not extend the deadline",
    )
    .await;
    // A push after that starts a new clock.
    push(store, &r, "e", json!([3]), expiring()).await;
    assert_eq!(count(store, &r).await, 1);
}

async fn forgetting_a_dead_node_releases_its_rooms(store: &impl Store) {
    let (shared, alone) = (room("user_dead_shared"), room("user_dead_alone"));
    let (dead1, dead2) = (holder("n-dead", "s1"), holder("n-dead", "s2"));
    let alive = holder("n-alive", "s3");
    store.occupied(&shared, &dead1).await.unwrap();
    store.occupied(&shared, &alive).await.unwrap();
    store.occupied(&alone, &dead2).await.unwrap();
    push(store, &shared, "e", json!([]), expiring()).await;
    push(store, &alone, "e", json!([]), expiring()).await;
    let ttl_of = |key: &RoomKey| {
        assert_eq!(key.namespace(), NAMESPACE);
        Ttl::After(TTL)
    };
    // A node whose id starts like another's is another node.
    assert_eq!(store.forget_node("n-dea", &ttl_of).await.unwrap(), 0);
    assert_eq!(store.forget_node("n-dead", &ttl_of).await.unwrap(), 2);
    let after = Instant::now();
    assert_eq!(
        store.forget_node("n-dead", &ttl_of).await.unwrap(),
        0,
        "done"
    );
    gone_after(store, &alone, after, "its only holder was on the dead node").await;
    assert_eq!(count(store, &shared).await, 1, "still held by a live node");
    assert_eq!(
        store
            .vacated(&shared, &alive, Ttl::After(TTL))
            .await
            .unwrap(),
        Vacancy::Expiring
    );
}

async fn ids_keep_growing_after_the_queue_empties(store: &impl Store) {
    let r = room("user_ids");
    let p = expiring();
    let mut last = push(store, &r, "e", json!([]), p).await.id;
    for round in 0..20 {
        assert_eq!(store.ack(&r, &[last]).await.unwrap(), 1);
        let next = push_resync(store, &r, "e", json!([]), true, p).await.id;
        assert!(next > last, "round {round}: {next} after {last}");
        // Emptied by a resync this time.
        let extra = push_resync(store, &r, "e", json!([]), true, p).await.id;
        assert_eq!(
            store.ack_one_with_resync(&r, extra).await.unwrap(),
            Acked::Resync { cleared: 2 }
        );
        last = push(store, &r, "e", json!([]), p).await.id;
        assert!(last > extra, "round {round}: {last} after {extra}");
    }
}

/// A push says which nodes hold the room as it is stored, each once and sorted: the nodes it is sent to live.
async fn a_push_names_the_nodes_holding_the_room(store: &impl Store) {
    let r = room("user_nodes");
    let nodes = |p: super::Pushed| p.nodes;
    assert!(
        nodes(push(store, &r, "e", json!([]), expiring()).await).is_empty(),
        "held by nobody"
    );
    let (b1, b2, a) = (
        holder("n-nodes-b", "s1"),
        holder("n-nodes-b", "s2"),
        holder("n-nodes-a", "s3"),
    );
    for h in [&b1, &b2, &a] {
        store.occupied(&r, h).await.unwrap();
    }
    assert_eq!(
        nodes(push(store, &r, "e", json!([]), expiring()).await),
        ["n-nodes-a", "n-nodes-b"],
        "two sockets on one node are one node"
    );
    store.vacated(&r, &a, Ttl::After(TTL)).await.unwrap();
    store.vacated(&r, &b1, Ttl::After(TTL)).await.unwrap();
    assert_eq!(
        nodes(push(store, &r, "e", json!([]), expiring()).await),
        ["n-nodes-b"]
    );
    assert_eq!(
        store
            .forget_node("n-nodes-b", &|_: &RoomKey| Ttl::After(TTL))
            .await
            .unwrap(),
        1
    );
    assert!(
        nodes(push(store, &r, "e", json!([]), expiring()).await).is_empty(),
        "its node forgotten"
    );
}
