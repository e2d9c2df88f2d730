//! Which node handles a message that must be handled once per cluster (a server-side emit, a broadcast to a
//! reliable user room or to a recovering namespace): every node reads every message, and the one to claim it first
//! handles it.
//!
//! The protocol's messages carry no id: two identical `emitter.to("user.1").emit("ping")` calls publish the same
//! bytes. So a claim names the message's digest **and its occurrence**: each node counts how many times it read a
//! digest ([`Occurrences`]; identical messages are interchangeable, so only their number matters, not their order
//! among others), and claims `digest:n` for the n-th (`SET NX`). Every node reads the same messages, so the n-th
//! identical message is claimed under the same key by every node and handled by one; the (n+1)-th under another.
//!
//! **Guarantee.** Each published message is handled at most once while the nodes count alike, and at least once
//! when one node that has the namespace read every message of the digest:
//! * a node that missed a message (fell behind, or its subscriber reconnected) counts one less: it claims a key
//!   already claimed for an earlier identical message and loses; the nodes that read them all handle it. It never
//!   adds a handling (there are at most as many keys as identical messages published).
//! * a digest is forgotten [`FORGET_AFTER`] after its last occurrence, and its keys live [`CLAIM_TTL`] (less):
//!   an identical message after that pause is the first again, on a key that expired.
//! * what this cannot tell apart: an identical message that comes within the nodes' delivery skew (milliseconds)
//!   of [`FORGET_AFTER`] after the previous one (some nodes forgot it, others did not), or, on a node that missed
//!   one, more than [`CLAIM_TTL`] after it: it may be handled twice.

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use tokio::time::Instant;

/// How long a digest is remembered after its last occurrence.
pub const FORGET_AFTER: Duration = Duration::from_secs(10);
/// How long a claim's key lives: less than [`FORGET_AFTER`] by more than a message takes to reach every node, so
/// that the first of a new run of identical messages finds its key gone.
pub const CLAIM_TTL: Duration = Duration::from_secs(5);

/// A message's digest (SHA-256 of its namespace, channel kind and bytes).
pub type Digest = [u8; 32];

/// How many times each digest was read lately.
#[derive(Debug, Default)]
pub struct Occurrences {
    seen: HashMap<Digest, Seen>,
    /// Digests in the order of their occurrences, with when: to forget them without scanning the map. A digest
    /// read again has a newer entry here; its older ones are skipped.
    order: VecDeque<(Instant, Digest)>,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    count: u64,
    last: Instant,
}

impl Occurrences {
    /// Counts one more occurrence of `digest` read at `now`; returns its number (1 for the first since it was
    /// forgotten).
    pub fn next(&mut self, digest: Digest, now: Instant) -> u64 {
        self.forget(now);
        let seen = self.seen.entry(digest).or_insert(Seen {
            count: 0,
            last: now,
        });
        seen.count += 1;
        seen.last = now;
        self.order.push_back((now, digest));
        seen.count
    }

    /// Forgets the digests not read for [`FORGET_AFTER`].
    fn forget(&mut self, now: Instant) {
        while let Some(&(at, digest)) = self.order.front() {
            if now.duration_since(at) < FORGET_AFTER {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&digest).is_some_and(|s| s.last == at) {
                self.seen.remove(&digest);
            }
        }
    }

    /// How many digests are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// The key of the claim on the `n`-th occurrence of `digest`, under `prefix`.
pub fn claim_key(prefix: &str, digest: &Digest, n: u64) -> String {
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}:{hex}:{n}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const A: Digest = [1; 32];
    const B: Digest = [2; 32];

    #[tokio::test(start_paused = true)]
    async fn identical_messages_are_numbered_and_forgotten_after_a_pause() {
        let mut o = Occurrences::default();
        assert_eq!(o.next(A, Instant::now()), 1);
        assert_eq!(o.next(B, Instant::now()), 1);
        assert_eq!(o.next(A, Instant::now()), 2);
        // Each occurrence keeps the digest for another FORGET_AFTER.
        tokio::time::advance(FORGET_AFTER - Duration::from_millis(1)).await;
        assert_eq!(o.next(A, Instant::now()), 3);
        tokio::time::advance(Duration::from_millis(1)).await;
        // B was last read FORGET_AFTER ago: forgotten, first again; A is still counted.
        assert_eq!(o.next(B, Instant::now()), 1);
        assert_eq!(o.next(A, Instant::now()), 4);
        tokio::time::advance(FORGET_AFTER).await;
        assert_eq!(o.next(A, Instant::now()), 1);
        // B's old entries and A's were dropped: only what was read now is remembered.
        assert_eq!(o.len(), 1);
        assert_eq!(o.order.len(), 1);
    }

    /// Three nodes read the same identical messages, one of them missing some; each claims `digest:n` on a shared
    /// set of keys (Redis's `SET NX`), in any interleaving. Returns how many times the messages were handled.
    fn handled(reads: &[&[bool]], interleaving: &[usize]) -> usize {
        let mut claims = HashSet::new();
        let mut nodes: Vec<(Occurrences, usize)> =
            reads.iter().map(|_| (Occurrences::default(), 0)).collect();
        let mut handled = 0;
        for &node in interleaving {
            let (occurrences, next) = &mut nodes[node];
            let read = reads[node][*next];
            *next += 1;
            if !read {
                continue;
            }
            let n = occurrences.next(A, Instant::now());
            if claims.insert(claim_key("p", &A, n)) {
                handled += 1;
            }
        }
        handled
    }

    #[tokio::test(start_paused = true)]
    async fn each_identical_message_is_handled_once_and_a_node_that_missed_one_adds_none() {
        let all: &[bool] = &[true, true, true];
        // Every node reads the three; node by node, or round-robin.
        assert_eq!(handled(&[all, all, all], &[0, 0, 0, 1, 1, 1, 2, 2, 2]), 3);
        assert_eq!(handled(&[all, all, all], &[0, 1, 2, 0, 1, 2, 0, 1, 2]), 3);
        // Node 2 missed the first: it counts the second as the first, claimed already (or it claims first, and
        // node 0's first claim loses): three handlings either way.
        let missed: &[bool] = &[false, true, true];
        assert_eq!(
            handled(&[all, all, missed], &[0, 1, 2, 0, 1, 2, 0, 1, 2]),
            3
        );
        assert_eq!(
            handled(&[all, all, missed], &[2, 2, 2, 0, 0, 0, 1, 1, 1]),
            3
        );
        // Only one node read them all: it handles what the others did not.
        let first_only: &[bool] = &[true, false, false];
        assert_eq!(
            handled(&[all, missed, first_only], &[1, 2, 1, 2, 1, 2, 0, 0, 0]),
            3
        );
    }

    #[test]
    fn claim_keys_name_the_digest_and_the_occurrence() {
        let key = claim_key("pre:emitter-once", &[0xab; 32], 2);
        assert_eq!(key, format!("pre:emitter-once:{}:2", "ab".repeat(32)));
    }
}
