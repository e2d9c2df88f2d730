//! Routing `send` entries to the nodes that hold their user, as pure bookkeeping (the Redis side is
//! [`super::router`]): which node gets which entry, and which forwarded entries a node already delivered.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fmt,
};

use fred::bytes::Bytes;

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

/// A change to a node's set of held users, as a node writes it to the directory stream (`gateway:directory`)
/// next to the set itself, so that the router keeps every set in its memory instead of asking Redis per batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The node's set is empty now (it started, or is about to be written whole).
    Reset,
    Add(String),
    Remove(String),
}

/// A directory entry's fields: `node` with the node's id, then one field per change in their order: `=` (reset,
/// empty value), `+ <tag>`, `- <tag>`.
pub fn directory_fields(node: &str, changes: &[Change]) -> Vec<(Bytes, Bytes)> {
    let mut fields = Vec::with_capacity(changes.len() + 1);
    fields.push((Bytes::from_static(b"node"), Bytes::from(node.to_owned())));
    for change in changes {
        fields.push(match change {
            Change::Reset => (Bytes::from_static(b"="), Bytes::new()),
            Change::Add(tag) => (Bytes::from_static(b"+"), Bytes::from(tag.clone())),
            Change::Remove(tag) => (Bytes::from_static(b"-"), Bytes::from(tag.clone())),
        });
    }
    fields
}

/// Reads a directory entry (untrusted: whatever is in Redis): the node and its changes, or why not.
pub fn directory_changes(fields: &[(Bytes, Bytes)]) -> Result<(String, Vec<Change>), String> {
    let text = |b: &Bytes| std::str::from_utf8(b).map(str::to_owned);
    let Some((name, node)) = fields.first() else {
        return Err("no fields".into());
    };
    let node = match (name.as_ref(), text(node)) {
        (b"node", Ok(node)) if !node.is_empty() => node,
        _ => return Err("the first field is not `node`".into()),
    };
    let changes = fields[1..]
        .iter()
        .map(|(op, value)| {
            let tag = || text(value).map_err(|_| "a tag that is not UTF-8".to_owned());
            match op.as_ref() {
                b"=" => Ok(Change::Reset),
                b"+" => Ok(Change::Add(tag()?)),
                b"-" => Ok(Change::Remove(tag()?)),
                _ => Err(format!("unknown change {:?}", String::from_utf8_lossy(op))),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok((node, changes))
}

/// The router's copy of the nodes' sets of held users: taken whole when it starts routing, then kept by the
/// directory's changes. A node it has no set for (a node of an earlier build, which writes no changes) is asked
/// in Redis as before.
#[derive(Debug, Default)]
pub struct Mirror {
    sets: HashMap<String, HashSet<String>>,
}

impl Mirror {
    /// A node's whole set, as read from Redis.
    pub fn set(&mut self, node: String, tags: impl IntoIterator<Item = String>) {
        self.sets.insert(node, tags.into_iter().collect());
    }

    /// Applies a node's changes in order. For a node it keeps no set of, only from a reset on: what came before
    /// changed a set it never had whole (the node is asked in Redis until then).
    pub fn apply(&mut self, node: String, changes: Vec<Change>) {
        let mut changes = changes.into_iter().peekable();
        if !self.sets.contains_key(&node) {
            while changes.next_if(|c| *c != Change::Reset).is_some() {}
            if changes.peek().is_none() {
                return;
            }
        }
        let set = self.sets.entry(node).or_default();
        for change in changes {
            match change {
                Change::Reset => set.clear(),
                Change::Add(tag) => {
                    set.insert(tag);
                }
                Change::Remove(tag) => {
                    set.remove(&tag);
                }
            }
        }
    }

    /// The set of `node`, if this copy keeps it.
    pub fn of(&self, node: &str) -> Option<&HashSet<String>> {
        self.sets.get(node)
    }

    /// Forgets the nodes not in `present` (gone: they get nothing, and a node that comes back starts with a reset).
    pub fn keep_only(&mut self, present: &[String]) {
        self.sets.retain(|node, _| present.contains(node));
    }
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

    #[test]
    fn directory_entries_round_trip_and_bad_ones_are_refused() {
        let changes = vec![
            Change::Reset,
            Change::Add("/a|x".into()),
            Change::Remove("/a|y".into()),
        ];
        let fields = directory_fields("n1", &changes);
        assert_eq!(directory_changes(&fields), Ok(("n1".to_owned(), changes)));
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        for bad in [
            vec![],
            vec![(b("user"), b("n1"))],
            vec![(b("node"), b(""))],
            vec![(b("node"), b("n1")), (b("*"), b("/a|x"))],
            vec![(b("node"), b("n1")), (b("+"), Bytes::from_static(&[0xff]))],
        ] {
            assert!(directory_changes(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_mirror_follows_a_nodes_changes_in_order() {
        let mut mirror = Mirror::default();
        mirror.set("n1".into(), ["/a|x".to_owned(), "/a|y".to_owned()]);
        assert!(
            mirror.of("n2").is_none(),
            "a node without a set is asked in Redis"
        );
        mirror.apply(
            "n1".into(),
            vec![Change::Remove("/a|x".into()), Change::Add("/a|z".into())],
        );
        let mut held: Vec<_> = mirror.of("n1").unwrap().iter().cloned().collect();
        held.sort();
        assert_eq!(held, ["/a|y", "/a|z"]);
        // A restart: empty, then what comes after.
        mirror.apply(
            "n1".into(),
            vec![
                Change::Add("/a|w".into()),
                Change::Reset,
                Change::Add("/a|v".into()),
            ],
        );
        assert_eq!(mirror.of("n1").unwrap().len(), 1);
        assert!(mirror.of("n1").unwrap().contains("/a|v"));
        // A node it had no set for: changes before a reset changed a set it never had whole.
        mirror.apply("n2".into(), vec![Change::Add("/b|w".into())]);
        assert!(mirror.of("n2").is_none());
        // From a reset on (the node started after the copy was taken), it keeps one.
        mirror.apply(
            "n2".into(),
            vec![
                Change::Add("/b|w".into()),
                Change::Reset,
                Change::Add("/b|x".into()),
            ],
        );
        assert!(!mirror.of("n2").unwrap().contains("/b|w"));
        assert!(mirror.of("n2").unwrap().contains("/b|x"));
        // Replaying changes already in a set taken whole leaves it as it is.
        mirror.apply("n2".into(), vec![Change::Add("/b|x".into())]);
        assert_eq!(mirror.of("n2").unwrap().len(), 1);
        mirror.keep_only(&["n2".to_owned()]);
        assert!(mirror.of("n1").is_none());
        assert!(mirror.of("n2").is_some());
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
