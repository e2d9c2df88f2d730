//! The gateway's Redis side: adding envelopes to streams, and reading replies and the backend's `send` and
//! `broadcast` entries. Blocking reads each have a connection of their own (a blocked connection serves nothing
//! else); adds share one.

use std::collections::HashMap;

use fred::{
    clients::Client,
    interfaces::StreamsInterface,
    types::{
        Key, Value,
        streams::{XCapKind, XCapTrim},
    },
};

/// Entries read at once.
pub const READ_COUNT: u64 = 512;
/// How long a read blocks before it loops (and sees a shutdown).
pub const BLOCK_MS: u64 = 2_000;

/// One entry read from a stream: its stream, its id and its `data` field (if any).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub stream: String,
    pub id: String,
    pub data: Option<Vec<u8>>,
}

/// `XADD key MAXLEN ~ maxlen * data <json>`.
pub async fn add(
    client: &Client,
    key: &str,
    maxlen: u64,
    data: String,
) -> Result<(), fred::error::Error> {
    client
        .xadd::<Value, _, _, _, _>(key, false, cap(maxlen), "*", vec![("data", data)])
        .await
        .map(|_| ())
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

/// `XTRIM key MAXLEN ~ maxlen`.
pub async fn trim(client: &Client, key: &str, maxlen: u64) -> Result<(), fred::error::Error> {
    client
        .xtrim::<Value, _, _>(key, cap(maxlen))
        .await
        .map(|_| ())
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

/// `XREADGROUP GROUP group consumer COUNT .. [BLOCK ..] STREAMS s1 s2 id id`: `id` `0` reads this consumer's
/// entries read before but not acknowledged, `>` new ones.
pub async fn read_group(
    client: &Client,
    group: &str,
    consumer: &str,
    streams: &[String],
    id: &str,
    block: Option<u64>,
) -> Result<Vec<Entry>, fred::error::Error> {
    let ids: Vec<&str> = streams.iter().map(|_| id).collect();
    let response = client
        .xreadgroup_map::<String, String, Key, Value, _, _, _, _>(
            group,
            consumer,
            Some(READ_COUNT),
            block,
            false,
            streams.to_vec(),
            ids,
        )
        .await?;
    Ok(entries(response))
}

/// `XREAD COUNT .. BLOCK .. STREAMS key id`.
pub async fn read(
    client: &Client,
    key: &str,
    after: &str,
) -> Result<Vec<Entry>, fred::error::Error> {
    let response = client
        .xread_map::<String, String, Key, Value, _, _>(Some(READ_COUNT), Some(BLOCK_MS), key, after)
        .await?;
    Ok(entries(response))
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

/// What `XREAD`/`XREADGROUP` answer: stream → [(id, field → value)].
type Read = HashMap<String, Vec<(String, HashMap<Key, Value>)>>;

fn entries(response: Read) -> Vec<Entry> {
    let mut out = Vec::new();
    for (stream, list) in response {
        for (id, fields) in list {
            let data = fields
                .into_iter()
                .find(|(k, _)| k.as_bytes() == b"data")
                .and_then(|(_, v)| v.as_bytes().map(<[u8]>::to_vec));
            out.push(Entry {
                stream: stream.clone(),
                id,
                data,
            });
        }
    }
    out
}

/// Whether a failed read is worth a pause before the next (Redis away) rather than a log line alone.
pub fn is_connection(e: &fred::error::Error) -> bool {
    !matches!(
        e.kind(),
        fred::error::ErrorKind::Parse | fred::error::ErrorKind::Unknown
    )
}
