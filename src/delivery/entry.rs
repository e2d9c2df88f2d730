//! A stored message as the fields of a Redis stream entry, and back. What comes back from Redis is untrusted
//! (another version, a hand-written `XADD`, a bug): anything that does not parse is a [`Malformed`], never a panic.

use serde_json::Value;

use super::wire::{MessageId, StoredMessage};

pub const EVENT: &str = "event";
pub const ARGS: &str = "args";
pub const RESYNC: &str = "resync";
pub const AT_MS: &str = "at_ms";

/// Why an entry was skipped (logged with the entry's id).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the entry is not [id, fields]")]
    Shape,
    #[error(transparent)]
    Id(#[from] super::wire::BadId),
    #[error("field {0} is missing or not text")]
    Missing(&'static str),
    #[error("field {0} is given twice")]
    Repeated(&'static str),
    #[error("event is empty")]
    EmptyEvent,
    #[error("args is not a JSON array: {0}")]
    Args(String),
    #[error("resync is neither 0 nor 1")]
    Resync,
    #[error("at_ms is not a number of milliseconds")]
    At,
}

/// The entry's fields, in the order the scripts write them.
pub fn fields(event: &str, args: &[Value], resync: bool, at_ms: u64) -> [String; 4] {
    [
        event.to_owned(),
        Value::from(args.to_vec()).to_string(),
        if resync { "1" } else { "0" }.to_owned(),
        at_ms.to_string(),
    ]
}

/// The message of an entry with id `id` and its `(field, value)` pairs. Fields we do not know are ignored (a
/// newer version may add some).
pub fn parse(id: &str, pairs: &[(String, String)]) -> Result<StoredMessage, Malformed> {
    let id: MessageId = id.parse()?;
    let field = |name: &'static str| -> Result<&str, Malformed> {
        let mut values = pairs.iter().filter(|(f, _)| f == name).map(|(_, v)| v);
        let value = values.next().ok_or(Malformed::Missing(name))?;
        match values.next() {
            Some(_) => Err(Malformed::Repeated(name)),
            None => Ok(value),
        }
    };
    let event = field(EVENT)?;
    if event.is_empty() {
        return Err(Malformed::EmptyEvent);
    }
    let args = match serde_json::from_str(field(ARGS)?) {
        Ok(Value::Array(args)) => args,
        Ok(other) => return Err(Malformed::Args(format!("a JSON {}", kind(&other)))),
        Err(e) => return Err(Malformed::Args(e.to_string())),
    };
    let resync = match field(RESYNC)? {
        "0" => false,
        "1" => true,
        _ => return Err(Malformed::Resync),
    };
    let at_ms = field(AT_MS)?.parse().map_err(|_| Malformed::At)?;
    Ok(StoredMessage {
        id,
        event: event.to_owned(),
        args,
        resync,
        at_ms,
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(f, v)| (f.to_string(), v.to_string()))
            .collect()
    }

    fn written(event: &str, args: Value, resync: bool) -> Vec<(String, String)> {
        let args: Vec<Value> = serde_json::from_value(args).unwrap();
        [EVENT, ARGS, RESYNC, AT_MS]
            .into_iter()
            .map(String::from)
            .zip(fields(event, &args, resync, 1_700_000_000_123))
            .collect()
    }

    #[test]
    fn what_is_written_reads_back() {
        let m = parse(
            "1700000000123-4",
            &written("update_store", json!(["user", {"id": 1}]), true),
        )
        .unwrap();
        assert_eq!(m.id, MessageId::new(1_700_000_000_123, 4));
        assert_eq!(m.event, "update_store");
        assert_eq!(m.args, [json!("user"), json!({"id": 1})]);
        assert!(m.resync);
        assert_eq!(m.at_ms, 1_700_000_000_123);
        let m = parse("1-0", &written("e", json!([]), false)).unwrap();
        assert!(m.args.is_empty() && !m.resync);
        // Unknown fields, in any order, are ignored.
        let mut more = written("e", json!([1]), false);
        more.insert(0, ("v".into(), "2".into()));
        more.reverse();
        assert_eq!(parse("1-0", &more).unwrap().args, [json!(1)]);
    }

    #[test]
    fn malformed_entries_are_refused_not_panicked_on() {
        let good = [
            ("event", "e"),
            ("args", "[]"),
            ("resync", "0"),
            ("at_ms", "5"),
        ];
        let with = |field: &str, value: &str| {
            let mut p = pairs(&good);
            p.retain(|(f, _)| f != field);
            p.push((field.into(), value.into()));
            p
        };
        let without = |field: &str| {
            let mut p = pairs(&good);
            p.retain(|(f, _)| f != field);
            p
        };
        assert!(parse("1-0", &pairs(&good)).is_ok());
        assert!(matches!(parse("x", &pairs(&good)), Err(Malformed::Id(_))));
        for f in ["event", "args", "resync", "at_ms"] {
            assert!(
                matches!(parse("1-0", &without(f)), Err(Malformed::Missing(_))),
                "{f}"
            );
        }
        let mut twice = pairs(&good);
        twice.push(("event".into(), "other".into()));
        assert_eq!(parse("1-0", &twice), Err(Malformed::Repeated("event")));
        assert_eq!(parse("1-0", &with("event", "")), Err(Malformed::EmptyEvent));
        for args in ["", "{", "{}", "\"a\"", "1", "null"] {
            assert!(
                matches!(parse("1-0", &with("args", args)), Err(Malformed::Args(_))),
                "{args}"
            );
        }
        for resync in ["", "true", "2", " 1"] {
            assert_eq!(
                parse("1-0", &with("resync", resync)),
                Err(Malformed::Resync),
                "{resync}"
            );
        }
        for at in ["", "-1", "1.5", "soon", "99999999999999999999999"] {
            assert_eq!(parse("1-0", &with("at_ms", at)), Err(Malformed::At), "{at}");
        }
    }
}
