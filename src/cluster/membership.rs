//! Which nodes are alive, from their heartbeats.
//!
//! Counting subscribers (`PUBLISH`'s answer, `PUBSUB NUMSUB`) keeps a hung node counted until Redis drops its TCP
//! connection (minutes), so every room query would wait the full timeout for it. Instead every node publishes a
//! heartbeat; a node not heard from for [`MISSED_HEARTBEATS`] intervals is declared down, and pending queries stop
//! waiting for it at once. Pure bookkeeping: [`crate::cluster`] moves the heartbeats.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};

/// A node is declared down after this many heartbeat intervals without one.
pub const MISSED_HEARTBEATS: u32 = 3;

pub struct Membership {
    me: Arc<str>,
    /// Other nodes, with when each was last heard from.
    others: Mutex<HashMap<Arc<str>, Instant>>,
    down_after: Duration,
    /// Bumped whenever a node leaves or is declared down: pending queries re-check whom they wait for.
    departures: watch::Sender<u64>,
}

/// What a heartbeat changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// A node we did not know: it should hear from us soon, not at our next interval.
    Joined,
    Known,
}

impl Membership {
    pub fn new(me: Arc<str>, heartbeat: Duration) -> Self {
        Self {
            me,
            others: Mutex::default(),
            down_after: heartbeat * MISSED_HEARTBEATS,
            departures: watch::Sender::new(0),
        }
    }

    /// A heartbeat from `node` (our own are ignored).
    pub fn alive(&self, node: &str) -> Seen {
        if node == &*self.me {
            return Seen::Known;
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

    /// `node` said it is leaving, or Redis says it is gone.
    pub fn remove(&self, node: &str, why: &str) {
        if self.others.lock().unwrap().remove(node).is_some() {
            tracing::info!(node, why, "node left the cluster");
            self.departures.send_modify(|n| *n += 1);
        }
    }

    /// Declares down every node not heard from in time; returns them.
    pub fn sweep(&self) -> Vec<Arc<str>> {
        let now = Instant::now();
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

        tokio::time::advance(Duration::from_secs(5)).await;
        m.alive("b");
        assert!(m.sweep().is_empty());
        assert!(!departures.has_changed().unwrap());
        tokio::time::advance(Duration::from_secs(2)).await;
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
}
