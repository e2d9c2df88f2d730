//! The gateway's Redis side: adding envelopes to streams, and reading replies and the backend's `send` and
//! `broadcast` entries. Blocking reads each have a connection of their own (a blocked connection serves nothing
//! else); adds share one.

use fred::{
    bytes::Bytes,
    clients::Client,
    interfaces::StreamsInterface,
    types::{
        Value,
        streams::{XCapKind, XCapTrim},
    },
};

/// Entries read at once.
pub const READ_COUNT: u64 = 512;
/// How long a read blocks before it loops (and sees a shutdown).
pub const BLOCK_MS: u64 = 2_000;

/// One entry read from a stream: its stream, its id and its fields, in order (none when it was deleted).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub stream: String,
    pub id: String,
    /// Shared with the reply they were read from (not copied): the router forwards them as they are.
    pub fields: Vec<(Bytes, Bytes)>,
}

impl Entry {
    /// The `data` field, the one field of the backend's entries.
    pub fn data(&self) -> Option<&[u8]> {
        self.data_bytes().map(|v| v.as_ref())
    }

    /// The `data` field as it was read (shared, not copied).
    pub fn data_bytes(&self) -> Option<&Bytes> {
        self.fields
            .iter()
            .find(|(k, _)| k.as_ref() == b"data")
            .map(|(_, v)| v)
    }
}

/// `XADD key * data <json>` then `XTRIM key MAXLEN ~ maxlen`, in one round trip: how many entries the trim
/// removed (`XADD ... MAXLEN ~` trims the same way, but does not say how many).
pub async fn add(
    client: &Client,
    key: &str,
    maxlen: u64,
    data: String,
) -> Result<u64, fred::error::Error> {
    let pipeline = client.pipeline();
    pipeline
        .xadd::<(), _, _, _, _>(key, false, None::<()>, "*", vec![("data", data)])
        .await?;
    pipeline.xtrim::<(), _, _>(key, cap(maxlen)).await?;
    let mut replies = pipeline.try_all::<Value>().await.into_iter();
    replies.next().unwrap_or(Ok(Value::Null))?;
    trimmed(replies.next().unwrap_or(Ok(Value::Null))?)
}

/// `MAXLEN ~ maxlen`: trimmed by whole listpack nodes, which is what keeps `XADD` cheap.
fn cap(maxlen: u64) -> (XCapKind, XCapTrim, i64, Option<i64>) {
    (
        XCapKind::MaxLen,
        XCapTrim::AlmostExact,
        i64::try_from(maxlen).unwrap_or(i64::MAX),
        None,
    )
}

/// `XTRIM key MAXLEN ~ maxlen`: how many entries it removed.
pub async fn trim(client: &Client, key: &str, maxlen: u64) -> Result<u64, fred::error::Error> {
    trimmed(client.xtrim::<Value, _, _>(key, cap(maxlen)).await?)
}

/// `XTRIM key MINID ~ id`: the entries before `id` (those read), by whole listpack nodes; every one of them when
/// `exact` (a stream of few entries, which `~` would never trim).
pub async fn trim_before(
    client: &Client,
    key: &str,
    id: &str,
    exact: bool,
) -> Result<(), fred::error::Error> {
    let how = match exact {
        true => XCapTrim::Exact,
        false => XCapTrim::AlmostExact,
    };
    client
        .xtrim::<Value, _, _>(key, (XCapKind::MinID, how, id, None))
        .await
        .map(|_| ())
}

/// `XTRIM`'s answer: the number of entries removed.
fn trimmed(answer: Value) -> Result<u64, fred::error::Error> {
    answer.convert::<u64>()
}

/// Creates `group` on each stream at its end, and the stream if missing; an existing group is kept (with where it
/// was: what was added while this node was away is read next).
pub async fn ensure_group(
    client: &Client,
    stream: &str,
    group: &str,
) -> Result<(), fred::error::Error> {
    match client
        .xgroup_create::<Value, _, _, _>(stream, group, "$", true)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.details().contains("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

/// `XREADGROUP GROUP group consumer COUNT .. [BLOCK ..] STREAMS stream id`: `id` `0` reads this consumer's
/// entries read before but not acknowledged, `>` new ones.
pub async fn read_group(
    client: &Client,
    group: &str,
    consumer: &str,
    stream: &str,
    id: &str,
    block: Option<u64>,
) -> Result<Vec<Entry>, fred::error::Error> {
    let raw: Value = client
        .xreadgroup(group, consumer, Some(READ_COUNT), block, false, stream, id)
        .await?;
    Ok(entries(raw))
}

/// `XREAD COUNT .. BLOCK .. STREAMS key id`.
pub async fn read(
    client: &Client,
    key: &str,
    after: &str,
) -> Result<Vec<Entry>, fred::error::Error> {
    let raw: Value = client
        .xread(Some(READ_COUNT), Some(BLOCK_MS), key, after)
        .await?;
    Ok(entries(raw))
}

pub async fn ack(
    client: &Client,
    stream: &str,
    group: &str,
    ids: Vec<String>,
) -> Result<(), fred::error::Error> {
    client
        .xack::<Value, _, _, _>(stream, group, ids)
        .await
        .map(|_| ())
}

/// `XADD key MAXLEN ~ maxlen * <k> <v> ...`: one entry of many fields (the router's batch for one node).
pub async fn add_fields(
    client: &(impl StreamsInterface + Sync),
    key: &str,
    maxlen: u64,
    fields: Vec<(Bytes, Bytes)>,
) -> Result<(), fred::error::Error> {
    client
        .xadd::<Value, _, _, _, _>(key, false, cap(maxlen), "*", fields)
        .await
        .map(|_| ())
}

/// The id of the last entry of `key`, `0-0` when it has none: where a reader starts so that it misses nothing
/// added after it started.
pub async fn last_id(client: &Client, key: &str) -> Result<String, fred::error::Error> {
    let raw: Value = client.xrevrange(key, "+", "-", Some(1)).await?;
    Ok(match raw {
        Value::Array(list) => list
            .into_iter()
            .next()
            .and_then(|entry| match entry {
                Value::Array(mut parts) if !parts.is_empty() => parts.swap_remove(0).as_string(),
                _ => None,
            })
            .unwrap_or_else(|| "0-0".to_owned()),
        _ => "0-0".to_owned(),
    })
}

/// Where `group` of `stream` is (its `last-delivered-id`, from `XINFO GROUPS`); `None` without the stream or the
/// group. RESP2 (each group a flat array of names and values) and RESP3 (a map) alike.
pub async fn group_position(
    client: &Client,
    stream: &str,
    group: &str,
) -> Result<Option<String>, fred::error::Error> {
    let raw: Value = match client.xinfo_groups(stream).await {
        Ok(raw) => raw,
        Err(e) if e.details().contains("no such key") => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(position_of(raw, group))
}

fn position_of(raw: Value, group: &str) -> Option<String> {
    let Value::Array(groups) = raw else {
        return None;
    };
    groups.into_iter().find_map(|info| {
        let fields: Vec<(String, Value)> = named(info)
            .into_iter()
            .filter_map(|(k, v)| Some((k.as_string()?, v)))
            .collect();
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.as_string())
        };
        (field("name")? == group).then(|| field("last-delivered-id"))?
    })
}

/// `XGROUP DESTROY`: a group nobody reads any more; a missing stream or group is not an error.
pub async fn destroy_group(
    client: &Client,
    stream: &str,
    group: &str,
) -> Result<(), fred::error::Error> {
    match client.xgroup_destroy::<Value, _, _>(stream, group).await {
        Ok(_) => Ok(()),
        Err(e) if e.details().contains("no such key") || e.details().contains("NOGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

/// The entries of an `XREAD`/`XREADGROUP` answer, read by hand rather than converted: the answer to a read that
/// timed out is nil, an entry deleted since it was read (in a consumer's pending list) has nil fields, and field
/// names and values may be any bytes. RESP2 (`[[stream, [[id, [k, v, ...]], ...]], ...]`) and RESP3 (a map of
/// streams) alike.
pub fn entries(raw: Value) -> Vec<Entry> {
    let streams: Vec<(Option<String>, Value)> = match raw {
        Value::Map(map) => map
            .inner()
            .into_iter()
            .map(|(k, v)| (k.as_str().map(str::to_owned), v))
            .collect(),
        Value::Array(list) => list
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => {
                    let entries = pair.pop()?;
                    Some((pair.pop()?.as_string(), entries))
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for (stream, list) in streams {
        let (Some(stream), Value::Array(list)) = (stream, list) else {
            continue;
        };
        for entry in list {
            let Value::Array(mut parts) = entry else {
                continue;
            };
            if parts.len() != 2 {
                continue;
            }
            let fields = parts.pop().unwrap_or(Value::Null);
            let Some(id) = parts.pop().and_then(|id| id.as_string()) else {
                continue;
            };
            out.push(Entry {
                stream: stream.clone(),
                id,
                fields: pairs(fields),
            });
        }
    }
    out
}

/// An entry's fields (`[k, v, ...]` or a map) as byte pairs; none when it was deleted. A field or value that is
/// not a string is left out.
fn pairs(fields: Value) -> Vec<(Bytes, Bytes)> {
    named(fields)
        .into_iter()
        .filter_map(|(k, v)| Some((bytes(k)?, bytes(v)?)))
        .collect()
}

/// Names and values, from a RESP2 flat array (`[k, v, ...]`) or a RESP3 map; none from anything else.
fn named(value: Value) -> Vec<(Value, Value)> {
    match value {
        Value::Array(list) => {
            let mut it = list.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        Value::Map(map) => map
            .inner()
            .into_iter()
            .map(|(k, v)| (Value::Bytes(k.into_bytes()), v))
            .collect(),
        _ => Vec::new(),
    }
}

/// A string or bytes value's bytes, without copying them.
fn bytes(value: Value) -> Option<Bytes> {
    match value {
        Value::Bytes(b) => Some(b),
        Value::String(s) => Some(s.into_inner()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::String(text.into())
    }

    #[test]
    fn reads_any_answer_shape_without_failing() {
        assert!(entries(Value::Null).is_empty(), "a read that timed out");
        let resp2 = Value::Array(vec![Value::Array(vec![
            s("socket:send"),
            Value::Array(vec![
                Value::Array(vec![s("1-0"), Value::Array(vec![s("data"), s("{}")])]),
                // Deleted since this consumer read it.
                Value::Array(vec![s("2-0"), Value::Null]),
                Value::Array(vec![s("3-0"), Value::Array(vec![s("other"), s("x")])]),
                Value::Array(vec![
                    s("4-0"),
                    Value::Array(vec![
                        Value::Bytes(b"data".to_vec().into()),
                        Value::Bytes(vec![0xff, 0].into()),
                    ]),
                ]),
                s("garbage"),
            ]),
        ])]);
        let got = entries(resp2);
        let summary: Vec<(&str, Option<&[u8]>)> =
            got.iter().map(|e| (e.id.as_str(), e.data())).collect();
        assert_eq!(
            summary,
            [
                ("1-0", Some(&b"{}"[..])),
                ("2-0", None),
                ("3-0", None),
                ("4-0", Some(&[0xff, 0][..]))
            ]
        );
        assert!(got.iter().all(|e| e.stream == "socket:send"));
        let mut map = std::collections::HashMap::new();
        map.insert(
            fred::types::Key::from("r"),
            Value::Array(vec![Value::Array(vec![
                s("5-1"),
                Value::Array(vec![s("data"), s("[1]")]),
            ])]),
        );
        let resp3 = Value::Map(fred::types::Map::try_from(map).unwrap());
        let got = entries(resp3);
        assert_eq!(
            (got[0].stream.as_str(), got[0].id.as_str(), got[0].data()),
            ("r", "5-1", Some(&b"[1]"[..]))
        );
        assert!(entries(Value::Integer(3)).is_empty());
    }

    #[test]
    fn a_group_s_position_is_read_from_either_answer_shape() {
        let resp2 = Value::Array(vec![
            Value::Array(vec![
                s("name"),
                s("gateway:a"),
                s("last-delivered-id"),
                s("1-0"),
            ]),
            Value::Array(vec![
                s("name"),
                s("gateway:router"),
                s("pending"),
                Value::Integer(0),
                s("last-delivered-id"),
                s("7-2"),
            ]),
        ]);
        assert_eq!(
            position_of(resp2.clone(), "gateway:router").as_deref(),
            Some("7-2")
        );
        assert_eq!(position_of(resp2, "gateway:b"), None);
        let mut map = std::collections::HashMap::new();
        map.insert(fred::types::Key::from("name"), s("gateway:router"));
        map.insert(fred::types::Key::from("last-delivered-id"), s("9-0"));
        let resp3 = Value::Array(vec![Value::Map(fred::types::Map::try_from(map).unwrap())]);
        assert_eq!(position_of(resp3, "gateway:router").as_deref(), Some("9-0"));
        assert_eq!(position_of(Value::Null, "gateway:router"), None);
        assert_eq!(
            position_of(Value::Array(vec![s("garbage")]), "gateway:router"),
            None
        );
    }
}
