//! Routing `send` entries to the nodes that hold their user, as pure bookkeeping (the Redis side is
//! [`super::router`]): which node gets which entry, and which forwarded entries a node already delivered.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fmt,
};

/// A stream entry's id, `<ms>-<seq>`, as its two numbers: ordered as Redis orders them, and cheap to keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    ms: u64,
    seq: u64,
}

impl StreamId {
    /// `<ms>-<seq>`; `<ms>` alone is `<ms>-0`, as Redis reads it.
    pub fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        let number = |s: &str| match s.bytes().all(|b| b.is_ascii_digit()) {
            true => s.parse().ok(),
            false => None,
        };
        Some(Self {
            ms: number(ms)?,
            seq: number(seq)?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A user of a namespace as a member of a node's set of held users: `<namespace>|<username>`. A namespace name has
/// no `|`, so the first one separates them.
pub fn tag(namespace: &str, username: &str) -> String {
    format!("{namespace}|{username}")
}

/// The distinct tags of a batch of entries, each asked about once per node.
#[derive(Debug, Default)]
pub struct Tags {
    list: Vec<String>,
    index: HashMap<String, usize>,
}

impl Tags {
    /// The index of `tag` in [`Tags::list`], added if new.
    pub fn index(&mut self, tag: String) -> usize {
        if let Some(&i) = self.index.get(&tag) {
            return i;
        }
        self.list.push(tag.clone());
        self.index.insert(tag, self.list.len() - 1);
        self.list.len() - 1
    }

    pub fn list(&self) -> &[String] {
        &self.list
    }
}

/// For each node, the entries it gets, in their order: `entries[i]` is entry i's tag index, `held[n][t]` whether
/// node n holds tag t (a missing answer counts as not held).
pub fn plan(entries: &[usize], held: &[Vec<bool>]) -> Vec<Vec<usize>> {
    held.iter()
        .map(|holds| {
            entries
                .iter()
                .enumerate()
                .filter(|(_, t)| holds.get(**t).copied().unwrap_or(false))
                .map(|(i, _)| i)
                .collect()
        })
        .collect()
}

/// The ids of the last `cap` entries a node delivered: a router that stopped between forwarding a batch and
/// recording it leaves `gateway:routed` before the batch, and the next router forwards it again.
#[derive(Debug)]
pub struct Recent {
    seen: HashSet<StreamId>,
    order: VecDeque<StreamId>,
    cap: usize,
}

impl Recent {
    pub fn new(cap: usize) -> Self {
        Self {
            seen: HashSet::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Whether `id` is new (then remembered), forgetting the oldest beyond the cap.
    pub fn first(&mut self, id: StreamId) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        if self.order.len() == self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.order.push_back(id);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_splits_at_its_first_bar() {
        let t = tag("/alex", "a|b");
        assert_eq!(t, "/alex|a|b");
        assert_eq!(t.split_once('|'), Some(("/alex", "a|b")));
    }

    #[test]
    fn tags_are_asked_once_each_in_first_seen_order() {
        let mut tags = Tags::default();
        let idx: Vec<usize> = ["/a|x", "/a|y", "/a|x", "/b|x"]
            .into_iter()
            .map(|t| tags.index(t.to_owned()))
            .collect();
        assert_eq!(idx, [0, 1, 0, 2]);
        assert_eq!(tags.list(), ["/a|x", "/a|y", "/b|x"]);
    }

    #[test]
    fn each_node_gets_the_entries_of_the_users_it_holds_in_order() {
        // Entries for tags 0, 1, 0, 2, 1.
        let entries = [0, 1, 0, 2, 1];
        let held = vec![
            vec![true, false, false],
            vec![true, true, true],
            vec![false, false, false],
            // A short answer: the tags it does not cover are not held.
            vec![false, true],
        ];
        assert_eq!(
            plan(&entries, &held),
            vec![vec![0, 2], vec![0, 1, 2, 3, 4], vec![], vec![1, 4]]
        );
        assert!(plan(&entries, &[]).is_empty());
    }

    fn id(s: &str) -> StreamId {
        StreamId::parse(s).unwrap()
    }

    #[test]
    fn an_id_counts_once_until_it_is_forgotten() {
        let mut recent = Recent::new(2);
        assert!(recent.first(id("1-0")));
        assert!(!recent.first(id("1-0")));
        assert!(recent.first(id("2-0")));
        assert!(!recent.first(id("1-0")), "still within the cap");
        assert!(recent.first(id("3-0")));
        assert!(!recent.first(id("2-0")));
        assert!(recent.first(id("1-0")), "the oldest was forgotten");
    }

    #[test]
    fn stream_ids_parse_print_and_order_as_redis_does() {
        assert_eq!(id("1700000000000-12").to_string(), "1700000000000-12");
        assert_eq!(id("5"), id("5-0"));
        assert!(id("9-1") < id("10-0"), "numbers, not text");
        assert!(id("10-2") < id("10-10"));
        assert_eq!(
            id("18446744073709551615-18446744073709551615").to_string(),
            "18446744073709551615-18446744073709551615"
        );
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "a-1",
            "1-b",
            "+1-0",
            "1-0-0",
            "18446744073709551616-0",
        ] {
            assert_eq!(StreamId::parse(bad), None, "{bad:?}");
        }
    }
}
