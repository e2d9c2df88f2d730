//! The Redis recovery stores against a real `redis-server`: the same conformance suites as the memory stores, plus
//! what only Redis has: entries and sessions written by someone else, two nodes on one namespace, the scripts
//! surviving `SCRIPT FLUSH`, and a tail's connection of its own.

use std::time::Duration;

use fred::{interfaces::StreamsInterface, types::Value};

use socket_identity::{
    recovery::{
        Entry, EventLog, Holder, Offset, RedisLog, RedisSessions, Session, Sessions, conformance,
    },
    redis::{Endpoint, connect_client},
};

use crate::harness::*;

const TIMEOUT: Duration = Duration::from_secs(5);
const HOUR: Duration = Duration::from_secs(3600);

async fn client(redis: &Redis) -> (fred::clients::Client, Endpoint) {
    let endpoint = Endpoint::parse(&redis.url(), None).unwrap();
    (connect_client(&endpoint, TIMEOUT).await.unwrap(), endpoint)
}

async fn log(redis: &Redis, prefix: &str) -> RedisLog {
    let (client, endpoint) = client(redis).await;
    RedisLog::new(client, endpoint, TIMEOUT, prefix)
}

async fn sessions(redis: &Redis, prefix: &str) -> RedisSessions {
    RedisSessions::new(client(redis).await.0, prefix)
}

fn entry(data: &str) -> Entry {
    Entry {
        data: data.into(),
        attachments: vec![serde_bytes::ByteBuf::from(vec![0, 0xff])],
        rooms: vec!["r".into()],
        except: Vec::new(),
        sender: None,
    }
}

fn holder(node: &str, conn: &str) -> Holder {
    Holder {
        node: node.into(),
        conn: conn.into(),
    }
}

fn session(holder: &Holder) -> Session {
    Session {
        sid: "sid".into(),
        id_user: Some("u1".into()),
        session: None,
        rooms: vec!["a".into()],
        start: "0-0".into(),
        holder: holder.clone(),
    }
}

#[tokio::test]
async fn redis_log_passes_the_conformance_suite() {
    let dir = log_dir("recovery_log_conformance");
    let redis = Redis::start(&dir);
    let log = log(&redis, "conformance").await;
    tokio::time::timeout(Duration::from_secs(60), conformance::check_log(&log))
        .await
        .expect("the suite finishes within 60 s");
    assert_eq!(log.malformed(), 0);
}

#[tokio::test]
async fn redis_sessions_pass_the_conformance_suite() {
    let dir = log_dir("recovery_sessions_conformance");
    let redis = Redis::start(&dir);
    let sessions = sessions(&redis, "conformance").await;
    tokio::time::timeout(
        Duration::from_secs(60),
        conformance::check_sessions(&sessions),
    )
    .await
    .expect("the suite finishes within 60 s");
    assert_eq!(sessions.malformed(), 0);
}

/// Entries that are not ours (a hand-written `XADD`, another version's) come back as `None` in their place, so a
/// reader moves past them; they are counted, never an error, and left alone.
#[tokio::test]
async fn malformed_entries_are_skipped_and_counted() {
    let dir = log_dir("recovery_malformed_entries");
    let redis = Redis::start(&dir);
    let log = log(&redis, "malformed").await;
    let key = log.log_key("/site");
    let first = log.append("/site", &entry("[\"a\"]"), HOUR).await.unwrap();
    let xadd = |fields: &[&str]| -> Offset {
        let mut args = vec!["XADD", key.as_str(), "*"];
        args.extend_from_slice(fields);
        redis.cli(&args).trim().parse().unwrap()
    };
    let not_msgpack = xadd(&["e", "not msgpack"]);
    let no_e = xadd(&["data", "x"]);
    // Valid msgpack, but a map without `data` (binary: through a client rather than redis-cli).
    let bytes = rmp_serde::to_vec_named(&serde_json::json!({ "x": 1 })).unwrap();
    let (raw, _) = client(&redis).await;
    let id: String = raw
        .xadd(
            &key,
            false,
            None::<()>,
            "*",
            vec![("e", Value::Bytes(bytes.into()))],
        )
        .await
        .unwrap();
    let not_an_entry: Offset = id.parse().unwrap();
    let last = log.append("/site", &entry("[\"b\"]"), HOUR).await.unwrap();

    let got = log.after("/site", Offset::ZERO, 100).await.unwrap();
    assert_eq!(
        got,
        [
            (first, Some(entry("[\"a\"]"))),
            (not_msgpack, None),
            (no_e, None),
            (not_an_entry, None),
            (last, Some(entry("[\"b\"]"))),
        ]
    );
    assert_eq!(log.malformed(), 3);
    assert_eq!(log.last("/site").await.unwrap(), last);

    // A tail reads them the same way.
    let mut tail = log.tail("/site").await.unwrap();
    let got = tail.next(first, 100, TIMEOUT).await.unwrap();
    assert_eq!(
        got.iter()
            .map(|(o, e)| (*o, e.is_some()))
            .collect::<Vec<_>>(),
        [
            (not_msgpack, false),
            (no_e, false),
            (not_an_entry, false),
            (last, true)
        ]
    );
    assert_eq!(log.malformed(), 6);
    tail.close().await;
    assert_eq!(redis.cli(&["XLEN", &key]).trim(), "5", "left in place");
}

/// A session that does not decode, whose holder is not its data's, or that is not a hash at all is no session
/// (counted); a save replaces it, a remove leaves it.
#[tokio::test]
async fn malformed_sessions_are_skipped_and_counted() {
    let dir = log_dir("recovery_malformed_sessions");
    let redis = Redis::start(&dir);
    let store = sessions(&redis, "malformed").await;
    let a = holder("n1", "c1");
    let good = serde_json::to_string(&session(&a)).unwrap();
    let key = |pid: &str| store.session_key("/site", pid);
    redis.cli(&[
        "HSET",
        &key("bad-json"),
        "holder",
        "n1/c1",
        "data",
        "{not json",
    ]);
    redis.cli(&[
        "HSET",
        &key("other-holder"),
        "holder",
        "n2/c2",
        "data",
        &good,
    ]);
    redis.cli(&["HSET", &key("no-holder"), "data", &good]);
    redis.cli(&["HSET", &key("no-data"), "holder", "n1/c1"]);
    redis.cli(&["SET", &key("a-string"), &good]);
    let pids = [
        "bad-json",
        "other-holder",
        "no-holder",
        "no-data",
        "a-string",
    ];
    for pid in pids {
        assert_eq!(store.load("/site", pid).await.unwrap(), None, "{pid}");
    }
    assert_eq!(store.malformed(), 5);
    assert_eq!(store.load("/site", "absent").await.unwrap(), None);
    assert_eq!(store.malformed(), 5, "an absent session is not malformed");

    // A remove compares holders only on our hashes; a save replaces what is not ours, and what `a` holds.
    assert!(!store.remove("/site", "a-string", &a).await.unwrap());
    assert!(!store.remove("/site", "other-holder", &a).await.unwrap());
    for pid in ["bad-json", "no-holder", "no-data", "a-string"] {
        assert!(
            store
                .save("/site", pid, &session(&a), HOUR, None)
                .await
                .unwrap(),
            "{pid}"
        );
        assert_eq!(
            store.load("/site", pid).await.unwrap(),
            Some(session(&a)),
            "{pid}"
        );
    }
    assert!(
        !store
            .save("/site", "other-holder", &session(&a), HOUR, None)
            .await
            .unwrap(),
        "held by n2/c2, as far as the scripts can tell"
    );
    assert_eq!(store.malformed(), 5);
}

/// The keys are where the module docs say, with the namespace's hash tag; a session's TTL is its `ttl`, and a
/// touch sets it again.
#[tokio::test]
async fn the_layout_is_the_documented_one() {
    let dir = log_dir("recovery_layout");
    let redis = Redis::start(&dir);
    let (log, store) = (
        log(&redis, "si:recovery").await,
        sessions(&redis, "si:recovery").await,
    );
    let offset = log.append("/chat", &entry("[\"e\"]"), HOUR).await.unwrap();
    let a = holder("n1", "c1");
    assert!(
        store
            .save("/chat", "p1", &session(&a), Duration::from_secs(60), None)
            .await
            .unwrap()
    );
    assert_eq!(log.log_key("/chat"), "si:recovery:{/chat}:log");
    assert_eq!(store.session_key("/chat", "p1"), "si:recovery:{/chat}:s:p1");

    // Binary: read through a client rather than redis-cli.
    let (raw, _) = client(&redis).await;
    let range: Vec<(String, Vec<(String, Value)>)> = raw
        .xrange("si:recovery:{/chat}:log", "-", "+", None)
        .await
        .unwrap();
    assert_eq!(range.len(), 1);
    assert_eq!(range[0].0, offset.to_string());
    let [(field, value)] = range[0].1.as_slice() else {
        panic!("one field: {range:?}");
    };
    assert_eq!(field, "e");
    let packed: Entry = rmp_serde::from_slice(value.as_bytes().unwrap()).unwrap();
    assert_eq!(packed, entry("[\"e\"]"), "the entry as msgpack");

    let hash = redis.json(&["HGETALL", "si:recovery:{/chat}:s:p1"]);
    let fields: std::collections::BTreeMap<&str, &str> = hash
        .as_array()
        .unwrap()
        .chunks(2)
        .map(|kv| (kv[0].as_str().unwrap(), kv[1].as_str().unwrap()))
        .collect();
    assert_eq!(
        fields.keys().copied().collect::<Vec<_>>(),
        ["data", "holder"]
    );
    assert_eq!(fields["holder"], "n1/c1");
    let data: Session = serde_json::from_str(fields["data"]).unwrap();
    assert_eq!(data, session(&a));

    let pttl = || -> i64 {
        redis
            .cli(&["PTTL", "si:recovery:{/chat}:s:p1"])
            .trim()
            .parse()
            .unwrap()
    };
    assert!((50_000..=60_000).contains(&pttl()), "PTTL {}", pttl());
    store
        .touch("/chat", &["p1".to_owned()], Duration::from_secs(600))
        .await
        .unwrap();
    assert!((590_000..=600_000).contains(&pttl()), "PTTL {}", pttl());
}

/// Two nodes (two clients) share a namespace: one appends, the other's tail gets it; one takes over the other's
/// session. The scripts survive `SCRIPT FLUSH` (as after a failover).
#[tokio::test]
async fn nodes_share_the_log_and_the_sessions() {
    let dir = log_dir("recovery_nodes");
    let redis = Redis::start(&dir);
    let (log_a, log_b) = (log(&redis, "nodes").await, log(&redis, "nodes").await);
    let (s_a, s_b) = (
        sessions(&redis, "nodes").await,
        sessions(&redis, "nodes").await,
    );
    let mut tail = log_b.tail("/").await.unwrap();
    let start = log_b.last("/").await.unwrap();
    redis.cli(&["SCRIPT", "FLUSH"]);
    let (got, offset) = tokio::join!(tail.next(start, 10, TIMEOUT), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        log_a.append("/", &entry("[\"x\"]"), HOUR).await.unwrap()
    });
    assert_eq!(got.unwrap(), [(offset, Some(entry("[\"x\"]")))]);
    assert_eq!(log_b.last("/").await.unwrap(), offset);
    tail.close().await;

    let (a, b) = (holder("a", "c1"), holder("b", "c7"));
    assert!(s_a.save("/", "p", &session(&a), HOUR, None).await.unwrap());
    redis.cli(&["SCRIPT", "FLUSH"]);
    let read = s_b.load("/", "p").await.unwrap().unwrap();
    assert!(
        s_b.save("/", "p", &session(&b), HOUR, Some(&read.holder))
            .await
            .unwrap()
    );
    assert!(!s_a.save("/", "p", &session(&a), HOUR, None).await.unwrap());
    assert!(!s_a.remove("/", "p", &a).await.unwrap());
    assert_eq!(s_a.load("/", "p").await.unwrap(), Some(session(&b)));
    // Each node counts the sessions it wrote last (see the module docs): `a` still counts its own until it expires.
    assert_eq!(s_b.len().await.unwrap(), 1);
    assert!(s_b.remove("/", "p", &b).await.unwrap());
    assert_eq!(s_b.len().await.unwrap(), 0);
}

/// A tail holds a connection of its own while it waits (the shared one serves other commands meanwhile, see the
/// conformance suite's wake-up case), and lets go of it when closed or dropped.
#[tokio::test]
async fn a_tail_has_a_connection_of_its_own() {
    let dir = log_dir("recovery_tail_connection");
    let redis = Redis::start(&dir);
    let log = log(&redis, "tail").await;
    let before = redis.clients().len();
    let tail = log.tail("/").await.unwrap();
    eventually(TIMEOUT, "the tail's connection", async || {
        (redis.clients().len() == before + 1).then_some(())
    })
    .await;
    tail.close().await;
    eventually(TIMEOUT, "the closed tail's connection gone", async || {
        (redis.clients().len() == before).then_some(())
    })
    .await;
    let tail = log.tail("/").await.unwrap();
    eventually(TIMEOUT, "the second tail's connection", async || {
        (redis.clients().len() == before + 1).then_some(())
    })
    .await;
    drop(tail);
    eventually(TIMEOUT, "the dropped tail's connection gone", async || {
        (redis.clients().len() == before).then_some(())
    })
    .await;
}
