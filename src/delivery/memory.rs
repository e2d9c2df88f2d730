//! The store of a single node without Redis: the same semantics as [`super::RedisStore`], in this process's
//! memory (lost with it, which is why a cluster uses Redis).
//!
//! Expiry follows `tokio::time`, so tests run it with a paused clock: every call first drops a room's messages
//! whose deadline has passed (so expiry is exact to the instant), and a sweeper task frees rooms nobody asks
//! about any more once a second.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::Duration,
};

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::{task::AbortHandle, time::Instant};

use super::{
    Acked, Holder, MessageId, Policy, Pushed, RoomKey, Store, StoreError, StoredMessage, Ttl,
    Vacancy, now_ms,
};

/// How often expired rooms that nobody reads are freed.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// In-memory queues, one per room.
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    /// Stops the sweeper with the store (it holds only a weak reference, so it would stop by itself at its next
    /// tick anyway).
    sweeper: AbortHandle,
}

#[derive(Default)]
struct State {
    rooms: HashMap<RoomKey, Room>,
    /// Every room's deadline, soonest first, for the sweeper.
    deadlines: BTreeSet<(Instant, RoomKey)>,
    /// The last id given, by any room: ids grow across rooms, and across a room's queue emptying.
    last_id: MessageId,
}

/// A room with messages or holders (a room with neither is removed).
#[derive(Default)]
struct Room {
    messages: VecDeque<StoredMessage>,
    /// When the messages expire; only while there are messages and nobody holds the room.
    deadline: Option<Instant>,
    holders: HashSet<Holder>,
}

impl MemoryStore {
    /// Must be called within a Tokio runtime (it starts the sweeper).
    pub fn new() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let sweeper = tokio::spawn(sweep(Arc::downgrade(&state))).abort_handle();
        Self { state, sweeper }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every change is a few plain assignments).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many rooms are in memory (tests check that expired ones are freed).
    #[cfg(test)]
    fn rooms(&self) -> usize {
        self.lock().rooms.len()
    }
}

impl Default for MemoryStore {
    /// [`MemoryStore::new`]: within a Tokio runtime.
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MemoryStore {
    fn drop(&mut self) {
        self.sweeper.abort();
    }
}

async fn sweep(state: Weak<Mutex<State>>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { return };
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while let Some((at, _)) = state.deadlines.first()
            && *at <= now
        {
            let (_, key) = state.deadlines.pop_first().expect("just seen");
            state.room(&key, now);
            state.tidy(&key);
        }
    }
}

impl State {
    /// The room, after dropping its messages if their deadline has passed.
    fn room(&mut self, key: &RoomKey, now: Instant) -> Option<&mut Room> {
        let room = self.rooms.get_mut(key)?;
        if let Some(deadline) = room.deadline
            && deadline <= now
        {
            self.deadlines.remove(&(deadline, key.clone()));
            room.deadline = None;
            room.messages.clear();
        }
        Some(room)
    }

    /// Sets (or, with `None`, cancels) when the room's messages expire.
    fn set_deadline(&mut self, key: &RoomKey, to: Option<Instant>) {
        let Some(room) = self.rooms.get_mut(key) else {
            return;
        };
        if let Some(old) = room.deadline.take() {
            self.deadlines.remove(&(old, key.clone()));
        }
        if let Some(at) = to {
            self.deadlines.insert((at, key.clone()));
        }
        room.deadline = to;
    }

    /// Forgets a room with neither messages nor holders.
    fn tidy(&mut self, key: &RoomKey) {
        if let Some(room) = self.rooms.get(key)
            && room.messages.is_empty()
            && room.holders.is_empty()
        {
            if let Some(at) = room.deadline {
                self.deadlines.remove(&(at, key.clone()));
            }
            self.rooms.remove(key);
        }
    }

    /// After messages were removed: an empty queue has nothing left to expire.
    fn emptied(&mut self, key: &RoomKey) {
        if self.rooms.get(key).is_some_and(|r| r.messages.is_empty()) {
            self.set_deadline(key, None);
        }
        self.tidy(key);
    }

    fn push(
        &mut self,
        key: &RoomKey,
        event: &str,
        args: &[Value],
        resync: bool,
        policy: Policy,
    ) -> Pushed {
        let now = Instant::now();
        let at_ms = now_ms();
        let id = self.last_id.next(at_ms);
        self.last_id = id;
        if self.room(key, now).is_none() {
            self.rooms.insert(key.clone(), Room::default());
        }
        let room = self.rooms.get_mut(key).expect("just inserted");
        let before = room.messages.len();
        room.messages.push_back(StoredMessage {
            id,
            event: event.to_owned(),
            args: args.to_vec(),
            resync,
            at_ms,
        });
        let cap = usize::try_from(policy.cap.get()).unwrap_or(usize::MAX);
        let dropped = room.messages.len().saturating_sub(cap);
        room.messages.drain(..dropped);
        let expiry = policy.ttl.duration().map(|d| now + d);
        let deadline = match (room.holders.is_empty(), before, room.deadline) {
            // Held: nothing expires.
            (false, _, _) => None,
            // A fresh queue nobody holds: its clock starts now.
            (true, 0, _) => expiry,
            // Already running: never extended.
            (true, _, Some(at)) => Some(at),
            (true, _, None) => expiry,
        };
        let mut nodes: Vec<String> = room.holders.iter().map(|h| h.node().to_owned()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        self.set_deadline(key, deadline);
        Pushed {
            id,
            dropped: dropped as u64,
            nodes,
        }
    }

    fn ack(&mut self, key: &RoomKey, ids: &[MessageId]) -> u64 {
        let Some(room) = self.room(key, Instant::now()) else {
            return 0;
        };
        let ids: HashSet<_> = ids.iter().collect();
        let before = room.messages.len();
        room.messages.retain(|m| !ids.contains(&m.id));
        let removed = before - room.messages.len();
        self.emptied(key);
        removed as u64
    }

    fn ack_one_with_resync(&mut self, key: &RoomKey, id: MessageId) -> Acked {
        let Some(room) = self.room(key, Instant::now()) else {
            return Acked::Gone;
        };
        let Some(at) = room.messages.iter().position(|m| m.id == id) else {
            return Acked::Gone;
        };
        let acked = &room.messages[at];
        let first_of_event = room
            .messages
            .iter()
            .find(|m| m.event == acked.event)
            .map(|m| m.id);
        if acked.resync && first_of_event != Some(id) {
            let cleared = room.messages.len() as u64;
            room.messages.clear();
            self.emptied(key);
            return Acked::Resync { cleared };
        }
        room.messages.remove(at);
        self.emptied(key);
        Acked::Removed
    }

    fn occupied(&mut self, key: &RoomKey, holder: &Holder) {
        if self.room(key, Instant::now()).is_none() {
            self.rooms.insert(key.clone(), Room::default());
        }
        let room = self.rooms.get_mut(key).expect("just inserted");
        room.holders.insert(holder.clone());
        self.set_deadline(key, None);
    }

    /// Removes holders (one, or all of a node's) and starts the room's expiry if that left it empty.
    fn release(
        &mut self,
        key: &RoomKey,
        leaving: impl Fn(&Holder) -> bool,
        ttl: Ttl,
    ) -> (u64, Vacancy) {
        let now = Instant::now();
        let Some(room) = self.room(key, now) else {
            return (0, vacancy(0, ttl));
        };
        let before = room.holders.len();
        room.holders.retain(|h| !leaving(h));
        let removed = before - room.holders.len();
        let left = room.holders.len();
        if removed > 0 && left == 0 && !room.messages.is_empty() {
            self.set_deadline(key, ttl.duration().map(|d| now + d));
        }
        self.tidy(key);
        (removed as u64, vacancy(left, ttl))
    }
}

/// What a room with `left` holders after a leave is.
fn vacancy(left: usize, ttl: Ttl) -> Vacancy {
    match (left, ttl) {
        (0, Ttl::Forever) => Vacancy::Kept,
        (0, Ttl::After(_)) => Vacancy::Expiring,
        _ => Vacancy::Held,
    }
}

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, Result<T, StoreError>> {
    Box::pin(std::future::ready(Ok(value)))
}

impl Store for MemoryStore {
    fn push<'a>(
        &'a self,
        room: &'a RoomKey,
        event: &'a str,
        args: &'a [Value],
        resync: bool,
        policy: Policy,
    ) -> BoxFuture<'a, Result<Pushed, StoreError>> {
        ready(self.lock().push(room, event, args, resync, policy))
    }

    fn pending<'a>(
        &'a self,
        room: &'a RoomKey,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>, StoreError>> {
        let mut state = self.lock();
        let messages = state
            .room(room, Instant::now())
            .map(|r| r.messages.iter().cloned().collect())
            .unwrap_or_default();
        state.tidy(room);
        ready(messages)
    }

    fn ack<'a>(
        &'a self,
        room: &'a RoomKey,
        ids: &'a [MessageId],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        ready(self.lock().ack(room, ids))
    }

    fn ack_one_with_resync<'a>(
        &'a self,
        room: &'a RoomKey,
        id: MessageId,
    ) -> BoxFuture<'a, Result<Acked, StoreError>> {
        ready(self.lock().ack_one_with_resync(room, id))
    }

    fn occupied<'a>(
        &'a self,
        room: &'a RoomKey,
        holder: &'a Holder,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.lock().occupied(room, holder);
        ready(())
    }

    fn vacated<'a>(
        &'a self,
        room: &'a RoomKey,
        holder: &'a Holder,
        ttl: Ttl,
    ) -> BoxFuture<'a, Result<Vacancy, StoreError>> {
        ready(self.lock().release(room, |h| h == holder, ttl).1)
    }

    fn forget_node<'a>(
        &'a self,
        node: &'a str,
        ttl_of: &'a (dyn Fn(&RoomKey) -> Ttl + Send + Sync),
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let mut state = self.lock();
        let held: Vec<RoomKey> = state
            .rooms
            .iter()
            .filter(|(_, r)| r.holders.iter().any(|h| h.node() == node))
            .map(|(k, _)| k.clone())
            .collect();
        let removed = held
            .iter()
            .map(|key| state.release(key, |h| h.node() == node, ttl_of(key)).0)
            .sum();
        ready(removed)
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::delivery::conformance;

    #[tokio::test(start_paused = true)]
    async fn passes_the_store_conformance_suite() {
        conformance::check_store(MemoryStore::new()).await;
    }

    fn key(room: &str) -> RoomKey {
        RoomKey::new("/site", room).unwrap()
    }

    const SECOND: Policy = Policy {
        cap: NonZeroU32::new(10).unwrap(),
        ttl: Ttl::After(Duration::from_secs(1)),
    };

    /// In memory, expiry is exact to the instant, whether or not the sweeper ran.
    #[tokio::test(start_paused = true)]
    async fn expiry_is_exact_and_expired_rooms_are_freed() {
        let store = MemoryStore::new();
        let holder = Holder::new("n1", "s1").unwrap();
        let room = key("user_1");
        store.occupied(&room, &holder).await.unwrap();
        store.push(&room, "e", &[], false, SECOND).await.unwrap();
        let left = store.vacated(&room, &holder, SECOND.ttl).await.unwrap();
        assert_eq!(left, Vacancy::Expiring);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(store.pending(&room).await.unwrap().len(), 1);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(store.pending(&room).await.unwrap().is_empty());
        assert_eq!(store.rooms(), 0, "read after expiry: freed at once");

        // Nobody reads this one: the sweeper frees it within a second of its deadline.
        store
            .push(&key("user_2"), "e", &[], false, SECOND)
            .await
            .unwrap();
        assert_eq!(store.rooms(), 1);
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(store.rooms(), 0);
        assert!(store.lock().deadlines.is_empty());
    }

    /// Rooms emptied by acks, resyncs or leaves do not linger; ids keep growing across them.
    #[tokio::test(start_paused = true)]
    async fn emptied_rooms_are_freed() {
        let store = MemoryStore::new();
        let room = key("user_1");
        let holder = Holder::new("n1", "s1").unwrap();
        let first = store.push(&room, "e", &[], false, SECOND).await.unwrap();
        assert_eq!(store.ack(&room, &[first.id]).await.unwrap(), 1);
        assert_eq!(store.rooms(), 0);
        store.occupied(&room, &holder).await.unwrap();
        let second = store.push(&room, "e", &[], true, SECOND).await.unwrap();
        assert!(second.id > first.id);
        let third = store.push(&room, "e", &[], true, SECOND).await.unwrap();
        assert_eq!(
            store.ack_one_with_resync(&room, third.id).await.unwrap(),
            Acked::Resync { cleared: 2 }
        );
        assert_eq!(store.rooms(), 1, "still held");
        store.vacated(&room, &holder, SECOND.ttl).await.unwrap();
        assert_eq!(store.rooms(), 0);
        assert!(store.lock().deadlines.is_empty());
    }
}
