//! The cluster decoders against hostile input: property tests over arbitrary and mutated messages, and a
//! regression corpus (`tests/corpus/cluster/{accept,reject}/<kind>-*.json`; add a file for every bug found).
//! Whatever Redis delivers, decoding never panics, and what decodes is valid.

use std::path::Path;

use proptest::prelude::*;
use socket_identity::{
    cluster::protocol::{
        self, Heartbeat, Member, Query, Reply, Request, Response, RoomCount, decode_heartbeat,
        decode_request, decode_response,
    },
    cluster::seal::Seal,
    domain::validate,
};

/// What every decoded message must satisfy, whatever bytes it came from.
fn check_request(r: &Request) {
    assert_eq!(r.v, protocol::VERSION);
    validate::node_id(&r.from).unwrap();
    validate::namespace(&r.ns).unwrap();
    if let Query::Users { room } = &r.query {
        validate::room(room).unwrap();
    }
}

fn check_response(r: &Response) {
    assert_eq!(r.v, protocol::VERSION);
    validate::node_id(&r.node).unwrap();
    match &r.reply {
        Reply::Users { members } => {
            for m in members {
                if let Some(u) = &m.id_user {
                    validate::id_user(u).unwrap();
                }
                assert!(!m.id_socket.is_empty() && m.id_socket.len() <= 64);
                assert!(
                    m.id_socket
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                );
            }
        }
        Reply::Rooms { rooms } => {
            for r in rooms {
                validate::room(&r.room).unwrap();
                for u in &r.users {
                    validate::id_user(u).unwrap();
                }
            }
        }
        Reply::Sockets { sockets } => {
            for s in sockets {
                validate::namespace(&s.nsp).unwrap();
                assert!(!s.id.is_empty() && s.id.len() <= 64);
            }
        }
        Reply::Views { .. } | Reply::Done { .. } => {}
    }
}

fn check_heartbeat(h: &Heartbeat) {
    assert_eq!(h.v, protocol::VERSION);
    validate::node_id(&h.node).unwrap();
}

fn decode_all(bytes: &[u8]) {
    if let Ok(r) = decode_request(bytes) {
        check_request(&r);
    }
    if let Ok(r) = decode_response(bytes) {
        check_response(&r);
    }
    if let Ok(h) = decode_heartbeat(bytes) {
        check_heartbeat(&h);
    }
}

fn node_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,64}"
}

fn room() -> impl Strategy<Value = String> {
    "[A-Za-z0-9é~_-][A-Za-z0-9é~_.-]{0,30}"
        .prop_filter("a valid room", |r| validate::room(r).is_ok())
}

fn id_user() -> impl Strategy<Value = String> {
    "[^\\p{Cc}]{1,40}".prop_filter("a valid id_user", |u| validate::id_user(u).is_ok())
}

fn member() -> impl Strategy<Value = Member> {
    ("[A-Za-z0-9_-]{20}", prop::option::of("[^\\p{Cc}]{1,40}"))
        .prop_filter("a valid id_user", |(_, u)| {
            u.as_ref().is_none_or(|u| validate::id_user(u).is_ok())
        })
        .prop_map(|(id_socket, id_user)| Member { id_socket, id_user })
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        prop::collection::vec(member(), 0..8).prop_map(|members| Reply::Users { members }),
        prop::collection::vec(
            (room(), any::<u64>(), prop::collection::vec(id_user(), 0..3)),
            0..8
        )
        .prop_map(|rooms| Reply::Rooms {
            rooms: rooms
                .into_iter()
                .map(|(room, sockets, users)| RoomCount {
                    room,
                    sockets,
                    users
                })
                .collect()
        }),
        any::<u64>().prop_map(|count| Reply::Views { count }),
    ]
}

fn query() -> impl Strategy<Value = Query> {
    prop_oneof![
        room().prop_map(|room| Query::Users { room }),
        Just(Query::Rooms),
        Just(Query::Views),
    ]
}

fn namespace() -> impl Strategy<Value = String> {
    "/[A-Za-z0-9_.~/-]{0,30}"
}

fn response() -> impl Strategy<Value = Response> {
    (node_id(), reply()).prop_map(|(node, reply)| Response {
        v: protocol::VERSION,
        id: uuid::Uuid::new_v4(),
        node,
        reply,
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1000,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct("tests/corpus/proptest-regressions.txt"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn json_like_garbage_never_panics(text in r#"[{}\[\]",:0-9a-z_ \\-]{0,200}"#) {
        decode_all(text.as_bytes());
    }

    #[test]
    fn valid_messages_round_trip(
        from in node_id(),
        ns in namespace(),
        query in query(),
        resp in response(),
        leaving: bool,
    ) {
        let req = Request::new(&from, &ns, query);
        prop_assert_eq!(decode_request(&protocol::encode(&req)).unwrap(), req);
        prop_assert_eq!(decode_response(&protocol::encode(&resp)).unwrap(), resp.clone());
        let hb = Heartbeat { v: protocol::VERSION, node: from, leaving };
        prop_assert_eq!(decode_heartbeat(&protocol::encode(&hb)).unwrap(), hb);
    }

    /// Truncated, flipped or spliced valid messages: rejected, or decoded into something valid.
    #[test]
    fn mutated_messages_never_decode_to_garbage(
        resp in response(),
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut bytes = protocol::encode(&resp);
        let len = bytes.len();
        for (at, byte) in flips {
            bytes[at.index(len)] = byte;
        }
        decode_all(&bytes);
        decode_all(&bytes[..cut.index(len)]);
    }

    /// Signed envelopes (`CLUSTER_SECRET`): a sealed message opens to itself, on its channel only; any change of
    /// a byte or a cut is refused (never a panic), and arbitrary bytes never open.
    #[test]
    fn sealed_messages_open_only_untouched(
        resp in response(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        garbage in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let seal = Seal::new(Some(b"a secret of sixteen bytes or more"));
        let msg = protocol::encode(&resp);
        let sealed = seal.seal("p:users#reply#a", msg.clone());
        let opened = seal.open("p:users#reply#a", &sealed).unwrap();
        prop_assert_eq!(opened.msg, &msg[..]);
        prop_assert!(seal.open("p:users#reply#b", &sealed).is_err());
        let mut changed = sealed.clone();
        let i = at.index(changed.len());
        if changed[i] != byte {
            changed[i] = byte;
            prop_assert!(seal.open("p:users#reply#a", &changed).is_err());
        }
        prop_assert!(seal.open("p:users#reply#a", &sealed[..i]).is_err());
        prop_assert!(seal.open("p:users#reply#a", &garbage).is_err());
    }
}

#[test]
fn regression_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/cluster");
    let mut seen = 0;
    for verdict in ["accept", "reject"] {
        for entry in std::fs::read_dir(dir.join(verdict)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).unwrap();
            let accepted = match name.split('-').next().unwrap() {
                "request" => decode_request(&bytes).inspect(check_request).is_ok(),
                "response" => decode_response(&bytes).inspect(check_response).is_ok(),
                "heartbeat" => decode_heartbeat(&bytes).inspect(check_heartbeat).is_ok(),
                other => panic!("{name}: unknown kind {other}"),
            };
            assert_eq!(accepted, verdict == "accept", "{verdict}/{name}");
            decode_all(&bytes);
            seen += 1;
        }
    }
    assert!(seen >= 25, "corpus not found: {seen} files");
}
