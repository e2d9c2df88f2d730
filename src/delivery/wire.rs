//! What a queued message is, and what a client receives: plain serde types, independent of any store.

use std::{fmt, str::FromStr};

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{self, SeqAccess, Visitor},
    ser::SerializeSeq,
};
use serde_json::Value;

/// A message's id: `<ms>-<seq>`, the form of a Redis stream id. Ids grow in send order within a room, so a
/// client that sees one twice (its ack was lost) can tell it is a duplicate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId {
    /// Milliseconds since the Unix epoch when the message was stored (Redis's clock, or this node's in memory).
    pub ms: u64,
    /// Orders messages stored in the same millisecond.
    pub seq: u64,
}

impl MessageId {
    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }

    /// The id that follows `self` at time `now_ms`: a later millisecond starts again at 0, a clock that did not move
    /// (or went back) keeps `self`'s millisecond and counts up, as Redis does for stream ids.
    pub fn next(self, now_ms: u64) -> Self {
        if now_ms > self.ms {
            Self::new(now_ms, 0)
        } else {
            Self::new(self.ms, self.seq.saturating_add(1))
        }
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a string is not a message id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a message id (<ms>-<seq>): {0:?}")]
pub struct BadId(pub String);

impl FromStr for MessageId {
    type Err = BadId;

    /// Only the canonical form (decimal digits, no sign, no leading zero but for `0`), so that an id has one
    /// spelling and compares equal to what Redis returns.
    fn from_str(s: &str) -> Result<Self, BadId> {
        let bad = || BadId(s.chars().take(64).collect());
        let number = |part: &str| -> Option<u64> {
            let canonical = !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_digit())
                && (part == "0" || !part.starts_with('0'));
            canonical.then(|| part.parse().ok()).flatten()
        };
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(Self::new(
            number(ms).ok_or_else(bad)?,
            number(seq).ok_or_else(bad)?,
        ))
    }
}

impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// A message waiting for its acknowledgement, as a store gives it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub id: MessageId,
    pub event: String,
    /// The event's arguments, each its own Socket.IO argument.
    pub args: Vec<Value>,
    /// Pushed with `resync=true`: its ack checks that it was the first pending message of its event.
    pub resync: bool,
    /// When it was stored (ms since the Unix epoch, the storing node's clock), for logs and age metrics.
    pub at_ms: u64,
}

/// The `batch` event's one argument: every pending message of a room as `[[event, ...args], ...]`, in send order
/// (the reliable push service's format, which its clients unpack with `args[0]` and `args.slice(1)`).
///
/// Serialized as a sequence (not a tuple), so socketioxide sends it as one argument.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch(pub Vec<BatchItem>);

/// One message of a [`Batch`]: `[event, ...args]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchItem {
    pub event: String,
    pub args: Vec<Value>,
}

impl Batch {
    /// The batch of `messages`; acknowledge it with the ids of the same slice (see [`ids`]).
    pub fn of(messages: &[StoredMessage]) -> Self {
        Self(
            messages
                .iter()
                .map(|m| BatchItem {
                    event: m.event.clone(),
                    args: m.args.clone(),
                })
                .collect(),
        )
    }

    /// The batch of `messages` with each message's id as its item's last element (`message_ids = true`):
    /// `[[event, ...args, id], ...]`, the same shape as a live message's arguments then.
    pub fn with_ids(messages: &[StoredMessage]) -> Self {
        Self(
            messages
                .iter()
                .map(|m| BatchItem {
                    event: m.event.clone(),
                    args: with_id(&m.args, m.id),
                })
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `args` followed by `id` as a string: what a client of a namespace with `message_ids` receives.
pub fn with_id(args: &[Value], id: MessageId) -> Vec<Value> {
    let mut args = args.to_vec();
    args.push(Value::String(id.to_string()));
    args
}

/// The ids of `messages`: what the batch's ack removes, and nothing else.
pub fn ids(messages: &[StoredMessage]) -> Vec<MessageId> {
    messages.iter().map(|m| m.id).collect()
}

impl Serialize for Batch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(&self.0)
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::deserialize(d).map(Self)
    }
}

impl Serialize for BatchItem {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(1 + self.args.len()))?;
        seq.serialize_element(&self.event)?;
        for arg in &self.args {
            seq.serialize_element(arg)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for BatchItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Item;
        impl<'de> Visitor<'de> for Item {
            type Value = BatchItem;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("[event, ...args]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BatchItem, A::Error> {
                let event: String = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let mut args = Vec::new();
                while let Some(arg) = seq.next_element()? {
                    args.push(arg);
                }
                Ok(BatchItem { event, args })
            }
        }
        d.deserialize_seq(Item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(ms: u64, seq: u64, event: &str, args: Value) -> StoredMessage {
        StoredMessage {
            id: MessageId::new(ms, seq),
            event: event.into(),
            args: serde_json::from_value(args).unwrap(),
            resync: false,
            at_ms: ms,
        }
    }

    #[test]
    fn ids_have_one_spelling_and_order_numerically() {
        for (text, id) in [
            ("0-0", MessageId::new(0, 0)),
            ("1700000000000-12", MessageId::new(1_700_000_000_000, 12)),
            ("18446744073709551615-1", MessageId::new(u64::MAX, 1)),
        ] {
            assert_eq!(text.parse::<MessageId>(), Ok(id));
            assert_eq!(id.to_string(), text);
        }
        for bad in [
            "",
            "-",
            "1",
            "1-",
            "-1",
            "01-0",
            "1-01",
            "+1-0",
            "1-0-0",
            "a-0",
            "1 -0",
            "1-0 ",
            "18446744073709551616-0",
        ] {
            assert!(bad.parse::<MessageId>().is_err(), "{bad:?}");
        }
        // Numeric, not textual, order: 10-0 comes after 9-5.
        assert!(MessageId::new(9, 5) < MessageId::new(10, 0));
        assert!(MessageId::new(10, 0) < MessageId::new(10, 1));
    }

    #[test]
    fn next_ids_grow_even_when_the_clock_does_not() {
        let id = MessageId::new(100, 3);
        assert_eq!(id.next(101), MessageId::new(101, 0));
        assert_eq!(id.next(100), MessageId::new(100, 4));
        // A clock that went back keeps the last millisecond.
        assert_eq!(id.next(50), MessageId::new(100, 4));
    }

    #[test]
    fn stored_messages_round_trip() {
        let m = StoredMessage {
            resync: true,
            ..message(
                1_700_000_000_000,
                2,
                "update_store",
                json!(["user", {"id": 1}]),
            )
        };
        let text = serde_json::to_value(&m).unwrap();
        assert_eq!(
            text,
            json!({"id": "1700000000000-2", "event": "update_store", "args": ["user", {"id": 1}],
                "resync": true, "at_ms": 1_700_000_000_000u64})
        );
        assert_eq!(serde_json::from_value::<StoredMessage>(text).unwrap(), m);
        let bad = json!({"id": "x", "event": "e", "args": [], "resync": false, "at_ms": 1});
        assert!(serde_json::from_value::<StoredMessage>(bad).is_err());
    }

    #[test]
    fn batches_are_the_push_services_arrays_and_round_trip() {
        let messages = [
            message(1, 0, "update_store", json!(["user", {"id": 1}])),
            message(1, 1, "ping", json!([])),
            message(2, 0, "list", json!([[1, 2], null])),
        ];
        let batch = Batch::of(&messages);
        let text = serde_json::to_value(&batch).unwrap();
        assert_eq!(
            text,
            json!([["update_store", "user", {"id": 1}], ["ping"], ["list", [1, 2], null]])
        );
        assert_eq!(serde_json::from_value::<Batch>(text).unwrap(), batch);
        assert_eq!(
            ids(&messages),
            [
                MessageId::new(1, 0),
                MessageId::new(1, 1),
                MessageId::new(2, 0)
            ]
        );
        assert_eq!(
            serde_json::to_value(Batch::with_ids(&messages)).unwrap(),
            json!([["update_store", "user", {"id": 1}, "1-0"], ["ping", "1-1"], ["list", [1, 2], null, "2-0"]])
        );
        assert_eq!(serde_json::to_value(Batch::default()).unwrap(), json!([]));
        assert!(Batch::default().is_empty());
        // An item needs its event name first.
        for bad in [json!([[]]), json!([[1, "a"]]), json!({"a": 1})] {
            assert!(
                serde_json::from_value::<Batch>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }
}
