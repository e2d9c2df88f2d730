//! The admin UI's `aggregatedEvents`: counts per kind and per second over the last minute, for its charts.
//! Pure bookkeeping, driven by the caller's clock.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

/// The window the UI charts.
const WINDOW_S: u64 = 60;

/// One count of a [`Aggregate`], as the UI reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AggregatedEvent {
    /// The second's start, in ms since the Unix epoch.
    pub timestamp: u64,
    /// `rawConnection`, `rawDisconnection`, `packetsIn`, `packetsOut`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The disconnection's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_type: Option<String>,
    pub count: u64,
}

/// One second's counts: (kind, sub type) → count.
type Counts = BTreeMap<(&'static str, Option<String>), u64>;

/// Counts per second, the last [`WINDOW_S`] seconds.
#[derive(Debug, Default)]
pub struct Aggregate {
    /// Oldest first.
    buckets: VecDeque<(u64, Counts)>,
}

impl Aggregate {
    /// Counts one `kind` at `now_ms`.
    pub fn add(&mut self, now_ms: u64, kind: &'static str, sub_type: Option<String>) {
        let second = now_ms / 1000;
        self.forget(second);
        if self.buckets.back().is_none_or(|(s, _)| *s != second) {
            self.buckets.push_back((second, BTreeMap::new()));
        }
        let (_, counts) = self.buckets.back_mut().expect("just pushed");
        *counts.entry((kind, sub_type)).or_default() += 1;
    }

    /// Everything counted in the window ending at `now_ms`, oldest first.
    pub fn values(&mut self, now_ms: u64) -> Vec<AggregatedEvent> {
        self.forget(now_ms / 1000);
        self.buckets
            .iter()
            .flat_map(|(second, counts)| {
                counts
                    .iter()
                    .map(move |((kind, sub_type), count)| AggregatedEvent {
                        timestamp: second * 1000,
                        kind,
                        sub_type: sub_type.clone(),
                        count: *count,
                    })
            })
            .collect()
    }

    fn forget(&mut self, second: u64) {
        while self
            .buckets
            .front()
            .is_some_and(|(s, _)| *s + WINDOW_S <= second)
        {
            self.buckets.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_second_and_forgets_after_a_minute() {
        let mut a = Aggregate::default();
        a.add(10_100, "rawConnection", None);
        a.add(10_900, "rawConnection", None);
        a.add(11_000, "rawDisconnection", Some("transport close".into()));
        let v = a.values(11_500);
        assert_eq!(
            v,
            [
                AggregatedEvent {
                    timestamp: 10_000,
                    kind: "rawConnection",
                    sub_type: None,
                    count: 2
                },
                AggregatedEvent {
                    timestamp: 11_000,
                    kind: "rawDisconnection",
                    sub_type: Some("transport close".into()),
                    count: 1
                },
            ]
        );
        assert_eq!(
            serde_json::to_value(&v[1]).unwrap(),
            serde_json::json!({"timestamp": 11000, "type": "rawDisconnection", "subType": "transport close", "count": 1})
        );
        // 60 s after the first second, it is gone; the second's bucket stays one second more.
        assert_eq!(a.values(70_000).len(), 1);
        assert!(a.values(71_000).is_empty());
    }
}
