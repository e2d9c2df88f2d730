//! The store of a single node without Redis: the same counts and outboxes as `redis.rs`, in one mutex.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use futures_util::future::{BoxFuture, FutureExt};

use super::{Applied, Change, Cursor, Event, OUTBOX_CAP, Result, Stamp, Store};
use crate::config::file::EventKind;

#[derive(Default)]
struct Namespace {
    rooms: HashMap<String, u64>,
    members: HashMap<(String, String), u64>,
    /// Each node's contribution: rooms, and members with their last verified flag.
    nodes: HashMap<String, Contribution>,
    outbox: VecDeque<Event>,
    seq: u64,
    /// Entry ids as Redis makes them: `<ms>-<n>`, increasing.
    last_id: (u64, u64),
    cursors: HashMap<String, Cursor>,
    leases: HashMap<String, (String, std::time::Instant)>,
}

#[derive(Default)]
struct Contribution {
    rooms: BTreeMap<String, u64>,
    members: BTreeMap<(String, String), (u64, bool)>,
    /// The sockets whose `socket.connected` was written: their user and verified flag.
    sockets: BTreeMap<String, (Option<String>, bool)>,
    /// Each worker's last change's number.
    marks: HashMap<u32, u64>,
}

/// Counts and outboxes in memory.
pub struct MemoryStore {
    namespaces: Mutex<BTreeMap<String, Namespace>>,
    cap: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_cap(OUTBOX_CAP)
    }
}

impl MemoryStore {
    /// A store whose outboxes keep `cap` events (tests use small ones).
    pub fn with_cap(cap: u64) -> Self {
        Self {
            namespaces: Mutex::default(),
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
        }
    }

    fn with<T>(&self, ns: &str, f: impl FnOnce(&mut Namespace) -> T) -> T {
        let mut all = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        f(all.entry(ns.to_owned()).or_default())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Namespace {
    fn emit(
        &mut self,
        cap: usize,
        kind: EventKind,
        room: Option<&str>,
        user: Option<(&str, bool)>,
        socket: Option<&str>,
    ) {
        let ms = now_ms();
        self.last_id = if ms > self.last_id.0 {
            (ms, 0)
        } else {
            (self.last_id.0, self.last_id.1 + 1)
        };
        self.seq += 1;
        self.outbox.push_back(Event {
            id: format!("{}-{}", self.last_id.0, self.last_id.1),
            seq: self.seq,
            kind,
            room: room.map(str::to_owned),
            user: user.map(|(u, _)| u.to_owned()),
            verified: user.map(|(_, v)| v),
            socket: socket.map(str::to_owned),
            at_ms: self.last_id.0,
        });
        while self.outbox.len() > cap {
            self.outbox.pop_front();
        }
    }

    /// A numbered change, as `change.lua` applies it.
    fn stamped(&mut self, cap: usize, node: &str, stamp: Stamp, c: &Change) -> Applied {
        match self
            .nodes
            .get(node)
            .and_then(|m| m.marks.get(&stamp.worker))
        {
            Some(last) if *last >= stamp.n => return Applied::Again,
            None if stamp.counted => return Applied::Reaped,
            _ => {}
        }
        let before = self.seq;
        self.change(cap, node, c);
        self.mark(node, stamp);
        Applied::Events(self.seq - before)
    }

    /// As `restore.lua`.
    fn restore(&mut self, cap: usize, node: &str, stamp: Stamp, sockets: &[Change]) -> Option<u64> {
        if self
            .nodes
            .get(node)
            .is_some_and(|m| m.marks.contains_key(&stamp.worker))
        {
            return None;
        }
        let before = self.seq;
        for c in sockets {
            self.change(
                cap,
                node,
                &Change {
                    joined: true,
                    ..c.clone()
                },
            );
        }
        self.mark(node, stamp);
        Some(self.seq - before)
    }

    fn mark(&mut self, node: &str, stamp: Stamp) {
        let mine = self.nodes.entry(node.to_owned()).or_default();
        mine.marks.insert(stamp.worker, stamp.n);
    }

    fn change(&mut self, cap: usize, node: &str, c: &Change) {
        let user = c.user.as_deref().map(|u| (u, c.verified));
        if c.joined && c.socket_event {
            self.emit(cap, EventKind::SocketConnected, None, user, Some(&c.socket));
            let mine = self.nodes.entry(node.to_owned()).or_default();
            mine.sockets
                .insert(c.socket.clone(), (c.user.clone(), c.verified));
        }
        for room in &c.rooms {
            let mine = self.nodes.entry(node.to_owned()).or_default();
            if c.joined {
                *mine.rooms.entry(room.clone()).or_default() += 1;
                if let Some(u) = &c.user {
                    let m = mine.members.entry((room.clone(), u.clone())).or_default();
                    *m = (m.0 + 1, c.verified);
                }
                let n = self.rooms.entry(room.clone()).or_default();
                *n += 1;
                if *n == 1 {
                    self.emit(cap, EventKind::RoomOccupied, Some(room), None, None);
                }
                if let Some(u) = &c.user {
                    let n = self.members.entry((room.clone(), u.clone())).or_default();
                    *n += 1;
                    if *n == 1 {
                        self.emit(cap, EventKind::MemberAdded, Some(room), user, None);
                    }
                }
                continue;
            }
            // Only what this node gave is taken (it may have been reaped meanwhile).
            if !mine.rooms.contains_key(room) {
                continue;
            }
            mine.rooms.take(room, 1);
            let member = c.user.as_ref().map(|u| (room.clone(), u.clone()));
            if let Some(key) = &member
                && let Some(m) = mine.members.get_mut(key)
            {
                m.0 -= 1;
                if m.0 == 0 {
                    mine.members.remove(key);
                }
                if self.members.take(key, 1) {
                    self.emit(cap, EventKind::MemberRemoved, Some(room), user, None);
                }
            }
            if self.rooms.take(room, 1) {
                self.emit(cap, EventKind::RoomVacated, Some(room), None, None);
            }
        }
        // Once per socket: only if its socket.connected was written (and not taken by a reap).
        if !c.joined
            && c.socket_event
            && self
                .nodes
                .get_mut(node)
                .and_then(|m| m.sockets.remove(&c.socket))
                .is_some()
        {
            self.emit(
                cap,
                EventKind::SocketDisconnected,
                None,
                user,
                Some(&c.socket),
            );
        }
    }
}

/// A map of counts.
trait CountMap<K> {
    /// Takes `by` from `key`'s count, removing it at zero; true when it reached exactly zero. A missing key is
    /// left alone (false).
    fn take(&mut self, key: &K, by: u64) -> bool;
}

impl<K: Ord + Clone> CountMap<K> for BTreeMap<K, u64> {
    fn take(&mut self, key: &K, by: u64) -> bool {
        let Some(n) = self.get_mut(key) else {
            return false;
        };
        let zero = *n == by;
        *n = n.saturating_sub(by);
        if *n == 0 {
            self.remove(key);
        }
        zero
    }
}

impl<K: std::hash::Hash + Eq + Clone> CountMap<K> for HashMap<K, u64> {
    fn take(&mut self, key: &K, by: u64) -> bool {
        let Some(n) = self.get_mut(key) else {
            return false;
        };
        let zero = *n == by;
        *n = n.saturating_sub(by);
        if *n == 0 {
            self.remove(key);
        }
        zero
    }
}

impl Store for MemoryStore {
    fn register<'a>(&'a self, ns: &'a str) -> BoxFuture<'a, Result<()>> {
        self.with(ns, |_| ());
        async { Ok(()) }.boxed()
    }

    fn namespaces(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        let all = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        let names = all.keys().cloned().collect();
        async move { Ok(names) }.boxed()
    }

    fn apply<'a>(
        &'a self,
        ns: &'a str,
        node: &'a str,
        stamp: Stamp,
        change: &'a Change,
    ) -> BoxFuture<'a, Result<Applied>> {
        let applied = self.with(ns, |n| n.stamped(self.cap, node, stamp, change));
        async move { Ok(applied) }.boxed()
    }

    fn restore<'a>(
        &'a self,
        ns: &'a str,
        node: &'a str,
        stamp: Stamp,
        sockets: &'a [Change],
    ) -> BoxFuture<'a, Result<Option<u64>>> {
        let restored = self.with(ns, |n| n.restore(self.cap, node, stamp, sockets));
        async move { Ok(restored) }.boxed()
    }

    fn reap<'a>(&'a self, ns: &'a str, node: &'a str) -> BoxFuture<'a, Result<u64>> {
        let cap = self.cap;
        let n = self.with(ns, |n| {
            let before = n.seq;
            let Some(gone) = n.nodes.remove(node) else {
                return 0;
            };
            for ((room, user), (count, verified)) in &gone.members {
                let key = (room.clone(), user.clone());
                if n.members.take(&key, *count) {
                    n.emit(
                        cap,
                        EventKind::MemberRemoved,
                        Some(room),
                        Some((user, *verified)),
                        None,
                    );
                }
            }
            for (room, count) in &gone.rooms {
                if n.rooms.take(room, *count) {
                    n.emit(cap, EventKind::RoomVacated, Some(room), None, None);
                }
            }
            for (socket, (user, verified)) in &gone.sockets {
                n.emit(
                    cap,
                    EventKind::SocketDisconnected,
                    None,
                    user.as_deref().map(|u| (u, *verified)),
                    Some(socket),
                );
            }
            n.seq - before
        });
        async move { Ok(n) }.boxed()
    }

    fn read<'a>(
        &'a self,
        ns: &'a str,
        after: &'a Cursor,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<Event>>> {
        let events = self.with(ns, |n| {
            n.outbox
                .iter()
                .filter(|e| e.seq > after.seq)
                .take(count)
                .cloned()
                .collect()
        });
        async move { Ok(events) }.boxed()
    }

    fn lease<'a>(
        &'a self,
        ns: &'a str,
        hook: &'a str,
        me: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<bool>> {
        let now = std::time::Instant::now();
        let held = self.with(ns, |n| {
            let until = now + std::time::Duration::from_millis(ttl_ms);
            match n.leases.get_mut(hook) {
                Some((holder, expiry)) if *expiry > now && holder != me => false,
                Some((holder, expiry)) => {
                    *holder = me.to_owned();
                    *expiry = until;
                    true
                }
                None => {
                    n.leases.insert(hook.to_owned(), (me.to_owned(), until));
                    true
                }
            }
        });
        async move { Ok(held) }.boxed()
    }

    fn cursor<'a>(&'a self, ns: &'a str, hook: &'a str) -> BoxFuture<'a, Result<Cursor>> {
        let cursor = self.with(ns, |n| n.cursors.get(hook).cloned());
        async move { Ok(cursor.unwrap_or_else(Cursor::start)) }.boxed()
    }

    fn advance<'a>(
        &'a self,
        ns: &'a str,
        hook: &'a str,
        me: &'a str,
        to: &'a Cursor,
    ) -> BoxFuture<'a, Result<bool>> {
        let now = std::time::Instant::now();
        let moved = self.with(ns, |n| {
            let holds = n
                .leases
                .get(hook)
                .is_some_and(|(holder, expiry)| holder == me && *expiry > now);
            if holds {
                n.cursors.insert(hook.to_owned(), to.clone());
            }
            holds
        });
        async move { Ok(moved) }.boxed()
    }
}
