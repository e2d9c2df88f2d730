//! Which nodes are alive, from their heartbeats.
//!
//! Counting subscribers (`SPUBLISH`'s answer, `PUBSUB SHARDNUMSUB`) keeps a hung node counted until Redis drops its TCP
//! connection (minutes), so every room query would wait the full timeout for it. Instead every node publishes a
//! heartbeat; a node not heard from for [`MISSED_HEARTBEATS`] intervals is declared down, and pending queries stop
//! waiting for it at once. Pure bookkeeping: [`crate::cluster`] moves the heartbeats.
//!
//! Each node also hears its own heartbeat back through Redis, the one proof that both its publishing and its
//! subscription work. Without it for [`CUT_OFF_HEARTBEATS`] intervals this node is *cut off* (paused by SIGSTOP or
//! a long stall, or Redis out of reach): it then declares nobody down (the others' silence says nothing while we
//! cannot hear), and when its own heartbeat comes back it reports [`Seen::Back`], because the others may have
//! declared it down meanwhile and forgotten its holders of user rooms.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};

/// A node is declared down after this many heartbeat intervals without one.
pub const MISSED_HEARTBEATS: u32 = 3;
/// This node is cut off after this many intervals without hearing its own heartbeat: fewer than
/// [`MISSED_HEARTBEATS`], so that a node the others declared down always knows it was cut off (the gap it sees is
/// the one they saw, give or take the delivery jitter, which the spare interval covers).
pub const CUT_OFF_HEARTBEATS: u32 = 2;

/// A change of membership that concerns the holders of user rooms (see [`crate::delivery::Store::forget_node`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This node declared another down: its sockets are gone with it.
    Down(Arc<str>),
    /// This node hears itself again after being cut off: the others may have declared it down meanwhile.
    Back,
}

pub struct Membership {
    me: Arc<str>,
    /// Other nodes, with when each was last heard from.
    others: Mutex<HashMap<Arc<str>, Instant>>,
    down_after: Duration,
    cut_off_after: Duration,
    /// When our own heartbeat last came back through Redis.
    heard_self: Mutex<Option<Instant>>,
    /// Bumped whenever a node leaves or is declared down: pending queries re-check whom they wait for.
    departures: watch::Sender<u64>,
}

/// What a heartbeat changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// A node we did not know: it should hear from us soon, not at our next interval.
    Joined,
    Known,
    /// Our own heartbeat, back after we were cut off.
    Back,
}

impl Membership {
    pub fn new(me: Arc<str>, heartbeat: Duration) -> Self {
        Self {
            me,
            others: Mutex::default(),
            down_after: heartbeat * MISSED_HEARTBEATS,
            cut_off_after: heartbeat * CUT_OFF_HEARTBEATS,
            heard_self: Mutex::default(),
            departures: watch::Sender::new(0),
        }
    }

    /// How long a node may stay silent before it is declared down.
    pub fn down_after(&self) -> Duration {
        self.down_after
    }

    /// A heartbeat from `node`, or our own back through Redis.
    pub fn alive(&self, node: &str) -> Seen {
        if node == &*self.me {
            return self.heard_myself();
        }
        let mut others = self.others.lock().unwrap();
        match others.get_mut(node) {
            Some(seen) => {
                *seen = Instant::now();
                Seen::Known
            }
            None => {
                others.insert(node.into(), Instant::now());
                tracing::info!(node, "node joined the cluster");
                Seen::Joined
            }
        }
    }

    fn heard_myself(&self) -> Seen {
        let now = Instant::now();
        let last = self.heard_self.lock().unwrap().replace(now);
        let Some(gap) = last.map(|last| now.duration_since(last)) else {
            return Seen::Known;
        };
        if gap < self.cut_off_after {
            return Seen::Known;
        }
        // We could not hear the others either: from now on each gets a whole period to be heard again.
        for seen in self.others.lock().unwrap().values_mut() {
            *seen = now;
        }
        tracing::warn!(?gap, "this node was cut off from the cluster and is back");
        Seen::Back
    }

    /// `node` said it is leaving, or Redis says it is gone.
    pub fn remove(&self, node: &str, why: &str) {
        if self.others.lock().unwrap().remove(node).is_some() {
            tracing::info!(node, why, "node left the cluster");
            self.departures.send_modify(|n| *n += 1);
        }
    }

    /// Declares down every node not heard from in time; returns them. Nobody while we are cut off ourselves.
    pub fn sweep(&self) -> Vec<Arc<str>> {
        let now = Instant::now();
        let hearing = self
            .heard_self
            .lock()
            .unwrap()
            .is_some_and(|last| now.duration_since(last) < self.cut_off_after);
        if !hearing {
            return Vec::new();
        }
        let mut down = Vec::new();
        self.others.lock().unwrap().retain(|node, seen| {
            let alive = now.duration_since(*seen) < self.down_after;
            if !alive {
                down.push(node.clone());
            }
            alive
        });
        if !down.is_empty() {
            for node in &down {
                tracing::warn!(node = %node, after = ?self.down_after, "node declared down: no heartbeat");
            }
            self.departures.send_modify(|n| *n += 1);
        }
        down
    }

    /// The other live nodes.
    pub fn others(&self) -> Vec<Arc<str>> {
        self.others.lock().unwrap().keys().cloned().collect()
    }

    /// Whether this node's id is the smallest of the live nodes': a node every node agrees on (while their views
    /// of the membership agree), to do what one node should.
    pub fn is_first(&self) -> bool {
        self.others.lock().unwrap().keys().all(|n| **n > *self.me)
    }

    pub fn contains(&self, node: &str) -> bool {
        self.others.lock().unwrap().contains_key(node)
    }

    /// Live nodes, this one included.
    pub fn size(&self) -> usize {
        self.others.lock().unwrap().len() + 1
    }

    /// Changes whenever a node leaves or is declared down.
    pub fn departures(&self) -> watch::Receiver<u64> {
        self.departures.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn nodes_join_beat_and_are_declared_down() {
        let m = Membership::new("a".into(), Duration::from_secs(2));
        let mut departures = m.departures();
        assert_eq!(m.alive("a"), Seen::Known);
        assert_eq!(m.size(), 1);
        assert_eq!(m.alive("b"), Seen::Joined);
        assert_eq!(m.alive("c"), Seen::Joined);
        assert_eq!(m.alive("b"), Seen::Known);
        assert_eq!(m.size(), 3);
        assert!(m.is_first());
        let b = Membership::new("b".into(), Duration::from_secs(2));
        b.alive("c");
        assert!(b.is_first());
        b.alive("a");
        assert!(!b.is_first());

        // We hear our own heartbeat every 2 s; b beats, c has gone silent.
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(2)).await;
            assert_eq!(m.alive("a"), Seen::Known);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        m.alive("b");
        assert!(m.sweep().is_empty());
        assert!(!departures.has_changed().unwrap());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(m.alive("a"), Seen::Known);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(m.sweep(), vec![Arc::<str>::from("c")]);
        assert!(departures.has_changed().unwrap());
        departures.mark_unchanged();
        assert!(m.contains("b") && !m.contains("c"));

        // A declared-down node that beats again simply rejoins.
        assert_eq!(m.alive("c"), Seen::Joined);
        m.remove("c", "leaving");
        assert!(departures.has_changed().unwrap());
        departures.mark_unchanged();
        m.remove("c", "leaving");
        assert!(!departures.has_changed().unwrap());
        assert_eq!(m.others(), vec![Arc::<str>::from("b")]);
    }

    /// A node that does not hear its own heartbeat (paused, or Redis away) judges nobody; when it hears itself
    /// again it knows it was cut off, and gives the others a whole period to be heard before declaring them down.
    #[tokio::test(start_paused = true)]
    async fn a_cut_off_node_declares_nobody_down_and_knows_it_is_back() {
        let second = Duration::from_secs(1);
        // Down after 3 s, cut off after 2 s.
        let m = Membership::new("a".into(), second);
        // Before we first hear ourselves, nobody is judged either.
        assert_eq!(m.alive("b"), Seen::Joined);
        tokio::time::advance(second * 5).await;
        assert!(m.sweep().is_empty());
        // The first time is not a return.
        assert_eq!(m.alive("a"), Seen::Known);
        assert_eq!(m.alive("b"), Seen::Known);

        // Paused 10 s: nothing heard, neither b nor ourselves.
        tokio::time::advance(second * 10).await;
        assert!(m.sweep().is_empty(), "a cut-off node declared b down");
        assert!(m.contains("b"));
        assert_eq!(m.alive("a"), Seen::Back);
        assert!(m.sweep().is_empty(), "b had no time to be heard again");
        for _ in 0..2 {
            tokio::time::advance(second).await;
            assert_eq!(m.alive("a"), Seen::Known);
            assert!(m.sweep().is_empty());
        }
        tokio::time::advance(second).await;
        assert_eq!(m.alive("a"), Seen::Known);
        assert_eq!(m.sweep(), vec![Arc::<str>::from("b")]);

        // Late, short of the cut-off: not a return. Past it: a return.
        tokio::time::advance(Duration::from_millis(1900)).await;
        assert_eq!(m.alive("a"), Seen::Known);
        tokio::time::advance(second * 2).await;
        assert_eq!(m.alive("a"), Seen::Back);
    }
}
