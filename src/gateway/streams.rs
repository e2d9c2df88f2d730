//! The gateway's Redis side: adding envelopes to streams, and reading replies and the backend's `send` and
//! `broadcast` entries. Blocking reads each have a connection of their own (a blocked connection serves nothing
//! else); adds share one.

use fred::{
    bytes::Bytes,
    clients::Client,
    error::{Error, ErrorKind},
    interfaces::{ClientLike, StreamsInterface},
    types::{
        ClusterHash, CustomCommand, Resp3Frame, Value,
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
) -> Result<Vec<Entry>, Error> {
    let mut args: Vec<Value> = vec![
        "GROUP".into(),
        group.into(),
        consumer.into(),
        "COUNT".into(),
        number(READ_COUNT),
    ];
    if let Some(ms) = block {
        args.extend(["BLOCK".into(), number(ms)]);
    }
    args.extend(["STREAMS".into(), stream.into(), id.into()]);
    read_entries(client, "XREADGROUP", args, block.is_some()).await
}

/// `XREAD COUNT .. BLOCK .. STREAMS key id`.
pub async fn read(client: &Client, key: &str, after: &str) -> Result<Vec<Entry>, Error> {
    read_at_most(client, key, after, READ_COUNT, Some(BLOCK_MS)).await
}

/// `XREAD COUNT count [BLOCK ms] STREAMS key id`.
pub async fn read_at_most(
    client: &Client,
    key: &str,
    after: &str,
    count: u64,
    block: Option<u64>,
) -> Result<Vec<Entry>, Error> {
    let mut args: Vec<Value> = vec!["COUNT".into(), number(count)];
    if let Some(ms) = block {
        args.extend(["BLOCK".into(), number(ms)]);
    }
    args.extend(["STREAMS".into(), key.into(), after.into()]);
    read_entries(client, "XREAD", args, block.is_some()).await
}

fn number(n: u64) -> Value {
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Sends a stream read and takes its entries from the answer's frames as they came, not converted to fred's
/// values first: the router reads every `send` entry, and the conversion (a UTF-8 check and a string per id, name
/// and value, taken apart again here) was a large part of what it spends above a plain node.
async fn read_entries(
    client: &Client,
    command: &'static str,
    args: Vec<Value>,
    blocking: bool,
) -> Result<Vec<Entry>, Error> {
    // On a Redis Cluster the one stream's key says the shard: it is the one but last argument.
    let key_at = args.len() - 2;
    let command = CustomCommand::new_static(command, ClusterHash::Offset(key_at), blocking);
    entries(client.custom_raw(command, args).await?)
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

/// The entries of an `XREAD`/`XREADGROUP` answer, read from its frames: the answer to a read that timed out is
/// nil, an entry deleted since it was read (in a consumer's pending list) has nil fields, and field names and values
/// may be any bytes. RESP2 (`[[stream, [[id, [k, v, ...]], ...]], ...]`, which fred hands over as RESP3 frames) and
/// RESP3 (a map of streams) alike; an error answer is an error.
fn entries(raw: Resp3Frame) -> Result<Vec<Entry>, Error> {
    let streams: Vec<(Resp3Frame, Resp3Frame)> = match raw {
        Resp3Frame::Map { data, .. } => data.into_iter().collect(),
        Resp3Frame::Array { data, .. } => data
            .into_iter()
            .filter_map(|s| match s {
                Resp3Frame::Array { data: mut pair, .. } if pair.len() == 2 => {
                    let entries = pair.pop()?;
                    Some((pair.pop()?, entries))
                }
                _ => None,
            })
            .collect(),
        Resp3Frame::SimpleError { data, .. } => {
            return Err(Error::new(ErrorKind::Unknown, data.to_string()));
        }
        Resp3Frame::BlobError { data, .. } => {
            let text = String::from_utf8_lossy(&data).into_owned();
            return Err(Error::new(ErrorKind::Unknown, text));
        }
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for (stream, list) in streams {
        let (Some(stream), Resp3Frame::Array { data: list, .. }) = (text(stream), list) else {
            continue;
        };
        out.reserve(list.len());
        for entry in list {
            let Resp3Frame::Array {
                data: mut parts, ..
            } = entry
            else {
                continue;
            };
            if parts.len() != 2 {
                continue;
            }
            let fields = parts.pop().unwrap_or(Resp3Frame::Null);
            let Some(id) = parts.pop().and_then(text) else {
                continue;
            };
            out.push(Entry {
                stream: stream.clone(),
                id,
                fields: pairs(fields),
            });
        }
    }
    Ok(out)
}

/// An entry's fields (`[k, v, ...]` or a map) as byte pairs; none when it was deleted. A field or value that is
/// not a string is left out.
fn pairs(fields: Resp3Frame) -> Vec<(Bytes, Bytes)> {
    let both = |(k, v): (Resp3Frame, Resp3Frame)| Some((blob(k)?, blob(v)?));
    match fields {
        Resp3Frame::Array { data, .. } => {
            let mut it = data.into_iter();
            let mut pairs = Vec::with_capacity(it.len() / 2);
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.extend(both((k, v)));
            }
            pairs
        }
        Resp3Frame::Map { data, .. } => data.into_iter().filter_map(both).collect(),
        _ => Vec::new(),
    }
}

/// A string frame's bytes (shared with the answer, not copied).
fn blob(frame: Resp3Frame) -> Option<Bytes> {
    match frame {
        Resp3Frame::BlobString { data, .. }
        | Resp3Frame::SimpleString { data, .. }
        | Resp3Frame::VerbatimString { data, .. } => Some(data),
        _ => None,
    }
}

/// A string frame as text; `None` when it is not a string or not UTF-8.
fn text(frame: Resp3Frame) -> Option<String> {
    String::from_utf8(blob(frame)?.to_vec()).ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::String(text.into())
    }

    fn blob(bytes: &[u8]) -> Resp3Frame {
        Resp3Frame::BlobString {
            data: Bytes::copy_from_slice(bytes),
            attributes: None,
        }
    }

    fn array(data: Vec<Resp3Frame>) -> Resp3Frame {
        Resp3Frame::Array {
            data,
            attributes: None,
        }
    }

    #[test]
    fn reads_any_answer_shape_without_failing() {
        assert!(
            entries(Resp3Frame::Null).unwrap().is_empty(),
            "a read that timed out"
        );
        let resp2 = array(vec![array(vec![
            blob(b"socket:send"),
            array(vec![
                array(vec![blob(b"1-0"), array(vec![blob(b"data"), blob(b"{}")])]),
                // Deleted since this consumer read it.
                array(vec![blob(b"2-0"), Resp3Frame::Null]),
                array(vec![blob(b"3-0"), array(vec![blob(b"other"), blob(b"x")])]),
                array(vec![
                    blob(b"4-0"),
                    array(vec![blob(b"data"), blob(&[0xff, 0])]),
                ]),
                // A value that is not a string is left out, the rest of the entry kept.
                array(vec![
                    blob(b"5-0"),
                    array(vec![
                        blob(b"n"),
                        Resp3Frame::Number {
                            data: 1,
                            attributes: None,
                        },
                        blob(b"data"),
                        blob(b"[]"),
                    ]),
                ]),
                blob(b"garbage"),
                // An id that is not text.
                array(vec![blob(&[0xff]), array(vec![blob(b"data"), blob(b"{}")])]),
            ]),
        ])]);
        let got = entries(resp2).unwrap();
        let summary: Vec<(&str, Option<&[u8]>)> =
            got.iter().map(|e| (e.id.as_str(), e.data())).collect();
        assert_eq!(
            summary,
            [
                ("1-0", Some(&b"{}"[..])),
                ("2-0", None),
                ("3-0", None),
                ("4-0", Some(&[0xff, 0][..])),
                ("5-0", Some(&b"[]"[..]))
            ]
        );
        assert!(got.iter().all(|e| e.stream == "socket:send"));
        assert_eq!(got[4].fields.len(), 1);
        let stream = array(vec![array(vec![
            blob(b"5-1"),
            array(vec![blob(b"data"), blob(b"[1]")]),
        ])]);
        let resp3 = Resp3Frame::Map {
            data: [(blob(b"r"), stream)].into_iter().collect(),
            attributes: None,
        };
        let got = entries(resp3).unwrap();
        assert_eq!(
            (got[0].stream.as_str(), got[0].id.as_str(), got[0].data()),
            ("r", "5-1", Some(&b"[1]"[..]))
        );
        let number = Resp3Frame::Number {
            data: 3,
            attributes: None,
        };
        assert!(entries(number).unwrap().is_empty());
    }

    #[test]
    fn an_error_answer_is_an_error() {
        let nogroup = Resp3Frame::SimpleError {
            data: "NOGROUP No such key 'k' or consumer group 'g'".into(),
            attributes: None,
        };
        let e = entries(nogroup).unwrap_err();
        assert!(e.details().contains("NOGROUP"), "{e}");
        let blob_error = Resp3Frame::BlobError {
            data: Bytes::from_static(b"ERR bad"),
            attributes: None,
        };
        assert!(
            entries(blob_error)
                .unwrap_err()
                .details()
                .contains("ERR bad")
        );
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
